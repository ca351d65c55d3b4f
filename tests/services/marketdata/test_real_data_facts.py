"""The engine on recorded Binance data, checked against facts recomputed here from the raw CSV rows.

The expected values are computed with the csv module and plain arithmetic, never with the
replay readers or the service's own code.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pytest

from hftgate.replay.readers import read_ticks
from hftgate.replay.source import load
from hftgate.replay.ticks import DepthTick, QuoteTick, Tick, TradeTick
from services.marketdata.arbitrage import ArbitrageEvent, EventType
from services.marketdata.config import MarketDataConfig
from services.marketdata.engine import MarketDataEngine, RejectReason

SPOT_BTC_QUOTES = "quotes/binance-spot_BTCUSDT_bookTicker_20240808.csv.gz"
USDM_BTC_QUOTES = "quotes/binance-usdm_BTCUSDT_bookTicker_20240808.csv.gz"
SPOT_ETH_QUOTES = "quotes/binance-spot_ETHUSDT_bookTicker_20240808.csv.gz"
USDM_ETH_QUOTES = "quotes/binance-usdm_ETHUSDT_bookTicker_20240808.csv.gz"
USDM_BTC_TRADES = "trades/binance-usdm_BTCUSDT_trades_20240808.csv.gz"
SPOT_BTC_TRADES = "trades/binance-spot_BTCUSDT_trades_20240808.csv.gz"
ZERO_FEES = ("binance-spot=0", "binance-usdm=0", "binance-coinm=0")


def raw_rows(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def apply(engine: MarketDataEngine, ticks: list[Tick]) -> list[int]:
    results = []
    for tick in ticks:
        if type(tick) is QuoteTick:
            results.append(engine.on_quote(*tick))
        elif type(tick) is TradeTick:
            results.append(engine.on_trade(*tick))
        else:
            assert isinstance(tick, DepthTick)
            results.append(engine.on_depth(*tick))
    return results


def fixed_clock() -> int:
    # After every recording: no recorded tick counts as "in the future".
    return 1_900_000_000_000_000_000


def engine_with(**config: object) -> tuple[MarketDataEngine, list[ArbitrageEvent]]:
    engine = MarketDataEngine(MarketDataConfig(**config), wall_clock_ns=fixed_clock)  # type: ignore[arg-type]
    events: list[ArbitrageEvent] = []
    engine.subscribe_arbitrage([], notify=lambda: None)
    engine.arbitrage._on_event = events.append  # collect every event in order, unbounded
    return engine, events


# --- VWAP ---------------------------------------------------------------------------------------
def test_vwap_by_time_and_by_count_match_raw_trades(data_dir: Path) -> None:
    rows = raw_rows(data_dir / SPOT_BTC_TRADES)[:3000]
    engine, _ = engine_with()
    assert not any(apply(engine, list(read_ticks(data_dir / SPOT_BTC_TRADES))[:3000]))

    newest_ms = int(rows[-1]["T"])
    window_ms = 10_000
    inside = [r for r in rows if int(r["T"]) > newest_ms - window_ms]
    expected_time = sum(float(r["p"]) * float(r["q"]) for r in inside) / sum(float(r["q"]) for r in inside)
    last = rows[-250:]
    expected_count = sum(float(r["p"]) * float(r["q"]) for r in last) / sum(float(r["q"]) for r in last)

    by_time, by_count = engine.vwap("binance-spot", "BTCUSDT", window_ns=window_ms * 1_000_000, last_n=250)
    assert by_time.trades == len(inside)
    assert by_time.vwap == pytest.approx(expected_time, rel=1e-12)
    assert by_time.volume == pytest.approx(sum(float(r["q"]) for r in inside), rel=1e-12)
    assert by_time.first_trade_ts_ns == int(inside[0]["T"]) * 1_000_000
    assert by_time.complete
    assert by_count.trades == 250
    assert by_count.vwap == pytest.approx(expected_count, rel=1e-12)


def test_rolling_vwap_after_every_trade_matches_the_raw_window(data_dir: Path) -> None:
    rows = raw_rows(data_dir / SPOT_BTC_TRADES)[:1500]
    engine, _ = engine_with(vwap_window_ms=5_000)
    state = None
    for tick, row in zip(list(read_ticks(data_dir / SPOT_BTC_TRADES))[:1500], rows, strict=True):
        assert engine.on_trade(*tick) == 0
        state = state or engine.get("binance-spot", "BTCUSDT")
        newest = int(row["T"])
        inside = [r for r in rows if newest - 5_000 < int(r["T"]) <= newest and int(r["t"]) <= int(row["t"])]
        expected = sum(float(r["p"]) * float(r["q"]) for r in inside) / sum(float(r["q"]) for r in inside)
        assert state.vwap == pytest.approx(expected, rel=1e-12)


def test_ring_smaller_than_the_window_reports_an_incomplete_vwap(data_dir: Path) -> None:
    rows = raw_rows(data_dir / SPOT_BTC_TRADES)[:3000]
    engine, _ = engine_with(trade_ring_capacity=1024, vwap_last_trades=1000)
    apply(engine, list(read_ticks(data_dir / SPOT_BTC_TRADES))[:3000])
    by_time, by_count = engine.vwap("binance-spot", "BTCUSDT", window_ns=3600 * 10**9, last_n=2000)
    last = rows[-1024:]
    expected = sum(float(r["p"]) * float(r["q"]) for r in last) / sum(float(r["q"]) for r in last)
    assert (by_time.trades, by_time.complete) == (1024, False)
    assert by_time.vwap == pytest.approx(expected, rel=1e-12)
    assert (by_count.trades, by_count.complete) == (1024, False)


# --- OHLCV --------------------------------------------------------------------------------------
@pytest.mark.parametrize("interval_ms", [1_000, 60_000])
def test_ohlcv_bars_match_raw_trades(data_dir: Path, interval_ms: int) -> None:
    rows = raw_rows(data_dir / USDM_BTC_TRADES)
    expected: dict[int, dict[str, float]] = {}
    for r in rows:
        start = int(r["T"]) // interval_ms * interval_ms
        price, qty = float(r["p"]), float(r["q"])
        bar = expected.setdefault(
            start, {"open": price, "high": price, "low": price, "volume": 0.0, "trades": 0}
        )
        bar["high"] = max(bar["high"], price)
        bar["low"] = min(bar["low"], price)
        bar["close"] = price
        bar["volume"] += qty
        bar["trades"] += 1

    engine, _ = engine_with()
    assert not any(apply(engine, list(read_ticks(data_dir / USDM_BTC_TRADES))))
    bars = engine.bars("binance-usdm", "BTCUSDT", interval_ms, include_open=True)

    assert [b.start_ns for b in bars] == [start * 1_000_000 for start in sorted(expected)]
    assert [b.closed for b in bars] == [True] * (len(bars) - 1) + [False]
    for bar in bars:
        want = expected[bar.start_ns // 1_000_000]
        assert (bar.open, bar.high, bar.low, bar.close, bar.trades) == (
            want["open"],
            want["high"],
            want["low"],
            want["close"],
            want["trades"],
        )
        assert bar.volume == pytest.approx(want["volume"], rel=1e-12)


# --- cross-venue arbitrage on the spot/perpetual basis -----------------------------------------
def _crossed_by_direction(
    data_dir: Path, spot_file: str, usdm_file: str
) -> dict[tuple[str, str], tuple[int, int]]:
    """Per (buy venue, sell venue): ticks after which the sell venue's bid is above the buy
    venue's ask, and how many times that started; from the raw rows merged by recorder time."""
    merged = sorted(
        [(int(r["local_ts_ns"]), 0, r) for r in raw_rows(data_dir / spot_file)]
        + [(int(r["local_ts_ns"]), 1, r) for r in raw_rows(data_dir / usdm_file)],
        key=lambda item: (item[0], item[1]),
    )
    venues = ("binance-spot", "binance-usdm")
    book: dict[str, tuple[float, float]] = {}
    counts = {("binance-spot", "binance-usdm"): [0, 0], ("binance-usdm", "binance-spot"): [0, 0]}
    was = dict.fromkeys(counts, False)
    for _, index, row in merged:
        book[venues[index]] = (float(row["b"]), float(row["a"]))
        if len(book) < 2:
            continue
        for buy, sell in counts:
            crossed = book[sell][0] > book[buy][1]
            counts[(buy, sell)][0] += crossed
            counts[(buy, sell)][1] += crossed and not was[(buy, sell)]
            was[(buy, sell)] = crossed
    return {key: (ticks, starts) for key, (ticks, starts) in counts.items()}


