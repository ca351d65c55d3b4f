"""``hftgate bench marketdata``: the market data service's per-tick cost and throughput on recorded data.

Input: the Binance window of ``../shared/data`` (spot, USD-M and COIN-M book tickers and trades,
2024-08-08 23:54-24:00, ~245k ticks), merged by recorder time.

- ``tick_p50_us`` / ``tick_p99_us``: one ``MarketDataEngine.on_quote`` / ``on_trade`` call each,
  in process, with the service's default config: validation, book update, trade ring, rolling VWAP
  (native kernel), 1 s and 1 min bars and the arbitrage check. ``ticks`` is how many per run.
- ``arbitrage_p99_us``: the detection step alone (``ArbitrageDetector.on_top_changed``) on every
  quote of a symbol that has checks, on the same data; ``arbitrage_p99_us_without_fees`` the same
  with zero fees, where the basis keeps opportunities opening, updating and closing.
- ``depth_p50_us`` / ``depth_p99_us``: each depth message of the raw recordings of the same window
  (``raw/hftbacktest_binance``: spot diffs every 100 ms, futures every change, and the recorder's
  1,000-level REST snapshots) as the service handles it from the bytes gRPC hands it: the updates
  are encoded beforehand into PublishQuotesRequest bytes, batched as the replay publisher sends
  them; per request, protobuf's decoding (which gRPC did in the server before as well, for every
  other field) is not timed; per update, the time covers finding it in the request's bytes and
  reading its levels in C (``RequestDepthLevels``), then one ``on_depth`` call, validation and book
  update (both in C; the check made by the read) included, as ``PublishQuotes`` does.
  ``depth_levels_p50_us`` / ``depth_levels_p99_us``, a floor of the same run: the finding, reading
  and checking of the levels alone (one C call), the part that grows with the levels before the
  book update.
- ``opportunities``: opportunities opened with the configured taker fees (the basis between spot
  and perpetuals stays inside the fees); ``opportunities_without_fees`` for contrast.
- ``ticks_per_s``: the quotes sent over one PublishQuotes stream (1,000 ticks per message,
  encoded beforehand) to a real service process, from the first write to the summary reply, which
  the service sends once it has applied every tick. A fresh service per run, so no tick is ever a
  cheap duplicate.
- ``subscriber_delivered_ratio``: updates a SubscribeBatched reader that reads as fast as it can got /
  ticks accepted, the ``ticks_per_s`` replay at full speed with that one subscriber (the lowest of the
  runs, and of the readers of the next figure); 1.0 is every update.
- ``subscribers_10_ticks_per_s``: the same replay's ingest rate with 10 such readers.
- ``stuck_subscribers_slowdown``: the ingest rate alone / with 50 SubscribeBatched streams that never
  read, each run against a rate taken right before it (machine load drifts). Their client keeps each
  stream's HTTP/2 window at 64 KiB (no BDP probing), so once it is full the server's writers block.
  ``buffering_subscribers_slowdown``: the same with gRPC's default client options, whose transport
  keeps accepting (and buffering in memory) what the application never reads: to the server those
  streams are fast readers, each sent every update.
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

import grpc

from hftgate.bench.floors import grpc_echo_p50_ms, tcp_floor_p50_ms
from hftgate.config import default_data_dir, repo_root
from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.native.clock import now_ns
from hftgate.native.histogram import LatencyHistogram
from hftgate.replay.publisher import feed_credentials, to_requests
from hftgate.replay.source import load
from hftgate.replay.ticks import DepthTick, QuoteTick, Tick, TradeTick
from hftgate.supervisor import wait_until_serving
from hftgate.v1 import marketdata_pb2
from services.marketdata.arbitrage import ArbitrageDetector
from services.marketdata.config import MarketDataConfig
from services.marketdata.depth_book import RequestDepthLevels
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


def depth_requests(depth: Sequence[Tick]) -> list[bytes]:
    """The depth ticks as the PublishQuotesRequest bytes gRPC hands the server, batched as the
    replay publisher sends them (up to ``TICKS_PER_MESSAGE`` updates a message)."""
    requests: list[bytes] = []
    for start in range(0, len(depth), TICKS_PER_MESSAGE):
        quote_requests, _ = to_requests(depth[start : start + TICKS_PER_MESSAGE])
        requests.extend(request.SerializeToString() for request in quote_requests)
    return requests


def depth_latencies(requests: Sequence[bytes], config: MarketDataConfig) -> dict[str, float]:
    """Per-update latency summary (ns) on a fresh engine of the server's path for a DepthUpdate
    from the bytes of the request it came in: the update found in the request's bytes and its
    levels read in C (``RequestDepthLevels``), then ``on_depth``. Each request is decoded first,
    untimed: gRPC's decoding, which the server did before this change too; the reader's start on
    a request is timed with its first update.

    A diff older than a market's REST snapshot is refused as a duplicate, as Binance prescribes;
    the refusal is timed like any other update.
    """
    engine = MarketDataEngine(config)
    on_depth = engine.on_depth
    max_levels = config.depth_max_levels_per_update
    depth_levels = RequestDepthLevels()
    histogram = LatencyHistogram()
    record = histogram.record
    for data in requests:
        request = marketdata_pb2.PublishQuotesRequest.FromString(data)
        start = now_ns()
        depth_levels.start(data)
        for d in request.depth_updates:
            bid_count, ask_count = len(d.bids), len(d.asks)
            if bid_count + ask_count > max_levels:
                raise RuntimeError(f"a recorded depth update of {bid_count + ask_count} levels")
            bids, asks, checked = depth_levels.next_levels(bid_count, ask_count)
            on_depth(
                d.venue,
                d.symbol,
                d.exchange_ts_ns,
                d.receive_ts_ns,
                d.sequence,
                d.is_snapshot,
                bids,
                asks,
                None,
                checked,
            )
            record(now_ns() - start)
            start = now_ns()
    return histogram.summary()


def depth_levels_latencies(requests: Sequence[bytes]) -> dict[str, float]:
    """Per-update latency summary (ns) of the levels' reading alone (finding the update in the
    request's bytes, the C read and its check, as ``depth_latencies`` does before ``on_depth``),
    timed the same way."""
    depth_levels = RequestDepthLevels()
    histogram = LatencyHistogram()
    record = histogram.record
    for data in requests:
        request = marketdata_pb2.PublishQuotesRequest.FromString(data)
        start = now_ns()
        depth_levels.start(data)
        for d in request.depth_updates:
            depth_levels.next_levels(len(d.bids), len(d.asks))
            record(now_ns() - start)
            start = now_ns()
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
        # Ready as the supervisor judges a service: SERVING on grpc.health.v1 (not a log line).
        while not wait_until_serving(f"127.0.0.1:{self.port}", 0.5):
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
        return await _publish_on(channel, messages, credentials.metadata)


def grpc_ticks_per_s(quotes: Sequence[Tick]) -> tuple[float, int]:
    """Ticks per second through a fresh service's PublishQuotes stream, and the ticks it rejected."""
    messages = _encoded_messages(quotes)
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


