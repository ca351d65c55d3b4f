"""Reference rows read straight from SQL are refreshed ahead, off the order path."""

from __future__ import annotations

import asyncio
from pathlib import Path

from services.cache.l3_sql import SqlStore
from services.cache.model import StoredEntry, VersionClock
from services.execution.reference import SqlSource


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
        for _ in range(60):  # 0.3 s: three TTLs, every lookup answered from what is held
            value = source.peek("account:alice")
            assert value in (b"v1", b"v2")
            seen.add(value)
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
