"""Redis goes away mid-run (a server this test started and stops, never the machine's):
reads and writes go on through L1 and SQL, errors are counted and logged once per interval,
near caches get a bounded TTL, and Redis comes back into use by itself."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import pytest

from services.cache.client import CacheClient
from services.cache.config import CacheConfig
from services.cache.embedded_redis import EmbeddedRedis
from services.cache.server import CacheRunningServer
from services.cache.tiered import Level, TieredCache

StartReplica = Callable[..., Awaitable[CacheRunningServer]]
Connect = Callable[..., Awaitable[CacheClient]]


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_service_rides_out_a_redis_outage_and_recovers(
    replica_config: CacheConfig,
    own_redis: EmbeddedRedis,
    start_replica: StartReplica,
    connect: Connect,
    caplog: pytest.LogCaptureFixture,
) -> None:
    replica = await start_replica(
        replica_config, redis_url=own_redis.url, redis_backoff_initial_ms=20, redis_backoff_max_ms=200
    )
    cache = replica.cache
    assert isinstance(cache, TieredCache)
    client = await connect(replica.port)
    await client.set("account:1", b"before")
    assert cache.stats().redis_available

    own_redis.stop()
    caplog.set_level(logging.WARNING, logger="services.cache")
    # Writes and reads go on: SQL is the source of truth, L1 the fast path.
    for i in range(20):
        assert (await client.set(f"account:{i}", b"during %d" % i)).applied
    assert await client.get("account:1") == b"during 1"
    assert (await client.get_entry("account:7", near_cache=False)) is not None
    await client.delete("account:2")
    assert await client.get("account:2") is None
    assert cache.l1 is not None
    cache.l1.clear()
    answer = await cache.get("account:3")  # nothing cached anywhere fast: SQL answers
    assert answer.found and answer.value == b"during 3" and answer.level == Level.L3
    assert answer.near_cache_ttl_ms > 0  # nobody may cache it for long while deaf to others
    stats = cache.stats()
    assert not stats.redis_available
    assert stats.levels[1].errors >= 20
    redis_warnings = [r for r in caplog.records if r.name == "services.cache.l2_redis"]
    assert 1 <= len(redis_warnings) <= 2  # logged once per interval, not once per error

    own_redis.start()  # same port, empty: as after a crash
    assert await _until(lambda: cache.stats().redis_available and cache.stats().invalidations_live)
    assert await client.wait_live(5)
    for _ in range(2):
        cache.l1.clear()
        assert (await cache.get("account:5")).value == b"during 5"
    hits_before = cache.stats().levels[1].hits
    cache.l1.clear()
    assert (await cache.get("account:5")).level == Level.L2  # Redis serves again
    assert cache.stats().levels[1].hits == hits_before + 1
