"""gRPC wiring of the scaler: proto <-> domain translation, start-up and shut-down.

The rule is in decisions.py, the replica set in registry.py, the loop in app.py, the back ends in
backends.py. Every method needs a service token (:class:`ServiceAuthInterceptor` with no API-key
methods: an account's key is refused UNAUTHENTICATED); the app decides what each principal may do.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from sqlalchemy.exc import SQLAlchemyError

from hftgate.grpcserver import RunningServer, ServiceBinding, abort_invalid_argument, create_server
from hftgate.security import SuiteSecret, SuiteSecurity, load_suite_security, principal_of, suite_client_tls
from hftgate.shardmap import ShardMapStore, ShardMapUnavailable
from hftgate.supervisor import shard_map_store
from hftgate.v1 import scaler_pb2, scaler_pb2_grpc
from services.execution.config import load_config as load_execution_config
from services.scaler.app import (
    DecisionRecord,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Scaler,
    ShardRebalancer,
    TrialRecord,
    kubernetes_backend,
    parse_policies,
)
from services.scaler.backends import (
    DOCKER_COMPOSE,
    KUBERNETES,
    LOCAL_PROCESS,
    Backend,
    BackendError,
    BackendUnavailable,
    ComposeBackend,
    KubernetesApiError,
    LocalProcessBackend,
    default_local_env,
)
from services.scaler.config import ScalerConfig
from services.scaler.decisions import Action, Metric, Policy, RateLimit, ScalingKind
from services.scaler.moves import SymbolMover
from services.scaler.rebalancer import LocalShardLauncher, MoverRebalancer, reference_symbols
from services.scaler.registry import Change, Replica, ReplicaEvent, ReplicaState, Report, TableFull
from services.scaler.tuning import build_optimiser

log = logging.getLogger(__name__)

SERVICE_NAME = "hftgate.v1.ScalerService"
T = TypeVar("T")

_METRICS = {
    Metric.CPU_CORES: scaler_pb2.SCALING_METRIC_CPU_CORES,
    Metric.INFLIGHT_REQUESTS: scaler_pb2.SCALING_METRIC_INFLIGHT_REQUESTS,
    Metric.ORDERS_PER_S: scaler_pb2.SCALING_METRIC_ORDERS_PER_S,
    Metric.P99_LATENCY_NS: scaler_pb2.SCALING_METRIC_P99_LATENCY_NS,
    Metric.QUEUE_DEPTH: scaler_pb2.SCALING_METRIC_QUEUE_DEPTH,
}
_METRICS_BACK = {v: k for k, v in _METRICS.items()}
_ACTIONS = {
    Action.HOLD: scaler_pb2.SCALING_ACTION_HOLD,
    Action.SCALE_UP: scaler_pb2.SCALING_ACTION_SCALE_UP,
    Action.SCALE_DOWN: scaler_pb2.SCALING_ACTION_SCALE_DOWN,
}
_STATES = {
    ReplicaState.STARTING: scaler_pb2.REPLICA_STATE_STARTING,
    ReplicaState.READY: scaler_pb2.REPLICA_STATE_READY,
    ReplicaState.DRAINING: scaler_pb2.REPLICA_STATE_DRAINING,
    ReplicaState.STOPPED: scaler_pb2.REPLICA_STATE_STOPPED,
    ReplicaState.FAILED: scaler_pb2.REPLICA_STATE_FAILED,
    ReplicaState.STANDBY: scaler_pb2.REPLICA_STATE_STANDBY,
}
_BACKENDS = {
    "": scaler_pb2.SCALING_BACKEND_UNSPECIFIED,
    LOCAL_PROCESS: scaler_pb2.SCALING_BACKEND_LOCAL_PROCESS,
    DOCKER_COMPOSE: scaler_pb2.SCALING_BACKEND_DOCKER_COMPOSE,
    KUBERNETES: scaler_pb2.SCALING_BACKEND_KUBERNETES,
}
_BACKENDS_BACK = {v: k for k, v in _BACKENDS.items()}
_KINDS = {
    ScalingKind.STATELESS: scaler_pb2.SCALING_KIND_STATELESS,
    ScalingKind.SHARDED: scaler_pb2.SCALING_KIND_SHARDED,
}
_KINDS_BACK = {v: k for k, v in _KINDS.items()}
_CHANGES = {
    Change.SNAPSHOT: scaler_pb2.REPLICA_CHANGE_SNAPSHOT,
    Change.ADDED: scaler_pb2.REPLICA_CHANGE_ADDED,
    Change.STATE_CHANGED: scaler_pb2.REPLICA_CHANGE_STATE_CHANGED,
    Change.REMOVED: scaler_pb2.REPLICA_CHANGE_REMOVED,
}

DEFAULT_TOLERANCE = 0.1
DEFAULT_PANIC_THRESHOLD = 2.0
DEFAULT_PANIC_HOLD_MS = 60_000
DEFAULT_LIMIT_PERIOD_MS = 15_000


# --- translation ----------------------------------------------------------------------------------
def report_from_proto(metrics: scaler_pb2.ReplicaMetrics) -> Report:
    return Report(
        service=metrics.service,
        replica_id=metrics.replica_id,
        cpu_cores=metrics.cpu_cores,
        inflight_requests=metrics.inflight_requests,
        orders_per_s=metrics.orders_per_s,
        p99_latency_ns=metrics.p99_latency_ns,
        queue_depth=metrics.queue_depth,
        interval_ms=metrics.interval_ms,
        reported_ns=metrics.reported_ns,
        address=metrics.address,
        memory_bytes=metrics.memory_bytes,
        requests_per_s=metrics.requests_per_s,
        gauges=dict(metrics.gauges),
    )


def report_to_proto(report: Report) -> scaler_pb2.ReplicaMetrics:
    return scaler_pb2.ReplicaMetrics(
        service=report.service,
        replica_id=report.replica_id,
        cpu_cores=report.cpu_cores,
        inflight_requests=report.inflight_requests,
        orders_per_s=report.orders_per_s,
        p99_latency_ns=report.p99_latency_ns,
        queue_depth=report.queue_depth,
        interval_ms=report.interval_ms,
        reported_ns=report.reported_ns,
        address=report.address,
        memory_bytes=report.memory_bytes,
        requests_per_s=report.requests_per_s,
        gauges=dict(report.gauges),
    )


def _limit(replicas: int, percent: float, period_ms: int, default: RateLimit, name: str) -> RateLimit:
    if not math.isfinite(percent):
        raise InvalidArgument(f"policy.{name}_percent", f"must be a finite number, not {percent!r}")
    if period_ms < 0:
        return RateLimit(0, 0.0, 0)
    if replicas == 0 and percent == 0:
        replicas, percent = default.replicas, default.percent
    return RateLimit(replicas, percent, period_ms or DEFAULT_LIMIT_PERIOD_MS)


def policy_from_proto(p: scaler_pb2.ScalingPolicy) -> Policy:
    """The domain policy of a SetPolicy request, proto zeros turned into the documented defaults."""
    if p.metric not in _METRICS_BACK:
        raise InvalidArgument("policy.metric", "must be set to a ScalingMetric")
    if p.backend not in _BACKENDS_BACK:
        raise InvalidArgument("policy.backend", f"unknown ScalingBackend {p.backend}")
    if p.kind != scaler_pb2.SCALING_KIND_UNSPECIFIED and p.kind not in _KINDS_BACK:
        raise InvalidArgument("policy.kind", f"unknown ScalingKind {p.kind}")
    if not math.isfinite(p.panic_threshold):
        raise InvalidArgument("policy.panic_threshold", f"must be a finite number, not {p.panic_threshold!r}")
    panic = DEFAULT_PANIC_THRESHOLD if p.panic_threshold == 0 else max(0.0, p.panic_threshold)
    return Policy(
        service=p.service,
        min_replicas=p.min_replicas or 1,
        max_replicas=p.max_replicas,
        metric=_METRICS_BACK[p.metric],
        target_value=p.target_value,
        tolerance=p.tolerance or DEFAULT_TOLERANCE,
        scale_up_tolerance=p.scale_up_tolerance,
        scale_down_tolerance=p.scale_down_tolerance,
        scale_up_stabilization_ms=p.scale_up_stabilization_ms,
        scale_down_stabilization_ms=p.scale_down_stabilization_ms,
        scale_up_limit=_limit(
            p.scale_up_limit_replicas,
            p.scale_up_limit_percent,
            p.scale_up_limit_period_ms,
            RateLimit(4, 100.0, DEFAULT_LIMIT_PERIOD_MS),
            "scale_up_limit",
        ),
        scale_down_limit=_limit(
            p.scale_down_limit_replicas,
            p.scale_down_limit_percent,
            p.scale_down_limit_period_ms,
            RateLimit(0, 100.0, DEFAULT_LIMIT_PERIOD_MS),
            "scale_down_limit",
        ),
        panic_threshold=panic,
        panic_hold_ms=p.panic_hold_ms or DEFAULT_PANIC_HOLD_MS,
        evaluation_interval_ms=p.evaluation_interval_ms,
        prediction_horizon_ms=p.prediction_horizon_ms,
        season_ms=p.season_ms,
        forecast_only=p.forecast_only,
        stale_after_ms=p.stale_after_ms,
        backend=_BACKENDS_BACK[p.backend],
        kind=_KINDS_BACK.get(p.kind),
    )


def policy_to_proto(policy: Policy) -> scaler_pb2.ScalingPolicy:
    return scaler_pb2.ScalingPolicy(
        service=policy.service,
        min_replicas=policy.min_replicas,
        max_replicas=policy.max_replicas,
        metric=_METRICS[policy.metric],
        target_value=policy.target_value,
        tolerance=policy.tolerance,
        scale_up_tolerance=policy.up_tolerance,
        scale_down_tolerance=policy.down_tolerance,
        scale_up_stabilization_ms=policy.scale_up_stabilization_ms,
        scale_down_stabilization_ms=policy.scale_down_stabilization_ms,
        evaluation_interval_ms=policy.evaluation_interval_ms,
        backend=_BACKENDS[policy.backend],
        prediction_horizon_ms=policy.prediction_horizon_ms,
        panic_threshold=policy.panic_threshold or -1.0,
        panic_hold_ms=policy.panic_hold_ms,
        scale_up_limit_replicas=policy.scale_up_limit.replicas,
        scale_up_limit_percent=policy.scale_up_limit.percent,
        scale_up_limit_period_ms=policy.scale_up_limit.period_ms or -1,
        scale_down_limit_replicas=policy.scale_down_limit.replicas,
        scale_down_limit_percent=policy.scale_down_limit.percent,
        scale_down_limit_period_ms=policy.scale_down_limit.period_ms or -1,
        season_ms=policy.season_ms,
        forecast_only=policy.forecast_only,
        stale_after_ms=policy.stale_after_ms,
        kind=_KINDS[policy.scaling_kind],
    )


def decision_to_proto(record: DecisionRecord) -> scaler_pb2.ScalingDecision:
    d = record.decision
    return scaler_pb2.ScalingDecision(
        decision_id=record.decision_id,
        service=d.service,
        decided_ns=d.decided_ns,
        action=_ACTIONS[d.action],
        current_replicas=d.current_replicas,
        recommended_replicas=d.recommended_replicas,
        desired_replicas=d.desired_replicas,
        metric=_METRICS[d.metric],
        observed_value=d.observed_value,
        predicted_value=d.predicted_value,
        prediction_horizon_ms=d.prediction_horizon_ms,
        target_value=d.target_value,
        reason=d.reason,
        applied=record.applied,
        error=record.error,
        panic=d.panic,
        forecast_replicas=d.forecast_replicas,
        forecast_only=d.forecast_only,
        recorded_only=record.recorded_only,
        inputs=[
            scaler_pb2.DecisionInput(
                replica_id=load.replica_id,
                ready=load.ready,
                has_value=load.value is not None,
                value=load.value or 0.0,
            )
            for load in d.loads
        ],
    )


def trial_to_proto(record: TrialRecord) -> scaler_pb2.ScalingDecision:
    """An optimiser trial as a decision with action TUNE (replica fields 0)."""
    t = record.trial
    measured = t.measured
    return scaler_pb2.ScalingDecision(
        decision_id=record.decision_id,
        service=t.service,
        decided_ns=t.decided_ns,
        action=scaler_pb2.SCALING_ACTION_TUNE,
        reason=t.reason,
        applied=t.kept,
        trial=scaler_pb2.OptimiserTrial(
            setting=t.setting,
            purpose=str(t.purpose),
            from_value=t.from_value,
            to_value=t.to_value,
            objective_metric=t.objective.metric,
            objective_target=t.objective.target,
            higher_is_better=t.objective.higher_is_better,
            baseline_mean=t.baseline.mean,
            baseline_stderr=t.baseline.stderr,
            measured_mean=measured.mean if measured else 0.0,
            measured_stderr=measured.stderr if measured else 0.0,
            has_measured=measured is not None,
            kept=t.kept,
            started_ns=t.started_ns,
            window_ms=t.window_ms,
        ),
    )


def replica_to_proto(replica: Replica) -> scaler_pb2.Replica:
    message = scaler_pb2.Replica(
        service=replica.service,
        replica_id=replica.replica_id,
        address=replica.address,
        backend=_BACKENDS.get(replica.backend, scaler_pb2.SCALING_BACKEND_UNSPECIFIED),
        backend_handle=replica.backend_handle,
        state=_STATES[replica.state],
        started_ns=replica.started_ns,
        last_report_ns=replica.last_report_ns,
    )
    if replica.last_metrics is not None:
        message.last_metrics.CopyFrom(report_to_proto(replica.last_metrics))
    return message


def event_to_proto(event: ReplicaEvent) -> scaler_pb2.WatchReplicasResponse:
    message = scaler_pb2.WatchReplicasResponse(
        change=_CHANGES[event.change],
        replicas=[replica_to_proto(r) for r in event.replicas],
        changed_ns=event.changed_ns,
    )
    if event.replica is not None:
        message.replica.CopyFrom(replica_to_proto(event.replica))
    return message


# --- the servicer ---------------------------------------------------------------------------------
class ScalerServicer(scaler_pb2_grpc.ScalerServiceServicer):
    def __init__(self, scaler: Scaler, secret: SuiteSecret) -> None:
        self._scaler = scaler
        self._secret = secret

    async def ReportMetrics(
        self, request: scaler_pb2.ReportMetricsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        principal = principal_of(context, self._secret)
        drain, interval_ms = await _guard(
            context, lambda: self._scaler.report(principal, report_from_proto(request.metrics))
        )
        return scaler_pb2.ReportMetricsResponse(drain=drain, report_interval_ms=interval_ms)

    async def GetDecisions(
        self, request: scaler_pb2.GetDecisionsRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        if request.limit < 0:
            await _abort_bad_request(context, "limit", f"must be >= 0, not {request.limit}")
        records = self._scaler.get_log(request.service, request.since_ns, request.limit)
        return scaler_pb2.GetDecisionsResponse(
            decisions=[
                trial_to_proto(r) if isinstance(r, TrialRecord) else decision_to_proto(r) for r in records
            ]
        )

    async def ListReplicas(
        self, request: scaler_pb2.ListReplicasRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        replicas = self._scaler.registry.all(request.service)
        return scaler_pb2.ListReplicasResponse(replicas=[replica_to_proto(r) for r in replicas])

    async def WatchReplicas(
        self, request: scaler_pb2.WatchReplicasRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[scaler_pb2.WatchReplicasResponse]:
        watcher = await _guard(context, lambda: self._scaler.registry.watch(request.service))
        try:
            while True:
                yield event_to_proto(await watcher.next())
        finally:
            watcher.close()

    async def SetPolicy(self, request: scaler_pb2.SetPolicyRequest, context: grpc.aio.ServicerContext) -> Any:
        principal = principal_of(context, self._secret)

        # Scaler.set_policy checks the principal before it reads the policy: a refused change
        # learns nothing about which services or values are valid.
        effective = await _guard(
            context, lambda: self._scaler.set_policy(principal, lambda: policy_from_proto(request.policy))
        )
        return scaler_pb2.SetPolicyResponse(policy=policy_to_proto(effective))

    async def GetPolicy(self, request: scaler_pb2.GetPolicyRequest, context: grpc.aio.ServicerContext) -> Any:
        policy = await _guard(context, lambda: self._scaler.get_policy(request.service))
        return scaler_pb2.GetPolicyResponse(policy=policy_to_proto(policy))


async def _guard(context: grpc.aio.ServicerContext, call: Callable[[], T]) -> T:
    """Run a domain call, turning its errors into precise statuses."""
    try:
        return call()
    except InvalidArgument as exc:
        await _abort_bad_request(context, exc.field, exc.description)
    except PermissionDenied as exc:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    except NotFound as exc:
        await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    except TableFull as exc:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    except BackendUnavailable as exc:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except KubernetesApiError as exc:  # the cluster's own refusal: a 403 is PERMISSION_DENIED, ...
        await context.abort(getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNAVAILABLE), str(exc))
    except BackendError as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    raise AssertionError("unreachable: abort raises")


async def _abort_bad_request(
    context: grpc.aio.ServicerContext, field_name: str, description: str
) -> NoReturn:
    await abort_invalid_argument(context, field_name, description, message=f"{field_name}: {description}")


# --- start-up -------------------------------------------------------------------------------------
@dataclass
class ScalerRunningServer(RunningServer):
    scaler: Scaler | None = None
    #: The shard map store the rebalancer publishes to (closed after the scaler, which closes
    #: the rebalancer and its mover).
    shard_map_store: ShardMapStore | None = None

    async def stop(self, grace_s: float) -> None:
        await super().stop(grace_s)
        if self.scaler is not None:
            await self.scaler.close()
        if self.shard_map_store is not None:
            await self.shard_map_store.close()


def default_backends(config: ScalerConfig, security: SuiteSecurity) -> dict[str, Backend]:
    return {
        LOCAL_PROCESS: LocalProcessBackend(
            default_local_env(),
            config.state_path(),
            startup_timeout_s=config.startup_timeout_s,
            stop_grace_s=config.stop_grace_s,
            health_tls=suite_client_tls("scaler"),
        ),
        DOCKER_COMPOSE: ComposeBackend(config.compose_path(), config.compose_project),
        # Kubernetes only where it is the default: elsewhere no cluster is configured.
        **({KUBERNETES: kubernetes_backend(config)} if config.default_backend == KUBERNETES else {}),
    }


async def default_rebalancer(
    config: ScalerConfig, security: SuiteSecurity, backend: LocalProcessBackend
) -> tuple[MoverRebalancer, ShardMapStore]:
    """The rebalancer over the suite's shard map store (found as the shards find it), started:
    the moves a previous scaler left unfinished are finished before this returns."""
    env = dict(os.environ)
    store = shard_map_store(env)
    try:
        await store.start()
    except BaseException:
        await store.close()
        raise
    execution = load_execution_config(env)
    rebalancer = MoverRebalancer(
        store,
        SymbolMover(store, security.credentials),
        LocalShardLauncher(backend, env, store),
        reference_symbols(execution.reference_url(), execution.reference_table),
        retire_grace_s=config.rebalance_retire_grace_ms / 1000,
    )
    try:
        await rebalancer.start()
    except BaseException:
        await rebalancer.close()
        await store.close()
        raise
    return rebalancer, store


async def start(
    config: ScalerConfig,
    security: SuiteSecurity | None = None,
    *,
    backends: dict[str, Backend] | None = None,
    loops: bool = True,
    rebalancer: ShardRebalancer | None = None,
) -> ScalerRunningServer:
    """Build the scaler from ``config``, start serving and (with ``loops``) deciding. With the
    default back ends and ``config.rebalance_shards``, execution scales through a
    :class:`MoverRebalancer` on local shard processes unless ``rebalancer`` is given."""
    if security is None:
        security = load_suite_security("scaler")
    store: ShardMapStore | None = None
    if backends is None:
        backends = default_backends(config, security)
        local = backends.get(LOCAL_PROCESS)
        if rebalancer is None and config.rebalance_shards and isinstance(local, LocalProcessBackend):
            try:
                rebalancer, store = await default_rebalancer(config, security, local)
            except (ShardMapUnavailable, SQLAlchemyError, OSError) as exc:
                # The stateless services still scale; execution's decisions are recorded only.
                log.error("no shard rebalancing: the shard map store cannot be used: %s", exc)
    scaler = Scaler(config, backends, rebalancer=rebalancer)
    if config.optimiser_enabled:
        scaler.attach_optimiser(build_optimiser(config, scaler.registry, security.credentials))
    for policy in parse_policies(config.policies):
        scaler.set_policy("admin", policy)
    servicer = ScalerServicer(scaler, security.secret)
    binding = ServiceBinding(
        SERVICE_NAME, lambda server: scaler_pb2_grpc.add_ScalerServiceServicer_to_server(servicer, server)
    )
    running = await create_server(
        config.address, [binding], tls=security.server_tls, auth=security.interceptor()
    )
    await scaler.start(loops=loops)
    return ScalerRunningServer(
        server=running.server,
        port=running.port,
        health=running.health,
        service_names=running.service_names,
        scaler=scaler,
        shard_map_store=store,
    )
