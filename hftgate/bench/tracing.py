"""Benchmark: what tracing costs a SubmitOrder, through real execution processes.

Three ``python -m services.execution`` processes (hftgate.bench.execution.ExecutionProcess, each
with the durable journal and its own fresh state) differ only in tracing:

- ``off``: no exporter configured (no OTEL_* variables): spans are non-recording no-ops;
- ``sampled``: every call sampled (``OTEL_TRACES_SAMPLER=parentbased_traceidratio``, ``_ARG=1``)
  and exported over OTLP/gRPC to a collector in this process
  (:class:`hftgate.tracereport.SpanCollector`, ``OTEL_EXPORTER_OTLP_ENDPOINT``);
- ``ratio``: the same with 1% sampling (``_ARG=0.01``).

The client (this process, grpc.aio, no ``traceparent`` sent: each call is a root, sampled by the
service's sampler) makes sequential SubmitOrder calls, one in flight, in blocks of ``block``
calls, cycling through the three processes (the order rotates each cycle), so all three see the
same noise of a shared machine. Reported per mode: ``tracing_<mode>_p50_ms`` and ``_p99_ms``
(client-side), the ratios to ``off`` at the p50 (``tracing_sampled_ratio_to_off_p50``,
``tracing_ratio_ratio_to_off_p50``) and whether the issue's bars hold (sampled <= 1.10 x off,
1% <= 1.03 x off at the p50). Every figure is the median over ``repeats`` rounds (fresh
processes each); ``*_spread`` = (max - min) / median of the rounds.

Also: ``tracing_sampled_spans_received`` / ``tracing_ratio_spans_received`` (what reached the
collector: about one span per call, and about 1% of that), and the processes' own
``hftgate_spans_dropped_total`` from their /metrics (``tracing_spans_dropped``).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hftgate.bench.execution import Account, ExecutionProcess, OrderFlow, run_prefix
from hftgate.grpcserver import CHANNEL_OPTIONS

SAMPLED_P50_BAR = 1.10
RATIO_P50_BAR = 1.03
RATIO_SAMPLED = 0.01
MODES = ("off", "sampled", "ratio")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TracedExecutionProcess(ExecutionProcess):
    """An :class:`ExecutionProcess` whose tracing variables are exactly ``tracing_env``."""

    def __init__(self, state_dir: Path, tracing_env: Mapping[str, str], settings: Mapping[str, str]) -> None:
        super().__init__(state_dir, settings)
        self.tracing_env = dict(tracing_env)

    def environment(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in super().environment().items()
            if not k.startswith("OTEL_") and k != "HFTGATE_TRACE_FILE"
        }
        env.update(self.tracing_env)
        return env


def tracing_environment(mode: str, endpoint: str) -> dict[str, str]:
    """The OTEL_* variables of one mode (see the module docstring)."""
    if mode == "off":
        return {}
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "1.0" if mode == "sampled" else str(RATIO_SAMPLED),
        "OTEL_SERVICE_NAME": f"execution-{mode}",
    }


@dataclass
class TracingSettings:
    samples_per_mode: int = 3000
    block: int = 100
    warmup: int = 300


async def _block(stub: Any, flows: list[tuple[OrderFlow, Account]], count: int) -> np.ndarray:
    from hftgate.v1 import execution_pb2

    requests = []
    for i in range(count):
        flow, account = flows[i % len(flows)]
        requests.append((execution_pb2.SubmitOrderRequest(order=flow.next_order()), account.metadata))
    out = np.empty(count, dtype=np.int64)
    call = stub.SubmitOrder
    for i, (request, metadata) in enumerate(requests):
        start = time.perf_counter_ns()
        await call(request, metadata=metadata)
        out[i] = time.perf_counter_ns() - start
    return out


async def _measure(
    processes: Mapping[str, ExecutionProcess], settings: TracingSettings
) -> dict[str, np.ndarray]:
    import grpc

    from hftgate.v1 import execution_pb2_grpc

    prefix = run_prefix()
    channels = {
        mode: grpc.aio.insecure_channel(p.address, options=CHANNEL_OPTIONS) for mode, p in processes.items()
    }
    try:
        stubs = {mode: execution_pb2_grpc.ExecutionServiceStub(channel) for mode, channel in channels.items()}
        flows = {
            mode: [
                (OrderFlow(f"{prefix}{mode}a", seed=1), p.account("alice")),
                (OrderFlow(f"{prefix}{mode}b", seed=2), p.account("bob")),
            ]
            for mode, p in processes.items()
        }
        for mode in processes:
            await _block(stubs[mode], flows[mode], settings.warmup)
        samples: dict[str, list[np.ndarray]] = {mode: [] for mode in processes}
        order = list(processes)
        done = 0
        while done < settings.samples_per_mode:
            n = min(settings.block, settings.samples_per_mode - done)
            for mode in order:
                samples[mode].append(await _block(stubs[mode], flows[mode], n))
            order = order[1:] + order[:1]
            done += n
        return {mode: np.concatenate(blocks) for mode, blocks in samples.items()}
    finally:
        for channel in channels.values():
            await channel.close(None)


def _spans_dropped(metrics_port: int) -> float:
    """The process's hftgate_spans_dropped_total summed over reasons (0 if not exposed)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return float("nan")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("hftgate_spans_dropped_total{")
    )


