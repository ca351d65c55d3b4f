"""Prometheus view of the execution service: per-stage latency quantiles and order-path counters.

Registered on the default registry, which ``hftgate.telemetry.configure(metrics_port=...)`` serves
on /metrics (``HFTGATE_EXECUTION_METRICS_PORT``). Values are read from the core at scrape time, so
the order path pays nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from hftgate.security import ServiceAuthInterceptor
    from services.execution.core import ExecutionCore
    from services.execution.server import ExecutionServicer

_QUANTILES = (("0.5", "p50"), ("0.9", "p90"), ("0.99", "p99"), ("0.999", "p99_9"), ("0.9999", "p99_99"))


class ExecutionCollector(Collector):
    """Reads an :class:`ExecutionCore` when Prometheus scrapes."""

    def __init__(self, core: ExecutionCore) -> None:
        self.core = core
        # Set once the server exists: who refused calls for want of credentials.
        self.servicer: ExecutionServicer | None = None
        self.interceptor: ServiceAuthInterceptor | None = None

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        core = self.core
        latency = GaugeMetricFamily(
            "hftgate_execution_stage_latency_seconds",
            "Order-path latency per stage (arrival>risk>match>journal durable>ack sent), per accepted input",
            labels=["stage", "quantile"],
        )
        samples = CounterMetricFamily(
            "hftgate_execution_stage_samples", "Inputs measured per stage", labels=["stage"]
        )
        stages = core.stages
        for stage, histogram in (
            ("risk", stages.risk),
            ("match", stages.match),
            ("journal", stages.journal),
            ("ack", stages.ack),
            ("total", stages.total),
        ):
            summary = histogram.summary()
            for quantile, key in _QUANTILES:
                latency.add_metric([stage, quantile], summary[key] / 1e9)
            samples.add_metric([stage], summary["count"])
        yield latency
        yield samples
        fsync = core.journal.sync_latency().summary()
        fsync_latency = GaugeMetricFamily(
            "hftgate_execution_journal_fsync_latency_seconds",
            "How long the journal writer's fdatasyncs took (every fsync since start), by quantile",
            labels=["quantile"],
        )
        for quantile, key in _QUANTILES:
            fsync_latency.add_metric([quantile], fsync[key] / 1e9)
        yield fsync_latency
        counters = core.counters
        for name, value, text in (
            ("orders_received", counters.orders_received, "New orders received"),
            ("orders_accepted", counters.orders_accepted, "New orders accepted"),
            ("inputs_rejected", counters.inputs_rejected, "Inputs rejected"),
            ("trades", core.state.trades, "Trades executed"),
            ("journal_records", core.journal.records_written, "Journal records written"),
            ("journal_fsyncs", core.journal.fsyncs, "Journal fsyncs"),
            ("reference_lookups", core.reference.counters.lookups, "Order-path reference lookups"),
            ("reference_sql_lookups", core.reference.counters.sql_lookups, "Reference lookups that read SQL"),
        ):
            yield CounterMetricFamily(f"hftgate_execution_{name}", text, value=value)
        keeper = CounterMetricFamily(
            "hftgate_execution_journal_keeper_events",
            "The journal writer's CPU keeper (HFTGATE_EXECUTION_JOURNAL_KEEP_CPU_US): wakes = it handed the "
            "writer a record, parks = it stopped spinning, kicks = it was held off its CPU and the loop woke "
            "the writer, prewakes = a SubmitOrder's touch woke the writer ahead of its record "
            "(all 0 without a keeper)",
            labels=["event"],
        )
        for event, value in core.journal.keeper_stats()._asdict().items():
            keeper.add_metric([event], value)
        yield keeper
        refused = CounterMetricFamily(
            "hftgate_execution_unauthenticated_calls",
            "Calls refused UNAUTHENTICATED: no credential or a forged service token (interceptor), "
            "a missing or unknown API key (servicer)",
            labels=["by"],
        )
        refused.add_metric(["interceptor"], self.interceptor.refused if self.interceptor else 0)
        refused.add_metric(["servicer"], self.servicer.unauthenticated if self.servicer else 0)
        yield refused
        snapshotter = self.servicer.snapshotter if self.servicer else None
        yield CounterMetricFamily(
            "hftgate_execution_snapshots",
            "Snapshots of the state written since the shard started",
            value=snapshotter.taken if snapshotter is not None else 0,
        )
        yield GaugeMetricFamily(
            "hftgate_execution_open_orders",
            "Orders resting or waiting for a trigger",
            value=core.state.engine.live_orders,
        )


def register(core: ExecutionCore) -> ExecutionCollector:
    collector = ExecutionCollector(core)
    REGISTRY.register(collector)
    return collector


def unregister(collector: ExecutionCollector) -> None:
    REGISTRY.unregister(collector)
