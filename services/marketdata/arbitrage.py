"""Arbitrage detection on every top-of-book change: cross-venue and triangular.

Each possible opportunity is a *check* object linked to the symbols it trades:
  * cross-venue, one per ordered pair of venues quoting the same symbol: buy at one
    venue's ask, sell at the other's bid;
  * triangular, one per direction of every currency triangle on one venue: three
    conversions (sell a base at the bid, or buy it at the ask) back to the start.
A check is created once, when the last of its symbols gets its first quote, and linked
to each of its symbols. A quote then re-evaluates only the checks its symbol is part
of: the work per tick is proportional to the cycles through that pair, never a scan of
the whole currency graph.

A check's ``ratio`` is what one unit spent returns after every leg's taker fee
(``bid * (1 - fee_sell) / (ask * (1 + fee_buy))`` for cross-venue, the product of the
three conversion rates for a triangle). It is an opportunity while ``ratio`` exceeds
``1 + threshold_bps / 10^4``; the threshold comes from the venue pair (or the venue,
for a triangle) or the default. An opportunity emits one OPENED event when it appears
and one CLOSED event, with its lifetime, when it goes; ticks in between update only
its counters.

Times are receive times (the clock shared across venues), in ns.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from services.marketdata.currency_pairs import split_pair
from services.marketdata.symbol_state import SymbolState

BPS = 1e-4
SIDE_BUY, SIDE_SELL = 1, 2  # common.proto Side values


class ArbitrageKind(IntEnum):
    """The proto's ArbitrageKind values."""

    CROSS_VENUE = 1
    TRIANGULAR = 2


class EventType(IntEnum):
    """The proto's ArbitrageEventType values."""

    OPENED = 1
    CLOSED = 2


@dataclass(frozen=True, slots=True)
class Leg:
    """One order of an opportunity, priced at the top of book that opened it."""

    venue: str
    symbol: str
    side: int  # SIDE_BUY takes the ask, SIDE_SELL hits the bid
    price: float
    size: float
    taker_fee_bps: float


@dataclass(frozen=True, slots=True)
class ArbitrageEvent:
    """An opportunity opening or closing (see the proto message of the same name)."""

    type: EventType
    kind: ArbitrageKind
    opportunity_id: int
    legs: tuple[Leg, ...]
    edge_bps: float
    executable_size: float
    expected_profit: float
    profit_currency: str
    opened_at_ns: int
    closed_at_ns: int
    lifetime_ns: int
    updates_while_open: int
    peak_edge_bps: float


class Opportunity:
    """An open opportunity; mutable while it lasts, frozen into events."""

    __slots__ = (
        "edge_bps",
        "executable_size",
        "expected_profit",
        "kind",
        "legs",
        "opened_at_ns",
        "opportunity_id",
        "peak_edge_bps",
        "profit_currency",
        "updates_while_open",
    )

    def __init__(
        self,
        opportunity_id: int,
        kind: ArbitrageKind,
        legs: tuple[Leg, ...],
        edge_bps: float,
        executable_size: float,
        expected_profit: float,
        profit_currency: str,
        opened_at_ns: int,
    ) -> None:
        self.opportunity_id = opportunity_id
        self.kind = kind
        self.legs = legs
        self.edge_bps = edge_bps
        self.executable_size = executable_size
        self.expected_profit = expected_profit
        self.profit_currency = profit_currency
        self.opened_at_ns = opened_at_ns
        self.peak_edge_bps = edge_bps
        self.updates_while_open = 1

    def event(self, event_type: EventType, closed_at_ns: int = 0) -> ArbitrageEvent:
        lifetime = closed_at_ns - self.opened_at_ns if closed_at_ns else 0
        return ArbitrageEvent(
            event_type,
            self.kind,
            self.opportunity_id,
            self.legs,
            self.edge_bps,
            self.executable_size,
            self.expected_profit,
            self.profit_currency,
            self.opened_at_ns,
            closed_at_ns,
            lifetime,
            self.updates_while_open,
            self.peak_edge_bps,
        )