def _one_round(settings: TracingSettings) -> dict[str, float]:
    from hftgate.tracereport import SpanCollector

    with ExitStack() as stack:
        collector = stack.enter_context(SpanCollector())
        processes: dict[str, ExecutionProcess] = {}
        ports: dict[str, int] = {}
        for mode in MODES:
            tmp = Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix=f"hftgate-bench-tracing-{mode}-"))
            )
            ports[mode] = _free_port()
            process: ExecutionProcess = TracedExecutionProcess(
                tmp, tracing_environment(mode, collector.endpoint), {"metrics_port": str(ports[mode])}
            )
            process.start()
            stack.callback(process.stop)
            processes[mode] = process
        latencies = asyncio.run(_measure(processes, settings))
        dropped = sum(_spans_dropped(ports[mode]) for mode in ("sampled", "ratio"))
        for process in processes.values():
            code = process.stop()
            if code != 0:
                raise RuntimeError(f"execution service exited with {code}:\n{process.log_tail()}")
        # Stopping flushed each process's batch processor: every exported span has arrived.
        received = {"execution-sampled": 0, "execution-ratio": 0}
        for span in collector.spans():
            if span.service in received and span.kind == "SERVER" and span.name.endswith("/SubmitOrder"):
                received[span.service] += 1
    result: dict[str, float] = {}
    for mode, values in latencies.items():
        result[f"tracing_{mode}_p50_ms"] = float(np.median(values)) / 1e6
        result[f"tracing_{mode}_p99_ms"] = float(np.percentile(values, 99)) / 1e6
    result["tracing_sampled_ratio_to_off_p50"] = (
        result["tracing_sampled_p50_ms"] / result["tracing_off_p50_ms"]
    )
    result["tracing_ratio_ratio_to_off_p50"] = result["tracing_ratio_p50_ms"] / result["tracing_off_p50_ms"]
    result["tracing_sampled_spans_received"] = received["execution-sampled"]
    result["tracing_ratio_spans_received"] = received["execution-ratio"]
    result["tracing_spans_dropped"] = dropped
    return result


def run(repeats: int = 3, *, settings: TracingSettings | None = None) -> dict[str, float | int | bool]:
    """``repeats`` rounds, fresh processes each; medians (see the module docstring)."""
    settings = settings or TracingSettings()
    rounds = [_one_round(settings) for _ in range(max(1, repeats))]
    out: dict[str, float | int | bool] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        median = statistics.median(values)
        out[key] = round(median, 4)
        if key.endswith("_p50_ms") and median:
            out[f"{key}_spread"] = round((max(values) - min(values)) / median, 3)
    out["tracing_calls_per_mode"] = settings.samples_per_mode + settings.warmup
    out["tracing_sampled_bar_holds"] = float(out["tracing_sampled_ratio_to_off_p50"]) <= SAMPLED_P50_BAR
    out["tracing_ratio_bar_holds"] = float(out["tracing_ratio_ratio_to_off_p50"]) <= RATIO_P50_BAR
    out["repeats"] = len(rounds)
    return out
