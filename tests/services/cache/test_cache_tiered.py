"""The tiered cache on real Redis and SQL: read-through, write-through, negative caching,
single-flight, and versions that keep stale values from being set back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import pytest

from services.cache.invalidation import InvalidationHub
from services.cache.l1 import NearCache
from services.cache.l2_redis import RedisTier
from services.cache.l3_sql import SqlStore
from services.cache.model import InvalidArgument, Limits, StoredEntry, wall_ms
from services.cache.tiered import Level, SetItem, TieredCache


class GatedSqlStore(SqlStore):
    """A SqlStore that counts reads and can hold them until released (to stage races)."""

    def __init__(self, inner: SqlStore) -> None:
        self.__dict__.update(inner.__dict__)
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def get_many(self, keys: Sequence[str], now_ms: int) -> dict[str, StoredEntry]:
        self.reads += 1
        rows = await super().get_many(keys, now_ms)
        self.reading.set()
        if self.gate is not None:
            await self.gate.wait()
        return rows


@pytest.fixture
async def sql(sql_store: SqlStore) -> GatedSqlStore:
    return GatedSqlStore(sql_store)


@pytest.fixture
async def l2(redis_url: str, key_prefix: str) -> AsyncIterator[RedisTier]:
    tier = RedisTier(redis_url, key_prefix=key_prefix)
    await tier.start()
    yield tier
    await tier.close()


@pytest.fixture
def cache(sql: GatedSqlStore, l2: RedisTier) -> TieredCache:
    l1 = NearCache(1000, 1 << 24)
    hub = InvalidationHub(l1)
    hub.live = True
    return TieredCache(
        l1=l1,
        l2=l2,
        l3=sql,
        hub=hub,
        replica_id="test",
        limits=Limits(max_key_bytes=64, max_value_bytes=1024),
    )


async def test_read_through_promotes_sql_hit_to_redis_and_l1(
    cache: TieredCache, sql: GatedSqlStore, l2: RedisTier
) -> None:
    await sql.put_many([("instrument:BTCUSDT", StoredEntry(b"btc", 42))])
    first = await cache.get("instrument:BTCUSDT")
    assert (first.found, first.value, first.version, first.level) == (True, b"btc", 42, Level.L3)
    assert (await l2.get_many(["instrument:BTCUSDT"]))[0] == [StoredEntry(b"btc", 42, 0)]
    second = await cache.get("instrument:BTCUSDT")
    assert (second.value, second.level) == (b"btc", Level.L1)
    assert cache.l1 is not None
    cache.l1.clear()
    third = await cache.get("instrument:BTCUSDT")
    assert (third.value, third.level) == (b"btc", Level.L2)
    assert sql.reads == 1


async def test_write_through_reaches_every_level_with_its_ttl(
    cache: TieredCache, sql: GatedSqlStore, l2: RedisTier
) -> None:
    outcome = await cache.set("account:7", b"limits", ttl_ms=60_000)
    assert outcome.applied and outcome.version > 0
    row = (await sql.get_many(["account:7"], wall_ms()))["account:7"]
    assert row.value == b"limits" and row.version == outcome.version and row.expires_at_ms > wall_ms()
    assert 0 < await l2.client.pttl(l2.prefix + "account:7") <= 60_000
    assert cache.l1 is not None and "account:7" in cache.l1
    answer = await cache.get("account:7")
    assert answer.level == Level.L1 and 0 < answer.ttl_ms <= 60_000


async def test_cache_only_write_skips_sql(cache: TieredCache, sql: GatedSqlStore, l2: RedisTier) -> None:
    await cache.set("session:1", b"s", cache_only=True)
    assert await sql.get_many(["session:1"], wall_ms()) == {}
    assert (await l2.get_many(["session:1"]))[0][0] is not None


async def test_miss_is_cached_as_a_miss_then_a_write_replaces_it(
    cache: TieredCache, sql: GatedSqlStore
) -> None:
    first = await cache.get("instrument:NOPE")
    assert not first.found and first.level == Level.L3
    second = await cache.get("instrument:NOPE")
    assert not second.found and second.level == Level.L1
    assert cache.l1 is not None
    cache.l1.clear()
    third = await cache.get("instrument:NOPE")
    assert not third.found and third.level == Level.L2
    assert sql.reads == 1
    await cache.set("instrument:NOPE", b"listed now")
    assert (await cache.get("instrument:NOPE")).value == b"listed now"


async def test_concurrent_misses_for_one_key_make_one_load(cache: TieredCache, sql: GatedSqlStore) -> None:
    await sql.put_many([("instrument:ETHUSDT", StoredEntry(b"eth", 1))])
    sql.gate = asyncio.Event()
    readers = [asyncio.create_task(cache.get("instrument:ETHUSDT")) for _ in range(50)]
    await sql.reading.wait()
    sql.gate.set()
    answers = await asyncio.gather(*readers)
    assert {a.value for a in answers} == {b"eth"}
    assert sql.reads == 1
    assert cache.stats().single_flight_joins == 49


async def test_get_many_mixes_levels_in_request_order(cache: TieredCache, sql: GatedSqlStore) -> None:
    await sql.put_many([("a", StoredEntry(b"A", 1)), ("c", StoredEntry(b"C", 1))])
    await cache.get("a")
    answers = await cache.get_many(["c", "b", "a", "c"])
    assert [(x.found, x.value) for x in answers] == [(True, b"C"), (False, b""), (True, b"A"), (True, b"C")]
    assert answers[2].level == Level.L1


async def test_load_racing_a_delete_does_not_set_the_old_value_back(
    cache: TieredCache, sql: GatedSqlStore
) -> None:
    await sql.put_many([("account:9", StoredEntry(b"old", 1))])
    gate = asyncio.Event()
    sql.gate = gate
    load = asyncio.create_task(cache.get("account:9"))
    await sql.reading.wait()  # the load has read "old" from SQL ...
    sql.gate = None
    await cache.delete("account:9")  # ... the delete lands on every level ...
    gate.set()  # ... and only then does the load go on to fill Redis and L1.
    stale = await load
    assert stale.value == b"old"  # the racing reader itself saw the value of its time
    after = await cache.get("account:9")
    assert not after.found  # but nothing kept it: not L1, not Redis
    assert cache.stats().stale_set_backs_refused == 2


async def test_write_with_an_older_version_loses_to_the_stored_one(
    cache: TieredCache, sql: GatedSqlStore
) -> None:
    first = await cache.set("k", b"first")
    ahead = first.version + 10_000_000  # another replica whose clock runs 10 s ahead
    await sql.put_many([("k", StoredEntry(b"from elsewhere", ahead))])
    late = await cache.set("k", b"late")
    assert (late.applied, late.version) == (False, ahead)
    assert cache.l1 is not None
    cache.l1.clear()
    await cache.l2.client.delete(cache.l2.prefix + "k")  # type: ignore[union-attr]
    assert (await cache.get("k")).value == b"from elsewhere"


async def test_invalidate_pattern_everywhere_or_keeping_sql(
    cache: TieredCache, sql: GatedSqlStore, l2: RedisTier
) -> None:
    await cache.set_many([SetItem(f"instrument:{i}", b"v") for i in range(3)] + [SetItem("account:1", b"a")])
    kept = await cache.invalidate_pattern("instrument:*", keep_durable=True)
    assert (kept.l1_removed, kept.l2_removed, kept.l3_removed) == (3, 3, 0)
    again = await cache.get("instrument:0")
    assert again.found and again.level == Level.L3  # reloaded from the source of truth
    gone = await cache.invalidate_pattern("instrument:*")
    assert gone.l3_removed == 3
    assert not (await cache.get("instrument:1")).found
    assert (await cache.get("account:1")).found


async def test_oversize_or_malformed_requests_are_refused(cache: TieredCache) -> None:
    with pytest.raises(InvalidArgument, match="key"):
        await cache.get("k" * 65)
    with pytest.raises(InvalidArgument, match="empty"):
        await cache.get("")
    with pytest.raises(InvalidArgument, match=r"entries\[0\].value"):
        await cache.set("k", b"x" * 1025)
    with pytest.raises(InvalidArgument, match="ttl_ms"):
        await cache.set("k", b"x", ttl_ms=-1)
    with pytest.raises(InvalidArgument, match="unterminated"):
        await cache.invalidate_pattern("instrument:[A")
