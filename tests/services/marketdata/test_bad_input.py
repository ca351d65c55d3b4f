"""Bad ticks are rejected one by one with a counted reason and leave the state as it was."""

from __future__ import annotations

import math

import pytest

from services.marketdata.config import MarketDataConfig
from services.marketdata.engine import MarketDataEngine, RejectReason
from services.marketdata.fanout import SymbolFilter

NOW = 1_700_000_000_000_000_000
NAN, INF = math.nan, math.inf


def engine(**config: object) -> MarketDataEngine:
    return MarketDataEngine(MarketDataConfig(**config), wall_clock_ns=lambda: NOW)  # type: ignore[arg-type]


def good_quote(e: MarketDataEngine, ts: int = NOW - 10, seq: int = 5) -> int:
    return e.on_quote("binance-spot", "BTCUSDT", ts, ts, seq, 100.0, 1.0, 100.5, 2.0)


QUOTE_CASES = [
    (("nasdaq", "BTCUSDT", NOW, 0, 0, 100.0, 1.0, 101.0, 1.0), RejectReason.UNKNOWN_VENUE),
    (("binance-spot", "", NOW, 0, 0, 100.0, 1.0, 101.0, 1.0), RejectReason.MISSING_SYMBOL),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, NAN, 1.0, 101.0, 1.0), RejectReason.NOT_FINITE),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, 100.0, 1.0, INF, 1.0), RejectReason.NOT_FINITE),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, 100.0, -INF, 101.0, 1.0), RejectReason.NOT_FINITE),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, 100.0, 1.0, 101.0, NAN), RejectReason.NOT_FINITE),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, 0.0, 1.0, 101.0, 1.0), RejectReason.INVALID_PRICE),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, -100.0, 1.0, 101.0, 1.0), RejectReason.INVALID_PRICE),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, 100.0, 0.0, 101.0, 1.0), RejectReason.INVALID_SIZE),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, 100.0, 1.0, 101.0, -1.0), RejectReason.INVALID_SIZE),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, 101.0, 1.0, 101.0, 1.0), RejectReason.CROSSED),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, 102.0, 1.0, 101.0, 1.0), RejectReason.CROSSED),
    (("binance-spot", "BTCUSDT", NOW + 6 * 10**9, 0, 0, 100.0, 1.0, 101.0, 1.0), RejectReason.BAD_TIMESTAMP),
    (("binance-spot", "BTCUSDT", 0, 0, 0, 100.0, 1.0, 101.0, 1.0), RejectReason.BAD_TIMESTAMP),
    (("binance-spot", "BTCUSDT", -5, 0, 0, 100.0, 1.0, 101.0, 1.0), RejectReason.BAD_TIMESTAMP),
]


@pytest.mark.parametrize(("quote", "reason"), QUOTE_CASES)
def test_bad_quote_is_rejected_with_its_reason_and_changes_nothing(
    quote: tuple, reason: RejectReason
) -> None:  # type: ignore[type-arg]
    e = engine()
    assert good_quote(e) == 0
    state = e.get("binance-spot", "BTCUSDT")
    before = (state.bid_price, state.bid_size, state.ask_price, state.ask_size, state.symbol_sequence)
    assert e.on_quote(*quote) == reason
    assert (state.bid_price, state.bid_size, state.ask_price, state.ask_size, state.symbol_sequence) == before
    stats = e.stats()
    assert (stats.accepted, stats.rejected, stats.rejected_by_reason) == (1, 1, {reason: 1})
    # An unknown venue or a missing symbol never creates state.
    assert [s.key for s in e.symbols(SymbolFilter())] == [("binance-spot", "BTCUSDT")]


def test_indicative_quote_without_sizes_is_accepted() -> None:
    e = engine()
    assert e.on_quote("truefx", "USDJPY", NOW, NOW, 0, 86.655, 0.0, 86.728, 0.0) == 0


def test_duplicate_and_out_of_order_quotes_are_rejected() -> None:
    e = engine()
    assert good_quote(e, ts=NOW - 10, seq=5) == 0
    assert good_quote(e, ts=NOW - 10, seq=5) == RejectReason.DUPLICATE
    assert good_quote(e, ts=NOW - 10, seq=4) == RejectReason.DUPLICATE
    assert good_quote(e, ts=NOW - 20, seq=6) == RejectReason.OUT_OF_ORDER
    assert good_quote(e, ts=NOW - 10, seq=6) == 0  # same timestamp is fine
    assert e.stats().rejected_by_reason == {RejectReason.DUPLICATE: 2, RejectReason.OUT_OF_ORDER: 1}


