"""Tracing and metrics every service shares: an OpenTelemetry span per RPC hop and
Prometheus counters and latency histograms per method, from one server interceptor.

Spans continue the caller's trace when the request metadata carries a W3C
``traceparent``; a client that sends none starts a new trace at this hop.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)

RPC_TOTAL = Counter("hftgate_rpc_total", "RPCs handled, by method and final status code.", ["method", "code"])
RPC_SECONDS = Histogram(
    "hftgate_rpc_seconds",
    "Server-side RPC latency (for streams: the whole stream's lifetime).",
    ["method"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 10.0),
)


def configure(service_name: str, *, exporter: SpanExporter | None = None, metrics_port: int = 0) -> None:
    """Install the tracer provider for this process and, if ``metrics_port`` > 0, serve /metrics.

    ``exporter`` defaults to none unless ``OTEL_TRACES_EXPORTER=console`` is set:
    spans are cheap to create and free to drop until someone collects them.
    """
    if exporter is None and os.environ.get("OTEL_TRACES_EXPORTER") == "console":
        exporter = ConsoleSpanExporter()
    if exporter is not None:
        # Without an exporter no provider is installed: spans stay non-recording and
        # cost next to nothing on the order path.
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    if metrics_port > 0:
        start_http_server(metrics_port, addr="127.0.0.1")
        log.info("prometheus metrics on 127.0.0.1:%d/metrics", metrics_port)


def _code_of(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    if code is None:
        return "OK"
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


class _MethodTelemetry:
    """Per-method state resolved once: metric children and the wrapped handler."""

    def __init__(self, method: str, source: grpc.RpcMethodHandler, tracer: trace.Tracer) -> None:
        self.method = method
        self.source = source
        self._tracer = tracer
        self._seconds = RPC_SECONDS.labels(method)
        self._totals: dict[str, Any] = {}
        self.wrapped = self._wrap(source)

    def start(self, context: grpc.aio.ServicerContext) -> tuple[Any, float]:
        metadata = context.invocation_metadata() or ()
        carrier = {k: v for k, v in metadata if k in ("traceparent", "tracestate") and isinstance(v, str)}
        parent = propagate.extract(carrier) if carrier else None
        span = self._tracer.start_span(self.method, context=parent, kind=trace.SpanKind.SERVER)
        if span.is_recording():
            span.set_attribute("rpc.system", "grpc")
            span.set_attribute("rpc.method", self.method)
        return span, time.perf_counter()

    def finish(self, span: Any, started: float, context: grpc.aio.ServicerContext, error: bool) -> None:
        self._seconds.observe(time.perf_counter() - started)
        code = "UNKNOWN" if error and context.code() is None else _code_of(context)
        total = self._totals.get(code)
        if total is None:
            total = self._totals[code] = RPC_TOTAL.labels(self.method, code)
        total.inc()
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code)
            if code != "OK":
                span.set_status(trace.Status(trace.StatusCode.ERROR, code))
        span.end()

    def _wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if handler.unary_unary or handler.stream_unary:
            # grpc-stubs types the handlers as sync callables; the aio server gives coroutines.
            inner: Callable[..., Any] = handler.unary_unary or handler.stream_unary  # type: ignore[assignment]

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                span, started = self.start(context)
                error = True
                try:
                    if span.is_recording():
                        with trace.use_span(span, end_on_exit=False):
                            result = await inner(request, context)
                    else:
                        result = await inner(request, context)
                    error = False
                    return result
                finally:
                    self.finish(span, started, context, error)

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(
                unary_response,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )

        inner_stream: Callable[..., Any] = handler.unary_stream or handler.stream_stream  # type: ignore[assignment]

        async def stream_response(request: Any, context: grpc.aio.ServicerContext) -> None:
            # A streaming handler is either an async generator or a coroutine that
            # calls context.write(); forwarding through context.write covers both.
            span, started = self.start(context)
            error = True
            try:
                with trace.use_span(span, end_on_exit=False):
                    result = inner_stream(request, context)
                    if inspect.isasyncgen(result):
                        async for item in result:
                            await context.write(item)
                    else:
                        await result
                error = False
            finally:
                self.finish(span, started, context, error)

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(
            stream_response,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class ServerTelemetryInterceptor(grpc.aio.ServerInterceptor):
    """One span and one latency sample per RPC, whatever its shape (unary or streaming).

    gRPC asks the interceptor for a handler on every call; the wrapped handler and
    the metric children are built once per method and reused, so a call pays only
    for its span and two metric updates.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("hftgate.grpc", tracer_provider=tracer_provider)
        self._methods: dict[str, _MethodTelemetry] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method: str = handler_call_details.method
        known = self._methods.get(method)
        if known is None or known.source is not handler:
            known = self._methods[method] = _MethodTelemetry(method, handler, self._tracer)
        return known.wrapped
