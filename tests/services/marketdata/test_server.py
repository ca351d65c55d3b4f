"""The service over real gRPC on a free port: publish, queries, errors, conflating streams, arbitrage."""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hftgate.v1 import common_pb2, marketdata_pb2, marketdata_pb2_grpc
from services.marketdata.config import MarketDataConfig
from services.marketdata.engine import MarketDataEngine, RejectReason
from services.marketdata.server import start
from tests.services.marketdata.helpers import channel, token_metadata
from tests.services.marketdata.test_bad_input import DEPTH_CASES

pb = marketdata_pb2
NOW = time.time_ns()
BTC = common_pb2.Symbol(venue="binance-spot", name="BTCUSDT")


@dataclass
class Service:
    engine: MarketDataEngine
    # A market data feed's client ("feed": publishes every external venue, reads everything).
    stub: marketdata_pb2_grpc.MarketDataServiceStub
    # The execution service's client ("execution": publishes venue hftgate).
    execution: marketdata_pb2_grpc.MarketDataServiceStub
    # host:port of the service, for clients with channel options of their own.
    target: str = ""


@asynccontextmanager
async def service(**config: object) -> AsyncIterator[Service]:
    cfg = MarketDataConfig(port=0, **config)  # type: ignore[arg-type]
    engine = MarketDataEngine(cfg)
    running = await start(cfg, engine)
    target = f"127.0.0.1:{running.port}"
    try:
        async with (
            channel(target, token_metadata("feed")) as feed,
            channel(target, token_metadata("execution")) as execution,
        ):
            yield Service(
                engine,
                marketdata_pb2_grpc.MarketDataServiceStub(feed),
                marketdata_pb2_grpc.MarketDataServiceStub(execution),
                target,
            )
    finally:
        await running.stop(0)


def quote(
    bid: float, ask: float, ts: int, venue: str = "binance-spot", **extra: object
) -> marketdata_pb2.Quote:
    return pb.Quote(
        venue=venue,
        symbol="BTCUSDT",
        exchange_ts_ns=ts,
        receive_ts_ns=ts,
        bid_price=bid,
        bid_size=1.0,
        ask_price=ask,
        ask_size=2.0,
        **extra,  # type: ignore[arg-type]
    )


async def publish_quotes(
    stub: marketdata_pb2_grpc.MarketDataServiceStub, *messages: list
) -> marketdata_pb2.PublishSummary:  # type: ignore[type-arg]
    async def requests() -> AsyncIterator[marketdata_pb2.PublishQuotesRequest]:
        for quotes in messages:
            yield pb.PublishQuotesRequest(quotes=quotes)

    return await stub.PublishQuotes(requests())


async def publish_trades(
    stub: marketdata_pb2_grpc.MarketDataServiceStub, trades: list
) -> marketdata_pb2.PublishSummary:  # type: ignore[type-arg]
    async def requests() -> AsyncIterator[marketdata_pb2.PublishTradesRequest]:
        yield pb.PublishTradesRequest(trades=trades)

    return await stub.PublishTrades(requests())


async def eventually(condition, what: str) -> None:  # type: ignore[no-untyped-def]
    for _ in range(500):
        if await condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_bad_ticks_are_counted_per_reason_and_the_stream_carries_on() -> None:
    async with service() as svc:
        summary = await publish_quotes(
            svc.stub,
            [quote(100.0, 101.0, NOW - 2000), quote(math.nan, 101.0, NOW), quote(101.0, 100.0, NOW)],
            [quote(100.0, 101.0, NOW, venue="nowhere"), quote(100.5, 101.0, NOW - 1000)],
        )
        reasons = {pb.TickRejectReason.Name(r.reason): r.count for r in summary.rejected_by_reason}
        assert (summary.accepted, summary.rejected, summary.messages) == (2, 3, 2)
        assert reasons == {
            "TICK_REJECT_REASON_NOT_FINITE": 1,
            "TICK_REJECT_REASON_CROSSED": 1,
            "TICK_REJECT_REASON_UNKNOWN_VENUE": 1,
        }
        snapshot = await svc.stub.GetSnapshot(pb.GetSnapshotRequest())
        assert [(s.symbol.venue, s.symbol.name, s.top.bid_price) for s in snapshot.symbols] == [
            ("binance-spot", "BTCUSDT", 100.5)
        ]
        assert (snapshot.stats.accepted, snapshot.stats.rejected) == (2, 3)


