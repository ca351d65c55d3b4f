"""A span per RPC (continuing the caller's trace) and Prometheus samples per method."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hftgate.grpcserver import create_server
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
