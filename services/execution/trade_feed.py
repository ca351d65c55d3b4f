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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from decimal import Decimal

import numpy as np

from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.security import ClientCredentials
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import marketdata_pb2 as md
from hftgate.v1 import marketdata_pb2_grpc as md_grpc

log = logging.getLogger(__name__)

VENUE = "hftgate"


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
    ) -> None:
        self.target = target
        self.credentials = credentials
        self._symbol_name = symbol_name
        self._sizes = sizes  # symbol -> (tick_size, lot_size) as decimal strings
        self._queue: asyncio.Queue[np.ndarray] = asyncio.Queue(max_queued_batches)
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
            self._queue.put_nowait(fills)
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
                    trade_id=trade_id,
                    price=float(Decimal(price) * Decimal(tick)),
                    size=float(Decimal(qty) * Decimal(lot)),
                    aggressor_side=common.SIDE_BUY if side == 1 else common.SIDE_SELL,
                )
            )
        return out

    async def _requests(self) -> AsyncIterator[md.PublishTradesRequest]:
        while True:
            fills = await self._queue.get()
            trades = self._trades(fills)
            if trades:
                yield md.PublishTradesRequest(trades=trades)
                self.sent += len(trades)

    async def _run(self) -> None:
        backoff_s = 0.05
        while True:
            try:
                async with self.credentials.open_channel(self.target, CHANNEL_OPTIONS) as channel:
                    stub = md_grpc.MarketDataServiceStub(channel)
                    await stub.PublishTrades(self._requests(), metadata=self.credentials.metadata)
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
