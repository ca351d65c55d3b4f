"""Prometheus view of the scaler: replicas per service and state, its latest decision per service,
the optimiser's trials in the decision log.

Read when Prometheus scrapes (from the metrics server's thread: a table the event loop changes
meanwhile is read again). ``python -m services.scaler`` registers it on the default registry and
serves it on ``HFTGATE_SCALER_METRICS_PORT`` (hftgate/prometheus.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from services.scaler.app import DecisionRecord, Scaler, TrialRecord
from services.scaler.registry import Replica, ReplicaState

_READ_ATTEMPTS = 5


class ScalerCollector(Collector):
    """Reads a :class:`Scaler` when Prometheus scrapes."""

    def __init__(self, scaler: Scaler) -> None:
        self.scaler = scaler

    def _read(self) -> tuple[tuple[Replica, ...], list[DecisionRecord], list[str], list[TrialRecord]]:
        for attempt in range(_READ_ATTEMPTS):
            try:
                return (
                    self.scaler.registry.all(),
                    list(self.scaler.decisions),
                    list(self.scaler.policies),
                    list(self.scaler.trials),
                )
            except RuntimeError:  # changed by the event loop while read: read again
                if attempt == _READ_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        replicas, decisions, policies, trials = self._read()
        by_state = GaugeMetricFamily(
            "hftgate_scaler_replicas",
            "Replicas the scaler knows, by service and state",
            labels=["service", "state"],
        )
        counts: dict[tuple[str, str], int] = {}
        for replica in replicas:
            key = (replica.service, str(replica.state))
            counts[key] = counts.get(key, 0) + 1
        for service in sorted({r.service for r in replicas} | set(policies)):
            for state in ReplicaState:
                by_state.add_metric([service, str(state)], counts.get((service, str(state)), 0))
        yield by_state
        latest: dict[str, DecisionRecord] = {}
        for record in reversed(decisions):
            latest.setdefault(record.decision.service, record)
        desired = GaugeMetricFamily(
            "hftgate_scaler_desired_replicas",
            "Replicas the latest decision asked for, by service (and its action)",
            labels=["service", "action"],
        )
        current = GaugeMetricFamily(
            "hftgate_scaler_current_replicas", "Replicas counted at the latest decision", labels=["service"]
        )
        for service, record in sorted(latest.items()):
            desired.add_metric([service, str(record.decision.action)], record.decision.desired_replicas)
            current.add_metric([service], record.decision.current_replicas)
        yield desired
        yield current
        yield GaugeMetricFamily(
            "hftgate_scaler_policies", "Services with a scaling policy", value=len(policies)
        )
        yield CounterMetricFamily(
            "hftgate_scaler_restarts", "Replicas restarted after they died", value=self.scaler.restarts
        )
        kept: dict[tuple[str, str, str], int] = {}
        for trial in (t.trial for t in trials):
            trial_key = (trial.service, trial.setting, "true" if trial.kept else "false")
            kept[trial_key] = kept.get(trial_key, 0) + 1
        by_setting = GaugeMetricFamily(
            "hftgate_scaler_optimiser_trials",
            "Optimiser trials in the decision log, by service, setting and whether the change was kept",
            labels=["service", "setting", "kept"],
        )
        for (service, setting, was_kept), count in sorted(kept.items()):
            by_setting.add_metric([service, setting, was_kept], count)
        yield by_setting


def register(scaler: Scaler, registry: CollectorRegistry = REGISTRY) -> ScalerCollector:
    collector = ScalerCollector(scaler)
    registry.register(collector)
    return collector
