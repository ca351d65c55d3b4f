"""Open-loop load for the execution service: orders go out at a fixed rate, whatever the responses.

A closed-loop client (send, wait for the answer, send the next) slows down exactly when the
service does: during a stall it sends almost nothing, so the stall hardly shows in its
percentiles ("coordinated omission"). Here every order's send time is fixed in advance
(``start + i / rate``), each call runs as its own task, and each latency is measured from the
order's *intended* send time, so a stall counts against every order that should have gone out
during it. Latencies go into the native :class:`~hftgate.native.histogram.LatencyHistogram`.

Also reported: the service time (from the actual send), and the send lag (actual minus intended
send time: when it grows, this client, not the service, is the bottleneck). Each is summarised as
p50/p90/p95/p99/p99.9, max, mean and stdev: the figures of the guide's promise at a sustained
1,000 orders/s (mean < 20 ms, p95 < 30, p99 < 50, p99.9 < 100, jitter, i.e. stdev, < 5 ms).

Measurement hygiene, so that the figures are the service's, not this client's: ``warmup_orders``
sequential orders go out before the clock starts (reported, never measured), and this process's
garbage collector is off during the bounded run (a full collection here took ~20 ms; every answer
arriving meanwhile would have been charged to the service).

Bounded in every direction: at most ``max_orders`` orders and ``duration_s`` seconds; each call
has a deadline; at most ``max_in_flight`` calls outstanding (an order due while that many are
open is *shed*: not sent, and counted, so the client cannot grow without bound when the service
stalls; any shed order means the rate was not sustained). Targets must be 127.0.0.1/localhost.

Orders come from :class:`hftgate.bench.execution.OrderFlow` (passive GTC limits and aggressive
IOC limits around BTCUSDT's mid), round-robin over the given API keys.

Usage::

    python -m loadtest.open_loop --target 127.0.0.1:50051 --api-key KEY [--api-key KEY2] \\
        --rate 2000 --duration-s 10 [--json]
    python -m loadtest.open_loop --spawn-server --rate 1000 --duration-s 5   # own server, temp state
    python -m loadtest.open_loop --target gateway --demo-keys --rate 1000 --duration-s 10   # `hftgate up`

``--target`` takes an address or the name of a process of ``hftgate up`` (:data:`TARGET_ALIASES`:
``gateway``, the suite's front door that routes each order to its shard, or ``execution``, shard
0 directly); ``--demo-keys`` uses the demo accounts' keys of the dev profile (:data:`DEMO_API_KEYS`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hftgate.bench.execution import (
    DEMO_MID_PRICE_TICKS,
    DEMO_SYMBOL,
    ExecutionProcess,
    OrderFlow,
    require_loopback,
    run_prefix,
)
from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.native.histogram import LatencyHistogram

#: Addresses of ``hftgate up``'s processes by name, for ``--target``.
TARGET_ALIASES: dict[str, str] = {"gateway": "127.0.0.1:50050", "execution": "127.0.0.1:50051"}
#: The demo accounts' API keys the dev profile seeds (``HFTGATE_EXECUTION_DEMO_KEY_SECRET`` unset).
DEMO_API_KEYS: tuple[str, ...] = ("hftgate-demo-alice", "hftgate-demo-bob")


def resolve_target(target: str) -> str:
    """``target`` as an address: a name of :data:`TARGET_ALIASES`, or the address itself."""
    return TARGET_ALIASES.get(target.strip().lower(), target)


@dataclass(frozen=True)
class OpenLoopSettings:
    """What to send, how fast and for how long."""

    target: str
    api_keys: tuple[str, ...]
    rate_per_s: float = 1_000.0
    duration_s: float = 10.0
    max_orders: int = 100_000
    max_in_flight: int = 5_000
    call_deadline_s: float = 5.0
    symbol: str = DEMO_SYMBOL
    mid_price_ticks: int = DEMO_MID_PRICE_TICKS
    seed: int = 0
    # Sequential orders sent before the clock starts, not measured (see the module docstring).
    warmup_orders: int = 20

    def __post_init__(self) -> None:
        require_loopback(self.target)
        if not self.api_keys:
            raise ValueError("at least one API key is needed")
        if self.rate_per_s <= 0 or self.duration_s <= 0 or self.max_orders <= 0 or self.max_in_flight <= 0:
            raise ValueError("rate_per_s, duration_s, max_orders and max_in_flight must be positive")
        if self.warmup_orders < 0:
            raise ValueError("warmup_orders must be 0 or more")


@dataclass
class OpenLoopReport:
    """What happened: counts, and latencies in ms (from the intended send time unless named otherwise)."""

    target: str
    rate_per_s: float
    warmup_orders: int = 0  # sent before the clock started, not in any figure
    scheduled: int = 0
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    shed: int = 0
    elapsed_s: float = 0.0
    completed_per_s: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    service_time_ms: dict[str, float] = field(default_factory=dict)
    send_lag_ms: dict[str, float] = field(default_factory=dict)
    rejects_by_reason: dict[str, int] = field(default_factory=dict)
    failures_by_code: dict[str, int] = field(default_factory=dict)

    @property
    def rate_sustained(self) -> bool:
        """Every scheduled order went out and none failed."""
        return self.shed == 0 and self.failed == 0 and self.sent == self.scheduled

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rate_sustained": self.rate_sustained}


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """This process's garbage collector off for a bounded run: a full collection here took ~20 ms,
    and every answer arriving meanwhile would have been charged to the service."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def _summary_ms(histogram: LatencyHistogram) -> dict[str, float]:
    """Percentiles, max, mean and stdev (the guide's "jitter") in ms, and the count."""
    summary = histogram.summary()
    summary["p95"] = histogram.percentile(95.0) if summary["count"] else 0
    keys = ("p50", "p90", "p95", "p99", "p99_9", "max", "mean", "stdev")
    return {key: round(float(summary[key]) / 1e6, 4) for key in keys} | {"count": int(summary["count"])}


