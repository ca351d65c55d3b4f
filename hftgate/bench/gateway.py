"""``hftgate bench gateway``: the order path through each data plane, and the balancing, with floors.

**Order path** (one round = a fresh suite: :class:`ShardedSuite`, two ``python -m services.execution``
shards with the durable journal, BTCUSDT pinned to shard 0 and ETHUSDT to shard 1, the Python gateway
as a process and HAProxy from ``services/gateway/haproxy.py``). One client in this process (grpc.aio)
sends sequential SubmitOrder calls, alternating the two symbols (so shards), as a demo account,
each call carrying its API key and ``x-hftgate-symbol``:

- ``direct_p50_ms``: straight to the owning shard, no routing.
- ``routing_client_p50_ms``: :class:`hftgate.client.HftgateClient` (map from the gateway, sends to
  the owner itself).
- ``gateway_p50_ms``: through the Python gateway (it checks the key and forwards bytes).
- ``haproxy_p50_ms``: through HAProxy, routing by the symbol header to the shard, which checks the key.
- ``python_proxy_floor_p50_ms``: through a do-nothing Python forwarder in front of the owning shard
  (:mod:`hftgate.bench.floors`, ``grpc-proxy``: the services' stack and interceptors, bytes passed
  on, no key check, no routing): the floor under any gateway written on grpcio's Python stack.
  Derived, not bars: ``python_proxy_floor_added_over_echo`` and ``gateway_own_added_p50_ms``
  (``gateway_added_p50_ms`` minus the floor's: what the gateway's own work adds).
- ``grpc_echo_p50_ms``, ``tcp_floor_p50_ms``: the floors (:mod:`hftgate.bench.floors`).

The five planes and the two floors run in blocks of ``block`` calls, one block each in turn, the
first plane of a turn rotating (ABCD, BCDA, ...), so the noise of a shared machine hits them alike;
each figure is the median of all its blocks. Derived: ``<plane>_added_p50_ms``, what the plane adds
to the direct path: per turn, the median of the plane's block minus the median of the direct block
of the same turn; then the median over the turns (on a quiet machine, about the plane's p50 minus
``direct_p50_ms``; on a loaded one, free of the minutes that slowed every plane alike).
``<plane>_accepted`` / ``_rejected`` count the acks (a rejection would measure a different path).
Throughput with ``in_flight`` (32) callers, each caller one account and one symbol: ``direct_rps``,
``gateway_rps``, ``haproxy_rps`` (median of ``throughput_rounds``, the planes again in rotating order).

**Balancing** (:func:`measure_balancing`, in this process):

- ``no_fault_p99_ms``: p99 of GetSnapshot through the gateway (in this process) over three real
  market data replicas (in this process), 8 calls in flight, with the default balancer.
- ``round_robin_p99_ms``, ``p2c_inflight_p99_ms``, ``p2c_peak_ewma_p99_ms``: the same with one
  replica slowed by 5 ms a call (:class:`DelayInterceptor`), per algorithm.
- ``balancing_p99_ratio``: the default algorithm's p99 with the slow replica over the no-fault
  p99; ``round_robin_p99_ratio`` the same for round robin.

The four set-ups run side by side, in blocks taken in turn as the order path's planes are.

**Bars** (issue 14; ratios of figures from one run), each as ``*_bar_holds``, and ``bars_hold``:
``routing_client_added_p50_ms <= 0.05``; ``gateway_added_p50_ms <= 1.0 x grpc_echo_p50_ms``
(``gateway_added_over_echo``); ``haproxy_added_p50_ms <= 0.35 x grpc_echo_p50_ms``
(``haproxy_added_over_echo``); ``gateway_rps >= 0.5 x direct_rps`` (``gateway_rps_ratio``);
``balancing_p99_ratio <= 1.5`` and below ``round_robin_p99_ratio``.

:func:`start_marketdata_replica` is shared with the gateway's tests; :class:`ShardedSuite` with
the crash harness (``hftgate bench crash --shards 2``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from hftgate.bench.execution import (
    DEMO_ACCOUNTS,
    DEMO_MID_PRICE_TICKS,
    Account,
    ExecutionProcess,
    OrderFlow,
    run_prefix,
)
from hftgate.config import repo_root
from hftgate.grpcserver import CHANNEL_OPTIONS, RunningServer, ServiceBinding, create_server
from hftgate.security import ServiceAuthInterceptor, SuiteSecurity, load_suite_security
from hftgate.shardmap import Shard, ShardMap, ShardMapStore
from hftgate.supervisor import wait_until_serving
from services.gateway.haproxy import HaproxyPlan, HaproxyProcess, haproxy_binary


class DelayInterceptor(grpc.aio.ServerInterceptor):
    """Holds every call of ``methods`` (full names; empty = all but health) ``delay_ms`` before it
    is handled: a replica made slow on purpose, without blocking its event loop."""

    def __init__(self, delay_ms: float, methods: frozenset[str] = frozenset()) -> None:
        self.delay_s = delay_ms / 1000
        self.methods = methods

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if (
            self.delay_s > 0
            and not method.startswith("/grpc.")
            and (not self.methods or method in self.methods)
        ):
            await asyncio.sleep(self.delay_s)
        return await continuation(handler_call_details)


async def start_marketdata_replica(
    delay_ms: float = 0.0, security: SuiteSecurity | None = None, host: str = "127.0.0.1"
) -> RunningServer:
    """A real market data service on a free port, as services.marketdata.server.start makes it,
    optionally slowed by ``delay_ms`` per call (health excepted). Readers need a service token."""
    from hftgate.v1 import marketdata_pb2_grpc
    from services.marketdata.auth import READ_METHODS, SERVICE_NAME, MarketDataAccessInterceptor
    from services.marketdata.config import MarketDataConfig
    from services.marketdata.engine import MarketDataEngine
    from services.marketdata.server import MarketDataServicer

    config = MarketDataConfig(host=host, port=0)
    engine = MarketDataEngine(config)
    security = security or load_suite_security("marketdata")
    servicer = MarketDataServicer(engine, security, None)
    interceptors: list[grpc.aio.ServerInterceptor] = [
        MarketDataAccessInterceptor(security.secret, engine.publishers, None)
    ]
    if delay_ms > 0:
        interceptors.insert(0, DelayInterceptor(delay_ms))
    return await create_server(
        f"{host}:0",
        [
            ServiceBinding(
                SERVICE_NAME,
                lambda s: marketdata_pb2_grpc.add_MarketDataServiceServicer_to_server(servicer, s),
            )
        ],
        tls=security.server_tls,
        auth=ServiceAuthInterceptor(security.secret, api_key_methods=READ_METHODS),
        interceptors=interceptors,
    )


# --- balancing ------------------------------------------------------------------------------------
BALANCING_ALGORITHMS = ("round_robin", "p2c_inflight", "p2c_peak_ewma")


@contextlib.asynccontextmanager
async def _balanced_gateway(
    algorithm: str, delays_ms: tuple[float, ...], folder: Path
) -> AsyncIterator[Callable[[int, int], Awaitable[list[int]]]]:
    """A gateway (in this process) balancing with ``algorithm`` over market data replicas slowed
    by ``delays_ms``; yields ``block(calls, in_flight)``: GetSnapshot latencies (ns) of ``calls``
    calls through it, ``in_flight`` at a time."""
    from hftgate.security import SERVICE_TOKEN_METADATA
    from hftgate.v1 import marketdata_pb2, marketdata_pb2_grpc
    from services.gateway.config import GatewayConfig
    from services.gateway.server import start as start_gateway
    from services.gateway.stateless import MARKETDATA_SERVICE

    security = load_suite_security("marketdata")
    replicas = [await start_marketdata_replica(d, security) for d in delays_ms]
    url = f"sqlite+aiosqlite:///{folder / f'map-{algorithm}-{len(delays_ms)}-{sum(delays_ms)}.sqlite3'}"
    store = ShardMapStore(url)
    await store.start()
    await store.create(ShardMap.single())
    await store.close()
    gateway = await start_gateway(
        GatewayConfig(
            port=0,
            shard_map_database_url=url,
            reference_database_url=f"sqlite+aiosqlite:///{folder / 'reference.sqlite3'}",
            marketdata_replicas=tuple(f"127.0.0.1:{r.port}" for r in replicas),
            balancer=algorithm,
        )
    )
    metadata = ((SERVICE_TOKEN_METADATA, security.secret.token_for("feed")),)
    try:
        assert gateway.app is not None
        await gateway.app.pools[MARKETDATA_SERVICE].wait_serving(len(replicas))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
            request = marketdata_pb2.GetSnapshotRequest()
            for _ in range(50):
                await stub.GetSnapshot(request, metadata=metadata)

            async def block(calls: int, in_flight: int) -> list[int]:
                samples: list[int] = []

                async def worker() -> None:
                    for _ in range(max(1, calls // in_flight)):
                        start = time.perf_counter_ns()
                        await stub.GetSnapshot(request, metadata=metadata, timeout=10)
                        samples.append(time.perf_counter_ns() - start)

                await asyncio.gather(*(worker() for _ in range(in_flight)))
                return samples

            yield block
    finally:
        await gateway.stop(0)
        for replica in replicas:
            await replica.stop(0)


async def measure_balancing(
    calls: int = 3_000, in_flight: int = 8, blocks: int = 3
) -> dict[str, float | str]:
    """p99 of GetSnapshot through the gateway over three replicas, one slowed by 5 ms a call, for
    each algorithm; and with no replica slowed, for the chosen (default) one. The four set-ups run
    side by side, ``calls / blocks`` calls each in turn (the first rotating), so that the noise of
    a shared machine hits them alike."""
    from services.gateway.balancer import DEFAULT_ALGORITHM

    setups = {"no_fault": (DEFAULT_ALGORITHM, (0.0, 0.0, 0.0))}
    setups.update({algorithm: (algorithm, (0.0, 0.0, 5.0)) for algorithm in BALANCING_ALGORITHMS})
    samples: dict[str, list[int]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory(prefix="hftgate-bench-gateway-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            runners = {
                name: await stack.enter_async_context(_balanced_gateway(algorithm, delays, Path(tmp)))
                for name, (algorithm, delays) in setups.items()
            }
            names = list(runners)
            for turn in range(max(1, blocks)):
                for name in names[turn % len(names) :] + names[: turn % len(names)]:
                    samples[name] += await runners[name](max(in_flight, calls // max(1, blocks)), in_flight)
    result: dict[str, float | str] = {"balancer": DEFAULT_ALGORITHM}
    for name, values in samples.items():
        result[f"{name}_p99_ms"] = float(np.percentile(values, 99)) / 1e6
    no_fault = float(result["no_fault_p99_ms"])
    result["balancing_p99_ratio"] = float(result[f"{DEFAULT_ALGORITHM}_p99_ms"]) / no_fault
    result["round_robin_p99_ratio"] = float(result["round_robin_p99_ms"]) / no_fault
    return result


# --- the order path through each plane ------------------------------------------------------------
#: The suite's pins: one symbol per shard, so sequential orders alternate between the shards.
BENCH_PINS: dict[str, int] = {"BTCUSDT": 0, "ETHUSDT": 1}
#: A mid price per pinned symbol for the order flow (BTCUSDT's is the demo reference price).
MID_PRICE_TICKS: dict[str, int] = {"BTCUSDT": DEMO_MID_PRICE_TICKS, "ETHUSDT": 300_000}
#: The planes measured, in the order their first block runs (the order rotates every block).
PATHS = ("direct", "routing_client", "gateway", "haproxy", "python_proxy_floor")
THROUGHPUT_PATHS = ("direct", "gateway", "haproxy")

# The bars of issue 14, as ratios of figures measured in one run.
ROUTING_CLIENT_ADDED_MS_BAR = 0.05
GATEWAY_ADDED_ECHO_BAR = 1.0
HAPROXY_ADDED_ECHO_BAR = 0.35
GATEWAY_RPS_RATIO_BAR = 0.5
BALANCING_P99_RATIO_BAR = 1.5


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (shards must be in the map before they start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ShardedSuite:
    """Two ``python -m services.execution`` shards (durable journal, their own state directories,
    one reference store, one ledger, one shard map in SQLite with ``pins``), the Python gateway as
    ``python -m services.gateway`` and, with ``haproxy``, HAProxy from the generated configuration;
    everything on 127.0.0.1 under ``folder``. Shard 0 seeds the demo accounts; every process finds
    the suite secret under ``folder`` (or ``HFTGATE_SUITE_SECRET``)."""

    def __init__(
        self,
        folder: Path,
        *,
        haproxy: bool = True,
        gateway: bool = True,
        pins: Mapping[str, int] | None = None,
        shard_settings: Mapping[str, str] | None = None,
    ) -> None:
        self.folder = folder
        self.pins = dict(BENCH_PINS if pins is None else pins)
        self.shard_map_url = f"sqlite+aiosqlite:///{folder / 'shardmap.sqlite3'}"
        self.with_gateway = gateway
        self.with_haproxy = haproxy and gateway
        self.shards: list[ExecutionProcess] = []
        for shard_id in range(2):
            settings = {
                "shard_id": str(shard_id),
                "shard_map_database_url": self.shard_map_url,
                **(shard_settings or {}),
            }
            process = ExecutionProcess(folder, settings)
            process.port = free_port()
            if shard_id:
                first = self.shards[0]
                # Beside shard 0 as `hftgate up` lays them out: its own journal and logs, shard 0's
                # ledger (one hash chain) and the demo keys shard 0 seeds.
                process.service_dir = folder / f"execution-{shard_id}"
                process.log_dir = folder / f"logs-{shard_id}"
                process.key_secret = first.key_secret
                process.settings["seed_demo_data"] = "false"
                process.settings["ledger_database_url"] = first.ledger_url
            self.shards.append(process)
        self.shard_map = ShardMap(1, [Shard(i, p.address) for i, p in enumerate(self.shards)], self.pins)
        self.gateway_port = free_port()
        self.gateway_process: subprocess.Popen[bytes] | None = None
        self.haproxy: HaproxyProcess | None = None

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.gateway_port}"

    @property
    def haproxy_address(self) -> str:
        if self.haproxy is None:
            raise RuntimeError("this suite runs no HAProxy")
        return self.haproxy.plan.bind

    def account(self, name: str) -> Account:
        return self.shards[0].account(name)

    def owner(self, symbol: str) -> ExecutionProcess:
        return self.shards[self.shard_map.owner(symbol).shard_id]

    def gateway_environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HFTGATE_GATEWAY_")}
        env.pop("DATABASE_URL", None)
        env.pop("HFTGATE_TLS_DIR", None)
        values = {
            "host": "127.0.0.1",
            "port": str(self.gateway_port),
            "state_dir": str(self.folder / "gateway"),
            "shard_map_database_url": self.shard_map_url,
            "reference_database_url": f"sqlite+aiosqlite:///{self.folder / 'reference.sqlite3'}",
            "cache_address": "",
            "metrics_port": "0",
            "scaler_address": "",
        }
        env.update({f"HFTGATE_GATEWAY_{name.upper()}": value for name, value in values.items()})
        env["HFTGATE_STATE_DIR"] = str(self.folder)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    async def start(self, timeout_s: float = 60.0) -> None:
        store = ShardMapStore(self.shard_map_url)
        await store.start()
        try:
            await store.create(self.shard_map)
        finally:
            await store.close()
        for shard in self.shards:  # one after the other: shard 0 seeds the shared reference rows
            shard.spawn()
            await shard.wait_ready(timeout_s)
        if not self.with_gateway:
            return
        log_path = self.folder / "logs" / "gateway.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log_file:
            self.gateway_process = subprocess.Popen(
                [sys.executable, "-m", "services.gateway"],
                env=self.gateway_environment(),
                cwd=repo_root(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        if not await asyncio.to_thread(wait_until_serving, self.gateway_address, timeout_s):
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the gateway did not report SERVING within {timeout_s} s:\n{tail}")
        if self.with_haproxy:
            plan = HaproxyPlan(
                bind=f"127.0.0.1:{free_port()}",
                gateway=self.gateway_address,
                shard_map=self.shard_map,
                symbols=tuple(self.pins),
            )
            self.haproxy = HaproxyProcess(plan, self.folder / "haproxy")
            await self.haproxy.astart()

    async def stop(self) -> list[str]:
        """Stop everything (shards gracefully); returns what did not exit cleanly."""
        problems: list[str] = []
        if self.haproxy is not None:
            await self.haproxy.astop()
        if self.gateway_process is not None and self.gateway_process.poll() is None:
            self.gateway_process.terminate()
            try:
                await asyncio.to_thread(self.gateway_process.wait, 15)
            except subprocess.TimeoutExpired:
                self.gateway_process.kill()
                problems.append("the gateway did not stop on SIGTERM")
        for index, shard in enumerate(self.shards):
            code = await asyncio.to_thread(shard.stop)
            if code != 0:
                problems.append(f"shard {index} exited with {code}: {shard.log_tail(10)}")
        return problems


@dataclass(frozen=True)
class OrderPathSettings:
    """How much the order-path part measures."""

    #: Sequential SubmitOrder calls per plane, in blocks of ``block`` (each plane one block in turn).
    samples: int = 2_000
    block: int = 100
    #: Calls per throughput measurement, ``in_flight`` at a time, ``throughput_rounds`` per plane.
    throughput_calls: int = 4_000
    throughput_rounds: int = 3
    in_flight: int = 32
    warmup: int = 200


class _Orders:
    """Every plane's orders, from one generator per symbol (client order ids stay unique)."""

    def __init__(self, prefix: str) -> None:
        self.flows = {
            symbol: OrderFlow(f"{prefix}{symbol}-", symbol=symbol, mid_price_ticks=mid, seed=n)
            for n, (symbol, mid) in enumerate(MID_PRICE_TICKS.items())
        }
        self.symbols = tuple(self.flows)
        self.count = 0

    def next(self, symbol: str | None = None) -> Any:
        if symbol is None:
            symbol = self.symbols[self.count % len(self.symbols)]
        self.count += 1
        return self.flows[symbol].next_order()


