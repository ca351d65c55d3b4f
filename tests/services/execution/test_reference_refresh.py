"""Reference rows read straight from SQL are refreshed ahead, off the order path."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from hftgate.security import SuiteSecret
from services.cache.l3_sql import SqlStore
from services.cache.model import StoredEntry, VersionClock
from services.execution.reference import SqlSource

SECRET = SuiteSecret(b"reference-test-secret-" + b"s" * 16)


async def _store(tmp_path: Path) -> SqlStore:
    store = SqlStore(f"sqlite+aiosqlite:///{tmp_path / 'reference.sqlite3'}")
    await store.start()
    return store


async def test_rows_in_use_stay_fresh_without_a_lookup_waiting_for_sql(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    clock = VersionClock()
    await store.put_many([("account:alice", StoredEntry(b"v1", clock.next()))])
    source = SqlSource(store, local_ttl_ms=100)
    try:
        assert source.peek("account:alice") is False  # never read: the caller must go to SQL
        assert await source.get("account:alice") == (b"v1", True)
        await store.put_many([("account:alice", StoredEntry(b"v2", clock.next()))])
        seen = set()
        # At least 0.3 s (three TTLs), longer on a loaded machine until the change has arrived:
        # every lookup meanwhile answered from what is held.
        deadline = asyncio.get_running_loop().time() + 10.0
        for looked in itertools.count():
            value = source.peek("account:alice")
            assert value in (b"v1", b"v2")
            seen.add(value)
            done = looked >= 60 and b"v2" in seen and source.refreshes >= 2
            if done or asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.005)
        assert seen == {b"v1", b"v2"}  # the change arrived through the background refresh
        assert source.refreshes >= 2
    finally:
        await source.close()


async def test_a_failing_refresh_lets_rows_age_out_to_the_caller(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    await store.put_many([("apikey:k", StoredEntry(b"alice", VersionClock().next()))])
    source = SqlSource(store, local_ttl_ms=40)
    try:
        assert await source.get("apikey:k") == (b"alice", True)

        async def broken(keys: object, now_ms: int) -> dict[str, StoredEntry]:
            raise ConnectionError("database down")

        store.get_many = broken  # type: ignore[method-assign]
        assert source.peek("apikey:k") == b"alice"
        await asyncio.sleep(0.1)
        assert source.refresh_failures >= 1
        assert source.peek("apikey:k") is False  # past its TTL: not served stale
    finally:
        await source.close()


async def test_rows_nobody_looks_up_are_dropped_from_the_refresh(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    await store.put_many([("instrument:X", StoredEntry(b"x", VersionClock().next()))])
    source = SqlSource(store, local_ttl_ms=20, idle_drop_ms=20)
    try:
        assert await source.get("instrument:X") == (b"x", True)
        await asyncio.sleep(0.1)
        assert source.peek("instrument:X") is False
        assert source.refreshes >= 1
    finally:
        await source.close()


async def test_held_lookups_answer_without_an_await_only_what_the_async_lookup_would(tmp_path: Path) -> None:
    """The order path's ``*_held`` lookups: NOT_HELD until a row is held, then the same answers
    (and the same lookup counts) as the async lookups, misses included. (A row past its TTL is not
    held: see the test above.)"""
    from services.execution.reference import (
        NOT_HELD,
        AccountSpec,
        InstrumentSpec,
        ReferenceData,
        api_key_row,
        encode_spec,
    )

    store = await _store(tmp_path)
    clock = VersionClock()
    await store.put_many(
        [
            ("instrument:BTCUSDT", StoredEntry(encode_spec(InstrumentSpec(symbol="BTCUSDT")), clock.next())),
            (
                "account:alice",
                StoredEntry(encode_spec(AccountSpec(name="alice", account_id=7)), clock.next()),
            ),
            (api_key_row(SECRET, "k-alice"), StoredEntry(b"alice", clock.next())),
        ]
    )
    reference = ReferenceData(SqlSource(store, local_ttl_ms=60_000), SECRET)
    try:
        assert reference.instrument_held("BTCUSDT") is NOT_HELD
        assert reference.instrument_held("NOPE") is NOT_HELD
        assert reference.account_for_key_held("k-alice") is NOT_HELD
        spec = await reference.instrument("BTCUSDT")
        assert spec is not None and spec.symbol == "BTCUSDT"
        assert await reference.instrument("NOPE") is None
        account = await reference.account_for_key("k-alice")
        assert account is not None and account.account_id == 7
        assert await reference.account_for_key("k-wrong") is None
        lookups, sql = reference.counters.lookups, reference.counters.sql_lookups

        assert reference.instrument_held("BTCUSDT") is spec  # decoded once, the same object
        assert reference.instrument_held("NOPE") is None  # a held miss is an answer, not NOT_HELD
        assert reference.account_for_key_held("k-alice") is account
        assert reference.account_for_key_held("k-wrong") is None
        assert reference.counters.lookups == lookups + 5  # one per row read; no SQL
        assert reference.counters.sql_lookups == sql
    finally:
        await reference.close()


async def test_preload_holds_every_row_before_the_first_lookup_and_misses_share_one_read(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path)
    clock = VersionClock()
    await store.put_many(
        [
            ("instrument:BTCUSDT", StoredEntry(b"btc", clock.next())),
            ("apikey:abc", StoredEntry(b"alice", clock.next())),
            ("account:alice", StoredEntry(b"a", clock.next())),
            ("other:x", StoredEntry(b"x", clock.next())),
        ]
    )
    source = SqlSource(store, local_ttl_ms=60_000)
    reads: list[list[str]] = []
    real_get_many = store.get_many

    async def counting(keys: list[str], now_ms: int) -> dict[str, StoredEntry]:
        reads.append(list(keys))
        return await real_get_many(keys, now_ms)

    store.get_many = counting  # type: ignore[method-assign]
    try:
        held = await source.preload(("instrument:", "apikey:"), ["account:alice", "account:nobody"])
        assert held == 4
        assert source.peek("instrument:BTCUSDT") == b"btc"
        assert source.peek("apikey:abc") == b"alice"
        assert source.peek("account:alice") == b"a"
        assert source.peek("account:nobody") is None  # a held miss
        assert source.peek("other:x") is False  # not under a preloaded prefix
        assert reads == [["account:alice", "account:nobody"]]  # prefixes by range scan, keys by one read
        # Ten callers missing the same row at once: one SQL read between them.
        answers = await asyncio.gather(*(source.get("other:x") for _ in range(10)))
        assert answers == [(b"x", True)] * 10
        assert reads[1:] == [["other:x"]]
    finally:
        await source.close()
