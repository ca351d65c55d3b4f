"""Where a call's time goes: per-hop latency from exported spans (``hftgate trace-report``).

Input is OTLP/JSON: one ``ExportTraceServiceRequest`` per line, as the suite writes it with
``HFTGATE_TRACE_FILE`` (hftgate/telemetry.py) and as the OpenTelemetry Collector's file exporter
does; a whole-file JSON document (one request, or a list of them) is read too. Or spans are
received live by :class:`SpanCollector`, a small OTLP/gRPC trace receiver run in this process
(``hftgate trace-report --live``; the services export to it with
``OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:<port>``).

A *hop* is one kind of span in one service: ``(service.name, kind, span name)``, e.g.
``execution SERVER /hftgate.v1.ExecutionService/SubmitOrder`` or ``execution CLIENT
/hftgate.v1.CacheService/Get``. For each hop the report gives how many spans, their duration's
p50, p99 and max (nearest-rank percentiles, in ms), and its share of the whole call:

- ``share``: the hop's total duration / the total duration of the calls (traces) it appears
  in, a trace's duration being from its first span's start to its last span's end. A parent
  includes its children, so shares of nested hops add up to more than 100%.
- ``self_share``: the same with the hop's *own* time, its duration minus the time covered by
  its child spans: where the time goes. The self shares of the hops of one kind of call add up
  to at most 100% (the rest is time outside every span, e.g. the network before the first one).

Hops are listed in the order they run (by their median start offset within their trace).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
#: What one live collector keeps; spans beyond are counted in ``SpanCollector.dropped``.
COLLECTOR_MAX_SPANS = 1_000_000


@dataclass(frozen=True, slots=True)
class Span:
    """One exported span, as the report needs it (times in ns since the epoch)."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int

    @property
    def duration_ns(self) -> int:
        return max(0, self.end_ns - self.start_ns)

    @property
    def hop(self) -> str:
        return f"{self.service} {self.kind} {self.name}"


class TraceFileError(ValueError):
    """A trace file that is not OTLP/JSON; the message says where and what."""


def _attribute_value(value: dict[str, Any]) -> Any:
    for key in ("stringValue", "intValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    return None


def spans_of_request(document: dict[str, Any]) -> Iterator[Span]:
    """The spans of one OTLP/JSON ``ExportTraceServiceRequest``."""
    for resource_spans in document.get("resourceSpans", ()) or ():
        service = "unknown"
        for attribute in (resource_spans.get("resource") or {}).get("attributes", ()) or ():
            if attribute.get("key") == "service.name":
                service = str(_attribute_value(attribute.get("value") or {}) or service)
        for scope_spans in resource_spans.get("scopeSpans", ()) or ():
            for raw in scope_spans.get("spans", ()) or ():
                kind = raw.get("kind", 0)
                yield Span(
                    trace_id=str(raw.get("traceId", "")),
                    span_id=str(raw.get("spanId", "")),
                    parent_span_id=str(raw.get("parentSpanId", "") or ""),
                    name=str(raw.get("name", "")),
                    kind=SPAN_KINDS.get(int(kind), str(kind)) if str(kind).isdigit() else str(kind),
                    service=service,
                    start_ns=int(raw.get("startTimeUnixNano", 0)),
                    end_ns=int(raw.get("endTimeUnixNano", 0)),
                )


def _documents(text: str, source: str) -> Iterator[dict[str, Any]]:
    stripped = text.strip()
    if not stripped:
        return
    if stripped.startswith("["):
        try:
            whole = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise TraceFileError(f"{source}: not JSON: {exc.msg} at line {exc.lineno}") from None
        for item in whole:
            if not isinstance(item, dict):
                raise TraceFileError(f"{source}: a list item is not an OTLP/JSON object")
            yield item
        return
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == 1:  # perhaps one pretty-printed document
                try:
                    item = json.loads(stripped)
                except json.JSONDecodeError:
                    raise TraceFileError(f"{source}: line 1 is not JSON: {exc.msg}") from None
                if not isinstance(item, dict):
                    raise TraceFileError(f"{source}: not an OTLP/JSON object") from None
                yield item
                return
            raise TraceFileError(f"{source}: line {number} is not JSON: {exc.msg}") from None
        if not isinstance(item, dict):
            raise TraceFileError(f"{source}: line {number} is not an OTLP/JSON object")
        yield item


def load_spans(path: Path) -> list[Span]:
    """Every span in an OTLP/JSON file (see the module docstring)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise TraceFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TraceFileError(f"{path}: not UTF-8 text") from None
    spans: list[Span] = []
    for document in _documents(text, str(path)):
        try:
            spans.extend(spans_of_request(document))
        except (TypeError, ValueError, AttributeError) as exc:
            raise TraceFileError(f"{path}: a span is not valid OTLP/JSON ({exc})") from None
    return spans


# --- the report ------------------------------------------------------------------------------------


def percentile(sorted_values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile (q in 0..100) of ascending values."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass(frozen=True, slots=True)
class HopStats:
    """One hop's figures (durations in ms, shares as fractions of the whole call)."""

    hop: str
    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    share: float
    self_share: float
    start_offset_ms: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "hop": self.hop,
            "count": self.count,
            "p50_ms": round(self.p50_ms, 4),
            "p99_ms": round(self.p99_ms, 4),
            "max_ms": round(self.max_ms, 4),
            "share": round(self.share, 4),
            "self_share": round(self.self_share, 4),
        }


