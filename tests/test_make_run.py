"""`make run` = `hftgate up` on its defaults: the suite, the replay, a live demo order flow through the
gateway and a summary line every few seconds until Ctrl-C, which stops every process it started.

The end-to-end test runs the real command as a subprocess on free ports (in a temporary state
directory); the demo flow's own behaviour is checked against in-process fakes.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from hftgate.config import default_data_dir
from hftgate.demoflow import DEMO_SYMBOLS, DemoFlow, DemoFlowConfig
from hftgate.grpcserver import RunningServer, ServiceBinding, create_server
from hftgate.supervisor import ALL_SERVICES, DEMO_REPLAY_FILES
from hftgate.v1 import (
    common_pb2,
    execution_pb2,
    execution_pb2_grpc,
    marketdata_pb2,
    marketdata_pb2_grpc,
)

#: A summary line once at least one demo order was acked through the gateway.
SUMMARY = re.compile(r"demo flow [\d,]+ acked/s, ([1-9]\d*) orders acked through the gateway")
SUITE_SUMMARY = re.compile(r"orders/s [\d,.]+ p50 [\d.]+ ms p99 [\d.]+ ms .*" + SUMMARY.pattern)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Lines:
    """The lines a child writes to a pipe, read by a thread (so the pipe never fills)."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for raw in stream:
            with self._lock:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def wait_for(
        self, pattern: re.Pattern[str], timeout_s: float, process: subprocess.Popen[bytes]
    ) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        seen = 0
        while time.monotonic() < deadline:
            with self._lock:
                fresh, seen = self.lines[seen:], len(self.lines)
            for line in fresh:
                match = pattern.search(line)
                if match:
                    return match
            assert process.poll() is None, "hftgate up exited:\n" + self.tail()
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern.pattern!r} in {timeout_s} s:\n" + self.tail())

    def tail(self, count: int = 40) -> str:
        with self._lock:
            return "\n".join(self.lines[-count:])


