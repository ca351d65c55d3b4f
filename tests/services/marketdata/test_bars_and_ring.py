"""Bar rolling, the duplicate/out-of-order rule and the double-mapped trade ring."""

from __future__ import annotations

import numpy as np
import pytest

from services.marketdata.bars import BarSeries
from services.marketdata.config import MarketDataConfig
from services.marketdata.engine import MarketDataEngine, RejectReason
from services.marketdata.trade_ring import TradeRing

S = 1_000_000_000
T0 = 1_700_000_000 * S  # a whole minute


def test_bar_rolls_when_a_trade_of_a_later_interval_arrives_and_skips_empty_intervals() -> None:
    series = BarSeries(interval_ms=1_000, history=10)
    series.add_trade(T0 + 100, 10.0, 1.0)
    series.add_trade(T0 + 200, 12.0, 1.0)
    series.add_trade(T0 + 300, 9.0, 2.0)
    series.add_trade(T0 + 999_999_999, 11.0, 1.0)
    series.add_trade(T0 + 3 * S, 20.0, 4.0)  # seconds 1 and 2 had no trade
    bars = series.bars(include_open=True)
    assert [(b.start_ns, b.open, b.high, b.low, b.close, b.volume, b.trades, b.closed) for b in bars] == [
        (T0, 10.0, 12.0, 9.0, 11.0, 5.0, 4, True),
        (T0 + 3 * S, 20.0, 20.0, 20.0, 20.0, 4.0, 1, False),
    ]
    assert bars[0].vwap == pytest.approx((10 + 12 + 18 + 11) / 5)
    assert series.bars() == bars[:1]


def test_bar_history_keeps_the_newest_closed_bars() -> None:
    series = BarSeries(interval_ms=1_000, history=3)
    for second in range(6):
        series.add_trade(T0 + second * S, 100.0 + second, 1.0)
    assert [b.open for b in series.bars()] == [102.0, 103.0, 104.0]
    assert [b.open for b in series.bars(limit=2, include_open=True)] == [104.0, 105.0]


def test_duplicate_trade_ids_and_late_trades_never_reopen_a_closed_bar() -> None:
    engine = MarketDataEngine(
        MarketDataConfig(bar_intervals_ms=(1_000,)), wall_clock_ns=lambda: T0 + 3600 * S
    )
    assert engine.on_trade("hftgate", "BTCUSDT", T0 + 100, 0, 1, 10.0, 1.0, 1) == 0
    assert engine.on_trade("hftgate", "BTCUSDT", T0 + S, 0, 2, 11.0, 1.0, 1) == 0  # closes second 0
    # The same trade again, then one stamped in the closed second: both refused, nothing moves.
    assert engine.on_trade("hftgate", "BTCUSDT", T0 + S, 0, 2, 11.0, 1.0, 1) == RejectReason.DUPLICATE
    assert engine.on_trade("hftgate", "BTCUSDT", T0 + 500, 0, 3, 50.0, 9.0, 1) == RejectReason.OUT_OF_ORDER
    # Equal timestamps with increasing ids are ordinary.
    assert engine.on_trade("hftgate", "BTCUSDT", T0 + S, 0, 4, 12.0, 1.0, 1) == 0
    bars = engine.bars("hftgate", "BTCUSDT", 1_000, include_open=True)
    assert [(b.open, b.high, b.close, b.volume, b.trades) for b in bars] == [
        (10.0, 10.0, 10.0, 1.0, 1),
        (11.0, 12.0, 12.0, 2.0, 2),
    ]


def test_ring_windows_stay_contiguous_across_the_wrap() -> None:
    ring = TradeRing(capacity=8)
    prices = np.arange(1.0, 21.0)
    sizes = np.linspace(0.5, 3.0, 20)
    for i in range(20):
        ring.append(T0 + i * S, float(prices[i]), float(sizes[i]))
    assert len(ring) == 8
    for n in (1, 5, 8):
        expected = float(np.dot(prices[-n:], sizes[-n:]) / sizes[-n:].sum())
        result = ring.vwap_last_n(n)
        assert result.vwap == pytest.approx(expected, rel=1e-12)
        assert result.last_trade_ts_ns == T0 + 19 * S
        assert result.first_trade_ts_ns == T0 + (20 - n) * S
    # Windows are (newest - window, newest]: 3.5 s holds t = 16..19 s, 3 s only 17..19 s.
    assert ring.vwap_by_time(3 * S + S // 2).trades == 4
    assert ring.vwap_by_time(3 * S).trades == 3
    assert ring.vwap_last_n(8).complete is True
    assert (ring.vwap_last_n(9).trades, ring.vwap_last_n(9).complete) == (8, False)


def test_empty_ring_gives_an_empty_window() -> None:
    ring = TradeRing(capacity=4)
    result = ring.vwap_by_time(S)
    assert (result.vwap, result.trades, result.complete) == (0.0, 0, True)
