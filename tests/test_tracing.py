"""One trace across every hop: OTLP export, outbound propagation, per-message stream spans,
sampling, the dropped-span counter, and `hftgate trace-report` (hftgate/telemetry.py,
hftgate/tracereport.py)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from typer.testing import CliRunner

from hftgate import telemetry
from hftgate.grpcserver import ServiceBinding, create_server
from hftgate.telemetry import (
    SPANS_DROPPED,
    ClientSpan,
    CountingBatchSpanProcessor,
    OtlpJsonFileExporter,
    ServerTelemetryInterceptor,
    exporters_from_environment,
)
from hftgate.tracereport import Span, SpanCollector, TraceFileError, build_report, format_report, load_spans

CHECK = "/grpc.health.v1.Health/Check"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _traceparent(trace_id: int, span_id: int, sampled: bool = True) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def _provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _dropped(reason: str) -> float:
    return SPANS_DROPPED.labels(reason)._value.get()


# --- across real processes: execution -> cache -------------------------------------------------


def _raw_spans(documents: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every span of OTLP/JSON documents, with its service name and attributes as a dict."""
    out = []
    for document in documents:
        for resource_spans in document.get("resourceSpans", ()):
            service = next(
                a["value"]["stringValue"]
                for a in resource_spans["resource"]["attributes"]
                if a["key"] == "service.name"
            )
            for scope_spans in resource_spans.get("scopeSpans", ()):
                for span in scope_spans.get("spans", ()):
                    attributes = {
                        a["key"]: next(iter(a["value"].values()), None) for a in span.get("attributes", ())
                    }
                    out.append({**span, "service": service, "attrs": attributes})
    return out


@pytest.fixture(scope="module")
def traced_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, SpanCollector, Path]]:
    """cache + execution as real processes, every span exported to a collector in this process,
    and the execution service's spans also written to an OTLP JSON file."""
    from hftgate.supervisor import ALL_SERVICES, start_services, stop_services

    state_dir = tmp_path_factory.mktemp("traced-suite")
    trace_file = state_dir / "execution-spans.jsonl"
    collector = SpanCollector().start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HFTGATE_", "OTEL_"))}
    env.update(
        HFTGATE_SUITE_SECRET=os.environ["HFTGATE_SUITE_SECRET"],
        HFTGATE_STATE_DIR=str(state_dir),
        HFTGATE_PROFILE="dev",
        HFTGATE_EXECUTION_LOOP_CPUS="off",
        HFTGATE_EXECUTION_JOURNAL_WRITER_CPUS="off",
        HFTGATE_EXECUTION_JOURNAL_ACK_POLL_US="0",
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_TRACES_SAMPLER="parentbased_always_on",
        OTEL_BSP_SCHEDULE_DELAY="50",
    )
    specs = [s for s in ALL_SERVICES if s.name in ("cache", "execution")]
    for spec in specs:
        env[spec.port_variable] = str(_free_port())
    env_execution = {**env, "HFTGATE_TRACE_FILE": str(trace_file)}
    running = start_services(specs[:1], env=env, startup_timeout_s=90)
    try:
        running += start_services(
            specs[1:],
            env={**env_execution, "HFTGATE_EXECUTION_CACHE_ADDRESS": running[0].address},
            startup_timeout_s=90,
        )
        yield running, collector, trace_file
    finally:
        stop_services(running, grace_s=15)
        collector.stop()


