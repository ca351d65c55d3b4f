"""Replaying slices of the recorded data into a real server, checked against the raw rows."""

from __future__ import annotations

import asyncio
import csv
import gzip
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from hftgate.replay.publisher import channel_to, replay, to_requests
from hftgate.replay.source import load
from hftgate.replay.ticks import DepthTick, QuoteTick, TradeTick
from hftgate.v1 import common_pb2, marketdata_pb2, marketdata_pb2_grpc
from services.marketdata.config import MarketDataConfig
from services.marketdata.server import start
from tests.services.marketdata.helpers import channel as credentialed_channel
from tests.services.marketdata.helpers import token_metadata

pb = marketdata_pb2
SPOT_QUOTES = "quotes/binance-spot_BTCUSDT_bookTicker_20240808.csv.gz"
USDM_QUOTES = "quotes/binance-usdm_BTCUSDT_bookTicker_20240808.csv.gz"
SPOT_TRADES = "trades/binance-spot_BTCUSDT_trades_20240808.csv.gz"
USDM_TRADES = "trades/binance-usdm_BTCUSDT_trades_20240808.csv.gz"


def raw_rows(path: Path, limit: int) -> list[dict[str, str]]:
    with gzip.open(path, "rt", newline="") as f:
        return [row for _, row in zip(range(limit), csv.DictReader(f), strict=False)]


@pytest.fixture
async def target() -> AsyncIterator[tuple[str, marketdata_pb2_grpc.MarketDataServiceStub]]:
    config = MarketDataConfig(port=0, venue_taker_fees_bps=("binance-spot=0", "binance-usdm=0"))
    running = await start(config)
    try:
        # Queries as another service of the suite would make them.
        async with credentialed_channel(f"127.0.0.1:{running.port}", token_metadata("gateway")) as channel:
            yield f"127.0.0.1:{running.port}", marketdata_pb2_grpc.MarketDataServiceStub(channel)
    finally:
        await running.stop(0)


