"""An OrderStream through the gateway whose client sends bytes that do not decode after good
messages ends with INVALID_ARGUMENT, promptly, and every order the client got an ack for stands
on its shard: the execution service's stream could hang on this (its reader's abort raced its
writer's writes); the gateway's fan-out reads and answers on other tasks, so it is checked here
too. An order sent before the bad bytes but not yet answered when the stream ends may or may not
have reached its shard (as after any broken stream, the client looks it up by client order id);
it is never left half-made."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from hftgate.v1 import execution_pb2 as api
from tests.services.gateway.conftest import ALICE, Suite, new_order


@pytest.mark.parametrize("attempt", range(4))
async def test_a_malformed_message_after_good_ones_ends_the_gateway_stream(
    suite: Suite, attempt: int
) -> None:
    def message(tag: str) -> bytes:
        inputs = [
            api.OrderInput(new_order=new_order(f"{tag}{attempt}-{i}", symbol, price_ticks=90 + i))
            for i, symbol in enumerate(["BTCUSDT", "ETHUSDT", "ETHUSDT", "BTCUSDT"])
        ]
        return api.OrderStreamRequest(inputs=inputs).SerializeToString()

    sent = [message("a"), message("b"), b"\x0a\xff\xff\xff\xff\x0f"]
    call = suite.channel.stream_stream(
        "/hftgate.v1.ExecutionService/OrderStream",
        request_serializer=lambda b: b,
        response_deserializer=api.OrderStreamResponse.FromString,
    )(iter(sent), metadata=ALICE)

    acked: list[str] = []

    async def drain() -> None:
        async for response in call:
            acked.extend(ack.client_order_id for ack in response.acks if ack.status == api.ORDER_STATUS_NEW)

    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await asyncio.wait_for(drain(), 10)
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "OrderStreamRequest" in (ended.value.details() or "")
    for client_id in [f"{tag}{attempt}-{i}" for tag in "ab" for i in range(4)]:
        try:
            got = await suite.stub.GetOrder(api.GetOrderRequest(client_order_id=client_id), metadata=ALICE)
        except grpc.aio.AioRpcError as missing:
            assert missing.code() == grpc.StatusCode.NOT_FOUND and client_id not in acked, client_id
        else:
            assert got.order.status == api.ORDER_STATUS_NEW, client_id
