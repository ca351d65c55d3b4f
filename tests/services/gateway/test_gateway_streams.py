"""Streams and GetStats through the gateway across two real shards: OrderStream fanned out and
merged back in input order (cancels on the stream too), StreamExecutions merged with the per-shard
resume cursor, a shard ending a stream, GetStats summed; and the merge rules on their own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from hftgate.grpcserver import STREAM_ADMITTED_METADATA
from hftgate.shardmap import Shard, order_id_shard
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc
from services.gateway.fanout import OrderStreamFanout, StreamEnded, Upstream
from services.gateway.stats import merge_latency, merge_stats
from services.gateway.streams import CURSOR_METADATA, AckMerge, CursorError, format_cursor, parse_cursor
from services.gateway.upstream import ShardChannel
from tests.services.gateway.conftest import ALICE, Suite, new_order


def _inputs(*items: api.OrderInput) -> api.OrderStreamRequest:
    return api.OrderStreamRequest(inputs=list(items))


def _new(client_order_id: str, symbol: str) -> api.OrderInput:
    return api.OrderInput(new_order=new_order(client_order_id, symbol))


async def _read_acks(session: Any, count: int) -> list[api.OrderAck]:
    acks: list[api.OrderAck] = []
    while len(acks) < count:
        response = await asyncio.wait_for(session.read(), 10)
        assert response is not grpc.aio.EOF, f"the stream ended after {len(acks)} of {count} acks"
        acks.extend(response.acks)
    return acks


# --- OrderStream across shards -----------------------------------------------------------------


async def test_order_stream_across_shards_merges_acks_in_input_order_and_cancels_on_the_stream(
    suite: Suite,
) -> None:
    session = suite.stub.OrderStream(metadata=ALICE)
    symbols = ["BTCUSDT", "ETHUSDT", "ETHUSDT", "BTCUSDT", "ETHUSDT"]
    await session.write(_inputs(*(_new(f"os{i}", s) for i, s in enumerate(symbols))))
    acks = await _read_acks(session, len(symbols))
    assert [a.client_order_id for a in acks] == [f"os{i}" for i in range(len(symbols))]
    assert all(a.status == api.ORDER_STATUS_NEW and a.durable for a in acks)
    for ack, symbol in zip(acks, symbols, strict=True):
        assert order_id_shard(ack.order_id) == (0 if symbol == "BTCUSDT" else 1)
    assert (suite.orders_on(0), suite.orders_on(1)) == (2, 3)
    # Cancels on the same stream: by order id (its shard bits) and by client order id (the route
    # the gateway remembered when the order went through it).
    await session.write(
        _inputs(
            api.OrderInput(cancel=api.CancelOrderRequest(order_id=acks[1].order_id)),
            api.OrderInput(cancel=api.CancelOrderRequest(client_order_id="os0")),
            api.OrderInput(replace=api.ReplaceOrderRequest(order_id=acks[4].order_id, quantity_lots=5)),
        )
    )
    changes = await _read_acks(session, 3)
    assert [(a.action, a.client_order_id, a.status) for a in changes] == [
        (api.ORDER_ACTION_CANCEL, "os1", api.ORDER_STATUS_CANCELED),
        (api.ORDER_ACTION_CANCEL, "os0", api.ORDER_STATUS_CANCELED),
        (api.ORDER_ACTION_REPLACE, "os4", api.ORDER_STATUS_NEW),
    ]
    await session.done_writing()
    while (await asyncio.wait_for(session.read(), 10)) is not grpc.aio.EOF:
        pass
    assert await session.code() == grpc.StatusCode.OK
    # One upstream stream per shard, opened once for the whole client stream.
    assert suite.gateway.forwarder.sent == {0: 1, 1: 1}  # type: ignore[union-attr]


async def test_many_messages_across_shards_come_back_acked_once_each_in_input_order(suite: Suite) -> None:
    symbols = ("BTCUSDT", "ETHUSDT", "ETHUSDT", "BTCUSDT", "ETHUSDT")
    names = [f"mm{m}-{i}" for m in range(120) for i in range(len(symbols))]

    async def requests() -> AsyncIterator[api.OrderStreamRequest]:
        for m in range(120):
            yield _inputs(*(_new(f"mm{m}-{i}", s) for i, s in enumerate(symbols)))

    acks = [
        a
        async for response in suite.stub.OrderStream(requests(), metadata=ALICE, timeout=60)
        for a in response.acks
    ]
    assert [a.client_order_id for a in acks] == names
    assert all(a.status == api.ORDER_STATUS_NEW for a in acks)
    assert (suite.orders_on(0), suite.orders_on(1)) == (240, 360)


async def test_a_stream_cancel_by_a_client_order_id_the_gateway_never_routed_asks_the_shards(
    suite: Suite,
) -> None:
    # Sent straight to shard 1, so the gateway has no route remembered for it.
    direct = grpc.aio.insecure_channel(f"127.0.0.1:{suite.shards[1].port}")
    try:
        stub = api_grpc.ExecutionServiceStub(direct)
        placed = await stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("direct1", "ETHUSDT")), metadata=ALICE
        )
        assert placed.ack.status == api.ORDER_STATUS_NEW
    finally:
        await direct.close(None)
    session = suite.stub.OrderStream(metadata=ALICE)
    await session.write(
        _inputs(
            api.OrderInput(cancel=api.CancelOrderRequest(client_order_id="direct1")),
            api.OrderInput(cancel=api.CancelOrderRequest(client_order_id="never-sent")),
            _new("after", "BTCUSDT"),
        )
    )
    acks = await _read_acks(session, 3)
    assert [(a.client_order_id, a.status) for a in acks[:1]] == [("direct1", api.ORDER_STATUS_CANCELED)]
    assert acks[1].status == api.ORDER_STATUS_REJECTED, "no shard has it: rejected, the stream goes on"
    assert (acks[2].client_order_id, acks[2].status) == ("after", api.ORDER_STATUS_NEW)
    session.cancel()


async def test_order_stream_opens_a_shards_stream_only_when_an_input_needs_it(suite: Suite) -> None:
    async def requests() -> AsyncIterator[api.OrderStreamRequest]:
        yield _inputs(_new("only-eth", "ETHUSDT"))

    acks = [a async for response in suite.stub.OrderStream(requests(), metadata=ALICE) for a in response.acks]
    assert [a.client_order_id for a in acks] == ["only-eth"]
    assert suite.gateway.forwarder.sent == {1: 1}  # type: ignore[union-attr]


async def test_order_stream_message_without_inputs_ends_the_stream_with_invalid_argument(
    suite: Suite,
) -> None:
    session = suite.stub.OrderStream(metadata=ALICE)
    await session.write(_inputs(_new("ok1", "ETHUSDT")))
    assert [a.client_order_id for a in await _read_acks(session, 1)] == ["ok1"]
    await session.write(api.OrderStreamRequest())
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while await asyncio.wait_for(session.read(), 10) is not grpc.aio.EOF:
            pass
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "1..1000 inputs, got 0" in (ended.value.details() or "")


async def test_a_shard_ending_the_order_stream_ends_the_clients_stream_naming_it(suite: Suite) -> None:
    session = suite.stub.OrderStream(metadata=ALICE)
    await session.write(_inputs(_new("f0", "BTCUSDT"), _new("f1", "ETHUSDT")))
    assert [a.client_order_id for a in await _read_acks(session, 2)] == ["f0", "f1"]
    await suite.shards[1].stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        while await asyncio.wait_for(session.read(), 10) is not grpc.aio.EOF:
            pass
    assert f"execution shard 1 at 127.0.0.1:{suite.shards[1].port}" in (ended.value.details() or "")


# --- StreamExecutions across shards ----------------------------------------------------------------


async def _reports(call: Any, count: int) -> list[api.ExecutionReport]:
    got: list[api.ExecutionReport] = []
    while len(got) < count:
        report = await asyncio.wait_for(call.read(), 10)
        assert report is not grpc.aio.EOF
        got.append(report)
    return got


async def test_stream_executions_merges_every_shard_and_resumes_with_the_per_shard_cursor(
    suite: Suite,
) -> None:
    first = [new_order("x0", "BTCUSDT"), new_order("x1", "ETHUSDT"), new_order("x2", "ETHUSDT")]
    await suite.stub.SubmitOrders(api.SubmitOrdersRequest(orders=first), metadata=ALICE)
    call = suite.stub.StreamExecutions(api.StreamExecutionsRequest(), metadata=ALICE)
    reports = await _reports(call, 3)
    assert sorted(r.client_order_id for r in reports) == ["x0", "x1", "x2"]
    # Each shard's reports come in that shard's sequence order; the shards' sequences overlap.
    cursor: dict[int, int] = {}
    for report in reports:
        shard_id = order_id_shard(report.order_id)
        assert report.sequence > cursor.get(shard_id, 0)
        cursor[shard_id] = report.sequence
    assert set(cursor) == {0, 1}
    call.cancel()

    later = [new_order("y0", "ETHUSDT"), new_order("y1", "BTCUSDT")]
    await suite.stub.SubmitOrders(api.SubmitOrdersRequest(orders=later), metadata=ALICE)
    resumed = suite.stub.StreamExecutions(
        api.StreamExecutionsRequest(), metadata=(*ALICE, (CURSOR_METADATA, format_cursor(cursor)))
    )
    again = await _reports(resumed, 2)
    assert sorted(r.client_order_id for r in again) == ["y0", "y1"], "nothing missed, nothing twice"
    resumed.cancel()


async def test_the_per_shard_resume_point_can_travel_in_the_request(suite: Suite) -> None:
    await suite.stub.SubmitOrders(
        api.SubmitOrdersRequest(orders=[new_order("p0", "BTCUSDT"), new_order("p1", "ETHUSDT")]),
        metadata=ALICE,
    )
    call = suite.stub.StreamExecutions(api.StreamExecutionsRequest(), metadata=ALICE)
    cursor = {order_id_shard(r.order_id): r.sequence for r in await _reports(call, 2)}
    call.cancel()
    await suite.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("p2", "ETHUSDT")), metadata=ALICE)
    resumed = suite.stub.StreamExecutions(
        api.StreamExecutionsRequest(after_sequence_by_shard=cursor), metadata=ALICE
    )
    assert [r.client_order_id for r in await _reports(resumed, 1)] == ["p2"]
    resumed.cancel()
    # One symbol's shard takes its own entry as after_sequence.
    one = suite.stub.StreamExecutions(
        api.StreamExecutionsRequest(symbol="ETHUSDT", after_sequence_by_shard={1: cursor[1]}), metadata=ALICE
    )
    assert [r.client_order_id for r in await _reports(one, 1)] == ["p2"]
    one.cancel()
    for request, metadata, message in (
        (api.StreamExecutionsRequest(after_sequence_by_shard={0: -1}), ALICE, "must be >= 0"),
        (
            api.StreamExecutionsRequest(after_sequence_by_shard={0: 1}),
            (*ALICE, (CURSOR_METADATA, "0=1")),
            "send the per-shard resume point once",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await suite.stub.StreamExecutions(request, metadata=metadata).read()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in (refused.value.details() or "")


async def test_a_single_after_sequence_across_shards_or_a_bad_cursor_is_refused(suite: Suite) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as single:
        await suite.stub.StreamExecutions(
            api.StreamExecutionsRequest(after_sequence=5), metadata=ALICE
        ).read()
    assert single.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert CURSOR_METADATA in (single.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await suite.stub.StreamExecutions(
            api.StreamExecutionsRequest(), metadata=(*ALICE, (CURSOR_METADATA, "0=1,one=2"))
        ).read()
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'one=2' is not SHARD_ID=SEQUENCE" in (bad.value.details() or "")


async def test_a_shard_ending_the_merged_reports_names_it_and_gives_the_cursor(suite: Suite) -> None:
    await suite.stub.SubmitOrders(
        api.SubmitOrdersRequest(orders=[new_order("z0", "BTCUSDT"), new_order("z1", "ETHUSDT")]),
        metadata=ALICE,
    )
    call = suite.stub.StreamExecutions(api.StreamExecutionsRequest(), metadata=ALICE)
    sent = {order_id_shard(r.order_id): r.sequence for r in await _reports(call, 2)}
    await suite.shards[0].stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(call.read(), 10)
    assert "execution shard 0 at" in (ended.value.details() or "")
    trailing = dict(ended.value.trailing_metadata() or ())
    assert parse_cursor(trailing[CURSOR_METADATA]) == sent


async def test_a_new_shard_map_with_other_shards_ends_the_merged_reports_to_resume_on_it(
    suite: Suite,
) -> None:
    await suite.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("m0", "ETHUSDT")), metadata=ALICE)
    call = suite.stub.StreamExecutions(api.StreamExecutionsRequest(), metadata=ALICE)
    (report,) = await _reports(call, 1)
    await suite.store.update(lambda m: m.with_shard(Shard(2, "127.0.0.1:9")))
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(call.read(), 10)
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "the shard map changed (epoch 2: shards 0, 1, 2, were 0, 1)" in (ended.value.details() or "")
    trailing = dict(ended.value.trailing_metadata() or ())
    assert parse_cursor(trailing[CURSOR_METADATA]) == {1: report.sequence}


# --- GetStats across shards ------------------------------------------------------------------------


async def test_get_stats_across_shards_sums_the_accounts_open_orders(suite: Suite) -> None:
    orders = [new_order(f"g{i}", s) for i, s in enumerate(["BTCUSDT", "ETHUSDT", "ETHUSDT"])]
    await suite.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=ALICE)
    stats = await suite.stub.GetStats(api.GetStatsRequest(), metadata=ALICE)
    assert stats.open_orders == 3
    assert stats.orders_received == 0, "an account sees its own figures only"
    assert 0 < stats.started_ns <= stats.collected_ns
    await suite.shards[1].stop(0)
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await suite.stub.GetStats(api.GetStatsRequest(), metadata=ALICE, timeout=10)
    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "execution shard 1" in (down.value.details() or "")


def test_merged_stats_sum_counters_pool_the_mean_and_take_the_worst_percentiles() -> None:
    def latency(count: int, mean: float, stdev: float, p99: int) -> common.LatencySummary:
        return common.LatencySummary(count=count, mean_ns=mean, stdev_ns=stdev, p99_ns=p99, max_ns=p99 * 2)

    a = api.GetStatsResponse(
        started_ns=10,
        collected_ns=50,
        orders_received=4,
        reference_lookups=10,
        reference_sql_lookups=1,
        total_latency=latency(2, 100.0, 0.0, 120),
        rejects_by_reason=[api.RejectCount(reason=common.REJECT_REASON_UNKNOWN_SYMBOL, count=2)],
    )
    b = api.GetStatsResponse(
        started_ns=5,
        collected_ns=60,
        orders_received=6,
        reference_lookups=10,
        reference_sql_lookups=3,
        total_latency=latency(2, 300.0, 0.0, 400),
        rejects_by_reason=[api.RejectCount(reason=common.REJECT_REASON_UNKNOWN_SYMBOL, count=1)],
    )
    merged = merge_stats([a, b])
    assert (merged.started_ns, merged.collected_ns, merged.orders_received) == (5, 60, 10)
    assert merged.order_path_hit_ratio == pytest.approx(1 - 4 / 20)
    assert [(r.reason, r.count) for r in merged.rejects_by_reason] == [
        (common.REJECT_REASON_UNKNOWN_SYMBOL, 3)
    ]
    total = merged.total_latency
    assert (total.count, total.p99_ns, total.max_ns) == (4, 400, 800)
    assert total.mean_ns == pytest.approx(200.0)
    assert total.stdev_ns == pytest.approx(100.0)  # samples 100, 100, 300, 300
    assert merge_latency([]).count == 0


def test_merged_stats_sum_every_counter_field_of_a_shard() -> None:
    """Every integer field of GetStatsResponse other than the two times is a count to sum: a field
    added to the proto and forgotten here would read 0 through the gateway."""
    counters = [
        field.name
        for field in api.GetStatsResponse.DESCRIPTOR.fields
        if field.type == field.TYPE_INT64 and field.name not in ("started_ns", "collected_ns")
    ]
    assert "snapshots_taken" in counters
    a = api.GetStatsResponse(**{name: 1 + i for i, name in enumerate(counters)})
    b = api.GetStatsResponse(**{name: 100 for name in counters})
    merged = merge_stats([a, b])
    assert {name: getattr(merged, name) for name in counters} == {
        name: 101 + i for i, name in enumerate(counters)
    }


# --- the merge rules ---------------------------------------------------------------------------


def _ack(client_order_id: str) -> api.OrderAck:
    return api.OrderAck(client_order_id=client_order_id)


def _report(client_order_id: str, sequence: int) -> api.ExecutionReport:
    return api.ExecutionReport(client_order_id=client_order_id, sequence=sequence)


def test_ack_merge_gives_acks_in_input_order_and_reports_never_before_their_shards_acks() -> None:
    merge = AckMerge()
    merge.sent([0, 1, 1, 0])  # inputs a(0) b(1) c(1) d(0)
    # Shard 1 is faster: its acks wait for a's; its report waits for its acks.
    merge.received(1, api.OrderStreamResponse(acks=[_ack("b"), _ack("c")], executions=[_report("b", 7)]))
    assert merge.ready(100) is None and merge.waiting_for() == 0
    merge.received(0, api.OrderStreamResponse(acks=[_ack("a")]))
    out = merge.ready(100)
    assert out is not None
    assert [a.client_order_id for a in out.acks] == ["a", "b", "c"]
    assert [r.client_order_id for r in out.executions] == ["b"]
    assert merge.pending_inputs == 1
    # A report of shard 1 with no ack ahead of it goes at once, though d's ack is still awaited.
    merge.received(1, api.OrderStreamResponse(executions=[_report("fill", 8)]))
    out = merge.ready(100)
    assert out is not None and [r.client_order_id for r in out.executions] == ["fill"] and not out.acks
    merge.received(0, api.OrderStreamResponse(acks=[_ack("d")], executions=[_report("d", 3)]))
    out = merge.ready(1)  # a page of one item at a time
    assert out is not None and [a.client_order_id for a in out.acks] == ["d"] and not out.executions
    out = merge.ready(1)
    assert out is not None and [r.client_order_id for r in out.executions] == ["d"]
    assert merge.ready(1) is None and merge.empty and merge.pending_inputs == 0


def test_cursor_round_trips_and_says_what_is_wrong() -> None:
    assert parse_cursor(" 1=98 , 0=120") == {1: 98, 0: 120}
    assert format_cursor({1: 98, 0: 120}) == "0=120,1=98"
    assert parse_cursor("") == {}
    for bad, says in (("0=1,0=2", "named twice"), ("0", "is not SHARD_ID"), ("-1=2", ">= 0")):
        with pytest.raises(CursorError, match=says):
            parse_cursor(bad)


# --- bounds, with scripted shards --------------------------------------------------------------


class _ScriptedCall:
    """A bidirectional upstream call that acks every input it is written at once."""

    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self.written = 0
        self.cancelled = False

    async def initial_metadata(self) -> grpc.aio.Metadata:
        # Admitted at once, as a shard says before reading (see test_stream_admission.py).
        return grpc.aio.Metadata((STREAM_ADMITTED_METADATA, "1"))

    async def write(self, data: bytes) -> None:
        request = api.OrderStreamRequest.FromString(data)
        self.written += len(request.inputs)
        acks = [_ack(one.new_order.client_order_id) for one in request.inputs]
        await self.answers.put(api.OrderStreamResponse(acks=acks).SerializeToString())

    async def done_writing(self) -> None:
        await self.answers.put(None)

    def cancel(self) -> None:
        self.cancelled = True

    def __aiter__(self) -> _ScriptedCall:
        return self

    async def __anext__(self) -> bytes:
        item = await self.answers.get()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item


def _fanout(calls: dict[int, _ScriptedCall], max_pending: int = 3) -> OrderStreamFanout:
    shards = {0: Shard(0, "h:1"), 1: Shard(1, "h:2")}

    def open_upstream(shard: Shard, method: str, request: None) -> Upstream:
        call = calls[shard.shard_id] = _ScriptedCall()
        return Upstream(ShardChannel(shard, None), call)  # type: ignore[arg-type]

    async def route(one: api.OrderInput) -> Shard:
        return shards[0 if one.new_order.symbol == "BTCUSDT" else 1]

    return OrderStreamFanout(
        open_upstream,
        route,
        None,
        max_pending_inputs=max_pending,
        max_message_inputs=10,
        max_queued_messages=2,
        page_items=100,
    )


async def test_a_client_that_does_not_take_its_acks_stops_being_read() -> None:
    calls: dict[int, _ScriptedCall] = {}
    fanout = _fanout(calls, max_pending=3)
    pulled = 0

    async def requests() -> AsyncIterator[bytes]:
        nonlocal pulled
        for i in range(50):
            pulled += 1
            yield _inputs(_new(f"p{i}", "BTCUSDT" if i % 2 else "ETHUSDT")).SerializeToString()

    responses = fanout.run(requests())
    first = api.OrderStreamResponse.FromString(await asyncio.wait_for(anext(responses), 5))
    await asyncio.sleep(0.2)  # the client holds its acks: the gateway must stop reading it
    read_while_held = pulled
    assert read_while_held < 50
    assert fanout.merge.pending_inputs <= 3 + 1
    names = [a.client_order_id for a in first.acks]
    async for data in responses:
        names.extend(a.client_order_id for a in api.OrderStreamResponse.FromString(data).acks)
        if len(names) == 50:
            break
    assert names == [f"p{i}" for i in range(50)], "every ack, in input order"
    await responses.aclose()
    assert all(call.cancelled for call in calls.values())


async def test_a_failing_shard_stream_ends_the_merged_stream_with_its_status_and_details() -> None:
    calls: dict[int, _ScriptedCall] = {}
    fanout = _fanout(calls)
    quota = error_details_pb2.QuotaFailure(
        violations=[error_details_pb2.QuotaFailure.Violation(subject="stream:reader", description="slow")]
    )
    status = status_pb2.Status(code=8, message="reader too slow: 9 reports behind")
    status.details.add().Pack(quota)
    trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))

    async def requests() -> AsyncIterator[bytes]:
        yield _inputs(_new("q0", "ETHUSDT")).SerializeToString()
        await asyncio.sleep(0.05)
        await calls[1].answers.put(
            grpc.aio.AioRpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), trailing, details=status.message
            )
        )
        await asyncio.sleep(5)

    with pytest.raises(StreamEnded) as ended:
        async for _ in fanout.run(requests()):
            pass
    got = ended.value.status
    assert got.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert got.message.startswith("execution shard 1 at h:2: reader too slow")
    unpacked = error_details_pb2.QuotaFailure()
    assert got.details[0].Unpack(unpacked) and unpacked.violations[0].subject == "stream:reader"
    assert rpc_status.to_status(got).code == grpc.StatusCode.RESOURCE_EXHAUSTED