async def test_replayed_trades_give_the_vwap_and_bars_of_the_raw_rows(
    data_dir: Path, target: tuple[str, marketdata_pb2_grpc.MarketDataServiceStub]
) -> None:
    address, stub = target
    ticks = load([data_dir / SPOT_TRADES, data_dir / USDM_TRADES], limit_per_file=4000)
    async with channel_to(address) as channel:
        result = await replay(ticks, channel, speed=0, max_batch=700)
    assert (result.trade_summary.accepted, result.trade_summary.rejected) == (8000, 0)

    for path, venue in ((SPOT_TRADES, "binance-spot"), (USDM_TRADES, "binance-usdm")):
        rows = raw_rows(data_dir / path, 4000)
        symbol = common_pb2.Symbol(venue=venue, name="BTCUSDT")
        # VWAP of the last 30 s and of the last 777 trades.
        newest = int(rows[-1]["T"])
        inside = [r for r in rows if int(r["T"]) > newest - 30_000]
        last = rows[-777:]
        vwap = await stub.GetVwap(pb.GetVwapRequest(symbol=symbol, window_ns=30 * 10**9, last_n=777))
        assert vwap.by_time.trades == len(inside)
        assert vwap.by_time.vwap == pytest.approx(
            sum(float(r["p"]) * float(r["q"]) for r in inside) / sum(float(r["q"]) for r in inside), rel=1e-12
        )
        assert vwap.by_count.vwap == pytest.approx(
            sum(float(r["p"]) * float(r["q"]) for r in last) / sum(float(r["q"]) for r in last), rel=1e-12
        )
        # 1-minute OHLCV of every minute the slice touches.
        minutes: dict[int, list[dict[str, str]]] = {}
        for r in rows:
            minutes.setdefault(int(r["T"]) // 60_000, []).append(r)
        bars = await stub.GetBars(pb.GetBarsRequest(symbol=symbol, interval_ms=60_000, include_open=True))
        assert [b.start_ns for b in bars.bars] == [m * 60_000 * 1_000_000 for m in sorted(minutes)]
        for bar in bars.bars:
            group = minutes[bar.start_ns // 60_000_000_000]
            prices = [float(r["p"]) for r in group]
            assert (bar.open, bar.high, bar.low, bar.close, bar.trades) == (
                prices[0],
                max(prices),
                min(prices),
                prices[-1],
                len(group),
            )
            assert bar.volume == pytest.approx(sum(float(r["q"]) for r in group), rel=1e-12)


async def test_replayed_quotes_open_one_opportunity_per_raw_crossing_without_fees(
    data_dir: Path, target: tuple[str, marketdata_pb2_grpc.MarketDataServiceStub]
) -> None:
    address, stub = target
    limit = 6000
    spot, usdm = raw_rows(data_dir / SPOT_QUOTES, limit), raw_rows(data_dir / USDM_QUOTES, limit)
    merged = sorted(
        [(int(r["local_ts_ns"]), 0, r) for r in spot] + [(int(r["local_ts_ns"]), 1, r) for r in usdm],
        key=lambda item: (item[0], item[1]),
    )
    book: dict[int, tuple[float, float]] = {}
    crossings = {(0, 1): 0, (1, 0): 0}  # (buy venue index, sell venue index)
    crossed_before = dict.fromkeys(crossings, False)
    for _, index, row in merged:
        book[index] = (float(row["b"]), float(row["a"]))
        if len(book) == 2:
            for buy, sell in crossings:
                crossed = book[sell][0] > book[buy][1]
                crossings[(buy, sell)] += crossed and not crossed_before[(buy, sell)]
                crossed_before[(buy, sell)] = crossed

    stream = stub.StreamArbitrage(pb.StreamArbitrageRequest(kinds=[pb.ARBITRAGE_KIND_CROSS_VENUE]))
    for _ in range(500):
        if (await stub.GetSnapshot(pb.GetSnapshotRequest())).stats.arbitrage_subscribers == 1:
            break
        await asyncio.sleep(0.01)
    ticks = load([data_dir / SPOT_QUOTES, data_dir / USDM_QUOTES], limit_per_file=limit)
    async with channel_to(address) as channel:
        result = await replay(ticks, channel, speed=0, max_batch=1000)
    assert result.quote_summary.accepted == 2 * limit

    venues = ("binance-spot", "binance-usdm")
    opened = dict.fromkeys(crossings, 0)
    # Every crossing opens once and closes once, except a crossing still on at the end.
    expected_events = 2 * sum(crossings.values()) - sum(crossed_before.values())
    for _ in range(expected_events):
        event = await stream.read()
        if event.type == pb.ARBITRAGE_EVENT_TYPE_OPENED:
            opened[(venues.index(event.legs[0].venue), venues.index(event.legs[1].venue))] += 1
    assert sum(crossings.values()) > 0
    assert opened == crossings
    stream.cancel()


async def test_paced_replay_delivers_everything_in_recorded_order(
    data_dir: Path, target: tuple[str, marketdata_pb2_grpc.MarketDataServiceStub]
) -> None:
    address, stub = target
    ticks = load([data_dir / SPOT_QUOTES, data_dir / SPOT_TRADES], limit_per_file=300)
    span_s = (ticks[-1].receive_ts_ns - ticks[0].receive_ts_ns) / 1e9
    progress: list[tuple[int, int]] = []
    async with channel_to(address) as channel:
        # Played fast enough to take well under a second whatever the recorded span.
        result = await replay(
            ticks, channel, speed=span_s / 0.3, on_progress=lambda s, t: progress.append((s, t))
        )
    assert (result.quote_summary.accepted, result.trade_summary.accepted) == (300, 300)
    assert progress[-1] == (600, 600)
    assert [s for s, _ in progress] == sorted(s for s, _ in progress)
    snapshot = await stub.GetSnapshot(pb.GetSnapshotRequest())
    (state,) = snapshot.symbols
    last_quote = [t for t in ticks if isinstance(t, QuoteTick)][-1]
    assert (state.top.bid_price, state.top.ask_price) == (last_quote.bid_price, last_quote.ask_price)


def test_requests_keep_quotes_and_depth_in_recorded_order() -> None:
    q = QuoteTick("v", "S", 1, 1, 0, 1.0, 1.0, 2.0, 1.0)
    d = DepthTick("v", "S", 1, 1, 0, False, ((1.0, 1.0),), ())
    t = TradeTick("v", "S", 1, 1, 0, 1.0, 1.0, 0)  # type: ignore[arg-type]
    quote_requests, trade_requests = to_requests([q, q, d, t, d, q, d])
    assert [(len(r.quotes), len(r.depth_updates)) for r in quote_requests] == [(2, 2), (1, 1)]
    assert [len(r.trades) for r in trade_requests] == [1]


async def test_replay_rejects_a_negative_speed(
    target: tuple[str, marketdata_pb2_grpc.MarketDataServiceStub],
) -> None:
    address, _ = target
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(ValueError, match="speed"):
            await replay([], channel, speed=-1)


async def test_replay_publishes_as_the_feed_which_may_not_publish_the_suites_own_venue() -> None:
    running = await start(MarketDataConfig(port=0, venue_taker_fees_bps=("hftgate=0", "bybit=5")))
    address = f"127.0.0.1:{running.port}"
    try:
        ticks = [
            TradeTick("bybit", "XRPUSDT", 1_723_161_240 * 10**9, 1, 5, 0.5, 10.0, 0),  # type: ignore[arg-type]
            TradeTick("hftgate", "BTCUSDT", 1_723_161_240 * 10**9, 1, 2**64 - 1, 1.0, 1.0, 0),  # type: ignore[arg-type]
            QuoteTick("hftgate", "BTCUSDT", 1_723_161_240 * 10**9, 1, 0, 1.0, 1.0, 2.0, 1.0),
        ]
        async with channel_to(address) as channel:
            result = await replay(ticks, channel, speed=0)
        assert (result.trade_summary.accepted, result.quote_summary.accepted) == (1, 0)
        for summary in (result.trade_summary, result.quote_summary):
            assert [(r.reason, r.count) for r in summary.rejected_by_reason] == [
                (pb.TICK_REJECT_REASON_VENUE_NOT_ALLOWED, 1)
            ]
        # Credentials of another principal, or none, are refused as a whole.
        async with channel_to(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await replay(ticks, channel, speed=0, metadata=token_metadata("gateway"))
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
            with pytest.raises(grpc.aio.AioRpcError) as unauthenticated:
                await replay(ticks, channel, speed=0, metadata=())
            assert unauthenticated.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await running.stop(0)


def test_feed_credentials_need_a_suite_secret_and_never_create_one(tmp_path: Path) -> None:
    from hftgate.replay.publisher import feed_credentials
    from hftgate.security import SecurityError

    missing = tmp_path / "secrets" / "suite.secret"
    with pytest.raises(SecurityError, match="no suite secret"):
        feed_credentials({"HFTGATE_SUITE_SECRET_FILE": str(missing)})
    assert not missing.exists()
    credentials = feed_credentials({"HFTGATE_SUITE_SECRET": "s" * 40})
    assert credentials.tls is None
    ((name, token),) = credentials.metadata
    assert (name, token.split(".")[0]) == ("x-hftgate-service-token", "feed")
