"""Publishing the service's own trades to the market data service, as venue ``hftgate``.

Off the order path: the core hands over the fills of durable batches (FILL_DTYPE arrays),
:class:`TradeFeed` converts them to market data ``Trade`` messages (prices and sizes as decimals,
from the instrument's tick and lot sizes) and writes them on one long-lived PublishTrades stream.
When the market data service is unreachable the feed drops what it cannot send (counting it and
logging once per interval) and reconnects with backoff: market data is best effort, while the
ledger, not this feed, is the record of every fill.

The stream carries the service's credentials (``credentials``: the "execution" principal's token,
the only one market data accepts venue ``hftgate`` from, and TLS from the suite's
``HFTGATE_TLS_DIR`` when set).

Tracing: each PublishTradesRequest sent is a span of kind PRODUCER
(``/hftgate.v1.MarketDataService/PublishTrades send``, the root of a trace of its own, so the
sampler decides per message) from the moment its fills were handed over to the moment the stream
took the message: the time trades wait in this feed. Attributes: ``hftgate.batch_size`` (trades),
``hftgate.fills``, ``hftgate.symbol`` (when one symbol), ``hftgate.venue``. It is not the child of
an order's span: fills reach the feed in batches from a task of their own, not from the order's
call. The stream itself is opened with the caller's trace headers, if any
(:func:`hftgate.telemetry.trace_metadata`). Carrying each message's trace into market data would
need a trace-context field in PublishTradesRequest (gRPC metadata is sent once per stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import numpy as np
from opentelemetry import trace

from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.security import ClientCredentials
from hftgate.telemetry import ROOT_CONTEXT, trace_metadata
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import marketdata_pb2 as md
from hftgate.v1 import marketdata_pb2_grpc as md_grpc

log = logging.getLogger(__name__)

VENUE = "hftgate"
PUBLISH_TRADES = "/hftgate.v1.MarketDataService/PublishTrades"
_tracer = trace.get_tracer("hftgate.execution.trade_feed")


class TradeFeed:
    """A PublishTrades stream to ``target`` fed with fill arrays; see the module docstring."""

    def __init__(
        self,
        target: str,
        symbol_name: Callable[[int], str],
        sizes: Callable[[str], tuple[str, str] | None],
        *,
        credentials: ClientCredentials,
        max_queued_batches: int = 10_000,
        backoff_max_s: float = 5.0,
        trade_id_base: int = 0,
    ) -> None:
        self.target = target
        # The shard's bits (shard_id << 48), as in the trade ids clients and the ledger see: two
        # shards number their trades from 1, and market data would take the second as a duplicate.
        self._trade_id_base = trade_id_base
        self.credentials = credentials
        self._symbol_name = symbol_name
        self._sizes = sizes  # symbol -> (tick_size, lot_size) as decimal strings
        # (fills, time.time_ns() when handed over)
        self._queue: asyncio.Queue[tuple[np.ndarray, int]] = asyncio.Queue(max_queued_batches)
        self._backoff_max_s = backoff_max_s
        self._task: asyncio.Task[None] | None = None
        self.sent = 0
        self.dropped = 0
        self.reconnects = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="execution-trade-feed")

    def publish(self, fills: np.ndarray) -> None:
        """Queue fills (never waits; drops them when the queue is full)."""
        try:
            self._queue.put_nowait((fills, time.time_ns()))
        except asyncio.QueueFull:
            self.dropped += len(fills)

    def _trades(self, fills: np.ndarray) -> list[md.Trade]:
        out = []
        for trade_id, price, qty, _, _, _, _, transact, symbol_id, side in fills.tolist():
            symbol = self._symbol_name(symbol_id)
            sizes = self._sizes(symbol)
            if sizes is None:
                self.dropped += 1
                continue
            tick, lot = sizes
            out.append(
                md.Trade(
                    venue=VENUE,
                    symbol=symbol,
                    exchange_ts_ns=transact,
                    trade_id=trade_id | self._trade_id_base,
                    price=float(Decimal(price) * Decimal(tick)),
                    size=float(Decimal(qty) * Decimal(lot)),
                    aggressor_side=common.SIDE_BUY if side == 1 else common.SIDE_SELL,
                )
            )
        return out

    async def _requests(self) -> AsyncIterator[md.PublishTradesRequest]:
        while True:
            fills, handed_ns = await self._queue.get()
            trades = self._trades(fills)
            if not trades:
                continue
            # A root span per message (see the module docstring), from the hand-over to the send.
            span = _tracer.start_span(
                PUBLISH_TRADES + " send",
                context=ROOT_CONTEXT,
                kind=trace.SpanKind.PRODUCER,
                start_time=handed_ns,
            )
            if span.is_recording():
                symbols = {trade.symbol for trade in trades}
                span.set_attributes(
                    {
                        "rpc.system": "grpc",
                        "rpc.service": "hftgate.v1.MarketDataService",
                        "rpc.method": "PublishTrades",
                        "server.address": self.target,
                        "hftgate.venue": VENUE,
                        "hftgate.batch_size": len(trades),
                        "hftgate.fills": len(fills),
                    }
                )
                if len(symbols) == 1:
                    span.set_attribute("hftgate.symbol", next(iter(symbols)))
            try:
                yield md.PublishTradesRequest(trades=trades)
            finally:
                span.end()  # the stream took the message (or the stream ended)
            self.sent += len(trades)

    async def _run(self) -> None:
        backoff_s = 0.05
        while True:
            try:
                async with self.credentials.open_channel(self.target, CHANNEL_OPTIONS) as channel:
                    stub = md_grpc.MarketDataServiceStub(channel)
                    await stub.PublishTrades(
                        self._requests(), metadata=trace_metadata(self.credentials.metadata)
                    )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.reconnects += 1
                if self.reconnects == 1 or self.reconnects % 100 == 0:
                    log.warning("trade feed to %s failed (%s); reconnecting", self.target, exc)
            await asyncio.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, self._backoff_max_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
