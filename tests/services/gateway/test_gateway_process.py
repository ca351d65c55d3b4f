"""The real ``python -m services.gateway`` process in front of two real execution shards: it stores
the configured map, serves the README's first order, splits a batch, and stops on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc

from hftgate.config import repo_root
from hftgate.shardmap import Shard, ShardMap, ShardMapStore
from hftgate.supervisor import wait_until_serving
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc
from services.execution.app import start as start_execution
from tests.services.execution.conftest import execution_config
from tests.services.gateway.conftest import ALICE, new_order


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_gateway_process_routes_orders_to_two_shards(tmp_path: Path) -> None:
    reference = f"sqlite+aiosqlite:///{tmp_path / 'reference.sqlite3'}"
    shards = [
        await start_execution(execution_config(tmp_path / f"shard{i}", reference_database_url=reference))
        for i in range(2)
    ]
    port = free_port()
    map_url = f"sqlite+aiosqlite:///{tmp_path / 'shardmap.sqlite3'}"
    env = {
        **os.environ,
        "HFTGATE_STATE_DIR": str(tmp_path),
        "HFTGATE_GATEWAY_PORT": str(port),
        "HFTGATE_GATEWAY_SHARD_MAP_DATABASE_URL": map_url,
        "HFTGATE_GATEWAY_REFERENCE_DATABASE_URL": reference,
        "HFTGATE_GATEWAY_EXECUTION_SHARDS": ",".join(f"{i}=127.0.0.1:{s.port}" for i, s in enumerate(shards)),
    }
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.gateway"], env=env, cwd=repo_root(), stdout=out, stderr=out
        )
    try:
        assert await asyncio.to_thread(wait_until_serving, f"127.0.0.1:{port}", 30), log.read_text()[-2000:]
        store = ShardMapStore(map_url)
        await store.start()
        stored = await store.load()
        await store.close()
        assert stored == ShardMap(1, [Shard(i, f"127.0.0.1:{s.port}") for i, s in enumerate(shards)])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = api_grpc.ExecutionServiceStub(channel)
            one = await stub.SubmitOrder(
                api.SubmitOrderRequest(order=new_order("c1", "BTCUSDT")), metadata=ALICE, timeout=10
            )
            assert one.ack.status == api.ORDER_STATUS_NEW and one.ack.durable
            symbols = ["BTCUSDT", "ETHUSDT", "ESZ4"] * 3
            batch = await stub.SubmitOrders(
                api.SubmitOrdersRequest(orders=[new_order(f"b{i}", s) for i, s in enumerate(symbols)]),
                metadata=ALICE,
                timeout=10,
            )
            assert [a.client_order_id for a in batch.acks] == [f"b{i}" for i in range(len(symbols))]
            assert all(a.status == api.ORDER_STATUS_NEW for a in batch.acks)
        received = [int(s.core.counters.orders_received) for s in shards]  # type: ignore[union-attr]
        assert sum(received) == 10
        expected = [
            sum(1 for sym in ["BTCUSDT", *symbols] if stored.owner(sym).shard_id == i) for i in range(2)
        ]
        assert received == expected
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 15) == 0
        text = log.read_text()
        assert "routing by ShardMap(epoch=1" in text and "Traceback" not in text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for shard in shards:
            await shard.stop(0.5)
