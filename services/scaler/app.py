"""The scaler's composition root and control loop; no gRPC import.

:class:`Scaler` owns the registry (registry.py), the policies, each service's scaling memory and
the decision log, and drives the back ends (backends.py). Per service with a policy it evaluates
the rule (decisions.py) every ``evaluation_interval_ms``; a monitor task every
``monitor_interval_ms`` notices replicas that died (and starts a replacement at once) and forgets
replicas the scaler did not start that stopped reporting.

Who may do what (the control plane's rule, enforced here so every entry point gets it):
a report only from the service principal of the service it reports for; a policy change only
from ``admin``. A refused call changes nothing.

Sharded services (execution: each shard owns symbols) are never scaled like stateless ones: a
decision to change their count goes to a :class:`ShardRebalancer` (which adds or retires shards and
moves symbols: services/scaler/rebalancer.py, moves.py) or, with none wired in, is recorded as what
it would have moved (``DecisionRecord.recorded_only``) and nothing is started, drained or stopped.
A shard the rebalancer started that dies is started again as the same shard (its id, address and
state), not replaced by a new replica.

Just after the scaler starts (or a policy appears) a service is *discovering* for
``discovery_ms``: replicas already running report within a report interval or two, and until
then min_replicas is not enforced (decisions.py), so ``hftgate up``'s replicas are counted
instead of being started twice.

With ``warm_replicas`` (local processes, stateless services) the monitor keeps that many replicas
of each such service started and SERVING in reserve (STANDBY: no calls, not counted, never
drained); a scale-up claims one (READY at once) instead of waiting a process's start-up, and the
monitor starts its replacement: AWS's warm pools, for a step that must be met in seconds.

The optimiser (optimiser.py), when given, runs beside the decision loops; its trials share the
decision ids and are served with the decisions (:meth:`Scaler.get_log`).

Bounds: the decision log keeps ``max_decisions`` decisions and as many trials (oldest dropped);
the registry's own bounds (registry.py); a policy only for the services a back end can run
(:data:`RUNNABLE_SERVICES`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from hftgate.security import ADMIN
from services.scaler.backends import (
    KUBERNETES,
    LOCAL_PROCESS,
    RUNNABLE_SERVICES,
    Backend,
    BackendError,
    KubernetesBackend,
)
from services.scaler.config import ScalerConfig
from services.scaler.decisions import (
    NS_PER_MS,
    Action,
    Decision,
    InvalidPolicy,
    Metric,
    Policy,
    ScalingKind,
    ScalingMemory,
    decide,
    default_kind,
)
from services.scaler.optimiser import Optimiser, Trial
from services.scaler.registry import MAX_ID_CHARS, Registry, Replica, ReplicaState, Report

log = logging.getLogger(__name__)


#: A report's service-specific figures: at most this many, names at most this long.
MAX_GAUGES = 16
MAX_GAUGE_NAME_CHARS = 64


class PermissionDenied(Exception):
    """The caller's principal may not do this (PERMISSION_DENIED)."""


class NotFound(Exception):
    """No policy for the service, or a service no back end runs (NOT_FOUND)."""


class InvalidArgument(InvalidPolicy):
    """A malformed request field (INVALID_ARGUMENT with a BadRequest naming the field)."""


@dataclass(frozen=True)
class DecisionRecord:
    decision_id: int
    decision: Decision
    applied: bool
    error: str = ""
    #: A sharded service's change that nothing carried out: no ShardRebalancer is wired in, so
    #: the decision only says (in its reason) what it would have moved.
    recorded_only: bool = False


@dataclass(frozen=True)
class TrialRecord:
    """One optimiser trial in the decision log (its id from the same sequence as decisions)."""

    decision_id: int
    trial: Trial


class ShardRebalancer(Protocol):
    """Changes the shard count of a sharded service by moving symbols between shards, losing
    nothing (services/scaler/moves.py drives the moves). The scaler calls it instead of starting,
    draining or stopping replicas."""

    async def rebalance(self, service: str, current_shards: int, desired_shards: int) -> int:
        """Add or retire shards so that ``desired_shards`` own the symbols; return the shard count
        reached (which may stop short). Raises :class:`BackendError` saying why it failed."""
        ...