def _wait_for(
    collector: SpanCollector, trace_id: str, count: int, timeout_s: float = 20.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        spans = [s for s in _raw_spans(list(collector.documents)) if s["traceId"] == trace_id]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


def test_a_submit_order_that_reads_the_cache_is_one_trace_of_separate_spans(
    traced_suite: tuple[Any, SpanCollector, Path],
) -> None:
    from hftgate.v1 import common_pb2, execution_pb2, execution_pb2_grpc

    running, collector, trace_file = traced_suite
    execution = next(s for s in running if s.spec.name == "execution")
    trace_id, caller_span = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
    order = execution_pb2.NewOrder(
        client_order_id="traced-1",
        symbol="NOSUCHUSDT",  # not held: the order path asks the cache service for instrument:NOSUCHUSDT
        side=common_pb2.SIDE_BUY,
        order_type=execution_pb2.ORDER_TYPE_LIMIT,
        time_in_force=execution_pb2.TIME_IN_FORCE_GTC,
        price_ticks=100,
        quantity_lots=1,
    )
    metadata = (("x-api-key", "hftgate-demo-alice"), ("traceparent", _traceparent(trace_id, caller_span)))
    with grpc.insecure_channel(execution.address) as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        try:
            reply = stub.SubmitOrder(
                execution_pb2.SubmitOrderRequest(order=order), metadata=metadata, timeout=10
            )
            assert reply.ack.status == execution_pb2.ORDER_STATUS_REJECTED
        except grpc.RpcError as exc:  # an unknown symbol may also be refused as a whole
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT

    spans = _wait_for(collector, f"{trace_id:032x}", 3)
    by_hop = {(s["service"], s["kind"], s["name"]): s for s in spans}
    server = by_hop[("execution", 2, "/hftgate.v1.ExecutionService/SubmitOrder")]
    client = by_hop[("execution", 3, "/hftgate.v1.CacheService/Get")]
    cache = by_hop[("cache", 2, "/hftgate.v1.CacheService/Get")]
    # Parent links: caller -> execution server -> its client call -> the cache's server span.
    assert server["parentSpanId"] == f"{caller_span:016x}"
    assert client["parentSpanId"] == server["spanId"]
    assert cache["parentSpanId"] == client["spanId"]
    assert len({server["spanId"], client["spanId"], cache["spanId"]}) == 3
    # Each hop has its own duration, nested in its parent's.
    for outer, inner in ((server, client), (client, cache)):
        assert int(outer["startTimeUnixNano"]) <= int(inner["startTimeUnixNano"])
        assert int(inner["endTimeUnixNano"]) <= int(outer["endTimeUnixNano"])
    # The attributes that matter.
    assert server["attrs"]["hftgate.symbol"] == "NOSUCHUSDT"
    assert server["attrs"]["rpc.service"] == "hftgate.v1.ExecutionService"
    assert client["attrs"]["hftgate.cache.key_prefix"] == "instrument:"
    assert client["attrs"]["hftgate.cache.found"] is False
    assert client["attrs"]["rpc.grpc.status_code"] == "OK"
    assert client["attrs"]["server.port"] in (str(running[0].port), running[0].port)
    assert cache["attrs"]["hftgate.cache.key_prefix"] == "instrument:"
    assert cache["attrs"]["hftgate.cache.found"] is False
    assert not any("NOSUCHUSDT" in str(v) for v in client["attrs"].values()), "the key itself stays out"

    # The same execution spans went to HFTGATE_TRACE_FILE as OTLP JSON lines.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        in_file = (
            [s for s in load_spans(trace_file) if s.trace_id == f"{trace_id:032x}"]
            if trace_file.exists()
            else []
        )
        if len(in_file) >= 2:
            break
        time.sleep(0.05)
    assert {(s.service, s.kind, s.name) for s in in_file} == {
        ("execution", "SERVER", "/hftgate.v1.ExecutionService/SubmitOrder"),
        ("execution", "CLIENT", "/hftgate.v1.CacheService/Get"),
    }
    # And the report of this trace names the three hops, the execution server's first.
    report = build_report([s for s in collector.spans() if s.trace_id == f"{trace_id:032x}"])
    assert report.traces == 1
    assert [h.hop for h in report.hops] == [
        "execution SERVER /hftgate.v1.ExecutionService/SubmitOrder",
        "execution CLIENT /hftgate.v1.CacheService/Get",
        "cache SERVER /hftgate.v1.CacheService/Get",
    ]
    assert report.hops[0].share == pytest.approx(1.0)


