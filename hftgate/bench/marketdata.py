"""``hftgate bench marketdata``: the market data service's per-tick cost and throughput on recorded data.

Input: the Binance window of ``../shared/data`` (spot, USD-M and COIN-M book tickers and trades,
2024-08-08 23:54-24:00, ~245k ticks), merged by recorder time.

- ``tick_p50_us`` / ``tick_p99_us``: one ``MarketDataEngine.on_quote`` / ``on_trade`` call each,
  in process, with the service's default config: validation, book update, trade ring, rolling VWAP
  (native kernel), 1 s and 1 min bars and the arbitrage check. ``ticks`` is how many per run.
- ``arbitrage_p99_us``: the detection step alone (``ArbitrageDetector.on_top_changed``) on every
  quote of a symbol that has checks, on the same data; ``arbitrage_p99_us_without_fees`` the same
  with zero fees, where the basis keeps opportunities opening, updating and closing.
- ``depth_p50_us`` / ``depth_p99_us``: one ``on_depth`` call per depth message of the raw recordings of
  the same window (``raw/hftbacktest_binance``: spot diffs every 100 ms, futures every change, and
  the recorder's 1,000-level REST snapshots), validation and book update included.
- ``opportunities``: opportunities opened with the configured taker fees (the basis between spot
  and perpetuals stays inside the fees); ``opportunities_without_fees`` for contrast.
- ``ticks_per_s``: the quotes sent over one PublishQuotes stream (1,000 ticks per message,
  encoded beforehand) to a real service process, from the first write to the summary reply, which
  the service sends once it has applied every tick. A fresh service per run, so no tick is ever a
  cheap duplicate.
- Floors, same run: ``grpc_echo_p50_us`` (empty unary call to a do-nothing server on the same
  stack) and ``tcp_floor_p50_us`` (raw loopback TCP ping-pong between two processes).

Every figure is the median of ``repeats`` runs; latencies are measured with the native TSC clock,
whose own cost (~30-60 ns per reading) is included.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from hftgate.bench.floors import grpc_echo_p50_ms, tcp_floor_p50_ms
from hftgate.config import default_data_dir, repo_root
from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.native.clock import now_ns
from hftgate.native.histogram import LatencyHistogram
from hftgate.replay.publisher import feed_credentials, to_requests
from hftgate.replay.source import load
from hftgate.replay.ticks import DepthTick, QuoteTick, Tick, TradeTick
from hftgate.v1 import marketdata_pb2
from services.marketdata.arbitrage import ArbitrageDetector
from services.marketdata.config import MarketDataConfig
from services.marketdata.engine import MarketDataEngine
from services.marketdata.symbol_state import SymbolState

MARKETS = ("spot_BTCUSDT", "spot_ETHUSDT", "usdm_BTCUSDT", "usdm_ETHUSDT", "coinm_BTCUSD_PERP")
RAW_DEPTH_FILES = (
    "binance_spot_btcusdt_20240808.jsonl.gz",
    "binance_spot_ethusdt_20240808.jsonl.gz",
    "binance_usdm_btcusdt_20240808.jsonl.gz",
    "binance_usdm_ethusdt_20240808.jsonl.gz",
    "binance_cm_btcusd_perp_20240808.jsonl.gz",
)
TICKS_PER_MESSAGE = 1_000
PUBLISH_QUOTES = "/hftgate.v1.MarketDataService/PublishQuotes"


def recorded_files(data_dir: Path) -> list[Path]:
    quotes = [data_dir / "quotes" / f"binance-{m}_bookTicker_20240808.csv.gz" for m in MARKETS]
    trades = [data_dir / "trades" / f"binance-{m}_trades_20240808.csv.gz" for m in MARKETS]
    missing = [p for p in quotes + trades if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"recorded data missing (set HFTGATE_DATA_DIR): {', '.join(map(str, missing))}"
        )
    return quotes + trades


def zero_fees(config: MarketDataConfig) -> MarketDataConfig:
    venues = config.taker_fee_bps_by_venue()
    return MarketDataConfig(venue_taker_fees_bps=tuple(f"{venue}=0" for venue in venues))


# --- in process -----------------------------------------------------------------------------------
def tick_latencies(ticks: list[Tick], config: MarketDataConfig) -> tuple[dict[str, float], int]:
    """Per-tick engine latency summary (ns) and the opportunities opened, on a fresh engine."""
    engine = MarketDataEngine(config)
    on_quote, on_trade = engine.on_quote, engine.on_trade
    histogram = LatencyHistogram()
    record = histogram.record
    for tick in ticks:
        if type(tick) is QuoteTick:
            start = now_ns()
            rejected = on_quote(*tick)
        else:
            assert type(tick) is TradeTick
            start = now_ns()
            rejected = on_trade(*tick)
        record(now_ns() - start)
        if rejected:
            raise RuntimeError(f"recorded tick rejected ({rejected}): {tick}")
    return histogram.summary(), engine.arbitrage.opened


def depth_latencies(depth: Sequence[Tick], config: MarketDataConfig) -> dict[str, float]:
    """Per-update ``on_depth`` latency summary (ns) on a fresh engine.

    A diff older than a market's REST snapshot is refused as a duplicate, as Binance prescribes;
    the refusal is timed like any other update.
    """
    engine = MarketDataEngine(config)
    histogram = LatencyHistogram()
    for tick in depth:
        assert type(tick) is DepthTick
        start = now_ns()
        engine.on_depth(*tick)
        histogram.record(now_ns() - start)
    return histogram.summary()


def arbitrage_latencies(ticks: list[Tick], config: MarketDataConfig) -> dict[str, float]:
    """The detection step alone on every quote of a symbol that takes part in some check."""
    fees = config.taker_fee_bps_by_venue()
    detector = ArbitrageDetector(
        lambda event: None,
        default_threshold_bps=config.arbitrage_min_edge_bps,
        threshold_bps_by_venue_pair=config.min_edge_bps_by_venue_pair(),
        triangular_venues=config.triangular_venues,
        quote_assets=config.quote_assets,
    )
    states: dict[tuple[str, str], SymbolState] = {}
    histogram = LatencyHistogram()
    for tick in ticks:
        if type(tick) is not QuoteTick:
            continue
        state = states.get((tick.venue, tick.symbol))
        first = state is None
        if state is None:
            state = states[(tick.venue, tick.symbol)] = SymbolState(
                tick.venue, tick.symbol, fees[tick.venue], 1
            )
        state.bid_price, state.bid_size = tick.bid_price, tick.bid_size
        state.ask_price, state.ask_size = tick.ask_price, tick.ask_size
        if first:
            detector.add_symbol(state)
        if state.arbitrage_checks:
            start = now_ns()
            detector.on_top_changed(state, tick.receive_ts_ns)
            histogram.record(now_ns() - start)
    return histogram.summary()


# --- through gRPC ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServiceProcess:
    """``python -m services.marketdata`` on a free port, in a fresh interpreter."""

    def __init__(self) -> None:
        self.port = _free_port()
        self._log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        env = {**os.environ, "HFTGATE_MARKETDATA_PORT": str(self.port)}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "services.marketdata"],
            cwd=repo_root(),
            env=env,
            stderr=self._log,
            text=True,
        )
        deadline = time.monotonic() + 60
        while "listening on" not in Path(self._log.name).read_text():
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"market data service did not start:\n{Path(self._log.name).read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()
        os.unlink(self._log.name)


async def _publish(target: str, messages: list[bytes]) -> tuple[marketdata_pb2.PublishSummary, float]:
    # As a feed handler publishes: the "feed" principal's token (and TLS when the suite has it).
    credentials = feed_credentials()
    async with credentials.open_channel(target, CHANNEL_OPTIONS) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=30)
        publish = channel.stream_unary(
            PUBLISH_QUOTES,
            request_serializer=None,  # the messages are encoded already
            response_deserializer=marketdata_pb2.PublishSummary.FromString,
        )

        async def encoded() -> AsyncIterator[bytes]:
            for message in messages:
                yield message

        started = time.perf_counter()
        summary = await publish(encoded(), metadata=credentials.metadata)
        return summary, time.perf_counter() - started


def grpc_ticks_per_s(quotes: Sequence[Tick]) -> tuple[float, int]:
    """Ticks per second through a fresh service's PublishQuotes stream, and the ticks it rejected."""
    messages: list[bytes] = []
    for start in range(0, len(quotes), TICKS_PER_MESSAGE):
        requests, _ = to_requests(quotes[start : start + TICKS_PER_MESSAGE])
        messages.extend(request.SerializeToString() for request in requests)
    service = ServiceProcess()
    try:
        summary, elapsed_s = asyncio.run(_publish(f"127.0.0.1:{service.port}", messages))
    finally:
        service.stop()
    if summary.accepted + summary.rejected != len(quotes):
        raise RuntimeError(
            f"the service applied {summary.accepted + summary.rejected} of {len(quotes)} ticks"
        )
    return len(quotes) / elapsed_s, summary.rejected