@dataclass(frozen=True, slots=True)
class TraceReport:
    traces: int
    spans: int
    call_p50_ms: float
    call_p99_ms: float
    call_max_ms: float
    hops: tuple[HopStats, ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "traces": self.traces,
            "spans": self.spans,
            "call_p50_ms": round(self.call_p50_ms, 4),
            "call_p99_ms": round(self.call_p99_ms, 4),
            "call_max_ms": round(self.call_max_ms, 4),
            "hops": [hop.as_dict() for hop in self.hops],
        }


def _covered_ns(start: int, end: int, children: Iterable[Span]) -> int:
    """How much of [start, end) the children's intervals cover (overlaps counted once)."""
    intervals = sorted((max(start, c.start_ns), min(end, c.end_ns)) for c in children)
    covered, reach = 0, start
    for lo, hi in intervals:
        lo = max(lo, reach)
        if hi > lo:
            covered += hi - lo
            reach = hi
    return covered


def build_report(spans: Iterable[Span]) -> TraceReport:
    """Per-hop figures of ``spans`` (see the module docstring)."""
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        if span.trace_id and span.end_ns >= span.start_ns > 0:
            by_trace[span.trace_id].append(span)
    durations: dict[str, list[int]] = defaultdict(list)
    own: dict[str, int] = defaultdict(int)
    total: dict[str, int] = defaultdict(int)
    whole: dict[str, int] = defaultdict(int)  # per hop: the summed duration of the traces it is in
    offsets: dict[str, list[int]] = defaultdict(list)
    calls: list[int] = []
    count = 0
    for trace_spans in by_trace.values():
        first = min(s.start_ns for s in trace_spans)
        call_ns = max(s.end_ns for s in trace_spans) - first
        calls.append(call_ns)
        children: dict[str, list[Span]] = defaultdict(list)
        for span in trace_spans:
            if span.parent_span_id:
                children[span.parent_span_id].append(span)
        hops_here: set[str] = set()
        for span in trace_spans:
            count += 1
            hop = span.hop
            durations[hop].append(span.duration_ns)
            total[hop] += span.duration_ns
            covered = _covered_ns(span.start_ns, span.end_ns, children.get(span.span_id, ()))
            own[hop] += span.duration_ns - covered
            offsets[hop].append(span.start_ns - first)
            hops_here.add(hop)
        for hop in hops_here:
            whole[hop] += call_ns
    hops = []
    for hop, values in durations.items():
        values.sort()
        starts = sorted(offsets[hop])
        denominator = whole[hop]
        hops.append(
            HopStats(
                hop=hop,
                count=len(values),
                p50_ms=percentile(values, 50) / 1e6,
                p99_ms=percentile(values, 99) / 1e6,
                max_ms=values[-1] / 1e6,
                share=total[hop] / denominator if denominator else 0.0,
                self_share=own[hop] / denominator if denominator else 0.0,
                start_offset_ms=percentile(starts, 50) / 1e6,
            )
        )
    hops.sort(key=lambda h: (h.start_offset_ms, -h.p50_ms, h.hop))
    calls.sort()
    return TraceReport(
        traces=len(by_trace),
        spans=count,
        call_p50_ms=percentile(calls, 50) / 1e6,
        call_p99_ms=percentile(calls, 99) / 1e6,
        call_max_ms=(calls[-1] / 1e6) if calls else 0.0,
        hops=tuple(hops),
    )


def format_report(report: TraceReport) -> str:
    """The report as a plain-text table."""
    if not report.traces:
        return "no spans: nothing to report"
    lines = [
        f"{report.traces} call(s) (traces), {report.spans} span(s); whole call p50 "
        f"{report.call_p50_ms:.3f} ms, p99 {report.call_p99_ms:.3f} ms, max {report.call_max_ms:.3f} ms",
        "",
    ]
    width = max(len("hop"), *(len(h.hop) for h in report.hops))
    header = f"{'hop':<{width}}  {'count':>7}  {'p50 ms':>9}  {'p99 ms':>9}  {'max ms':>9}  "
    header += f"{'share':>6}  {'self':>6}"
    lines += [header, "-" * len(header)]
    for h in report.hops:
        lines.append(
            f"{h.hop:<{width}}  {h.count:>7}  {h.p50_ms:>9.3f}  {h.p99_ms:>9.3f}  {h.max_ms:>9.3f}  "
            f"{h.share:>6.1%}  {h.self_share:>6.1%}"
        )
    return "\n".join(lines)


