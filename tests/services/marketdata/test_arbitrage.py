"""Cross-venue and triangular detection on small books built by hand, expected results worked out below."""

from __future__ import annotations

import itertools

import pytest

from services.marketdata.arbitrage import ArbitrageEvent, ArbitrageKind, EventType, TriangularCheck
from services.marketdata.config import MarketDataConfig
from services.marketdata.engine import MarketDataEngine

T0 = 1_700_000_000_000_000_000
BUY, SELL = 1, 2


class Book:
    """An engine with hand-set quotes and every arbitrage event it emitted."""

    def __init__(self, **config: object) -> None:
        self.engine = MarketDataEngine(MarketDataConfig(**config), wall_clock_ns=lambda: T0 + 10**12)  # type: ignore[arg-type]
        self.events: list[ArbitrageEvent] = []
        self.engine.arbitrage._on_event = self.events.append
        self.now = T0

    def quote(
        self, venue: str, symbol: str, bid: float, bid_size: float, ask: float, ask_size: float
    ) -> None:
        self.now += 1_000_000
        assert self.engine.on_quote(venue, symbol, self.now, self.now, 0, bid, bid_size, ask, ask_size) == 0

    def legs(self, event: ArbitrageEvent) -> list[tuple[str, int, float]]:
        return [(leg.symbol, leg.side, leg.price) for leg in event.legs]


# --- cross-venue ----------------------------------------------------------------------------------
def cross_venue_book(**config: object) -> Book:
    return Book(venue_taker_fees_bps=("venue-a=10", "venue-b=5"), **config)


def test_cross_venue_opens_once_updates_silently_and_closes_once_with_its_lifetime() -> None:
    book = cross_venue_book()
    book.quote("venue-a", "BTCUSDT", 100.00, 3.0, 100.10, 2.0)
    opened_at = book.now + 1_000_000
    # Buy on A: 100.10 * 1.001 = 100.2001 per unit. Sell on B: 100.40 * 0.9995 = 100.3498.
    book.quote("venue-b", "BTCUSDT", 100.40, 1.5, 100.50, 4.0)
    assert len(book.events) == 1
    opened = book.events[0]
    assert (opened.type, opened.kind) == (EventType.OPENED, ArbitrageKind.CROSS_VENUE)
    assert [(leg.venue, leg.side, leg.price, leg.size) for leg in opened.legs] == [
        ("venue-a", BUY, 100.10, 2.0),
        ("venue-b", SELL, 100.40, 1.5),
    ]
    assert opened.edge_bps == pytest.approx((100.3498 / 100.2001 - 1) * 1e4)  # 14.94 bps
    assert opened.executable_size == 1.5  # min(ask size on A, bid size on B)
    assert opened.expected_profit == pytest.approx(1.5 * (100.3498 - 100.2001))
    assert opened.profit_currency == "USDT"
    assert opened.opened_at_ns == opened_at

    # Still profitable after fees (100.30 * 0.9995 = 100.24985 > 100.2001): no new event.
    book.quote("venue-b", "BTCUSDT", 100.30, 1.5, 100.50, 4.0)
    assert len(book.events) == 1
    # 100.25 * 0.9995 = 100.1999 < 100.2001: gone.
    book.quote("venue-b", "BTCUSDT", 100.25, 1.5, 100.50, 4.0)
    assert len(book.events) == 2
    closed = book.events[1]
    assert (closed.type, closed.opportunity_id) == (EventType.CLOSED, opened.opportunity_id)
    assert closed.closed_at_ns == book.now
    assert closed.lifetime_ns == book.now - opened_at == 2_000_000
    assert closed.updates_while_open == 2
    assert closed.peak_edge_bps == pytest.approx(opened.edge_bps)
    assert book.engine.arbitrage.open_opportunities == {}


def test_cross_venue_fees_alone_can_remove_the_edge() -> None:
    book = cross_venue_book()
    book.quote("venue-a", "BTCUSDT", 100.00, 3.0, 100.10, 2.0)
    # Crossed by 0.10 (10 bps) but the fees cost 15 bps.
    book.quote("venue-b", "BTCUSDT", 100.20, 1.5, 100.30, 4.0)
    assert book.events == []