def validate_report(report: Report) -> None:
    """INVALID_ARGUMENT for the first malformed field of ``report``."""
    if not report.service:
        raise InvalidArgument("metrics.service", "must not be empty")
    if not report.replica_id:
        raise InvalidArgument("metrics.replica_id", "must not be empty")
    if len(report.replica_id) > MAX_ID_CHARS or not report.replica_id.isprintable():
        raise InvalidArgument("metrics.replica_id", f"must be at most {MAX_ID_CHARS} printable characters")
    for name in ("cpu_cores", "orders_per_s", "requests_per_s"):
        value = getattr(report, name)
        if not (math.isfinite(value) and value >= 0):
            raise InvalidArgument(f"metrics.{name}", f"must be a finite number >= 0, not {value!r}")
    for name in ("inflight_requests", "p99_latency_ns", "queue_depth", "memory_bytes"):
        if getattr(report, name) < 0:
            raise InvalidArgument(f"metrics.{name}", f"must be >= 0, not {getattr(report, name)}")
    if len(report.gauges) > MAX_GAUGES:
        raise InvalidArgument("metrics.gauges", f"at most {MAX_GAUGES} entries, not {len(report.gauges)}")
    for name, value in report.gauges.items():
        if not name or len(name) > MAX_GAUGE_NAME_CHARS or not name.isprintable():
            raise InvalidArgument(
                "metrics.gauges", f"names must be 1..{MAX_GAUGE_NAME_CHARS} printable characters"
            )
        if not math.isfinite(value):
            raise InvalidArgument("metrics.gauges", f"{name} must be finite, not {value!r}")
    if report.interval_ms <= 0:
        raise InvalidArgument("metrics.interval_ms", f"must be > 0, not {report.interval_ms}")
    if report.address:
        host, sep, port = report.address.rpartition(":")
        if (
            len(report.address) > 255
            or not sep
            or not host
            or not port.isdigit()
            or not 0 < int(port) < 65_536
            or not report.address.isprintable()
            or " " in report.address
        ):
            raise InvalidArgument("metrics.address", "must be host:port (at most 255 printable characters)")


def kubernetes_backend(config: ScalerConfig) -> KubernetesBackend:
    """The Kubernetes back end of ``config`` (it reaches for the cluster on first use only)."""
    return KubernetesBackend(
        config.kubernetes_namespace,
        statefulsets=config.kubernetes_statefulsets,
        config_mode=config.kubernetes_config,
        kubeconfig=config.kubernetes_kubeconfig,
        context=config.kubernetes_context,
        request_timeout_s=config.kubernetes_request_timeout_s,
        ready_timeout_s=config.kubernetes_ready_timeout_s,
    )