# --- exporters and the environment --------------------------------------------------------------


def test_the_file_exporter_writes_otlp_json_lines_with_hex_ids(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    provider = TracerProvider()
    processor = CountingBatchSpanProcessor(OtlpJsonFileExporter(path), schedule_delay_millis=10_000)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("parent", kind=trace.SpanKind.SERVER) as parent:
        parent.set_attribute("hftgate.symbol", "BTCUSDT")
        with tracer.start_as_current_span("child", kind=trace.SpanKind.CLIENT) as child:
            child.set_attribute("hftgate.batch_size", 7)
    assert processor.force_flush()
    with tracer.start_as_current_span("second batch"):
        pass
    provider.shutdown()
    lines = path.read_text().splitlines()
    assert len(lines) == 2, "one ExportTraceServiceRequest per export, one per line"
    document = json.loads(lines[0])
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    by_name = {s["name"]: s for s in spans}
    p, c = by_name["parent"], by_name["child"]
    assert p["traceId"] == f"{parent.get_span_context().trace_id:032x}"
    assert p["spanId"] == f"{parent.get_span_context().span_id:016x}"
    assert c["parentSpanId"] == p["spanId"] and c["traceId"] == p["traceId"]
    assert (p["kind"], c["kind"]) == (2, 3)  # OTLP enum numbers
    assert {"key": "hftgate.symbol", "value": {"stringValue": "BTCUSDT"}} in p["attributes"]
    assert {"key": "hftgate.batch_size", "value": {"intValue": "7"}} in c["attributes"]
    assert int(c["endTimeUnixNano"]) >= int(c["startTimeUnixNano"]) > 0
    loaded = load_spans(path)
    assert sorted(s.name for s in loaded) == ["child", "parent", "second batch"]


def test_the_environment_picks_the_exporters(tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    assert exporters_from_environment({}) == []
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}
    assert [type(e) for e in exporters_from_environment(endpoint)] == [GrpcExporter]
    http = {**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    assert [type(e) for e in exporters_from_environment(http)] == [HttpExporter]
    assert exporters_from_environment({**endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}) == []
    assert exporters_from_environment({**endpoint, "OTEL_SDK_DISABLED": "true"}) == []
    assert exporters_from_environment({**endpoint, "OTEL_TRACES_EXPORTER": "none"}) == []
    to_file = {"HFTGATE_TRACE_FILE": str(tmp_path / "t.jsonl")}
    assert [type(e) for e in exporters_from_environment(to_file)] == [OtlpJsonFileExporter]


# --- sampling and propagation through the server interceptor ------------------------------------


def test_the_sdk_ratio_sampler_from_the_environment_samples_roots_and_follows_parents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.01")
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    roots = sum(tracer.start_span("root").is_recording() for _ in range(20_000))
    assert 120 <= roots <= 290, roots  # 1% of 20,000 = 200
    from opentelemetry import propagate

    for sampled in (True, False):
        parent = propagate.extract({"traceparent": _traceparent(0xABC, 0xDEF, sampled)})
        children = sum(tracer.start_span("child", context=parent).is_recording() for _ in range(200))
        assert children == (200 if sampled else 0), "parent-based: the caller's decision holds"


async def test_the_server_continues_the_callers_sampling_decision() -> None:
    provider, exporter = _provider()
    interceptor = ServerTelemetryInterceptor(tracer_provider=provider)
    running = await create_server("127.0.0.1:0", [], interceptors=[interceptor], telemetry=False)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for trace_id, sampled in ((0x111, True), (0x222, False)):
                await stub.Check(
                    health_pb2.HealthCheckRequest(),
                    metadata=(("traceparent", _traceparent(trace_id, 0x99, sampled)),),
                )
    finally:
        await running.stop(0.2)
    traces = {s.context.trace_id for s in exporter.get_finished_spans() if s.name == CHECK}
    assert traces == {0x111}, "the unsampled caller's call records nothing"


async def test_a_client_span_carries_its_traceparent_to_the_server() -> None:
    provider, exporter = _provider()
    tracer = provider.get_tracer("client")
    interceptor = ServerTelemetryInterceptor(tracer_provider=provider)
    running = await create_server("127.0.0.1:0", [], interceptors=[interceptor], telemetry=False)
    target = f"127.0.0.1:{running.port}"
    base = (("x-api-key", "k"),)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            with tracer.start_as_current_span("handling a call") as outer:
                with ClientSpan(CHECK, target, base, {"hftgate.symbol": "X"}, tracer=tracer) as call:
                    assert call.metadata is not None and call.metadata[0] == base[0]
                    assert [k for k, _ in call.metadata][1] == "traceparent"
                    await stub.Check(health_pb2.HealthCheckRequest(), metadata=call.metadata)
                with (
                    pytest.raises(grpc.aio.AioRpcError),
                    ClientSpan(CHECK, target, base, tracer=tracer) as failing,
                ):
                    await stub.Check(
                        health_pb2.HealthCheckRequest(service="missing"), metadata=failing.metadata
                    )
    finally:
        await running.stop(0.2)
    spans = exporter.get_finished_spans()
    clients = [s for s in spans if s.kind == trace.SpanKind.CLIENT]
    servers = [s for s in spans if s.kind == trace.SpanKind.SERVER and s.name == CHECK]
    assert len(clients) == 2 and len(servers) == 2
    ok_client = next(s for s in clients if s.attributes["rpc.grpc.status_code"] == "OK")
    failed_client = next(s for s in clients if s.attributes["rpc.grpc.status_code"] == "NOT_FOUND")
    assert ok_client.parent is not None and ok_client.parent.span_id == outer.get_span_context().span_id
    assert ok_client.attributes["hftgate.symbol"] == "X"
    assert ok_client.attributes["server.port"] == running.port
    assert ok_client.attributes["rpc.service"] == "grpc.health.v1.Health"
    assert failed_client.status.status_code == trace.StatusCode.ERROR
    server_parents = {s.parent.span_id for s in servers if s.parent is not None}
    assert server_parents == {ok_client.context.span_id, failed_client.context.span_id}


def test_without_a_provider_a_client_span_adds_nothing() -> None:
    from opentelemetry.trace import NoOpTracerProvider

    base = (("x-api-key", "k"),)
    with ClientSpan(CHECK, "127.0.0.1:1", base, tracer=NoOpTracerProvider().get_tracer("x")) as call:
        assert call.metadata is base
    with ClientSpan(CHECK, "127.0.0.1:1", None, tracer=NoOpTracerProvider().get_tracer("x")) as call:
        assert call.metadata is None


# --- a span per message on streams ----------------------------------------------------------------


async def test_every_received_stream_message_gets_its_own_sampled_span_linked_to_the_stream() -> None:
    provider, exporter = _provider()
    seen: list[tuple[str, int, int]] = []

    async def echo(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for request in requests:
            current = trace.get_current_span().get_span_context()
            seen.append((request.service, current.trace_id, current.span_id))
            telemetry.set_span_attributes({"hftgate.account": "alice"})
            yield health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def collect(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
        async for request in requests:
            seen.append((request.service, 0, trace.get_current_span().get_span_context().span_id))
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    parse, write = health_pb2.HealthCheckRequest.FromString, health_pb2.HealthCheckResponse.SerializeToString
    handlers = grpc.method_handlers_generic_handler(
        "test.Streams",
        {
            "Echo": grpc.stream_stream_rpc_method_handler(echo, parse, write),
            "Collect": grpc.stream_unary_rpc_method_handler(collect, parse, write),
        },
    )
    binding = ServiceBinding("test.Streams", lambda server: server.add_generic_rpc_handlers((handlers,)))
    interceptor = ServerTelemetryInterceptor(tracer_provider=provider)
    running = await create_server("127.0.0.1:0", [binding], interceptors=[interceptor], telemetry=False)

    def messages(prefix: str) -> Iterator[bytes]:
        for i in range(3):
            yield health_pb2.HealthCheckRequest(service=f"{prefix}{i}").SerializeToString()

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stream = channel.stream_stream("/test.Streams/Echo")(
                messages("e"), metadata=(("traceparent", _traceparent(0x5151, 0x77)),)
            )
            assert len([r async for r in stream]) == 3
            await channel.stream_unary("/test.Streams/Collect")(messages("c"))
    finally:
        await running.stop(0.2)
    spans = exporter.get_finished_spans()
    echo_stream = next(s for s in spans if s.name == "/test.Streams/Echo")
    echo_messages = sorted(
        (s for s in spans if s.name == "/test.Streams/Echo message"),
        key=lambda s: s.attributes["rpc.message.id"],
    )
    assert echo_stream.context.trace_id == 0x5151, "the stream's span continues the caller's trace"
    assert [s.attributes["rpc.message.id"] for s in echo_messages] == [1, 2, 3]
    assert len({s.context.trace_id for s in echo_messages}) == 3, "a trace per message, not one per stream"
    for span in echo_messages:
        assert span.parent is None
        assert [link.context.span_id for link in span.links] == [echo_stream.context.span_id]
        assert span.attributes["hftgate.account"] == "alice", "the servicer's attribute lands on the message"
        assert span.end_time >= span.start_time
    # While the servicer handles a message, that message's span is the current one.
    assert [(t, s) for _, t, s in seen[:3]] == [
        (m.context.trace_id, m.context.span_id) for m in echo_messages
    ]
    collect_messages = [s for s in spans if s.name == "/test.Streams/Collect message"]
    assert len(collect_messages) == 3
    assert {s for _, _, s in seen[3:]} == {m.context.span_id for m in collect_messages}


# --- the dropped-span counter ---------------------------------------------------------------------


class _BlockingExporter(SpanExporter):
    def __init__(self, result: SpanExportResult = SpanExportResult.SUCCESS) -> None:
        self.release = threading.Event()
        self.exported = 0
        self.result = result

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.release.wait(10)
        self.exported += len(spans)
        return self.result

    def shutdown(self) -> None:
        self.release.set()


def test_spans_past_the_queue_are_counted_as_dropped_and_exported_on_metrics() -> None:
    exporter = _BlockingExporter()
    processor = CountingBatchSpanProcessor(exporter, max_queue_size=4, schedule_delay_millis=5)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    before = _dropped("queue_full")
    for _ in range(10):
        tracer.start_span("s").end()
    assert processor.dropped == {"queue_full": 6}
    assert _dropped("queue_full") == before + 6
    exporter.release.set()
    assert processor.force_flush(5_000)
    assert exporter.exported == 4
    for _ in range(3):  # room again once exported
        tracer.start_span("s").end()
    assert processor.force_flush(5_000)
    assert exporter.exported == 7 and processor.dropped == {"queue_full": 6}
    provider.shutdown()
    tracer.start_span("after shutdown").end()
    assert processor.dropped["shutdown"] == 1
    metrics = generate_latest().decode()
    assert 'hftgate_spans_dropped_total{reason="queue_full"}' in metrics


def test_spans_of_a_failed_export_are_counted_as_dropped() -> None:
    exporter = _BlockingExporter(SpanExportResult.FAILURE)
    exporter.release.set()
    processor = CountingBatchSpanProcessor(exporter, max_queue_size=100, schedule_delay_millis=5)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    before = _dropped("export_failed")
    for _ in range(5):
        provider.get_tracer("t").start_span("s").end()
    processor.force_flush(5_000)
    assert _dropped("export_failed") == before + 5
    provider.shutdown()


# --- trace-report on a known tree -----------------------------------------------------------------

MS = 1_000_000
T0 = 1_700_000_000_000_000_000


def _otlp_span(
    trace_id: str, span_id: str, parent: str, name: str, kind: int, start_ms: float, end_ms: float
) -> Any:
    return {
        "traceId": trace_id,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(T0 + int(start_ms * MS)),
        "endTimeUnixNano": str(T0 + int(end_ms * MS)),
    }


def _request(service: str, spans: list[Any]) -> dict[str, Any]:
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
                "scopeSpans": [{"scope": {"name": "t"}, "spans": spans}],
            }
        ]
    }


SUBMIT = "/hftgate.v1.ExecutionService/SubmitOrder"
GET = "/hftgate.v1.CacheService/Get"


def _known_tree(path: Path) -> None:
    """Two calls: execution SERVER [0, 10) ms > CLIENT Get [2, 6) > cache SERVER Get [3, 5); and
    [0, 20) > [5, 15) > [6, 14). Each service exports its own spans, on lines of their own."""
    a, b = "a" * 32, "b" * 32
    lines = [
        _request(
            "execution",
            [
                _otlp_span(a, "1" * 16, "", SUBMIT, 2, 0, 10),
                _otlp_span(a, "2" * 16, "1" * 16, GET, 3, 2, 6),
                _otlp_span(b, "4" * 16, "", SUBMIT, 2, 0, 20),
                _otlp_span(b, "5" * 16, "4" * 16, GET, 3, 5, 15),
            ],
        ),
        _request(
            "cache",
            [
                _otlp_span(a, "3" * 16, "2" * 16, GET, 2, 3, 5),
                _otlp_span(b, "6" * 16, "5" * 16, GET, 2, 6, 14),
            ],
        ),
    ]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def test_trace_report_of_a_known_tree_gives_each_hops_percentiles_and_share(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    _known_tree(path)
    report = build_report(load_spans(path))
    assert (report.traces, report.spans) == (2, 6)
    assert (report.call_p50_ms, report.call_p99_ms, report.call_max_ms) == (10.0, 20.0, 20.0)
    hops = {h.hop: h for h in report.hops}
    assert [h.hop for h in report.hops] == [
        f"execution SERVER {SUBMIT}",
        f"execution CLIENT {GET}",
        f"cache SERVER {GET}",
    ]
    server, client, cache = (hops[h.hop] for h in report.hops)
    # Durations: server 10, 20; client 4, 10; cache 2, 8 (nearest-rank p50 of two = the lower).
    assert (server.count, server.p50_ms, server.p99_ms, server.max_ms) == (2, 10.0, 20.0, 20.0)
    assert (client.p50_ms, client.p99_ms, client.max_ms) == (4.0, 10.0, 10.0)
    assert (cache.p50_ms, cache.p99_ms, cache.max_ms) == (2.0, 8.0, 8.0)
    # Share of the whole call (30 ms over the two calls) and own time (minus children's).
    assert server.share == pytest.approx(1.0) and server.self_share == pytest.approx(16 / 30)
    assert client.share == pytest.approx(14 / 30) and client.self_share == pytest.approx(4 / 30)
    assert cache.share == pytest.approx(10 / 30) and cache.self_share == pytest.approx(10 / 30)
    assert sum(h.self_share for h in report.hops) == pytest.approx(1.0)
    text = format_report(report)
    assert "53.3%" in text and "2 call(s)" in text


def test_trace_report_command_prints_the_table_or_json_and_refuses_bad_files(tmp_path: Path) -> None:
    from hftgate.cli import app

    path = tmp_path / "spans.jsonl"
    _known_tree(path)
    runner = CliRunner()
    result = runner.invoke(app, ["trace-report", str(path)])
    assert result.exit_code == 0, result.output
    assert f"cache SERVER {GET}" in result.output
    result = runner.invoke(app, ["trace-report", str(path), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["hops"][0]["hop"] == f"execution SERVER {SUBMIT}"
    assert payload["hops"][1]["p99_ms"] == 10.0
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text().splitlines()[0] + "\n{not json\n")
    result = runner.invoke(app, ["trace-report", str(bad)])
    assert result.exit_code == 1
    assert "line 2 is not JSON" in result.output
    assert "Traceback" not in result.output
    with pytest.raises(TraceFileError, match="cannot read"):
        load_spans(tmp_path / "missing.jsonl")
    assert runner.invoke(app, ["trace-report"]).exit_code == 2


async def test_the_live_collector_receives_spans_from_the_sdks_otlp_exporter() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    with SpanCollector() as collector:
        provider = TracerProvider()
        processor = CountingBatchSpanProcessor(OTLPSpanExporter(endpoint=collector.endpoint, insecure=True))
        provider.add_span_processor(processor)
        tracer = provider.get_tracer("t")
        with (
            tracer.start_as_current_span("outer", kind=trace.SpanKind.SERVER),
            tracer.start_as_current_span("inner", kind=trace.SpanKind.CLIENT),
        ):
            await asyncio.sleep(0.002)
        assert await asyncio.to_thread(processor.force_flush, 10_000)
        provider.shutdown()
        spans = collector.spans()
    assert sorted((s.name, s.kind) for s in spans) == [("inner", "CLIENT"), ("outer", "SERVER")]
    inner = next(s for s in spans if s.name == "inner")
    outer = next(s for s in spans if s.name == "outer")
    assert inner.parent_span_id == outer.span_id and inner.duration_ns >= 2 * MS
    assert isinstance(inner, Span)


# --- the trade feed: a PRODUCER span per message sent ---------------------------------------------


async def test_the_trade_feed_sends_each_message_under_a_producer_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import numpy as np

    from hftgate.security import load_suite_secret
    from hftgate.v1 import marketdata_pb2 as md
    from hftgate.v1 import marketdata_pb2_grpc as md_grpc
    from services.execution import trade_feed
    from services.execution.state import FILL_DTYPE

    provider, exporter = _provider()
    monkeypatch.setattr(trade_feed, "_tracer", provider.get_tracer("feed"))
    received: list[int] = []

    class Recorder(md_grpc.MarketDataServiceServicer):
        async def PublishTrades(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            async for message in request_iterator:
                received.append(len(message.trades))
            return md.PublishSummary()

    binding = ServiceBinding(
        "hftgate.v1.MarketDataService",
        lambda s: md_grpc.add_MarketDataServiceServicer_to_server(Recorder(), s),
    )
    running = await create_server("127.0.0.1:0", [binding], telemetry=False)
    credentials = load_suite_secret().service_credentials("execution", None)
    feed = trade_feed.TradeFeed(
        f"127.0.0.1:{running.port}",
        lambda symbol_id: "BTCUSDT",
        lambda symbol: ("0.01", "0.001"),
        credentials=credentials,
    )
    fills = np.zeros(3, dtype=FILL_DTYPE)
    fills["trade_id"], fills["price"], fills["quantity"] = [1, 2, 3], 5_000_000, 10
    try:
        feed.start()
        feed.publish(fills)
        feed.publish(fills[:1])
        for _ in range(200):
            if len(received) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await feed.close()
        await running.stop(0)
    assert received == [3, 1]
    spans = [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.PRODUCER]
    assert [s.attributes["hftgate.batch_size"] for s in spans] == [3, 1]
    assert all(s.name == "/hftgate.v1.MarketDataService/PublishTrades send" for s in spans)
    assert all(s.attributes["hftgate.symbol"] == "BTCUSDT" and s.parent is None for s in spans)
    assert spans[0].context.trace_id != spans[1].context.trace_id
