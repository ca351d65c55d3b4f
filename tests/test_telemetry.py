"""A span per RPC (continuing the caller's trace) and Prometheus samples per method."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hftgate.grpcserver import ServiceBinding, create_server
from hftgate.telemetry import RPC_TOTAL, ServerTelemetryInterceptor

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"


def _count(method: str, code: str) -> float:
    return RPC_TOTAL.labels(method, code)._value.get()


async def test_unary_and_streaming_calls_each_get_a_span_and_a_count() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    interceptor = ServerTelemetryInterceptor(tracer_provider=provider)
    running = await create_server("127.0.0.1:0", [], interceptors=[interceptor], telemetry=False)
    before_ok = _count(CHECK, "OK")
    before_missing = _count(CHECK, "NOT_FOUND")
    trace_id = 0x0AF7651916CD43DD8448EB211C80319C
    traceparent = f"00-{trace_id:032x}-b7ad6b7169203331-01"
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            await stub.Check(health_pb2.HealthCheckRequest(), metadata=(("traceparent", traceparent),))
            try:
                await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
            watch = stub.Watch(health_pb2.HealthCheckRequest())
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            watch.cancel()
    finally:
        await running.stop(0.2)
    spans = exporter.get_finished_spans()
    checks = [s for s in spans if s.name == CHECK]
    assert len(checks) == 2
    continued = [s for s in checks if s.context.trace_id == trace_id]
    assert len(continued) == 1, "the span must continue the caller's W3C trace"
    assert continued[0].kind == trace.SpanKind.SERVER
    assert any(s.name == WATCH for s in spans)
    assert _count(CHECK, "OK") == before_ok + 1
    assert _count(CHECK, "NOT_FOUND") == before_missing + 1


@pytest.mark.parametrize("telemetry_on", [True, False], ids=["telemetry", "no-telemetry"])
async def test_a_client_leaving_mid_stream_closes_the_handler_quietly(
    telemetry_on: bool, caplog: pytest.LogCaptureFixture
) -> None:
    closed: list[str] = []
    requests_seen: list[str] = []

    async def endless(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            while True:
                yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
                await asyncio.sleep(0)
        finally:
            closed.append("Endless")

    async def echo(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for request in requests:
                requests_seen.append(request.service)
                yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        finally:
            closed.append("Echo")

    parse, write = health_pb2.HealthCheckRequest.FromString, health_pb2.HealthCheckResponse.SerializeToString
    handlers = grpc.method_handlers_generic_handler(
        "test.Streams",
        {
            "Endless": grpc.unary_stream_rpc_method_handler(endless, parse, write),
            "Echo": grpc.stream_stream_rpc_method_handler(echo, parse, write),
        },
    )
    binding = ServiceBinding("test.Streams", lambda server: server.add_generic_rpc_handlers((handlers,)))
    running = await create_server("127.0.0.1:0", [binding], telemetry=telemetry_on)
    cancelled_before = _count("/test.Streams/Endless", "CANCELLED")
    unknown_before = _count("/test.Streams/Endless", "UNKNOWN")
    caplog.set_level(logging.DEBUG)

    async def forever() -> AsyncIterator[bytes]:
        for i in itertools.count():
            yield health_pb2.HealthCheckRequest(service=f"r{i}").SerializeToString()
            await asyncio.sleep(0.001)

    try:
        for _ in range(3):  # the client cancels, then closes its channel abruptly
            for how in ("cancel", "close"):
                channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
                stream = channel.unary_stream("/test.Streams/Endless")(b"")
                bidi = channel.stream_stream("/test.Streams/Echo")(forever())
                for _ in range(5):
                    await stream.read()
                    await bidi.read()
                if how == "cancel":
                    stream.cancel()
                    bidi.cancel()
                await channel.close()
        for _ in range(200):  # the handlers' clean-up runs as soon as the server sees the client go
            if len(closed) == 12:
                break
            await asyncio.sleep(0.01)
    finally:
        await running.stop(0.5)
    assert sorted(closed) == ["Echo"] * 6 + ["Endless"] * 6
    assert len(requests_seen) >= 30
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info is not None]
    assert loud == [], [r.getMessage() for r in loud]
    if telemetry_on:  # a client that leaves is counted as CANCELLED, not as an error of the server
        assert _count("/test.Streams/Endless", "CANCELLED") == cancelled_before + 6
        assert _count("/test.Streams/Endless", "UNKNOWN") == unknown_before
