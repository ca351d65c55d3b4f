"""The gateway following the scaler's WatchReplicas: replicas the scaler adds take calls, a draining
one takes none, a removed one is gone; the static list serves while the scaler is down or late."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from hftgate.bench.gateway import start_marketdata_replica
from hftgate.grpcserver import RunningServer
from hftgate.security import SERVICE_TOKEN_METADATA, load_suite_secret, load_suite_security
from hftgate.shardmap import ShardMap
from hftgate.v1 import marketdata_pb2, marketdata_pb2_grpc
from hftgate.v1 import scaler_pb2 as pb
from services.gateway.replicas import ReplicaSpec, ScalerReplicas
from services.gateway.server import GatewayServer
from services.gateway.server import start as start_gateway
from services.gateway.stateless import CACHE_SERVICE, MARKETDATA_SERVICE
from services.scaler.backends import Backend, Started
from services.scaler.config import ScalerConfig
from services.scaler.registry import ReplicaState
from services.scaler.server import ScalerRunningServer
from services.scaler.server import start as start_scaler
from tests.services.gateway.conftest import gateway_config, store_map

FEED = ((SERVICE_TOKEN_METADATA, load_suite_secret().token_for("feed")),)


class NoBackend(Backend):
    name = "local_process"

    async def start(self, service: str, replica_id: str, target_count: int) -> Started:
        raise AssertionError("these tests start nothing")

    async def stop(self, service: str, replica_id: str, handle: str, target_count: int) -> None:
        raise AssertionError("these tests stop nothing")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def open_scaler(tmp_path: Path, port: int = 0) -> ScalerRunningServer:
    config = ScalerConfig(port=port, state_dir=str(tmp_path / "scaler"))
    return await start_scaler(
        config, load_suite_security("scaler"), backends={"local_process": NoBackend()}, loops=False
    )


async def open_gateway(tmp_path: Path, **overrides: Any) -> GatewayServer:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shardmap.sqlite3'}"
    store = await store_map(url, ShardMap.single())
    await store.close()
    return await start_gateway(gateway_config(tmp_path, url, **overrides))


async def eventually(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


def pool_view(gateway: GatewayServer) -> dict[str, bool]:
    """address -> draining, of the gateway's market data pool."""
    assert gateway.app is not None
    return {r.address: r.endpoint.draining for r in gateway.app.pools[MARKETDATA_SERVICE].replicas}


def calls(gateway: GatewayServer) -> dict[str, int]:
    assert gateway.app is not None
    return {r.address: r.endpoint.calls for r in gateway.app.pools[MARKETDATA_SERVICE].replicas}


@pytest.fixture
async def replicas() -> AsyncIterator[list[RunningServer]]:
    started = [await start_marketdata_replica() for _ in range(2)]
    try:
        yield started
    finally:
        for replica in started:
            await replica.stop(0)


async def test_gateway_follows_added_draining_and_removed_replicas(
    tmp_path: Path, replicas: list[RunningServer]
) -> None:
    static, scaled = (f"127.0.0.1:{r.port}" for r in replicas)
    scaler = await open_scaler(tmp_path)
    gateway = await open_gateway(
        tmp_path, marketdata_replicas=(static,), scaler_address=f"127.0.0.1:{scaler.port}", health_retry_ms=20
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
    registry = scaler.scaler.registry  # type: ignore[union-attr]
    try:
        assert pool_view(gateway) == {static: False}
        # The cache pool exists too (the scaler may add cache replicas), empty until it does.
        assert gateway.app is not None and gateway.app.pools[CACHE_SERVICE].replicas == []

        registry.add("marketdata", "md-starting", address="127.0.0.1:1", state=ReplicaState.STARTING)
        registry.add("marketdata", "md-2", address=scaled, backend="local_process", state=ReplicaState.READY)
        registry.add("cache", "cache-9", address="127.0.0.1:2", state=ReplicaState.READY)  # another service
        await eventually(lambda: pool_view(gateway) == {static: False, scaled: False})
        assert await gateway.app.pools[MARKETDATA_SERVICE].wait_serving(2)
        for _ in range(40):
            await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=FEED, timeout=5)
        spread = calls(gateway)
        assert spread[scaled] > 0 and spread[static] > 0  # the scaler's replica takes calls

        registry.update("marketdata", "md-2", state=ReplicaState.DRAINING)
        await eventually(lambda: pool_view(gateway) == {static: False, scaled: True})
        for _ in range(20):
            await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=FEED, timeout=5)
        assert calls(gateway)[scaled] == spread[scaled]  # draining: no new calls

        registry.remove("marketdata", "md-2", ReplicaState.STOPPED)
        await eventually(lambda: pool_view(gateway) == {static: False})
        await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=FEED, timeout=5)
    finally:
        await channel.close(None)
        await gateway.stop(0)
        await scaler.stop(0)


