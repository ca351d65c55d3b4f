"""The cache service over gRPC, with the CacheClient other services embed."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from hftgate.v1 import cache_pb2, cache_pb2_grpc
from services.cache.client import CacheClient
from services.cache.config import CacheConfig, load_config
from services.cache.server import CacheRunningServer

from .conftest import credentials_for

StartReplica = Callable[..., Awaitable[CacheRunningServer]]
Connect = Callable[..., Awaitable[CacheClient]]
Metadata = tuple[tuple[str, str], ...]


async def test_client_reads_through_and_then_from_its_near_cache(
    replica_config: CacheConfig, start_replica: StartReplica, connect: Connect
) -> None:
    replica = await start_replica(replica_config)
    client = await connect(replica.port)
    set_result = await client.set("instrument:BTCUSDT", b"tick=0.01", ttl_ms=60_000)
    assert set_result.applied
    entry = await client.get_entry("instrument:BTCUSDT")
    assert entry is not None and entry.value == b"tick=0.01" and entry.version == set_result.version
    assert entry.level in (1, 2) and 0 < entry.ttl_ms <= 60_000
    # The Set's own invalidations may still be on their way, and a read they overtake is
    # not kept: read until the near cache holds the key.
    for _ in range(200):
        if "instrument:BTCUSDT" in client.near_cache:
            break
        await asyncio.sleep(0.01)
        await client.get("instrument:BTCUSDT")
    hits_before = client.near_cache_stats().hits
    assert await client.get("instrument:BTCUSDT") == b"tick=0.01"
    assert client.near_cache_stats().hits == hits_before + 1
    assert await client.get("instrument:NOPE") is None
    assert await client.get("instrument:NOPE") is None  # the miss is cached too
    assert client.near_cache_stats().negative_hits == 1


async def test_get_many_set_many_delete_and_pattern(
    replica_config: CacheConfig, start_replica: StartReplica, connect: Connect
) -> None:
    replica = await start_replica(replica_config)
    client = await connect(replica.port)
    results = await client.set_many(
        [(f"account:{i}", b"a%d" % i) for i in range(5)] + [("instrument:X", b"x")]
    )
    assert all(r.applied for r in results)
    assert await client.get_many(["account:1", "account:9", "account:3"]) == {
        "account:1": b"a1",
        "account:3": b"a3",
    }
    version = await client.delete("account:1")
    assert version > results[1].version
    assert await client.get("account:1") is None
    outcome = await client.invalidate_pattern("account:*")
    assert outcome.l3_removed == 4
    assert await client.get_many([f"account:{i}" for i in range(5)] + ["instrument:X"]) == {
        "instrument:X": b"x"
    }


async def test_bad_requests_get_invalid_argument_with_the_field(
    replica_config: CacheConfig, start_replica: StartReplica
) -> None:
    metadata = credentials_for("execution").metadata  # admin's key limit leaves room for namespaces
    replica = await start_replica(replica_config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        cases = [
            (stub.Get(cache_pb2.CacheGetRequest(key=""), metadata=metadata), "key"),
            (stub.Get(cache_pb2.CacheGetRequest(key="k" * 129), metadata=metadata), "key"),
            (
                stub.Set(cache_pb2.CacheSetRequest(key="k", value=b"v" * 4097), metadata=metadata),
                "value",
            ),
            (stub.Set(cache_pb2.CacheSetRequest(key="", value=b"v"), metadata=metadata), "key"),
            (
                stub.Set(cache_pb2.CacheSetRequest(key="k", value=b"v", ttl_ms=-5), metadata=metadata),
                "ttl_ms",
            ),
            (stub.GetMany(cache_pb2.CacheGetManyRequest(keys=["k"] * 101), metadata=metadata), "keys"),
            (
                stub.InvalidatePattern(
                    cache_pb2.CacheInvalidatePatternRequest(pattern="a[b"), metadata=metadata
                ),
                "pattern",
            ),
        ]
        for call, field in cases:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            status = rpc_status.from_call(info.value)
            assert status is not None
            detail = error_details_pb2.BadRequest()
            assert status.details[0].Unpack(detail)
            assert detail.field_violations[0].field == field


async def test_stats_report_every_level(
    replica_config: CacheConfig, start_replica: StartReplica, connect: Connect
) -> None:
    replica = await start_replica(replica_config)
    client = await connect(replica.port)
    await client.set("k", b"v")
    await client.get_entry("k", near_cache=False)
    await client.get_entry("absent", near_cache=False)
    stats = await client.service_stats()
    assert [level.level for level in stats.levels] == [1, 2, 3]
    l1 = stats.levels[0]
    assert l1.entries >= 1 and l1.bytes > 0 and l1.lookup_latency.count >= 2
    assert stats.levels[2].misses >= 1  # "absent" went all the way to SQL
    assert stats.redis_available and stats.invalidations_live
    assert stats.invalidation_mode == "tracking"
    assert stats.invalidation_watchers == 1


async def test_watch_stream_starts_with_a_flush(
    replica_config: CacheConfig, start_replica: StartReplica, admin_metadata: Metadata
) -> None:
    replica = await start_replica(replica_config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        stream = stub.WatchInvalidations(
            cache_pb2.CacheWatchInvalidationsRequest(watcher_name="raw"), metadata=admin_metadata
        )
        first = await stream.read()
        assert first.reason == cache_pb2.CACHE_INVALIDATION_REASON_SUBSCRIBED and first.flush_all
        assert first.sequence == 1
        await stub.Delete(cache_pb2.CacheDeleteRequest(key="gone"), metadata=admin_metadata)
        second = await asyncio.wait_for(stream.read(), 5)
        assert list(second.keys) == ["gone"] and second.sequence == 2
        stream.cancel()


async def test_client_reconnects_its_stream_after_a_service_restart(
    replica_config: CacheConfig, start_replica: StartReplica, connect: Connect
) -> None:
    replica = await start_replica(replica_config)
    client = await connect(replica.port)
    await client.set("k", b"v1")
    await client.get("k")
    port = replica.port
    await replica.stop(0)
    for _ in range(250):
        if not client.live:
            break
        await asyncio.sleep(0.02)
    assert not client.live and "k" not in client.near_cache  # nothing cached while deaf
    await start_replica(replica_config, port=port)
    assert await client.wait_live(10)
    assert await client.get("k") == b"v1"


def test_config_reads_prefixed_and_plain_urls() -> None:
    config = load_config({"REDIS_URL": "redis://r:1/0", "DATABASE_URL": "postgresql+asyncpg://p/db"})
    assert (config.redis_url, config.database_url) == ("redis://r:1/0", "postgresql+asyncpg://p/db")
    config = load_config({"REDIS_URL": "redis://r:1/0", "HFTGATE_CACHE_REDIS_URL": "redis://mine:2/0"})
    assert config.redis_url == "redis://mine:2/0" and config.port == 50053
    with pytest.raises(ValueError, match="INVALIDATION_MODE"):
        load_config({"HFTGATE_CACHE_INVALIDATION_MODE": "carrier-pigeon"})


async def test_without_a_redis_url_the_service_runs_its_own_redis(
    replica_config: CacheConfig, start_replica: StartReplica, connect: Connect
) -> None:
    replica = await start_replica(replica_config, redis_url="")
    client = await connect(replica.port)
    await client.set("k", b"v")
    stats = await client.service_stats()
    assert stats.redis_available and stats.invalidation_mode == "tracking"
    assert replica.cache is not None and replica.cache.l2 is not None
    assert replica.cache.l2.url != replica_config.redis_url  # not the machine's Redis
    assert await replica.cache.l2.client.exists(replica.cache.l2.prefix + "k") == 1


async def test_python_dash_m_serves_until_sigterm(
    redis_url: str, key_prefix: str, tmp_path: Path, admin_metadata: Metadata
) -> None:
    env = dict(
        os.environ,
        HFTGATE_CACHE_PORT="0",
        HFTGATE_CACHE_REDIS_URL=redis_url,
        HFTGATE_CACHE_KEY_PREFIX=key_prefix,
        HFTGATE_CACHE_STATE_DIR=str(tmp_path),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cache", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        port = 0
        while not port:
            line = (await asyncio.wait_for(process.stderr.readline(), 20)).decode()
            assert line, "the service exited before listening"
            if match := re.search(r"listening on [\d.]+:(\d+)", line):
                port = int(match.group(1))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service="hftgate.v1.CacheService"))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Set(cache_pb2.CacheSetRequest(key="k", value=b"v"))  # no credentials
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            await stub.Set(cache_pb2.CacheSetRequest(key="k", value=b"v"), metadata=admin_metadata)
            reply = await stub.Get(cache_pb2.CacheGetRequest(key="k"), metadata=admin_metadata)
            assert reply.entry.value == b"v"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 20) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_config_refuses_an_outage_bound_that_would_turn_it_off() -> None:
    from services.cache.config import load_config

    for value in ("0", "-5"):
        with pytest.raises(ValueError, match="DEGRADED_NEAR_TTL_MS"):
            load_config({"HFTGATE_CACHE_DEGRADED_NEAR_TTL_MS": value})
