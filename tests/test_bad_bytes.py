"""Malformed request bytes answer INVALID_ARGUMENT on every RPC of every service, with a message
that says what is wrong and no Python internals, logged rate-limited and without a traceback.

Raw bytes go over a real server: one with a method of each shape (unary-unary, unary-stream,
stream-unary, stream-stream), with and without telemetry, and one hosting every service of
``hftgate.v1`` through its generated ``add_*Servicer_to_server`` behind the suite's
authentication, as the services are hosted.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

import hftgate.v1
from hftgate import telemetry
from hftgate.grpcserver import RunningServer, ServiceBinding, create_server
from hftgate.security import SERVICE_TOKEN_METADATA, ServiceAuthInterceptor, load_suite_secret
from hftgate.telemetry import RPC_MALFORMED, RPC_TOTAL, describe_malformed
from hftgate.v1 import cache_pb2, execution_pb2
from tests.protowire import varint

Request, Reply = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
REQUEST_NAME = "grpc.health.v1.HealthCheckRequest"
INTERNALS = ("Traceback", "<class", "DecodeError", "Unexpected", 'File "', "google.protobuf")

# Bytes no message accepts, and what the reject says about each (as a HealthCheckRequest).
MALFORMED: dict[str, tuple[bytes, str]] = {
    "truncated tag": (b"\xff", "byte 0: truncated field tag"),
    "field number 0": (b"\x07", "byte 0: field number 0 is out of range"),
    "length past the end": (b"\x0a\x09ab", "byte 0: field service claims 9 bytes, 2 remain"),
    "bad UTF-8": (b"\x0a\x02\xff\xfe", "byte 0: field service is not valid UTF-8"),
    "unknown field number": (b"\x7e", "byte 0: field #15 has invalid wire type 6"),
    "invalid wire type": (b"\x0e", "byte 0: field service has invalid wire type 6"),
}


def _shape_handlers(seen: list[str]) -> grpc.GenericRpcHandler:
    """A service with one method of each shape; each records the requests it was given."""

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        seen.append(request.service)
        return Reply(status=Reply.SERVING)

    async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        seen.append(request.service)
        yield Reply(status=Reply.SERVING)
        yield Reply(status=Reply.SERVING)

    async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        async for request in requests:
            seen.append(request.service)
        return Reply(status=Reply.SERVING)

    async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        async for request in requests:
            seen.append(request.service)
            yield Reply(status=Reply.SERVING)

    parse, write = Request.FromString, Reply.SerializeToString
    return grpc.method_handlers_generic_handler(
        "test.Shapes",
        {
            "UnaryUnary": grpc.unary_unary_rpc_method_handler(unary_unary, parse, write),
            "UnaryStream": grpc.unary_stream_rpc_method_handler(unary_stream, parse, write),
            "StreamUnary": grpc.stream_unary_rpc_method_handler(stream_unary, parse, write),
            "StreamStream": grpc.stream_stream_rpc_method_handler(stream_stream, parse, write),
        },
    )


async def _call(
    channel: grpc.aio.Channel,
    method: str,
    client_streaming: bool,
    server_streaming: bool,
    messages: list[bytes],
    metadata: tuple[tuple[str, str], ...] = (),
) -> list[bytes]:
    """Send ``messages`` as raw bytes (one for a unary request); the raw replies."""
    if not client_streaming:
        assert len(messages) == 1
        if server_streaming:
            stream = channel.unary_stream(method)(messages[0], metadata=metadata, timeout=10)
            return [reply async for reply in stream]
        return [await channel.unary_unary(method)(messages[0], metadata=metadata, timeout=10)]
    if server_streaming:
        stream = channel.stream_stream(method)(iter(messages), metadata=metadata, timeout=10)
        return [reply async for reply in stream]
    return [await channel.stream_unary(method)(iter(messages), metadata=metadata, timeout=10)]


SHAPES = {
    "UnaryUnary": (False, False),
    "UnaryStream": (False, True),
    "StreamUnary": (True, False),
    "StreamStream": (True, True),
}


async def _shapes_server(telemetry_on: bool, seen: list[str]) -> RunningServer:
    handlers = _shape_handlers(seen)
    binding = ServiceBinding("test.Shapes", lambda server: server.add_generic_rpc_handlers((handlers,)))
    return await create_server("127.0.0.1:0", [binding], telemetry=telemetry_on)


@pytest.mark.parametrize("telemetry_on", [True, False], ids=["telemetry", "no-telemetry"])
async def test_malformed_bytes_on_each_shape_answer_invalid_argument_naming_the_problem(
    telemetry_on: bool,
) -> None:
    seen: list[str] = []
    running = await _shapes_server(telemetry_on, seen)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            for shape, (client_streaming, server_streaming) in SHAPES.items():
                for case, (data, problem) in MALFORMED.items():
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await _call(
                            channel, f"/test.Shapes/{shape}", client_streaming, server_streaming, [data]
                        )
                    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (shape, case)
                    details = refused.value.details() or ""
                    assert details == f"request is not a valid {REQUEST_NAME}: {problem}", (shape, case)
                    assert not any(marker in details for marker in INTERNALS)
            assert seen == [], "no handler may see a request that did not decode"
            # The same channel and methods still serve well-formed requests.
            good = Request(service="ok").SerializeToString()
            for shape, (client_streaming, server_streaming) in SHAPES.items():
                replies = await _call(
                    channel, f"/test.Shapes/{shape}", client_streaming, server_streaming, [good]
                )
                assert replies and all(Reply.FromString(r).status == Reply.SERVING for r in replies), shape
            assert seen == ["ok"] * 4
    finally:
        await running.stop(0)


@pytest.mark.parametrize("telemetry_on", [True, False], ids=["telemetry", "no-telemetry"])
async def test_a_malformed_message_mid_stream_ends_the_call_after_the_good_ones_were_handled(
    telemetry_on: bool,
) -> None:
    seen: list[str] = []
    running = await _shapes_server(telemetry_on, seen)
    good = [Request(service=f"s{i}").SerializeToString() for i in range(3)]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            for shape in ("StreamUnary", "StreamStream"):
                seen.clear()
                call = (
                    channel.stream_unary(f"/test.Shapes/{shape}")
                    if shape == "StreamUnary"
                    else channel.stream_stream(f"/test.Shapes/{shape}")
                )
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    # Nothing is sent after the malformed message: a send racing the server's end of
                    # the call fails in the client's own transport, which then reports INTERNAL
                    # instead of the server's status (seen under load). The server reads nothing
                    # after the malformed message either way: ``seen`` below.
                    stream = call(iter([*good, b"\x0a\x05ab"]), timeout=10)
                    if shape == "StreamUnary":
                        await stream
                    else:
                        async for _ in stream:
                            pass
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert refused.value.details() == (
                    f"request is not a valid {REQUEST_NAME}: byte 0: field service claims 5 bytes, 2 remain"
                )
                assert seen == ["s0", "s1", "s2"], shape  # handled in order, nothing after the bad one
    finally:
        await running.stop(0)


async def test_malformed_requests_are_counted_and_logged_rate_limited_without_tracebacks(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telemetry, "MALFORMED_LOG", telemetry.RateLimitedWarning(telemetry.log, 60.0))
    seen: list[str] = []
    running = await _shapes_server(True, seen)
    method = "/test.Shapes/UnaryUnary"
    rejected_before = RPC_MALFORMED.labels(method)._value.get()
    invalid_before = RPC_TOTAL.labels(method, "INVALID_ARGUMENT")._value.get()
    caplog.set_level(logging.DEBUG)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            for _ in range(50):
                with pytest.raises(grpc.aio.AioRpcError):
                    await channel.unary_unary(method)(b"\xff", timeout=10)
            with pytest.raises(grpc.aio.AioRpcError):
                await _call(channel, "/test.Shapes/StreamStream", True, True, [b"\xff"])
    finally:
        await running.stop(0)
    assert RPC_MALFORMED.labels(method)._value.get() == rejected_before + 50
    assert RPC_TOTAL.labels(method, "INVALID_ARGUMENT")._value.get() == invalid_before + 50
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].name == "hftgate.telemetry"
    assert "malformed request refused: /test.Shapes/UnaryUnary" in warnings[0].getMessage()
    assert "byte 0: truncated field tag" in warnings[0].getMessage()
    assert all(r.exc_info is None for r in caplog.records), "no traceback per malformed request"
    assert telemetry.MALFORMED_LOG.suppressed == 50  # 49 unary + 1 stream, reported with the next line


def test_the_next_report_after_the_interval_says_how_many_were_suppressed(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [0]
    limited = telemetry.RateLimitedWarning(logging.getLogger("test.limited"), 1.0)
    monkeypatch.setattr(telemetry.time, "monotonic_ns", lambda: clock[0])
    caplog.set_level(logging.WARNING, logger="test.limited")
    for step in range(5):
        clock[0] = 10**10 + step * 100_000_000  # 0.1 s apart
        limited.warning("bad %s", step)
    clock[0] += 2 * 10**9
    limited.warning("bad %s", "later")
    messages = [r.getMessage() for r in caplog.records if r.name == "test.limited"]
    assert messages == ["bad 0", "bad later (and 4 more since the last report)"]


async def test_a_call_without_credentials_is_refused_before_its_bytes_are_decoded() -> None:
    secret = load_suite_secret()
    seen: list[str] = []
    handlers = _shape_handlers(seen)
    binding = ServiceBinding("test.Shapes", lambda server: server.add_generic_rpc_handlers((handlers,)))
    running = await create_server("127.0.0.1:0", [binding], auth=ServiceAuthInterceptor(secret))
    method = "/test.Shapes/UnaryUnary"
    rejected_before = RPC_MALFORMED.labels(method)._value.get()
    token = ((SERVICE_TOKEN_METADATA, secret.token_for("execution")),)
    forged = ((SERVICE_TOKEN_METADATA, "admin." + "0" * 64),)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            for shape, (client_streaming, server_streaming) in SHAPES.items():
                for metadata in ((), forged):
                    with pytest.raises(grpc.aio.AioRpcError) as refused:
                        await _call(
                            channel,
                            f"/test.Shapes/{shape}",
                            client_streaming,
                            server_streaming,
                            [b"\xff"],
                            metadata,
                        )
                    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, shape
                with pytest.raises(grpc.aio.AioRpcError) as decoded:
                    await _call(
                        channel, f"/test.Shapes/{shape}", client_streaming, server_streaming, [b"\xff"], token
                    )
                assert decoded.value.code() == grpc.StatusCode.INVALID_ARGUMENT, shape
    finally:
        await running.stop(0)
    assert RPC_MALFORMED.labels(method)._value.get() == rejected_before + 1  # only the credentialed call
    assert seen == []


# --- every RPC of every service -------------------------------------------------------------------
def _suite_services() -> Iterator[tuple[Any, Any]]:
    """(service descriptor, its *_pb2_grpc module) for every service of hftgate.v1."""
    for module_info in pkgutil.iter_modules(hftgate.v1.__path__):
        if not module_info.name.endswith("_pb2"):
            continue
        messages = importlib.import_module(f"hftgate.v1.{module_info.name}")
        for service in messages.DESCRIPTOR.services_by_name.values():
            yield service, importlib.import_module(f"hftgate.v1.{module_info.name}_grpc")


def _accepting_servicer(service: Any, grpc_module: Any) -> Any:
    """An instance of the generated servicer whose every method takes its requests and answers."""

    def method_of(method: MethodDescriptor) -> Any:
        reply_class = message_factory.GetMessageClass(method.output_type)
        if method.client_streaming and method.server_streaming:

            async def stream_stream(self: Any, requests: Any, context: Any) -> AsyncIterator[Any]:
                async for _ in requests:
                    yield reply_class()

            return stream_stream
        if method.client_streaming:

            async def stream_unary(self: Any, requests: Any, context: Any) -> Any:
                async for _ in requests:
                    pass
                return reply_class()

            return stream_unary
        if method.server_streaming:

            async def unary_stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
                yield reply_class()

            return unary_stream

        async def unary_unary(self: Any, request: Any, context: Any) -> Any:
            return reply_class()

        return unary_unary

    base = getattr(grpc_module, f"{service.name}Servicer")
    methods = {method.name: method_of(method) for method in service.methods}
    return type(f"Accepting{service.name}", (base,), methods)()


def test_every_service_of_the_suite_is_enumerated() -> None:
    names = {service.full_name for service, _ in _suite_services()}
    assert {"hftgate.v1.CacheService", "hftgate.v1.ExecutionService", "hftgate.v1.MarketDataService"} <= names


async def test_every_rpc_of_every_service_answers_malformed_bytes_with_invalid_argument() -> None:
    secret = load_suite_secret()
    services = list(_suite_services())
    bindings = []
    for service, grpc_module in services:
        servicer = _accepting_servicer(service, grpc_module)
        add = getattr(grpc_module, f"add_{service.name}Servicer_to_server")
        bindings.append(ServiceBinding(service.full_name, lambda server, s=servicer, a=add: a(s, server)))
    running = await create_server("127.0.0.1:0", bindings, auth=ServiceAuthInterceptor(secret))
    token = ((SERVICE_TOKEN_METADATA, secret.token_for("admin")),)
    checked = 0
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            for service, _ in services:
                for method in service.methods:
                    path = f"/{service.full_name}/{method.name}"
                    shape = (method.client_streaming, method.server_streaming)
                    for data, problem in ((b"\xff", "byte 0: truncated field tag"), (b"\x05\x01", "")):
                        with pytest.raises(grpc.aio.AioRpcError) as refused:
                            await _call(channel, path, *shape, [data], token)
                        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, path
                        details = refused.value.details() or ""
                        assert details.startswith(
                            f"request is not a valid {method.input_type.full_name}: "
                        ), details
                        assert problem in details
                        assert not any(marker in details for marker in INTERNALS), details
                    # The empty message is valid for every request type: the call goes through.
                    replies = await _call(channel, path, *shape, [b""], token)
                    assert len(replies) == 1, path
                    checked += 1
            # Health and reflection (open to all) decode the same way.
            with pytest.raises(grpc.aio.AioRpcError) as health:
                await channel.unary_unary("/grpc.health.v1.Health/Check")(b"\x0a\x01\xff", timeout=10)
            assert health.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as reflection:
                await _call(
                    channel,
                    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                    True,
                    True,
                    [b"\xff"],
                )
            assert reflection.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "grpc.reflection.v1alpha.ServerReflectionRequest" in (reflection.value.details() or "")
    finally:
        await running.stop(0)
    assert checked >= 30  # cache, execution and market data alone have 30 RPCs


# --- what the reject message says ------------------------------------------------------------------
def test_a_nested_problem_is_named_by_its_field_path() -> None:
    inner = b"\x12\x02\xff\xfe"  # NewOrder.symbol (field 2) with bytes that are not UTF-8
    data = b"\x0a" + bytes([len(inner)]) + inner
    with pytest.raises(DecodeError):
        execution_pb2.SubmitOrderRequest.FromString(data)
    assert describe_malformed(data, execution_pb2.SubmitOrderRequest.DESCRIPTOR) == (
        "byte 2: field order.symbol is not valid UTF-8"
    )


def test_groups_and_truncated_values_are_described() -> None:
    descriptor = cache_pb2.CacheGetRequest.DESCRIPTOR
    cases = {
        b"\x0b\x08\x01": "group 1 is not closed",
        b"\x0c": "byte 0: end of group 1, which is not open",
        b"\x19\x01\x02": "byte 0: field #3: 8-byte value truncated",
        b"\x0d\x01": "byte 0: field key: 4-byte value truncated",
        b"\x08\x80": "byte 0: field key: truncated varint",
        b"\x0a\x80": "byte 0: field key: truncated length",
        # A well-formed group of an unknown field is skipped, and the problem after it found.
        b"\x5b\x08\x01\x5c\xff": "byte 4: truncated field tag",
    }
    for data, problem in cases.items():
        with pytest.raises(DecodeError):
            cache_pb2.CacheGetRequest.FromString(data)  # the parser refuses each of them too
        assert describe_malformed(data, descriptor) == problem, data


def test_describing_a_huge_malformed_request_is_bounded() -> None:
    # 8 MiB of valid varint fields with the damage at the very end: the scan gives up after its
    # budget rather than walk every field on the event loop.
    data = b"\x08\x01" * (4 * 1024 * 1024) + b"\xff"
    assert describe_malformed(data, None) == f"malformed protobuf wire data ({len(data)} bytes)"
    # And nesting deeper than the describer follows is not a recursion error.
    nested = b""
    for _ in range(200):
        nested = b"\x0a" + varint(len(nested)) + nested
    assert describe_malformed(nested + b"\xff", execution_pb2.SubmitOrderRequest.DESCRIPTOR)