def test_hftgate_up_runs_the_demo_flow_through_the_gateway_and_ctrl_c_leaves_no_process(
    tmp_path: Path,
) -> None:
    if {s.name for s in ALL_SERVICES if s.is_available()} < {"cache", "marketdata", "execution", "gateway"}:
        pytest.skip("the suite's services are not all built")
    env = dict(os.environ)
    env["HFTGATE_STATE_DIR"] = str(tmp_path / "state")
    env["HFTGATE_PROFILE"] = "dev"  # what `make run` gets by default
    for variable in ("CACHE", "MARKETDATA", "EXECUTION", "EXECUTION_1", "GATEWAY", "SCALER"):
        env[f"HFTGATE_{variable}_PORT"] = str(_free_port())
    dashboard_port = _free_port()
    command = [
        sys.executable, "-m", "hftgate.cli", "up",
        "--metrics-base-port", "0",
        "--dashboard-port", str(dashboard_port),
        "--summary-interval-s", "1",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lines = _Lines(process.stderr)
    children: list[psutil.Process] = []
    try:
        # The first summary whose dashboard sample has the suite's own figures in it (a rate needs two
        # samples, and the first may predate the flow's first order: "orders/s - p50 - p99 -").
        match = lines.wait_for(SUITE_SUMMARY, 240, process)
        assert int(match.group(1)) > 0
        # The rest of the summary: where the dashboard is.
        assert "cache hit ratio" in match.string and "shards 2/2 up" in match.string
        assert f"dashboard http://127.0.0.1:{dashboard_port}/" in match.string
        with urllib.request.urlopen(f"http://127.0.0.1:{dashboard_port}/api/state", timeout=10) as reply:
            assert reply.status == 200
        children = psutil.Process(process.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        for service in ("services.cache", "services.marketdata", "services.execution", "services.gateway"):
            assert service in names
        if (default_data_dir() / DEMO_REPLAY_FILES[0]).exists():
            assert "hftgate.cli replay" in names  # the recorded data is fed to market data
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            code = process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, lines.tail()
    assert "every process started was stopped" in lines.tail()
    # Stopped in dependency order: nothing lost a dependency it still used on the way down.
    for lost in ("cannot report load to the scaler", "invalidation listener lost Redis"):
        assert lost not in lines.tail(300), lines.tail(300)
    left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind: {[(c.pid, c.cmdline()) for c in left]}"


# --- the demo flow, against fakes -----------------------------------------------------------------


@dataclass
class FakeShard(execution_pb2_grpc.ExecutionServiceServicer):
    """Accepts every order; a GTC buy rests, an IOC sell at its price fills."""

    orders: list[tuple[str, Any]] = field(default_factory=list)

    async def SubmitOrder(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        key = str(dict(context.invocation_metadata() or ()).get("x-api-key", ""))
        order = request.order
        self.orders.append((key, order))
        status = (
            execution_pb2.ORDER_STATUS_FILLED
            if order.time_in_force == execution_pb2.TIME_IN_FORCE_IOC
            else execution_pb2.ORDER_STATUS_NEW
        )
        return execution_pb2.SubmitOrderResponse(
            ack=execution_pb2.OrderAck(order_id=len(self.orders), status=status, durable=True)
        )


class FakeMarketData(marketdata_pb2_grpc.MarketDataServiceServicer):
    async def GetSnapshot(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return marketdata_pb2.GetSnapshotResponse(
            symbols=[
                marketdata_pb2.SymbolSnapshot(
                    symbol=common_pb2.Symbol(venue="binance-spot", name="BTCUSDT"),
                    top=marketdata_pb2.TopOfBook(bid_price=61_000.00, ask_price=61_000.50),
                )
            ]
        )


@pytest.fixture
async def fake_gateway() -> AsyncIterator[tuple[FakeShard, RunningServer]]:
    shard = FakeShard()
    server = await create_server(
        "127.0.0.1:0",
        [
            ServiceBinding(
                "hftgate.v1.ExecutionService",
                lambda s: execution_pb2_grpc.add_ExecutionServiceServicer_to_server(shard, s),
            ),
            ServiceBinding(
                "hftgate.v1.MarketDataService",
                lambda s: marketdata_pb2_grpc.add_MarketDataServiceServicer_to_server(FakeMarketData(), s),
            ),
        ],
    )
    yield shard, server
    await server.server.stop(0)


async def test_demo_flow_crosses_pairs_at_the_market_and_swaps_roles(
    fake_gateway: tuple[FakeShard, RunningServer],
) -> None:
    shard, server = fake_gateway
    config = DemoFlowConfig(f"127.0.0.1:{server.port}", rate_orders_per_s=400, price_refresh_s=0.05)
    flow = DemoFlow(config)
    task = asyncio.create_task(flow.run())
    deadline = time.monotonic() + 20
    while sum(1 for _, o in shard.orders if o.symbol == "BTCUSDT") < 24:
        assert time.monotonic() < deadline, f"the flow sent {len(shard.orders)} orders"
        await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    window = flow.take_window()
    assert window.total_errors == 0 and window.total_acked > 0
    # Every order sent was acked but those in flight when the flow was cancelled (one per worker).
    assert window.total_acked <= flow.sent <= window.total_acked + len(config.symbols)
    assert window.p50_ms is not None and window.p99_ms is not None and window.p50_ms <= window.p99_ms
    btc = [(key, order) for key, order in shard.orders if order.symbol == "BTCUSDT"]
    rounds = [btc[i : i + 2] for i in range(0, len(btc) - 1, 2)]
    buyers = []
    for (buy_key, buy), (sell_key, sell) in rounds:
        # A GTC buy, then an IOC sell at the same price from another demo account: they cross.
        assert (buy.side, buy.time_in_force) == (common_pb2.SIDE_BUY, execution_pb2.TIME_IN_FORCE_GTC)
        assert (sell.side, sell.time_in_force) == (common_pb2.SIDE_SELL, execution_pb2.TIME_IN_FORCE_IOC)
        assert sell.price_ticks == buy.price_ticks and buy_key != sell_key
        buyers.append(buy_key)
    # Roles swap every round (alice buys from bob, then bob from alice...), so positions stay flat.
    assert buyers[:4] == ["hftgate-demo-alice", "hftgate-demo-bob", "hftgate-demo-carol", "hftgate-demo-dave"]
    # Prices follow market data's book (mid 61,000.25 = 6,100,025 ticks) once it has answered.
    assert rounds[-1][0][1].price_ticks == 6_100_025
    # ETHUSDT (no book in the fake) trades at its demo reference price.
    eth = [order for _, order in shard.orders if order.symbol == "ETHUSDT"]
    assert eth and eth[0].price_ticks == DEMO_SYMBOLS["ETHUSDT"][1]
    ids = [order.client_order_id for _, order in shard.orders]
    assert len(set(ids)) == len(ids)  # every order its own client order id


def test_demo_flow_config_refuses_what_it_cannot_trade() -> None:
    with pytest.raises(ValueError, match="accounts must be an even number"):
        DemoFlowConfig(accounts=("alice", "bob", "carol"))
    with pytest.raises(ValueError, match="symbols must be some of BTCUSDT, ETHUSDT"):
        DemoFlowConfig(symbols=("DOGEUSDT",))
    with pytest.raises(ValueError, match="rate_orders_per_s"):
        DemoFlowConfig(rate_orders_per_s=0)
    assert (
        DemoFlowConfig.from_env("h:1", 50, {"HFTGATE_EXECUTION_DEMO_KEY_SECRET": "s3"}).demo_key_secret
        == "s3"
    )