Send = Callable[[Any], Awaitable[Any]]


async def _sequential(send: Send, orders: _Orders, count: int, counts: Counter[str]) -> np.ndarray:
    """``count`` sequential submissions alternating symbols (so shards), client-side ns each."""
    from hftgate.v1 import execution_pb2

    prepared = [orders.next() for _ in range(count)]
    out = np.empty(count, dtype=np.int64)
    for i, order in enumerate(prepared):
        start = time.perf_counter_ns()
        ack = await send(order)
        out[i] = time.perf_counter_ns() - start
        counts["rejected" if ack.status == execution_pb2.ORDER_STATUS_REJECTED else "accepted"] += 1
    return out


async def _throughput(senders: Sequence[Send], orders: _Orders, calls: int, counts: Counter[str]) -> float:
    """Submissions per second with one caller per sender, caller ``k`` on symbol ``k % 2``."""
    from hftgate.v1 import execution_pb2

    in_flight = len(senders)
    per_caller = max(1, calls // in_flight)

    async def caller(k: int) -> None:
        send = senders[k]
        symbol = orders.symbols[k % len(orders.symbols)]
        prepared = [orders.next(symbol) for _ in range(per_caller)]
        for order in prepared:
            ack = await send(order)
            counts["rejected" if ack.status == execution_pb2.ORDER_STATUS_REJECTED else "accepted"] += 1

    start = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(in_flight)))
    return per_caller * in_flight / (time.perf_counter() - start)