async def run_open_loop(settings: OpenLoopSettings) -> OpenLoopReport:
    """Send orders at ``settings.rate_per_s`` until the order or time bound; wait for the stragglers."""
    import grpc

    from hftgate.v1 import common_pb2, execution_pb2, execution_pb2_grpc

    report = OpenLoopReport(target=settings.target, rate_per_s=settings.rate_per_s)
    latency, service_time, send_lag = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    rejects: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    prefix = run_prefix()
    flows = [
        (
            OrderFlow(
                f"{prefix}{n}-",
                symbol=settings.symbol,
                mid_price_ticks=settings.mid_price_ticks,
                seed=settings.seed + n,
            ),
            (("x-api-key", key),),
        )
        for n, key in enumerate(settings.api_keys)
    ]
    total = min(settings.max_orders, max(1, int(settings.rate_per_s * settings.duration_s)))
    interval_ns = 1e9 / settings.rate_per_s
    in_flight: set[asyncio.Task[None]] = set()

    async with grpc.aio.insecure_channel(settings.target, options=CHANNEL_OPTIONS) as channel:
        submit = execution_pb2_grpc.ExecutionServiceStub(channel).SubmitOrder
        # The connection, and this process's first calls, happen before the clock starts: measured
        # here, the first grpc.aio call of a process that has used a sync channel took ~45 ms on the
        # client side alone, while a fresh server's first call from a fresh client took ~4.5 ms.
        await channel.channel_ready()
        warm_flow = OrderFlow(
            f"{prefix}warm-", symbol=settings.symbol, mid_price_ticks=settings.mid_price_ticks
        )
        for number in range(settings.warmup_orders):
            metadata = flows[number % len(flows)][1]
            request = execution_pb2.SubmitOrderRequest(order=warm_flow.next_order())
            await submit(request, metadata=metadata, timeout=settings.call_deadline_s)
            report.warmup_orders += 1

        async def one(request: Any, metadata: tuple[tuple[str, str], ...], intended_ns: int) -> None:
            sent_ns = time.perf_counter_ns()
            send_lag.record(max(0, sent_ns - intended_ns))
            try:
                response = await submit(request, metadata=metadata, timeout=settings.call_deadline_s)
            except grpc.aio.AioRpcError as exc:
                failures[exc.code().name] += 1
                report.failed += 1
                return
            done_ns = time.perf_counter_ns()
            latency.record(done_ns - intended_ns)
            service_time.record(done_ns - sent_ns)
            if response.ack.status == execution_pb2.ORDER_STATUS_REJECTED:
                report.rejected += 1
                rejects[common_pb2.RejectReason.Name(response.ack.reason)] += 1
            else:
                report.accepted += 1

        with _collector_paused():
            start_ns = time.perf_counter_ns()
            deadline_ns = start_ns + int(settings.duration_s * 1e9)
            index = 0
            while index < total:
                now_ns = time.perf_counter_ns()
                if now_ns >= deadline_ns:
                    break
                # Everything due by now goes out now: the schedule, not the responses, sets the pace.
                while index < total and start_ns + index * interval_ns <= now_ns:
                    intended_ns = int(start_ns + index * interval_ns)
                    flow, metadata = flows[index % len(flows)]
                    index += 1
                    report.scheduled += 1
                    if len(in_flight) >= settings.max_in_flight:
                        report.shed += 1
                        continue
                    request = execution_pb2.SubmitOrderRequest(order=flow.next_order())
                    task = asyncio.create_task(one(request, metadata, intended_ns))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                    report.sent += 1
                next_ns = start_ns + index * interval_ns
                await asyncio.sleep(max(0.0, (next_ns - time.perf_counter_ns()) / 1e9))
            if in_flight:
                await asyncio.wait(set(in_flight), timeout=settings.call_deadline_s + 1.0)
            report.elapsed_s = (time.perf_counter_ns() - start_ns) / 1e9

    report.completed_per_s = round((report.accepted + report.rejected) / report.elapsed_s, 1)
    report.latency_ms = _summary_ms(latency)
    report.service_time_ms = _summary_ms(service_time)
    report.send_lag_ms = _summary_ms(send_lag)
    report.rejects_by_reason = dict(rejects)
    report.failures_by_code = dict(failures)
    return report


