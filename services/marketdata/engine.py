"""The market data engine: validates ticks, updates per-symbol state, detects arbitrage, fans out.

One engine owns all market data state and is its only writer. The gRPC servicer (and the
benchmark, and the tests) call ``on_quote`` / ``on_depth`` / ``on_trade`` tick by tick with
plain values; every call returns 0 when the tick was applied, or the ``RejectReason`` it
was rejected for. A rejected tick changes nothing but its reason's counter.

Validation order (the first failing check is the counted reason): for a (venue, symbol) not
yet tracked, the venue's length, the venue, the symbol, the symbol's length; then the
publisher's right to the venue; the level count of a depth update, numbers (NaN/inf, then
price, then size), crossing, timestamp; for a new symbol the publisher's quota of new symbols
and the service's room; then the ordering rule (services.marketdata.ordering).

Every ``on_*`` call takes the :class:`~services.marketdata.access.Publisher` it comes from;
None (benchmarks, tests, in-process callers) skips the venue and quota checks.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from hftgate.native.md_wire import MarketUpdateEncoder
from services.marketdata.access import Publisher
from services.marketdata.access import publishers as publishers_of
from services.marketdata.arbitrage import ArbitrageDetector, ArbitrageEvent, ArbitrageKind, EventType
from services.marketdata.bars import BarView
from services.marketdata.config import MarketDataConfig
from services.marketdata.depth_book import REJECT_REASON_OF_CHECK, Levels, check_levels, levels
from services.marketdata.fanout import (
    ArbitrageSubscription,
    Subscriber,
    SymbolFilter,
    SymbolUpdate,
    UpdateKind,
    UpdateLog,
)
from services.marketdata.ordering import OrderingRule
from services.marketdata.reasons import RejectReason
from services.marketdata.streams import StreamSlots
from services.marketdata.symbol_state import SymbolState
from services.marketdata.trade_ring import VwapResult

__all__ = ["IngestStats", "MarketDataEngine", "RejectReason", "SymbolSnapshot", "UnknownSymbolError"]

INF = math.inf
NS_PER_MS = 1_000_000


class UnknownSymbolError(LookupError):
    """A query named a (venue, symbol) the service has no data for."""


@dataclass(frozen=True, slots=True)
class SymbolSnapshot:
    """Everything held about one (venue, symbol), as GetSnapshot returns it."""

    venue: str
    symbol: str
    bid_price: float
    bid_size: float
    ask_price: float
    ask_size: float
    top_ts_ns: int
    bids: list[tuple[float, float]]
    asks: list[tuple[float, float]]
    last_trade: tuple[float, float, int, int, int] | None
    vwap_by_time: VwapResult
    vwap_by_count: VwapResult
    current_bars: list[BarView]
    quotes: int
    trades: int
    symbol_sequence: int


@dataclass(frozen=True, slots=True)
class IngestStats:
    accepted: int
    rejected: int
    rejected_by_reason: dict[RejectReason, int]
    subscribers: int
    arbitrage_subscribers: int


def _classify_numbers(prices: Iterable[float], sizes: Iterable[float], zero_size_ok: bool) -> int:
    prices, sizes = list(prices), list(sizes)
    if not all(math.isfinite(x) for x in (*prices, *sizes)):
        return RejectReason.NOT_FINITE
    if any(p <= 0.0 for p in prices):
        return RejectReason.INVALID_PRICE
    if any(s < 0.0 or (s == 0.0 and not zero_size_ok) for s in sizes):
        return RejectReason.INVALID_SIZE
    return 0


class MarketDataEngine:
    """All market data state, and the one writer of it."""

    def __init__(self, config: MarketDataConfig, wall_clock_ns: Callable[[], int] = time.time_ns) -> None:
        self.config = config
        self._clock = wall_clock_ns
        self._fees = config.taker_fee_bps_by_venue()
        self._max_future_ns = config.max_future_ms * NS_PER_MS
        self._vwap_window_ns = config.vwap_window_ms * NS_PER_MS
        self._states: dict[tuple[str, str], SymbolState] = {}
        self._order = OrderingRule(
            config.max_time_jump_ms * NS_PER_MS, config.max_id_jump, config.resync_after_ticks
        )
        self._admit = self._order.admit
        self._max_venue_chars = config.max_venue_chars
        self._max_symbol_chars = config.max_symbol_chars
        #: Who may publish, by principal (from the config).
        self.publishers: dict[str, Publisher] = publishers_of(config)
        #: New symbols each publisher has created.
        self.symbols_created_by: dict[str, int] = dict.fromkeys(self.publishers, 0)
        self.arbitrage = ArbitrageDetector(
            self._on_arbitrage_event,
            default_threshold_bps=config.arbitrage_min_edge_bps,
            threshold_bps_by_venue_pair=config.min_edge_bps_by_venue_pair(),
            triangular_venues=config.triangular_venues,
            quote_assets=config.quote_assets,
        )
        self._subscribers: set[Subscriber] = set()
        #: Every update of a subscribed symbol, once, for all Subscribe streams (fanout.py).
        self.updates = UpdateLog(config.subscriber_buffer_updates, self._logged_update_of)
        self._encode_state = MarketUpdateEncoder().encode_state
        self._arbitrage_subscribers: set[ArbitrageSubscription] = set()
        #: Slots of the open Subscribe and StreamArbitrage streams (the servicer takes them).
        self.streams = StreamSlots(
            per_account=config.max_streams_per_account,
            per_service_principal=config.max_streams_per_service_principal,
            total=config.max_streams,
        )
        self.accepted = 0
        # Indexed by RejectReason value (index 0 unused).
        self.rejected_by_reason = [0] * (max(RejectReason) + 1)

    # --- ingest -----------------------------------------------------------------------------
    def _reject(self, reason: int) -> int:
        self.rejected_by_reason[reason] += 1
        return reason

    def _new_symbol_names(self, venue: str, symbol: str) -> int:
        """0 when (venue, symbol) may name a new symbol, else the RejectReason."""
        if len(venue) > self._max_venue_chars:
            return RejectReason.VENUE_TOO_LONG
        if venue not in self._fees:
            return RejectReason.UNKNOWN_VENUE
        if not symbol:
            return RejectReason.MISSING_SYMBOL
        if len(symbol) > self._max_symbol_chars:
            return RejectReason.SYMBOL_TOO_LONG
        return 0

    def _state(self, venue: str, symbol: str, publisher: Publisher | None) -> SymbolState | int:
        """A new state for (venue, symbol), or SYMBOL_QUOTA_EXCEEDED / TOO_MANY_SYMBOLS."""
        if publisher is not None:
            created = self.symbols_created_by.get(publisher.principal, 0)
            if created >= publisher.symbol_quota:
                return RejectReason.SYMBOL_QUOTA_EXCEEDED
        if len(self._states) >= self.config.max_symbols:
            return RejectReason.TOO_MANY_SYMBOLS
        if publisher is not None:
            self.symbols_created_by[publisher.principal] = created + 1
        state = SymbolState(
            venue,
            symbol,
            self._fees[venue],
            self.config.depth_max_levels_per_side,
            self.config.depth_max_levels_per_update,
        )
        self._states[state.key] = state
        for subscriber in self._subscribers:
            if subscriber.filter.matches(venue, symbol):
                state.subscribers.append(subscriber)
        return state

    def on_quote(
        self,
        venue: str,
        symbol: str,
        exchange_ts_ns: int,
        receive_ts_ns: int,
        sequence: int,
        bid_price: float,
        bid_size: float,
        ask_price: float,
        ask_size: float,
        publisher: Publisher | None = None,
    ) -> int:
        """Apply a top-of-book quote; 0 or the RejectReason."""
        state = self._states.get((venue, symbol))
        if state is None and (reason := self._new_symbol_names(venue, symbol)):
            return self._reject(reason)
        if publisher is not None and venue not in publisher.venues:
            return self._reject(RejectReason.VENUE_NOT_ALLOWED)
        # One chained comparison accepts every well-formed quote (NaN fails every comparison).
        if not (0.0 < bid_price < ask_price < INF and 0.0 < bid_size < INF and 0.0 < ask_size < INF):
            reason = _classify_numbers(
                (bid_price, ask_price), (bid_size, ask_size), zero_size_ok=bid_size == ask_size == 0.0
            )
            if reason == 0 and bid_price >= ask_price:
                reason = RejectReason.CROSSED
            if reason:
                return self._reject(reason)
        now = self._clock()
        if not 0 < exchange_ts_ns <= now + self._max_future_ns:
            return self._reject(RejectReason.BAD_TIMESTAMP)
        if state is None:
            created = self._state(venue, symbol, publisher)
            if isinstance(created, int):
                return self._reject(created)
            state = created
        if (reason := self._admit(state.quote_order, exchange_ts_ns, sequence, now)) > 0:
            return self._reject(reason)
        if not state.has_quote_feed:
            state.has_quote_feed = True
            if not state.has_top:
                self._set_top(state, bid_price, bid_size, ask_price, ask_size, exchange_ts_ns)
                self.arbitrage.add_symbol(state)
        state.bid_price = bid_price
        state.bid_size = bid_size
        state.ask_price = ask_price
        state.ask_size = ask_size
        state.top_ts_ns = exchange_ts_ns
        state.quotes += 1
        state.symbol_sequence += 1
        self.accepted += 1
        if state.arbitrage_checks:
            self.arbitrage.on_top_changed(state, receive_ts_ns or self._clock())
        if state.subscribers:
            self._fan_out(state, UpdateKind.QUOTE, receive_ts_ns)
        return 0

    def _set_top(
        self, state: SymbolState, bid: float, bid_size: float, ask: float, ask_size: float, ts: int
    ) -> None:
        state.bid_price, state.bid_size, state.ask_price, state.ask_size = bid, bid_size, ask, ask_size
        state.top_ts_ns = ts

    def on_depth(
        self,
        venue: str,
        symbol: str,
        exchange_ts_ns: int,
        receive_ts_ns: int,
        sequence: int,
        is_snapshot: bool,
        bids: Sequence[tuple[float, float]] | Levels,
        asks: Sequence[tuple[float, float]] | Levels,
        publisher: Publisher | None = None,
        checked: int | None = None,
    ) -> int:
        """Apply a depth update or snapshot; 0 or the RejectReason. ``bids`` and ``asks`` are
        (price, size) pairs, or C arrays read from the bytes received (``RequestDepthLevels``,
        ``levels_from_wire``). ``checked``: what ``check_levels`` says of these very levels when
        the caller has it already (``RequestDepthLevels`` checks as it reads); they are not
        checked again."""
        state = self._states.get((venue, symbol))
        if state is None and (reason := self._new_symbol_names(venue, symbol)):
            return self._reject(reason)
        if publisher is not None and venue not in publisher.venues:
            return self._reject(RejectReason.VENUE_NOT_ALLOWED)
        if len(bids) + len(asks) > self.config.depth_max_levels_per_update:
            return self._reject(RejectReason.DEPTH_TOO_LARGE)
        # C arrays made once: checked in C, then applied in C.
        bid_levels, ask_levels = levels(bids), levels(asks)
        broken = check_levels(bid_levels, ask_levels) if checked is None else checked
        if broken:
            return self._reject(REJECT_REASON_OF_CHECK[broken])
        now = self._clock()
        if not 0 < exchange_ts_ns <= now + self._max_future_ns:
            return self._reject(RejectReason.BAD_TIMESTAMP)
        if state is None:
            created = self._state(venue, symbol, publisher)
            if isinstance(created, int):
                return self._reject(created)
            state = created
        if (reason := self._admit(state.depth_order, exchange_ts_ns, sequence, now)) > 0:
            return self._reject(reason)
        if is_snapshot:
            state.depth.clear()
        state.depth.apply_levels(bid_levels, ask_levels)
        state.depth_updates += 1
        state.quotes += 1
        state.symbol_sequence += 1
        self.accepted += 1
        if not state.has_quote_feed:
            # No top-of-book feed for this symbol: its top comes from the depth book.
            top = state.depth.top_of_book()
            if top is not None:
                had_top = state.has_top
                self._set_top(state, *top, exchange_ts_ns)
                if not had_top:
                    self.arbitrage.add_symbol(state)
                self.arbitrage.on_top_changed(state, receive_ts_ns or self._clock())
        if state.subscribers:
            self._fan_out(state, UpdateKind.QUOTE, receive_ts_ns)
        return 0

    def on_trade(
        self,
        venue: str,
        symbol: str,
        exchange_ts_ns: int,
        receive_ts_ns: int,
        trade_id: int,
        price: float,
        size: float,
        aggressor_side: int,
        publisher: Publisher | None = None,
    ) -> int:
        """Apply a trade (last trade, rolling VWAP, bars); 0 or the RejectReason."""
        state = self._states.get((venue, symbol))
        if state is None and (reason := self._new_symbol_names(venue, symbol)):
            return self._reject(reason)
        if publisher is not None and venue not in publisher.venues:
            return self._reject(RejectReason.VENUE_NOT_ALLOWED)
        if not (0.0 < price < INF and 0.0 < size < INF):
            return self._reject(_classify_numbers((price,), (size,), zero_size_ok=False))
        now = self._clock()
        if not 0 < exchange_ts_ns <= now + self._max_future_ns:
            return self._reject(RejectReason.BAD_TIMESTAMP)
        if state is None:
            created = self._state(venue, symbol, publisher)
            if isinstance(created, int):
                return self._reject(created)
            state = created
        if reason := self._admit(state.trade_order, exchange_ts_ns, trade_id, now):
            if reason > 0:
                return self._reject(reason)
            # Resynced back in time: the trade history restarts from this trade.
            state.restart_trade_history()
        ring = state.trades
        if ring is None:
            config = self.config
            state.allocate_trade_history(
                config.trade_ring_capacity, config.bar_intervals_ms, config.bar_history
            )
            ring = state.trades
            assert ring is not None
        ring.append(exchange_ts_ns, price, size)
        for series in state.bars:
            series.add_trade(exchange_ts_ns, price, size)
        state.last_trade_price = price
        state.last_trade_size = size
        state.last_trade_side = aggressor_side
        state.last_trade_ts_ns = exchange_ts_ns
        state.last_trade_id = trade_id or state.last_trade_id
        state.vwap, state.vwap_first_inside = ring.vwap_by_time_fast(
            self._vwap_window_ns, exchange_ts_ns, state.vwap_first_inside
        )
        state.trade_count += 1
        state.symbol_sequence += 1
        self.accepted += 1
        if state.subscribers:
            self._fan_out(state, UpdateKind.TRADE, receive_ts_ns)
        return 0

    # --- fan-out -----------------------------------------------------------------------------
    def _update_of(self, state: SymbolState, kind: UpdateKind, receive_ts_ns: int) -> SymbolUpdate:
        last_trade = (
            (
                state.last_trade_price,
                state.last_trade_size,
                state.last_trade_side,
                state.last_trade_ts_ns,
                state.last_trade_id,
            )
            if state.trade_count
            else None
        )
        return SymbolUpdate(
            kind,
            state.symbol_sequence,
            state.venue,
            state.symbol,
            state.bid_price,
            state.bid_size,
            state.ask_price,
            state.ask_size,
            state.top_ts_ns,
            last_trade,
            state.vwap,
            receive_ts_ns,
        )

    def _fan_out(self, state: SymbolState, kind: UpdateKind, receive_ts_ns: int) -> None:
        receive_ts_ns = receive_ts_ns or self._clock()
        log = self.updates
        if not log.readers_keep_up:  # every stream stopped reading: none will read this slot
            state.fanout_kind = kind
            state.fanout_receive_ts_ns = receive_ts_ns
            log.append_unread(state.key, state)
            return
        frame = self._encode_state(state, kind, receive_ts_ns)
        if frame is not None:
            state.fanout_kind = kind
            state.fanout_receive_ts_ns = receive_ts_ns
            log.append_encoded(state.key, state.symbol_sequence, frame, state)
            return
        # else the general path, which names what cannot be encoded
        log.append(state.key, self._update_of(state, kind, receive_ts_ns))

    def _logged_update_of(self, state: SymbolState) -> SymbolUpdate:
        """The update last logged encoded for ``state`` (UpdateLog.latest_update): the state as
        it is, since every change of a symbol that a stream follows is logged."""
        return self._update_of(state, UpdateKind(state.fanout_kind), state.fanout_receive_ts_ns)

    def subscribe(
        self, symbol_filter: SymbolFilter, notify: Callable[[], None], send_initial_snapshot: bool = False
    ) -> Subscriber:
        """A new Subscribe stream's reader; the caller must ``unsubscribe`` it when the stream ends."""
        subscriber = Subscriber(self.updates, symbol_filter, notify)
        self._subscribers.add(subscriber)
        now = self._clock()
        for key in sorted(self._states):
            state = self._states[key]
            if symbol_filter.matches(state.venue, state.symbol):
                state.subscribers.append(subscriber)
                if send_initial_snapshot:
                    subscriber.queue(key, self._update_of(state, UpdateKind.SNAPSHOT, now))
                else:
                    subscriber.skip_to(key, state.symbol_sequence)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget a Subscribe stream and everything it held."""
        self._subscribers.discard(subscriber)
        for state in self._states.values():
            if subscriber in state.subscribers:
                state.subscribers.remove(subscriber)
        subscriber.clear()

    def subscribe_arbitrage(
        self, kinds: Sequence[ArbitrageKind], notify: Callable[[], None], include_open: bool = False
    ) -> ArbitrageSubscription:
        subscription = ArbitrageSubscription(kinds, self.config.arbitrage_buffer_events, notify)
        self._arbitrage_subscribers.add(subscription)
        if include_open:
            for opportunity in list(self.arbitrage.open_opportunities.values()):
                subscription.offer(opportunity.event(EventType.OPENED))
        return subscription

    def unsubscribe_arbitrage(self, subscription: ArbitrageSubscription) -> None:
        self._arbitrage_subscribers.discard(subscription)
        subscription.clear()

    def _on_arbitrage_event(self, event: ArbitrageEvent) -> None:
        for subscription in self._arbitrage_subscribers:
            subscription.offer(event)

    # --- queries -----------------------------------------------------------------------------
    def get(self, venue: str, symbol: str) -> SymbolState:
        state = self._states.get((venue, symbol))
        if state is None:
            raise UnknownSymbolError(f"no market data for symbol {symbol!r} on venue {venue!r}")
        return state

    def symbols(
        self, symbol_filter: SymbolFilter, start_after: tuple[str, str] | None = None
    ) -> list[SymbolState]:
        """The matching symbols ordered by (venue, symbol), only those after ``start_after``."""
        keys = sorted(self._states)
        if start_after is not None:
            del keys[: bisect.bisect_right(keys, start_after)]
        return [self._states[key] for key in keys if symbol_filter.matches(*key)]

    def snapshot(self, symbol_filter: SymbolFilter, depth_levels: int = 0) -> list[SymbolSnapshot]:
        return list(self.iter_snapshots(symbol_filter, depth_levels))

    def iter_snapshots(
        self, symbol_filter: SymbolFilter, depth_levels: int = 0, start_after: tuple[str, str] | None = None
    ) -> Iterator[SymbolSnapshot]:
        """Snapshots of the matching symbols after ``start_after``, ordered by (venue, symbol),
        each built only when asked for (a reader that stops early builds no more). The reader
        must not await between items: the engine may change meanwhile."""
        for state in self.symbols(symbol_filter, start_after):
            by_time, by_count = self.vwap(state.venue, state.symbol)
            last_trade = (
                (
                    state.last_trade_price,
                    state.last_trade_size,
                    state.last_trade_side,
                    state.last_trade_ts_ns,
                    state.last_trade_id,
                )
                if state.trade_count
                else None
            )
            current_bars = [bar for series in state.bars if (bar := series.open_bar()) is not None]
            yield SymbolSnapshot(
                state.venue,
                state.symbol,
                state.bid_price,
                state.bid_size,
                state.ask_price,
                state.ask_size,
                state.top_ts_ns,
                state.depth.bids(depth_levels),
                state.depth.asks(depth_levels),
                last_trade,
                by_time,
                by_count,
                current_bars,
                state.quotes,
                state.trade_count,
                state.symbol_sequence,
            )

    def vwap(
        self, venue: str, symbol: str, window_ns: int = 0, last_n: int = 0
    ) -> tuple[VwapResult, VwapResult]:
        """(by time, by count) VWAP; 0 selects the configured default window."""
        state = self.get(venue, symbol)
        window_ns = window_ns or self._vwap_window_ns
        last_n = last_n or self.config.vwap_last_trades
        if state.trades is None:
            return (
                VwapResult(0.0, 0.0, 0, 0, 0, window_ns, 0, True),
                VwapResult(0.0, 0.0, 0, 0, 0, 0, last_n, True),
            )
        return state.trades.vwap_by_time(window_ns), state.trades.vwap_last_n(last_n)

    def bars(
        self, venue: str, symbol: str, interval_ms: int, limit: int = 0, include_open: bool = False
    ) -> list[BarView]:
        """Bars of one interval, oldest first; ValueError for an interval that is not configured."""
        if interval_ms not in self.config.bar_intervals_ms:
            raise ValueError(
                f"bar interval {interval_ms} ms is not served; configured intervals (ms): "
                f"{', '.join(map(str, sorted(self.config.bar_intervals_ms)))}"
            )
        state = self.get(venue, symbol)
        for series in state.bars:
            if series.interval_ms == interval_ms:
                return series.bars(limit, include_open)
        return []

    def stats(self) -> IngestStats:
        by_reason = {RejectReason(i): n for i, n in enumerate(self.rejected_by_reason) if n}
        return IngestStats(
            self.accepted,
            sum(by_reason.values()),
            by_reason,
            len(self._subscribers),
            len(self._arbitrage_subscribers),
        )