async def measure_order_paths(
    suite: ShardedSuite,
    settings: OrderPathSettings,
    echo_target: str,
    tcp_target: str,
    proxy_targets: Sequence[str],
) -> dict[str, float | int]:
    """The order-path figures of one round over a started ``suite`` (see the module docstring);
    ``proxy_targets[i]``: the address of a do-nothing proxy floor in front of shard ``i``."""
    from hftgate.bench.floors import GrpcEcho, TcpPingPong
    from hftgate.client import SYMBOL_METADATA, HftgateClient
    from hftgate.v1 import execution_pb2, execution_pb2_grpc

    orders = _Orders(run_prefix())
    accounts = [suite.account(name) for name in DEMO_ACCOUNTS]
    channels: dict[str, grpc.aio.Channel] = {}

    def stub(address: str) -> Any:
        if address not in channels:
            channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return execution_pb2_grpc.ExecutionServiceStub(channels[address])

    def plane_sender(plane: str, account: Account) -> Send:
        """SubmitOrder as ``account`` through ``plane``, with the symbol header the routing client sets."""
        if plane == "direct":
            stubs = {symbol: stub(suite.owner(symbol).address) for symbol in orders.symbols}
        elif plane == "python_proxy_floor":
            owners = {symbol: suite.shard_map.owner(symbol).shard_id for symbol in orders.symbols}
            stubs = {symbol: stub(proxy_targets[owners[symbol]]) for symbol in orders.symbols}
        else:
            address = suite.gateway_address if plane == "gateway" else suite.haproxy_address
            stubs = dict.fromkeys(orders.symbols, stub(address))
        metadata = {symbol: (*account.metadata, (SYMBOL_METADATA, symbol)) for symbol in orders.symbols}

        async def send(order: Any) -> Any:
            reply = await stubs[order.symbol].SubmitOrder(
                execution_pb2.SubmitOrderRequest(order=order), metadata=metadata[order.symbol], timeout=10
            )
            return reply.ack

        return send

    alice = accounts[0]
    client = await HftgateClient(suite.gateway_address, api_key=alice.api_key).start()
    if client.shard_map is None or client.shard_map.epoch != suite.shard_map.epoch:
        raise RuntimeError(
            f"the routing client did not get the shard map from the gateway ({client.shard_map})"
        )

    async def routed(order: Any) -> Any:
        return await client.submit(order, timeout=10)

    senders: dict[str, Send] = {
        plane: plane_sender(plane, alice) for plane in PATHS if plane != "routing_client"
    }
    senders["routing_client"] = routed
    counts: dict[str, Counter[str]] = {plane: Counter() for plane in PATHS}
    samples: dict[str, list[np.ndarray]] = {plane: [] for plane in (*PATHS, "grpc_echo", "tcp_floor")}
    rps: dict[str, list[float]] = {plane: [] for plane in THROUGHPUT_PATHS}
    try:
        async with GrpcEcho(echo_target) as echo:
            with TcpPingPong(tcp_target) as tcp:
                for plane in PATHS:  # warm-up: connections, the shards' first snapshots, caches
                    await _sequential(senders[plane], orders, settings.warmup, counts[plane])
                await echo.round_trips_ns(settings.warmup)
                tcp.round_trips_ns(settings.warmup)
                done, turn = 0, 0
                while done < settings.samples:
                    n = min(settings.block, settings.samples - done)
                    # ABAB..., starting one plane later each block: machine noise hits every plane alike.
                    for plane in PATHS[turn % len(PATHS) :] + PATHS[: turn % len(PATHS)]:
                        samples[plane].append(await _sequential(senders[plane], orders, n, counts[plane]))
                    samples["grpc_echo"].append(await echo.round_trips_ns(n))
                    samples["tcp_floor"].append(tcp.round_trips_ns(n))
                    done, turn = done + n, turn + 1
        throughput_senders = {
            plane: [plane_sender(plane, accounts[k % len(accounts)]) for k in range(settings.in_flight)]
            for plane in THROUGHPUT_PATHS
        }
        for index in range(settings.throughput_rounds):
            for plane in THROUGHPUT_PATHS[index % 3 :] + THROUGHPUT_PATHS[: index % 3]:
                rps[plane].append(
                    await _throughput(
                        throughput_senders[plane], orders, settings.throughput_calls, counts[plane]
                    )
                )
    finally:
        await client.close()
        for channel in channels.values():
            await channel.close(None)
    out: dict[str, float | int] = {}
    for name, blocks in samples.items():
        joined = np.concatenate(blocks)
        out[f"{name}_p50_ms"] = float(np.median(joined)) / 1e6
        if name in PATHS:
            out[f"{name}_p99_ms"] = float(np.percentile(joined, 99)) / 1e6
    for plane in PATHS:
        if plane != "direct":
            # Paired by turn: each turn's block of the plane against the same turn's direct block,
            # so that a slow minute (another process's fsyncs) is not charged to one plane.
            paired = [
                float(np.median(mine)) - float(np.median(direct))
                for mine, direct in zip(samples[plane], samples["direct"], strict=True)
            ]
            out[f"{plane}_added_p50_ms"] = float(np.median(paired)) / 1e6
        out[f"{plane}_rejected"] = counts[plane]["rejected"]
        out[f"{plane}_accepted"] = counts[plane]["accepted"]
    for plane, values in rps.items():
        out[f"{plane}_rps"] = float(np.median(values))
    out["routing_client_direct_calls"] = sum(n for shard, n in client.sent.items() if shard is not None)
    out["routing_client_gateway_calls"] = client.sent.get(None, 0)
    return out


