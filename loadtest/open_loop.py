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
IOC limits around BTCUSDT's mid, or around each of ``instruments``' mids in turn), round-robin over
the given API keys. With ``batch_per_ms`` the orders due at one wake-up of the sender (about a
millisecond's worth) go out as one SubmitOrders call, as a bursting client would batch them.
Where they go is an :class:`OrderPlane`: SubmitOrder to ``target`` by default;
``hftgate bench e2e`` (``hftgate/bench/e2e.py``) passes a shard, the gateway, HAProxy or the
routing client.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

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
    #: (symbol, mid price in ticks) pairs the orders cycle through; empty = ``symbol`` alone. Two
    #: symbols owned by two shards spread the load over both.
    instruments: tuple[tuple[str, int], ...] = ()
    #: Every order due at one wake-up of the sender goes out in one SubmitOrders call (at most
    #: ``max_batch_orders``), as a client bursting thousands of orders a second would; each order's
    #: latency is still from its own intended send time.
    batch_per_ms: bool = False
    max_batch_orders: int = 256

    def __post_init__(self) -> None:
        require_loopback(self.target)
        if not self.api_keys:
            raise ValueError("at least one API key is needed")
        if self.rate_per_s <= 0 or self.duration_s <= 0 or self.max_orders <= 0 or self.max_in_flight <= 0:
            raise ValueError("rate_per_s, duration_s, max_orders and max_in_flight must be positive")
        if self.warmup_orders < 0:
            raise ValueError("warmup_orders must be 0 or more")
        if not 1 <= self.max_batch_orders <= 10_000:
            raise ValueError(f"max_batch_orders must be 1..10000, not {self.max_batch_orders}")

    @property
    def traded(self) -> tuple[tuple[str, int], ...]:
        return self.instruments or ((self.symbol, self.mid_price_ticks),)


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
    calls: int = 0  # RPCs made: one per order, or one per batch with batch_per_ms
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


class OrderPlane(Protocol):
    """Where the orders go (a shard, the gateway, HAProxy, the routing client), as account
    number ``account`` (an index into the settings' API keys)."""

    async def submit(self, order: Any, account: int, timeout_s: float) -> Any:
        """One order; its ``OrderAck``, or raises ``grpc.aio.AioRpcError``."""
        ...

    async def submit_many(self, orders: Sequence[Any], account: int, timeout_s: float) -> list[Any]:
        """A batch; per order its ``OrderAck`` or, for an order whose call failed, the
        ``grpc.StatusCode`` it failed with."""
        ...


class StubPlane:
    """SubmitOrder / SubmitOrders over ``channel_for(address)`` to ``address_of(symbol)`` with each
    account's API key; with ``symbol_header`` the ``x-hftgate-symbol`` header HAProxy routes by."""

    def __init__(
        self,
        channel_for: Callable[[str], Any],
        address_of: Callable[[str], str],
        api_keys: Sequence[str],
        *,
        symbol_header: bool = False,
    ) -> None:
        from hftgate.v1 import execution_pb2_grpc

        self._stubs: dict[str, Any] = {}
        self._stub_class = execution_pb2_grpc.ExecutionServiceStub
        self._channel_for = channel_for
        self._address_of = address_of
        self._keys = tuple(api_keys)
        self._symbol_header = symbol_header

    def _stub(self, symbol: str) -> Any:
        address = self._address_of(symbol)
        stub = self._stubs.get(address)
        if stub is None:
            stub = self._stubs[address] = self._stub_class(self._channel_for(address))
        return stub

    def _metadata(self, account: int, symbol: str | None) -> tuple[tuple[str, str], ...]:
        metadata: tuple[tuple[str, str], ...] = (("x-api-key", self._keys[account]),)
        if self._symbol_header and symbol is not None:
            metadata += (("x-hftgate-symbol", symbol),)
        return metadata

    async def submit(self, order: Any, account: int, timeout_s: float) -> Any:
        from hftgate.v1 import execution_pb2

        reply = await self._stub(order.symbol).SubmitOrder(
            execution_pb2.SubmitOrderRequest(order=order),
            metadata=self._metadata(account, order.symbol),
            timeout=timeout_s,
        )
        return reply.ack

    async def submit_many(self, orders: Sequence[Any], account: int, timeout_s: float) -> list[Any]:
        import grpc

        from hftgate.v1 import execution_pb2

        # One call per destination (a direct plane sends each symbol to its own shard).
        parts: dict[str, list[int]] = {}
        for index, order in enumerate(orders):
            parts.setdefault(self._address_of(order.symbol), []).append(index)
        symbols = {order.symbol for order in orders}
        header_symbol = next(iter(symbols)) if len(symbols) == 1 else None

        async def part(indices: list[int]) -> Any:
            batch = [orders[i] for i in indices]
            return await self._stub(batch[0].symbol).SubmitOrders(
                execution_pb2.SubmitOrdersRequest(orders=batch),
                metadata=self._metadata(account, header_symbol),
                timeout=timeout_s,
            )

        outcomes = await asyncio.gather(
            *(part(indices) for indices in parts.values()), return_exceptions=True
        )
        results: list[Any] = [None] * len(orders)
        for indices, outcome in zip(parts.values(), outcomes, strict=True):
            if isinstance(outcome, grpc.aio.AioRpcError):
                for i in indices:
                    results[i] = outcome.code()
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                for i, ack in zip(indices, outcome.acks, strict=True):
                    results[i] = ack
        return results


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


class _Orders:
    """The run's orders: one :class:`OrderFlow` per (account, instrument), so client order ids
    stay unique per account; order ``i`` goes as account ``i % K`` for instrument ``(i // K) % S``."""

    def __init__(self, settings: OpenLoopSettings, prefix: str) -> None:
        self.accounts = len(settings.api_keys)
        self.flows = [
            [
                OrderFlow(
                    f"{prefix}{k}-{symbol}-",
                    symbol=symbol,
                    mid_price_ticks=mid,
                    seed=settings.seed + k * len(settings.traded) + s,
                )
                for s, (symbol, mid) in enumerate(settings.traded)
            ]
            for k in range(self.accounts)
        ]

    def order(self, index: int, account: int | None = None) -> tuple[Any, int]:
        k = index % self.accounts if account is None else account
        flows = self.flows[k]
        return flows[(index // self.accounts) % len(flows)].next_order(), k


async def run_open_loop(settings: OpenLoopSettings, plane: OrderPlane | None = None) -> OpenLoopReport:
    """Send orders at ``settings.rate_per_s`` until the order or time bound; wait for the stragglers.

    ``plane``: where the orders go; by default SubmitOrder to ``settings.target`` (the caller owns
    a plane it passes, and its channels)."""
    import grpc

    if plane is None:
        async with grpc.aio.insecure_channel(settings.target, options=CHANNEL_OPTIONS) as channel:
            # The connection, and this process's first calls, happen before the clock starts:
            # measured here, the first grpc.aio call of a process that has used a sync channel took
            # ~45 ms on the client side alone, while a fresh server's first call took ~4.5 ms.
            await channel.channel_ready()
            own = StubPlane(lambda _address: channel, lambda _symbol: settings.target, settings.api_keys)
            return await _run(settings, own)
    return await _run(settings, plane)


async def _run(settings: OpenLoopSettings, plane: OrderPlane) -> OpenLoopReport:
    import grpc

    from hftgate.v1 import common_pb2, execution_pb2

    report = OpenLoopReport(target=settings.target, rate_per_s=settings.rate_per_s)
    latency, service_time, send_lag = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    rejects: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    prefix = run_prefix()
    orders = _Orders(settings, prefix)
    total = min(settings.max_orders, max(1, int(settings.rate_per_s * settings.duration_s)))
    interval_ns = 1e9 / settings.rate_per_s
    in_flight: set[asyncio.Task[None]] = set()
    deadline_s = settings.call_deadline_s

    warm = _Orders(settings, f"{prefix}warm-")
    for number in range(settings.warmup_orders):
        order, account = warm.order(number)
        await plane.submit(order, account, deadline_s)
        report.warmup_orders += 1

    def answered(ack: Any, intended_ns: int, sent_ns: int, done_ns: int) -> None:
        latency.record(done_ns - intended_ns)
        service_time.record(done_ns - sent_ns)
        if ack.status == execution_pb2.ORDER_STATUS_REJECTED:
            report.rejected += 1
            rejects[common_pb2.RejectReason.Name(ack.reason)] += 1
        else:
            report.accepted += 1

    async def one(order: Any, account: int, intended_ns: int) -> None:
        sent_ns = time.perf_counter_ns()
        send_lag.record(max(0, sent_ns - intended_ns))
        try:
            ack = await plane.submit(order, account, deadline_s)
        except grpc.aio.AioRpcError as exc:
            failures[exc.code().name] += 1
            report.failed += 1
            return
        answered(ack, intended_ns, sent_ns, time.perf_counter_ns())

    async def batch(batch_orders: list[Any], account: int, intended: list[int]) -> None:
        sent_ns = time.perf_counter_ns()
        for intended_ns in intended:
            send_lag.record(max(0, sent_ns - intended_ns))
        try:
            results = await plane.submit_many(batch_orders, account, deadline_s)
        except grpc.aio.AioRpcError as exc:
            results = [exc.code()] * len(batch_orders)
        done_ns = time.perf_counter_ns()
        for result, intended_ns in zip(results, intended, strict=True):
            if isinstance(result, grpc.StatusCode):
                failures[result.name] += 1
                report.failed += 1
            else:
                answered(result, intended_ns, sent_ns, done_ns)

    def launch(call: Any) -> None:
        task = asyncio.create_task(call)
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
        report.calls += 1

    with _collector_paused():
        start_ns = time.perf_counter_ns()
        deadline_ns = start_ns + int(settings.duration_s * 1e9)
        index = 0
        batches = 0
        while index < total:
            now_ns = time.perf_counter_ns()
            # Everything due by now goes out now: the schedule, not the responses, sets the pace.
            # A sender that wakes late at the end still sends what was due before the deadline.
            due_until_ns = min(now_ns, deadline_ns - 1)
            due: list[int] = []
            while index < total and start_ns + index * interval_ns <= due_until_ns:
                due.append(int(start_ns + index * interval_ns))
                index += 1
            report.scheduled += len(due)
            if settings.batch_per_ms:
                first = index - len(due)
                for offset in range(0, len(due), settings.max_batch_orders):
                    chunk = due[offset : offset + settings.max_batch_orders]
                    if len(in_flight) >= settings.max_in_flight:
                        report.shed += len(chunk)
                        continue
                    account = batches % orders.accounts
                    batches += 1
                    made = [orders.order(first + offset + n, account)[0] for n in range(len(chunk))]
                    launch(batch(made, account, chunk))
                    report.sent += len(chunk)
            else:
                for n, intended_ns in enumerate(due):
                    if len(in_flight) >= settings.max_in_flight:
                        report.shed += 1
                        continue
                    order, account = orders.order(index - len(due) + n)
                    launch(one(order, account, intended_ns))
                    report.sent += 1
            if now_ns >= deadline_ns:
                break
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
    parser.add_argument(
        "--batch-per-ms", action="store_true", help="send the orders due at each wake-up as one SubmitOrders"
    )
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
                batch_per_ms=args.batch_per_ms,
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
