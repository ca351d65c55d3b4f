"""The C depth book against today's Python book on every recorded Binance depth file."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from hftgate.replay.source import load
from hftgate.replay.ticks import DepthTick
from services.marketdata.depth_book import REJECT_REASON_OF_CHECK, DepthBook, check_levels, levels
from tests.services.marketdata.reference_depth_book import ReferenceDepthBook, depth_reject_reason

RAW_DEPTH_FILES = (
    "binance_spot_btcusdt_20240808.jsonl.gz",
    "binance_spot_ethusdt_20240808.jsonl.gz",
    "binance_usdm_btcusdt_20240808.jsonl.gz",
    "binance_usdm_ethusdt_20240808.jsonl.gz",
    "binance_cm_btcusd_perp_20240808.jsonl.gz",
)


@functools.cache
def _depth_updates(path: Path) -> list[DepthTick]:
    return [t for t in load([path]) if type(t) is DepthTick]


@pytest.mark.parametrize(
    ("raw_file", "max_levels_per_side"),
    [
        *((name, 1_000) for name in RAW_DEPTH_FILES),  # the service's default cap
        (RAW_DEPTH_FILES[0], 40),  # a cap that trims on most updates
    ],
)
def test_the_c_book_matches_the_python_book_after_every_recorded_update(
    data_dir: Path, raw_file: str, max_levels_per_side: int
) -> None:
    updates = _depth_updates(data_dir / "raw" / "hftbacktest_binance" / raw_file)
    assert len(updates) > 1_000 and any(u.is_snapshot for u in updates)
    native, reference = DepthBook(max_levels_per_side), ReferenceDepthBook(max_levels_per_side)
    for index, update in enumerate(updates):
        bid_levels, ask_levels = levels(update.bids), levels(update.asks)
        code = check_levels(bid_levels, ask_levels)
        assert (REJECT_REASON_OF_CHECK[code] if code else 0) == depth_reject_reason(update.bids, update.asks)
        if code:
            continue
        if update.is_snapshot:
            native.clear()
            reference.clear()
        native.apply_levels(bid_levels, ask_levels)
        reference.apply(update.bids, update.asks)
        assert native.best_bid() == reference.best_bid(), index
        assert native.best_ask() == reference.best_ask(), index
        assert native.level_counts() == reference.level_counts(), index
        if index % 499 == 0:  # the whole book now and then (it is the slow part of the comparison)
            assert native.bids(max_levels_per_side) == reference.bids(max_levels_per_side), index
            assert native.asks(max_levels_per_side) == reference.asks(max_levels_per_side), index
    assert native.bids(max_levels_per_side) == reference.bids(max_levels_per_side)
    assert native.asks(max_levels_per_side) == reference.asks(max_levels_per_side)
    assert max(native.level_counts()) <= max_levels_per_side


def test_levels_read_from_the_request_bytes_give_the_same_books_as_the_tuples(data_dir: Path) -> None:
    from hftgate.bench.marketdata import depth_requests
    from hftgate.v1 import marketdata_pb2
    from services.marketdata.config import MarketDataConfig
    from services.marketdata.depth_book import RequestDepthLevels
    from services.marketdata.engine import MarketDataEngine
    from services.marketdata.fanout import SymbolFilter

    updates = _depth_updates(data_dir / "raw" / "hftbacktest_binance" / RAW_DEPTH_FILES[2])[:3_000]
    by_tuples, by_wire = MarketDataEngine(MarketDataConfig()), MarketDataEngine(MarketDataConfig())
    reader = RequestDepthLevels()
    ticks = iter(updates)
    requests = depth_requests(updates)
    assert len(requests) > 1  # the reader starts on each request of the replay's batching
    for data in requests:
        reader.start(data)
        for message in marketdata_pb2.PublishQuotesRequest.FromString(data).depth_updates:
            update = next(ticks)
            bids, asks, checked = reader.next_levels(len(message.bids), len(message.asks))
            wire_reason = by_wire.on_depth(*update[:6], bids, asks, None, checked)
            assert by_tuples.on_depth(*update) == wire_reason
    assert next(ticks, None) is None
    for engine in (by_tuples, by_wire):
        assert engine.accepted > 1_000
    everything = SymbolFilter()
    books_a = [(s.bids, s.asks) for s in by_tuples.iter_snapshots(everything, 1_000)]
    books_b = [(s.bids, s.asks) for s in by_wire.iter_snapshots(everything, 1_000)]
    assert books_a == books_b and books_a
