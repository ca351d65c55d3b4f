"""The fill ledger on SQLite and PostgreSQL: chain, tampering, re-records, catch-up, concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest
import sqlalchemy as sa

from services.execution.ledger import GENESIS_HASH, Fill, Ledger, LedgerBacklogFull, LedgerGap, entry_hash


def make_fill(trade_id: int, symbol: str = "ESZ4") -> Fill:
    return Fill(
        symbol=symbol,
        trade_id=trade_id,
        price_ticks=500_000 + trade_id % 17,
        quantity_lots=1 + trade_id % 5,
        buyer_account=f"acct-{trade_id % 3}",
        buyer_order_id=10_000 + trade_id,
        seller_account=f"acct-{(trade_id + 1) % 3}",
        seller_order_id=20_000 + trade_id,
        executed_at_ns=1_700_000_000_000_000_000 + trade_id,
    )


async def test_recorded_fills_form_one_unbroken_chain(database_url: str, table_name: str) -> None:
    ledger = await Ledger.open(database_url, table_name)
    try:
        fills = [make_fill(i) for i in range(1, 121)]
        for fill in fills:
            ledger.record(fill)
        await ledger.flush()
        entries = await ledger.entries()
        assert [e.transaction_id for e in entries] == [f.transaction_id for f in fills]
        assert [e.position for e in entries] == list(range(1, 121))
        assert entries[0].prev_hash == GENESIS_HASH
        for before, after in itertools.pairwise(entries):
            assert after.prev_hash == before.hash
        assert await ledger.verify() is None
        assert await ledger.head() == (120, entries[-1].hash)
    finally:
        await ledger.close()


async def test_hash_covers_every_column_and_the_previous_hash() -> None:
    fields = {
        "position": 3,
        "prev_hash": "ab" * 32,
        "transaction_id": "ESZ4:3",
        "symbol": "ESZ4",
        "price_ticks": 100,
        "quantity_lots": 2,
        "buyer_account": "a",
        "buyer_order_id": 1,
        "seller_account": "b",
        "seller_order_id": 2,
        "executed_at_ns": 5,
        "recorded_at_ns": 6,
    }
    base = entry_hash(**fields)  # type: ignore[arg-type]
    for name, value in fields.items():
        changed = dict(fields)
        changed[name] = (
            "cd" * 32 if name == "prev_hash" else (value + 1 if isinstance(value, int) else value + "x")
        )
        assert entry_hash(**changed) != base, name  # type: ignore[arg-type]
    # Length prefixes keep neighbouring strings from trading characters.
    shifted = dict(fields, buyer_account="ab", seller_account="")
    assert entry_hash(**dict(fields, buyer_account="a", seller_account="b")) != entry_hash(**shifted)  # type: ignore[arg-type]


async def test_tampered_row_is_caught_at_that_transaction(database_url: str, table_name: str) -> None:
    ledger = await Ledger.open(database_url, table_name)
    try:
        for i in range(1, 31):
            ledger.record(make_fill(i))
        await ledger.flush()
        table = ledger.table
        async with ledger.engine.begin() as conn:
            await conn.execute(sa.update(table).where(table.c.position == 17).values(quantity_lots=999))
        broken = await ledger.verify()
        assert broken is not None
        assert (broken.position, broken.transaction_id) == (17, "ESZ4:17")
        assert "hash" in broken.reason
    finally:
        await ledger.close()


async def test_rehashed_tampered_row_is_caught_at_the_next_link(database_url: str, table_name: str) -> None:
    ledger = await Ledger.open(database_url, table_name)
    try:
        for i in range(1, 31):
            ledger.record(make_fill(i))
        await ledger.flush()
        row = next(e for e in await ledger.entries() if e.position == 9)
        forged = {name: getattr(row, name) for name in row.__slots__ if name != "hash"}
        forged["price_ticks"] = 1
        table = ledger.table
        async with ledger.engine.begin() as conn:
            await conn.execute(
                sa.update(table).where(table.c.position == 9).values(price_ticks=1, hash=entry_hash(**forged))
            )
        broken = await ledger.verify()
        assert broken is not None
        assert broken.position == 10
        assert "prev_hash" in broken.reason
    finally:
        await ledger.close()


async def test_deleted_row_is_caught_where_the_gap_starts(database_url: str, table_name: str) -> None:
    ledger = await Ledger.open(database_url, table_name)
    try:
        for i in range(1, 11):
            ledger.record(make_fill(i))
        await ledger.flush()
        table = ledger.table
        async with ledger.engine.begin() as conn:
            await conn.execute(sa.delete(table).where(table.c.position == 4))
        broken = await ledger.verify()
        assert broken is not None
        assert broken.position == 5
        assert "missing" in broken.reason
    finally:
        await ledger.close()


async def test_recording_the_same_fill_again_adds_nothing(database_url: str, table_name: str) -> None:
    ledger = await Ledger.open(database_url, table_name)
    try:
        fills = [make_fill(i) for i in range(1, 41)]
        for fill in fills:
            ledger.record(fill)
        await ledger.flush()
        for fill in fills[10:30] + fills[10:30]:
            ledger.record(fill)
        ledger.record(make_fill(41))
        await ledger.flush()
        entries = await ledger.entries()
        assert [e.transaction_id for e in entries] == [f.transaction_id for f in [*fills, make_fill(41)]]
        assert ledger.duplicates_skipped == 40
        assert await ledger.verify() is None
    finally:
        await ledger.close()


async def test_catch_up_after_a_crash_writes_each_fill_exactly_once(
    database_url: str, table_name: str
) -> None:
    fills = [make_fill(i, symbol="NQZ4" if i % 2 else "ESZ4") for i in range(1, 201)]
    crashed = await Ledger.open(database_url, table_name, batch_max_fills=25)
    for fill in fills[:60]:
        crashed.record(fill)
    await crashed.flush()
    # The crash: fills 61..140 were recorded but the process died before the
    # writer got to (all of) them; their queue is gone with it.
    for fill in fills[60:140]:
        crashed.record(fill)
    assert crashed._writer_task is not None
    crashed._writer_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await crashed._writer_task
    await crashed.engine.dispose()

    recovered = await Ledger.open(database_url, table_name)
    try:
        before = len(await recovered.entries())
        assert 60 <= before < 140
        added = await recovered.catch_up(fills)
        assert added == 200 - before
        entries = await recovered.entries()
        assert [e.transaction_id for e in entries] == [f.transaction_id for f in fills]
        assert await recovered.verify() is None
        assert await recovered.catch_up(fills) == 0
    finally:
        await recovered.close()


async def test_concurrent_writers_on_one_table_keep_one_chain(database_url: str, table_name: str) -> None:
    first = await Ledger.open(database_url, table_name, batch_max_fills=7)
    second = await Ledger.open(database_url, table_name, batch_max_fills=11)
    try:
        fills = [make_fill(i) for i in range(1, 301)]

        async def feed(ledger: Ledger, chunk: list[Fill]) -> None:
            for n, fill in enumerate(chunk):
                ledger.record(fill)
                if n % 9 == 0:
                    await asyncio.sleep(0)

        # Overlapping halves: fills 101..200 reach both writers, as after a restart
        # that re-records what the old process had already written.
        await asyncio.gather(
            feed(first, fills[:200]),
            feed(second, fills[100:]),
            first.catch_up(fills[50:150]),
        )
        await asyncio.gather(first.flush(), second.flush())
        entries = await first.entries()
        assert sorted(e.transaction_id for e in entries) == sorted(f.transaction_id for f in fills)
        assert [e.position for e in entries] == list(range(1, 301))
        assert await second.verify() is None
    finally:
        await first.close()
        await second.close()


async def test_high_water_mark_follows_written_fills_and_stops_below_a_turned_away_one(
    database_url: str, table_name: str
) -> None:
    ledger = await Ledger.open(database_url, table_name, queue_max_fills=10, batch_linger_ms=0)
    try:
        assert ledger.written_through_trade_id == 0
        for trade_id in range(1, 6):
            ledger.record(make_fill(trade_id))
        await asyncio.wait_for(ledger.wait_written_through(5), 30)
        assert ledger.written_through_trade_id == 5
        assert len(await ledger.entries()) == 5
        # A full queue turns trade 16 away: waits up to 15 still end, a wait past it fails at once.
        for trade_id in range(6, 16):
            ledger.record(make_fill(trade_id))
        with pytest.raises(LedgerBacklogFull):
            ledger.record(make_fill(16))
        await asyncio.wait_for(ledger.wait_written_through(15), 30)
        with pytest.raises(LedgerGap):
            await asyncio.wait_for(ledger.wait_written_through(16), 30)
        ledger.record(make_fill(17))
        await ledger.flush()
        assert ledger.written_through_trade_id == 15
        # A catch-up that wrote the missing fill lets the service declare the ledger level again.
        assert await ledger.catch_up([make_fill(16)]) == 1
        ledger.mark_written_through(17)
        assert ledger.written_through_trade_id == 15  # the turned-away fill still bounds this run
    finally:
        await ledger.close()
