"""The gateway balancing the stateless services over real market data replicas (one slowed) and
fake cache replicas that record what reaches them: spread, health ejection, draining, retries of
idempotent reads only, streams pinned to their replica, credentials passed through untouched."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from hftgate.bench.gateway import start_marketdata_replica
from hftgate.grpcserver import RunningServer, ServiceBinding, create_server
from hftgate.security import API_KEY_METADATA, SERVICE_TOKEN_METADATA, load_suite_secret
from hftgate.shardmap import ShardMap
from hftgate.v1 import cache_pb2, cache_pb2_grpc, marketdata_pb2, marketdata_pb2_grpc
from services.gateway.replicas import ReplicaSpec
from services.gateway.server import GatewayServer
from services.gateway.server import start as start_gateway
from services.gateway.stateless import CACHE_SERVICE, MARKETDATA_SERVICE
from tests.services.gateway.conftest import gateway_config, store_map

FEED = ((SERVICE_TOKEN_METADATA, load_suite_secret().token_for("feed")),)


async def open_gateway(tmp_path: Path, **overrides: Any) -> GatewayServer:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shardmap.sqlite3'}"
    store = await store_map(url, ShardMap.single())
    await store.close()
    return await start_gateway(gateway_config(tmp_path, url, **overrides))


async def direct_call_ms(replica: RunningServer, calls: int = 30) -> float:
    """The median time of one GetSnapshot straight to ``replica``: this machine's floor now."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=FEED, timeout=5)
            times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


@pytest.fixture
async def marketdata(tmp_path: Path) -> AsyncIterator[tuple[list[RunningServer], GatewayServer, Any]]:
    """Three real market data replicas behind the gateway, the third slowed by 5 ms a call, or by
    ten times a direct call where that is more (on a slow day a fast replica's own hiccups reach
    5 ms, and a replica only 3x slower is rightly chosen now and then)."""
    replicas = [await start_marketdata_replica() for _ in range(2)]
    slow_ms = max(5.0, 10 * await direct_call_ms(replicas[0]))
    replicas.append(await start_marketdata_replica(delay_ms=slow_ms))
    gateway = await open_gateway(tmp_path, marketdata_replicas=tuple(f"127.0.0.1:{r.port}" for r in replicas))
    pool = gateway.app.pools[MARKETDATA_SERVICE]  # type: ignore[union-attr]
    assert await pool.wait_serving(3)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    try:
        yield replicas, gateway, marketdata_pb2_grpc.MarketDataServiceStub(channel)
    finally:
        await channel.close(None)
        await gateway.stop(0)
        for replica in replicas:
            await replica.stop(0)


def calls_by_replica(gateway: GatewayServer, service: str = MARKETDATA_SERVICE) -> dict[str, int]:
    pool = gateway.app.pools[service]  # type: ignore[union-attr]
    return {r.address: r.endpoint.calls for r in pool.replicas}


async def test_reads_spread_over_healthy_replicas_and_avoid_the_slow_one(marketdata: Any) -> None:
    replicas, gateway, stub = marketdata
    for _ in range(300):
        reply = await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=FEED, timeout=5)
        assert reply.HasField("stats")
    calls = calls_by_replica(gateway)
    fast = [calls[f"127.0.0.1:{r.port}"] for r in replicas[:2]]
    slow = calls[f"127.0.0.1:{replicas[2].port}"]
    assert sum(fast) + slow == 300
    # Round robin would send each 100. Margins leave room for a loaded CI machine, where a fast
    # replica is sometimes slow for a while too (peak EWMA then rightly leans on the other one);
    # the slow one must still get clearly less than its share.
    assert min(fast) > 15, calls  # both fast replicas take calls
    assert slow < 75, calls


async def test_an_unhealthy_replica_gets_no_new_calls_until_it_serves_again(marketdata: Any) -> None:
    replicas, gateway, stub = marketdata
    pool = gateway.app.pools[MARKETDATA_SERVICE]
    down = replicas[0]
    address = f"127.0.0.1:{down.port}"
    await down.set_serving(False)  # what a stopping replica does first
    for _ in range(50):
        if pool.replica(address).endpoint.serving is False:
            break
        await asyncio.sleep(0.01)
    before = calls_by_replica(gateway)[address]
    for _ in range(60):
        await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=FEED, timeout=5)
    assert calls_by_replica(gateway)[address] == before
    await down.set_serving(True)
    assert await pool.wait_serving(3)
    for _ in range(100):
        await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=FEED, timeout=5)
    assert calls_by_replica(gateway)[address] > before


async def test_a_draining_replica_gets_no_new_calls(marketdata: Any) -> None:
    replicas, gateway, stub = marketdata
    pool = gateway.app.pools[MARKETDATA_SERVICE]
    addresses = [f"127.0.0.1:{r.port}" for r in replicas]
    pool.install(
        [ReplicaSpec(addresses[0], draining=True), ReplicaSpec(addresses[1]), ReplicaSpec(addresses[2])]
    )
    before = calls_by_replica(gateway)
    for _ in range(40):
        await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=FEED, timeout=5)
    after = calls_by_replica(gateway)
    assert after[addresses[0]] == before[addresses[0]]
    assert sum(after.values()) - sum(before.values()) == 40
    pool.install([ReplicaSpec(addresses[1])])  # the source removed two: they get nothing at all
    assert [r.address for r in pool.replicas] == [addresses[1]]
    await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=FEED, timeout=5)
    assert calls_by_replica(gateway) == {addresses[1]: after[addresses[1]] + 1}


