"""L2, Redis: encoding, versioned writes, promotion only into untouched slots, patterns, outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from services.cache.embedded_redis import EmbeddedRedis
from services.cache.l2_redis import L2Unavailable, RedisTier
from services.cache.model import StoredEntry, wall_ms


@pytest.fixture
async def tier(redis_url: str, key_prefix: str) -> AsyncIterator[RedisTier]:
    tier = RedisTier(redis_url, key_prefix=key_prefix)
    await tier.start()
    yield tier
    await tier.close()


async def test_put_then_get_many_returns_entries_in_order(tier: RedisTier) -> None:
    expires = wall_ms() + 60_000
    written = await tier.put_many([("a", StoredEntry(b"A", 5)), ("b", StoredEntry(b"B", 6, expires))])
    assert written == [5, 6]
    entries, epoch = await tier.get_many(["b", "missing", "a"])
    assert entries == [StoredEntry(b"B", 6, expires), None, StoredEntry(b"A", 5, 0)]
    assert epoch == b""
    ttl = await tier.client.pttl(tier.prefix + "b")
    assert 0 < ttl <= 60_000  # the TTL is carried into Redis's own expiry


async def test_write_if_newer_keeps_the_highest_version(tier: RedisTier) -> None:
    big = 1_700_000_000_000_123  # a microsecond version, above 2^32, below 2^53
    assert await tier.put_many([("k", StoredEntry(b"new", big))]) == [big]
    assert await tier.put_many([("k", StoredEntry(b"old", big - 1))]) == [big]
    assert await tier.put_many([("k", StoredEntry(None, big + 1))], ttl_absent_ms=10_000) == [big + 1]
    assert await tier.put_many([("k", StoredEntry(b"late", big))]) == [big + 1]
    entries, _ = await tier.get_many(["k"])
    assert entries == [StoredEntry(None, big + 1, 0)]


async def test_promote_only_into_a_slot_nobody_touched(tier: RedisTier) -> None:
    _, epoch = await tier.get_many(["x", "y", "z"])
    await tier.put_many([("y", StoredEntry(b"written meanwhile", 9))])
    stored = await tier.promote(
        [("x", StoredEntry(b"loaded", 3)), ("y", StoredEntry(b"loaded", 3)), ("z", StoredEntry(None, 0))],
        epoch,
        ttl_absent_ms=5_000,
    )
    assert stored == [True, False, True]
    entries, _ = await tier.get_many(["x", "y", "z"])
    assert (
        entries[0] == StoredEntry(b"loaded", 3, 0)
        and entries[1] is not None
        and entries[1].value == b"written meanwhile"
    )
    assert entries[2] == StoredEntry(None, 0, 0)


async def test_pattern_invalidation_bumps_epoch_and_blocks_older_promotions(tier: RedisTier) -> None:
    await tier.put_many(
        [(f"instrument:{i}", StoredEntry(b"v", 1)) for i in range(5)] + [("account:1", StoredEntry(b"v", 1))]
    )
    _, epoch_before = await tier.get_many(["instrument:9"])
    assert await tier.delete_matching("instrument:*") == 5
    entries, epoch_after = await tier.get_many(["instrument:0", "account:1"])
    assert entries[0] is None and entries[1] is not None
    assert epoch_after != epoch_before
    assert await tier.promote([("instrument:9", StoredEntry(b"stale", 1))], epoch_before, 1000) == [False]
    assert await tier.promote([("instrument:9", StoredEntry(b"fresh", 2))], epoch_after, 1000) == [True]


async def test_outage_fails_fast_and_recovers_by_itself(own_redis: EmbeddedRedis) -> None:
    tier = RedisTier(own_redis.url, key_prefix="t:", backoff_initial_ms=20, backoff_max_ms=100)
    await tier.start()
    try:
        await tier.put_many([("stale-after-outage", StoredEntry(b"v1", 1)), ("kept", StoredEntry(b"k", 1))])
        own_redis.stop()
        with pytest.raises(L2Unavailable):
            await tier.get_many(["kept"])
        assert not tier.available
        with pytest.raises(L2Unavailable):  # fails without waiting on the network
            await tier.put_many([("stale-after-outage", StoredEntry(b"v2", 2))])
        assert tier.errors >= 1
        own_redis.start()
        for _ in range(200):
            if tier.available:
                break
            await asyncio.sleep(0.02)
        assert tier.available
        entries, _ = await tier.get_many(["stale-after-outage"])
        assert entries == [None]  # an empty server after a restart
    finally:
        await tier.close()


async def test_writes_skipped_during_a_blip_are_removed_on_recovery(redis_url: str, key_prefix: str) -> None:
    tier = RedisTier(redis_url, key_prefix=key_prefix, backoff_initial_ms=20)
    await tier.start()
    try:
        await tier.put_many([("k", StoredEntry(b"v1", 1)), ("other", StoredEntry(b"o", 1))])
        # A blip: the server keeps its data but this replica could not write v2 there.
        tier._mark_down(ConnectionError("simulated blip"))
        with pytest.raises(L2Unavailable):
            await tier.put_many([("k", StoredEntry(b"v2", 2))])
        for _ in range(200):
            if tier.available:
                break
            await asyncio.sleep(0.02)
        entries, _ = await tier.get_many(["k", "other"])
        assert entries[0] is None  # v1 is gone: the next read reloads v2 from SQL
        assert entries[1] == StoredEntry(b"o", 1, 0)
    finally:
        await tier.close()
