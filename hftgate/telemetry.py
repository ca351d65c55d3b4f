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

Two ways around protobuf objects on hot paths, both opted into by the servicer: a method marked
:func:`takes_request_bytes` gets each request as a :class:`RequestBytes` (the bytes as received,
for a reader of its own, and protobuf's reading with the same refusal of malformed bytes); and a
response may be sent as bytes its handler serialized itself (a stream's ``bytes`` writes, a unary
method's :class:`SerializedResponse`: :func:`bytes_or`).

Tracing (see :func:`configure`): spans leave the process through OpenTelemetry's own OTLP
exporter when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is
set, over gRPC or HTTP (``OTEL_EXPORTER_OTLP_PROTOCOL``: ``grpc``, the default, or
``http/protobuf``), every standard ``OTEL_*`` variable honoured (headers, timeout, TLS,
``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_BSP_*``); into a file of OTLP JSON
lines (one ``ExportTraceServiceRequest`` a line, as the OpenTelemetry Collector's file exporter
writes them; ``hftgate trace-report FILE`` reads it) when ``HFTGATE_TRACE_FILE`` is set; to the
console with ``OTEL_TRACES_EXPORTER=console``. Sampling is the SDK's, from
``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` (e.g. ``parentbased_traceidratio`` and
``0.01``); propagation is W3C ``traceparent`` (``OTEL_PROPAGATORS``). With none of these set no
provider is installed and spans cost next to nothing.

The batch processor's queue is bounded (``OTEL_BSP_MAX_QUEUE_SIZE``, default 2048 spans); a span
that finds it full is dropped and counted, as are spans whose export failed:
``hftgate_spans_dropped_total{reason="queue_full"|"export_failed"|"shutdown"}`` on /metrics.

Outbound calls: :class:`ClientSpan` opens a CLIENT span around one call and gives the call's
metadata with the span's ``traceparent`` appended (the cache client and the trade feed use it).

Streams: besides the span of the whole stream, every *received* message of a client or
bidirectional stream gets a span of its own (:class:`_TracedMessages`): a new trace per message,
so the sampler decides per message, linked to the stream's span, current while the servicer
handles the message (from its receipt until the servicer asks for the next one), so the
servicer's outbound calls become its children.

Span attributes come from the messages themselves (``_attribute_plan``): a request's ``symbol``
or ``order.symbol`` (``hftgate.symbol``), the size of a batch (``orders``, ``inputs``,
``keys``, ``entries``, ``trades``: ``hftgate.batch_size``), a cache key's namespace
(``hftgate.cache.key_prefix``, never the key, which may name an API key's hash); a response's
journal sequence and durability (``ack.sequence``/``ack.durable``, the last of ``acks``, or
``sequence``/``durable``: ``hftgate.journal.sequence``, ``hftgate.durable``) and a cache
answer's ``found``/``served_from``. What only a servicer knows (the account) it adds with
:func:`set_span_attributes`.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import inspect
import json
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
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


SPANS_DROPPED = Counter(
    "hftgate_spans_dropped_total",
    "Finished, sampled spans that never left the process: the export queue was full (queue_full), "
    "the exporter failed (export_failed) or the process was shutting down (shutdown).",
    ["reason"],
)
SPANS_EXPORTED = Counter("hftgate_spans_exported_total", "Spans handed to the exporter successfully.")

#: A file that receives OTLP JSON lines (see the module docstring).
TRACE_FILE_VARIABLE = "HFTGATE_TRACE_FILE"
#: The OTLP protocols OpenTelemetry's Python exporters implement.
OTLP_PROTOCOLS = ("grpc", "http/protobuf")
_DEFAULT_MAX_QUEUE_SIZE = 2048

_provider: TracerProvider | None = None
_configure_lock = threading.Lock()


def _env_true(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def otlp_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """The OTLP endpoint the standard variables name, or "" (no OTLP export)."""
    env = os.environ if environ is None else environ
    return env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")


def otlp_protocol(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
        or "grpc"
    ).strip()


def exporters_from_environment(environ: Mapping[str, str] | None = None) -> list[SpanExporter]:
    """The span exporters the environment asks for (see the module docstring); [] = tracing off.

    A protocol the Python exporters do not implement is logged and skipped, never fatal: a
    trading service does not refuse to start over its tracing."""
    env = os.environ if environ is None else environ
    if _env_true(env.get("OTEL_SDK_DISABLED")):
        return []
    wanted = {part.strip().lower() for part in env.get("OTEL_TRACES_EXPORTER", "").split(",") if part.strip()}
    if "none" in wanted:
        return []
    exporters: list[SpanExporter] = []
    if otlp_endpoint(env) and (not wanted or "otlp" in wanted):
        protocol = otlp_protocol(env)
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter as HttpSpanExporter,
            )

            exporters.append(HttpSpanExporter())
        else:
            log.error(
                "OTEL_EXPORTER_OTLP_PROTOCOL=%r is not supported (use %s): no OTLP export",
                protocol,
                " or ".join(OTLP_PROTOCOLS),
            )
    if env.get(TRACE_FILE_VARIABLE):
        exporters.append(OtlpJsonFileExporter(Path(env[TRACE_FILE_VARIABLE])))
    if "console" in wanted:
        exporters.append(ConsoleSpanExporter())
    return exporters


def _resource(service_name: str, environ: Mapping[str, str]) -> Resource:
    """``service.name`` = ``service_name`` unless OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES name one."""
    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return Resource.create({} if named else {"service.name": service_name})


def configure(
    service_name: str,
    *,
    exporter: SpanExporter | None = None,
    metrics_port: int = 0,
    metrics_host: str = "127.0.0.1",
    environ: Mapping[str, str] | None = None,
) -> TracerProvider | None:
    """Install the tracer provider for this process and, if ``metrics_port`` > 0, serve /metrics
    on ``metrics_host``.

    The exporters are ``exporter`` if given, else those the environment asks for
    (:func:`exporters_from_environment`); with none, no provider is installed: spans stay
    non-recording and cost next to nothing on the order path. The sampler is the SDK's, from
    ``OTEL_TRACES_SAMPLER``/``_ARG``. Each exporter sits behind its own bounded batch processor
    (:class:`CountingBatchSpanProcessor`). Installs at most once per process; returns the
    provider (the one installed earlier, on a second call), or None.
    """
    global _provider
    env = os.environ if environ is None else environ
    with _configure_lock:
        if _provider is None:
            exporters = [exporter] if exporter is not None else exporters_from_environment(env)
            if exporters:
                provider = TracerProvider(resource=_resource(service_name, env))
                for one in exporters:
                    provider.add_span_processor(CountingBatchSpanProcessor(one))
                trace.set_tracer_provider(provider)
                _provider = provider
                log.info(
                    "tracing: %s exporting to %s",
                    service_name,
                    ", ".join(type(one).__name__ for one in exporters),
                )
    if metrics_port > 0:
        start_http_server(metrics_port, addr=metrics_host)
        log.info("prometheus metrics on %s:%d/metrics", metrics_host, metrics_port)
    return _provider


def default_service_name() -> str:
    """``OTEL_SERVICE_NAME``, else the service this process runs (``python -m services.cache``: "cache")."""
    named = os.environ.get("OTEL_SERVICE_NAME")
    if named:
        return named
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    parts = (getattr(spec, "name", "") or "").split(".")
    if len(parts) >= 2 and parts[0] == "services":
        return parts[1]
    return "hftgate"


def configure_from_environment() -> TracerProvider | None:
    """:func:`configure` with the process's service name, if the environment asks for tracing and
    nothing is configured yet. Every server's telemetry interceptor calls it, so a service whose
    entry point does not call :func:`configure` still exports its spans."""
    if _provider is not None:
        return _provider
    if not (otlp_endpoint() or os.environ.get(TRACE_FILE_VARIABLE)):
        return None
    return configure(default_service_name())


# --- export: OTLP JSON and the dropped-span count -----------------------------------------------


def _hex_ids(spans: list[dict[str, Any]]) -> None:
    """OTLP/JSON writes trace and span ids as hex, where protobuf's JSON mapping gives base64."""
    for span in spans:
        for name in ("traceId", "spanId", "parentSpanId"):
            if span.get(name):
                span[name] = base64.b64decode(span[name]).hex()
        for link in span.get("links", ()):
            for name in ("traceId", "spanId"):
                if link.get(name):
                    link[name] = base64.b64decode(link[name]).hex()


def otlp_json(request: Any) -> dict[str, Any]:
    """An ``ExportTraceServiceRequest`` as OTLP/JSON (lowerCamelCase, hex ids, enums as numbers)."""
    document: dict[str, Any] = MessageToDict(request, use_integers_for_enums=True)
    for resource_spans in document.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            _hex_ids(scope_spans.get("spans", []))
    return document


def otlp_json_of_spans(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """Finished SDK spans as one OTLP/JSON ``ExportTraceServiceRequest``."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    return otlp_json(encode_spans(spans))


class OtlpJsonFileExporter(SpanExporter):
    """Appends each exported batch to ``path`` as one line of OTLP JSON (see :func:`otlp_json`).

    The file grows without bound while the process runs: it is for runs a person inspects
    (``hftgate trace-report FILE``), not for production, which exports over OTLP to a collector.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by shutdown()
        self._lock = threading.Lock()
        self._errors = RateLimitedWarning(log, 10.0)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            line = json.dumps(otlp_json_of_spans(spans), separators=(",", ":"))
            with self._lock:
                if self._file.closed:
                    return SpanExportResult.FAILURE
                self._file.write(line + "\n")
                self._file.flush()
        except (OSError, ValueError) as exc:
            self._errors.warning("trace file %s: spans not written (%s)", self.path, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        with self._lock:
            self._file.close()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class _ReleasingExporter(SpanExporter):
    """The exporter behind :class:`CountingBatchSpanProcessor`: counts what each export did."""

    def __init__(self, inner: SpanExporter, owner: CountingBatchSpanProcessor) -> None:
        self.inner = inner
        self._owner = owner

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:  # an exporter must not raise; if it does, its batch is lost
            log.warning("span exporter %s raised", type(self.inner).__name__, exc_info=True)
            result = SpanExportResult.FAILURE
        finally:
            self._owner._released(len(spans))
        if result == SpanExportResult.SUCCESS:
            SPANS_EXPORTED.inc(len(spans))
        else:
            self._owner._drop(len(spans), "export_failed")
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingBatchSpanProcessor(SpanProcessor):
    """The SDK's :class:`BatchSpanProcessor`, with every span it would drop counted.

    The SDK's queue drops past ``max_queue_size`` (logging a warning per span and counting
    nothing anyone scrapes). Here a span is admitted only while fewer than ``max_queue_size``
    are queued or being exported, so the SDK's queue never overflows, and every span refused
    is counted in ``hftgate_spans_dropped_total{reason="queue_full"}`` (and :attr:`dropped`).
    ``max_queue_size`` defaults to ``OTEL_BSP_MAX_QUEUE_SIZE``, else 2048; the other
    ``OTEL_BSP_*`` variables apply as in the SDK.
    """

    def __init__(
        self, exporter: SpanExporter, max_queue_size: int | None = None, **batch_options: Any
    ) -> None:
        if max_queue_size is None:
            try:
                max_queue_size = int(os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE", _DEFAULT_MAX_QUEUE_SIZE))
            except ValueError:
                max_queue_size = _DEFAULT_MAX_QUEUE_SIZE
        self.max_queue_size = max(1, max_queue_size)
        batch_size = batch_options.pop("max_export_batch_size", None)
        if batch_size is None:
            try:
                batch_size = int(os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512))
            except ValueError:
                batch_size = 512
        self._lock = threading.Lock()
        self._queued = 0
        self._closed = False
        self.dropped: dict[str, int] = {}
        self._inner = BatchSpanProcessor(
            _ReleasingExporter(exporter, self),
            max_queue_size=self.max_queue_size,
            max_export_batch_size=min(batch_size, self.max_queue_size),
            **batch_options,
        )

    def _released(self, count: int) -> None:
        with self._lock:
            self._queued -= count

    def _drop(self, count: int, reason: str) -> None:
        with self._lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + count
        SPANS_DROPPED.labels(reason).inc(count)

    def on_start(self, span: Any, parent_context: otel_context.Context | None = None) -> None:
        self._inner.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None or not context.trace_flags.sampled:
            return
        with self._lock:
            if self._closed:
                reason = "shutdown"
            elif self._queued >= self.max_queue_size:
                reason = "queue_full"
            else:
                self._queued += 1
                reason = ""
        if reason:
            self._drop(1, reason)
            return
        self._inner.on_end(span)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


# --- outbound calls --------------------------------------------------------------------------------

_CLIENT_TRACER = trace.get_tracer("hftgate.grpc.client")
#: An empty context: a span started in it is the root of a new trace.
ROOT_CONTEXT = otel_context.Context()
_STATUS_OK = "OK"


def _rpc_names(method: str) -> tuple[str, str]:
    """("hftgate.v1.CacheService", "Get") of "/hftgate.v1.CacheService/Get"."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


def trace_metadata(
    metadata: Sequence[tuple[str, str]] | None, context: otel_context.Context | None = None
) -> Sequence[tuple[str, str]] | None:
    """``metadata`` with the W3C trace headers of ``context`` (default: the current one) appended;
    unchanged when there is no valid span to continue."""
    span = trace.get_current_span(context)
    if not span.get_span_context().is_valid:
        return metadata
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return (*(metadata or ()), *carrier.items())


class ClientSpan:
    """A span of kind CLIENT around one outbound call, and the call's metadata carrying it.

        with ClientSpan("/hftgate.v1.CacheService/Get", target, credentials_metadata) as call:
            reply = await stub.Get(request, metadata=call.metadata)
            call.set("hftgate.cache.found", reply.found)

    The span is a child of the current span (the server span of the call being handled), and
    ``metadata`` is the given metadata plus its ``traceparent``/``tracestate`` (W3C), so the
    server's span becomes the span's child. With tracing off the span is a no-op and
    ``metadata`` is the given metadata itself. On exit the span records the call's gRPC status
    (``rpc.grpc.status_code``; an error status marks the span as an error) and ends.
    """

    __slots__ = ("metadata", "span")

    def __init__(
        self,
        method: str,
        target: str,
        metadata: Sequence[tuple[str, str]] | None,
        attributes: Mapping[str, Any] | None = None,
        *,
        kind: trace.SpanKind = trace.SpanKind.CLIENT,
        tracer: trace.Tracer | None = None,
        context: otel_context.Context | None = None,
    ) -> None:
        span = (tracer or _CLIENT_TRACER).start_span(method, context=context, kind=kind)
        self.span = span
        self.metadata: Sequence[tuple[str, str]] | None = metadata
        if not span.get_span_context().is_valid:
            return
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        self.metadata = (*(metadata or ()), *carrier.items())
        if span.is_recording():
            service, name = _rpc_names(method)
            host, _, port = target.rpartition(":")
            span.set_attribute("rpc.system", "grpc")
            span.set_attribute("rpc.service", service)
            span.set_attribute("rpc.method", name)
            span.set_attribute("server.address", host or target)
            if port.isdigit():
                span.set_attribute("server.port", int(port))
            if attributes:
                span.set_attributes(attributes)

    def set(self, name: str, value: Any) -> None:
        """Set an attribute on the span if it records (values: str, bool, int, float)."""
        if self.span.is_recording():
            self.span.set_attribute(name, value)

    def __enter__(self) -> ClientSpan:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        span = self.span
        if span.is_recording():
            if exc is None:
                code = _STATUS_OK
            elif isinstance(exc, grpc.RpcError) and callable(getattr(exc, "code", None)):
                found = exc.code()
                code = found.name if isinstance(found, grpc.StatusCode) else str(found)
            elif isinstance(exc, asyncio.CancelledError):
                code = "CANCELLED"
            else:
                code = "UNKNOWN"
                span.set_attribute("error.type", type(exc).__name__)
            span.set_attribute("rpc.grpc.status_code", code)
            if code != _STATUS_OK:
                span.set_status(trace.Status(trace.StatusCode.ERROR, code))
        span.end()


def set_span_attributes(attributes: Mapping[str, Any]) -> None:
    """Set attributes on the current span (the RPC's, or the stream message's) if it records:
    what only a servicer knows, e.g. ``{"hftgate.account": account.name}``."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes(attributes)


def sampled_context() -> otel_context.Context | None:
    """The current context if its span is sampled, else None (cheap: for hand-offs to background work)."""
    context = otel_context.get_current()
    span = trace.get_current_span(context)
    return context if span.get_span_context().trace_flags.sampled else None


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

    async def raw_messages(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[RequestBytes]:
        """A request stream's messages as received (for a handler marked takes_request_bytes)."""
        async for data in requests:
            yield RequestBytes(data, self, context)

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


# What a server stream's write raises when the call ended while the write waited for the
# client's flow control window (the client went away without reading): gRPC's own name for a
# failed send. Escaping the handler, gRPC logs it at ERROR as if the server had failed; it is a
# client leaving, as a CancelledError says.
_WRITE_FAILED: Any = getattr(importlib.import_module("grpc._cython.cygrpc"), "ExecuteBatchError", ())


class SerializedResponse:
    """A unary response its handler serialized itself: ``data``, the wire bytes of a
    ``message_type`` (kept for the span attributes of a sampled call, which parse it)."""

    __slots__ = ("data", "message_type")

    def __init__(self, data: bytes, message_type: Any) -> None:
        self.data = data
        self.message_type = message_type


class RequestBytes:
    """A request (or one message of a request stream) as gRPC received it, for a handler marked
    :func:`takes_request_bytes`:
    ``data``, its bytes, for a reader of its own (one that takes only what protobuf reads the
    same way), and :meth:`message` for protobuf's reading, which refuses bytes that do not decode
    exactly as every other method's requests are refused (INVALID_ARGUMENT, the call ended)."""

    __slots__ = ("_context", "_decoder", "data")

    def __init__(self, data: bytes, decoder: RequestDecoder, context: grpc.aio.ServicerContext) -> None:
        self.data = data
        self._decoder = decoder
        self._context = context

    async def message(self) -> Any:
        """The request as its message; a request that does not decode ends the call."""
        message = self.parsed()
        if message is None:
            await self.refuse()
        return message

    async def refuse(self) -> None:
        """End the call as :meth:`message` does for bytes that do not decode (INVALID_ARGUMENT
        saying what is wrong, counted and logged): for a handler that read :meth:`parsed` and
        must first stop other work on the call (a stream's writes)."""
        await self._decoder.reject(self._context, self.data)

    def parsed(self) -> Any:
        """The request as its message, or None where it does not decode."""
        try:
            return self._decoder.parse(self.data)
        except Exception:
            return None


def takes_request_bytes(method: Any) -> Any:
    """Mark a servicer method to be handed each request as a :class:`RequestBytes` instead of the
    decoded message: its one request, or each message of its request stream (the suite's servers
    decode requests themselves: see the module docstring). Not for a unary-request,
    server-streaming method, which is handed its request decoded."""
    method.takes_request_bytes = True
    return method


def _takes_bytes(handler_function: Any) -> bool:
    # (A bound method reads its function's attributes.)
    return bool(getattr(handler_function, "takes_request_bytes", False))


def bytes_or(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes] | None:
    """A method's response serializer that also takes a response its handler has serialized
    itself, as is: ``bytes`` (a stream's writes) or a :class:`SerializedResponse` (a unary
    method's return). A handler that builds a message's entries as wire bytes in C then need not
    parse them into a message for gRPC to serialize them again."""
    if serializer is None:
        return None
    serialize = serializer

    def serialize_or_pass(message: Any) -> bytes:
        kind = message.__class__
        if kind is bytes:
            return message  # type: ignore[no-any-return]
        if kind is SerializedResponse:
            return message.data  # type: ignore[no-any-return]
        return serialize(message)

    return serialize_or_pass


async def _forward_stream(result: Any, context: grpc.aio.ServicerContext) -> None:
    """Run a streaming handler's result: an async generator's items are written; a coroutine
    (which writes with context.write itself) is awaited. A generator left early (the client
    went away: CancelledError) is closed here, so its clean-up runs now, not at collection."""
    if inspect.isasyncgen(result):
        try:
            async for item in result:
                try:
                    await context.write(item)
                except _WRITE_FAILED:  # the call ended under a write that waited on its client
                    raise asyncio.CancelledError from None
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
        raw = _takes_bytes(inner)

        async def decode_unary(data: bytes, context: grpc.aio.ServicerContext) -> Any:
            if raw:
                return await inner(RequestBytes(data, decoder, context), context)
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
            return grpc.unary_unary_rpc_method_handler(decode_unary, response_serializer=bytes_or(serializer))
        return grpc.unary_stream_rpc_method_handler(
            decode_unary_streaming, response_serializer=bytes_or(serializer)
        )

    read = decoder.raw_messages if _takes_bytes(inner) else decoder.messages

    async def decode_stream(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> Any:
        return await inner(read(requests, context), context)

    async def decode_stream_streaming(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        await _forward_stream(inner(read(requests, context), context), context)

    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(decode_stream, response_serializer=bytes_or(serializer))
    return grpc.stream_stream_rpc_method_handler(
        decode_stream_streaming, response_serializer=bytes_or(serializer)
    )


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


# --- span attributes from the messages ------------------------------------------------------------

Getter = Callable[[Any], Any]
AttributePlan = tuple[tuple[str, Getter], ...]
_BATCH_FIELDS = ("orders", "inputs", "keys", "entries", "trades")


def _key_prefix(key: str) -> str:
    prefix, colon, _ = key.partition(":")
    return prefix + colon if colon else ""


def _last_of(name: str, field: str) -> Getter:
    def get(message: Any) -> Any:
        items = getattr(message, name)
        return getattr(items[-1], field) if len(items) else None

    return get


def _length_of(name: str) -> Getter:
    return lambda message: len(getattr(message, name))


def _nested(outer: str, field: str) -> Getter:
    return lambda message: getattr(getattr(message, outer), field)


def _attribute_plan(descriptor: Any) -> AttributePlan:
    """Which attributes a message of ``descriptor``'s type gives its span (module docstring), and how."""
    if descriptor is None:
        return ()
    fields = descriptor.fields_by_name
    plan: list[tuple[str, Getter]] = []

    def has(name: str, *, repeated: bool | None = None, of: str | None = None) -> bool:
        field = fields.get(name)
        if field is None:
            return False
        if hasattr(field, "is_repeated"):  # protobuf >= 5.28; `label` is gone in 7
            is_repeated = bool(field.is_repeated)
        else:  # pragma: no cover
            is_repeated = field.label == FieldDescriptor.LABEL_REPEATED
        if repeated is not None and is_repeated != repeated:
            return False
        if of is not None:
            return field.message_type is not None and of in field.message_type.fields_by_name
        return True

    if has("symbol", repeated=False) and fields["symbol"].type == _TYPE_STRING:
        plan.append(("hftgate.symbol", lambda m: m.symbol))
    elif has("order", repeated=False, of="symbol"):
        plan.append(("hftgate.symbol", _nested("order", "symbol")))
    for name in _BATCH_FIELDS:
        if has(name, repeated=True):
            plan.append(("hftgate.batch_size", _length_of(name)))
            break
    if has("key", repeated=False) and fields["key"].type == _TYPE_STRING:
        plan.append(("hftgate.cache.key_prefix", lambda m: _key_prefix(m.key)))
    if has("ack", repeated=False, of="sequence"):
        plan.append(("hftgate.journal.sequence", _nested("ack", "sequence")))
        plan.append(("hftgate.durable", _nested("ack", "durable")))
    elif has("acks", repeated=True, of="sequence"):
        plan.append(("hftgate.journal.sequence", _last_of("acks", "sequence")))
        plan.append(("hftgate.durable", _last_of("acks", "durable")))
    elif has("sequence", repeated=False) and has("durable", repeated=False):
        plan.append(("hftgate.journal.sequence", lambda m: m.sequence))
        plan.append(("hftgate.durable", lambda m: m.durable))
    if has("found", repeated=False) and has("served_from", repeated=False):
        plan.append(("hftgate.cache.found", lambda m: m.found))
        plan.append(("hftgate.cache.level", lambda m: int(m.served_from)))
    return tuple(plan)


def _annotate(span: Any, plan: AttributePlan, message: Any) -> None:
    """Set ``plan``'s attributes of ``message`` on a recording span; empty strings are left out.

    All in one ``set_attributes``: the SDK takes the span's lock and builds a mapping per call, so
    one call per message rather than per attribute (sampled calls pay for every one of them)."""
    values: dict[str, Any] = {}
    for name, get in plan:
        try:
            value = get(message)
        except Exception:  # a courtesy: an attribute never fails a call
            continue
        if value is None or value == "":
            continue
        values[name] = value
    if values:
        span.set_attributes(values)


class _TracedMessages:
    """A decoded request stream whose every message gets a span of its own (module docstring).

    The span of message n starts when it is handed to the servicer and ends when the servicer
    asks for message n + 1 (or the stream ends, or :meth:`close`); meanwhile it is the current
    span of the task that reads the stream. Each is the root of a new trace (so the sampler
    decides per message, and one long stream is not one endless trace), linked to the stream's
    span. Nothing is attached when the message is not sampled.
    """

    __slots__ = ("_index", "_links", "_messages", "_name", "_plan", "_span", "_task", "_token", "_tracer")

    def __init__(
        self, messages: AsyncIterator[Any], tracer: trace.Tracer, method: str, stream_span: Any
    ) -> None:
        self._messages = messages.__aiter__()
        self._tracer = tracer
        self._name = method + " message"
        parent = stream_span.get_span_context()
        self._links = (trace.Link(parent),) if parent.is_valid else ()
        self._plan: AttributePlan | None = None
        self._span: Any = None
        self._token: object | None = None
        self._task: asyncio.Task[Any] | None = None
        self._index = 0

    def __aiter__(self) -> _TracedMessages:
        return self

    async def __anext__(self) -> Any:
        if self._span is not None:
            self.close()
        message = await self._messages.__anext__()
        self._index += 1
        span = self._tracer.start_span(
            self._name, context=ROOT_CONTEXT, kind=trace.SpanKind.SERVER, links=self._links
        )
        if span.is_recording():
            span.set_attribute("rpc.system", "grpc")
            span.set_attribute("rpc.method", self._name[: -len(" message")])
            span.set_attribute("rpc.message.type", "RECEIVED")
            span.set_attribute("rpc.message.id", self._index)
            readable = message.parsed() if message.__class__ is RequestBytes else message
            if self._plan is None and readable is not None:
                self._plan = _attribute_plan(getattr(readable, "DESCRIPTOR", None))
            if self._plan:
                _annotate(span, self._plan, readable)
            self._span = span
            self._token = otel_context.attach(trace.set_span_in_context(span))
            self._task = asyncio.current_task()
        return message

    def close(self) -> None:
        """End the current message's span (and make it no longer current, in the task that read it)."""
        span, token = self._span, self._token
        self._span = self._token = None
        if span is None:
            return
        if token is not None and asyncio.current_task() is self._task:
            otel_context.detach(token)  # type: ignore[arg-type]
        span.end()


def _no_tracer_provider() -> bool:
    """No tracer provider is installed in this process (spans from the global tracer are no-ops)."""
    return isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


class _MethodTelemetry:
    """Per-method state resolved once: metric children, attribute plans and the wrapped handler."""

    def __init__(
        self, method: str, source: grpc.RpcMethodHandler, tracer: trace.Tracer, *, global_tracer: bool = True
    ) -> None:
        self.method = method
        self.source = source
        self._tracer = tracer
        #: The tracer is the global one (no provider passed in): while no provider is installed,
        #: every span would be non-recording and invalid, so a call skips making one.
        self._global_tracer = global_tracer
        self._seconds = RPC_SECONDS.labels(method)
        self._totals: dict[str, Any] = {}
        self._request_plan: AttributePlan = ()
        self._response_plan: AttributePlan | None = None
        service, name = _rpc_names(method)
        self._rpc_attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        self.wrapped = self._wrap(source)

    def untraced(self) -> bool:
        """No span of this method can record: the global tracer with no provider installed."""
        return self._global_tracer and _no_tracer_provider()

    def start_unary(self, context: grpc.aio.ServicerContext) -> tuple[Any, float]:
        """:meth:`start` for a unary response, whose span is current only while it records: with
        no provider, no metadata scan and no span (a no-op tracer's span, unused, is the same)."""
        if self.untraced():
            return trace.INVALID_SPAN, time.perf_counter()
        return self.start(context)

    def start(self, context: grpc.aio.ServicerContext) -> tuple[Any, float]:
        metadata = context.invocation_metadata() or ()
        carrier = {
            k: v for k, v in metadata if k in ("traceparent", "tracestate", "baggage") and isinstance(v, str)
        }
        parent = propagate.extract(carrier) if carrier else None
        # The method's constant attributes given at the start (taken by a sampled span at once,
        # dropped by an unsampled one), not set one by one afterwards.
        span = self._tracer.start_span(
            self.method, context=parent, kind=trace.SpanKind.SERVER, attributes=self._rpc_attributes
        )
        return span, time.perf_counter()

    def annotate_response(self, span: Any, response: Any) -> None:
        if response.__class__ is SerializedResponse:
            response = response.message_type.FromString(response.data)  # (a sampled call only)
        plan = self._response_plan
        if plan is None:
            plan = self._response_plan = _attribute_plan(getattr(response, "DESCRIPTOR", None))
        if plan:
            _annotate(span, plan, response)

    def finish(
        self,
        span: Any,
        started: float,
        context: grpc.aio.ServicerContext,
        failure: str,
        *,
        elapsed_s: float | None = None,
        end_time_ns: int | None = None,
    ) -> None:
        """Record the call; ``failure`` is "" when the handler returned, else the code to count
        when no status was set ("CANCELLED": the client went away; "UNKNOWN": an exception).
        ``elapsed_s`` / ``end_time_ns``: when the call ended, for a finish run after it."""
        self._seconds.observe(time.perf_counter() - started if elapsed_s is None else elapsed_s)
        code = failure if failure and context.code() is None else _code_of(context)
        total = self._totals.get(code)
        if total is None:
            total = self._totals[code] = RPC_TOTAL.labels(self.method, code)
        total.inc()
        if span.is_recording():
            span.set_attribute("rpc.grpc.status_code", code)
            if code != "OK":
                span.set_status(trace.Status(trace.StatusCode.ERROR, code))
        span.end(end_time=end_time_ns)

    def _finish_after_response(
        self,
        span: Any,
        started: float,
        context: grpc.aio.ServicerContext,
        failure: str,
        response: Any,
        elapsed_s: float,
        end_time_ns: int,
    ) -> None:
        if response is not None:
            self.annotate_response(span, response)
        self.finish(span, started, context, failure, elapsed_s=elapsed_s, end_time_ns=end_time_ns)

    def finish_soon(
        self, span: Any, started: float, context: grpc.aio.ServicerContext, failure: str, response: Any
    ) -> None:
        """:meth:`finish` of a unary call in the loop's next turn, once gRPC has started sending
        the response: the call's metrics and, when sampled, the span's response attributes, status
        and end (the SDK's locks, the batch processor's queue: ~20 us) are off the caller's wait
        (issue #16's sampled bar). The duration and the span's end time are the call's own."""
        elapsed_s, end_time_ns = time.perf_counter() - started, time.time_ns()
        try:
            asyncio.get_running_loop().call_soon(
                self._finish_after_response, span, started, context, failure, response, elapsed_s, end_time_ns
            )
        except RuntimeError:  # no running loop (never in a server): finish here
            self._finish_after_response(span, started, context, failure, response, elapsed_s, end_time_ns)

    def _wrap(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        # The request is decoded here, inside the span (a malformed one is counted under
        # INVALID_ARGUMENT), rather than by gRPC: see the module docstring.
        parse = handler.request_deserializer
        decoder = RequestDecoder(self.method, parse) if parse is not None else None
        if decoder is not None:
            self._request_plan = _attribute_plan(decoder.descriptor)
        serializer = handler.response_serializer
        if handler.unary_unary or handler.stream_unary:
            # grpc-stubs types the handlers as sync callables; the aio server gives coroutines.
            inner: Callable[..., Any] = handler.unary_unary or handler.stream_unary  # type: ignore[assignment]
            unary_request = handler.unary_unary is not None
            raw = decoder is not None and _takes_bytes(inner)

            async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
                span, started = self.start_unary(context)
                failure = "UNKNOWN"
                messages: _TracedMessages | None = None
                response: Any = None  # a sampled call's response, annotated once it is sent
                try:
                    if decoder is not None:
                        if raw and unary_request:
                            request = RequestBytes(request, decoder, context)
                        elif unary_request:
                            try:
                                request = decoder.parse(request)
                            except Exception:
                                await decoder.reject(context, request)
                        else:
                            request = (decoder.raw_messages if raw else decoder.messages)(request, context)
                    if not unary_request and not self.untraced():
                        # Per-message spans only with a provider (without one, each message's
                        # span would be a no-op, never current: nothing to make).
                        request = messages = _TracedMessages(request, self._tracer, self.method, span)
                    if span.is_recording():
                        if unary_request and self._request_plan:
                            _annotate(span, self._request_plan, request.parsed() if raw else request)
                        with trace.use_span(span, end_on_exit=False):
                            try:
                                result = await inner(request, context)
                            finally:
                                if messages is not None:
                                    messages.close()
                        response = result
                    else:
                        try:
                            result = await inner(request, context)
                        finally:
                            if messages is not None:
                                messages.close()
                    failure = ""
                    return result
                except asyncio.CancelledError:
                    failure = "CANCELLED"
                    raise
                finally:
                    # Off the caller's wait, sampled or not: the histogram, the counter and the
                    # status read (~5-10 us) run once gRPC has the response.
                    self.finish_soon(span, started, context, failure, response)

            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary
                else grpc.stream_unary_rpc_method_handler
            )
            return factory(unary_response, response_serializer=bytes_or(serializer))

        inner_stream: Callable[..., Any] = handler.unary_stream or handler.stream_stream  # type: ignore[assignment]
        unary_stream_request = handler.unary_stream is not None
        # (A server-streaming method with one request is handed it decoded, whatever its mark.)
        raw_stream = decoder is not None and not unary_stream_request and _takes_bytes(inner_stream)

        async def stream_response(request: Any, context: grpc.aio.ServicerContext) -> None:
            # A streaming handler is either an async generator or a coroutine that
            # calls context.write(); forwarding through context.write covers both.
            span, started = self.start(context)
            failure = "UNKNOWN"
            messages: _TracedMessages | None = None
            try:
                if decoder is not None:
                    if unary_stream_request:
                        try:
                            request = decoder.parse(request)
                        except Exception:
                            await decoder.reject(context, request)
                    else:
                        request = (decoder.raw_messages if raw_stream else decoder.messages)(request, context)
                if not unary_stream_request:
                    if not self.untraced():  # see unary_response
                        request = messages = _TracedMessages(request, self._tracer, self.method, span)
                elif self._request_plan and span.is_recording():
                    _annotate(span, self._request_plan, request)
                with trace.use_span(span, end_on_exit=False):
                    try:
                        await _forward_stream(inner_stream(request, context), context)
                    finally:
                        if messages is not None:
                            messages.close()
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
        return factory(stream_response, response_serializer=bytes_or(serializer))


class ServerTelemetryInterceptor(grpc.aio.ServerInterceptor):
    """One span and one latency sample per RPC, whatever its shape (unary or streaming), and
    the request decoding of :func:`decoding_handler` (a malformed request: INVALID_ARGUMENT).

    gRPC asks the interceptor for a handler on every call; the wrapped handler and
    the metric children are built once per method and reused, so a call pays only
    for its span and two metric updates.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        if tracer_provider is None:
            configure_from_environment()  # HFTGATE_TRACE_FILE / OTEL_EXPORTER_OTLP_ENDPOINT
        self._global_tracer = tracer_provider is None
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
            known = self._methods[method] = _MethodTelemetry(
                method, handler, self._tracer, global_tracer=self._global_tracer
            )
        return known.wrapped
