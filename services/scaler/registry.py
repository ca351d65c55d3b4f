"""The replica set the scaler knows, with each replica's recent reports; no gRPC import.

One owner: the scaler's event loop. Bounded by construction:

* at most ``max_replicas_per_service`` replicas per service: a report from one more unknown
  replica raises :class:`TableFull` (RESOURCE_EXHAUSTED), the set is unchanged;
* at most ``max_reports_per_replica`` reports per replica (oldest dropped);
* at most ``max_watchers`` watchers (one more raises :class:`TableFull`), each with at most
  ``max_queued_per_watcher`` queued changes: a watcher that falls further behind loses its queue
  and is sent a fresh SNAPSHOT instead (conflation: it still ends up with the exact set).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from services.scaler.decisions import NS_PER_MS, Metric, ReplicaLoad

MAX_ID_CHARS = 128


class ReplicaState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"
    #: Started and held in reserve (a warm replica): takes no calls, not counted; a scale-up
    #: claims it (READY) instead of starting a process.
    STANDBY = "standby"


class Change(StrEnum):
    SNAPSHOT = "snapshot"
    ADDED = "added"
    STATE_CHANGED = "state_changed"
    REMOVED = "removed"


class TableFull(RuntimeError):
    """A bounded table is full (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class Report:
    """One replica's figures for one interval (ReplicaMetrics)."""

    service: str
    replica_id: str
    cpu_cores: float = 0.0
    inflight_requests: int = 0
    orders_per_s: float = 0.0
    p99_latency_ns: int = 0
    queue_depth: int = 0
    interval_ms: int = 1_000
    reported_ns: int = 0
    address: str = ""
    memory_bytes: int = 0
    requests_per_s: float = 0.0
    #: Figures only this service has (``near_cache_hit_ratio``), for the optimiser's objectives.
    gauges: Mapping[str, float] = field(default_factory=dict)

    def value(self, metric: Metric) -> float:
        return float(getattr(self, metric.value))

    def figure(self, name: str) -> float | None:
        """A report field or gauge by name (the optimiser's objectives); None when it has none."""
        if name in self.gauges:
            return float(self.gauges[name])
        if name in _NUMERIC_FIELDS:
            return float(getattr(self, name))
        return None


_NUMERIC_FIELDS = frozenset(
    {
        "cpu_cores",
        "inflight_requests",
        "orders_per_s",
        "p99_latency_ns",
        "queue_depth",
        "memory_bytes",
        "requests_per_s",
    }
)


@dataclass
class Replica:
    service: str
    replica_id: str
    address: str = ""
    #: The backend's name ("" for a replica the scaler did not start).
    backend: str = ""
    backend_handle: str = ""
    state: ReplicaState = ReplicaState.STARTING
    started_ns: int = 0
    #: When the scaler received its last report (scaler clock); 0 = never.
    last_report_ns: int = 0
    last_metrics: Report | None = None
    reports: deque[Report] = field(default_factory=deque, repr=False)

    def snapshot(self) -> Replica:
        """A copy that later changes do not reach (the report history is not copied)."""
        return dataclasses.replace(self, reports=deque())


@dataclass(frozen=True)
class ReplicaEvent:
    change: Change
    #: The replica in its new state; None for SNAPSHOT.
    replica: Replica | None
    #: The watched scope's replicas after the change.
    replicas: tuple[Replica, ...]
    changed_ns: int


class Watcher:
    """One WatchReplicas stream's queue (see the module docstring for its bound)."""

    def __init__(self, registry: Registry, service: str, max_queued: int) -> None:
        self._registry = registry
        self.service = service
        self._max_queued = max_queued
        self._queue: deque[ReplicaEvent] = deque()
        self._resnapshot = True
        self._ready = asyncio.Event()
        self._ready.set()
        self.closed = False

    def push(self, event: ReplicaEvent) -> None:
        if self._resnapshot:
            return  # the coming snapshot covers it
        if len(self._queue) >= self._max_queued:
            self._queue.clear()
            self._resnapshot = True
        else:
            self._queue.append(event)
        self._ready.set()

    async def next(self) -> ReplicaEvent:
        while True:
            if self._resnapshot:
                self._resnapshot = False
                return ReplicaEvent(
                    Change.SNAPSHOT, None, self._registry.all(self.service), self._registry.clock()
                )
            if self._queue:
                return self._queue.popleft()
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._registry._watchers.discard(self)


class Registry:
    """The replicas of every service, by service then replica id."""

    def __init__(
        self,
        clock: Callable[[], int],
        *,
        max_replicas_per_service: int = 64,
        max_reports_per_replica: int = 120,
        max_watchers: int = 64,
        max_queued_per_watcher: int = 1_024,
    ) -> None:
        self.clock = clock
        self.max_replicas_per_service = max_replicas_per_service
        self.max_reports_per_replica = max_reports_per_replica
        self.max_watchers = max_watchers
        self.max_queued_per_watcher = max_queued_per_watcher
        self._replicas: dict[str, dict[str, Replica]] = {}
        self._watchers: set[Watcher] = set()

    # --- reading ----------------------------------------------------------------------------
    def get(self, service: str, replica_id: str) -> Replica | None:
        return self._replicas.get(service, {}).get(replica_id)

    def all(self, service: str = "") -> tuple[Replica, ...]:
        services = [service] if service else sorted(self._replicas)
        return tuple(
            self._replicas[name][rid].snapshot()
            for name in services
            if name in self._replicas
            for rid in sorted(self._replicas[name])
        )

    def counted(self, service: str) -> list[Replica]:
        """The replicas the rule counts: STARTING and READY (draining ones are on their way out)."""
        return [
            r
            for r in self._replicas.get(service, {}).values()
            if r.state in (ReplicaState.STARTING, ReplicaState.READY)
        ]

    def loads(self, service: str, metric: Metric, stale_after_ms: int) -> list[ReplicaLoad]:
        """What the rule sees of ``service``: a STARTING replica is unready; a READY one whose last
        report is older than ``stale_after_ms`` (or that never reported) is missing its metric."""
        now = self.clock()
        loads = []
        for replica in sorted(self.counted(service), key=lambda r: r.replica_id):
            ready = replica.state is ReplicaState.READY
            fresh = (
                replica.last_metrics is not None
                and now - replica.last_report_ns <= stale_after_ms * NS_PER_MS
            )
            value = replica.last_metrics.value(metric) if fresh and replica.last_metrics else None
            loads.append(ReplicaLoad(replica.replica_id, ready, value if ready else None))
        return loads

    # --- changing ---------------------------------------------------------------------------
    def _check_room(self, service: str) -> None:
        if len(self._replicas.get(service, {})) >= self.max_replicas_per_service:
            raise TableFull(
                f"service {service!r} already has {self.max_replicas_per_service} replicas "
                "(the scaler's limit)"
            )

    def add(
        self,
        service: str,
        replica_id: str,
        *,
        address: str = "",
        backend: str = "",
        backend_handle: str = "",
        state: ReplicaState = ReplicaState.STARTING,
    ) -> Replica:
        if self.get(service, replica_id) is not None:
            raise ValueError(f"replica {service}/{replica_id} already exists")
        self._check_room(service)
        replica = Replica(
            service,
            replica_id,
            address=address,
            backend=backend,
            backend_handle=backend_handle,
            state=state,
            started_ns=self.clock(),
            reports=deque(maxlen=self.max_reports_per_replica),
        )
        self._replicas.setdefault(service, {})[replica_id] = replica
        self._publish(Change.ADDED, replica)
        return replica

    def report(self, report: Report) -> Replica:
        """Record ``report``; an unknown replica joins its service as READY (it is serving, since it
        reports). Raises :class:`TableFull` when that would exceed the bound."""
        replica = self.get(report.service, report.replica_id)
        if replica is None:
            replica = self.add(report.service, report.replica_id, state=ReplicaState.READY)
        if report.address and replica.address != report.address:
            self.update(report.service, report.replica_id, address=report.address)  # watchers hear it
        replica.last_report_ns = self.clock()
        replica.last_metrics = report
        replica.reports.append(report)
        return replica

    def update(self, service: str, replica_id: str, **changes: object) -> Replica | None:
        """Change a replica's state, address or handle; publishes STATE_CHANGED when anything changed."""
        replica = self.get(service, replica_id)
        if replica is None:
            return None
        changed = False
        for name, value in changes.items():
            if getattr(replica, name) != value:
                setattr(replica, name, value)
                changed = True
        if changed:
            self._publish(Change.STATE_CHANGED, replica)
        return replica

    def remove(self, service: str, replica_id: str, final_state: ReplicaState) -> Replica | None:
        replicas = self._replicas.get(service, {})
        replica = replicas.pop(replica_id, None)
        if replica is None:
            return None
        if not replicas:
            del self._replicas[service]
        replica.state = final_state
        self._publish(Change.REMOVED, replica)
        return replica

    def expire(self, forget_after_ms: int) -> list[Replica]:
        """Remove (as FAILED) replicas the scaler did not start that have not reported for
        ``forget_after_ms``: they are gone, and only their reports told of them."""
        now = self.clock()
        gone = []
        for service in list(self._replicas):
            for replica in list(self._replicas[service].values()):
                if replica.backend:
                    continue  # its backend watches it
                if now - max(replica.last_report_ns, replica.started_ns) > forget_after_ms * NS_PER_MS:
                    removed = self.remove(service, replica.replica_id, ReplicaState.FAILED)
                    if removed is not None:
                        gone.append(removed)
        return gone

    # --- watching ---------------------------------------------------------------------------
    def watch(self, service: str = "") -> Watcher:
        if len(self._watchers) >= self.max_watchers:
            raise TableFull(f"the scaler already serves {self.max_watchers} replica watchers (its limit)")
        watcher = Watcher(self, service, self.max_queued_per_watcher)
        self._watchers.add(watcher)
        return watcher

    def _publish(self, change: Change, replica: Replica) -> None:
        if not self._watchers:
            return
        now = self.clock()
        changed = replica.snapshot()
        for watcher in list(self._watchers):
            if watcher.service and watcher.service != replica.service:
                continue
            watcher.push(ReplicaEvent(change, changed, self.all(watcher.service), now))
