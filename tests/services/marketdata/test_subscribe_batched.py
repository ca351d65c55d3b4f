"""SubscribeBatched over real gRPC, and the shared encodings both Subscribe RPCs send."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.v1 import common_pb2, marketdata_pb2, marketdata_pb2_grpc
from services.marketdata import wire
from services.marketdata.fanout import SymbolUpdate, UpdateKind
from tests.services.marketdata.helpers import token_metadata
from tests.services.marketdata.test_server import NOW, publish_quotes, quote, service

pb = marketdata_pb2


def _symbol_update(last_trade: tuple[float, float, int, int, int] | None) -> SymbolUpdate:
    return SymbolUpdate(
        UpdateKind.TRADE,
        7,
        "binance-spot",
        "BTCUSDT",
        100.5,
        1.25,
        100.75,
        2.5,
        NOW,
        last_trade,
        100.6,
        NOW + 3,
    )


@pytest.mark.parametrize("last_trade", [None, (100.6, 0.5, 2, NOW + 1, 987654321)])
def test_shared_encodings_parse_to_the_update_a_stream_would_build(last_trade: object) -> None:
    update = _symbol_update(last_trade)  # type: ignore[arg-type]
    expected = pb.MarketUpdate(
        stream_sequence=42,
        symbol_sequence=7,
        conflated=3,
        kind=pb.UPDATE_KIND_TRADE,
        symbol=common_pb2.Symbol(venue="binance-spot", name="BTCUSDT"),
        top=pb.TopOfBook(bid_price=100.5, bid_size=1.25, ask_price=100.75, ask_size=2.5, exchange_ts_ns=NOW),
        vwap=100.6,
        receive_ts_ns=NOW + 3,
    )
    if last_trade is not None:
        expected.last_trade.CopyFrom(
            pb.LastTrade(price=100.6, size=0.5, aggressor_side=2, exchange_ts_ns=NOW + 1, trade_id=987654321)
        )
    assert pb.MarketUpdate.FromString(wire.single_message(update, 3, 42)) == expected
    batch = pb.MarketUpdates.FromString(
        wire.batch_message([wire.framed_update(update), wire.framed_conflated_update(update, 3)], 42)
    )
    expected.stream_sequence = 0
    assert batch.first_stream_sequence == 42
    assert batch.updates[1] == expected
    expected.conflated = 0
    assert batch.updates[0] == expected


def test_varints_round_trip_through_protobuf() -> None:
    for value in (0, 1, 127, 128, 300, 16_383, 16_384, NOW, 2**64 - 1):
        message = pb.MarketUpdates.FromString(b"\x10" + wire.varint(value))
        assert message.first_stream_sequence == value


async def test_a_reader_that_keeps_up_gets_every_update_of_bursty_messages_in_order() -> None:
    # Each message of 500 quotes is one uninterrupted run of the engine; the reader still gets
    # every update because each write carries everything queued meanwhile.
    messages, per_message = 20, 500
    async with service() as svc:
        await publish_quotes(svc.stub, [quote(100.0, 101.0, NOW - 10_000_000)])
        stream = svc.stub.SubscribeBatched(pb.SubscribeRequest(send_initial_snapshot=True))
        first = await stream.read()
        assert first.first_stream_sequence == 1
        assert [(u.kind, u.symbol_sequence) for u in first.updates] == [(pb.UPDATE_KIND_SNAPSHOT, 1)]
        batches = [
            [
                quote(100.0 + i * 1e-3, 101.0 + i * 1e-3, NOW - 9_000_000 + m * 10_000 + i)
                for i in range(per_message)
            ]
            for m in range(messages)
        ]
        assert (await publish_quotes(svc.stub, *batches)).accepted == messages * per_message
        updates: list[marketdata_pb2.MarketUpdate] = []
        next_position = 2
        sizes = []
        while len(updates) < messages * per_message:
            message = await asyncio.wait_for(stream.read(), timeout=30)
            assert message.first_stream_sequence == next_position
            next_position += len(message.updates)
            sizes.append(len(message.updates))
            updates.extend(message.updates)
        assert [u.symbol_sequence for u in updates] == list(range(2, messages * per_message + 2))
        assert all(u.conflated == 0 and u.stream_sequence == 0 for u in updates)
        assert max(sizes) > 1  # batched: several updates per message
        assert max(sizes) <= svc.engine.config.subscriber_batch_max_updates
        assert updates[-1].top.bid_price == pytest.approx(100.0 + (per_message - 1) * 1e-3)
        stream.cancel()


async def test_a_batched_reader_behind_the_log_gets_conflated_updates_with_consistent_counts() -> None:
    total = 500
    async with service(subscriber_buffer_updates=4, subscriber_batch_max_updates=3) as svc:
        await publish_quotes(svc.stub, [quote(100.0, 101.0, NOW - 10_000)])
        await publish_quotes(svc.stub, [quote(100.0, 101.0, NOW - 10_000, venue="binance-usdm")])
        stream = svc.stub.SubscribeBatched(pb.SubscribeRequest(send_initial_snapshot=True))
        first = await stream.read()
        assert len(first.updates) == 2  # both snapshots
        quotes = [
            quote(100.0 + i * 0.01, 101.0 + i * 0.01, NOW - 9_000 + i, venue=venue)
            for i in range(total)
            for venue in ("binance-spot", "binance-usdm")
        ]
        assert (await publish_quotes(svc.stub, quotes)).accepted == 2 * total
        previous = {(u.symbol.venue, u.symbol.name): u.symbol_sequence for u in first.updates}
        merged = dict.fromkeys(previous, 0)
        position = 1 + len(first.updates)
        while any(seq < total + 1 for seq in previous.values()):
            message = await asyncio.wait_for(stream.read(), timeout=30)
            assert message.first_stream_sequence == position and 0 < len(message.updates) <= 3
            position += len(message.updates)
            for u in message.updates:
                key = (u.symbol.venue, u.symbol.name)
                assert u.symbol_sequence - previous[key] == u.conflated + 1
                previous[key] = u.symbol_sequence
                merged[key] += u.conflated + 1
        assert merged == dict.fromkeys(previous, total)
        assert position - 1 - len(first.updates) < 2 * total  # some were conflated
        stream.cancel()


async def test_a_batched_filter_selects_venue() -> None:
    async with service() as svc:
        only_usdm = pb.SymbolFilter(symbols=[common_pb2.Symbol(venue="binance-usdm")])
        stream = svc.stub.SubscribeBatched(pb.SubscribeRequest(filter=only_usdm))
        while svc.engine.stats().subscribers != 1:
            await asyncio.sleep(0.01)
        await publish_quotes(
            svc.stub, [quote(100.0, 101.0, NOW), quote(100.0, 101.0, NOW, venue="binance-usdm")]
        )
        message = await asyncio.wait_for(stream.read(), timeout=10)
        assert [(u.symbol.venue, u.symbol_sequence) for u in message.updates] == [("binance-usdm", 1)]
        stream.cancel()


async def test_a_batched_stream_whose_client_stopped_reading_blocks_holds_the_log_bound_and_frees() -> None:
    async with service(subscriber_buffer_updates=1_024) as svc:
        # Without BDP probing the client keeps the stream's HTTP/2 window at 64 KiB until its
        # application reads, as a client that has stopped reading does.
        options = [*CHANNEL_OPTIONS, ("grpc.http2.bdp_probe", 0)]
        async with grpc.aio.insecure_channel(svc.target, options=options) as raw:
            stub = marketdata_pb2_grpc.MarketDataServiceStub(raw)
            stalled = stub.SubscribeBatched(pb.SubscribeRequest(), metadata=token_metadata("feed"))
            while svc.engine.stats().subscribers != 1:
                await asyncio.sleep(0.01)
            (subscriber,) = svc.engine._subscribers
            for m in range(6):
                quotes = [
                    quote(100.0, 101.0 + i * 1e-3, NOW - 9_000_000 + m * 10_000 + i) for i in range(1_000)
                ]
                assert (await publish_quotes(svc.stub, quotes)).accepted == 1_000
            await asyncio.sleep(0.2)
            cursor = subscriber.cursor
            more = [quote(100.0, 101.0 + i * 1e-3, NOW - 8_000_000 + i) for i in range(3_000)]
            assert (await publish_quotes(svc.stub, more)).accepted == 3_000
            await asyncio.sleep(0.2)
            # Blocked in a write: it took nothing more, and holds at most the log's capacity.
            assert subscriber.cursor == cursor < svc.engine.updates.head
            assert len(subscriber) == svc.engine.config.subscriber_buffer_updates
            stalled.cancel()
            while svc.engine.stats().subscribers:
                await asyncio.sleep(0.01)
            assert svc.engine.streams.open_streams() == 0
