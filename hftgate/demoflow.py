"""A small, gentle live order flow from the demo accounts through the gateway (``make run``).

Demo accounts trade with each other in pairs, one symbol per worker: the buyer sends a GTC
limit buy, and once it is acknowledged the seller sends an IOC limit sell at the same price,
which fills against it. Buyer and seller swap roles every round, so every account's position
goes back to flat, and a worker has one pair in flight at a time, so nothing accumulates in
the book (at most the one buy that waits for its sell). Prices follow the market: the middle
of the book market data holds for the symbol (through the gateway, refreshed every
``price_refresh_s``), else the instrument's demo reference price.

The flow is paced at ``rate_orders_per_s`` across its workers without catching up after a stall
(a slow suite gets fewer orders, never a burst). It counts what it sent and how it was answered
and keeps the latest round trips (bounded) for p50/p99: :meth:`DemoFlow.take_window`.

``python -m hftgate.demoflow --gateway 127.0.0.1:50050 --rate 100`` runs it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from hftgate.aioloops import new_thread_loop
from hftgate.security import ADMIN, ClientCredentials, suite_client_tls
from hftgate.v1 import common_pb2, execution_pb2, execution_pb2_grpc, marketdata_pb2, marketdata_pb2_grpc

log = logging.getLogger(__name__)

#: Demo instruments traded, each with its tick size and a price used before market data has one
#: (the demo seeds: services/execution/reference.py DEMO_INSTRUMENTS).
DEMO_SYMBOLS: Mapping[str, tuple[float, int]] = {
    "BTCUSDT": (0.01, 6_000_000),
    "ETHUSDT": (0.01, 250_000),
}
#: Venue whose book gives the demo its prices (the recorded Binance spot window).
PRICE_VENUE = "binance-spot"
#: Round trips kept for the percentiles of one window.
MAX_LATENCY_SAMPLES = 4_096
#: Longest error text kept.
MAX_ERROR_CHARS = 200


@dataclass(frozen=True)
class DemoFlowConfig:
    """Where the flow goes, how fast, and as whom."""

    gateway_address: str = "127.0.0.1:50050"
    #: Orders per second over all workers (each round is two orders).
    rate_orders_per_s: float = 100.0
    symbols: tuple[str, ...] = tuple(DEMO_SYMBOLS)
    #: Demo accounts, traded in pairs (an even number, at least two).
    accounts: tuple[str, ...] = ("alice", "bob", "carol", "dave")
    #: The demo keys are ``<demo_key_secret>-<account>`` (HFTGATE_EXECUTION_DEMO_KEY_SECRET).
    demo_key_secret: str = "hftgate-demo"
    quantity_lots: int = 100
    call_timeout_s: float = 5.0
    price_refresh_s: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.rate_orders_per_s <= 10_000:
            raise ValueError(f"rate_orders_per_s must be in (0, 10000], not {self.rate_orders_per_s}")
        if len(self.accounts) < 2 or len(self.accounts) % 2:
            raise ValueError(f"accounts must be an even number, at least 2, not {len(self.accounts)}")
        unknown = [s for s in self.symbols if s not in DEMO_SYMBOLS]
        if unknown or not self.symbols:
            raise ValueError(f"symbols must be some of {', '.join(DEMO_SYMBOLS)}, not {unknown or 'none'}")

    @staticmethod
    def from_env(
        gateway_address: str, rate_orders_per_s: float, environ: Mapping[str, str] | None = None
    ) -> DemoFlowConfig:
        env = os.environ if environ is None else environ
        return DemoFlowConfig(
            gateway_address=gateway_address,
            rate_orders_per_s=rate_orders_per_s,
            demo_key_secret=env.get("HFTGATE_EXECUTION_DEMO_KEY_SECRET") or "hftgate-demo",
        )


@dataclass
class FlowWindow:
    """What the flow did since the previous window (and in total)."""

    elapsed_s: float
    sent: int
    acked: int
    rejected: int
    errors: int
    filled: int
    total_sent: int
    total_acked: int
    total_errors: int
    p50_ms: float | None
    p99_ms: float | None
    last_error: str | None

    @property
    def acked_per_s(self) -> float:
        return self.acked / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _percentile(sorted_values: Sequence[float], q: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return round(sorted_values[index], 3)


@dataclass
class DemoFlow:
    """The running flow: ``await run()`` until cancelled; read it with :meth:`take_window`."""

    config: DemoFlowConfig
    tls_environ: Mapping[str, str] | None = None
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    errors: int = 0
    filled: int = 0
    last_error: str | None = None
    _latencies_ms: list[float] = field(default_factory=list)
    _window: tuple[float, int, int, int, int, int] = (0.0, 0, 0, 0, 0, 0)
    _prices: dict[str, int] = field(default_factory=dict)
    _run_id: str = field(default_factory=lambda: format(time.time_ns() // 1_000_000, "x"))

    def _credentials(self, account: str) -> ClientCredentials:
        key = f"{self.config.demo_key_secret}-{account}"
        return ClientCredentials((("x-api-key", key),), suite_client_tls(ADMIN, self.tls_environ))

    def take_window(self) -> FlowWindow:
        """Counts since the previous call, and p50/p99 of the round trips since then."""
        now = time.monotonic()
        started, sent, acked, rejected, errors, filled = self._window
        if not started:
            started = now
        latencies, self._latencies_ms = sorted(self._latencies_ms), []
        self._window = (now, self.sent, self.acked, self.rejected, self.errors, self.filled)
        return FlowWindow(
            elapsed_s=now - started,
            sent=self.sent - sent,
            acked=self.acked - acked,
            rejected=self.rejected - rejected,
            errors=self.errors - errors,
            filled=self.filled - filled,
            total_sent=self.sent,
            total_acked=self.acked,
            total_errors=self.errors,
            p50_ms=_percentile(latencies, 0.50),
            p99_ms=_percentile(latencies, 0.99),
            last_error=self.last_error,
        )

    async def run(self) -> None:
        """Trade until cancelled; every channel is closed on the way out."""
        self._window = (time.monotonic(), 0, 0, 0, 0, 0)
        credentials = self._credentials(self.config.accounts[0])
        channel = credentials.open_channel(self.config.gateway_address)
        try:
            stub = execution_pb2_grpc.ExecutionServiceStub(channel)
            market = marketdata_pb2_grpc.MarketDataServiceStub(channel)
            # Workers share one channel: the API key travels per call, not per channel.
            interval_s = len(self.config.symbols) * 2 / self.config.rate_orders_per_s
            async with asyncio.TaskGroup() as group:
                group.create_task(self._follow_prices(market, credentials.metadata))
                for index, symbol in enumerate(self.config.symbols):
                    group.create_task(self._trade(stub, symbol, interval_s, index))
        finally:
            await channel.close(None)

    async def _follow_prices(self, market: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        request = marketdata_pb2.GetSnapshotRequest(
            filter=marketdata_pb2.SymbolFilter(
                symbols=[common_pb2.Symbol(venue=PRICE_VENUE, name=s) for s in self.config.symbols]
            )
        )
        while True:
            try:
                reply = await market.GetSnapshot(
                    request, metadata=metadata, timeout=self.config.call_timeout_s
                )
                for snapshot in reply.symbols:
                    top = snapshot.top
                    if top.bid_price > 0 and top.ask_price > 0 and snapshot.symbol.name in DEMO_SYMBOLS:
                        tick = DEMO_SYMBOLS[snapshot.symbol.name][0]
                        self._prices[snapshot.symbol.name] = round((top.bid_price + top.ask_price) / 2 / tick)
            except grpc.aio.AioRpcError as error:  # no market data yet: the reference prices do
                log.debug("demo flow: no prices from market data: %s", error.details())
            await asyncio.sleep(self.config.price_refresh_s)

    def _order(self, symbol: str, side: int, tif: int, price_ticks: int, number: int) -> Any:
        return execution_pb2.SubmitOrderRequest(
            order=execution_pb2.NewOrder(
                client_order_id=f"demo-{self._run_id}-{symbol}-{number}",
                symbol=symbol,
                side=side,  # type: ignore[arg-type]
                order_type=execution_pb2.ORDER_TYPE_LIMIT,
                time_in_force=tif,  # type: ignore[arg-type]
                price_ticks=price_ticks,
                quantity_lots=self.config.quantity_lots,
            )
        )

    async def _submit(self, stub: Any, request: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
        """One order; its ack, or None after an RPC error (counted, the flow goes on)."""
        self.sent += 1
        started = time.perf_counter()
        try:
            reply = await stub.SubmitOrder(request, metadata=metadata, timeout=self.config.call_timeout_s)
        except grpc.aio.AioRpcError as error:
            self.errors += 1
            code = error.code()
            self.last_error = f"{code.name if code else 'UNKNOWN'}: {error.details() or ''}"[:MAX_ERROR_CHARS]
            return None
        if len(self._latencies_ms) < MAX_LATENCY_SAMPLES:
            self._latencies_ms.append((time.perf_counter() - started) * 1000)
        ack = reply.ack
        if ack.status == execution_pb2.ORDER_STATUS_REJECTED:
            self.rejected += 1
            self.last_error = f"rejected: {ack.reason_text}"[:MAX_ERROR_CHARS]
        else:
            self.acked += 1
            if ack.status == execution_pb2.ORDER_STATUS_FILLED:
                self.filled += 1
        return ack

    async def _trade(self, stub: Any, symbol: str, interval_s: float, offset: int) -> None:
        accounts = self.config.accounts
        metadata = {a: self._credentials(a).metadata for a in accounts}
        pairs = [(accounts[i], accounts[i + 1]) for i in range(0, len(accounts), 2)]
        loop = asyncio.get_running_loop()
        # Workers start spread over one interval, so the suite sees a steady flow, not pulses.
        next_at = loop.time() + interval_s * offset / len(self.config.symbols)
        number = 0
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at = max(next_at + interval_s, loop.time())  # never catch up with a burst
            first, second = pairs[(number // 2) % len(pairs)]
            buyer, seller = (first, second) if number % 2 == 0 else (second, first)
            price = self._prices.get(symbol) or DEMO_SYMBOLS[symbol][1]
            buy = self._order(symbol, common_pb2.SIDE_BUY, execution_pb2.TIME_IN_FORCE_GTC, price, 2 * number)
            ack = await self._submit(stub, buy, metadata[buyer])
            if ack is not None and ack.status != execution_pb2.ORDER_STATUS_REJECTED:
                sell = self._order(
                    symbol, common_pb2.SIDE_SELL, execution_pb2.TIME_IN_FORCE_IOC, price, 2 * number + 1
                )
                await self._submit(stub, sell, metadata[seller])
            number += 1


class DemoFlowThread:
    """A :class:`DemoFlow` on its own event loop in a daemon thread (beside ``hftgate up``'s
    synchronous loop); ``stop()`` cancels it and waits until its channel is closed."""

    def __init__(self, flow: DemoFlow) -> None:
        self.flow = flow
        self._loop = new_thread_loop()  # beside the dashboard's: see hftgate.aioloops
        self._task: asyncio.Task[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-flow", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self.flow.run())
        self._ready.set()
        try:
            self._loop.run_until_complete(self._task)
        except asyncio.CancelledError:
            pass
        except Exception:  # the suite runs on without its demo flow
            log.exception("demo flow stopped")
        finally:
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        task = self._task
        if task is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(task.cancel)
        self._thread.join(timeout_s)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the flow alone until Ctrl-C, printing what it did every few seconds."""
    parser = argparse.ArgumentParser(prog="python -m hftgate.demoflow", description=__doc__.split("\n")[0])
    parser.add_argument("--gateway", default="127.0.0.1:50050", help="the gateway's host:port")
    parser.add_argument("--rate", type=float, default=100.0, help="orders per second (two per round)")
    parser.add_argument("--interval-s", type=float, default=5.0, help="seconds between summary lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    flow = DemoFlow(DemoFlowConfig.from_env(args.gateway, args.rate))

    async def report() -> None:
        while True:
            await asyncio.sleep(args.interval_s)
            w = flow.take_window()
            print(
                f"demo flow: {w.acked_per_s:.0f} acked/s, {w.total_acked} acked, {w.total_errors} errors, "
                f"p50 {w.p50_ms} ms, p99 {w.p99_ms} ms"
                + (f", last error {w.last_error}" if w.errors else ""),
                flush=True,
            )

    async def both() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(flow.run())
            group.create_task(report())

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(both())


if __name__ == "__main__":
    main()
