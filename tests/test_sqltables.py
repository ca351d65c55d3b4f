"""Two processes creating the same table at once: the one that loses the race starts anyway."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, event, inspect
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from hftgate.sqltables import create_tables, lost_creation_race

POSTGRES_URL = os.environ.get(
    "HFTGATE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def _table(name: str) -> tuple[MetaData, Table]:
    metadata = MetaData()
    return metadata, Table(name, metadata, Column("id", Integer, primary_key=True))


async def test_a_table_created_by_another_process_between_check_and_create_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "race.sqlite3"
    metadata, table = _table("shard_maps")
    created_elsewhere = []

    # Exactly the race: the check found no table, then another process made it before our CREATE.
    @event.listens_for(table, "before_create")
    def other_process_wins(*_: Any, **__: Any) -> None:
        if not created_elsewhere:
            with sqlite3.connect(path) as other:
                other.execute("CREATE TABLE shard_maps (id INTEGER PRIMARY KEY)")
            created_elsewhere.append(True)

    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        # Without the retry this is what the losing shard died of.
        async with engine.begin() as conn:
            with pytest.raises(OperationalError, match="already exists") as raised:
                await conn.run_sync(metadata.create_all, checkfirst=True)
        assert lost_creation_race(raised.value)
        os.unlink(path)
        created_elsewhere.clear()
        await engine.dispose()

        await create_tables(engine, metadata)
        assert created_elsewhere == [True]
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        assert names == ["shard_maps"]
    finally:
        await engine.dispose()


async def test_a_sqlite_file_locked_for_a_moment_at_start_is_tried_again(tmp_path: Path) -> None:
    """Another process holds the file for 150 ms; SQLite answers "database is locked" (here past
    a 10 ms busy timeout; at a WAL switch or checkpoint it does so at once), and the creation
    goes through on a later attempt instead of the service refusing to start."""
    import threading

    path = tmp_path / "locked.sqlite3"
    metadata, _ = _table("shard_maps")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")
    released = threading.Timer(0.15, lambda: holder.execute("COMMIT"))
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0.01})
    try:
        async with engine.begin() as conn:  # what a single attempt gets
            with pytest.raises(OperationalError, match="database is locked") as raised:
                await conn.run_sync(metadata.create_all, checkfirst=True)
        assert lost_creation_race(raised.value)
        released.start()
        await create_tables(engine, metadata)
        async with engine.connect() as conn:
            names = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        assert names == ["shard_maps"]
    finally:
        released.join()
        holder.close()
        await engine.dispose()


async def test_any_other_creation_error_is_raised_as_it_came(tmp_path: Path) -> None:
    metadata, table = _table("t")

    @event.listens_for(table, "before_create")
    def broken(*_: Any, **__: Any) -> None:
        raise OperationalError("CREATE TABLE t", {}, Exception("disk I/O error"))

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'x.sqlite3'}")
    try:
        with pytest.raises(OperationalError, match="disk I/O error"):
            await create_tables(engine, metadata)
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_many_replicas_creating_one_postgres_table_at_once_all_start() -> None:
    import asyncpg  # type: ignore[import-untyped]

    try:
        probe = await asyncio.wait_for(asyncpg.connect(POSTGRES_URL.replace("+asyncpg", "")), 3)
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unreachable at {POSTGRES_URL}: {exc}")
        pytest.skip(f"PostgreSQL unreachable at {POSTGRES_URL}: {exc}")
    await probe.close()
    name = "race_" + uuid.uuid4().hex[:12]
    engines = [create_async_engine(POSTGRES_URL, pool_size=1) for _ in range(6)]
    try:
        await asyncio.gather(*(create_tables(engine, _table(name)[0]) for engine in engines))
        async with engines[0].connect() as conn:
            assert await conn.run_sync(lambda sync: inspect(sync).has_table(name))
    finally:
        async with engines[0].begin() as conn:
            await conn.run_sync(_table(name)[0].drop_all, checkfirst=True)
        for engine in engines:
            await engine.dispose()