async def _order_path_round(
    settings: OrderPathSettings, echo_target: str, tcp_target: str
) -> dict[str, float | int]:
    from hftgate.bench.floors import floor_server

    with tempfile.TemporaryDirectory(prefix="hftgate-bench-gateway-suite-") as tmp:
        suite = ShardedSuite(Path(tmp))
        try:
            await suite.start()
            with contextlib.ExitStack() as proxies:
                proxy_targets = [
                    proxies.enter_context(floor_server("grpc-proxy", upstream=shard.address))
                    for shard in suite.shards
                ]
                result = await measure_order_paths(suite, settings, echo_target, tcp_target, proxy_targets)
        finally:
            problems = await suite.stop()
        if problems:
            raise RuntimeError("; ".join(problems))
        return result


def _bars(out: dict[str, float | int | bool | str]) -> None:
    """The issue's bars as ``*_bar_holds`` (each a ratio of figures from the same run)."""
    echo = float(out["grpc_echo_p50_ms"])
    out["routing_client_bar_holds"] = float(out["routing_client_added_p50_ms"]) <= ROUTING_CLIENT_ADDED_MS_BAR
    out["gateway_added_over_echo"] = float(out["gateway_added_p50_ms"]) / echo
    # Not a bar: what the cheapest Python hop on the same stack adds, and the gateway beyond it.
    out["python_proxy_floor_added_over_echo"] = float(out["python_proxy_floor_added_p50_ms"]) / echo
    out["gateway_own_added_p50_ms"] = float(out["gateway_added_p50_ms"]) - float(
        out["python_proxy_floor_added_p50_ms"]
    )
    out["gateway_bar_holds"] = float(out["gateway_added_over_echo"]) <= GATEWAY_ADDED_ECHO_BAR
    out["haproxy_added_over_echo"] = float(out["haproxy_added_p50_ms"]) / echo
    out["haproxy_bar_holds"] = float(out["haproxy_added_over_echo"]) <= HAPROXY_ADDED_ECHO_BAR
    out["gateway_rps_ratio"] = float(out["gateway_rps"]) / float(out["direct_rps"])
    out["gateway_rps_bar_holds"] = float(out["gateway_rps_ratio"]) >= GATEWAY_RPS_RATIO_BAR
    out["haproxy_rps_ratio"] = float(out["haproxy_rps"]) / float(out["direct_rps"])
    out["balancing_bar_holds"] = bool(
        float(out["balancing_p99_ratio"]) <= BALANCING_P99_RATIO_BAR
        and float(out["balancing_p99_ratio"]) < float(out["round_robin_p99_ratio"])
    )
    out["bars_hold"] = all(
        bool(out[name])
        for name in (
            "routing_client_bar_holds",
            "gateway_bar_holds",
            "haproxy_bar_holds",
            "gateway_rps_bar_holds",
            "balancing_bar_holds",
        )
    )


