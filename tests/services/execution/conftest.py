"""Database fixtures for the ledger tests: a fresh table on SQLite and on PostgreSQL per test."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator

import pytest

POSTGRES_URL = os.environ.get(
    "HFTGATE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


async def _postgres_reachable(url: str) -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    import asyncpg  # type: ignore[import-untyped]

    dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn), timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A database URL for each backend; PostgreSQL tests skip when it is unreachable (fail under CI=true)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.sqlite3'}"
    reason = await _postgres_reachable(POSTGRES_URL)
    if reason is not None:
        message = f"PostgreSQL at {POSTGRES_URL} unreachable ({reason}); set HFTGATE_TEST_POSTGRES_URL"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


@pytest.fixture
async def table_name(database_url: str) -> AsyncIterator[str]:
    """A table name no other test run uses; dropped after the test."""
    from services.execution.ledger import create_engine_for, ledger_table

    name = f"ledger_test_{uuid.uuid4().hex[:12]}"
    yield name
    engine = create_engine_for(database_url)
    try:
        table = ledger_table(name)
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.drop_all, checkfirst=True)
    finally:
        await engine.dispose()