class Scaler:
    """See the module docstring; the Kubernetes back end is added when ``config`` makes it the
    default and ``backends`` has none."""

    def __init__(
        self,
        config: ScalerConfig,
        backends: dict[str, Backend],
        *,
        clock: Callable[[], int] = time.time_ns,
        rebalancer: ShardRebalancer | None = None,
        optimiser: Optimiser | None = None,
    ) -> None:
        self.config = config
        self.rebalancer = rebalancer
        self.optimiser: Optimiser | None = None
        if optimiser is not None:
            self.attach_optimiser(optimiser)
        if config.default_backend == KUBERNETES and KUBERNETES not in backends:
            backends = {**backends, KUBERNETES: kubernetes_backend(config)}
        self.backends = backends
        self.clock = clock
        self.registry = Registry(
            clock,
            max_replicas_per_service=config.max_replicas_per_service,
            max_reports_per_replica=config.max_reports_per_replica,
            max_watchers=config.max_watchers,
            max_queued_per_watcher=config.max_queued_per_watcher,
        )
        self.policies: dict[str, Policy] = {}
        self.memories: dict[str, ScalingMemory] = {}
        self.decisions: deque[DecisionRecord] = deque(maxlen=config.max_decisions)
        self.trials: deque[TrialRecord] = deque(maxlen=config.max_decisions)
        self._optimiser_task: asyncio.Task[None] | None = None
        self._next_decision_id = 1
        self._next_replica = 1
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._monitor: asyncio.Task[None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self.restarts = 0
        self._run_loops = False

    # --- policies ----------------------------------------------------------------------------
    def effective_policy(self, policy: Policy) -> Policy:
        """``policy`` with the scaler's defaults for its zero fields; validated."""
        if policy.service not in RUNNABLE_SERVICES:
            if not policy.service:
                raise InvalidArgument("policy.service", "must not be empty")
            raise NotFound(
                f"the scaler does not know how to run {policy.service!r}; "
                f"it runs {', '.join(sorted(RUNNABLE_SERVICES))}"
            )
        kind = policy.kind or default_kind(policy.service)
        if kind is not default_kind(policy.service):
            raise InvalidArgument(
                "policy.kind",
                f"{policy.service} is {default_kind(policy.service)}, not {kind}: "
                + (
                    "its replicas own symbols, and scale by moving them"
                    if kind is ScalingKind.STATELESS
                    else "its replicas own no state to move"
                ),
            )
        backend = policy.backend or self.config.default_backend
        if backend not in self.backends:
            raise InvalidArgument(
                "policy.backend",
                f"{backend!r} is not configured; configured: {', '.join(sorted(self.backends))}",
            )
        effective = replace(
            policy,
            max_replicas=policy.max_replicas or max(self.config.default_max_replicas, policy.min_replicas),
            evaluation_interval_ms=policy.evaluation_interval_ms or self.config.evaluation_interval_ms,
            stale_after_ms=policy.stale_after_ms or self.config.stale_after_ms,
            backend=backend,
            kind=kind,
        )
        try:
            effective.validate()
        except InvalidPolicy as exc:
            raise InvalidArgument(f"policy.{exc.field}", exc.description) from None
        return effective

    def set_policy(self, principal: str | None, policy: Policy | Callable[[], Policy]) -> Policy:
        """Replace the policy of its service (admin only); ``policy`` may be a function that builds
        it, called only once the principal is allowed."""
        if principal != ADMIN:
            raise PermissionDenied(f"only admin may change scaling policies, not {principal or 'an account'}")
        effective = self.effective_policy(policy if isinstance(policy, Policy) else policy())
        self.policies[effective.service] = effective
        if effective.service not in self.memories:
            self.memories[effective.service] = ScalingMemory(
                discovering_until_ns=self.clock() + self.config.discovery_ms * 1_000_000
            )
        self._ensure_loop(effective.service)
        log.info("policy of %s: %s", effective.service, effective)
        return effective

    def get_policy(self, service: str) -> Policy:
        policy = self.policies.get(service)
        if policy is None:
            raise NotFound(f"no scaling policy for {service!r}")
        return policy

    # --- reports -----------------------------------------------------------------------------
    def report(self, principal: str | None, report: Report) -> tuple[bool, int]:
        """Record a replica's report; returns (drain, report interval in ms)."""
        if not report.service:
            raise InvalidArgument("metrics.service", "must not be empty")
        if principal is None or principal != report.service:
            raise PermissionDenied(
                f"{principal or 'an account'} may not report metrics for {report.service!r}: "
                "a service reports for itself only"
            )
        validate_report(report)
        if report.service not in self.policies:
            raise NotFound(f"no scaling policy for {report.service!r}")
        replica = self.registry.report(report)
        return replica.state is ReplicaState.DRAINING, self.config.report_interval_ms

    # --- decisions ---------------------------------------------------------------------------
    def get_decisions(self, service: str = "", since_ns: int = 0, limit: int = 0) -> list[DecisionRecord]:
        found = []
        for record in reversed(self.decisions):
            if record.decision.decided_ns <= since_ns:
                break
            if service and record.decision.service != service:
                continue
            found.append(record)
            if limit and len(found) >= limit:
                break
        return found

    def attach_optimiser(self, optimiser: Optimiser) -> None:
        """Run ``optimiser`` beside the decision loops (from start()), its trials in the log."""
        optimiser.on_trial = self.record_trial
        self.optimiser = optimiser

    def record_trial(self, trial: Trial) -> TrialRecord:
        """Add an optimiser trial to the decision log."""
        record = TrialRecord(self._next_decision_id, trial)
        self._next_decision_id += 1
        self.trials.append(record)
        return record

    def get_log(
        self, service: str = "", since_ns: int = 0, limit: int = 0
    ) -> list[DecisionRecord | TrialRecord]:
        """Decisions and optimiser trials together, newest first (by id: both share the sequence)."""
        trials = [
            t
            for t in reversed(self.trials)
            if t.trial.decided_ns > since_ns and (not service or t.trial.service == service)
        ]
        merged: list[DecisionRecord | TrialRecord] = [*self.get_decisions(service, since_ns), *trials]
        merged.sort(key=lambda record: record.decision_id, reverse=True)
        return merged[:limit] if limit else merged

    async def evaluate(self, service: str) -> DecisionRecord:
        """Evaluate the rule for ``service`` once and carry the decision out."""
        lock = self._locks.setdefault(service, asyncio.Lock())
        async with lock:
            policy = self.get_policy(service)
            memory = self.memories.setdefault(service, ScalingMemory())
            now = self.clock()
            loads = self.registry.loads(service, policy.metric, policy.stale_after_ms)
            decision = decide(now, policy, loads, memory)
            change = decision.desired_replicas - decision.current_replicas
            error = ""
            done = 0
            recorded_only = False
            if decision.action is not Action.HOLD and policy.scaling_kind is ScalingKind.SHARDED:
                decision, done, error, recorded_only = await self._rebalance(policy, decision)
            elif decision.action is Action.SCALE_UP:
                done, error = await self._scale_up(policy, change)
            elif decision.action is Action.SCALE_DOWN:
                done = -self._scale_down(policy, -change)
            memory.record_scaling(now, done)
            finished = self.clock()
            if done and finished > now:
                # Starting replicas can take seconds, during which nothing was evaluated: the
                # recommendation stood until the change was carried out, so the stabilisation
                # windows and a panic's hold count from then (else the first evaluation after a
                # slow start could scale straight back down).
                memory.recommendations.append((finished, decision.recommended_replicas))
                if decision.panic:
                    hold_until = finished + policy.panic_hold_ms * NS_PER_MS
                    memory.panic_until_ns = max(memory.panic_until_ns, hold_until)
            record = DecisionRecord(
                self._next_decision_id,
                decision,
                applied=not error and not recorded_only,
                error=error,
                recorded_only=recorded_only,
            )
            self._next_decision_id += 1
            self.decisions.append(record)
            if decision.action is not Action.HOLD:
                log.info("decision %d for %s: %s", record.decision_id, service, decision.reason)
            return record

    async def _rebalance(self, policy: Policy, decision: Decision) -> tuple[Decision, int, str, bool]:
        """A sharded service's change: (decision, change done, error, recorded only)."""
        current, desired = decision.current_replicas, decision.desired_replicas
        if self.rebalancer is None:
            verb = "add" if desired > current else "retire"
            note = (
                f"sharded: would move symbols to {verb} {abs(desired - current)} shard(s) "
                f"({current} -> {desired}); no symbol mover is wired in, so nothing was changed"
            )
            return replace(decision, reason=f"{decision.reason}; {note}"), 0, "", True
        failure = ""
        reached = current
        try:
            reached = await self.rebalancer.rebalance(policy.service, current, desired)
        except BackendError as exc:
            failure = str(exc)
        # What moved, and where it stopped (MoverRebalancer.last_summary), in the decision's reason.
        summary = getattr(self.rebalancer, "last_summary", "")
        if summary:
            decision = replace(decision, reason=f"{decision.reason}; {summary}")
        if failure:
            return decision, 0, failure, False
        error = "" if reached == desired else f"the symbol mover reached {reached} shards of {desired}"
        return decision, reached - current, error, False

    def _claim_standby(self, policy: Policy, backend: Backend) -> Replica | None:
        """A started warm replica of ``policy.service`` made READY, or None when there is none."""
        for replica in self.registry.all(policy.service):
            if replica.state is ReplicaState.STANDBY and replica.address and replica.backend == backend.name:
                claimed = self.registry.update(policy.service, replica.replica_id, state=ReplicaState.READY)
                if claimed is not None:
                    log.info("claimed warm %s replica %s", policy.service, replica.replica_id)
                    return claimed
        return None

    def ensure_warm(self) -> int:
        """Start warm replicas where a service has fewer than ``warm_replicas``; returns how many."""
        if self.config.warm_replicas <= 0:
            return 0
        started = 0
        for service, policy in list(self.policies.items()):
            backend = self.backends.get(policy.backend)
            if (
                backend is None
                or policy.backend != LOCAL_PROCESS
                or policy.scaling_kind is not ScalingKind.STATELESS
            ):
                continue
            standby = sum(1 for r in self.registry.all(service) if r.state is ReplicaState.STANDBY)
            for _ in range(self.config.warm_replicas - standby):
                replica_id = f"{service}-{self._next_replica}"
                self._next_replica += 1
                # Added now, so the next check counts it while it starts (no address: not claimable).
                self.registry.add(service, replica_id, backend=backend.name, state=ReplicaState.STANDBY)
                self._spawn(self._start_standby(service, replica_id, backend))
                started += 1
        return started

    async def _start_standby(self, service: str, replica_id: str, backend: Backend) -> None:
        try:
            started = await backend.start(service, replica_id, 0)
        except BackendError as exc:
            self.registry.remove(service, replica_id, ReplicaState.FAILED)
            log.warning("warm %s replica %s did not start: %s", service, replica_id, exc)
            return
        replica = self.registry.update(
            service, replica_id, address=started.address, backend_handle=started.handle
        )
        if replica is None:
            await backend.stop(service, replica_id, started.handle, 0)

    async def _start_one(self, policy: Policy, backend: Backend, target_count: int) -> Replica:
        claimed = self._claim_standby(policy, backend)
        if claimed is not None:
            return claimed
        replica_id = f"{policy.service}-{self._next_replica}"
        self._next_replica += 1
        self.registry.add(policy.service, replica_id, backend=backend.name, state=ReplicaState.STARTING)
        try:
            started = await backend.start(policy.service, replica_id, target_count)
        except BackendError:
            self.registry.remove(policy.service, replica_id, ReplicaState.FAILED)
            raise
        replica = self.registry.update(
            policy.service,
            replica_id,
            address=started.address,
            backend_handle=started.handle,
            state=ReplicaState.READY,
        )
        if replica is None:  # removed meanwhile (a policy change, shutdown): stop what started
            await backend.stop(policy.service, replica_id, started.handle, target_count - 1)
            raise BackendError(f"replica {replica_id} was removed while starting")
        return replica

    async def _scale_up(self, policy: Policy, count: int) -> tuple[int, str]:
        backend = self.backends[policy.backend]
        base = len(self.registry.counted(policy.service))
        results = await asyncio.gather(
            *(self._start_one(policy, backend, base + index + 1) for index in range(count)),
            return_exceptions=True,
        )
        errors = [str(r) for r in results if isinstance(r, BaseException)]
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result
        return count - len(errors), "; ".join(errors)

    def _scale_down(self, policy: Policy, count: int) -> int:
        """Mark the newest ``count`` replicas DRAINING; each is stopped after ``drain_ms``."""
        counted = sorted(
            self.registry.counted(policy.service), key=lambda r: (r.started_ns, r.replica_id), reverse=True
        )
        victims = counted[:count]
        remaining = len(counted) - len(victims)
        for replica in victims:
            self.registry.update(policy.service, replica.replica_id, state=ReplicaState.DRAINING)
            self._spawn(self._drain_and_stop(replica, remaining))
        return len(victims)

    async def _drain_and_stop(self, replica: Replica, target_count: int) -> None:
        await asyncio.sleep(self.config.drain_ms / 1000)
        backend = self.backends.get(replica.backend)
        if backend is None:
            # Not ours: told to drain in its report replies; forgotten when it stops reporting.
            return
        try:
            await backend.stop(replica.service, replica.replica_id, replica.backend_handle, target_count)
            self.registry.remove(replica.service, replica.replica_id, ReplicaState.STOPPED)
        except BackendError as exc:
            log.warning("could not stop %s/%s: %s", replica.service, replica.replica_id, exc)
            self.registry.remove(replica.service, replica.replica_id, ReplicaState.FAILED)

    # --- the loops ---------------------------------------------------------------------------
    def _spawn(self, coroutine: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)  # type: ignore[arg-type]
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _ensure_loop(self, service: str) -> None:
        if not self._run_loops:
            return  # before start(), or tests that evaluate by hand
        if service not in self._loops or self._loops[service].done():
            self._loops[service] = asyncio.get_running_loop().create_task(self._evaluate_forever(service))

    async def _evaluate_forever(self, service: str) -> None:
        while True:
            try:
                await self.evaluate(service)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("evaluation of %s failed", service)
            policy = self.policies.get(service)
            interval_ms = float(
                policy.evaluation_interval_ms if policy else self.config.evaluation_interval_ms
            )
            memory = self.memories.get(service)
            if memory is not None and memory.discovering_until_ns > self.clock():
                # Decide again as soon as discovery ends, not a whole interval later.
                left_ms = (memory.discovering_until_ns - self.clock()) / 1_000_000
                interval_ms = min(interval_ms, max(left_ms, 1.0))
            await asyncio.sleep(interval_ms / 1000)

    async def check_replicas(self) -> list[tuple[str, str, str]]:
        """Notice replicas that died (restarting each at once) and forget silent outsiders."""
        dead: list[tuple[str, str, str]] = []
        for backend in self.backends.values():
            dead += backend.exited()
        restart_shard = getattr(self.rebalancer, "restart_shard", None)
        for service, replica_id, why in dead:
            if restart_shard is not None and default_kind(service) is ScalingKind.SHARDED:
                # A shard owns symbols: the same shard comes back (id, address, state), not a
                # new replica (MoverRebalancer.restart_shard).
                self.registry.remove(service, replica_id, ReplicaState.FAILED)
                log.warning("%s shard %s %s: restarting it", service, replica_id, why)
                self.restarts += 1
                self._spawn(self._restart_shard(restart_shard, replica_id))
                continue
            known = self.registry.get(service, replica_id)
            # A draining replica that exits early has done what it was asked; a warm one is
            # replaced by ensure_warm below.
            not_serving = known is not None and known.state in (ReplicaState.DRAINING, ReplicaState.STANDBY)
            replica = self.registry.remove(service, replica_id, ReplicaState.FAILED)
            log.warning("%s replica %s %s", service, replica_id, why)
            policy = self.policies.get(service)
            if replica is None or policy is None or not_serving:
                continue
            restart_on = self.backends.get(replica.backend)
            if restart_on is None:
                continue
            self.restarts += 1
            self._spawn(self._restart(policy, restart_on))
        self.ensure_warm()
        for replica in self.registry.expire(self.config.forget_after_ms):
            log.warning(
                "forgot %s replica %s: no report for %d ms",
                replica.service,
                replica.replica_id,
                self.config.forget_after_ms,
            )
        return dead

    async def _restart_shard(self, restart: Callable[[str], Awaitable[bool]], replica_id: str) -> None:
        try:
            await restart(replica_id)
        except Exception:  # a background task: nothing else would see it
            log.exception("restart of execution shard %s failed", replica_id)

    async def _restart(self, policy: Policy, backend: Backend) -> None:
        try:
            await self._start_one(policy, backend, len(self.registry.counted(policy.service)) + 1)
        except BackendError as exc:
            log.warning("restart of a %s replica failed: %s", policy.service, exc)

    async def _monitor_forever(self) -> None:
        while True:
            try:
                await self.check_replicas()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("replica check failed")
            await asyncio.sleep(self.config.monitor_interval_ms / 1000)

    async def start(self, *, loops: bool = True) -> None:
        """Start the evaluation loops of the configured policies and the monitor."""
        if not loops:
            return
        self._run_loops = True
        for service in self.policies:
            self._ensure_loop(service)
        self._monitor = asyncio.get_running_loop().create_task(self._monitor_forever())
        if self.optimiser is not None:
            self._optimiser_task = asyncio.get_running_loop().create_task(self.optimiser.run_forever())

    async def close(self) -> None:
        tasks = [*self._loops.values(), *self._background]
        if self._monitor is not None:
            tasks.append(self._monitor)
        if self._optimiser_task is not None:
            tasks.append(self._optimiser_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loops.clear()
        close_actuator = getattr(self.optimiser.actuator, "close", None) if self.optimiser else None
        if close_actuator is not None:
            await close_actuator()
        close_rebalancer = getattr(self.rebalancer, "close", None)
        if close_rebalancer is not None:
            await close_rebalancer()
        for backend in self.backends.values():
            await backend.close()


def parse_policies(specs: tuple[str, ...]) -> list[Policy]:
    """``service:metric:target:min:max`` items of HFTGATE_SCALER_POLICIES."""
    policies = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) != 5:
            raise ValueError(f"policy {spec!r}: expected service:metric:target:min:max")
        service, metric, target, low, high = parts
        try:
            policies.append(
                Policy(
                    service=service,
                    metric=Metric(metric),
                    target_value=float(target),
                    min_replicas=int(low),
                    max_replicas=int(high),
                )
            )
        except ValueError as exc:
            raise ValueError(f"policy {spec!r}: {exc}") from None
    return policies