def test_cross_venue_pair_threshold_overrides_the_default() -> None:
    book = cross_venue_book(arbitrage_venue_pair_min_edge_bps=("venue-b/venue-a=20",))
    book.quote("venue-a", "BTCUSDT", 100.00, 3.0, 100.10, 2.0)
    book.quote("venue-b", "BTCUSDT", 100.40, 1.5, 100.50, 4.0)  # 14.94 bps < 20
    assert book.events == []
    book.quote("venue-b", "BTCUSDT", 100.50, 1.5, 100.60, 4.0)  # 100.44975 / 100.2001: 24.9 bps
    assert [e.type for e in book.events] == [EventType.OPENED]


def test_different_symbols_are_never_compared_across_venues() -> None:
    book = cross_venue_book()
    book.quote("venue-a", "BTCUSDT", 100.00, 3.0, 100.10, 2.0)
    book.quote("venue-b", "BTCUSD_PERP", 200.00, 3.0, 200.10, 2.0)
    assert book.events == []
    assert book.engine.arbitrage.cross_venue_checks == 0


# --- triangular -----------------------------------------------------------------------------------
# One triangle, no fees, with ETH/BTC mispriced against the two USDT pairs (fair 0.05):
#   BTCUSDT 60000 / 60001, ETHUSDT 3000 / 3001, ETHBTC 0.0505 / 0.0506.
# USDT -> ETH -> BTC -> USDT: buy ETH at 3001, sell it for BTC at 0.0505, sell BTC at 60000:
#   0.0505 * 60000 / 3001 = 3030 / 3001 = 1.0096634 -> an opportunity of 96.63 bps.
# USDT -> BTC -> ETH -> USDT: buy BTC at 60001, buy ETH with it at 0.0506, sell ETH at 3000:
#   3000 / (60001 * 0.0506) = 0.98813 -> none.
TRIANGLE = [
    ("BTCUSDT", 60000.0, 0.1, 60001.0, 0.2),
    ("ETHUSDT", 3000.0, 10.0, 3001.0, 2.0),
    ("ETHBTC", 0.0505, 10.0, 0.0506, 10.0),
]


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_triangle_is_found_whichever_pair_completes_it(order: tuple[int, ...]) -> None:
    book = Book(venue_taker_fees_bps=("hftgate=0",))
    for index in order:
        book.quote("hftgate", *TRIANGLE[index])
    assert book.engine.arbitrage.triangular_checks == 2  # one triangle, two directions
    assert len(book.events) == 1
    event = book.events[0]
    assert (event.type, event.kind, event.profit_currency) == (
        EventType.OPENED,
        ArbitrageKind.TRIANGULAR,
        "USDT",
    )
    assert book.legs(event) == [
        ("ETHUSDT", BUY, 3001.0),
        ("ETHBTC", SELL, 0.0505),
        ("BTCUSDT", SELL, 60000.0),
    ]
    assert event.edge_bps == pytest.approx((3030 / 3001 - 1) * 1e4)
    # Start amount limits, in USDT: leg 1 can buy 2 ETH = 6002 USDT; leg 2 can sell 10 ETH =
    # 30010 USDT; leg 3 can sell 0.1 BTC, bought with 0.1 / 0.0505 * 3001 = 5942.57 USDT.
    assert event.executable_size == pytest.approx(0.1 / 0.0505 * 3001)
    # Profit: 5942.57 * 29 / 3001 = 0.1 * 29 / 0.0505 = 57.43 USDT.
    assert event.expected_profit == pytest.approx(0.1 * 29 / 0.0505)


def test_triangle_with_taker_fees_and_its_closing() -> None:
    book = Book(venue_taker_fees_bps=("binance-spot=10",))
    for pair in TRIANGLE:
        book.quote("binance-spot", *pair)
    opened_at = book.now
    # Three legs at 10 bps: 1.0096634 * 0.999**3 = 1.0066371 -> 66.37 bps.
    assert [e.type for e in book.events] == [EventType.OPENED]
    assert book.events[0].edge_bps == pytest.approx((3030 / 3001 * 0.999**3 - 1) * 1e4)
    # ETH/BTC back to 0.0500 / 0.0501: 0.05 * 60000 / 3001 = 0.99967 before fees -> closed.
    book.quote("binance-spot", "ETHBTC", 0.0500, 10.0, 0.0501, 10.0)
    assert [e.type for e in book.events] == [EventType.OPENED, EventType.CLOSED]
    assert book.events[1].lifetime_ns == book.now - opened_at


def test_fees_can_close_a_thin_triangle() -> None:
    # 1.0096634 * (1 - f)**3 <= 1 for f >= 32.1 bps.
    book = Book(venue_taker_fees_bps=("binance-spot=33",))
    for pair in TRIANGLE:
        book.quote("binance-spot", *pair)
    assert book.events == []


