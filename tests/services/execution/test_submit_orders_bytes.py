"""SubmitOrders and OrderStream are read from the bytes they came in
(hftgate.telemetry.takes_request_bytes, the C order wire reader), with protobuf's reading where the
fast path does not take them: bytes that do not decode are refused INVALID_ARGUMENT before any
other check, with or without an API key, as every method's are; what protobuf reads but the fast
path does not is still served; the batch's size is checked on either path."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from tests.protowire import key, length_delimited

from .conftest import key as api_key
from .conftest import limit_order

METHOD = "/hftgate.v1.ExecutionService/SubmitOrders"


async def _call(harness: Any, data: bytes, metadata: Any = ()) -> bytes:
    call = harness.channel.unary_unary(METHOD)
    return await call(data, metadata=metadata, timeout=10)  # type: ignore[no-any-return]


def _batch(count: int, tag: str) -> api.SubmitOrdersRequest:
    return api.SubmitOrdersRequest(orders=[limit_order(f"{tag}{i}", price=90 + i % 5) for i in range(count)])


def _fast_path_taken(monkeypatch: pytest.MonkeyPatch, reader: str) -> list[bool]:
    """Whether each call of codec's ``reader`` (the C fast path) took the bytes, in order."""
    from services.execution import codec

    taken: list[bool] = []
    read = getattr(codec, reader)

    def recording(*args: Any) -> Any:
        inputs = read(*args)
        taken.append(inputs is not None)
        return inputs

    monkeypatch.setattr(codec, reader, recording)
    return taken


async def test_malformed_bytes_are_refused_before_the_api_key_is_looked_at(harness: Any) -> None:
    for metadata in ((("x-api-key", "no-such-key"),), api_key("alice")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _call(harness, b"\x0a\x09ab", metadata)  # field 1 claims 9 bytes, 2 remain
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "request is not a valid hftgate.v1.SubmitOrdersRequest" in (refused.value.details() or "")
    assert harness.core.counters.orders_received == 0


async def test_both_readers_serve_the_same_orders_and_check_the_batch_size(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = _fast_path_taken(monkeypatch, "read_submit_orders")
    plain = _batch(5, "p").SerializeToString()
    # The same orders with an unknown field after them: protobuf reads it (and keeps it aside),
    # the fast path hands it back, so this batch takes protobuf's reading.
    unknown = _batch(5, "u").SerializeToString() + key(99, 0) + b"\x01"
    acks = []
    for data in (plain, unknown):
        reply = api.SubmitOrdersResponse.FromString(await _call(harness, data, api_key("alice")))
        acks.append([(a.client_order_id, a.status, a.price_ticks) for a in reply.acks])
    assert [(c[1:], s, p) for c, s, p in acks[0]] == [(c[1:], s, p) for c, s, p in acks[1]]
    assert all(s == api.ORDER_STATUS_NEW for _, s, _ in acks[0])
    assert taken == [True, False]  # the fast path, then protobuf's reading
    limit = harness.config.max_batch_orders
    for data, problem in (
        (b"", "the batch is empty"),
        (_batch(limit + 1, "x").SerializeToString(), f"{limit + 1} orders exceed max_batch_orders={limit}"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _call(harness, data, api_key("alice"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert problem in (refused.value.details() or "")
    # One order of all defaults (an empty NewOrder) is a batch of one, refused order by order.
    reply = api.SubmitOrdersResponse.FromString(
        await _call(harness, length_delimited(1, b""), api_key("alice"))
    )
    assert [a.status for a in reply.acks] == [api.ORDER_STATUS_REJECTED]


async def test_stream_messages_are_read_from_their_bytes_or_by_protobuf_alike(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = _fast_path_taken(monkeypatch, "read_stream_message")

    def message(tag: str) -> bytes:
        orders = [api.OrderInput(new_order=limit_order(f"{tag}{i}", price=90 + i)) for i in range(4)]
        return api.OrderStreamRequest(inputs=orders).SerializeToString()

    sent = [message("c"), message("p") + key(99, 0) + b"\x01"]
    call = harness.channel.stream_stream(
        "/hftgate.v1.ExecutionService/OrderStream",
        request_serializer=lambda b: b,
        response_deserializer=api.OrderStreamResponse.FromString,
    )(iter(sent), metadata=api_key("alice"))
    acks = []
    async for response in call:
        acks.extend(response.acks)
        if len(acks) == 8:
            break
    call.cancel()
    assert taken == [True, False]  # the fast path, then protobuf's reading
    assert [(a.client_order_id, a.status) for a in acks] == [
        (f"{tag}{i}", api.ORDER_STATUS_NEW) for tag in "cp" for i in range(4)
    ]


COLUMNS_METHOD = "/hftgate.v1.ExecutionService/SubmitOrderColumns"


def _columns(count: int, tag: str) -> api.OrderColumns:
    return api.OrderColumns(
        symbols=["BTCUSDT"],
        symbol_index=[0] * count,
        client_order_id=[f"{tag}{i}" for i in range(count)],
        side=[common.SIDE_BUY] * count,
        order_type=[api.ORDER_TYPE_LIMIT] * count,
        time_in_force=[api.TIME_IN_FORCE_GTC] * count,
        price_ticks=[90 + i % 5 for i in range(count)],
        quantity_lots=[1] * count,
    )


async def _columns_call(harness: Any, data: bytes, metadata: Any = ()) -> api.AckColumns:
    call = harness.channel.unary_unary(COLUMNS_METHOD)
    reply = await call(data, metadata=metadata, timeout=10)
    return api.SubmitOrderColumnsResponse.FromString(reply).acks


async def test_order_columns_are_read_from_their_bytes_or_by_protobuf_alike(
    harness: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SubmitOrderColumns as SubmitOrders: the C reader where it takes the bytes, protobuf's
    reading where it does not, the same acks either way; what is wrong with a batch said the
    same way (malformed bytes before the key is looked at, then the batch's size, then a column
    that does not fit)."""
    taken = _fast_path_taken(monkeypatch, "read_order_columns")
    plain = api.SubmitOrderColumnsRequest(orders=_columns(5, "p")).SerializeToString()
    unknown = api.SubmitOrderColumnsRequest(orders=_columns(5, "u")).SerializeToString()
    unknown += key(99, 0) + b"\x01"  # (protobuf keeps it aside; the fast path hands it back)
    answers = [await _columns_call(harness, data, api_key("alice")) for data in (plain, unknown)]
    assert taken == [True, False]
    for acks in answers:
        assert list(acks.status) == [api.ORDER_STATUS_NEW] * 5
        assert list(acks.price_ticks) == [90, 91, 92, 93, 94]
        assert all(acks.order_id) and acks.durable
    for metadata in ((("x-api-key", "no-such-key"),), api_key("alice")):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _columns_call(harness, b"\x0a\x09ab", metadata)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid hftgate.v1.SubmitOrderColumnsRequest" in (refused.value.details() or "")
    limit = harness.config.max_batch_orders
    misfit = _columns(3, "m")
    misfit.quantity_lots.append(1)
    for data, problem in (
        (b"", "the batch is empty"),
        (api.SubmitOrderColumnsRequest(orders=_columns(limit + 1, "x")).SerializeToString(),
         f"{limit + 1} orders exceed max_batch_orders={limit}"),
        (api.SubmitOrderColumnsRequest(orders=misfit).SerializeToString(),
         "quantity_lots has 4 entries for 3 orders"),
    ):  # fmt: skip
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _columns_call(harness, data, api_key("alice"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert problem in (refused.value.details() or "")
    assert harness.core.counters.orders_received == 10