async def test_a_read_on_a_dead_replica_is_retried_once_on_another(marketdata: Any) -> None:
    replicas, gateway, stub = marketdata
    forwarder = gateway.stateless[MARKETDATA_SERVICE]
    # Only the replica about to die and the slow one remain; the dead one's health watch is stopped
    # first, so the balancer still believes it serves (as in the moment before a watch breaks).
    pool = gateway.app.pools[MARKETDATA_SERVICE]
    dead, slow = replicas[0], replicas[2]
    dead_address = f"127.0.0.1:{dead.port}"
    pool.install([ReplicaSpec(dead_address), ReplicaSpec(f"127.0.0.1:{slow.port}")])
    watch = pool.replica(dead_address).health_task
    watch.cancel()
    await asyncio.gather(watch, return_exceptions=True)
    await dead.server.stop(None)  # gone without a NOT_SERVING
    assert pool.replica(dead_address).endpoint.serving is True
    answered = 0
    for _ in range(6):
        reply = await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=FEED, timeout=5)
        answered += reply.HasField("stats")
    assert answered == 6  # none of the calls failed
    # The first call met the dead replica and was answered by the other; the dead one was then
    # ejected, so no later call paid for it.
    assert forwarder.retries == 1
    assert pool.replica(dead_address).endpoint.failures == 1


async def test_no_replica_left_is_unavailable_saying_why(marketdata: Any) -> None:
    replicas, gateway, stub = marketdata
    for replica in replicas:
        await replica.set_serving(False)
    pool = gateway.app.pools[MARKETDATA_SERVICE]
    for _ in range(100):
        if all(r.endpoint.serving is False for r in pool.replicas):
            break
        await asyncio.sleep(0.01)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=FEED, timeout=5)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (failed.value.details() or "").startswith("no healthy marketdata replica (")
    assert "not serving" in (failed.value.details() or "")


async def test_replica_statuses_and_credentials_pass_through(marketdata: Any) -> None:
    _, gateway, stub = marketdata
    with pytest.raises(grpc.aio.AioRpcError) as none:
        await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), timeout=5)
    assert none.value.code() == grpc.StatusCode.UNAUTHENTICATED  # refused at the gateway's door
    with pytest.raises(grpc.aio.AioRpcError) as key:
        # An API key the replicas cannot check (they have no key store here): the replica's own refusal.
        await stub.GetSnapshot(
            marketdata_pb2.GetSnapshotRequest(), metadata=((API_KEY_METADATA, "nope"),), timeout=5
        )
    assert key.value.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(depth_levels=-1), metadata=FEED, timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "depth_levels must be >= 0" in (bad.value.details() or "")
    assert gateway.stateless[MARKETDATA_SERVICE].retries == 0  # an answer, not a failure: not retried