def test_raw_recount_reproduces_the_data_readme_basis_figures(data_dir: Path) -> None:
    # The README measured 27,742 crossed samples of 27,762, sampling at each spot quote.
    merged = sorted(
        [(int(r["local_ts_ns"]), 0, r) for r in raw_rows(data_dir / SPOT_BTC_QUOTES)]
        + [(int(r["local_ts_ns"]), 1, r) for r in raw_rows(data_dir / USDM_BTC_QUOTES)],
        key=lambda item: (item[0], item[1]),
    )
    book: dict[int, tuple[float, float]] = {}
    samples = crossed = 0
    for _, index, row in merged:
        book[index] = (float(row["b"]), float(row["a"]))
        if index == 0 and 1 in book:
            samples += 1
            crossed += book[0][0] > book[1][1] or book[1][0] > book[0][1]
    assert (samples, crossed) == (27_762, 27_742)


def test_without_fees_the_detector_tracks_every_crossed_tick_and_opens_once_per_crossing(
    data_dir: Path,
) -> None:
    expected = _crossed_by_direction(data_dir, SPOT_BTC_QUOTES, USDM_BTC_QUOTES)
    engine, events = engine_with(venue_taker_fees_bps=ZERO_FEES)
    ticks = load([data_dir / SPOT_BTC_QUOTES, data_dir / USDM_BTC_QUOTES])
    open_ticks = dict.fromkeys(expected, 0)
    for tick in ticks:
        assert engine.on_quote(*tick) == 0
        for opportunity in engine.arbitrage.open_opportunities.values():
            open_ticks[(opportunity.legs[0].venue, opportunity.legs[1].venue)] += 1

    for direction, (crossed_ticks, crossings) in expected.items():
        opened = [
            e
            for e in events
            if e.type == EventType.OPENED and (e.legs[0].venue, e.legs[1].venue) == direction
        ]
        closed = [
            e
            for e in events
            if e.type == EventType.CLOSED and (e.legs[0].venue, e.legs[1].venue) == direction
        ]
        assert open_ticks[direction] == crossed_ticks
        assert len(opened) == crossings
        # Each opportunity closes once (except one still open at the end), with its lifetime.
        assert len(opened) - len(closed) in (0, 1)
        still_open = sum(
            o.updates_while_open
            for o in engine.arbitrage.open_opportunities.values()
            if (o.legs[0].venue, o.legs[1].venue) == direction
        )
        assert sum(e.updates_while_open for e in closed) + still_open == crossed_ticks
        assert all(e.lifetime_ns == e.closed_at_ns - e.opened_at_ns >= 0 for e in closed)
    # The basis keeps the perpetual below spot nearly all the time: a fee-blind detector "sees" it.
    assert expected[("binance-usdm", "binance-spot")][0] > 0.99 * len(ticks)


