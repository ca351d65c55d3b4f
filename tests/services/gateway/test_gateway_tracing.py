"""One trace through the gateway: client -> gateway SERVER span -> the gateway's CLIENT span to the
shard (shard, symbol, method) -> the shard's SERVER span, for unary calls, split batches and
streams across shards; and with nothing recording, no span and the client's traceparent passed on.

The shards and the gateway run in this process, so one tracer provider (installed for the test
only) records every hop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hftgate.shardmap import Shard, ShardMap
from hftgate.v1 import execution_pb2 as api
from tests.services.gateway.conftest import ALICE, FakeShard, Suite, new_order

SUBMIT = "/hftgate.v1.ExecutionService/SubmitOrder"
SUBMIT_BATCH = "/hftgate.v1.ExecutionService/SubmitOrders"
ORDER_STREAM = "/hftgate.v1.ExecutionService/OrderStream"
CALLER_SPAN = 0x00F067AA0BA902B7


def _traceparent(trace_id: int, sampled: bool = True) -> str:
    return f"00-{trace_id:032x}-{CALLER_SPAN:016x}-{'01' if sampled else '00'}"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A tracer provider for this test only (installed before the suite starts, so every server's
    telemetry and the gateway's tracer use it)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


async def _trace(exporter: InMemorySpanExporter, trace_id: int, count: int) -> list[ReadableSpan]:
    for _ in range(200):
        found = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.02)
    return found


def _children(spans: list[ReadableSpan], parent: ReadableSpan, kind: trace.SpanKind) -> list[ReadableSpan]:
    return [
        s
        for s in spans
        if s.kind == kind and s.parent is not None and s.parent.span_id == parent.context.span_id
    ]


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_a_forwarded_order_is_one_trace_client_gateway_shard(
    spans: InMemorySpanExporter, suite: Suite
) -> None:
    trace_id = 0x4BF92F3577B34DA6A3CE929D0E0E4736
    metadata = (*ALICE, ("traceparent", _traceparent(trace_id)))
    reply = await suite.stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("t1", "ETHUSDT")), metadata=metadata
    )
    assert reply.ack.status == api.ORDER_STATUS_NEW
    found = await _trace(spans, trace_id, 3)
    gateway = [
        s for s in found if s.kind == trace.SpanKind.SERVER and s.parent and s.parent.span_id == CALLER_SPAN
    ]
    assert [s.name for s in gateway] == [SUBMIT], "the gateway's SERVER span continues the caller's"
    (client,) = _children(found, gateway[0], trace.SpanKind.CLIENT)
    assert client.name == SUBMIT
    attributes = _attrs(client)
    assert attributes["hftgate.shard_id"] == 1
    assert attributes["hftgate.symbol"] == "ETHUSDT"
    assert attributes["rpc.method"] == "SubmitOrder"
    assert attributes["rpc.grpc.status_code"] == "OK"
    assert attributes["server.port"] == suite.shards[1].port
    (shard,) = _children(found, client, trace.SpanKind.SERVER)
    assert shard.name == SUBMIT, "the shard's SERVER span is the CLIENT span's child"
    for outer, inner in ((gateway[0], client), (client, shard)):
        assert outer.start_time is not None and inner.start_time is not None
        assert outer.start_time <= inner.start_time
        assert inner.end_time is not None and outer.end_time is not None
        assert inner.end_time <= outer.end_time


async def test_a_split_batch_has_a_client_span_per_shard(spans: InMemorySpanExporter, suite: Suite) -> None:
    trace_id = 0x1111_2222_3333_4444_5555_6666_7777_8888
    orders = [new_order("b0", "BTCUSDT"), new_order("b1", "ETHUSDT"), new_order("b2", "BTCUSDT")]
    await suite.stub.SubmitOrders(
        api.SubmitOrdersRequest(orders=orders), metadata=(*ALICE, ("traceparent", _traceparent(trace_id)))
    )
    found = await _trace(spans, trace_id, 5)
    (gateway,) = [s for s in found if s.parent is not None and s.parent.span_id == CALLER_SPAN]
    clients = _children(found, gateway, trace.SpanKind.CLIENT)
    assert sorted((_attrs(c)["hftgate.shard_id"], _attrs(c).get("hftgate.symbol")) for c in clients) == [
        (0, "BTCUSDT"),
        (1, "ETHUSDT"),
    ]
    for client in clients:
        assert [s.name for s in _children(found, client, trace.SpanKind.SERVER)] == [SUBMIT_BATCH]


async def test_an_order_stream_across_shards_has_a_client_span_per_upstream_stream(
    spans: InMemorySpanExporter, suite: Suite
) -> None:
    trace_id = 0x9999_0000_1111_2222_3333_4444_5555_6666

    async def requests() -> AsyncIterator[api.OrderStreamRequest]:
        yield api.OrderStreamRequest(
            inputs=[
                api.OrderInput(new_order=new_order("st0", "BTCUSDT")),
                api.OrderInput(new_order=new_order("st1", "ETHUSDT")),
            ]
        )

    call = suite.stub.OrderStream(requests(), metadata=(*ALICE, ("traceparent", _traceparent(trace_id))))
    acks = [a async for response in call for a in response.acks]
    assert [a.client_order_id for a in acks] == ["st0", "st1"]
    found = await _trace(spans, trace_id, 5)
    (gateway,) = [s for s in found if s.parent is not None and s.parent.span_id == CALLER_SPAN]
    assert gateway.name == ORDER_STREAM
    clients = _children(found, gateway, trace.SpanKind.CLIENT)
    assert sorted(_attrs(c)["hftgate.shard_id"] for c in clients) == [0, 1]
    assert all(c.name == ORDER_STREAM and _attrs(c)["rpc.grpc.status_code"] == "OK" for c in clients)
    for client in clients:
        assert [s.name for s in _children(found, client, trace.SpanKind.SERVER)] == [ORDER_STREAM]


async def _fake_answer(method: str, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return api.SubmitOrderResponse(ack=api.OrderAck(status=api.ORDER_STATUS_NEW)).SerializeToString()


async def test_with_nothing_recording_the_callers_traceparent_goes_on_unchanged(
    monkeypatch: pytest.MonkeyPatch, fake_gateway: Any
) -> None:
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # no provider in this process
    fake = await FakeShard(_fake_answer).start()
    try:
        _, stub = await fake_gateway(ShardMap(1, [Shard(0, fake.address), Shard(1, "127.0.0.1:9")], {"X": 0}))
        sent = _traceparent(0xABC)
        await stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("n1", "X")), metadata=(*ALICE, ("traceparent", sent))
        )
        assert fake.calls[-1][2]["traceparent"] == sent
    finally:
        await fake.stop()


async def test_an_unsampled_call_makes_no_client_span_and_passes_the_callers_traceparent(
    spans: InMemorySpanExporter, fake_gateway: Any
) -> None:
    fake = await FakeShard(_fake_answer).start()
    try:
        _, stub = await fake_gateway(ShardMap(1, [Shard(0, fake.address), Shard(1, "127.0.0.1:9")], {"X": 0}))
        sent = _traceparent(0xDEF, sampled=False)
        await stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("n2", "X")), metadata=(*ALICE, ("traceparent", sent))
        )
        assert fake.calls[-1][2]["traceparent"] == sent
        assert not [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.CLIENT]
    finally:
        await fake.stop()
