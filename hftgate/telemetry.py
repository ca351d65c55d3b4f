"""Tracing and metrics every service shares: an OpenTelemetry span per RPC hop and
Prometheus counters and latency histograms per method, from one server interceptor.

Spans continue the caller's trace when the request metadata carries a W3C
``traceparent``; a client that sends none starts a new trace at this hop.

The same wrapper decodes each request itself (gRPC hands it the raw bytes): a request that is
not a valid encoding of its message gets INVALID_ARGUMENT "request is not a valid <message>:
<what is wrong>", counted and logged at most once per interval, instead of gRPC's UNKNOWN
"Unexpected <class 'DecodeError'>" with a traceback per request. Servers built without
telemetry get the decoding alone (:class:`RequestDecodingInterceptor`). So a servicer reads
streamed requests by iterating its request iterator, never with ``context.read()`` (which
would return the raw bytes).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import FieldDescriptor
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

RPC_MALFORMED = Counter(
    "hftgate_rpc_malformed_requests_total",
    "Requests refused with INVALID_ARGUMENT because their bytes are not a valid message, by method.",
    ["method"],
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


# --- malformed requests ----------------------------------------------------------------------
_TYPE_STRING = FieldDescriptor.TYPE_STRING
_TYPE_MESSAGE = FieldDescriptor.TYPE_MESSAGE
#: What the wire describer may scan of one bad request (fields, nested ones included): the
#: description is a courtesy, and a hostile 64 MiB request must not hold the event loop.
_DESCRIBE_MAX_FIELDS = 4_096
_DESCRIBE_MAX_DEPTH = 32
#: Malformed requests are logged at most once per this interval, with how many were refused since.
MALFORMED_LOG_INTERVAL_S = 10.0


def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None


class _WireScan:
    """Finds the first thing wrong in protobuf wire data, for a reject message a client can act on."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.budget = _DESCRIBE_MAX_FIELDS

    def message(
        self, start: int, end: int, descriptor: Any, path: str, depth: int, group: int = 0
    ) -> tuple[str | None, int]:
        """(the problem or None, where the scan stopped) for the bytes [start, end)."""
        data, pos = self.data, start
        while pos < end:
            self.budget -= 1
            if self.budget < 0:
                return None, end
            at = pos
            tag = _read_varint(data, pos, end)
            if tag is None:
                return f"byte {at}: truncated field tag", end
            number, wire_type = tag[0] >> 3, tag[0] & 7
            pos = tag[1]
            if number == 0 or number >= 1 << 29:
                return f"byte {at}: field number {number} is out of range", end
            field = descriptor.fields_by_number.get(number) if descriptor is not None else None
            label = path + (field.name if field is not None else f"#{number}")
            if wire_type == 0:
                value = _read_varint(data, pos, end)
                if value is None:
                    return f"byte {at}: field {label}: truncated varint", end
                pos = value[1]
            elif wire_type in (1, 5):
                width = 8 if wire_type == 1 else 4
                if pos + width > end:
                    return f"byte {at}: field {label}: {width}-byte value truncated", end
                pos += width
            elif wire_type == 2:
                length = _read_varint(data, pos, end)
                if length is None:
                    return f"byte {at}: field {label}: truncated length", end
                pos = length[1]
                if length[0] > end - pos:
                    return f"byte {at}: field {label} claims {length[0]} bytes, {end - pos} remain", end
                body_end = pos + length[0]
                if field is not None and field.type == _TYPE_STRING:
                    try:
                        data[pos:body_end].decode("utf-8")
                    except UnicodeDecodeError:
                        return f"byte {at}: field {label} is not valid UTF-8", end
                elif field is not None and field.type == _TYPE_MESSAGE and depth < _DESCRIBE_MAX_DEPTH:
                    problem, _ = self.message(pos, body_end, field.message_type, f"{label}.", depth + 1)
                    if problem is not None:
                        return problem, end
                pos = body_end
            elif wire_type == 3:
                if depth >= _DESCRIBE_MAX_DEPTH:
                    return None, end
                problem, pos = self.message(pos, end, None, f"{label}.", depth + 1, group=number)
                if problem is not None:
                    return problem, end
            elif wire_type == 4:
                if number != group:
                    return f"byte {at}: end of group {number}, which is not open", end
                return None, pos
            else:
                return f"byte {at}: field {label} has invalid wire type {wire_type}", end
        if group:
            return f"group {group} is not closed", end
        return None, pos


