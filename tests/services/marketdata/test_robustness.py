"""The market data service under hostile or careless clients (issue #13 parts 2 and 6).

* Concurrent Subscribe/StreamArbitrage streams are capped per account, per service principal
  and per service (RESOURCE_EXHAUSTED with a QuotaFailure), and a slot comes back however its
  stream ends: cancelled, blocked on a client that never reads, or the client disconnected.
* GetSnapshot can never build a reply near gRPC's 64 MiB limit: depth_levels is capped and a
  reply is a page of at most so many symbols and bytes, with a cursor to the next.
* A depth update over the level limit is rejected before a Python object is made per level.
* Clients that never read cannot grow a service process or slow its feed more than 2x.
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import statistics
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hftgate.grpcserver import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES
from hftgate.security import load_suite_secret
from hftgate.v1 import common_pb2, marketdata_pb2
from services.marketdata.access import ApiKeyVerifier
from services.marketdata.bars import BarView
from services.marketdata.config import MAX_SNAPSHOT_REPLY_BYTES, MarketDataConfig
from services.marketdata.engine import MarketDataEngine, RejectReason, SymbolSnapshot
from services.marketdata.server import _snapshot_bytes_bound, _symbol_snapshot
from services.marketdata.streams import Caller, StreamLimitExceeded, StreamSlots
from services.marketdata.trade_ring import VwapResult
from tests.services.marketdata.helpers import api_key_metadata, channel, token_metadata
from tests.services.marketdata.test_security import Stub, now_ns, stream_code, suite

pb = marketdata_pb2
ALICE, BOB = Caller("account", "alice"), Caller("account", "bob")
GATEWAY = Caller("service", "gateway")


def _lookup(keys: dict[str, bytes]) -> Callable[[str], Awaitable[bytes | None]]:
    """The cache's apikey rows of ``keys`` (key -> account)."""
    secret = load_suite_secret()
    rows = {"apikey:" + secret.api_key_hash(key): account for key, account in keys.items()}

    async def lookup(row: str) -> bytes | None:
        return rows.get(row)

    return lookup


def _keys() -> ApiKeyVerifier:
    # Alice has two keys (a rotation's overlap): both count as the one account.
    keys = {"alice-key": b"alice", "alice-key-2": b"alice", "bob-key": b"bob"}
    return ApiKeyVerifier(load_suite_secret(), _lookup(keys))


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def _quota_failure(error: grpc.aio.AioRpcError) -> error_details_pb2.QuotaFailure:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    detail = error_details_pb2.QuotaFailure()
    assert status.details[0].Unpack(detail)
    return detail


