"""The HAProxy runner with a real haproxy (master-worker mode) following a real shard map store and a
replica source: a moved pin reaches the running worker through the runtime API, a new shard or
replica set reloads it gracefully, draining replicas are drained, and every next call goes where
the latest map says."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from hftgate.bench.gateway import free_port, start_marketdata_replica
from hftgate.security import SERVICE_TOKEN_METADATA, load_suite_secret
from hftgate.shardmap import Shard, ShardMap, ShardMapStore
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc
from hftgate.v1 import marketdata_pb2, marketdata_pb2_grpc
from services.gateway.haproxy import HaproxyError, HaproxyPlan
from services.gateway.haproxy_runner import HaproxyRunner
from services.gateway.replicas import ReplicaSpec
from tests.services.gateway.conftest import FakeShard, new_order
from tests.services.gateway.test_haproxy import require_haproxy

HEADERS = (("x-api-key", "k"), ("x-hftgate-symbol", "XYZ"))


async def answer(method: str, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
    order = api.SubmitOrderRequest.FromString(data).order
    return api.SubmitOrderResponse(
        ack=api.OrderAck(client_order_id=order.client_order_id)
    ).SerializeToString()


class QueuedReplicas:
    """A replica source whose sets the test pushes (as the scaler's WatchReplicas would send them)."""

    def __init__(self, first: Sequence[ReplicaSpec]) -> None:
        self.queue: asyncio.Queue[Sequence[ReplicaSpec]] = asyncio.Queue(maxsize=16)
        self.queue.put_nowait(first)

    async def sets(self) -> AsyncIterator[Sequence[ReplicaSpec]]:
        while True:
            yield await self.queue.get()


async def until(condition: object, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_moved_pin_and_a_new_shard_reach_the_next_call(tmp_path: Path) -> None:
    require_haproxy()
    shards = [await FakeShard(answer).start() for _ in range(3)]
    store = ShardMapStore(f"sqlite+aiosqlite:///{tmp_path / 'map.sqlite3'}")
    await store.start()
    first_map = await store.create(
        ShardMap(1, [Shard(0, shards[0].address), Shard(1, shards[1].address)], {"XYZ": 0})
    )
    plan = HaproxyPlan(
        bind=f"127.0.0.1:{free_port()}", gateway="127.0.0.1:1", shard_map=first_map, symbols=("XYZ",)
    )
    runner = HaproxyRunner(plan, tmp_path / "haproxy", store, map_poll_ms=20)
    try:
        await runner.start()
        async with grpc.aio.insecure_channel(plan.bind) as channel:
            stub = api_grpc.ExecutionServiceStub(channel)

            async def submit(client_order_id: str) -> None:
                request = api.SubmitOrderRequest(order=new_order(client_order_id, "XYZ"))
                await stub.SubmitOrder(request, metadata=HEADERS, timeout=5)

            await submit("a1")
            assert [len(s.calls) for s in shards] == [1, 0, 0]
            first_worker = runner.process.worker_pid()

            moved = await store.update(lambda m: m.with_pin("XYZ", 1))
            await runner.wait_epoch(moved.epoch)
            await submit("a2")
            assert [len(s.calls) for s in shards] == [1, 1, 0]
            # Same shards: applied to the running worker, nothing reloaded.
            assert (runner.reloads, runner.live_updates) == (0, 1)
            assert runner.process.worker_pid() == first_worker
            assert "XYZ shard_1" in runner.process.map_path.read_text()

            grown = await store.update(lambda m: m.with_shard(Shard(2, shards[2].address)).with_pin("XYZ", 2))
            await runner.wait_epoch(grown.epoch)
            assert runner.reloads == 1 and runner.process.worker_pid() != first_worker
            await submit("a3")  # the same client channel: it reconnected to the new worker
            assert [len(s.calls) for s in shards] == [1, 1, 1]
            assert "backend shard_2" in runner.process.cfg_path.read_text()
            # The account header is still stripped by the reloaded configuration.
            await stub.SubmitOrder(
                api.SubmitOrderRequest(order=new_order("a4", "XYZ")),
                metadata=(*HEADERS, ("x-hftgate-account", "victim")),
                timeout=5,
            )
            assert "x-hftgate-account" not in shards[2].calls[-1][2]
    finally:
        await runner.close()
        await store.close()
        for shard in shards:
            await shard.stop()
    assert runner.process.process is None  # the master (and its workers) stopped


async def test_replica_sets_reload_and_draining_replicas_take_no_new_calls(tmp_path: Path) -> None:
    require_haproxy()
    replicas = [await start_marketdata_replica() for _ in range(2)]
    addresses = [f"127.0.0.1:{r.port}" for r in replicas]
    store = ShardMapStore(f"sqlite+aiosqlite:///{tmp_path / 'map.sqlite3'}")
    await store.start()
    shard_map = await store.create(ShardMap.single("127.0.0.1:2"))
    source = QueuedReplicas([ReplicaSpec(addresses[0])])
    plan = HaproxyPlan(bind=f"127.0.0.1:{free_port()}", gateway="127.0.0.1:1", shard_map=shard_map)
    runner = HaproxyRunner(plan, tmp_path / "haproxy", store, marketdata=source)
    feed = ((SERVICE_TOKEN_METADATA, load_suite_secret().token_for("feed")),)
    try:
        await runner.start()
        await until(lambda: runner.reloads == 1)  # the first set named a replica the plan lacked
        assert runner.plan.marketdata_replicas == (addresses[0],)
        async with grpc.aio.insecure_channel(plan.bind) as channel:
            md = marketdata_pb2_grpc.MarketDataServiceStub(channel)
            reply = await md.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=feed, timeout=5)
            assert reply.HasField("stats")

            await source.queue.put([ReplicaSpec(addresses[0], draining=True), ReplicaSpec(addresses[1])])
            await until(lambda: runner.reloads == 2)
            assert runner.plan.marketdata_replicas == tuple(addresses)
            assert runner.draining["marketdata"] == frozenset({addresses[0]})
            state = runner.process.command("show servers state marketdata")
            lines = [line.split() for line in state.splitlines()[1:] if line[:1].isdigit()]
            rows = {fields[3]: fields for fields in lines}
            # Column 7 is srv_admin_state: 0x08 is "drained by the runtime API", 0 ready.
            assert int(rows["r0"][6]) & 0x08 and int(rows["r1"][6]) == 0
            reply = await md.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=feed, timeout=5)
            assert reply.HasField("stats")

            await source.queue.put([ReplicaSpec(addresses[0]), ReplicaSpec(addresses[1])])
            await until(lambda: runner.draining["marketdata"] == frozenset())
            assert runner.reloads == 2  # draining changes go through the runtime API
    finally:
        await runner.close()
        await store.close()
        for replica in replicas:
            await replica.stop(0)