def run_against_own_server(
    rate_per_s: float,
    duration_s: float,
    max_orders: int,
    *,
    max_in_flight: int = 5_000,
    accounts: Sequence[str] = ("alice", "bob"),
    warmup_orders: int = 20,
) -> OpenLoopReport:
    """Start an execution service in a temporary directory, run the open loop against it, stop it."""
    with (
        tempfile.TemporaryDirectory(prefix="hftgate-open-loop-") as tmp,
        ExecutionProcess(Path(tmp)) as process,
    ):
        process.start()
        settings = OpenLoopSettings(
            target=process.address,
            api_keys=tuple(process.account(name).api_key for name in accounts),
            rate_per_s=rate_per_s,
            duration_s=duration_s,
            max_orders=max_orders,
            max_in_flight=max_in_flight,
            warmup_orders=warmup_orders,
        )
        report = asyncio.run(run_open_loop(settings))
        process.stop()
        return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.open_loop", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--target",
        default="127.0.0.1:50051",
        help="host:port (loopback only) of an execution shard or the gateway, or 'gateway' / 'execution' "
        "for hftgate up's addresses",
    )
    parser.add_argument("--api-key", action="append", default=[], help="an account's API key (repeatable)")
    parser.add_argument(
        "--demo-keys", action="store_true", help="use the dev profile's demo keys (alice, bob) as well"
    )
    parser.add_argument("--spawn-server", action="store_true", help="start a service with temporary state")
    parser.add_argument("--rate", type=float, default=1_000.0, help="orders per second")
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--max-orders", type=int, default=100_000)
    parser.add_argument("--max-in-flight", type=int, default=5_000)
    parser.add_argument("--warmup-orders", type=int, default=20, help="sent before the clock starts")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.spawn_server:
        report = run_against_own_server(
            args.rate,
            args.duration_s,
            args.max_orders,
            max_in_flight=args.max_in_flight,
            warmup_orders=args.warmup_orders,
        )
    else:
        keys = tuple(args.api_key) + (DEMO_API_KEYS if args.demo_keys else ())
        if not keys:
            parser.error("--api-key or --demo-keys is required unless --spawn-server")
        try:
            settings = OpenLoopSettings(
                target=resolve_target(args.target),
                api_keys=keys,
                rate_per_s=args.rate,
                duration_s=args.duration_s,
                max_orders=args.max_orders,
                max_in_flight=args.max_in_flight,
                warmup_orders=args.warmup_orders,
            )
        except ValueError as exc:
            parser.error(str(exc))
        report = asyncio.run(run_open_loop(settings))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for key, value in report.as_dict().items():
            print(f"{key:>18}: {value}")
    return 0 if report.rate_sustained else 1


if __name__ == "__main__":
    sys.exit(main())