# Four currencies, six pairs, no fees; every pair priced near fair except BNB/ETH (fair 0.2),
# where BNB is rich: bid 0.2040 / ask 0.2045.
#   BTCUSDT 60000 / 60010   ETHUSDT 3000 / 3001     BNBUSDT 600 / 600.1
#   ETHBTC 0.04995 / 0.05005   BNBBTC 0.00999 / 0.01001   BNBETH 0.2040 / 0.2045
# The 4 triangles give 8 cycles (start currency: USDT when present, else BTC):
#   USDT>BTC>ETH>USDT  3000 / (60010 * 0.05005)     = 0.99883
#   USDT>ETH>BTC>USDT  0.04995 * 60000 / 3001       = 0.99867
#   USDT>BTC>BNB>USDT  600 / (60010 * 0.01001)      = 0.99883
#   USDT>BNB>BTC>USDT  0.00999 * 60000 / 600.1      = 0.99883
#   USDT>BNB>ETH>USDT  0.2040 * 3000 / 600.1        = 1.01983  <- opportunity
#   USDT>ETH>BNB>USDT  600 / (3001 * 0.2045)        = 0.97767
#   BTC>BNB>ETH>BTC    0.2040 * 0.04995 / 0.01001   = 1.01796  <- opportunity
#   BTC>ETH>BNB>BTC    0.00999 / (0.05005 * 0.2045) = 0.97605
FOUR_CURRENCIES = [
    ("BTCUSDT", 60000.0, 1.0, 60010.0, 1.0),
    ("ETHUSDT", 3000.0, 10.0, 3001.0, 10.0),
    ("BNBUSDT", 600.0, 50.0, 600.1, 50.0),
    ("ETHBTC", 0.04995, 10.0, 0.05005, 10.0),
    ("BNBBTC", 0.00999, 50.0, 0.01001, 50.0),
    ("BNBETH", 0.2040, 50.0, 0.2045, 50.0),
]


def test_four_currency_graph_reports_exactly_the_two_cycles_worked_out_by_hand() -> None:
    book = Book(venue_taker_fees_bps=("hftgate=0",))
    for pair in FOUR_CURRENCIES:
        book.quote("hftgate", *pair)
    assert book.engine.arbitrage.triangular_checks == 8
    found = {(e.profit_currency, tuple(book.legs(e))): e.edge_bps for e in book.events}
    assert found == {
        (
            "USDT",
            (("BNBUSDT", BUY, 600.1), ("BNBETH", SELL, 0.2040), ("ETHUSDT", SELL, 3000.0)),
        ): pytest.approx((0.2040 * 3000 / 600.1 - 1) * 1e4),
        (
            "BTC",
            (("BNBBTC", BUY, 0.01001), ("BNBETH", SELL, 0.2040), ("ETHBTC", SELL, 0.04995)),
        ): pytest.approx((0.2040 * 0.04995 / 0.01001 - 1) * 1e4),
    }
    assert all(e.type == EventType.OPENED for e in book.events)


def test_an_update_re_evaluates_only_the_cycles_through_its_pair() -> None:
    book = Book(venue_taker_fees_bps=("hftgate=0",))
    for pair in FOUR_CURRENCIES:
        book.quote("hftgate", *pair)
    # Each pair is an edge of two of the four triangles: 4 of the 8 cycles.
    for symbol, *_ in FOUR_CURRENCIES:
        checks = book.engine.get("hftgate", symbol).arbitrage_checks
        assert len(checks) == 4
        assert all(isinstance(c, TriangularCheck) for c in checks)
        assert all(book.engine.get("hftgate", symbol) in c.states for c in checks)


def test_triangles_stay_within_one_spot_venue() -> None:
    book = Book(venue_taker_fees_bps=("hftgate=0", "binance-spot=0", "binance-usdm=0"))
    book.quote("hftgate", *TRIANGLE[0])
    book.quote("binance-spot", *TRIANGLE[1])
    book.quote("hftgate", *TRIANGLE[2])
    # Perpetual futures are not currency conversions: binance-usdm is not a triangular venue.
    for pair in TRIANGLE:
        book.quote("binance-usdm", *pair)
    assert book.engine.arbitrage.triangular_checks == 0
    assert [e for e in book.events if e.kind == ArbitrageKind.TRIANGULAR] == []
