"""An OrderStream whose client sends bytes that do not decode after good messages ends with
INVALID_ARGUMENT, promptly, with the good messages' orders standing (it could hang: the reader's
abort ended the call while the writer still had acks to write)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from hftgate.v1 import execution_pb2 as api

from .conftest import key as api_key
from .conftest import limit_order


@pytest.mark.parametrize("attempt", range(6))
async def test_a_malformed_message_after_good_ones_ends_the_stream(harness: Any, attempt: int) -> None:
    def message(tag: str) -> bytes:
        orders = [api.OrderInput(new_order=limit_order(f"{tag}{i}", price=90 + i)) for i in range(4)]
        return api.OrderStreamRequest(inputs=orders).SerializeToString()

    sent = [message("a"), message("b"), b"\x0a\xff\xff\xff\xff\x0f"]
    call = harness.channel.stream_stream(
        "/hftgate.v1.ExecutionService/OrderStream",
        request_serializer=lambda b: b,
        response_deserializer=api.OrderStreamResponse.FromString,
    )(iter(sent), metadata=api_key("alice"))

    async def drain() -> None:
        async for _ in call:
            pass

    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(drain(), 10)
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (ended.value.details() or "").startswith("request is not a valid hftgate.v1.OrderStreamRequest: ")
    for client_id in [f"{tag}{i}" for tag in "ab" for i in range(4)]:
        request = api.GetOrderRequest(client_order_id=client_id)
        got = await harness.stub.GetOrder(request, metadata=api_key("alice"))
        assert got.order.status == api.ORDER_STATUS_NEW, client_id
