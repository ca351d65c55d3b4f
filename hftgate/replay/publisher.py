"""A feed handler that publishes recorded ticks to the market data service over gRPC.

Quotes and depth updates go on one PublishQuotes stream, trades on one PublishTrades
stream, each message carrying up to ``max_batch`` ticks. Within each stream the recorded
order is kept (a depth update never overtakes a quote it followed); the two streams
are independent, as two feeds would be.

Pacing follows the recorder's receive times: at ``speed`` 1 a tick is sent when as much
wall time has passed since the start as recorded time since the first tick, at 10 ten
times sooner; at 0 as fast as the service takes them. Ticks that fall due together go
in one message.

The publisher authenticates as the suite's ``feed`` principal (:func:`feed_credentials`: its
service token from the suite secret, and TLS with the suite CA when ``HFTGATE_TLS_DIR`` is
set), which the market data service lets publish every external venue, never ``hftgate``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.replay.ticks import Aggressor, DepthTick, QuoteTick, Tick, TradeTick
from hftgate.security import ClientCredentials, load_suite_secret, suite_client_tls
from hftgate.v1 import common_pb2, marketdata_pb2, marketdata_pb2_grpc

pb = marketdata_pb2

#: The principal a feed handler publishes as.
FEED_PRINCIPAL = "feed"

_SIDES = {
    Aggressor.UNKNOWN: common_pb2.SIDE_UNSPECIFIED,
    Aggressor.BUY: common_pb2.SIDE_BUY,
    Aggressor.SELL: common_pb2.SIDE_SELL,
}


def quote_message(t: QuoteTick) -> marketdata_pb2.Quote:
    return pb.Quote(
        venue=t.venue,
        symbol=t.symbol,
        exchange_ts_ns=t.exchange_ts_ns,
        receive_ts_ns=t.receive_ts_ns,
        sequence=t.sequence,
        bid_price=t.bid_price,
        bid_size=t.bid_size,
        ask_price=t.ask_price,
        ask_size=t.ask_size,
    )


def depth_message(t: DepthTick) -> marketdata_pb2.DepthUpdate:
    return pb.DepthUpdate(
        venue=t.venue,
        symbol=t.symbol,
        exchange_ts_ns=t.exchange_ts_ns,
        receive_ts_ns=t.receive_ts_ns,
        sequence=t.sequence,
        is_snapshot=t.is_snapshot,
        bids=[pb.PriceLevel(price=p, size=s) for p, s in t.bids],
        asks=[pb.PriceLevel(price=p, size=s) for p, s in t.asks],
    )


def trade_message(t: TradeTick) -> marketdata_pb2.Trade:
    return pb.Trade(
        venue=t.venue,
        symbol=t.symbol,
        exchange_ts_ns=t.exchange_ts_ns,
        receive_ts_ns=t.receive_ts_ns,
        trade_id=t.trade_id,
        price=t.price,
        size=t.size,
        aggressor_side=_SIDES[t.aggressor],
    )


def to_requests(
    ticks: Sequence[Tick],
) -> tuple[list[marketdata_pb2.PublishQuotesRequest], list[marketdata_pb2.PublishTradesRequest]]:
    """The stream messages carrying ``ticks``: quotes and depth in order, trades apart.

    A message holds quotes, then depth updates; a quote that follows a depth update starts
    a new message so that the service applies them in the recorded order.
    """
    quote_requests: list[marketdata_pb2.PublishQuotesRequest] = []
    trades = []
    current: marketdata_pb2.PublishQuotesRequest | None = None
    for tick in ticks:
        if type(tick) is QuoteTick:
            if current is None or len(current.depth_updates):
                current = pb.PublishQuotesRequest()
                quote_requests.append(current)
            current.quotes.append(quote_message(tick))
        elif type(tick) is TradeTick:
            trades.append(trade_message(tick))
        else:
            assert isinstance(tick, DepthTick)
            if current is None:
                current = pb.PublishQuotesRequest()
                quote_requests.append(current)
            current.depth_updates.append(depth_message(tick))
    trade_requests = [pb.PublishTradesRequest(trades=trades)] if trades else []
    return quote_requests, trade_requests


@dataclass(frozen=True)
class ReplayResult:
    """What a replay sent and what the service said about it."""

    ticks: int
    quote_messages: int
    trade_messages: int
    quote_summary: marketdata_pb2.PublishSummary
    trade_summary: marketdata_pb2.PublishSummary
    elapsed_s: float
    recorded_span_ns: int


ProgressCallback = Callable[[int, int], None]


async def replay(
    ticks: Sequence[Tick],
    channel: grpc.aio.Channel,
    *,
    speed: float = 1.0,
    max_batch: int = 1000,
    on_progress: ProgressCallback | None = None,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> ReplayResult:
    """Publish ``ticks`` (ordered by receive time) through ``channel``; see the module doc for pacing.

    ``on_progress(sent, total)`` is called after every batch. ``metadata`` is sent on both
    streams; None sends the ``feed`` principal's token (:func:`feed_credentials`).
    """
    if speed < 0:
        raise ValueError(f"speed must be >= 0 (0 = as fast as possible), got {speed}")
    if max_batch <= 0:
        raise ValueError(f"max_batch must be positive, got {max_batch}")
    if metadata is None:
        metadata = feed_credentials().metadata
    stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
    # Each stream reads its requests from a bounded queue through a generator. Writing with
    # call.write() instead loses the server's answer: once a server has refused the call (wrong
    # principal, say), the next write fails locally and the call reports INTERNAL "Internal error
    # from Core"; a call fed by a generator ends with the server's own status.
    quotes = _Feed(stub.PublishQuotes, tuple(metadata))
    trades = _Feed(stub.PublishTrades, tuple(metadata))
    total = len(ticks)
    quote_messages = trade_messages = 0
    started = time.monotonic_ns()
    first_recorded = ticks[0].receive_ts_ns if ticks else 0
    sent = 0
    try:
        while sent < total:
            end = min(total, sent + max_batch)
            if speed > 0:
                due = started + (ticks[sent].receive_ts_ns - first_recorded) / speed
                wait_ns = due - time.monotonic_ns()
                if wait_ns > 0:
                    await asyncio.sleep(wait_ns / 1e9)
                # Everything recorded up to "now" on the replay clock goes in this batch.
                recorded_now = first_recorded + (time.monotonic_ns() - started) * speed
                end = sent + 1
                while end < total and end - sent < max_batch and ticks[end].receive_ts_ns <= recorded_now:
                    end += 1
            quote_requests, trade_requests = to_requests(ticks[sent:end])
            for quote_request in quote_requests:
                await quotes.put(quote_request)
            for trade_request in trade_requests:
                await trades.put(trade_request)
            quote_messages += len(quote_requests)
            trade_messages += len(trade_requests)
            sent = end
            if on_progress is not None:
                on_progress(sent, total)
        quote_summary, trade_summary = await quotes.finish(), await trades.finish()
    finally:
        quotes.cancel()
        trades.cancel()
    return ReplayResult(
        ticks=total,
        quote_messages=quote_messages,
        trade_messages=trade_messages,
        quote_summary=quote_summary,
        trade_summary=trade_summary,
        elapsed_s=(time.monotonic_ns() - started) / 1e9,
        recorded_span_ns=ticks[-1].receive_ts_ns - first_recorded if ticks else 0,
    )


class _Feed:
    """One client stream fed from a bounded queue; its result is the server's summary or status."""

    _END: object = object()

    def __init__(self, method: Callable[..., Any], metadata: tuple[tuple[str, str], ...]) -> None:
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        self._result: asyncio.Future[Any] = asyncio.ensure_future(self._call(method, metadata))

    async def _call(self, method: Callable[..., Any], metadata: tuple[tuple[str, str], ...]) -> Any:
        return await method(self, metadata=metadata)

    # The request iterator is this object, not an async generator: a generator left suspended
    # when the server ends the call would be finalized later by the garbage collector, at an
    # arbitrary point of another task.
    def __aiter__(self) -> _Feed:
        return self

    async def __anext__(self) -> Any:
        item = await self._queue.get()
        if item is self._END:
            raise StopAsyncIteration
        return item

    async def put(self, request: Any) -> None:
        """Queue ``request``; raises the call's error if the server ended it."""
        if self._result.done():
            self._result.result()  # raises the server's status
        put = asyncio.ensure_future(self._queue.put(request))
        await asyncio.wait({put, self._result}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            self._result.result()

    async def finish(self) -> Any:
        """End the stream and return the server's answer (or raise its status)."""
        if not self._result.done():
            await self.put(self._END)
        return await self._result

    def cancel(self) -> None:
        if not self._result.done():
            self._result.cancel()


def feed_credentials(environ: Mapping[str, str] | None = None) -> ClientCredentials:
    """The ``feed`` principal's credentials: its token under the suite secret (never created
    here: a publisher joins a suite, it does not start one) and TLS from ``HFTGATE_TLS_DIR``.
    Raises hftgate.security.SecurityError when there is no suite secret."""
    secret = load_suite_secret(environ, create=False)
    return secret.service_credentials(FEED_PRINCIPAL, suite_client_tls(FEED_PRINCIPAL, environ))


def channel_to(target: str, credentials: ClientCredentials | None = None) -> grpc.aio.Channel:
    """A channel to the market data service at ``target``: TLS when ``credentials`` (default
    :func:`feed_credentials`) has it, else plaintext. Calls must still send its metadata."""
    return (credentials or feed_credentials()).open_channel(target, CHANNEL_OPTIONS)