# --- the suite ----------------------------------------------------------------------------------
def run(repeats: int = 5, data_dir: str | os.PathLike[str] | None = None) -> dict[str, float | int | bool]:
    """Run the benchmark; ``data_dir`` defaults to $HFTGATE_DATA_DIR or <repo>/../shared/data."""
    if repeats < 1:
        raise ValueError(f"Cannot benchmark: repeats must be at least 1, got {repeats}")
    root = Path(data_dir) if data_dir else default_data_dir()
    ticks = load(recorded_files(root))
    quotes = [t for t in ticks if type(t) is QuoteTick]
    raw = load([root / "raw" / "hftbacktest_binance" / name for name in RAW_DEPTH_FILES])
    depth = [t for t in raw if type(t) is DepthTick]
    config = MarketDataConfig()
    without_fees = zero_fees(config)

    tick_p50, tick_p99, arbitrage_p99, arbitrage_p99_free, depth_p50, depth_p99 = [], [], [], [], [], []
    opportunities = opportunities_without_fees = 0
    for _ in range(repeats):
        summary, opportunities = tick_latencies(ticks, config)
        tick_p50.append(summary["p50"])
        tick_p99.append(summary["p99"])
        arbitrage_p99.append(arbitrage_latencies(ticks, config)["p99"])
        arbitrage_p99_free.append(arbitrage_latencies(ticks, without_fees)["p99"])
        depth_summary = depth_latencies(depth, config)
        depth_p50.append(depth_summary["p50"])
        depth_p99.append(depth_summary["p99"])
    _, opportunities_without_fees = tick_latencies(ticks, without_fees)

    rates, rejected = [], 0
    for _ in range(repeats):
        rate, rejected_now = grpc_ticks_per_s(quotes)
        rates.append(rate)
        rejected = max(rejected, rejected_now)

    return {
        "ticks": len(ticks),
        "tick_p50_us": statistics.median(tick_p50) / 1e3,
        "tick_p99_us": statistics.median(tick_p99) / 1e3,
        "arbitrage_p99_us": statistics.median(arbitrage_p99) / 1e3,
        "arbitrage_p99_us_without_fees": statistics.median(arbitrage_p99_free) / 1e3,
        "depth_updates": len(depth),
        "depth_p50_us": statistics.median(depth_p50) / 1e3,
        "depth_p99_us": statistics.median(depth_p99) / 1e3,
        "opportunities": opportunities,
        "opportunities_without_fees": opportunities_without_fees,
        "grpc_ticks": len(quotes),
        "grpc_rejected": rejected,
        "ticks_per_s": statistics.median(rates),
        "ticks_per_s_min": min(rates),
        "ticks_per_s_max": max(rates),
        "grpc_echo_p50_us": grpc_echo_p50_ms() * 1e3,
        "tcp_floor_p50_us": tcp_floor_p50_ms() * 1e3,
        "repeats": repeats,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 5), indent=2))
