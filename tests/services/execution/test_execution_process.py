"""The real ``python -m services.execution`` process: SIGKILL under load, restart, no acked input lost."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from hftgate.config import repo_root
from hftgate.matching.reference import ReferenceEngine
from hftgate.supervisor import wait_until_serving
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc
from services.execution.config import load_config
from services.execution.ledger import Ledger
from services.execution.recovery import comparable_books, engine_config_of, load_state

ACCOUNTS = ("alice", "bob")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(state_dir: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "HFTGATE_EXECUTION_PORT": str(port),
        "HFTGATE_EXECUTION_STATE_DIR": str(state_dir),
        "HFTGATE_EXECUTION_REFERENCE_DATABASE_URL": f"sqlite+aiosqlite:///{state_dir / 'reference.sqlite3'}",
        "HFTGATE_EXECUTION_JOURNAL_TRUNCATE_AFTER_SNAPSHOT": "false",
        "HFTGATE_EXECUTION_SNAPSHOT_EVERY_INPUTS": "400",
        "HFTGATE_EXECUTION_SNAPSHOT_MIN_INTERVAL_S": "0",
        "HFTGATE_EXECUTION_MAX_SYMBOLS": "4",
        "HFTGATE_EXECUTION_MAX_LEVELS_PER_SIDE": "1024",
        "HFTGATE_EXECUTION_MAX_LIVE_ORDERS": "65536",
    }


def start_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.execution"], env=env, cwd=repo_root(), stdout=out, stderr=out
        )
    if not wait_until_serving(f"127.0.0.1:{env['HFTGATE_EXECUTION_PORT']}", 30):
        process.kill()
        raise AssertionError(f"execution service did not start: {log.read_text()[-2000:]}")
    return process


async def flood(port: int, acked: list[api.OrderAck], stop: asyncio.Event, seed: int) -> None:
    """Batches and single orders from two accounts until the service dies or ``stop`` is set."""
    rng = random.Random(seed)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = api_grpc.ExecutionServiceStub(channel)
        number = 0
        while not stop.is_set():
            number += 1
            who = rng.choice(ACCOUNTS)
            orders = [
                api.NewOrder(
                    client_order_id=f"{seed}-{number}-{i}",
                    symbol="BTCUSDT",
                    side=rng.choice((common.SIDE_BUY, common.SIDE_SELL)),
                    order_type=api.ORDER_TYPE_LIMIT,
                    price_ticks=rng.randint(95, 105),
                    quantity_lots=rng.randint(1, 9),
                    display_quantity_lots=0,
                )
                for i in range(rng.randint(1, 30))
            ]
            try:
                response = await stub.SubmitOrders(
                    api.SubmitOrdersRequest(orders=orders),
                    metadata=(("x-api-key", f"hftgate-demo-{who}"),),
                    timeout=5,
                )
            except grpc.aio.AioRpcError:
                return  # killed
            acked.extend(a for a in response.acks if a.sequence and a.durable)


@pytest.mark.timeout(120)
async def test_sigkill_under_load_loses_no_acknowledged_order(tmp_path: Path) -> None:
    port = free_port()
    env = service_env(tmp_path, port)
    log = tmp_path / "service.log"
    acked: list[api.OrderAck] = []
    rng = random.Random(2024)
    process = start_process(env, log)
    try:
        for kill in range(3):
            stop = asyncio.Event()
            clients = [asyncio.create_task(flood(port, acked, stop, 100 * kill + c)) for c in range(2)]
            await asyncio.sleep(rng.uniform(0.4, 1.2))
            process.send_signal(signal.SIGKILL)
            process.wait()
            stop.set()
            await asyncio.gather(*clients)
            process = start_process(env, log)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, log.read_text()[-3000:]
    assert len(acked) > 100

    config = load_config(env)
    recovered = load_state(tmp_path, config, use_snapshot=False)
    assert recovered.first_input_seq == 1
    # The service's own way (newest snapshot + journal tail) ends with the same books.
    assert load_state(tmp_path, config).books == recovered.books
    journaled = set(recovered.input_sequences.tolist())
    lost = [a for a in acked if a.sequence not in journaled]
    assert not lost, f"{len(lost)} acknowledged inputs missing after recovery"
    orders = recovered.orders
    for ack in acked:
        row = orders[ack.order_id - 1]
        assert recovered.client_order_ids[ack.order_id - 1] == ack.client_order_id
        assert row["cum"] >= ack.cum_quantity_lots
    reference = ReferenceEngine(engine_config_of(config), symbols=recovered.symbols.values())
    reference.process(recovered.inputs)
    assert comparable_books(reference, recovered.symbols) == recovered.books

    ledger = await Ledger.open(config.ledger_url(), config.ledger_table)
    try:
        entries = await ledger.entries()
        assert await ledger.verify() is None
        ids = [e.transaction_id for e in entries]
        assert len(ids) == len(set(ids)) == len(recovered.fills)
        assert set(ids) == {f"BTCUSDT:{t}" for t in recovered.fills["trade_id"].tolist()}
    finally:
        await ledger.close()


def run_client(port: int, call: Any) -> Any:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        return call(api_grpc.ExecutionServiceStub(channel))