# --- the live collector ----------------------------------------------------------------------------


class SpanCollector:
    """An OTLP/gRPC trace receiver in this process (a thread pool server on ``host:port``).

    Keeps what it receives as OTLP/JSON documents (at most :data:`COLLECTOR_MAX_SPANS` spans;
    later ones are counted in :attr:`dropped` and refused with RESOURCE_EXHAUSTED, which the
    exporter counts as a failed export), and appends them to ``save_to`` when given. Loopback
    only by default: it authenticates no one.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        save_to: Path | None = None,
        max_spans: int = COLLECTOR_MAX_SPANS,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.port = 0
        self.max_spans = max_spans
        self.save_to = save_to
        self.documents: list[dict[str, Any]] = []
        self.span_count = 0
        self.dropped = 0
        self._lock = threading.Lock()
        self._server: Any = None
        self._file: Any = None

    @property
    def endpoint(self) -> str:
        """What to put in OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> SpanCollector:
        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

        from hftgate.telemetry import otlp_json

        collector = self

        class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:
                spans = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
                with collector._lock:
                    if collector.span_count + spans > collector.max_spans:
                        collector.dropped += spans
                        context.abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"collector full: it keeps at most {collector.max_spans} spans",
                        )
                    collector.span_count += spans
                document = otlp_json(request)
                with collector._lock:
                    collector.documents.append(document)
                    if collector._file is not None:
                        collector._file.write(json.dumps(document, separators=(",", ":")) + "\n")
                        collector._file.flush()
                return trace_service_pb2.ExportTraceServiceResponse()

        if self.save_to is not None:
            self._file = open(self.save_to, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
        self.port = server.add_insecure_port(f"{self.host}:{self.requested_port}")
        if not self.port:
            raise OSError(f"cannot listen on {self.host}:{self.requested_port}")
        server.start()
        self._server = server
        return self

    def spans(self) -> list[Span]:
        with self._lock:
            documents = list(self.documents)
        return [span for document in documents for span in spans_of_request(document)]

    def clear(self) -> None:
        with self._lock:
            self.documents.clear()
            self.span_count = 0

    def stop(self, grace_s: float = 1.0) -> None:
        if self._server is not None:
            self._server.stop(grace_s).wait()
            self._server = None
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> SpanCollector:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- the command -----------------------------------------------------------------------------------


def trace_report_command(
    file: Path | None = None,
    live: bool = False,
    port: int = 4317,
    seconds: float = 0.0,
    save: Path | None = None,
    as_json: bool = False,
) -> None:
    """Per-hop p50/p99/max and each hop's share of the whole call, from exported spans.

    FILE: OTLP JSON lines (a suite run with HFTGATE_TRACE_FILE=FILE writes them). --live: receive
    spans over OTLP/gRPC on 127.0.0.1:PORT (start the services with
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:PORT) for --seconds, or until Ctrl-C, then report.
    """
    if (file is None) == (not live):
        typer.echo("give a trace FILE or --live (not both)", err=True)
        raise typer.Exit(2)
    if file is not None:
        try:
            spans = load_spans(file)
        except TraceFileError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    else:
        collector = SpanCollector(port=port, save_to=save)
        try:
            collector.start()
        except (OSError, RuntimeError) as exc:
            typer.echo(f"error: cannot listen on 127.0.0.1:{port}: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(
            f"collecting spans: set OTEL_EXPORTER_OTLP_ENDPOINT={collector.endpoint} for the services; "
            + (f"reporting in {seconds:g} s" if seconds > 0 else "Ctrl-C to report"),
            err=True,
        )
        try:
            deadline = time.monotonic() + seconds if seconds > 0 else math.inf
            while time.monotonic() < deadline:
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        except KeyboardInterrupt:
            pass
        finally:
            collector.stop()
        spans = collector.spans()
        if collector.dropped:
            typer.echo(f"note: the collector was full and refused {collector.dropped} span(s)", err=True)
    report = build_report(spans)
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
    else:
        typer.echo(format_report(report))


def register(app: Any) -> None:
    """Add ``trace-report`` to the ``hftgate`` command line (hftgate/cli.py)."""

    def trace_report(
        file: Annotated[
            Path | None, typer.Argument(help="OTLP JSON lines (written with HFTGATE_TRACE_FILE).")
        ] = None,
        live: Annotated[bool, typer.Option("--live", help="Receive spans over OTLP/gRPC instead.")] = False,
        port: Annotated[
            int, typer.Option("--port", min=0, max=65535, help="--live: the OTLP/gRPC port.")
        ] = 4317,
        seconds: Annotated[
            float, typer.Option("--seconds", min=0.0, help="--live: report after this long (0: Ctrl-C).")
        ] = 0.0,
        save: Annotated[
            Path | None, typer.Option("--save", help="--live: also append what arrives to this file.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Per-hop p50/p99/max and each hop's share of the whole call, from exported spans."""
        trace_report_command(file, live, port, seconds, save, as_json)

    app.command("trace-report")(trace_report)