SUBSCRIBE_BATCHED = "/hftgate.v1.MarketDataService/SubscribeBatched"
GET_SNAPSHOT = "/hftgate.v1.MarketDataService/GetSnapshot"
FAST_SUBSCRIBERS = 10
STUCK_SUBSCRIBERS = 50
# The stuck subscribers' connection: without BDP probing gRPC's client keeps each stream's
# HTTP/2 window at its initial 64 KiB until the application reads, as a client that has stopped
# reading does; with it, gRPC's client transport goes on accepting megabytes that nobody reads,
# so the "stuck" streams would cost the server as much as fast readers.
STALLED_READER_OPTIONS: list[tuple[str, int]] = [("grpc.http2.bdp_probe", 0)]
# A fast subscriber that has received nothing for this long has everything it will get.
_QUIET_S = 2.0


async def _publish_with_subscribers(
    target: str, messages: list[bytes], fast: int, stuck: int, stalled_windows: bool = True
) -> tuple[marketdata_pb2.PublishSummary, float, list[int]]:
    """Publish ``messages`` over one PublishQuotes stream while ``fast`` SubscribeBatched streams
    read as fast as they can and ``stuck`` ones never read; the summary, the seconds from the
    first write to the summary, and the updates each fast subscriber received."""
    credentials = feed_credentials()
    metadata = credentials.metadata
    # One connection per group, so that stuck streams' flow control windows touch no other.
    channels = [credentials.open_channel(target, CHANNEL_OPTIONS) for _ in range(1 + fast)]
    stuck_options = [*CHANNEL_OPTIONS, *STALLED_READER_OPTIONS] if stalled_windows else CHANNEL_OPTIONS
    channels.append(credentials.open_channel(target, stuck_options))
    try:
        for channel in channels:
            await asyncio.wait_for(channel.channel_ready(), timeout=30)
        publish_channel, *fast_channels, stuck_channel = channels

        def subscribe(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamCall:  # type: ignore[type-arg]
            call = channel.unary_stream(
                SUBSCRIBE_BATCHED,
                request_serializer=marketdata_pb2.SubscribeRequest.SerializeToString,
                response_deserializer=marketdata_pb2.MarketUpdates.FromString,
            )
            return call(marketdata_pb2.SubscribeRequest(), metadata=metadata)  # type: ignore[no-any-return]

        stuck_calls = [subscribe(stuck_channel) for _ in range(stuck)]
        fast_calls = [subscribe(channel) for channel in fast_channels]
        snapshot = publish_channel.unary_unary(
            GET_SNAPSHOT,
            request_serializer=marketdata_pb2.GetSnapshotRequest.SerializeToString,
            response_deserializer=marketdata_pb2.GetSnapshotResponse.FromString,
        )
        deadline = time.monotonic() + 30
        while (await snapshot(marketdata_pb2.GetSnapshotRequest(), metadata=metadata)).stats.subscribers < (
            fast + stuck
        ):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{fast + stuck} subscribers did not all register within 30 s")
            await asyncio.sleep(0.01)
        received = [0] * fast

        async def read(index: int, call: grpc.aio.UnaryStreamCall) -> None:  # type: ignore[type-arg]
            while True:
                try:
                    message = await asyncio.wait_for(call.read(), timeout=_QUIET_S)
                except TimeoutError:
                    return
                if not isinstance(message, marketdata_pb2.MarketUpdates):  # the stream ended
                    return
                received[index] += len(message.updates)

        readers = [asyncio.create_task(read(i, call)) for i, call in enumerate(fast_calls)]
        summary, elapsed_s = await _publish_on(publish_channel, messages, metadata)
        await asyncio.gather(*readers)
        for call in (*stuck_calls, *fast_calls):
            call.cancel()
        return summary, elapsed_s, received
    finally:
        for channel in channels:
            await channel.close(None)


async def _publish_on(
    channel: grpc.aio.Channel, messages: list[bytes], metadata: Sequence[tuple[str, str]]
) -> tuple[marketdata_pb2.PublishSummary, float]:
    publish = channel.stream_unary(
        PUBLISH_QUOTES,
        request_serializer=None,  # the messages are encoded already
        response_deserializer=marketdata_pb2.PublishSummary.FromString,
    )

    async def encoded() -> AsyncIterator[bytes]:
        for message in messages:
            yield message

    started = time.perf_counter()
    summary = await publish(encoded(), metadata=metadata)
    return summary, time.perf_counter() - started


def fan_out_run(
    quotes: Sequence[Tick], fast: int, stuck: int, stalled_windows: bool = True
) -> tuple[float, list[float]]:
    """On a fresh service: ticks per second ingested with ``fast`` reading and ``stuck`` idle
    SubscribeBatched streams, and each fast one's updates received / ticks accepted.
    ``stalled_windows`` False: the idle streams' client keeps BDP probing on (see above)."""
    messages = _encoded_messages(quotes)
    service = ServiceProcess()
    try:
        summary, elapsed_s, received = asyncio.run(
            _publish_with_subscribers(f"127.0.0.1:{service.port}", messages, fast, stuck, stalled_windows)
        )
    finally:
        service.stop()
    if summary.accepted + summary.rejected != len(quotes):
        raise RuntimeError(
            f"the service applied {summary.accepted + summary.rejected} of {len(quotes)} ticks"
        )
    return len(quotes) / elapsed_s, [n / summary.accepted for n in received]


def _encoded_messages(quotes: Sequence[Tick]) -> list[bytes]:
    messages: list[bytes] = []
    for start in range(0, len(quotes), TICKS_PER_MESSAGE):
        requests, _ = to_requests(quotes[start : start + TICKS_PER_MESSAGE])
        messages.extend(request.SerializeToString() for request in requests)
    return messages


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
    depth_updates = depth_requests(depth)
    config = MarketDataConfig()
    without_fees = zero_fees(config)

    tick_p50, tick_p99, arbitrage_p99, arbitrage_p99_free, depth_p50, depth_p99 = [], [], [], [], [], []
    depth_levels_p50, depth_levels_p99 = [], []
    opportunities = opportunities_without_fees = 0
    for _ in range(repeats):
        summary, opportunities = tick_latencies(ticks, config)
        tick_p50.append(summary["p50"])
        tick_p99.append(summary["p99"])
        arbitrage_p99.append(arbitrage_latencies(ticks, config)["p99"])
        arbitrage_p99_free.append(arbitrage_latencies(ticks, without_fees)["p99"])
        depth_summary = depth_latencies(depth_updates, config)
        depth_p50.append(depth_summary["p50"])
        depth_p99.append(depth_summary["p99"])
        depth_levels_summary = depth_levels_latencies(depth_updates)
        depth_levels_p50.append(depth_levels_summary["p50"])
        depth_levels_p99.append(depth_levels_summary["p99"])
    _, opportunities_without_fees = tick_latencies(ticks, without_fees)

    rates, rejected = [], 0
    delivered, rates_10, stuck_slowdowns, buffering_slowdowns = [], [], [], []
    for _ in range(repeats):
        rate, rejected_now = grpc_ticks_per_s(quotes)
        rates.append(rate)
        rejected = max(rejected, rejected_now)
        _, (ratio,) = fan_out_run(quotes, fast=1, stuck=0)
        delivered.append(ratio)
        rate_10, ratios_10 = fan_out_run(quotes, fast=FAST_SUBSCRIBERS, stuck=0)
        rates_10.append(rate_10)
        delivered.append(min(ratios_10))
        # Against a rate taken right before it, so that load drifting on the machine cancels out.
        alone, _ = grpc_ticks_per_s(quotes)
        rate_stuck, _ = fan_out_run(quotes, fast=0, stuck=STUCK_SUBSCRIBERS)
        stuck_slowdowns.append(alone / rate_stuck)
        alone, _ = grpc_ticks_per_s(quotes)
        rate_buffering, _ = fan_out_run(quotes, fast=0, stuck=STUCK_SUBSCRIBERS, stalled_windows=False)
        buffering_slowdowns.append(alone / rate_buffering)

    return {
        "ticks": len(ticks),
        "tick_p50_us": statistics.median(tick_p50) / 1e3,
        "tick_p99_us": statistics.median(tick_p99) / 1e3,
        "arbitrage_p99_us": statistics.median(arbitrage_p99) / 1e3,
        "arbitrage_p99_us_without_fees": statistics.median(arbitrage_p99_free) / 1e3,
        "depth_updates": len(depth),
        "depth_p50_us": statistics.median(depth_p50) / 1e3,
        "depth_p99_us": statistics.median(depth_p99) / 1e3,
        "depth_levels_p50_us": statistics.median(depth_levels_p50) / 1e3,
        "depth_levels_p99_us": statistics.median(depth_levels_p99) / 1e3,
        "opportunities": opportunities,
        "opportunities_without_fees": opportunities_without_fees,
        "grpc_ticks": len(quotes),
        "grpc_rejected": rejected,
        "ticks_per_s": statistics.median(rates),
        "ticks_per_s_min": min(rates),
        "ticks_per_s_max": max(rates),
        "subscriber_delivered_ratio": min(delivered),
        "subscribers_10_ticks_per_s": statistics.median(rates_10),
        "stuck_subscribers_slowdown": statistics.median(stuck_slowdowns),
        "buffering_subscribers_slowdown": statistics.median(buffering_slowdowns),
        "grpc_echo_p50_us": grpc_echo_p50_ms() * 1e3,
        "tcp_floor_p50_us": tcp_floor_p50_ms() * 1e3,
        "repeats": repeats,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 5), indent=2))
