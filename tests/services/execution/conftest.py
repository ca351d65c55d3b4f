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


# --- an in-process execution server -------------------------------------------------------------

from dataclasses import replace as _replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import grpc  # noqa: E402

from hftgate.v1 import common_pb2 as common  # noqa: E402
from hftgate.v1 import execution_pb2 as api  # noqa: E402
from services.execution.config import ExecutionConfig  # noqa: E402


def execution_config(state_dir: Path, **overrides: Any) -> ExecutionConfig:
    """A config on port 0 with everything (journal, ledger, reference rows) under ``state_dir``."""
    base = ExecutionConfig(
        port=0,
        state_dir=str(state_dir),
        reference_database_url=f"sqlite+aiosqlite:///{state_dir / 'reference.sqlite3'}",
        # Never the checkout's ./data/shardmap: a map stored there by `hftgate up` must not fence tests.
        shard_map_database_url=f"sqlite+aiosqlite:///{state_dir / 'shardmap.sqlite3'}",
        shard_map_poll_ms=50,
        max_symbols=8,
        max_levels_per_side=1024,
        max_live_orders=1 << 16,
        retained_reports=10_000,
        max_batch_orders=2_000,
        max_stream_message_inputs=100,
        # Tests set small snapshot triggers and expect them to fire at once, not 2 s apart.
        snapshot_min_interval_s=0.0,
    )
    return _replace(base, **overrides)


def key(name: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying demo account ``name``'s API key."""
    return (("x-api-key", f"hftgate-demo-{name}"),)


def limit_order(client_id: str, side: int = common.SIDE_BUY, price: int = 100) -> api.NewOrder:
    """A one-lot GTC limit order for BTCUSDT."""
    return api.NewOrder(
        client_order_id=client_id,
        symbol="BTCUSDT",
        side=side,  # type: ignore[arg-type]
        order_type=api.ORDER_TYPE_LIMIT,
        time_in_force=api.TIME_IN_FORCE_GTC,
        price_ticks=price,
        quantity_lots=1,
    )


class Harness:
    """A running in-process server, a channel to it, and a stub."""

    def __init__(self, running: Any, config: ExecutionConfig) -> None:
        from hftgate.v1 import execution_pb2_grpc

        self.running = running
        self.config = config
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        self.stub = execution_pb2_grpc.ExecutionServiceStub(self.channel)

    @property
    def core(self) -> Any:
        return self.running.core

    async def close(self) -> None:
        await self.channel.close(None)
        await self.running.stop(1.0)


async def start_harness(config: ExecutionConfig) -> Harness:
    from services.execution.app import start

    return Harness(await start(config), config)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """A server with default test settings in a fresh state directory."""
    h = await start_harness(execution_config(tmp_path))
    try:
        yield h
    finally:
        await h.close()


@pytest.fixture
def make_config() -> Any:
    """``make_config(state_dir, **overrides)``: see :func:`execution_config`."""
    return execution_config


@pytest.fixture
def launch() -> Any:
    """``await launch(config)``: start an in-process server (the test closes it)."""
    return start_harness