async def test_trades_feed_snapshot_bars_and_vwap() -> None:
    second = 1_000_000_000
    start_ns = (NOW // (60 * second) - 2) * 60 * second  # two minutes ago, minute-aligned
    trades = [
        pb.Trade(
            venue="hftgate",
            symbol="BTCUSDT",
            exchange_ts_ns=start_ns + 100,
            trade_id=1,
            price=10.0,
            size=1.0,
            aggressor_side=common_pb2.SIDE_BUY,
        ),
        pb.Trade(
            venue="hftgate",
            symbol="BTCUSDT",
            exchange_ts_ns=start_ns + 200,
            trade_id=2,
            price=12.0,
            size=3.0,
            aggressor_side=common_pb2.SIDE_SELL,
        ),
        pb.Trade(
            venue="hftgate",
            symbol="BTCUSDT",
            exchange_ts_ns=start_ns + 2 * second,
            trade_id=3,
            price=11.0,
            size=2.0,
        ),
    ]
    async with service() as svc:
        summary = await publish_trades(svc.execution, trades)
        assert summary.accepted == 3
        symbol = common_pb2.Symbol(venue="hftgate", name="BTCUSDT")
        bars = await svc.stub.GetBars(pb.GetBarsRequest(symbol=symbol, interval_ms=1000, include_open=True))
        assert [
            (b.start_ns, b.open, b.high, b.low, b.close, b.volume, b.trades, b.closed) for b in bars.bars
        ] == [
            (start_ns, 10.0, 12.0, 10.0, 12.0, 4.0, 2, True),
            (start_ns + 2 * second, 11.0, 11.0, 11.0, 11.0, 2.0, 1, False),
        ]
        minute = await svc.stub.GetBars(
            pb.GetBarsRequest(symbol=symbol, interval_ms=60_000, include_open=True)
        )
        assert [(b.open, b.close, b.volume, b.trades) for b in minute.bars] == [(10.0, 11.0, 6.0, 3)]
        vwap = await svc.stub.GetVwap(pb.GetVwapRequest(symbol=symbol, window_ns=second, last_n=2))
        assert (vwap.by_time.trades, vwap.by_time.vwap) == (1, 11.0)
        assert vwap.by_count.vwap == pytest.approx((36 + 22) / 5)
        snapshot = await svc.stub.GetSnapshot(pb.GetSnapshotRequest(filter=pb.SymbolFilter(symbols=[symbol])))
        (snap,) = snapshot.symbols
        assert (snap.last_trade.price, snap.last_trade.trade_id, snap.trades) == (11.0, 3, 3)
        assert snap.vwap_by_time.vwap == pytest.approx((10 + 36 + 22) / 6)
        assert [b.interval_ms for b in snap.current_bars] == [1000, 60_000]


async def test_depth_snapshot_then_update_is_served_best_first() -> None:
    async with service() as svc:

        async def requests() -> AsyncIterator[marketdata_pb2.PublishQuotesRequest]:
            levels = pb.PriceLevel
            yield pb.PublishQuotesRequest(
                depth_updates=[
                    pb.DepthUpdate(
                        venue="bybit",
                        symbol="XRPUSDT",
                        exchange_ts_ns=NOW,
                        sequence=1,
                        is_snapshot=True,
                        bids=[levels(price=1.0, size=5), levels(price=1.1, size=6)],
                        asks=[levels(price=1.3, size=7), levels(price=1.2, size=8)],
                    ),
                    pb.DepthUpdate(
                        venue="bybit",
                        symbol="XRPUSDT",
                        exchange_ts_ns=NOW,
                        sequence=2,
                        bids=[levels(price=1.1, size=0)],
                        asks=[levels(price=1.25, size=1)],
                    ),
                ]
            )

        assert (await svc.stub.PublishQuotes(requests())).accepted == 2
        snapshot = await svc.stub.GetSnapshot(pb.GetSnapshotRequest(depth_levels=2))
        (snap,) = snapshot.symbols
        assert [(lvl.price, lvl.size) for lvl in snap.bids] == [(1.0, 5.0)]
        assert [(lvl.price, lvl.size) for lvl in snap.asks] == [(1.2, 8.0), (1.25, 1.0)]
        # No top-of-book feed for this symbol: its top comes from the depth book.
        assert (snap.top.bid_price, snap.top.ask_price) == (1.0, 1.2)


async def test_depth_levels_are_the_ones_protobuf_decodes_from_the_bytes_as_sent() -> None:
    # Written field by field: what protobuf's encoder never writes but its decoder takes. The
    # server reads the levels from the request's own bytes, so they must be read as protobuf
    # decodes them: an unknown group inside a level, a price given twice (the last wins), a size
    # sent with another wire type (an unknown field: the level has size 0, a deletion), an
    # unknown field between the updates, the quotes after the updates on the wire.
    def field(number: int, wire: int, payload: bytes) -> bytes:
        return bytes([number << 3 | wire]) + (bytes([len(payload)]) if wire == 2 else b"") + payload

    def number(number: int, value: float) -> bytes:
        return field(number, 1, struct.pack("<d", value))

    def update(sequence: int, is_snapshot: bool, bids: list[bytes], asks: list[bytes]) -> bytes:
        head = field(1, 2, b"bybit") + field(2, 2, b"XRPUSDT") + field(3, 0, _varint(NOW))
        head += field(5, 0, bytes([sequence])) + field(6, 0, bytes([int(is_snapshot)]))
        return field(
            2, 2, head + b"".join(field(7, 2, b) for b in bids) + b"".join(field(8, 2, a) for a in asks)
        )

    group = bytes([9 << 3 | 3]) + field(1, 0, b"\x05") + bytes([9 << 3 | 4])
    snapshot = update(
        1,
        True,
        bids=[number(1, 1.0) + group + number(2, 5.0), number(1, 7.0) + number(1, 1.1) + number(2, 6.0)],
        asks=[number(2, 8.0) + number(1, 1.2), number(1, 1.3) + number(2, 7.0)],
    )
    diff = update(2, False, bids=[number(1, 1.1) + field(2, 5, b"\x00\x00\x80\x3f")], asks=[])
    quote_bytes = field(1, 2, pb.Quote(venue="binance-spot", symbol="BTCUSDT").SerializeToString())
    data = snapshot + field(15, 0, b"\x01") + diff + quote_bytes
    decoded = pb.PublishQuotesRequest.FromString(data)
    assert [len(d.bids) for d in decoded.depth_updates] == [2, 1] and len(decoded.quotes) == 1
    assert decoded.depth_updates[1].bids[0].size == 0.0  # the size sent as fixed32 is unknown

    async with service() as svc:
        async with grpc.aio.insecure_channel(svc.target) as ch:
            publish = ch.stream_unary(
                "/hftgate.v1.MarketDataService/PublishQuotes",
                request_serializer=None,  # the bytes as written here
                response_deserializer=pb.PublishSummary.FromString,
            )

            async def one() -> AsyncIterator[bytes]:
                yield data

            summary = await publish(one(), metadata=token_metadata("feed"))
        # The quote is refused (it has no prices); both depth updates are applied.
        assert (summary.accepted, summary.rejected, summary.messages) == (2, 1, 1)
        snap = next(
            s
            for s in (await svc.stub.GetSnapshot(pb.GetSnapshotRequest(depth_levels=5))).symbols
            if s.symbol.venue == "bybit"
        )
        assert [(lvl.price, lvl.size) for lvl in snap.bids] == [(1.0, 5.0)]
        assert [(lvl.price, lvl.size) for lvl in snap.asks] == [(1.2, 8.0), (1.3, 7.0)]


async def test_a_level_whose_price_came_with_another_wire_type_is_refused_as_protobuf_reads_it() -> None:
    # Price 1.5 sent as a fixed32: protobuf keeps it as an unknown field, so the level's price is
    # 0: INVALID_PRICE, counted, and the stream goes on.
    level = bytes([1 << 3 | 5]) + struct.pack("<f", 1.5) + bytes([2 << 3 | 1]) + struct.pack("<d", 2.0)
    bad = pb.DepthUpdate(venue="bybit", symbol="XRPUSDT", exchange_ts_ns=NOW, sequence=1).SerializeToString()
    bad += bytes([7 << 3 | 2, len(level)]) + level
    good = pb.DepthUpdate(
        venue="bybit",
        symbol="XRPUSDT",
        exchange_ts_ns=NOW,
        sequence=2,
        bids=[pb.PriceLevel(price=1.0, size=1.0)],
    ).SerializeToString()
    data = b"".join(bytes([2 << 3 | 2, len(u)]) + u for u in (bad, good))
    assert pb.PublishQuotesRequest.FromString(data).depth_updates[0].bids[0].price == 0.0
    async with service() as svc:
        async with grpc.aio.insecure_channel(svc.target) as ch:
            publish = ch.stream_unary(
                "/hftgate.v1.MarketDataService/PublishQuotes",
                request_serializer=None,  # the bytes as written here
                response_deserializer=pb.PublishSummary.FromString,
            )

            async def one() -> AsyncIterator[bytes]:
                yield data

            summary = await publish(one(), metadata=token_metadata("feed"))
        assert (summary.accepted, summary.rejected) == (1, 1)
        assert [(r.reason, r.count) for r in summary.rejected_by_reason] == [
            (pb.TICK_REJECT_REASON_INVALID_PRICE, 1)
        ]


@pytest.mark.parametrize(("levels", "reason"), DEPTH_CASES)
async def test_a_bad_depth_update_through_the_service_is_refused_for_the_engines_reason(
    levels: dict,  # type: ignore[type-arg]
    reason: RejectReason,
) -> None:
    # The levels are read and checked in one C call from the request's bytes: the same reasons,
    # in the same order, as the engine's own check of (price, size) pairs (test_bad_input).
    def update(
        sequence: int, bids: list[tuple[float, float]], asks: list[tuple[float, float]]
    ) -> pb.DepthUpdate:
        return pb.DepthUpdate(
            venue="bybit",
            symbol="XRPUSDT",
            exchange_ts_ns=NOW,
            sequence=sequence,
            is_snapshot=sequence == 1,
            bids=[pb.PriceLevel(price=p, size=s) for p, s in bids],
            asks=[pb.PriceLevel(price=p, size=s) for p, s in asks],
        )

    async with service(depth_max_levels_per_update=20) as svc:

        async def requests() -> AsyncIterator[marketdata_pb2.PublishQuotesRequest]:
            yield pb.PublishQuotesRequest(
                depth_updates=[
                    update(1, [(99.0, 1.0)], [(101.0, 1.0)]),
                    update(2, levels.get("bids", []), levels.get("asks", [])),
                ]
            )

        summary = await svc.stub.PublishQuotes(requests())
        assert (summary.accepted, summary.rejected) == (1, 1)
        assert [(r.reason, r.count) for r in summary.rejected_by_reason] == [(int(reason), 1)]
        (snap,) = (await svc.stub.GetSnapshot(pb.GetSnapshotRequest(depth_levels=10))).symbols
        assert [(lvl.price, lvl.size) for lvl in snap.bids] == [(99.0, 1.0)]
        assert [(lvl.price, lvl.size) for lvl in snap.asks] == [(101.0, 1.0)]


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def bad_request_field(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    return detail.field_violations[0].field


async def test_query_errors_are_precise_statuses() -> None:
    async with service() as svc:
        await publish_quotes(svc.stub, [quote(100.0, 101.0, NOW)])
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await svc.stub.GetVwap(pb.GetVwapRequest(symbol=common_pb2.Symbol(name="BTCUSDT")))
        assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_field(missing.value) == "symbol"
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await svc.stub.GetBars(
                pb.GetBarsRequest(
                    symbol=common_pb2.Symbol(venue="binance-spot", name="DOGEUSDT"), interval_ms=1000
                )
            )
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert "DOGEUSDT" in (unknown.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as interval:
            await svc.stub.GetBars(pb.GetBarsRequest(symbol=BTC, interval_ms=300_000))
        assert interval.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_field(interval.value) == "interval_ms"


async def test_slow_subscriber_gets_conflated_updates_with_consistent_sequences() -> None:
    total = 500
    async with service(subscriber_buffer_updates=4) as svc:
        await publish_quotes(svc.stub, [quote(100.0, 101.0, NOW - 10_000)])
        stream = svc.stub.Subscribe(pb.SubscribeRequest(send_initial_snapshot=True))
        first = await stream.read()
        assert (first.kind, first.stream_sequence, first.symbol_sequence) == (pb.UPDATE_KIND_SNAPSHOT, 1, 1)
        # One message of 500 quotes is one uninterrupted run of the engine: the writer cannot
        # drain in between, so the subscriber falls behind after 4 updates.
        quotes = [quote(100.0 + i * 0.01, 101.0 + i * 0.01, NOW - 9_000 + i) for i in range(total)]
        assert (await publish_quotes(svc.stub, quotes)).accepted == total
        updates = []
        while not updates or updates[-1].symbol_sequence < total + 1:
            updates.append(await stream.read())
        assert [u.stream_sequence for u in updates] == list(range(2, len(updates) + 2))
        assert sum(u.conflated + 1 for u in updates) == total
        previous = first.symbol_sequence
        for u in updates:
            assert u.symbol_sequence - previous == u.conflated + 1
            previous = u.symbol_sequence
        assert len(updates) < total and max(u.conflated for u in updates) > 0
        assert updates[-1].top.bid_price == pytest.approx(100.0 + (total - 1) * 0.01)
        stream.cancel()


async def test_a_subscriber_that_never_reads_does_not_block_ingest_and_disconnect_frees_it() -> None:
    async with service(subscriber_buffer_updates=8) as svc:
        await publish_quotes(svc.stub, [quote(100.0, 101.0, NOW - 100_000)])
        idle = svc.stub.Subscribe(pb.SubscribeRequest(send_initial_snapshot=True))
        await idle.read()  # registered; never read again
        messages = [[quote(100.0, 101.0, NOW - 90_000 + m * 1000 + i) for i in range(500)] for m in range(40)]
        summary = await publish_quotes(svc.stub, *messages)
        assert summary.accepted == 40 * 500
        state = svc.engine.get("binance-spot", "BTCUSDT")
        (buffer,) = state.subscribers
        assert len(buffer) <= 8 + 1  # capacity plus one entry per symbol
        idle.cancel()

        async def freed() -> bool:
            stats = (await svc.stub.GetSnapshot(pb.GetSnapshotRequest())).stats
            return stats.subscribers == 0

        await eventually(freed, "the cancelled subscriber is forgotten")
        assert state.subscribers == []
        assert len(buffer) == 0


async def test_subscribe_filter_selects_venue_and_symbol() -> None:
    async with service() as svc:
        await publish_quotes(
            svc.stub, [quote(100.0, 101.0, NOW), quote(100.0, 101.0, NOW, venue="binance-usdm")]
        )
        only_usdm = pb.SymbolFilter(symbols=[common_pb2.Symbol(venue="binance-usdm")])
        stream = svc.stub.Subscribe(pb.SubscribeRequest(filter=only_usdm, send_initial_snapshot=True))
        first = await stream.read()
        assert (first.symbol.venue, first.symbol.name) == ("binance-usdm", "BTCUSDT")
        await publish_quotes(
            svc.stub, [quote(100.2, 101.0, NOW + 1), quote(100.3, 101.0, NOW + 1, venue="binance-usdm")]
        )
        second = await stream.read()
        assert (second.symbol.venue, second.top.bid_price, second.kind) == (
            "binance-usdm",
            100.3,
            pb.UPDATE_KIND_QUOTE,
        )
        stream.cancel()


async def test_stream_arbitrage_sends_one_event_on_open_and_one_on_close() -> None:
    fees = ("venue-a=10", "venue-b=5")
    async with service(venue_taker_fees_bps=fees) as svc:
        stream = svc.stub.StreamArbitrage(pb.StreamArbitrageRequest())

        async def registered() -> bool:
            return (await svc.stub.GetSnapshot(pb.GetSnapshotRequest())).stats.arbitrage_subscribers == 1

        await eventually(registered, "the arbitrage stream is registered")
        await publish_quotes(
            svc.stub,
            [
                quote(100.00, 100.10, NOW, venue="venue-a"),
                quote(100.40, 100.50, NOW + 1, venue="venue-b"),  # opens: 14.9 bps after fees
                quote(100.45, 100.50, NOW + 2, venue="venue-b"),  # still open: no event
                quote(100.20, 100.50, NOW + 3, venue="venue-b"),  # closes
            ],
        )
        opened, closed = await stream.read(), await stream.read()
        assert (opened.type, opened.kind) == (pb.ARBITRAGE_EVENT_TYPE_OPENED, pb.ARBITRAGE_KIND_CROSS_VENUE)
        assert [(leg.venue, leg.side) for leg in opened.legs] == [
            ("venue-a", common_pb2.SIDE_BUY),
            ("venue-b", common_pb2.SIDE_SELL),
        ]
        assert closed.type == pb.ARBITRAGE_EVENT_TYPE_CLOSED
        assert closed.opportunity_id == opened.opportunity_id
        assert (closed.opened_at_ns, closed.closed_at_ns, closed.lifetime_ns) == (NOW + 1, NOW + 3, 2)
        assert closed.updates_while_open == 2
        assert closed.peak_edge_bps > opened.edge_bps
        stream.cancel()


def test_domain_enums_carry_the_proto_values() -> None:
    from services.marketdata.arbitrage import ArbitrageKind, EventType
    from services.marketdata.engine import RejectReason
    from services.marketdata.fanout import UpdateKind

    pairs = [
        (RejectReason, pb.TickRejectReason, "TICK_REJECT_REASON_"),
        (ArbitrageKind, pb.ArbitrageKind, "ARBITRAGE_KIND_"),
        (EventType, pb.ArbitrageEventType, "ARBITRAGE_EVENT_TYPE_"),
        (UpdateKind, pb.UpdateKind, "UPDATE_KIND_"),
    ]
    for domain, proto, prefix in pairs:
        assert {prefix + member.name: member.value for member in domain} == {
            name: value for name, value in proto.items() if value != 0
        }
