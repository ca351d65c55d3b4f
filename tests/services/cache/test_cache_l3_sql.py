"""L3, the SQL store, on SQLite and PostgreSQL: versioned upserts, tombstones, expiry, patterns."""

from __future__ import annotations

from services.cache.l3_sql import SqlStore
from services.cache.model import StoredEntry

NOW_MS = 1_700_000_000_000


async def test_put_then_get_returns_value_version_and_expiry(sql_store: SqlStore) -> None:
    outcome = await sql_store.put_many(
        [
            ("instrument:BTCUSDT", StoredEntry(b"btc", 10)),
            ("account:7", StoredEntry(b"acct", 11, NOW_MS + 5000)),
        ]
    )
    assert outcome == {"instrument:BTCUSDT": 10, "account:7": 11}
    rows = await sql_store.get_many(["instrument:BTCUSDT", "account:7", "missing"], NOW_MS)
    assert rows == {
        "instrument:BTCUSDT": StoredEntry(b"btc", 10, 0),
        "account:7": StoredEntry(b"acct", 11, NOW_MS + 5000),
    }


async def test_older_version_does_not_overwrite_newer(sql_store: SqlStore) -> None:
    await sql_store.put_many([("k", StoredEntry(b"new", 20))])
    outcome = await sql_store.put_many([("k", StoredEntry(b"old", 19)), ("k2", StoredEntry(b"x", 5))])
    assert outcome == {"k": 20, "k2": 5}
    assert (await sql_store.get_many(["k"], NOW_MS))["k"].value == b"new"


async def test_tombstone_wins_over_a_racing_older_write(sql_store: SqlStore) -> None:
    await sql_store.put_many([("k", StoredEntry(b"v1", 1))])
    await sql_store.put_many([("k", StoredEntry(None, 3))])  # the delete
    outcome = await sql_store.put_many([("k", StoredEntry(b"v2", 2))])  # a write that lost the race
    assert outcome == {"k": 3}
    assert (await sql_store.get_many(["k"], NOW_MS))["k"] == StoredEntry(None, 3, 0)
    assert (await sql_store.put_many([("k", StoredEntry(b"v4", 4))])) == {"k": 4}


async def test_expired_rows_read_as_absent_and_are_purged(sql_store: SqlStore) -> None:
    await sql_store.put_many(
        [("short", StoredEntry(b"s", 1, NOW_MS - 1)), ("long", StoredEntry(b"l", 1, NOW_MS + 60_000))]
    )
    assert set(await sql_store.get_many(["short", "long"], NOW_MS)) == {"long"}
    await sql_store.put_many([("deleted", StoredEntry(None, 5)), ("recently-deleted", StoredEntry(None, 50))])
    assert await sql_store.purge(NOW_MS, tombstones_before_version=10) == 2
    assert set(await sql_store.get_many(["short", "long", "deleted", "recently-deleted"], NOW_MS)) == {
        "long",
        "recently-deleted",
    }


async def test_tombstone_matching_uses_redis_glob_rules(sql_store: SqlStore) -> None:
    keys = ["instrument:BTC", "instrument:ETH", "instrument_x", "instrumentXBTC", "account:1", "instrument:%"]
    await sql_store.put_many([(key, StoredEntry(b"v", 1)) for key in keys])
    deleted = await sql_store.tombstone_matching("instrument:*", version=9)
    assert sorted(deleted) == ["instrument:%", "instrument:BTC", "instrument:ETH"]
    rows = await sql_store.get_many(keys, NOW_MS)
    assert {key for key, row in rows.items() if row.value is not None} == {
        "instrument_x",
        "instrumentXBTC",
        "account:1",
    }
    assert await sql_store.tombstone_matching("instrument?[A-Z]*", version=10) == ["instrumentXBTC"]


async def test_put_many_handles_more_rows_than_one_statement(sql_store: SqlStore) -> None:
    entries = [(f"k{i:05d}", StoredEntry(b"v%d" % i, 100 + i)) for i in range(1200)]
    outcome = await sql_store.put_many(entries)
    assert len(outcome) == 1200 and outcome["k01199"] == 1299
    rows = await sql_store.get_many([key for key, _ in entries], NOW_MS)
    assert len(rows) == 1200 and rows["k00042"].value == b"v42"


async def test_prefixed_rows_are_the_live_ones_under_the_prefix_in_key_order(sql_store: SqlStore) -> None:
    await sql_store.put_many(
        [
            ("apikey:b", StoredEntry(b"bob", 1)),
            ("apikey:a", StoredEntry(b"alice", 2)),
            ("apikey:gone", StoredEntry(None, 3)),  # a tombstone
            ("apikey:old", StoredEntry(b"x", 4, NOW_MS - 1)),  # expired
            ("apikeyX", StoredEntry(b"y", 5)),  # would match "apikey_" if "_" were LIKE's wildcard
            ("account:a", StoredEntry(b"acct", 6)),
        ]
    )
    rows = await sql_store.get_prefixed("apikey:", NOW_MS, limit=10)
    assert list(rows) == ["apikey:a", "apikey:b"]
    assert rows["apikey:a"] == StoredEntry(b"alice", 2, 0)
    assert list(await sql_store.get_prefixed("apikey:", NOW_MS, limit=1)) == ["apikey:a"]
    assert list(await sql_store.get_prefixed("apikey_", NOW_MS, limit=10)) == []
