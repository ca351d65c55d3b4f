"""Every recorded format has a reader that yields what the raw file says (counts from the data README)."""

from __future__ import annotations

import csv
import gzip
import pkgutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

import hftgate.replay.readers as readers_package
from hftgate.replay.readers import UnknownFormatError, all_readers, read_ticks, reader_for
from hftgate.replay.source import expand, load
from hftgate.replay.ticks import Aggressor, DepthTick, QuoteTick, TradeTick


def utc_ns(year: int, month: int, day: int, hour: int, minute: int, second: int, ms: int) -> int:
    stamp = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    return int(stamp.timestamp()) * 1_000_000_000 + ms * 1_000_000


@pytest.mark.parametrize(
    ("path", "reader", "kind", "count"),
    [
        (
            "quotes/binance-spot_BTCUSDT_bookTicker_20240808.csv.gz",
            "binance-bookticker-csv",
            QuoteTick,
            28_040,
        ),
        (
            "quotes/binance-usdm_ETHUSDT_bookTicker_20240808.csv.gz",
            "binance-bookticker-csv",
            QuoteTick,
            53_992,
        ),
        (
            "quotes/binance-coinm_BTCUSD_PERP_bookTicker_20240808.csv.gz",
            "binance-bookticker-csv",
            QuoteTick,
            19_136,
        ),
        ("trades/binance-usdm_BTCUSDT_trades_20240808.csv.gz", "binance-trades-csv", TradeTick, 21_313),
        ("trades/binance-coinm_BTCUSD_PERP_trades_20240808.csv.gz", "binance-trades-csv", TradeTick, 2_286),
        (
            "quotes/tardis_binance-futures_BTCUSDT_quotes_2020-02-22.csv",
            "tardis-quotes-csv",
            QuoteTick,
            9_999,
        ),
        (
            "trades/tardis_binance-futures_BTCUSDT_trades_2020-02-22.csv",
            "tardis-trades-csv",
            TradeTick,
            9_999,
        ),
        ("trades/tardis_bitmex_XBTUSD_trades_sample.csv", "tardis-trades-csv", TradeTick, 10),
        (
            "quotes/databento_glbx-mdp3_ESU4_mbp-1_2024-07-01T23-58_2024-07-02T00-02.csv",
            "databento-mbp1-csv",
            QuoteTick,
            2_288,
        ),
        (
            "trades/databento_glbx-mdp3_ESU4_trades_2024-07-01T23-58_2024-07-02T00-02.csv",
            "databento-trades-csv",
            TradeTick,
            120,
        ),
        ("quotes/truefx_USDJPY_ticks_2013-01-01.csv", "truefx-csv", QuoteTick, 1_000),
        ("quotes/histdata_EURUSD_ticks_2020-01-01.csv", "histdata-ticks-csv", QuoteTick, 9_500),
        ("l2/bybit_XRPUSDT_ob500.data.zip", "bybit-orderbook-jsonl", DepthTick, 50),
        ("l2/binance-futures_BTCUSDT_depth_snap.csv", "binance-depth-csv", DepthTick, 1),
        (
            "l2/tardis_deribit_BTC-PERPETUAL_incremental_book_L2_sample.csv",
            "tardis-book-l2-csv",
            DepthTick,
            1,
        ),
    ],
)
def test_each_file_is_read_by_its_reader_with_every_row(
    data_dir: Path, path: str, reader: str, kind: type, count: int
) -> None:
    assert reader_for(data_dir / path).name == reader
    ticks = list(read_ticks(data_dir / path))
    assert len(ticks) == count
    assert all(type(t) is kind for t in ticks)
    assert [t.receive_ts_ns for t in ticks] == sorted(t.receive_ts_ns for t in ticks)


def test_raw_binance_stream_splits_into_book_ticker_trades_and_depth(data_dir: Path) -> None:
    ticks = list(read_ticks(data_dir / "raw/hftbacktest_binance/binance_spot_btcusdt_20240808.jsonl.gz"))
    kinds = Counter(type(t).__name__ for t in ticks)
    # README: 3,451 depth diffs, plus the recorder's one REST snapshot.
    assert kinds == {"QuoteTick": 28_040, "TradeTick": 9_757, "DepthTick": 3_452}
    snapshots = [t for t in ticks if isinstance(t, DepthTick) and t.is_snapshot]
    assert len(snapshots) == 1 and len(snapshots[0].bids) > 100
    assert {(t.venue, t.symbol) for t in ticks} == {("binance-spot", "BTCUSDT")}