async def _refused_stream(stream: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in stream:
            pass
    return refused.value


# --- stream slots, the domain -------------------------------------------------------------------
def test_slots_count_per_caller_and_service_and_a_refusal_takes_nothing() -> None:
    slots = StreamSlots(per_account=2, per_service_principal=3, total=5)
    held = [slots.acquire(ALICE), slots.acquire(ALICE)]
    with pytest.raises(StreamLimitExceeded) as refused:
        slots.acquire(ALICE)
    assert (refused.value.scope, refused.value.subject, refused.value.limit) == ("caller", "account:alice", 2)
    assert "account 'alice' already has 2 open streams" in refused.value.message
    assert slots.open_streams(ALICE) == 2 and slots.open_streams() == 2
    held += [slots.acquire(GATEWAY) for _ in range(3)]  # a service principal has its own limit
    with pytest.raises(StreamLimitExceeded) as full:
        slots.acquire(BOB)
    assert (full.value.scope, full.value.subject, full.value.limit) == ("service", "marketdata", 5)
    assert slots.open_streams(BOB) == 0 and slots.open_streams() == 5
    held[0].release()
    held[0].release()  # twice is harmless: it frees one slot, not two
    assert slots.open_streams(ALICE) == 1 and slots.open_streams() == 4
    bob = slots.acquire(BOB)
    for slot in (*held, bob):
        slot.release()
    assert slots.open_streams() == 0 and slots.callers() == 0
    assert slots.refused == {"caller": 1, "service": 1}


# --- stream caps through the service ------------------------------------------------------------
async def test_an_account_beyond_its_stream_limit_is_refused_and_a_cancelled_stream_frees_its_slot() -> None:
    async with suite(api_keys=_keys(), max_streams_per_account=2) as s:
        slots = s.engine.streams
        async with (
            channel(s.target, api_key_metadata("alice-key")) as a1,
            channel(s.target, api_key_metadata("alice-key-2")) as a2,
            channel(s.target, api_key_metadata("bob-key")) as b,
        ):
            first = Stub(a1).Subscribe(pb.SubscribeRequest())
            second = Stub(a2).StreamArbitrage(pb.StreamArbitrageRequest())  # the other key, same account
            await _until(lambda: slots.open_streams(ALICE) == 2)
            for extra in (
                Stub(a1).Subscribe(pb.SubscribeRequest()),
                Stub(a2).StreamArbitrage(pb.StreamArbitrageRequest()),
            ):
                error = await _refused_stream(extra)
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert (error.details() or "").startswith("account 'alice' already has 2 open streams")
                violation = _quota_failure(error).violations[0]
                assert violation.subject == "account:alice"
            assert slots.open_streams(ALICE) == 2
            assert s.engine.stats().subscribers == 1 and s.engine.stats().arbitrage_subscribers == 1
            # Another account and a service are not affected.
            bob = Stub(b).Subscribe(pb.SubscribeRequest())
            gateway = s["gateway"].Subscribe(pb.SubscribeRequest())
            await _until(lambda: slots.open_streams(BOB) == 1 and slots.open_streams(GATEWAY) == 1)
            # A cancelled stream gives its slot back, and the account may open another.
            first.cancel()
            await _until(lambda: slots.open_streams(ALICE) == 1)
            third = Stub(a1).Subscribe(pb.SubscribeRequest(send_initial_snapshot=True))
            await _until(lambda: slots.open_streams(ALICE) == 2)
            for stream in (second, third, bob, gateway):
                stream.cancel()
            await _until(lambda: slots.open_streams() == 0)
            assert s.engine.stats().subscribers == 0 and s.engine.stats().arbitrage_subscribers == 0


async def test_the_service_wide_stream_limit_refuses_every_caller_until_a_stream_ends() -> None:
    async with suite(max_streams=3) as s:
        slots = s.engine.streams
        open_ = [s["gateway"].Subscribe(pb.SubscribeRequest()) for _ in range(2)]
        open_.append(s["scaler"].StreamArbitrage(pb.StreamArbitrageRequest()))
        await _until(lambda: slots.open_streams() == 3)
        for who in ("gateway", "admin", "execution"):
            error = await _refused_stream(s[who].Subscribe(pb.SubscribeRequest()))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.details() == "the market data service has its maximum of 3 open streams; retry later"
            assert _quota_failure(error).violations[0].subject == "marketdata"
        open_.pop().cancel()
        await _until(lambda: slots.open_streams() == 2)
        admitted = s["admin"].StreamArbitrage(pb.StreamArbitrageRequest())
        await _until(lambda: slots.open_streams(Caller("service", "admin")) == 1)
        for stream in (*open_, admitted):
            stream.cancel()
        await _until(lambda: slots.open_streams() == 0)


async def test_a_service_principal_has_its_own_stream_limit() -> None:
    async with suite(max_streams_per_service_principal=2) as s:
        streams = [s["gateway"].Subscribe(pb.SubscribeRequest()) for _ in range(2)]
        await _until(lambda: s.engine.streams.open_streams(GATEWAY) == 2)
        error = await _refused_stream(s["gateway"].StreamArbitrage(pb.StreamArbitrageRequest()))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "service principal 'gateway' already has 2 open streams" in (error.details() or "")
        assert _quota_failure(error).violations[0].subject == "service:gateway"
        other = s["admin"].Subscribe(pb.SubscribeRequest())
        await _until(lambda: s.engine.streams.open_streams(Caller("service", "admin")) == 1)
        for stream in (*streams, other):
            stream.cancel()
        await _until(lambda: s.engine.streams.open_streams() == 0)


async def test_a_client_that_disconnects_frees_every_slot_it_held() -> None:
    async with suite(api_keys=_keys(), max_streams_per_account=3) as s:
        slots = s.engine.streams
        ch = channel(s.target, api_key_metadata("alice-key"))
        stub = Stub(ch)
        held = [stub.Subscribe(pb.SubscribeRequest()), stub.Subscribe(pb.SubscribeRequest())]
        held.append(stub.StreamArbitrage(pb.StreamArbitrageRequest(include_open=True)))
        await _until(lambda: slots.open_streams(ALICE) == 3)
        await ch.close()  # the whole connection goes: no cancel of each call
        await _until(lambda: slots.open_streams() == 0 and slots.callers() == 0)
        assert s.engine.stats().subscribers == 0 and s.engine.stats().arbitrage_subscribers == 0
        async with channel(s.target, api_key_metadata("alice-key")) as again:
            streams = [Stub(again).Subscribe(pb.SubscribeRequest()) for _ in range(3)]
            await _until(lambda: slots.open_streams(ALICE) == 3)
            for stream in streams:
                stream.cancel()


async def test_a_stream_blocked_on_a_client_that_never_reads_frees_its_slot_when_cancelled() -> None:
    # A log shorter than the 20,000 updates published, so that the bound below is reachable.
    async with suite(max_streams_per_service_principal=1, subscriber_buffer_updates=1_024) as s:
        slots = s.engine.streams
        stalled = s["gateway"].Subscribe(pb.SubscribeRequest())
        await _until(lambda: slots.open_streams(GATEWAY) == 1)
        # Updates the client never reads: the server writes them into the stream regardless (gRPC's
        # client transport buffers megabytes unread, so the writer is not necessarily blocked yet).
        await _publish(s["feed"], _alternating_quotes(symbols=50, rounds=200))
        buffer = next(iter(s.engine._subscribers))
        assert buffer.cursor > 0  # the writer took updates for this stream
        # Whatever it has not sent is bounded: the log's capacity plus one update per symbol.
        assert len(buffer) <= s.engine.config.subscriber_buffer_updates + 100, len(buffer)
        stalled.cancel()
        await _until(lambda: slots.open_streams() == 0)
        assert s.engine.stats().subscribers == 0
        fresh = s["gateway"].Subscribe(pb.SubscribeRequest(send_initial_snapshot=True))
        update = await asyncio.wait_for(fresh.read(), 5)
        assert isinstance(update, pb.MarketUpdate) and update.stream_sequence == 1
        fresh.cancel()


async def test_a_refused_api_key_opens_no_stream_and_takes_no_slot() -> None:
    async with suite(api_keys=_keys(), max_streams_per_account=1) as s:
        async with channel(s.target, api_key_metadata("mallory-key")) as ch:
            code, _ = await stream_code(Stub(ch).Subscribe(pb.SubscribeRequest()))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        # A request refused for its content takes no slot either.
        many = pb.SymbolFilter(symbols=[common_pb2.Symbol(venue="x", name=str(i)) for i in range(2_000)])
        async with channel(s.target, api_key_metadata("alice-key")) as ch:
            code, _ = await stream_code(Stub(ch).Subscribe(pb.SubscribeRequest(filter=many)))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert s.engine.streams.open_streams() == 0
            ok = Stub(ch).Subscribe(pb.SubscribeRequest())
            await _until(lambda: s.engine.streams.open_streams(ALICE) == 1)
            ok.cancel()


async def test_a_key_that_cannot_be_resolved_again_for_the_stream_is_unavailable_and_takes_no_slot() -> None:
    answers = iter([b"alice"])  # the access check resolves it; then the cache goes away

    async def flaky(row: str) -> bytes | None:
        try:
            return next(answers)
        except StopIteration:
            raise ConnectionError("cache down") from None

    async with suite(api_keys=ApiKeyVerifier(load_suite_secret(), flaky)) as s:
        async with channel(s.target, api_key_metadata("alice-key")) as ch:
            code, message = await stream_code(Stub(ch).Subscribe(pb.SubscribeRequest()))
        assert code == grpc.StatusCode.UNAVAILABLE
        assert message == "cannot verify the API key now (the cache service is unreachable); retry"
        assert s.engine.streams.open_streams() == 0 and s.engine.stats().subscribers == 0


# --- GetSnapshot bounds -------------------------------------------------------------------------
def _fill_depth(engine: MarketDataEngine, venue: str, symbol: str, levels: int) -> None:
    bids = [(100.0 - i * 0.01, 1.0 + i) for i in range(levels)]
    asks = [(100.01 + i * 0.01, 1.0 + i) for i in range(levels)]
    assert engine.on_depth(venue, symbol, now_ns(), 0, 0, True, bids, asks) == 0


def _bad_field(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    return str(detail.field_violations[0].field)


async def test_depth_levels_above_the_cap_is_invalid_argument_naming_the_field() -> None:
    async with suite(snapshot_max_depth_levels=500) as s:
        _fill_depth(s.engine, "binance-spot", "BTCUSDT", 600)
        for depth in (501, 2**31 - 1):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await s["admin"].GetSnapshot(pb.GetSnapshotRequest(depth_levels=depth))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert _bad_field(refused.value) == "depth_levels"
            assert refused.value.details() == (
                f"depth_levels {depth} is above the most a snapshot returns (500 per side)"
            )
        reply = await s["admin"].GetSnapshot(pb.GetSnapshotRequest(depth_levels=500))
        assert [len(reply.symbols[0].bids), len(reply.symbols[0].asks)] == [500, 500]


async def test_snapshots_page_by_symbol_count_and_every_symbol_comes_exactly_once() -> None:
    async with suite(snapshot_max_symbols=3) as s:
        names = [f"SYM{i:02d}USDT" for i in range(8)]
        for venue in ("binance-spot", "bybit"):
            for name in names:
                _fill_depth(s.engine, venue, name, 2)
        expected = sorted((venue, name) for venue in ("binance-spot", "bybit") for name in names)
        seen: list[tuple[str, str]] = []
        request = pb.GetSnapshotRequest(depth_levels=2)
        pages = 0
        while True:
            reply = await s["admin"].GetSnapshot(request)
            pages += 1
            assert 0 < len(reply.symbols) <= 3
            seen += [(x.symbol.venue, x.symbol.name) for x in reply.symbols]
            if not reply.truncated:
                assert not reply.HasField("next_start_after")
                break
            assert (reply.next_start_after.venue, reply.next_start_after.name) == seen[-1]
            request = pb.GetSnapshotRequest(depth_levels=2, start_after=reply.next_start_after)
        assert seen == expected and pages == math.ceil(len(expected) / 3)
        # A filter pages the same way; start_after need not be a tracked symbol.
        reply = await s["admin"].GetSnapshot(
            pb.GetSnapshotRequest(
                filter=pb.SymbolFilter(symbols=[common_pb2.Symbol(venue="bybit")]),
                start_after=common_pb2.Symbol(venue="bybit", name="SYM03"),
            )
        )
        assert [x.symbol.name for x in reply.symbols] == names[3:6] and reply.truncated
        # A cursor past the end is an empty, final page.
        reply = await s["admin"].GetSnapshot(pb.GetSnapshotRequest(start_after=common_pb2.Symbol(venue="zz")))
        assert list(reply.symbols) == [] and not reply.truncated


async def test_a_snapshot_reply_stays_within_its_byte_budget_however_deep_and_wide() -> None:
    budget = 256 * 1024
    async with suite(snapshot_max_reply_bytes=budget) as s:
        names = [f"C{i:03d}USDT" for i in range(40)]
        for name in names:
            _fill_depth(s.engine, "bybit", name, 1_000)  # ~40 KB a symbol at full depth
        collected: list[str] = []
        request = pb.GetSnapshotRequest(depth_levels=1_000)
        while True:
            reply = await s["admin"].GetSnapshot(request)
            assert sum(pb.GetSnapshotResponse(symbols=[x]).ByteSize() for x in reply.symbols) <= budget
            assert reply.ByteSize() <= budget + 1024
            collected += [x.symbol.name for x in reply.symbols]
            if not reply.truncated:
                break
            request = pb.GetSnapshotRequest(depth_levels=1_000, start_after=reply.next_start_after)
        assert collected == names
        # A page holds at least one symbol, even one larger than the whole budget.
    async with suite(snapshot_max_reply_bytes=1_000) as s:
        _fill_depth(s.engine, "bybit", "A", 1_000)
        _fill_depth(s.engine, "bybit", "B", 1_000)
        reply = await s["admin"].GetSnapshot(pb.GetSnapshotRequest(depth_levels=1_000))
        assert [x.symbol.name for x in reply.symbols] == ["A"] and reply.truncated


def test_the_default_limits_cannot_build_a_reply_near_the_grpc_message_limit() -> None:
    config = MarketDataConfig()
    worst_symbol = _snapshot_bytes_bound(
        _extreme_snapshot(
            "é" * config.max_venue_chars, "€" * config.max_symbol_chars, config.snapshot_max_depth_levels
        )
    )
    assert config.snapshot_max_reply_bytes + worst_symbol < MAX_MESSAGE_BYTES // 2
    # Nor can any configuration: the config refuses limits above the hard ones.
    assert MAX_SNAPSHOT_REPLY_BYTES + _snapshot_bytes_bound(
        _extreme_snapshot("v" * 64, "s" * 64, 100_000)
    ) < (MAX_MESSAGE_BYTES - 1024 * 1024)
    for bad in (
        {"snapshot_max_reply_bytes": MAX_SNAPSHOT_REPLY_BYTES + 1},
        {"snapshot_max_depth_levels": 100_001},
    ):
        with pytest.raises(ValueError, match="exceeds"):
            MarketDataConfig(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_streams must be positive"):
        MarketDataConfig(max_streams=0)


def _extreme_snapshot(venue: str, symbol: str, levels: int, bars: int = 3) -> SymbolSnapshot:
    big = 2**63 - 1
    vwap = VwapResult(1e308, -1e308, big, -(2**63), big, big, big, True)
    bar = BarView(big, -(2**63), 1e-308, -1e308, 1e308, 1.5, 1e308, big, 1e308, True)
    return SymbolSnapshot(
        venue,
        symbol,
        -1e308,
        1e308,
        1e-308,
        -0.1,
        -(2**63),
        [(1e308 + i, -1e308) for i in range(levels)],
        [(-1e308, 1e-300) for _ in range(levels)],
        (1e308, -1e308, 2, -(2**63), 2**64 - 1),
        vwap,
        vwap,
        [bar] * bars,
        big,
        -(2**63),
        2**64 - 1,
    )


@pytest.mark.parametrize(
    ("venue", "symbol", "levels", "bars"),
    [("", "", 0, 0), ("v" * 64, "s" * 64, 3, 2), ("é" * 64, "\U0001f600" * 64, 1_000, 5), ("a", "b", 1, 40)],
)
def test_the_size_bound_of_a_snapshot_entry_is_never_below_its_encoded_size(
    venue: str, symbol: str, levels: int, bars: int
) -> None:
    snap = _extreme_snapshot(venue, symbol, levels, bars)
    # The message the servicer builds from it, as one entry of a reply.
    encoded = pb.GetSnapshotResponse(symbols=[_symbol_snapshot(snap)]).ByteSize()
    assert _snapshot_bytes_bound(snap) >= encoded, (venue, symbol, levels, bars)
    # ... and not far above it, so pages stay full.
    assert _snapshot_bytes_bound(snap) <= 2 * encoded + 400


# --- oversized depth updates ----------------------------------------------------------------------
class _Untouchable(Sequence[tuple[float, float]]):
    """Levels that may be counted but never read."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[tuple[float, float]]:
        raise AssertionError("the levels of an oversized update were read")

    def __getitem__(self, index: Any) -> Any:
        raise AssertionError("the levels of an oversized update were read")


def test_an_oversized_depth_update_is_rejected_on_its_count_without_reading_a_level() -> None:
    engine = MarketDataEngine(MarketDataConfig(depth_max_levels_per_update=10))
    reason = engine.on_depth("bybit", "XRPUSDT", now_ns(), 0, 1, True, _Untouchable(6), _Untouchable(5))
    assert reason == RejectReason.DEPTH_TOO_LARGE
    assert engine.stats().rejected_by_reason == {RejectReason.DEPTH_TOO_LARGE: 1}


async def test_a_depth_update_at_the_level_limit_is_applied_and_one_level_more_is_rejected() -> None:
    def update(bids: int, asks: int, sequence: int) -> marketdata_pb2.DepthUpdate:
        return pb.DepthUpdate(
            venue="bybit",
            symbol="XRPUSDT",
            exchange_ts_ns=now_ns(),
            sequence=sequence,
            is_snapshot=True,
            bids=[pb.PriceLevel(price=1.0 - i * 0.01, size=1.0) for i in range(bids)],
            asks=[pb.PriceLevel(price=1.01 + i * 0.01, size=1.0) for i in range(asks)],
        )

    async with suite(depth_max_levels_per_update=10) as s:

        async def requests() -> AsyncIterator[marketdata_pb2.PublishQuotesRequest]:
            yield pb.PublishQuotesRequest(depth_updates=[update(5, 5, 1), update(6, 5, 2), update(0, 11, 3)])

        summary = await s["feed"].PublishQuotes(requests())
        assert (summary.accepted, summary.rejected) == (1, 2)
        assert [(r.reason, r.count) for r in summary.rejected_by_reason] == [
            (pb.TICK_REJECT_REASON_DEPTH_TOO_LARGE, 2)
        ]
        reply = await s["admin"].GetSnapshot(pb.GetSnapshotRequest(depth_levels=10))
        assert [(len(x.bids), len(x.asks)) for x in reply.symbols] == [(5, 5)]


async def test_an_oversized_depth_update_through_the_service_makes_no_object_per_level() -> None:
    levels = 400_000
    update = pb.DepthUpdate(
        venue="bybit",
        symbol="XRPUSDT",
        exchange_ts_ns=now_ns(),
        sequence=1,
        is_snapshot=True,
        bids=[pb.PriceLevel(price=1.0 - i * 1e-6, size=1.0) for i in range(levels)],
    )
    data = pb.PublishQuotesRequest(depth_updates=[update]).SerializeToString()
    del update
    async with suite() as s:
        async with grpc.aio.insecure_channel(s.target, options=CHANNEL_OPTIONS) as ch:
            publish = ch.stream_unary("/hftgate.v1.MarketDataService/PublishQuotes")

            async def one() -> AsyncIterator[bytes]:
                yield data

            tracemalloc.start()
            try:
                raw = await publish(one(), metadata=token_metadata("feed"))
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
        summary = pb.PublishSummary.FromString(raw)
        assert (summary.accepted, summary.rejected) == (0, 1)
        assert summary.rejected_by_reason[0].reason == pb.TICK_REJECT_REASON_DEPTH_TOO_LARGE
        # The request's own bytes (~8 MB, received once) and little more; a (price, size) tuple
        # per level would add ~40 MB.
        assert peak < 2 * len(data) + 4 * 1024 * 1024, (peak, len(data))


# --- clients that never read ----------------------------------------------------------------------
def _alternating_quotes(symbols: int, rounds: int, start_ns: int | None = None) -> list[marketdata_pb2.Quote]:
    """Quotes on two venues per symbol that open and close a cross-venue opportunity each round."""
    ts = start_ns if start_ns is not None else now_ns() - 60 * 1_000_000_000
    quotes = []
    for r in range(rounds):
        for i in range(symbols):
            ts += 1_000
            name = f"Q{i:03d}USDT"
            quotes.append(
                pb.Quote(
                    venue="binance-spot",
                    symbol=name,
                    exchange_ts_ns=ts,
                    bid_price=100.0,
                    bid_size=1.0,
                    ask_price=100.1,
                    ask_size=1.0,
                )
            )
            high = r % 2 == 0  # bybit's bid above binance's ask (after fees), then back
            quotes.append(
                pb.Quote(
                    venue="bybit",
                    symbol=name,
                    exchange_ts_ns=ts,
                    bid_price=101.0 if high else 99.9,
                    bid_size=2.0,
                    ask_price=101.1 if high else 100.0,
                    ask_size=2.0,
                )
            )
    return quotes


async def _publish(stub: Stub, quotes: Sequence[marketdata_pb2.Quote], per_message: int = 1_000) -> float:
    """Publish ``quotes`` on one stream; the seconds until the summary (every tick applied)."""

    async def requests() -> AsyncIterator[marketdata_pb2.PublishQuotesRequest]:
        for i in range(0, len(quotes), per_message):
            yield pb.PublishQuotesRequest(quotes=quotes[i : i + per_message])

    started = time.perf_counter()
    summary = await stub.PublishQuotes(requests())
    elapsed = time.perf_counter() - started
    assert summary.rejected == 0 and summary.accepted == len(quotes), summary
    return elapsed


@pytest.mark.timeout(180)
async def test_clients_that_never_read_cannot_grow_the_service_or_slow_its_feed_more_than_2x(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    import psutil

    from hftgate import supervisor

    spec = next(s for s in supervisor.available_services() if s.name == "marketdata")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HFTGATE_STATE_DIR": str(tmp_path), spec.port_variable: str(port)}
    running = await asyncio.to_thread(supervisor.start_services, [spec], env, 60.0)
    try:
        service = psutil.Process(running[0].process.pid)
        target = running[0].address
        async with (
            channel(target, token_metadata("feed")) as feed_channel,
            # The readers' channel keeps HTTP/2's fixed 64 KiB stream window (no BDP probing, which
            # grows it to megabytes): a stream that never reads then stops taking bytes within the
            # fill below, instead of reading into its transport buffer, as a fast reader would,
            # for several batches more.
            channel(target, token_metadata("gateway"), options=_FIXED_WINDOW) as reader_channel,
        ):
            feed, reader = Stub(feed_channel), Stub(reader_channel)
            symbols, rounds = 100, 50  # 10,000 quotes a batch, each opening or closing an opportunity
            clock = [now_ns() - 3_600 * 1_000_000_000]

            def batch() -> list[marketdata_pb2.Quote]:
                quotes = _alternating_quotes(symbols, rounds, clock[0])
                clock[0] = quotes[-1].exchange_ts_ns
                return quotes

            for _ in range(3):  # warm up: every symbol and check exists, the code paths are hot
                await _publish(feed, batch())

            async def stats() -> marketdata_pb2.IngestStats:
                return (await reader.GetSnapshot(pb.GetSnapshotRequest(filter=_NOTHING))).stats

            async def wait_for_streams(subscribers: int, arbitrage: int) -> None:
                deadline = time.monotonic() + 10
                while (s := await stats()).subscribers != subscribers or s.arbitrage_subscribers != arbitrage:
                    assert time.monotonic() < deadline, s
                    await asyncio.sleep(0.05)

            # Rounds of batches without streams, then with streams that never read, interleaved so
            # that the machine's own drift (a slow minute on a shared VM) falls on both sides.
            baseline: list[float] = []
            loaded: list[float] = []
            growth = 0
            for _ in range(4):
                baseline += [await _publish(feed, batch()) for _ in range(3)]
                # Streams that never read: three Subscribe (one with its initial snapshot), two
                # StreamArbitrage (one with the open opportunities).
                stalled = [
                    reader.Subscribe(pb.SubscribeRequest()),
                    reader.Subscribe(pb.SubscribeRequest(send_initial_snapshot=True)),
                    reader.Subscribe(
                        pb.SubscribeRequest(
                            filter=pb.SymbolFilter(symbols=[common_pb2.Symbol(venue="bybit")])
                        )
                    ),
                    reader.StreamArbitrage(pb.StreamArbitrageRequest()),
                    reader.StreamArbitrage(pb.StreamArbitrageRequest(include_open=True)),
                ]
                await wait_for_streams(3, 2)
                # Fill every buffer and the transport's windows, then measure. Until they are full
                # the streams still take bytes, as readers do (measured here: the first two or
                # three batches after opening are slower, then the time settles).
                for _ in range(4):
                    await _publish(feed, batch())
                rss_before = service.memory_info().rss
                loaded += [await _publish(feed, batch()) for _ in range(3)]
                growth += service.memory_info().rss - rss_before
                for stream in stalled:
                    stream.cancel()
                await wait_for_streams(0, 0)
            # 120,000 quotes more, each fanned out to streams that read nothing: held is what the
            # bounded buffers held already (an unbounded one would add ~30 MB per stream).
            assert growth < 16 * 1024 * 1024, f"resident memory grew {growth / 1e6:.1f} MB"
            ratio = statistics.median(loaded) / statistics.median(baseline)
            assert ratio < 2.0, (ratio, baseline, loaded)
            # Those clients left with the service's writes waiting on them: a client leaving, not
            # a server error (gRPC logs an exception escaping a handler at ERROR).
            errors = [line for line in capfd.readouterr().err.splitlines() if " ERROR " in line]
            assert not errors, errors[:3]
    finally:
        await asyncio.to_thread(supervisor.stop_services, running)


_FIXED_WINDOW = (("grpc.http2.bdp_probe", 0),)
_NOTHING = pb.SymbolFilter(symbols=[common_pb2.Symbol(venue="none", name="none")])