class CrossVenueCheck:
    """Buy ``buy.symbol`` at ``buy``'s ask, sell it at ``sell``'s bid."""

    __slots__ = ("buy", "buy_cost", "open_ratio", "opportunity", "profit_currency", "sell", "sell_keep")

    def __init__(
        self, buy: SymbolState, sell: SymbolState, threshold_bps: float, profit_currency: str
    ) -> None:
        self.buy = buy
        self.sell = sell
        self.buy_cost = 1.0 + buy.taker_fee_bps * BPS
        self.sell_keep = 1.0 - sell.taker_fee_bps * BPS
        self.open_ratio = 1.0 + threshold_bps * BPS
        self.profit_currency = profit_currency
        self.opportunity: Opportunity | None = None

    def evaluate(self, now_ns: int, detector: ArbitrageDetector) -> None:
        ask = self.buy.ask_price
        ratio = self.sell.bid_price * self.sell_keep / (ask * self.buy_cost) if ask > 0.0 else 0.0
        opportunity = self.opportunity
        if ratio > self.open_ratio:
            if opportunity is None:
                self.opportunity = detector.open(self._open(ratio, now_ns, detector.next_id()))
            else:
                opportunity.updates_while_open += 1
                edge = (ratio - 1.0) / BPS
                if edge > opportunity.peak_edge_bps:
                    opportunity.peak_edge_bps = edge
        elif opportunity is not None:
            self.opportunity = None
            detector.close(opportunity, now_ns)

    def _open(self, ratio: float, now_ns: int, opportunity_id: int) -> Opportunity:
        buy, sell = self.buy, self.sell
        size = min(buy.ask_size, sell.bid_size)
        profit_per_unit = sell.bid_price * self.sell_keep - buy.ask_price * self.buy_cost
        legs = (
            Leg(buy.venue, buy.symbol, SIDE_BUY, buy.ask_price, buy.ask_size, buy.taker_fee_bps),
            Leg(sell.venue, sell.symbol, SIDE_SELL, sell.bid_price, sell.bid_size, sell.taker_fee_bps),
        )
        return Opportunity(
            opportunity_id,
            ArbitrageKind.CROSS_VENUE,
            legs,
            (ratio - 1.0) / BPS,
            size,
            size * profit_per_unit,
            self.profit_currency,
            now_ns,
        )


class TriangularCheck:
    """Three conversions on one venue: start currency -> X -> Y -> start currency.

    Each leg either sells its pair's base at the bid (rate ``bid * (1 - fee)``) or buys
    the base with the quote currency at the ask (rate ``(1 - fee) / ask``).
    """

    __slots__ = ("currencies", "keeps", "open_ratio", "opportunity", "sells_base", "states")

    def __init__(
        self,
        currencies: tuple[str, str, str],
        states: tuple[SymbolState, SymbolState, SymbolState],
        sells_base: tuple[bool, bool, bool],
        threshold_bps: float,
    ) -> None:
        self.currencies = currencies
        self.states = states
        self.sells_base = sells_base
        self.keeps = tuple(1.0 - s.taker_fee_bps * BPS for s in states)
        self.open_ratio = 1.0 + threshold_bps * BPS
        self.opportunity: Opportunity | None = None

    def rates(self) -> tuple[float, float, float]:
        rates = []
        for state, sells, keep in zip(self.states, self.sells_base, self.keeps, strict=True):
            if sells:
                rates.append(state.bid_price * keep)
            else:
                ask = state.ask_price
                rates.append(keep / ask if ask > 0.0 else 0.0)
        return rates[0], rates[1], rates[2]

    def evaluate(self, now_ns: int, detector: ArbitrageDetector) -> None:
        r1, r2, r3 = self.rates()
        ratio = r1 * r2 * r3
        opportunity = self.opportunity
        if ratio > self.open_ratio:
            if opportunity is None:
                self.opportunity = detector.open(self._open(ratio, (r1, r2, r3), now_ns, detector.next_id()))
            else:
                opportunity.updates_while_open += 1
                edge = (ratio - 1.0) / BPS
                if edge > opportunity.peak_edge_bps:
                    opportunity.peak_edge_bps = edge
        elif opportunity is not None:
            self.opportunity = None
            detector.close(opportunity, now_ns)

    def _open(
        self, ratio: float, rates: tuple[float, float, float], now_ns: int, opportunity_id: int
    ) -> Opportunity:
        legs = []
        # The most of the start currency each leg can take, expressed in that leg's input currency.
        input_caps = []
        for state, sells in zip(self.states, self.sells_base, strict=True):
            if sells:
                legs.append(
                    Leg(
                        state.venue,
                        state.symbol,
                        SIDE_SELL,
                        state.bid_price,
                        state.bid_size,
                        state.taker_fee_bps,
                    )
                )
                input_caps.append(state.bid_size)
            else:
                legs.append(
                    Leg(
                        state.venue,
                        state.symbol,
                        SIDE_BUY,
                        state.ask_price,
                        state.ask_size,
                        state.taker_fee_bps,
                    )
                )
                input_caps.append(state.ask_size * state.ask_price)
        r1, r2, _ = rates
        start_amount = min(input_caps[0], input_caps[1] / r1, input_caps[2] / (r1 * r2))
        return Opportunity(
            opportunity_id,
            ArbitrageKind.TRIANGULAR,
            tuple(legs),
            (ratio - 1.0) / BPS,
            start_amount,
            start_amount * (ratio - 1.0),
            self.currencies[0],
            now_ns,
        )


