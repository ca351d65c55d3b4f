"""gRPC wiring of the market data service: proto <-> domain translation, nothing else.

Every RPC runs on the server's one asyncio event loop, as does the engine, so the
engine has exactly one writer and needs no locks. Publish streams process each message
synchronously (a message of a thousand ticks is one uninterrupted run of the engine);
Subscribe and StreamArbitrage writers await between messages, so a slow client only
ever delays its own stream.

Who may call what is decided before a servicer method runs (hftgate.security's interceptor,
then services.marketdata.auth's); a Publish method only looks up its caller's
:class:`~services.marketdata.access.Publisher` to hand to the engine with every tick.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from hftgate.grpcserver import RunningServer, ServiceBinding, create_server
from hftgate.security import ServiceAuthInterceptor, SuiteSecurity, load_suite_security, principal_of
from hftgate.v1 import common_pb2, marketdata_pb2, marketdata_pb2_grpc
from services.marketdata.access import ApiKeyVerifier, Publisher
from services.marketdata.arbitrage import ArbitrageEvent, ArbitrageKind
from services.marketdata.auth import READ_METHODS, SERVICE_NAME, MarketDataAccessInterceptor
from services.marketdata.bars import BarView
from services.marketdata.config import MarketDataConfig
from services.marketdata.engine import IngestStats, MarketDataEngine, RejectReason, UnknownSymbolError
from services.marketdata.fanout import QueuedUpdate, SymbolFilter
from services.marketdata.trade_ring import VwapResult

log = logging.getLogger(__name__)

pb = marketdata_pb2
#: Most entries in StreamArbitrageRequest.kinds (there are two kinds).
MAX_ARBITRAGE_KINDS = 16


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


def _market_update(entry: QueuedUpdate, stream_sequence: int) -> marketdata_pb2.MarketUpdate:
    u = entry.update
    return pb.MarketUpdate(
        stream_sequence=stream_sequence,
        symbol_sequence=u.symbol_sequence,
        conflated=entry.conflated,
        kind=_enum(u.kind),
        symbol=common_pb2.Symbol(venue=u.venue, name=u.symbol),
        top=pb.TopOfBook(
            bid_price=u.bid_price,
            bid_size=u.bid_size,
            ask_price=u.ask_price,
            ask_size=u.ask_size,
            exchange_ts_ns=u.top_ts_ns,
        ),
        last_trade=_last_trade(u.last_trade),
        vwap=u.vwap,
        receive_ts_ns=u.receive_ts_ns,
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


async def _abort_bad_request(context: grpc.aio.ServicerContext, field: str, description: str) -> None:
    """INVALID_ARGUMENT with a google.rpc.BadRequest naming the field, so a client can fix it."""
    detail = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=description)]
    )
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=description)
    status.details.add().Pack(detail)
    # grpc-stubs lacks abort_with_status on the aio context; grpcio has it.
    await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]


class MarketDataServicer(marketdata_pb2_grpc.MarketDataServiceServicer):
    """Translates MarketDataService calls to the engine."""

    def __init__(self, engine: MarketDataEngine, security: SuiteSecurity) -> None:
        self._engine = engine
        self._secret = security.secret
        config = engine.config
        self._max_venue_chars = config.max_venue_chars
        self._max_symbol_chars = config.max_symbol_chars
        self._max_filter_symbols = config.max_filter_symbols

    async def _publisher(self, context: grpc.aio.ServicerContext) -> Publisher:
        """The calling publisher (the access interceptor admitted only publishers)."""
        publisher = self._engine.publishers.get(principal_of(context, self._secret) or "")
        if publisher is None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, "only a publisher may publish market data")
        assert publisher is not None
        return publisher

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
        request_iterator: AsyncIterator[marketdata_pb2.PublishQuotesRequest],
        context: grpc.aio.ServicerContext,
    ) -> marketdata_pb2.PublishSummary:
        publisher = await self._publisher(context)
        on_quote, on_depth = self._engine.on_quote, self._engine.on_depth
        rejected = [0] * (max(RejectReason) + 1)
        accepted = messages = 0
        async for request in request_iterator:
            messages += 1
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
            for d in request.depth_updates:
                reason = on_depth(
                    d.venue,
                    d.symbol,
                    d.exchange_ts_ns,
                    d.receive_ts_ns,
                    d.sequence,
                    d.is_snapshot,
                    [(level.price, level.size) for level in d.bids],
                    [(level.price, level.size) for level in d.asks],
                    publisher,
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
        if request.depth_levels < 0:
            await _abort_bad_request(context, "depth_levels", "depth_levels must be >= 0")
        symbol_filter = await self._filter(context, request.filter)
        response = pb.GetSnapshotResponse(stats=_stats(self._engine.stats()))
        for snap in self._engine.snapshot(symbol_filter, request.depth_levels):
            response.symbols.append(
                pb.SymbolSnapshot(
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
            )
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
    ) -> AsyncIterator[marketdata_pb2.MarketUpdate]:
        symbol_filter = await self._filter(context, request.filter)
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
                yield _market_update(entry, stream_sequence)
        finally:
            self._engine.unsubscribe(subscriber)

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
    servicer = MarketDataServicer(engine, security)
    binding = ServiceBinding(
        SERVICE_NAME,
        lambda server: marketdata_pb2_grpc.add_MarketDataServiceServicer_to_server(servicer, server),
    )
    return await create_server(
        config.address,
        [binding],
        tls=security.server_tls,
        auth=ServiceAuthInterceptor(security.secret, api_key_methods=READ_METHODS),
        interceptors=[MarketDataAccessInterceptor(security.secret, engine.publishers, api_keys)],
    )