def run(
    repeats: int = 1,
    *,
    settings: OrderPathSettings | None = None,
    balancing_calls: int = 3_000,
) -> dict[str, float | int | bool | str]:
    """Every figure of the module docstring: medians over ``repeats`` rounds (fresh suite each),
    the derived figures and bars taken from those medians."""
    from hftgate.bench.floors import floor_server

    settings = settings or OrderPathSettings()
    if haproxy_binary() is None:
        raise RuntimeError("haproxy is not installed (Debian: apt-get install -y haproxy)")
    rounds: list[dict[str, float | int]] = []
    with floor_server("grpc") as echo_target, floor_server("tcp") as tcp_target:
        for _ in range(max(1, repeats)):
            rounds.append(asyncio.run(_order_path_round(settings, echo_target, tcp_target)))
    balancing = [asyncio.run(measure_balancing(balancing_calls)) for _ in range(max(1, repeats))]
    out: dict[str, float | int | bool | str] = {"balancer": str(balancing[0]["balancer"])}
    for collected in (rounds, balancing):
        for key in collected[0]:
            if key == "balancer":
                continue
            values = [float(r[key]) for r in collected]
            if key.endswith(("_rejected", "_accepted", "_calls")):
                out[key] = int(sum(values))
            else:
                out[key] = float(np.median(values))
    _bars(out)
    out["repeats"] = max(1, repeats)
    return out