async def test_a_static_replica_the_scaler_drains_is_marked_draining(tmp_path: Path) -> None:
    scaler = await open_scaler(tmp_path)
    credentials = load_suite_security("gateway").credentials
    source = ScalerReplicas("marketdata", f"127.0.0.1:{scaler.port}", credentials, ("10.0.0.1:1",))
    registry = scaler.scaler.registry  # type: ignore[union-attr]
    registry.add("marketdata", "md-1", address="10.0.0.1:1", state=ReplicaState.DRAINING)
    registry.add("marketdata", "reported-only", state=ReplicaState.READY)  # no address: skipped
    sets = source.sets()
    try:
        assert await anext(sets) == (ReplicaSpec("10.0.0.1:1"),)  # static at once
        assert await asyncio.wait_for(anext(sets), 5) == (ReplicaSpec("10.0.0.1:1", draining=True),)
        registry.remove("marketdata", "md-1", ReplicaState.STOPPED)
        assert await asyncio.wait_for(anext(sets), 5) == (ReplicaSpec("10.0.0.1:1"),)
    finally:
        await sets.aclose()
        await scaler.stop(0)


async def test_scaler_down_serves_the_static_list_and_a_late_scaler_is_followed(
    tmp_path: Path, replicas: list[RunningServer]
) -> None:
    static, scaled = (f"127.0.0.1:{r.port}" for r in replicas)
    port = free_port()
    gateway = await open_gateway(
        tmp_path, marketdata_replicas=(static,), scaler_address=f"127.0.0.1:{port}", health_retry_ms=20
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
    try:
        assert gateway.app is not None
        assert await gateway.app.pools[MARKETDATA_SERVICE].wait_serving(1)
        for _ in range(5):  # no scaler: the static replica serves every call
            await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=FEED, timeout=5)
        assert calls(gateway) == {static: 5}

        scaler = await open_scaler(tmp_path, port)
        try:
            scaler.scaler.registry.add(  # type: ignore[union-attr]
                "marketdata", "md-2", address=scaled, backend="local_process", state=ReplicaState.READY
            )
            await eventually(lambda: pool_view(gateway) == {static: False, scaled: False}, timeout_s=10)
        finally:
            await scaler.stop(0)
        # The scaler went away: its last set is kept (health-watched) and calls still succeed.
        await asyncio.sleep(0.3)
        assert pool_view(gateway) == {static: False, scaled: False}
        await stub.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=FEED, timeout=5)
    finally:
        await channel.close(None)
        await gateway.stop(0)


async def test_a_long_lost_scaler_falls_back_to_the_static_list(tmp_path: Path) -> None:
    scaler = await open_scaler(tmp_path)
    credentials = load_suite_security("gateway").credentials
    source = ScalerReplicas(
        "marketdata",
        f"127.0.0.1:{scaler.port}",
        credentials,
        ("10.0.0.1:1",),
        retry_ms=20,
        max_retry_ms=50,
        forget_after_s=0.3,
    )
    scaler.scaler.registry.add("marketdata", "md-2", address="10.0.0.2:1", state=ReplicaState.READY)  # type: ignore[union-attr]
    sets = source.sets()
    seen: list[Sequence[ReplicaSpec]] = []
    try:
        seen.append(await anext(sets))
        seen.append(await asyncio.wait_for(anext(sets), 5))
        assert seen == [(ReplicaSpec("10.0.0.1:1"),), (ReplicaSpec("10.0.0.1:1"), ReplicaSpec("10.0.0.2:1"))]
        await scaler.stop(0)
        assert await asyncio.wait_for(anext(sets), 5) == (ReplicaSpec("10.0.0.1:1"),)
        assert not source.connected
    finally:
        await sets.aclose()


async def test_a_forged_token_is_refused_and_the_static_list_stays(tmp_path: Path) -> None:
    scaler = await open_scaler(tmp_path)
    forged = load_suite_security("gateway").credentials
    forged = type(forged)(metadata=((SERVICE_TOKEN_METADATA, "gateway.00"),))
    source = ScalerReplicas("marketdata", f"127.0.0.1:{scaler.port}", forged, ("10.0.0.1:1",), retry_ms=20)
    scaler.scaler.registry.add("marketdata", "md-2", address="10.0.0.2:1", state=ReplicaState.READY)  # type: ignore[union-attr]
    sets = source.sets()
    try:
        assert await anext(sets) == (ReplicaSpec("10.0.0.1:1"),)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(sets), 0.5)  # refused UNAUTHENTICATED: nothing new
        assert not source.connected
    finally:
        await sets.aclose()
        await scaler.stop(0)


def test_apply_keeps_ready_and_draining_of_its_service_only() -> None:
    credentials = load_suite_security("gateway").credentials
    source = ScalerReplicas("marketdata", "127.0.0.1:1", credentials, ())
    message = pb.WatchReplicasResponse(
        change=pb.REPLICA_CHANGE_STATE_CHANGED,
        replicas=[
            pb.Replica(service="marketdata", replica_id="a", address="h:1", state=pb.REPLICA_STATE_READY),
            pb.Replica(service="marketdata", replica_id="b", address="h:2", state=pb.REPLICA_STATE_DRAINING),
            pb.Replica(service="marketdata", replica_id="c", address="h:3", state=pb.REPLICA_STATE_STARTING),
            pb.Replica(service="marketdata", replica_id="d", address="h:4", state=pb.REPLICA_STATE_FAILED),
            pb.Replica(service="marketdata", replica_id="e", address="", state=pb.REPLICA_STATE_READY),
            pb.Replica(service="cache", replica_id="f", address="h:6", state=pb.REPLICA_STATE_READY),
        ],
    )
    source.apply(message)
    assert source.current() == (ReplicaSpec("h:1"), ReplicaSpec("h:2", draining=True))