def test_with_taker_fees_the_spot_perpetual_basis_is_not_an_opportunity(data_dir: Path) -> None:
    engine, events = engine_with()  # the configured Binance taker fees
    files = [data_dir / f for f in (SPOT_BTC_QUOTES, USDM_BTC_QUOTES, SPOT_ETH_QUOTES, USDM_ETH_QUOTES)]
    assert not any(apply(engine, load(files)))
    assert events == []
    assert engine.arbitrage.cross_venue_checks == 4  # BTC and ETH, both directions


def test_a_per_venue_pair_threshold_above_the_basis_suppresses_it_without_fees(data_dir: Path) -> None:
    # The largest basis in the window is 72.5 USDT on ~61,800, about 11.7 bps.
    engine, events = engine_with(
        venue_taker_fees_bps=ZERO_FEES, arbitrage_venue_pair_min_edge_bps=("binance-usdm/binance-spot=15",)
    )
    apply(engine, load([data_dir / SPOT_BTC_QUOTES, data_dir / USDM_BTC_QUOTES]))
    assert events == []


# --- depth ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw_file", "venue", "symbol"),
    [
        ("binance_spot_btcusdt_20240808.jsonl.gz", "binance-spot", "BTCUSDT"),
        ("binance_usdm_ethusdt_20240808.jsonl.gz", "binance-usdm", "ETHUSDT"),
    ],
)
def test_depth_book_from_raw_diffs_ends_at_the_book_ticker_top(
    data_dir: Path, raw_file: str, venue: str, symbol: str
) -> None:
    path = data_dir / "raw" / "hftbacktest_binance" / raw_file
    engine, _ = engine_with()
    results = apply(engine, list(read_ticks(path)))
    # Only diffs older than the recorder's REST snapshot are refused (Binance's own rule).
    assert {RejectReason(r) for r in results if r} <= {RejectReason.DUPLICATE}
    assert sum(1 for r in results if r) <= 5
    last_quote = _raw_book_tickers(path)[-1]
    state = engine.get(venue, symbol)
    best_bid, best_ask = state.depth.best_bid(), state.depth.best_ask()
    assert best_bid is not None and best_ask is not None
    # Prices only: spot depth diffs come every 100 ms, so a size at the touch can lag the ticker.
    assert (best_bid[0], best_ask[0]) == (float(last_quote["b"]), float(last_quote["a"]))


def _raw_book_tickers(path: Path) -> list[dict[str, str]]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line.split(" ", 1)[1])["data"] for line in f if "@bookTicker" in line]
