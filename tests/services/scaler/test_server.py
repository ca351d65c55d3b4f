"""The scaler over the wire: the control plane's refusals, the RPCs, decisions carried out by a back end.

A recording back end stands in for processes here (test_local_backend.py starts real ones).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hftgate.security import API_KEY_METADATA, SERVICE_TOKEN_METADATA, load_suite_secret, load_suite_security
from hftgate.v1 import scaler_pb2 as pb
from hftgate.v1 import scaler_pb2_grpc
from services.scaler.backends import Backend, BackendError, Started
from services.scaler.config import ScalerConfig
from services.scaler.decisions import Metric, Policy
from services.scaler.server import ScalerRunningServer, start

Metadata = tuple[tuple[str, str], ...]


def token(principal: str) -> Metadata:
    return ((SERVICE_TOKEN_METADATA, load_suite_secret().token_for(principal)),)


class RecordingBackend(Backend):
    name = "local_process"

    def __init__(self) -> None:
        self.started: list[tuple[str, str, int]] = []
        self.stopped: list[tuple[str, str, int]] = []
        self.fail_next = False

    async def start(self, service: str, replica_id: str, target_count: int) -> Started:
        if self.fail_next:
            self.fail_next = False
            raise BackendError(f"{service} replica {replica_id} did not report SERVING in time")
        self.started.append((service, replica_id, target_count))
        return Started(address=f"127.0.0.1:{60000 + len(self.started)}", handle=f"pid-{len(self.started)}")

    async def stop(self, service: str, replica_id: str, handle: str, target_count: int) -> None:
        self.stopped.append((service, replica_id, target_count))


class World:
    def __init__(self, running: ScalerRunningServer, channel: grpc.aio.Channel, backend: RecordingBackend):
        self.running = running
        self.stub = scaler_pb2_grpc.ScalerServiceStub(channel)
        self.backend = backend
        assert running.scaler is not None
        self.scaler = running.scaler

    async def report(
        self, principal: str, replica_id: str, inflight: int, service: str = "marketdata"
    ) -> Any:
        metrics = pb.ReplicaMetrics(
            service=service, replica_id=replica_id, inflight_requests=inflight, interval_ms=1_000
        )
        return await self.stub.ReportMetrics(
            pb.ReportMetricsRequest(metrics=metrics), metadata=token(principal)
        )


@pytest.fixture
async def world(tmp_path: Any) -> AsyncIterator[World]:
    backend = RecordingBackend()
    config = ScalerConfig(
        port=0,
        state_dir=str(tmp_path),
        policies=("marketdata:inflight_requests:100:1:10",),
        max_replicas_per_service=5,
        drain_ms=10,
    )
    running = await start(
        config, load_suite_security("scaler"), backends={"local_process": backend}, loops=False
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    try:
        yield World(running, channel, backend)
    finally:
        await channel.close()
        await running.stop(0.5)


async def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value.code()


def bad_request_field(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    return detail.field_violations[0].field


# --- who may call -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "metadata",
    [
        (),
        ((API_KEY_METADATA, "hftgate-demo-alice"),),
        ((SERVICE_TOKEN_METADATA, "marketdata." + "0" * 64),),
        ((SERVICE_TOKEN_METADATA, "admin.forged"),),
    ],
    ids=["none", "api-key", "forged-mac", "garbage"],
)
async def test_every_rpc_refuses_callers_without_a_service_token(world: World, metadata: Metadata) -> None:
    metrics = pb.ReplicaMetrics(service="marketdata", replica_id="x", inflight_requests=999, interval_ms=1)
    policy = pb.ScalingPolicy(
        service="marketdata", min_replicas=1, max_replicas=1, metric=1, target_value=1.0
    )
    calls = [
        world.stub.ReportMetrics(pb.ReportMetricsRequest(metrics=metrics), metadata=metadata),
        world.stub.SetPolicy(pb.SetPolicyRequest(policy=policy), metadata=metadata),
        world.stub.GetPolicy(pb.GetPolicyRequest(service="marketdata"), metadata=metadata),
        world.stub.GetDecisions(pb.GetDecisionsRequest(), metadata=metadata),
        world.stub.ListReplicas(pb.ListReplicasRequest(), metadata=metadata),
    ]
    for call in calls:
        assert await code_of(call) == grpc.StatusCode.UNAUTHENTICATED
    stream = world.stub.WatchReplicas(pb.WatchReplicasRequest(), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stream.read()
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # Nothing changed.
    assert world.scaler.registry.all() == ()
    assert world.scaler.get_policy("marketdata").max_replicas == 10


@pytest.mark.parametrize("principal", ["execution", "cache", "gateway", "scaler", "feed", "admin"])
async def test_a_service_may_not_report_for_another(world: World, principal: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await world.report(principal, "marketdata-1", 10_000)
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "reports for itself only" in (raised.value.details() or "")
    assert world.scaler.registry.all() == ()


@pytest.mark.parametrize("principal", ["execution", "marketdata", "cache", "gateway", "scaler", "feed"])
async def test_only_admin_may_change_a_policy(world: World, principal: str) -> None:
    before = world.scaler.get_policy("marketdata")
    policy = pb.ScalingPolicy(
        service="marketdata", min_replicas=50, max_replicas=50, metric=1, target_value=0.001
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await world.stub.SetPolicy(pb.SetPolicyRequest(policy=policy), metadata=token(principal))
    assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert world.scaler.get_policy("marketdata") == before
    # Refused before the policy is read: a bad one gets the same answer, not INVALID_ARGUMENT.
    bad = pb.ScalingPolicy(service="nope")
    assert (
        await code_of(world.stub.SetPolicy(pb.SetPolicyRequest(policy=bad), metadata=token(principal)))
        == grpc.StatusCode.PERMISSION_DENIED
    )


# --- the RPCs ---------------------------------------------------------------------------------------
async def test_report_adds_the_replica_and_answers_the_interval(world: World) -> None:
    reply = await world.report("marketdata", "md-a", 42)
    assert reply.drain is False
    assert reply.report_interval_ms == 1_000
    listed = await world.stub.ListReplicas(
        pb.ListReplicasRequest(service="marketdata"), metadata=token("gateway")
    )
    assert [(r.replica_id, r.state) for r in listed.replicas] == [("md-a", pb.REPLICA_STATE_READY)]
    assert listed.replicas[0].last_metrics.inflight_requests == 42
    assert listed.replicas[0].backend == pb.SCALING_BACKEND_UNSPECIFIED


async def test_a_reported_address_makes_a_replica_routable(world: World) -> None:
    """A replica the scaler did not start (hftgate up's own) says where it serves."""
    metrics = pb.ReplicaMetrics(
        service="marketdata",
        replica_id="md-b",
        interval_ms=1_000,
        address="127.0.0.1:50052",
        memory_bytes=1 << 20,
    )
    await world.stub.ReportMetrics(pb.ReportMetricsRequest(metrics=metrics), metadata=token("marketdata"))
    listed = await world.stub.ListReplicas(
        pb.ListReplicasRequest(service="marketdata"), metadata=token("gateway")
    )
    (replica,) = [r for r in listed.replicas if r.replica_id == "md-b"]
    assert replica.address == "127.0.0.1:50052" and replica.last_metrics.memory_bytes == 1 << 20


@pytest.mark.parametrize(
    ("metrics", "field"),
    [
        (pb.ReplicaMetrics(service="marketdata", interval_ms=1), "metrics.replica_id"),
        (pb.ReplicaMetrics(service="marketdata", replica_id="a" * 129, interval_ms=1), "metrics.replica_id"),
        (pb.ReplicaMetrics(service="marketdata", replica_id="a\n", interval_ms=1), "metrics.replica_id"),
        (
            pb.ReplicaMetrics(service="marketdata", replica_id="a", cpu_cores=float("nan"), interval_ms=1),
            "metrics.cpu_cores",
        ),
        (
            pb.ReplicaMetrics(service="marketdata", replica_id="a", inflight_requests=-1, interval_ms=1),
            "metrics.inflight_requests",
        ),
        (pb.ReplicaMetrics(service="marketdata", replica_id="a"), "metrics.interval_ms"),
        (
            pb.ReplicaMetrics(service="marketdata", replica_id="a", interval_ms=1, address="no-port"),
            "metrics.address",
        ),
        (
            pb.ReplicaMetrics(service="marketdata", replica_id="a", interval_ms=1, address="h:1\n"),
            "metrics.address",
        ),
        (
            pb.ReplicaMetrics(service="marketdata", replica_id="a", interval_ms=1, memory_bytes=-1),
            "metrics.memory_bytes",
        ),
    ],
)
async def test_malformed_reports_name_the_field(world: World, metrics: pb.ReplicaMetrics, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await world.stub.ReportMetrics(pb.ReportMetricsRequest(metrics=metrics), metadata=token("marketdata"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_field(raised.value) == field
    assert world.scaler.registry.all() == ()


async def test_report_for_a_service_without_policy_is_not_found(world: World) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await world.report("cache", "c-1", 1, service="cache")
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no scaling policy for 'cache'" in (raised.value.details() or "")


async def test_replica_table_is_bounded(world: World) -> None:
    for index in range(5):
        await world.report("marketdata", f"md-{index}", 1)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await world.report("marketdata", "md-5", 1)
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(world.scaler.registry.all()) == 5
    await world.report("marketdata", "md-0", 2)  # a known replica still reports


async def test_set_policy_fills_defaults_and_get_policy_returns_it(world: World) -> None:
    policy = pb.ScalingPolicy(
        service="cache", min_replicas=2, metric=pb.SCALING_METRIC_ORDERS_PER_S, target_value=500.0
    )
    reply = await world.stub.SetPolicy(pb.SetPolicyRequest(policy=policy), metadata=token("admin"))
    effective = reply.policy
    assert (effective.min_replicas, effective.max_replicas) == (2, 4)
    assert effective.tolerance == pytest.approx(0.1)
    assert effective.panic_threshold == pytest.approx(2.0)
    assert effective.evaluation_interval_ms == 15_000
    assert effective.backend == pb.SCALING_BACKEND_LOCAL_PROCESS
    assert effective.scale_up_limit_replicas == 4 and effective.scale_up_limit_period_ms == 15_000
    got = await world.stub.GetPolicy(pb.GetPolicyRequest(service="cache"), metadata=token("gateway"))
    assert got.policy == effective


@pytest.mark.parametrize(
    ("policy", "code", "field"),
    [
        (
            pb.ScalingPolicy(service="cache", metric=1, target_value=1, min_replicas=3, max_replicas=2),
            grpc.StatusCode.INVALID_ARGUMENT,
            "policy.max_replicas",
        ),
        (
            pb.ScalingPolicy(service="cache", target_value=1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "policy.metric",
        ),
        (
            pb.ScalingPolicy(service="cache", metric=1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "policy.target_value",
        ),
        (
            pb.ScalingPolicy(service="cache", metric=1, target_value=1, tolerance=1.5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "policy.tolerance",
        ),
        (
            pb.ScalingPolicy(
                service="cache", metric=1, target_value=1, backend=pb.SCALING_BACKEND_KUBERNETES
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "policy.backend",
        ),
        (
            pb.ScalingPolicy(service="", metric=1, target_value=1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "policy.service",
        ),
        (pb.ScalingPolicy(service="feed", metric=1, target_value=1), grpc.StatusCode.NOT_FOUND, ""),
    ],
)
async def test_bad_policies_are_refused_precisely(
    world: World, policy: pb.ScalingPolicy, code: grpc.StatusCode, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await world.stub.SetPolicy(pb.SetPolicyRequest(policy=policy), metadata=token("admin"))
    assert raised.value.code() == code
    if field:
        assert bad_request_field(raised.value) == field
    assert "cache" not in world.scaler.policies


async def test_get_policy_of_unknown_service_is_not_found(world: World) -> None:
    assert (
        await code_of(world.stub.GetPolicy(pb.GetPolicyRequest(service="cache"), metadata=token("admin")))
        == grpc.StatusCode.NOT_FOUND
    )


# --- decisions carried out ----------------------------------------------------------------------------
async def test_overload_scales_up_through_the_backend_and_is_recorded(world: World) -> None:
    watch = world.stub.WatchReplicas(pb.WatchReplicasRequest(service="marketdata"), metadata=token("gateway"))
    first = await watch.read()
    assert first.change == pb.REPLICA_CHANGE_SNAPSHOT and list(first.replicas) == []
    await world.report("marketdata", "md-a", 450)  # 4.5x the target on one replica: panic
    added = await watch.read()
    assert added.change == pb.REPLICA_CHANGE_ADDED and added.replica.replica_id == "md-a"

    record = await world.scaler.evaluate("marketdata")
    assert record.applied and record.decision.desired_replicas == 5
    assert [s[2] for s in world.backend.started] == [2, 3, 4, 5]
    decisions = await world.stub.GetDecisions(
        pb.GetDecisionsRequest(service="marketdata"), metadata=token("admin")
    )
    [decision] = decisions.decisions
    assert decision.action == pb.SCALING_ACTION_SCALE_UP
    assert (decision.current_replicas, decision.desired_replicas) == (1, 5)
    assert decision.panic and decision.applied
    assert decision.observed_value == pytest.approx(450)
    assert [(i.replica_id, i.ready, i.value) for i in decision.inputs] == [("md-a", True, 450.0)]
    assert "ceil(1 * 450 / 100) = 5" in decision.reason
    listed = await world.stub.ListReplicas(pb.ListReplicasRequest(), metadata=token("gateway"))
    assert sum(r.state == pb.REPLICA_STATE_READY for r in listed.replicas) == 5
    # The watcher saw each new replica added (STARTING) and then READY with its address.
    seen: list[tuple[int, int]] = []
    for _ in range(8):
        message = await asyncio.wait_for(watch.read(), 2)
        seen.append((message.change, message.replica.state))
    assert seen.count((pb.REPLICA_CHANGE_ADDED, pb.REPLICA_STATE_STARTING)) == 4
    assert seen.count((pb.REPLICA_CHANGE_STATE_CHANGED, pb.REPLICA_STATE_READY)) == 4
    watch.cancel()


async def test_a_failed_start_is_recorded_not_applied(world: World) -> None:
    await world.report("marketdata", "md-a", 150)
    world.backend.fail_next = True
    record = await world.scaler.evaluate("marketdata")
    assert record.decision.desired_replicas == 2
    assert not record.applied
    assert "did not report SERVING" in record.error
    assert [r.replica_id for r in world.scaler.registry.all()] == ["md-a"]


async def test_scale_down_drains_then_stops(world: World) -> None:
    world.scaler.set_policy(
        "admin",
        Policy(
            service="marketdata",
            target_value=100.0,
            max_replicas=10,
            scale_down_stabilization_ms=0,
            panic_threshold=0.0,  # a panic would hold scale-down for a minute
        ),
    )
    await world.report("marketdata", "md-a", 300)
    await world.scaler.evaluate("marketdata")  # -> 3
    started = [s[1] for s in world.backend.started]
    assert len(started) == 2
    for replica_id in ["md-a", *started]:
        await world.report("marketdata", replica_id, 10)
    record = await world.scaler.evaluate("marketdata")
    assert record.decision.desired_replicas == 1
    states = {r.replica_id: r.state.value for r in world.scaler.registry.all()}
    assert sorted(states.values()) == ["draining", "draining", "ready"]
    # A draining replica is told so when it reports.
    draining = [rid for rid, state in states.items() if state == "draining"]
    assert (await world.report("marketdata", draining[0], 10)).drain is True
    for _ in range(100):
        if len(world.backend.stopped) == 2:
            break
        await asyncio.sleep(0.01)
    assert sorted(s[1] for s in world.backend.stopped) == sorted(draining)
    assert [r.replica_id for r in world.scaler.registry.all()] == ["md-a"]


# --- replicas already running, sharded services, optimiser trials ---------------------------------------
async def test_replicas_already_running_are_counted_not_started_again(world: World) -> None:
    """hftgate up starts the services before the scaler: their reports make the current count."""
    world.scaler.set_policy(
        "admin", Policy(service="cache", min_replicas=2, max_replicas=4, target_value=100)
    )
    record = await world.scaler.evaluate("cache")  # nothing reported yet
    assert record.decision.action.value == "hold" and world.backend.started == []
    await world.report("cache", "cache-started-by-hftgate-up", 50, service="cache")
    record = await world.scaler.evaluate("cache")
    assert record.decision.current_replicas == 1 and world.backend.started == []
    assert "waits" in record.decision.reason


class FakeRebalancer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    async def rebalance(self, service: str, current_shards: int, desired_shards: int) -> int:
        self.calls.append((service, current_shards, desired_shards))
        return desired_shards


async def test_execution_is_sharded_and_without_a_mover_decisions_are_recorded_only(world: World) -> None:
    world.scaler.set_policy(
        "admin",
        Policy(
            service="execution",
            target_value=100.0,
            max_replicas=4,
            scale_down_stabilization_ms=0,
            panic_threshold=0.0,
        ),
    )
    reply = await world.stub.GetPolicy(pb.GetPolicyRequest(service="execution"), metadata=token("admin"))
    assert reply.policy.kind == pb.SCALING_KIND_SHARDED
    await world.report("execution", "shard-0", 300, service="execution")
    record = await world.scaler.evaluate("execution")
    assert record.decision.desired_replicas == 3
    assert record.recorded_only and not record.applied and record.error == ""
    assert "would move symbols to add 2 shard(s) (1 -> 3)" in record.decision.reason
    assert world.backend.started == []  # no shard-0 twin started
    # Light load on two shards: the scale-down is recorded, and no shard is drained.
    await world.report("execution", "shard-1", 1, service="execution")
    await world.report("execution", "shard-0", 1, service="execution")
    record = await world.scaler.evaluate("execution")
    assert record.decision.desired_replicas == 1 and record.recorded_only
    assert {r.state.value for r in world.scaler.registry.all("execution")} == {"ready"}
    assert (await world.report("execution", "shard-1", 1, service="execution")).drain is False
    [latest, *_] = (
        await world.stub.GetDecisions(pb.GetDecisionsRequest(service="execution"), metadata=token("admin"))
    ).decisions
    assert latest.recorded_only and not latest.applied
    # With a mover wired in, it carries the change out.
    mover = FakeRebalancer()
    world.scaler.rebalancer = mover
    await world.report("execution", "shard-0", 1, service="execution")
    record = await world.scaler.evaluate("execution")
    assert mover.calls == [("execution", 2, 1)]
    assert record.applied and not record.recorded_only
    assert world.backend.stopped == []


async def test_a_kind_that_does_not_fit_the_service_is_refused(world: World) -> None:
    policy = pb.ScalingPolicy(
        service="execution",
        metric=pb.SCALING_METRIC_INFLIGHT_REQUESTS,
        target_value=10,
        kind=pb.SCALING_KIND_STATELESS,
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await world.stub.SetPolicy(pb.SetPolicyRequest(policy=policy), metadata=token("admin"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_field(raised.value) == "policy.kind"
    assert "scale by moving them" in (raised.value.details() or "")


async def test_optimiser_trials_are_served_with_the_decisions(world: World) -> None:
    from services.scaler.optimiser import Optimiser, OptimiserSettings, near_cache_knob

    from .test_optimiser import SimulatedSuite

    suite = SimulatedSuite(noise=0.002)
    optimiser = Optimiser(
        [near_cache_knob(0.95, settle_ms=0)],
        suite,
        suite,
        OptimiserSettings(window_ms=2_000, sample_interval_ms=200),
        clock=suite.clock,
        sleep=suite.sleep,
        on_trial=world.scaler.record_trial,
    )
    await world.report("marketdata", "md-a", 100)
    await world.scaler.evaluate("marketdata")
    assert await optimiser.step() is not None
    reply = await world.stub.GetDecisions(pb.GetDecisionsRequest(), metadata=token("admin"))
    tune, scaling = reply.decisions
    assert tune.decision_id > scaling.decision_id  # one sequence, newest first
    assert tune.action == pb.SCALING_ACTION_TUNE and tune.service == "cache"
    assert tune.applied and tune.trial.kept and tune.trial.has_measured
    assert (tune.trial.setting, tune.trial.from_value, tune.trial.to_value) == ("l1_max_entries", 1024, 2048)
    assert tune.trial.objective_metric == "near_cache_hit_ratio" and tune.trial.higher_is_better
    assert tune.trial.measured_mean > tune.trial.baseline_mean
    assert "kept" in tune.reason
    only_cache = await world.stub.GetDecisions(
        pb.GetDecisionsRequest(service="cache"), metadata=token("admin")
    )
    assert [d.action for d in only_cache.decisions] == [pb.SCALING_ACTION_TUNE]


async def test_a_warm_replica_is_claimed_at_once_by_a_scale_up_and_replaced(tmp_path: Any) -> None:
    from services.scaler.app import Scaler
    from services.scaler.registry import ReplicaState

    backend = RecordingBackend()
    scaler = Scaler(
        ScalerConfig(port=0, state_dir=str(tmp_path), warm_replicas=1, discovery_ms=0),
        {"local_process": backend},
    )
    try:
        scaler.set_policy("admin", Policy(service="marketdata", target_value=100.0, max_replicas=3))
        await scaler.check_replicas()
        for _ in range(100):
            if backend.started:
                break
            await asyncio.sleep(0.01)
        [warm] = scaler.registry.all("marketdata")
        assert warm.state is ReplicaState.STANDBY and warm.address
        # Held in reserve: not counted, never a decision's input, and it may report.
        await asyncio.sleep(0)
        scaler.report("marketdata", _report("md-a", 250))
        scaler.report("marketdata", _report(warm.replica_id, 0))
        assert [
            load.replica_id for load in scaler.registry.loads("marketdata", Metric.INFLIGHT_REQUESTS, 5_000)
        ] == ["md-a"]
        record = await scaler.evaluate("marketdata")  # 2.5x: panic, to 3
        assert record.applied and record.decision.desired_replicas == 3
        states = {r.replica_id: r.state for r in scaler.registry.all("marketdata")}
        assert states[warm.replica_id] is ReplicaState.READY  # claimed, not started
        assert len(backend.started) == 2  # the warm one, then one cold start
        await scaler.check_replicas()  # the monitor starts the next warm replica
        for _ in range(100):
            if len(backend.started) == 3:
                break
            await asyncio.sleep(0.01)
        standby = [r for r in scaler.registry.all("marketdata") if r.state is ReplicaState.STANDBY]
        assert len(standby) == 1 and standby[0].replica_id != warm.replica_id
    finally:
        await scaler.close()


def _report(replica_id: str, inflight: int) -> Any:
    from services.scaler.registry import Report

    return Report(service="marketdata", replica_id=replica_id, inflight_requests=inflight)


async def test_a_slow_start_does_not_let_the_next_evaluation_scale_straight_back_down(tmp_path: Any) -> None:
    """Nothing is evaluated while replicas start; the windows count from when the start finished."""
    from services.scaler.app import Scaler

    clock = {"now": 1_700_000_000 * 1_000_000_000}

    class SlowBackend(RecordingBackend):
        async def start(self, service: str, replica_id: str, target_count: int) -> Started:
            clock["now"] += 10_000 * 1_000_000  # ten seconds to start
            return await super().start(service, replica_id, target_count)

    backend = SlowBackend()
    scaler = Scaler(
        ScalerConfig(port=0, state_dir=str(tmp_path), discovery_ms=0),
        {"local_process": backend},
        clock=lambda: clock["now"],
    )
    try:
        scaler.set_policy(
            "admin",
            Policy(
                service="marketdata",
                target_value=100.0,
                max_replicas=3,
                scale_down_stabilization_ms=6_000,
                panic_hold_ms=6_000,
            ),
        )
        scaler.report("marketdata", _report("md-a", 450))
        record = await scaler.evaluate("marketdata")  # panic: to 3, which takes 20 s
        assert record.decision.desired_replicas == 3 and len(backend.started) == 2
        for replica in scaler.registry.all("marketdata"):
            scaler.report("marketdata", _report(replica.replica_id, 5))
        clock["now"] += 500 * 1_000_000
        record = await scaler.evaluate("marketdata")
        assert record.decision.action.value == "hold" and record.decision.desired_replicas == 3
        clock["now"] += 6_000 * 1_000_000  # the window has passed: now it may come down
        for replica in scaler.registry.all("marketdata"):
            scaler.report("marketdata", _report(replica.replica_id, 5))
        record = await scaler.evaluate("marketdata")
        assert record.decision.action.value == "scale_down"
    finally:
        await scaler.close()