def describe_malformed(data: bytes, descriptor: Any) -> str:
    """What is wrong with ``data`` as an encoding of ``descriptor``'s message, in words."""
    try:
        problem, _ = _WireScan(bytes(data)).message(0, len(data), descriptor, "", 0)
    except Exception:  # a courtesy only: describing a reject must never fail the reject
        problem = None
    return problem or f"malformed protobuf wire data ({len(data)} bytes)"


class RateLimitedWarning:
    """A warning logged at most once per interval, with how many were suppressed since."""

    def __init__(self, logger: logging.Logger, interval_s: float) -> None:
        self._logger = logger
        self._interval_ns = int(interval_s * 1e9)
        self._last_ns = -self._interval_ns
        self.suppressed = 0

    def warning(self, message: str, *args: object) -> None:
        now = time.monotonic_ns()
        if now - self._last_ns < self._interval_ns:
            self.suppressed += 1
            return
        if self.suppressed:
            message += f" (and {self.suppressed} more since the last report)"
        self._logger.warning(message, *args)
        self._last_ns = now
        self.suppressed = 0


MALFORMED_LOG = RateLimitedWarning(log, MALFORMED_LOG_INTERVAL_S)


class RequestDecoder:
    """Decodes one method's requests from the bytes gRPC received; refuses what does not decode."""

    __slots__ = ("_rejects", "descriptor", "method", "parse", "type_name")

    def __init__(self, method: str, parse: Callable[[bytes], Any]) -> None:
        self.method = method
        self.parse = parse
        message_class = getattr(parse, "__self__", None)  # Message.FromString is a class method
        self.descriptor = getattr(message_class, "DESCRIPTOR", None)
        self.type_name: str = getattr(self.descriptor, "full_name", "") or "request message"
        self._rejects = RPC_MALFORMED.labels(method)

    async def reject(self, context: grpc.aio.ServicerContext, data: Any) -> NoReturn:
        """Answer INVALID_ARGUMENT saying what is wrong with ``data``; log it rate-limited."""
        raw = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else b""
        detail = describe_malformed(raw, self.descriptor)
        self._rejects.inc()
        MALFORMED_LOG.warning(
            "malformed request refused: %s from %s, %d bytes: %s",
            self.method,
            context.peer(),
            len(raw),
            detail,
        )
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {self.type_name}: {detail}"
        )
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def messages(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        """The decoded messages of a request stream; the first that does not decode ends the call."""
        parse = self.parse
        async for data in requests:
            try:
                message = parse(data)
            except Exception:
                await self.reject(context, data)
            yield message


async def _forward_stream(result: Any, context: grpc.aio.ServicerContext) -> None:
    """Run a streaming handler's result: an async generator's items are written; a coroutine
    (which writes with context.write itself) is awaited. A generator left early (the client
    went away: CancelledError) is closed here, so its clean-up runs now, not at collection."""
    if inspect.isasyncgen(result):
        try:
            async for item in result:
                await context.write(item)
        finally:
            await result.aclose()
    else:
        await result


def decoding_handler(method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """``handler`` decoding its own requests (see the module docstring); unchanged when it has
    no deserializer (it wants bytes, or is already wrapped)."""
    parse = handler.request_deserializer
    if parse is None:
        return handler
    decoder = RequestDecoder(method, parse)
    # grpc-stubs types the handlers as sync callables; the aio server gives coroutines.
    inner: Any = handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    serializer = handler.response_serializer
    if handler.unary_unary or handler.unary_stream:

        async def decode_unary(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = parse(data)
            except Exception:
                await decoder.reject(context, data)
            return await inner(request, context)

        async def decode_unary_streaming(data: bytes, context: grpc.aio.ServicerContext) -> None:
            try:
                request = parse(data)
            except Exception:
                await decoder.reject(context, data)
            await _forward_stream(inner(request, context), context)

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(decode_unary, response_serializer=serializer)
        return grpc.unary_stream_rpc_method_handler(decode_unary_streaming, response_serializer=serializer)

    async def decode_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        return await inner(decoder.messages(requests, context), context)

    async def decode_stream_streaming(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        await _forward_stream(inner(decoder.messages(requests, context), context), context)

    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(decode_stream, response_serializer=serializer)
    return grpc.stream_stream_rpc_method_handler(decode_stream_streaming, response_serializer=serializer)


class RequestDecodingInterceptor(grpc.aio.ServerInterceptor):
    """Only the request decoding of :class:`ServerTelemetryInterceptor`, for servers without telemetry."""

    def __init__(self) -> None:
        self._methods: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

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
        if known is None or known[0] is not handler:
            known = self._methods[method] = (handler, decoding_handler(method, handler))
        return known[1]


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

    def finish(self, span: Any, started: float, context: grpc.aio.ServicerContext, failure: str) -> None:
        """Record the call; ``failure`` is "" when the handler returned, else the code to count
        when no status was set ("CANCELLED": the client went away; "UNKNOWN": an exception)."""
        self._seconds.observe(time.perf_counter() - started)
        code = failure if failure and context.code() is None else _code_of(context)
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
        # The request is decoded here, inside the span (a malformed one is counted under
        # INVALID_ARGUMENT), rather than by gRPC: see the module docstring.
        parse = handler.request_deserializer
        decoder = RequestDecoder(self.method, parse) if parse is not None else None
        serializer = handler.response_serializer
        if handler.unary_unary or handler.stream_unary:
            # grpc-stubs types the handlers as sync callables; the aio server gives coroutines.
            inner: Callable[..., Any] = handler.unary_unary or handler.stream_unary  # type: ignore[assignment]
            unary_request = handler.unary_unary is not None

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                span, started = self.start(context)
                failure = "UNKNOWN"
                try:
                    if decoder is not None:
                        if unary_request:
                            try:
                                request = decoder.parse(request)
                            except Exception:
                                await decoder.reject(context, request)
                        else:
                            request = decoder.messages(request, context)
                    if span.is_recording():
                        with trace.use_span(span, end_on_exit=False):
                            result = await inner(request, context)
                    else:
                        result = await inner(request, context)
                    failure = ""
                    return result
                except asyncio.CancelledError:
                    failure = "CANCELLED"
                    raise
                finally:
                    self.finish(span, started, context, failure)

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(unary_response, response_serializer=serializer)

        inner_stream: Callable[..., Any] = handler.unary_stream or handler.stream_stream  # type: ignore[assignment]
        unary_stream_request = handler.unary_stream is not None

        async def stream_response(request: Any, context: grpc.aio.ServicerContext) -> None:
            # A streaming handler is either an async generator or a coroutine that
            # calls context.write(); forwarding through context.write covers both.
            span, started = self.start(context)
            failure = "UNKNOWN"
            try:
                if decoder is not None:
                    if unary_stream_request:
                        try:
                            request = decoder.parse(request)
                        except Exception:
                            await decoder.reject(context, request)
                    else:
                        request = decoder.messages(request, context)
                with trace.use_span(span, end_on_exit=False):
                    await _forward_stream(inner_stream(request, context), context)
                failure = ""
            except asyncio.CancelledError:  # the client went away: not an error of ours
                failure = "CANCELLED"
                raise
            finally:
                self.finish(span, started, context, failure)

        factory = (
            grpc.unary_stream_rpc_method_handler
            if handler.unary_stream
            else grpc.stream_stream_rpc_method_handler
        )
        return factory(stream_response, response_serializer=serializer)


class ServerTelemetryInterceptor(grpc.aio.ServerInterceptor):
    """One span and one latency sample per RPC, whatever its shape (unary or streaming), and
    the request decoding of :func:`decoding_handler` (a malformed request: INVALID_ARGUMENT).

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