async def test_publishing_through_the_gateway_needs_a_single_replica(marketdata: Any) -> None:
    _, _, stub = marketdata

    async def ticks() -> AsyncIterator[marketdata_pb2.PublishTradesRequest]:
        yield marketdata_pb2.PublishTradesRequest()

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.PublishTrades(ticks(), metadata=FEED, timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "publish to every replica directly" in (refused.value.details() or "")


async def test_publishing_through_the_gateway_without_a_service_token_is_refused_there(
    marketdata: Any,
) -> None:
    """An API key (or nothing) cannot publish: UNAUTHENTICATED from the gateway itself, every time,
    however many messages the caller streams (the replica's refusal, forwarded, raced the gateway's
    writes and could reach the caller as INTERNAL: grpc issue #36066)."""
    _, gateway, stub = marketdata

    async def ticks() -> AsyncIterator[marketdata_pb2.PublishTradesRequest]:
        for _ in range(5):
            yield marketdata_pb2.PublishTradesRequest()

    calls_before = [r.endpoint.calls for r in gateway.stateless[MARKETDATA_SERVICE].pool.replicas]
    for metadata in [(("x-api-key", "hftgate-demo-carol"),)] * 5 + [()]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.PublishTrades(ticks(), metadata=metadata, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, refused.value.details()
        said = (
            "PublishTrades needs a service token" if metadata else "needs an API key (x-api-key) or a service"
        )
        assert said in (refused.value.details() or "")
    assert [r.endpoint.calls for r in gateway.stateless[MARKETDATA_SERVICE].pool.replicas] == calls_before


# --- fake cache replicas ------------------------------------------------------------------------
@dataclass
class FakeCache:
    """A CacheService that records each call (method, metadata) and answers as ``behaviour`` says."""

    name: str
    behaviour: Callable[[str, grpc.aio.ServicerContext], Awaitable[bytes]]
    calls: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    running: RunningServer | None = None

    async def start(self) -> FakeCache:
        def bind(method: str, stream: bool) -> grpc.RpcMethodHandler:
            async def unary(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
                self.calls.append((method, {k: v for k, v in context.invocation_metadata() or ()}))
                return await self.behaviour(method, context)

            async def streaming(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
                self.calls.append((method, {k: v for k, v in context.invocation_metadata() or ()}))
                for i in range(1_000):
                    yield cache_pb2.CacheInvalidation(keys=[f"{self.name}-{i}"]).SerializeToString()
                    await asyncio.sleep(0.02)

            if stream:
                return grpc.unary_stream_rpc_method_handler(streaming)
            return grpc.unary_unary_rpc_method_handler(unary)

        methods = {m: bind(m, False) for m in ("Get", "GetMany", "Set", "Delete")}
        methods["WatchInvalidations"] = bind("WatchInvalidations", True)
        handler = grpc.method_handlers_generic_handler(CACHE_SERVICE, methods)
        self.running = await create_server(
            "127.0.0.1:0", [ServiceBinding(CACHE_SERVICE, lambda s: s.add_generic_rpc_handlers((handler,)))]
        )
        return self

    @property
    def address(self) -> str:
        assert self.running is not None
        return f"127.0.0.1:{self.running.port}"


async def failing(method: str, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "replica is going away")
    return b""


async def answering(method: str, context: grpc.aio.ServicerContext) -> bytes:
    if method == "Get":
        return cache_pb2.CacheGetResponse(
            found=True, entry=cache_pb2.CacheEntry(value=b"v")
        ).SerializeToString()
    if method == "Set":
        return cache_pb2.CacheSetResponse().SerializeToString()
    return b""


@pytest.fixture
async def caches(tmp_path: Path) -> AsyncIterator[tuple[FakeCache, FakeCache, GatewayServer, Any]]:
    bad = await FakeCache("bad", failing).start()
    good = await FakeCache("good", answering).start()
    gateway = await open_gateway(tmp_path, cache_replicas=(bad.address, good.address), balancer="round_robin")
    assert await gateway.app.pools[CACHE_SERVICE].wait_serving(2)  # type: ignore[union-attr]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    try:
        yield bad, good, gateway, cache_pb2_grpc.CacheServiceStub(channel)
    finally:
        await channel.close(None)
        await gateway.stop(0)
        for fake in (bad, good):
            assert fake.running is not None
            await fake.running.stop(0)


async def test_cache_get_is_retried_once_but_a_set_never(caches: Any) -> None:
    bad, good, gateway, stub = caches
    key = (("x-api-key", "some-account-key"), ("x-hftgate-account", "forged"), ("other", "x"))
    for _ in range(4):  # round robin: half the calls go to the failing replica first
        reply = await stub.Get(cache_pb2.CacheGetRequest(key="k"), metadata=key, timeout=5)
        assert reply.found and reply.entry.value == b"v"
    assert gateway.stateless[CACHE_SERVICE].retries >= 1
    pool = gateway.app.pools[CACHE_SERVICE]
    for r in pool.replicas:
        r.endpoint.ejected_until_ns = 0  # so the next Set may go to the failing one
    sets_before = len([c for c in bad.calls + good.calls if c[0] == "Set"])
    outcomes = []
    for _ in range(4):
        try:
            await stub.Set(cache_pb2.CacheSetRequest(key="k", value=b"v"), metadata=key, timeout=5)
            outcomes.append("ok")
        except grpc.aio.AioRpcError as err:
            outcomes.append(err.code().name)
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            assert (err.details() or "").startswith(f"cache replica {bad.address} is unavailable")
        for r in pool.replicas:
            r.endpoint.ejected_until_ns = 0
    sets = [c for c in bad.calls + good.calls if c[0] == "Set"]
    assert len(sets) - sets_before == 4  # each Set reached exactly one replica: none was sent twice
    assert "UNAVAILABLE" in outcomes and "ok" in outcomes
    # Only the caller's credential travelled: no forged account header, no gateway token.
    for _, metadata in bad.calls + good.calls:
        assert metadata.get("x-api-key") == "some-account-key"
        assert "x-hftgate-account" not in metadata and "other" not in metadata
        assert SERVICE_TOKEN_METADATA not in metadata


async def test_a_server_stream_stays_on_the_replica_it_started_on(caches: Any) -> None:
    bad, good, gateway, stub = caches
    pool = gateway.app.pools[CACHE_SERVICE]
    pool.install([ReplicaSpec(good.address), ReplicaSpec(bad.address, draining=True)])
    call = stub.WatchInvalidations(cache_pb2.CacheWatchInvalidationsRequest(), metadata=FEED)
    first = await call.read()
    assert first.keys[0].startswith("good-")
    # Now the good one drains and the bad one serves: the open stream does not move.
    pool.install([ReplicaSpec(good.address, draining=True), ReplicaSpec(bad.address)])
    seen = [(await call.read()).keys[0] for _ in range(5)]
    assert all(k.startswith("good-") for k in seen), seen
    call.cancel()
    await asyncio.sleep(0.05)
    streams = [c for c in bad.calls + good.calls if c[0] == "WatchInvalidations"]
    assert len(streams) == 1