class ArbitrageDetector:
    """Owns every check and every open opportunity; single writer (the engine)."""

    def __init__(
        self,
        on_event: Callable[[ArbitrageEvent], None],
        *,
        default_threshold_bps: float,
        threshold_bps_by_venue_pair: dict[frozenset[str], float],
        triangular_venues: tuple[str, ...],
        quote_assets: tuple[str, ...],
    ) -> None:
        self._on_event = on_event
        self._default_threshold_bps = default_threshold_bps
        self._thresholds = threshold_bps_by_venue_pair
        self._triangular_venues = frozenset(triangular_venues)
        self._quote_assets = quote_assets
        self._start_preference = {currency: rank for rank, currency in enumerate(quote_assets)}
        # Cross-venue: the symbols quoted so far, per symbol name.
        self._venues_by_symbol: dict[str, list[SymbolState]] = {}
        # Triangular, per venue: currency -> neighbour currency -> pair symbols between them.
        self._graphs: dict[str, dict[str, dict[str, list[SymbolState]]]] = {}
        self._pair_of: dict[tuple[str, str], tuple[str, str]] = {}
        self._next_id = 0
        self.open_opportunities: dict[int, Opportunity] = {}
        self.opened = 0
        self.closed = 0
        self.cross_venue_checks = 0
        self.triangular_checks = 0

    # --- events ---------------------------------------------------------------------
    def next_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def open(self, opportunity: Opportunity) -> Opportunity:
        self.open_opportunities[opportunity.opportunity_id] = opportunity
        self.opened += 1
        self._on_event(opportunity.event(EventType.OPENED))
        return opportunity

    def close(self, opportunity: Opportunity, now_ns: int) -> None:
        del self.open_opportunities[opportunity.opportunity_id]
        self.closed += 1
        self._on_event(opportunity.event(EventType.CLOSED, now_ns))

    # --- the hot path -----------------------------------------------------------------
    def on_top_changed(self, state: SymbolState, now_ns: int) -> None:
        """Re-evaluate every check ``state`` is a leg of (its top of book just changed)."""
        for check in state.arbitrage_checks:
            check.evaluate(now_ns, self)

    # --- wiring new symbols -------------------------------------------------------------
    def threshold_bps(self, venue_a: str, venue_b: str) -> float:
        return self._thresholds.get(frozenset((venue_a, venue_b)), self._default_threshold_bps)

    def add_symbol(self, state: SymbolState) -> None:
        """Create the checks ``state`` completes; call once, when it gets its first top of book."""
        pair = split_pair(state.symbol, self._quote_assets)
        profit_currency = pair[1] if pair else ""
        others = self._venues_by_symbol.setdefault(state.symbol, [])
        for other in others:
            threshold = self.threshold_bps(state.venue, other.venue)
            for buy, sell in ((state, other), (other, state)):
                check = CrossVenueCheck(buy, sell, threshold, profit_currency)
                state.arbitrage_checks.append(check)
                other.arbitrage_checks.append(check)
                self.cross_venue_checks += 1
        others.append(state)
        if pair is not None and state.venue in self._triangular_venues:
            self._add_to_graph(state, pair)

    def _add_to_graph(self, state: SymbolState, pair: tuple[str, str]) -> None:
        base, quote = pair
        self._pair_of[state.key] = pair
        graph = self._graphs.setdefault(state.venue, {})
        base_links = graph.setdefault(base, {})
        quote_links = graph.setdefault(quote, {})
        threshold = self.threshold_bps(state.venue, state.venue)
        for third in base_links.keys() & quote_links.keys():
            if third in (base, quote):
                continue
            for base_third, quote_third in itertools.product(base_links[third], quote_links[third]):
                self._add_triangle((base, quote, third), (state, quote_third, base_third), threshold)
        base_links.setdefault(quote, []).append(state)
        quote_links.setdefault(base, []).append(state)

    def _add_triangle(
        self,
        currencies: tuple[str, str, str],
        hops: tuple[SymbolState, SymbolState, SymbolState],
        threshold_bps: float,
    ) -> None:
        """Both directions of the triangle a->b->c->a whose hops a->b, b->c, c->a use ``hops``."""
        a, b, c = currencies
        forward = [(a, b, hops[0]), (b, c, hops[1]), (c, a, hops[2])]
        backward = [(a, c, hops[2]), (c, b, hops[1]), (b, a, hops[0])]
        start = min(
            currencies, key=lambda cur: (self._start_preference.get(cur, len(self._start_preference)), cur)
        )
        for cycle in (forward, backward):
            shift = [hop[0] for hop in cycle].index(start)
            cycle = cycle[shift:] + cycle[:shift]
            states = (cycle[0][2], cycle[1][2], cycle[2][2])
            sells = tuple(self._pair_of[s.key][0] == source for source, _, s in cycle)
            check = TriangularCheck(
                (cycle[0][0], cycle[1][0], cycle[2][0]),
                states,
                (sells[0], sells[1], sells[2]),
                threshold_bps,
            )
            for state in set(states):
                state.arbitrage_checks.append(check)
            self.triangular_checks += 1
