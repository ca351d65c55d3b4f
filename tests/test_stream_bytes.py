"""A streaming handler of the suite's servers may write a response it serialized itself (bytes)
beside ordinary messages (hftgate.telemetry.bytes_or): the client reads the same messages either
way, with telemetry on or off, from a handler that yields and from one that calls write()."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from hftgate.grpcserver import ServiceBinding, create_server
from hftgate.telemetry import bytes_or
from tests.test_bad_bytes import _call

Request, Reply = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse


def _replies() -> list[Any]:
    """What each handler sends: a message, its bytes, a message, its bytes."""
    serving, unknown = Reply(status=Reply.SERVING), Reply(status=Reply.SERVICE_UNKNOWN)
    return [serving, unknown.SerializeToString(), unknown, serving.SerializeToString()]


def _handlers() -> grpc.GenericRpcHandler:
    async def yields(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        for reply in _replies():
            yield reply

    async def writes(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        async for _ in requests:
            for reply in _replies():
                await context.write(reply)

    parse, write = Request.FromString, Reply.SerializeToString
    return grpc.method_handlers_generic_handler(
        "test.Bytes",
        {
            "Yields": grpc.unary_stream_rpc_method_handler(yields, parse, write),
            "Writes": grpc.stream_stream_rpc_method_handler(writes, parse, write),
        },
    )


@pytest.mark.parametrize("telemetry_on", [True, False], ids=["telemetry", "no-telemetry"])
async def test_a_stream_handler_writes_messages_and_bytes_alike(telemetry_on: bool) -> None:
    handlers = _handlers()
    binding = ServiceBinding("test.Bytes", lambda server: server.add_generic_rpc_handlers((handlers,)))
    running = await create_server("127.0.0.1:0", [binding], telemetry=telemetry_on)
    want = [Reply(status=Reply.SERVING), Reply(status=Reply.SERVICE_UNKNOWN)] * 2
    want = [want[0], want[1], want[1], want[0]]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            request = Request(service="x").SerializeToString()
            for method, client_streaming in (("/test.Bytes/Yields", False), ("/test.Bytes/Writes", True)):
                replies = await _call(channel, method, client_streaming, True, [request])
                assert [Reply.FromString(r) for r in replies] == want, method
    finally:
        await running.stop(0)


def test_bytes_pass_through_and_messages_are_serialized() -> None:
    serialize = bytes_or(Reply.SerializeToString)
    assert serialize is not None and bytes_or(None) is None
    message = Reply(status=Reply.SERVING)
    assert serialize(message) == message.SerializeToString()
    assert serialize(b"\x08\x02") == b"\x08\x02"
    with pytest.raises(TypeError):  # anything else is still a message to serialize
        serialize(bytearray(b"\x08\x02"))


def test_a_sampled_call_s_serialized_response_gives_its_span_the_message_s_attributes() -> None:
    from opentelemetry import trace

    from hftgate.telemetry import SerializedResponse, _MethodTelemetry
    from hftgate.v1 import execution_pb2 as api

    class Span:
        def __init__(self) -> None:
            self.attributes: dict[str, Any] = {}

        def set_attributes(self, values: dict[str, Any]) -> None:
            self.attributes.update(values)

    message = api.SubmitOrdersResponse()
    message.acks.add(sequence=7, durable=True)
    message.acks.add(sequence=9, durable=True)
    as_message, as_bytes = Span(), Span()
    for span, response in (
        (as_message, message),
        (as_bytes, SerializedResponse(message.SerializeToString(), api.SubmitOrdersResponse)),
    ):
        handler = grpc.unary_unary_rpc_method_handler(None, None, api.SubmitOrdersResponse.SerializeToString)
        method = _MethodTelemetry("/x.Y/SubmitOrders", handler, trace.get_tracer("test"))
        method.annotate_response(span, response)
    assert as_bytes.attributes == as_message.attributes
    assert as_bytes.attributes["hftgate.journal.sequence"] == 9


def test_request_bytes_read_by_protobuf_on_demand() -> None:
    from hftgate.telemetry import RequestBytes, RequestDecoder

    decoder = RequestDecoder("/x.Y/Check", Request.FromString)
    good = RequestBytes(Request(service="ok").SerializeToString(), decoder, None)  # type: ignore[arg-type]
    assert good.parsed() == Request(service="ok")
    assert RequestBytes(b"\x0a\x09ab", decoder, None).parsed() is None  # type: ignore[arg-type]


@pytest.mark.parametrize("telemetry_on", [True, False], ids=["telemetry", "no-telemetry"])
async def test_a_method_that_takes_request_bytes_gets_them_and_malformed_ones_are_refused(
    telemetry_on: bool,
) -> None:
    from hftgate.telemetry import RequestBytes, SerializedResponse, takes_request_bytes

    seen: list[bytes] = []

    @takes_request_bytes
    async def check(request: RequestBytes, context: grpc.aio.ServicerContext) -> Any:
        seen.append(request.data)
        message = await request.message()
        status = Reply.SERVING if message.service == "ok" else Reply.SERVICE_UNKNOWN
        return SerializedResponse(Reply(status=status).SerializeToString(), Reply)

    handlers = grpc.method_handlers_generic_handler(
        "test.Raw",
        {"Check": grpc.unary_unary_rpc_method_handler(check, Request.FromString, Reply.SerializeToString)},
    )
    binding = ServiceBinding("test.Raw", lambda server: server.add_generic_rpc_handlers((handlers,)))
    running = await create_server("127.0.0.1:0", [binding], telemetry=telemetry_on)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            good = Request(service="ok").SerializeToString()
            [reply] = await _call(channel, "/test.Raw/Check", False, False, [good])
            assert Reply.FromString(reply).status == Reply.SERVING and seen == [good]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _call(channel, "/test.Raw/Check", False, False, [b"\x0a\x09ab"])
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            details = refused.value.details() or ""
            assert details.startswith("request is not a valid grpc.health.v1.HealthCheckRequest")
    finally:
        await running.stop(0)
