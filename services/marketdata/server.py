"""gRPC wiring of the market data service: proto <-> domain translation, nothing else.

Every RPC runs on the server's one asyncio event loop, as does the engine, so the
engine has exactly one writer and needs no locks. Publish streams process each message
synchronously (a message of a thousand ticks is one uninterrupted run of the engine);
Subscribe and StreamArbitrage writers await between messages, so a slow client only
ever delays its own stream.

Who may call what is decided before a servicer method runs (hftgate.security's interceptor,
then services.marketdata.auth's); a Publish method only looks up its caller's
:class:`~services.marketdata.access.Publisher` to hand to the engine with every tick.

What one client can make the server hold is bounded (marketdata.proto documents each bound):
a Subscribe or StreamArbitrage stream takes a slot of its caller's and of the service's
(services.marketdata.streams; RESOURCE_EXHAUSTED beyond them) and gives it back in a
``finally`` however it ends, and queues at most its bounded buffer (services.marketdata.fanout);
a GetSnapshot reply is one page of at most ``snapshot_max_symbols`` symbols and
``snapshot_max_reply_bytes`` bytes of them; a depth update over the level limit is rejected on
its count before a Python object is made per level.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, NoReturn, overload

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from hftgate.grpcserver import RunningServer, ServiceBinding, abort_invalid_argument, create_server
from hftgate.security import (
    ServiceAuthInterceptor,
    SuiteSecurity,
    api_key_of,
    load_suite_security,
    principal_of,
)
from hftgate.v1 import common_pb2, marketdata_pb2, marketdata_pb2_grpc
from services.marketdata import wire
from services.marketdata.access import ApiKeyVerifier, Publisher
from services.marketdata.arbitrage import ArbitrageEvent, ArbitrageKind
from services.marketdata.auth import READ_METHODS, SERVICE_NAME, MarketDataAccessInterceptor
from services.marketdata.bars import BarView
from services.marketdata.config import MarketDataConfig
from services.marketdata.depth_book import Levels, RequestDepthLevels
from services.marketdata.engine import (
    IngestStats,
    MarketDataEngine,
    RejectReason,
    SymbolSnapshot,
    UnknownSymbolError,
)
from services.marketdata.fanout import SymbolFilter
from services.marketdata.streams import Caller, StreamLimitExceeded, StreamSlot
from services.marketdata.trade_ring import VwapResult

log = logging.getLogger(__name__)

pb = marketdata_pb2
#: Most entries in StreamArbitrageRequest.kinds (there are two kinds).
MAX_ARBITRAGE_KINDS = 16


# Upper bounds of the encoded size of a SymbolSnapshot's parts (tag + length + payload; a
# double is 9 bytes with its tag, a varint at most 11): one PriceLevel (2 + 9 + 9), one Bar
# (3 + 5 * 11 + 5 * 9 + 2 = 105, rounded up), and everything else of one symbol but its names
# (top 49, last trade 46, two VWAP windows 2 * 77, three counters 33, the entry's own tag and
# length 6, the Symbol's 3 + 2 * 3: 297, rounded up). tests/services/marketdata/test_robustness.py
# checks them against ByteSize.
_LEVEL_BYTES = 20
_BAR_BYTES = 112
_SYMBOL_FIXED_BYTES = 320


def _snapshot_bytes_bound(snap: SymbolSnapshot) -> int:
    """At least the encoded size of ``snap`` as one entry of GetSnapshotResponse.symbols."""
    return (
        _SYMBOL_FIXED_BYTES
        + len(snap.venue.encode())
        + len(snap.symbol.encode())
        + _LEVEL_BYTES * (len(snap.bids) + len(snap.asks))
        + _BAR_BYTES * len(snap.current_bars)
    )


class _Levels(Sequence[tuple[float, float]]):
    """A repeated PriceLevel field seen as (price, size) pairs, built only when first read.

    Given for a depth update over the level limit: the engine counts its levels (``len``)
    before it reads any and rejects it, so no Python object is made per level.
    """

    __slots__ = ("_field", "_pairs")

    def __init__(self, field: Sequence[marketdata_pb2.PriceLevel]) -> None:
        self._field = field
        self._pairs: list[tuple[float, float]] | None = None

    def _read(self) -> list[tuple[float, float]]:
        pairs = self._pairs
        if pairs is None:
            pairs = self._pairs = [(level.price, level.size) for level in self._field]
        return pairs

    def __len__(self) -> int:
        return len(self._field)

    def __iter__(self) -> Iterator[tuple[float, float]]:
        return iter(self._read())

    @overload
    def __getitem__(self, index: int) -> tuple[float, float]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[float, float]]: ...
    def __getitem__(self, index: int | slice) -> tuple[float, float] | Sequence[tuple[float, float]]:
        return self._read()[index]


class ReceivedQuotes:
    """A PublishQuotesRequest as gRPC received it: its bytes, from which each depth update's
    levels are read in C (a second serialization of the decoded update cost ~6 us, 29 us for a
    2,000-level snapshot), and protobuf's decoding of them, for everything else.

    ``FromString`` is PublishQuotes' request deserializer; the decoding interceptor
    (hftgate.telemetry) calls it, and names the message from ``DESCRIPTOR`` when it refuses
    bytes that do not decode, as for any other request.
    """

    __slots__ = ("data", "message")

    DESCRIPTOR = pb.PublishQuotesRequest.DESCRIPTOR

    def __init__(self, data: bytes, message: marketdata_pb2.PublishQuotesRequest) -> None:
        self.data = data
        self.message = message

    @classmethod
    def FromString(cls, data: bytes) -> ReceivedQuotes:
        return cls(data, pb.PublishQuotesRequest.FromString(data))


# --- domain -> proto ------------------------------------------------------------------------
def _enum(value: int) -> Any:
    """A proto enum value from the domain's IntEnum: the runtime takes the int as is, but the
    generated stubs type enum fields as their enum class."""
    return value


def _reject_counts(counts: dict[RejectReason, int]) -> list[marketdata_pb2.TickRejectCount]:
    return [pb.TickRejectCount(reason=_enum(reason), count=n) for reason, n in sorted(counts.items())]


def _last_trade(last_trade: tuple[float, float, int, int, int] | None) -> marketdata_pb2.LastTrade | None:
    if last_trade is None:
        return None
    price, size, side, ts, trade_id = last_trade
    return pb.LastTrade(
        price=price, size=size, aggressor_side=_enum(side), exchange_ts_ns=ts, trade_id=trade_id
    )


def _vwap(result: VwapResult) -> marketdata_pb2.VwapWindow:
    return pb.VwapWindow(
        vwap=result.vwap,
        volume=result.volume,
        trades=result.trades,
        first_trade_ts_ns=result.first_trade_ts_ns,
        last_trade_ts_ns=result.last_trade_ts_ns,
        window_ns=result.window_ns,
        last_n=result.last_n,
        complete=result.complete,
    )


def _bar(bar: BarView) -> marketdata_pb2.Bar:
    return pb.Bar(
        interval_ms=bar.interval_ms,
        start_ns=bar.start_ns,
        open=bar.open,
        high=bar.high,
        low=bar.low,
        close=bar.close,
        volume=bar.volume,
        trades=bar.trades,
        vwap=bar.vwap,
        closed=bar.closed,
    )


def _stats(stats: IngestStats) -> marketdata_pb2.IngestStats:
    return pb.IngestStats(
        accepted=stats.accepted,
        rejected=stats.rejected,
        rejected_by_reason=_reject_counts(stats.rejected_by_reason),
        subscribers=stats.subscribers,
        arbitrage_subscribers=stats.arbitrage_subscribers,
    )


def _symbol_snapshot(snap: SymbolSnapshot) -> marketdata_pb2.SymbolSnapshot:
    return pb.SymbolSnapshot(
        symbol=common_pb2.Symbol(venue=snap.venue, name=snap.symbol),
        top=pb.TopOfBook(
            bid_price=snap.bid_price,
            bid_size=snap.bid_size,
            ask_price=snap.ask_price,
            ask_size=snap.ask_size,
            exchange_ts_ns=snap.top_ts_ns,
        ),
        bids=[pb.PriceLevel(price=p, size=s) for p, s in snap.bids],
        asks=[pb.PriceLevel(price=p, size=s) for p, s in snap.asks],
        last_trade=_last_trade(snap.last_trade),
        vwap_by_time=_vwap(snap.vwap_by_time),
        vwap_by_count=_vwap(snap.vwap_by_count),
        current_bars=[_bar(bar) for bar in snap.current_bars],
        quotes=snap.quotes,
        trades=snap.trades,
        symbol_sequence=snap.symbol_sequence,
    )


def _arbitrage_event(event: ArbitrageEvent, dropped_before: int) -> marketdata_pb2.ArbitrageEvent:
    return pb.ArbitrageEvent(
        type=_enum(event.type),
        kind=_enum(event.kind),
        opportunity_id=event.opportunity_id,
        legs=[
            pb.ArbitrageLeg(
                venue=leg.venue,
                symbol=leg.symbol,
                side=_enum(leg.side),
                price=leg.price,
                size=leg.size,
                taker_fee_bps=leg.taker_fee_bps,
            )
            for leg in event.legs
        ],
        edge_bps=event.edge_bps,
        executable_size=event.executable_size,
        expected_profit=event.expected_profit,
        profit_currency=event.profit_currency,
        opened_at_ns=event.opened_at_ns,
        closed_at_ns=event.closed_at_ns,
        lifetime_ns=event.lifetime_ns,
        updates_while_open=event.updates_while_open,
        dropped_before=dropped_before,
        peak_edge_bps=event.peak_edge_bps,
    )


async def _abort_bad_request(context: grpc.aio.ServicerContext, field: str, description: str) -> NoReturn:
    await abort_invalid_argument(context, field, description)


class MarketDataServicer(marketdata_pb2_grpc.MarketDataServiceServicer):
    """Translates MarketDataService calls to the engine."""

    def __init__(
        self, engine: MarketDataEngine, security: SuiteSecurity, api_keys: ApiKeyVerifier | None = None
    ) -> None:
        self._engine = engine
        self._secret = security.secret
        self._api_keys = api_keys
        config = engine.config
        self._max_venue_chars = config.max_venue_chars
        self._max_symbol_chars = config.max_symbol_chars
        self._max_filter_symbols = config.max_filter_symbols
        self._snapshot_max_depth_levels = config.snapshot_max_depth_levels
        self._snapshot_max_symbols = config.snapshot_max_symbols
        self._snapshot_max_reply_bytes = config.snapshot_max_reply_bytes

    async def _publisher(self, context: grpc.aio.ServicerContext) -> Publisher:
        """The calling publisher (the access interceptor admitted only publishers)."""
        publisher = self._engine.publishers.get(principal_of(context, self._secret) or "")
        if publisher is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "only a publisher may publish market data")
        assert publisher is not None
        return publisher

    async def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        """Who is calling: the token's service principal, else the account of the API key.

        The access interceptor admitted the call; the key is resolved again (the cache client
        holds it near) because only the servicer sees the call's context."""
        principal = principal_of(context, self._secret)
        if principal is not None:
            return Caller("service", principal)
        api_key = api_key_of(context)
        account = None
        if api_key is not None and self._api_keys is not None:
            try:
                account = await self._api_keys.account_of(api_key)
            except Exception:  # cannot tell now, as in the access interceptor
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "cannot verify the API key now (the cache service is unreachable); retry",
                )
        if account is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the API key is not valid")
        assert account is not None
        return Caller("account", account)

    async def _stream_slot(self, context: grpc.aio.ServicerContext) -> StreamSlot:
        """A slot for a new server stream, or RESOURCE_EXHAUSTED with a QuotaFailure detail."""
        caller = await self._caller(context)
        try:
            return self._engine.streams.acquire(caller)
        except StreamLimitExceeded as exc:
            detail = error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(subject=exc.subject, description=exc.message)
                ]
            )
            status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=exc.message)
            status.details.add().Pack(detail)
            await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]
            raise  # abort_with_status raises; this line is never reached

    async def _name_too_long(
        self, context: grpc.aio.ServicerContext, field: str, symbol: common_pb2.Symbol
    ) -> None:
        if len(symbol.venue) > self._max_venue_chars:
            await _abort_bad_request(
                context, f"{field}.venue", f"venue longer than {self._max_venue_chars} characters"
            )
        if len(symbol.name) > self._max_symbol_chars:
            await _abort_bad_request(
                context, f"{field}.name", f"symbol name longer than {self._max_symbol_chars} characters"
            )

    async def _filter(
        self, context: grpc.aio.ServicerContext, message: marketdata_pb2.SymbolFilter
    ) -> SymbolFilter:
        """The domain filter, or INVALID_ARGUMENT when it is larger than the limits."""
        if len(message.symbols) > self._max_filter_symbols:
            await _abort_bad_request(
                context,
                "filter.symbols",
                f"{len(message.symbols)} symbols in the filter; at most {self._max_filter_symbols}",
            )
        for index, symbol in enumerate(message.symbols):
            await self._name_too_long(context, f"filter.symbols[{index}]", symbol)
        return SymbolFilter(tuple((s.venue, s.name) for s in message.symbols))

    # --- ingest ------------------------------------------------------------------------------
    async def PublishQuotes(
        self,
        request_iterator: AsyncIterator[ReceivedQuotes],
        context: grpc.aio.ServicerContext,
    ) -> marketdata_pb2.PublishSummary:
        publisher = await self._publisher(context)
        on_quote, on_depth = self._engine.on_quote, self._engine.on_depth
        max_levels = self._engine.config.depth_max_levels_per_update
        depth_levels = RequestDepthLevels()
        rejected = [0] * (max(RejectReason) + 1)
        accepted = messages = 0
        async for received in request_iterator:
            messages += 1
            request = received.message
            for q in request.quotes:
                reason = on_quote(
                    q.venue,
                    q.symbol,
                    q.exchange_ts_ns,
                    q.receive_ts_ns,
                    q.sequence,
                    q.bid_price,
                    q.bid_size,
                    q.ask_price,
                    q.ask_size,
                    publisher,
                )
                if reason:
                    rejected[reason] += 1
                else:
                    accepted += 1
            updates = request.depth_updates
            if updates:
                depth_levels.start(received.data)
            for d in updates:
                bids: Sequence[tuple[float, float]] | Levels
                asks: Sequence[tuple[float, float]] | Levels
                checked: int | None
                bid_count, ask_count = len(d.bids), len(d.asks)
                if bid_count + ask_count <= max_levels:
                    # Read (and checked) in C from the request's bytes: a Python tuple per level
                    # cost ~0.2 us.
                    bids, asks, checked = depth_levels.next_levels(bid_count, ask_count)
                else:  # the engine rejects it on its count: no object per level is made
                    depth_levels.skip()
                    bids, asks, checked = _Levels(d.bids), _Levels(d.asks), None
                reason = on_depth(
                    d.venue,
                    d.symbol,
                    d.exchange_ts_ns,
                    d.receive_ts_ns,
                    d.sequence,
                    d.is_snapshot,
                    bids,
                    asks,
                    publisher,
                    checked,
                )
                if reason:
                    rejected[reason] += 1
                else:
                    accepted += 1
        return self._summary(accepted, rejected, messages)

    async def PublishTrades(
        self,
        request_iterator: AsyncIterator[marketdata_pb2.PublishTradesRequest],
        context: grpc.aio.ServicerContext,
    ) -> marketdata_pb2.PublishSummary:
        publisher = await self._publisher(context)
        on_trade = self._engine.on_trade
        rejected = [0] * (max(RejectReason) + 1)
        accepted = messages = 0
        async for request in request_iterator:
            messages += 1
            for t in request.trades:
                reason = on_trade(
                    t.venue,
                    t.symbol,
                    t.exchange_ts_ns,
                    t.receive_ts_ns,
                    t.trade_id,
                    t.price,
                    t.size,
                    t.aggressor_side,
                    publisher,
                )
                if reason:
                    rejected[reason] += 1
                else:
                    accepted += 1
        return self._summary(accepted, rejected, messages)

    @staticmethod
    def _summary(accepted: int, rejected: Sequence[int], messages: int) -> marketdata_pb2.PublishSummary:
        by_reason = {RejectReason(i): n for i, n in enumerate(rejected) if n}
        return pb.PublishSummary(
            accepted=accepted,
            rejected=sum(by_reason.values()),
            rejected_by_reason=_reject_counts(by_reason),
            messages=messages,
        )

    # --- queries -------------------------------------------------------------------------------
    async def GetSnapshot(
        self, request: marketdata_pb2.GetSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> marketdata_pb2.GetSnapshotResponse:
        depth_levels = request.depth_levels
        if depth_levels < 0:
            await _abort_bad_request(context, "depth_levels", "depth_levels must be >= 0")
        if depth_levels > self._snapshot_max_depth_levels:
            await _abort_bad_request(
                context,
                "depth_levels",
                f"depth_levels {depth_levels} is above the most a snapshot returns "
                f"({self._snapshot_max_depth_levels} per side)",
            )
        symbol_filter = await self._filter(context, request.filter)
        start_after = None
        if request.HasField("start_after"):
            await self._name_too_long(context, "start_after", request.start_after)
            start_after = (request.start_after.venue, request.start_after.name)
        response = pb.GetSnapshotResponse(stats=_stats(self._engine.stats()))
        # One page: at most max_symbols symbols and budget bytes of them (an upper bound of
        # their encoded size), the first symbol always (it is bounded by the depth cap).
        budget, room = self._snapshot_max_reply_bytes, self._snapshot_max_symbols
        last: SymbolSnapshot | None = None
        for snap in self._engine.iter_snapshots(symbol_filter, depth_levels, start_after):
            size = _snapshot_bytes_bound(snap)
            if room == 0 or (last is not None and size > budget):
                assert last is not None  # room starts above 0
                response.truncated = True
                response.next_start_after.CopyFrom(common_pb2.Symbol(venue=last.venue, name=last.symbol))
                break
            budget -= size
            room -= 1
            last = snap
            response.symbols.append(_symbol_snapshot(snap))
        return response

    async def _require_symbol(self, symbol: common_pb2.Symbol, context: grpc.aio.ServicerContext) -> None:
        if not symbol.venue or not symbol.name:
            await _abort_bad_request(context, "symbol", "symbol.venue and symbol.name are both required")
        await self._name_too_long(context, "symbol", symbol)

    async def GetBars(
        self, request: marketdata_pb2.GetBarsRequest, context: grpc.aio.ServicerContext
    ) -> marketdata_pb2.GetBarsResponse:
        await self._require_symbol(request.symbol, context)
        if request.limit < 0:
            await _abort_bad_request(context, "limit", "limit must be >= 0")
        try:
            bars = self._engine.bars(
                request.symbol.venue,
                request.symbol.name,
                request.interval_ms,
                request.limit,
                request.include_open,
            )
        except UnknownSymbolError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except ValueError as exc:
            await _abort_bad_request(context, "interval_ms", str(exc))
        return pb.GetBarsResponse(bars=[_bar(bar) for bar in bars])

    async def GetVwap(
        self, request: marketdata_pb2.GetVwapRequest, context: grpc.aio.ServicerContext
    ) -> marketdata_pb2.GetVwapResponse:
        await self._require_symbol(request.symbol, context)
        if request.window_ns < 0 or request.last_n < 0:
            await _abort_bad_request(
                context, "window_ns" if request.window_ns < 0 else "last_n", "must be >= 0"
            )
        try:
            by_time, by_count = self._engine.vwap(
                request.symbol.venue, request.symbol.name, request.window_ns, request.last_n
            )
        except UnknownSymbolError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        return pb.GetVwapResponse(by_time=_vwap(by_time), by_count=_vwap(by_count))

    # --- streams -------------------------------------------------------------------------------
    async def Subscribe(
        self, request: marketdata_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        # Yields encoded MarketUpdate messages (see _add_servicer).
        symbol_filter = await self._filter(context, request.filter)
        slot = await self._stream_slot(context)
        try:
            wakeup = asyncio.Event()
            subscriber = self._engine.subscribe(symbol_filter, wakeup.set, request.send_initial_snapshot)
            stream_sequence = 0
            try:
                while True:
                    entry = subscriber.take()
                    if entry is None:
                        wakeup.clear()
                        await wakeup.wait()
                        continue
                    stream_sequence += 1
                    if entry.frame is not None:  # logged encoded (conflated 0)
                        yield wire.single_message_of_frame(entry.frame, stream_sequence)
                    else:
                        yield wire.single_message(entry.update, entry.conflated, stream_sequence)  # type: ignore[arg-type]
            finally:
                self._engine.unsubscribe(subscriber)
        finally:
            slot.release()

    async def SubscribeBatched(
        self, request: marketdata_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        # Yields encoded MarketUpdates messages: every update queued when the previous write
        # completed (at most subscriber_batch_max_updates), so the stream goes as fast as the
        # client's flow control lets it, and the updates' encodings are shared with every stream.
        symbol_filter = await self._filter(context, request.filter)
        slot = await self._stream_slot(context)
        max_updates = self._engine.config.subscriber_batch_max_updates
        try:
            wakeup = asyncio.Event()
            subscriber = self._engine.subscribe(symbol_filter, wakeup.set, request.send_initial_snapshot)
            next_stream_sequence = 1
            try:
                while True:
                    taken = subscriber.take_encoded(
                        max_updates, wire.framed_update, wire.framed_conflated_update
                    )
                    if taken is None:
                        wakeup.clear()
                        await wakeup.wait()
                        continue
                    framed, count = taken
                    yield wire.batch_message(framed, next_stream_sequence)
                    next_stream_sequence += count
            finally:
                self._engine.unsubscribe(subscriber)
        finally:
            slot.release()

    async def StreamArbitrage(
        self, request: marketdata_pb2.StreamArbitrageRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[marketdata_pb2.ArbitrageEvent]:
        if len(request.kinds) > MAX_ARBITRAGE_KINDS:
            await _abort_bad_request(
                context, "kinds", f"{len(request.kinds)} kinds; at most {MAX_ARBITRAGE_KINDS}"
            )
        known = {int(kind) for kind in ArbitrageKind}
        unknown = next((k for k in request.kinds if k not in known), None)
        if unknown is not None:
            await _abort_bad_request(context, "kinds", f"unknown arbitrage kind {unknown}")
        kinds = [ArbitrageKind(k) for k in request.kinds]
        slot = await self._stream_slot(context)
        try:
            wakeup = asyncio.Event()
            subscription = self._engine.subscribe_arbitrage(kinds, wakeup.set, request.include_open)
            try:
                while True:
                    taken = subscription.take()
                    if taken is None:
                        wakeup.clear()
                        await wakeup.wait()
                        continue
                    event, dropped_before = taken
                    yield _arbitrage_event(event, dropped_before)
            finally:
                self._engine.unsubscribe_arbitrage(subscription)
        finally:
            slot.release()


def _add_servicer(servicer: MarketDataServicer, server: grpc.aio.Server) -> None:
    """The generated registration, except that PublishQuotes keeps each request's bytes beside its
    decoding (ReceivedQuotes), and Subscribe and SubscribeBatched send bytes as they are (no
    serializer): their messages are put together from encodings shared by all streams
    (services.marketdata.wire)."""
    handlers = {
        "PublishQuotes": grpc.stream_unary_rpc_method_handler(
            servicer.PublishQuotes,
            request_deserializer=ReceivedQuotes.FromString,
            response_serializer=pb.PublishSummary.SerializeToString,
        ),
        "PublishTrades": grpc.stream_unary_rpc_method_handler(
            servicer.PublishTrades,
            request_deserializer=pb.PublishTradesRequest.FromString,
            response_serializer=pb.PublishSummary.SerializeToString,
        ),
        "GetSnapshot": grpc.unary_unary_rpc_method_handler(
            servicer.GetSnapshot,
            request_deserializer=pb.GetSnapshotRequest.FromString,
            response_serializer=pb.GetSnapshotResponse.SerializeToString,
        ),
        "Subscribe": grpc.unary_stream_rpc_method_handler(
            servicer.Subscribe, request_deserializer=pb.SubscribeRequest.FromString, response_serializer=None
        ),
        "SubscribeBatched": grpc.unary_stream_rpc_method_handler(
            servicer.SubscribeBatched,
            request_deserializer=pb.SubscribeRequest.FromString,
            response_serializer=None,
        ),
        "GetBars": grpc.unary_unary_rpc_method_handler(
            servicer.GetBars,
            request_deserializer=pb.GetBarsRequest.FromString,
            response_serializer=pb.GetBarsResponse.SerializeToString,
        ),
        "GetVwap": grpc.unary_unary_rpc_method_handler(
            servicer.GetVwap,
            request_deserializer=pb.GetVwapRequest.FromString,
            response_serializer=pb.GetVwapResponse.SerializeToString,
        ),
        "StreamArbitrage": grpc.unary_stream_rpc_method_handler(
            servicer.StreamArbitrage,
            request_deserializer=pb.StreamArbitrageRequest.FromString,
            response_serializer=pb.ArbitrageEvent.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)  # type: ignore[attr-defined]


async def start(
    config: MarketDataConfig,
    engine: MarketDataEngine | None = None,
    *,
    security: SuiteSecurity | None = None,
    api_keys: ApiKeyVerifier | None = None,
) -> RunningServer:
    """Start the service on ``config.address`` (port 0 picks a free port) around ``engine``.

    ``security`` defaults to the "marketdata" principal's from the environment (the suite
    secret; TLS when ``HFTGATE_TLS_DIR`` is set). ``api_keys`` resolves account API keys for
    the read RPCs; without it only service tokens are accepted.
    """
    engine = engine if engine is not None else MarketDataEngine(config)
    security = security if security is not None else load_suite_security("marketdata")
    servicer = MarketDataServicer(engine, security, api_keys)
    binding = ServiceBinding(SERVICE_NAME, lambda server: _add_servicer(servicer, server))
    return await create_server(
        config.address,
        [binding],
        tls=security.server_tls,
        auth=ServiceAuthInterceptor(security.secret, api_key_methods=READ_METHODS),
        interceptors=[MarketDataAccessInterceptor(security.secret, engine.publishers, api_keys)],
    )