def test_binance_rows_keep_their_values_and_aggressor(data_dir: Path) -> None:
    with gzip.open(data_dir / "trades/binance-spot_BTCUSDT_trades_20240808.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))[:200]
    ticks = list(read_ticks(data_dir / "trades/binance-spot_BTCUSDT_trades_20240808.csv.gz"))[:200]
    for row, tick in zip(rows, ticks, strict=True):
        assert isinstance(tick, TradeTick)
        assert (tick.price, tick.size, tick.trade_id) == (float(row["p"]), float(row["q"]), int(row["t"]))
        assert tick.exchange_ts_ns == int(row["T"]) * 1_000_000
        assert tick.aggressor == (Aggressor.SELL if row["m"] == "True" else Aggressor.BUY)


def test_spot_quotes_without_an_exchange_time_use_the_recorder_clock(data_dir: Path) -> None:
    spot = next(iter(read_ticks(data_dir / "quotes/binance-spot_BTCUSDT_bookTicker_20240808.csv.gz")))
    usdm = next(iter(read_ticks(data_dir / "quotes/binance-usdm_BTCUSDT_bookTicker_20240808.csv.gz")))
    assert spot.exchange_ts_ns == spot.receive_ts_ns == 1723161254087891268
    assert usdm.exchange_ts_ns == 1723161256313 * 1_000_000  # E, in ms
    assert usdm.receive_ts_ns == 1723161255088169167


def test_fixed_point_and_local_time_formats_are_converted(data_dir: Path) -> None:
    es = next(
        iter(
            read_ticks(
                data_dir / "quotes/databento_glbx-mdp3_ESU4_mbp-1_2024-07-01T23-58_2024-07-02T00-02.csv"
            )
        )
    )
    assert (es.venue, es.symbol, es.bid_price, es.ask_price) == ("cme", "ESU4", 5528.5, 5528.75)
    # HistData stamps are EST all year: 2020-01-01 17:00:00.065 EST is 22:00:00.065 UTC.
    eur = next(iter(read_ticks(data_dir / "quotes/histdata_EURUSD_ticks_2020-01-01.csv")))
    assert eur.exchange_ts_ns == utc_ns(2020, 1, 1, 22, 0, 0, 65)
    assert (eur.symbol, eur.bid_price, eur.bid_size, eur.ask_size) == ("EURUSD", 1.1212, 0.0, 0.0)
    jpy = next(iter(read_ticks(data_dir / "quotes/truefx_USDJPY_ticks_2013-01-01.csv")))
    assert jpy.exchange_ts_ns == utc_ns(2013, 1, 1, 22, 0, 0, 295)


def test_order_level_files_and_readme_have_no_reader(data_dir: Path) -> None:
    with pytest.raises(UnknownFormatError, match="no reader recognises"):
        reader_for(data_dir / "l3/databento_glbx-mdp3_ESH4_mbo_2023-12-25.csv.gz")
    files, skipped = expand([data_dir])
    assert data_dir / "README.md" not in files
    assert len(skipped) == 5  # README and the four L3 files
    assert len(files) == 27


def test_every_module_in_the_readers_package_registers_one_reader() -> None:
    modules = [m.name for m in pkgutil.iter_modules(readers_package.__path__)]
    assert len(all_readers()) == len(modules)
    assert len({r.name for r in all_readers()}) == len(modules)


def test_load_merges_files_by_receive_time_keeping_path_order_on_ties(data_dir: Path) -> None:
    files = [
        data_dir / "quotes/binance-spot_BTCUSDT_bookTicker_20240808.csv.gz",
        data_dir / "trades/binance-spot_BTCUSDT_trades_20240808.csv.gz",
    ]
    ticks = load(files, limit_per_file=500)
    assert len(ticks) == 1000
    assert [t.receive_ts_ns for t in ticks] == sorted(t.receive_ts_ns for t in ticks)
    # The first spot quote (...087891268) was received 5.3 us before the first trade (...087896568).
    assert isinstance(ticks[0], QuoteTick)
    assert isinstance(ticks[1], TradeTick)