TRADE_CASES = [
    (("nasdaq", "BTCUSDT", NOW, 0, 0, 100.0, 1.0, 1), RejectReason.UNKNOWN_VENUE),
    (("binance-spot", "", NOW, 0, 0, 100.0, 1.0, 1), RejectReason.MISSING_SYMBOL),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, NAN, 1.0, 1), RejectReason.NOT_FINITE),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, 100.0, INF, 1), RejectReason.NOT_FINITE),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, -1.0, 1.0, 1), RejectReason.INVALID_PRICE),
    (("binance-spot", "BTCUSDT", NOW, 0, 0, 100.0, 0.0, 1), RejectReason.INVALID_SIZE),
    (("binance-spot", "BTCUSDT", NOW + 3600 * 10**9, 0, 0, 100.0, 1.0, 1), RejectReason.BAD_TIMESTAMP),
    (("binance-spot", "BTCUSDT", NOW, 0, 7, 100.0, 1.0, 1), RejectReason.DUPLICATE),
    (("binance-spot", "BTCUSDT", NOW - 10**9, 0, 0, 100.0, 1.0, 1), RejectReason.OUT_OF_ORDER),
]


@pytest.mark.parametrize(("trade", "reason"), TRADE_CASES)
def test_bad_trade_is_rejected_and_leaves_vwap_and_bars_alone(trade: tuple, reason: RejectReason) -> None:  # type: ignore[type-arg]
    e = engine()
    assert e.on_trade("binance-spot", "BTCUSDT", NOW - 100, NOW, 7, 100.0, 2.0, 1) == 0
    state = e.get("binance-spot", "BTCUSDT")
    bars_before = [series.bars(include_open=True) for series in state.bars]
    assert e.on_trade(*trade) == reason
    assert [series.bars(include_open=True) for series in state.bars] == bars_before
    assert (state.vwap, state.trade_count, state.last_trade_price) == (100.0, 1, 100.0)
    assert e.stats().rejected_by_reason == {reason: 1}


DEPTH_CASES = [
    (dict(bids=[(100.0, NAN)]), RejectReason.NOT_FINITE),
    (dict(asks=[(INF, 1.0)]), RejectReason.NOT_FINITE),
    (dict(bids=[(0.0, 1.0)]), RejectReason.INVALID_PRICE),
    (dict(bids=[(100.0, -1.0)]), RejectReason.INVALID_SIZE),
    (dict(bids=[(101.0, 1.0)], asks=[(100.5, 1.0)]), RejectReason.CROSSED),
    (dict(bids=[(100.0 - i * 0.01, 1.0) for i in range(30)]), RejectReason.DEPTH_TOO_LARGE),
]


@pytest.mark.parametrize(("levels", "reason"), DEPTH_CASES)
def test_bad_depth_update_is_rejected_whole(levels: dict, reason: RejectReason) -> None:  # type: ignore[type-arg]
    e = engine(depth_max_levels_per_update=20)
    assert e.on_depth("bybit", "XRPUSDT", NOW, NOW, 1, True, [(99.0, 1.0)], [(101.0, 1.0)]) == 0
    book = e.get("bybit", "XRPUSDT").depth
    assert (
        e.on_depth("bybit", "XRPUSDT", NOW, NOW, 2, False, levels.get("bids", []), levels.get("asks", []))
        == reason
    )
    assert (book.bids(10), book.asks(10)) == ([(99.0, 1.0)], [(101.0, 1.0)])


def test_too_many_symbols_are_refused_but_known_ones_still_update() -> None:
    e = engine(max_symbols=2)
    assert e.on_trade("binance-spot", "AAAUSDT", NOW, 0, 0, 1.0, 1.0, 0) == 0
    assert e.on_trade("binance-spot", "BBBUSDT", NOW, 0, 0, 1.0, 1.0, 0) == 0
    assert e.on_trade("binance-spot", "CCCUSDT", NOW, 0, 0, 1.0, 1.0, 0) == RejectReason.TOO_MANY_SYMBOLS
    assert e.on_trade("binance-spot", "AAAUSDT", NOW, 0, 0, 2.0, 1.0, 0) == 0