async def test_a_configuration_haproxy_refuses_leaves_the_running_one(tmp_path: Path) -> None:
    require_haproxy()
    shard = await FakeShard(answer).start()
    store = ShardMapStore(f"sqlite+aiosqlite:///{tmp_path / 'map.sqlite3'}")
    await store.start()
    shard_map = await store.create(ShardMap(1, [Shard(0, shard.address)], {"XYZ": 0}))
    plan = HaproxyPlan(
        bind=f"127.0.0.1:{free_port()}", gateway="127.0.0.1:1", shard_map=shard_map, symbols=("XYZ",)
    )
    runner = HaproxyRunner(plan, tmp_path / "haproxy", store)
    try:
        await runner.start()
        worker = runner.process.worker_pid()
        refused = HaproxyPlan(**{**runner.plan.__dict__, "extra_global": ("no-such-keyword 1",)})
        with pytest.raises(HaproxyError, match="refused"):
            await asyncio.to_thread(runner.process.graceful_reload, refused)
        assert runner.process.worker_pid() == worker and runner.plan.extra_global == ()
        async with grpc.aio.insecure_channel(plan.bind) as channel:
            stub = api_grpc.ExecutionServiceStub(channel)
            request = api.SubmitOrderRequest(order=new_order("r1", "XYZ"))
            await stub.SubmitOrder(request, metadata=HEADERS, timeout=5)
        assert len(shard.calls) == 1
    finally:
        await runner.close()
        await store.close()
        await shard.stop()


async def test_the_runner_process_follows_the_stored_map_and_stops_on_sigterm(tmp_path: Path) -> None:
    require_haproxy()
    shards = [await FakeShard(answer).start() for _ in range(2)]
    url = f"sqlite+aiosqlite:///{tmp_path / 'map.sqlite3'}"
    store = ShardMapStore(url)
    await store.start()
    await store.create(ShardMap(1, [Shard(0, shards[0].address), Shard(1, shards[1].address)], {"XYZ": 0}))
    bind = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "HFTGATE_HAPROXY_BIND": bind,
        "HFTGATE_HAPROXY_GATEWAY": "127.0.0.1:1",
        "HFTGATE_HAPROXY_SYMBOLS": "XYZ",
        "HFTGATE_HAPROXY_MAP_POLL_MS": "20",
        "HFTGATE_HAPROXY_FOLDER": str(tmp_path / "haproxy"),
        "HFTGATE_HAPROXY_SHARD_MAP_DATABASE_URL": url,
    }
    runner = subprocess.Popen([sys.executable, "-m", "services.gateway.haproxy_runner"], env=env)
    try:
        async with grpc.aio.insecure_channel(bind) as channel:
            await asyncio.wait_for(channel.channel_ready(), 20)
            stub = api_grpc.ExecutionServiceStub(channel)
            request = api.SubmitOrderRequest(order=new_order("p1", "XYZ"))
            await stub.SubmitOrder(request, metadata=HEADERS, timeout=5)
            assert [len(s.calls) for s in shards] == [1, 0]
            await store.update(lambda m: m.with_pin("XYZ", 1))

            async def reaches_shard_1() -> bool:
                await stub.SubmitOrder(request, metadata=HEADERS, timeout=5)
                return len(shards[1].calls) > 0

            deadline = asyncio.get_running_loop().time() + 10
            while not await reaches_shard_1():
                assert asyncio.get_running_loop().time() < deadline, "the runner did not follow the map"
                await asyncio.sleep(0.05)
        runner.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(runner.wait, 15) == 0
        with pytest.raises(OSError):  # haproxy went with it
            socket.create_connection(("127.0.0.1", int(bind.rsplit(":", 1)[1])), timeout=1).close()
    finally:
        if runner.poll() is None:
            runner.kill()
        await store.close()
        for shard in shards:
            await shard.stop()


def test_the_runner_process_refuses_to_start_without_a_stored_map(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HFTGATE_HAPROXY_FOLDER": str(tmp_path / "haproxy"),
        "HFTGATE_HAPROXY_SHARD_MAP_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'empty.sqlite3'}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.gateway.haproxy_runner"], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0 and "no shard map is stored" in done.stderr
