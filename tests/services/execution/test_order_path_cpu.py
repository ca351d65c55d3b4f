"""Background SQL of an execution shard stays off its event loop (issue #17: CPU per order).

A shard's event loop is also its order path. Through aiosqlite every statement is several trips
between the loop and aiosqlite's thread, each a wake-up of the loop; on a SQLite file the ledger's
batches and the shard map's epoch poll run on threads of their own instead, handed over once per
batch or poll. These tests count aiosqlite's trips (each goes through ``Connection._execute``)
while the ledger writes and while the shard map is polled: none. Everything else about the
writes and the polls is as before: one chain, the epoch another writer published.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from hftgate.shardmap import Shard, ShardMap, ShardMapStore
from services.execution.ledger import Fill, Ledger


def make_fill(trade_id: int) -> Fill:
    return Fill(
        symbol="ESZ4",
        trade_id=trade_id,
        price_ticks=500_000 + trade_id,
        quantity_lots=1 + trade_id % 3,
        buyer_account="alice",
        buyer_order_id=10_000 + trade_id,
        seller_account="bob",
        seller_order_id=20_000 + trade_id,
        executed_at_ns=1_700_000_000_000_000_000 + trade_id,
    )


@contextlib.contextmanager
def aiosqlite_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the threads that handed aiosqlite work while the block ran."""
    trips: list[str] = []
    real = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        trips.append(threading.current_thread().name)
        return await real(self, fn, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(aiosqlite.Connection, "_execute", counted)
        yield trips


async def test_a_sqlite_ledger_writes_its_batches_without_aiosqlite_trips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = await Ledger.open(f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}", batch_linger_ms=0)
    try:
        fills = [make_fill(i) for i in range(1, 61)]
        with aiosqlite_trips(monkeypatch) as trips:
            for fill in fills[:30]:
                ledger.record(fill)
            await ledger.flush()
            assert await ledger.catch_up(fills) == 30  # the first 30 are there already
        assert trips == []
        assert ledger.entries_written == 60
        assert ledger.duplicates_skipped == 30
        entries = await ledger.entries()
        assert [e.transaction_id for e in entries] == [f.transaction_id for f in fills]
        assert await ledger.verify() is None
    finally:
        await ledger.close()


async def test_an_in_memory_sqlite_ledger_still_writes_through_aiosqlite() -> None:
    # An in-memory database exists once per connection: a second (blocking) engine would write
    # somewhere the ledger's own reads never look.
    ledger = await Ledger.open("sqlite+aiosqlite://", batch_linger_ms=0)
    try:
        for trade_id in range(1, 11):
            ledger.record(make_fill(trade_id))
        await ledger.flush()
        assert [e.position for e in await ledger.entries()] == list(range(1, 11))
    finally:
        await ledger.close()


async def test_close_writes_what_is_queued_before_it_stops_the_writer_thread(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = await Ledger.open(url, batch_linger_ms=0)
    for trade_id in range(1, 201):
        ledger.record(make_fill(trade_id))
    await ledger.close()  # writes what is queued first
    reopened = await Ledger.open(url)
    try:
        assert len(await reopened.entries()) == 200
        assert await reopened.verify() is None
    finally:
        await reopened.close()


async def test_the_shard_map_poll_on_sqlite_makes_no_aiosqlite_trips_and_sees_each_publish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shardmap.sqlite3'}"
    watcher, writer = ShardMapStore(url), ShardMapStore(url)
    await watcher.start()
    await writer.start()
    try:
        with aiosqlite_trips(monkeypatch) as trips:
            assert await watcher.epoch() == 0
        assert trips == []
        await writer.create(ShardMap.single("127.0.0.1:50051"))
        await writer.publish(ShardMap.single("127.0.0.1:50051").with_shard(Shard(1, "127.0.0.1:50061")), 1)
        with aiosqlite_trips(monkeypatch) as trips:
            assert await watcher.epoch() == 2
        assert trips == []
        found = await anext(watcher.watch(1, known_epoch=1))
        assert found.epoch == 2
        assert found.shard(1) == Shard(1, "127.0.0.1:50061")
    finally:
        await watcher.close()
        await writer.close()


async def test_a_sqlite_ledger_commits_through_a_synced_write_ahead_log(tmp_path: Path) -> None:
    # A commit appends to the WAL and syncs it: durable as before, without a journal file made,
    # synced and deleted per batch.
    url = f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}"
    ledger = await Ledger.open(url, batch_linger_ms=0)
    try:
        ledger.record(make_fill(1))
        await ledger.flush()
        async with ledger.engine.connect() as conn:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar_one()
            synchronous = (await conn.exec_driver_sql("PRAGMA synchronous")).scalar_one()
        assert (mode, synchronous) == ("wal", 2)  # 2: FULL, every commit synced
        assert (tmp_path / "ledger.sqlite3-wal").exists()
    finally:
        await ledger.close()
