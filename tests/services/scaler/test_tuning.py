"""The optimiser through the wire: TuningService on real gRPC servers, objectives from load reports."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from hftgate.grpcserver import RunningServer, ServiceBinding, create_server
from hftgate.security import load_suite_security
from hftgate.v1 import scaler_pb2 as pb
from hftgate.v1 import scaler_pb2_grpc
from services.scaler.app import Scaler, validate_report
from services.scaler.config import ScalerConfig
from services.scaler.optimiser import ActuatorError, Optimiser, OptimiserSettings, near_cache_knob
from services.scaler.registry import Registry, ReplicaState, Report
from services.scaler.tuning import GrpcActuator, ReportProbe


class FakeCacheTuning(scaler_pb2_grpc.TuningServiceServicer):
    """A cache replica's tuning hook: one setting, l1_max_entries, in [1024, 4194304]."""

    def __init__(self) -> None:
        self.l1_max_entries = 1_024.0
        self.sets: list[float] = []

    def _tunable(self) -> pb.Tunable:
        return pb.Tunable(
            name="l1_max_entries", value=self.l1_max_entries, min_value=1_024, max_value=4_194_304
        )

    async def GetTunable(self, request: pb.GetTunableRequest, context: grpc.aio.ServicerContext) -> Any:
        if request.name != "l1_max_entries":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no setting {request.name!r}")
        return pb.GetTunableResponse(tunable=self._tunable())

    async def SetTunable(self, request: pb.SetTunableRequest, context: grpc.aio.ServicerContext) -> Any:
        if not 1_024 <= request.value <= 4_194_304:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "value: out of range")
        self.l1_max_entries = round(request.value)
        self.sets.append(self.l1_max_entries)
        return pb.SetTunableResponse(tunable=self._tunable())

    def hit_ratio(self) -> float:
        return math.log(self.l1_max_entries + 1) / math.log(1_000_001)


async def serve(servicer: FakeCacheTuning | None) -> RunningServer:
    security = load_suite_security("cache")
    bindings = []
    if servicer is not None:
        bindings.append(
            ServiceBinding(
                "hftgate.v1.TuningService",
                lambda server: scaler_pb2_grpc.add_TuningServiceServicer_to_server(servicer, server),
            )
        )
    return await create_server("127.0.0.1:0", bindings, tls=security.server_tls, auth=security.interceptor())


@pytest.fixture
async def replicas() -> AsyncIterator[tuple[list[FakeCacheTuning], list[RunningServer]]]:
    hooks = [FakeCacheTuning(), FakeCacheTuning()]
    servers = [await serve(hook) for hook in hooks]
    try:
        yield hooks, servers
    finally:
        for server in servers:
            await server.stop(0)


def registry_with(servers: list[RunningServer]) -> Registry:
    registry = Registry(clock=_now)
    for index, server in enumerate(servers):
        registry.add("cache", f"cache-{index}", address=f"127.0.0.1:{server.port}", state=ReplicaState.READY)
    return registry


def _now() -> int:
    return time.time_ns()


async def test_the_actuator_changes_every_ready_replica_and_reads_one(
    replicas: tuple[list[FakeCacheTuning], list[RunningServer]],
) -> None:
    hooks, servers = replicas
    registry = registry_with(servers)
    actuator = GrpcActuator(registry, load_suite_security("scaler").credentials)
    knob = near_cache_knob()
    try:
        assert await actuator.read(knob) == 1_024.0
        await actuator.write(knob, 8_192.0)
        assert [hook.l1_max_entries for hook in hooks] == [8_192, 8_192]
        with pytest.raises(ActuatorError, match="INVALID_ARGUMENT"):
            await actuator.write(knob, 1.0)
    finally:
        await actuator.close()


async def test_a_service_without_the_hook_is_an_actuator_error_that_says_so() -> None:
    server = await serve(None)
    registry = registry_with([server])
    actuator = GrpcActuator(registry, load_suite_security("scaler").credentials)
    try:
        with pytest.raises(ActuatorError, match=r"does not serve hftgate\.v1\.TuningService"):
            await actuator.read(near_cache_knob())
        with pytest.raises(ActuatorError, match="no READY execution replica"):
            from services.scaler.optimiser import group_commit_knob

            await actuator.read(group_commit_knob())
    finally:
        await actuator.close()
        await server.stop(0)


def test_the_probe_reads_gauges_and_fields_once_per_report() -> None:
    registry = Registry(clock=_now)
    registry.add("cache", "cache-0", state=ReplicaState.READY)
    registry.add("cache", "cache-1", state=ReplicaState.STANDBY)
    probe = ReportProbe(registry)
    knob = near_cache_knob()
    assert asyncio.run(probe.sample(knob)) is None  # nothing reported yet
    registry.report(Report("cache", "cache-0", gauges={"near_cache_hit_ratio": 0.8}, p99_latency_ns=5))
    registry.report(Report("cache", "cache-1", gauges={"near_cache_hit_ratio": 0.1}))  # standby: not read
    assert asyncio.run(probe.sample(knob)) == pytest.approx(0.8)
    assert asyncio.run(probe.sample(knob)) is None  # the same report is not read twice
    assert Report("cache", "x", p99_latency_ns=7).figure("p99_latency_ns") == 7.0
    assert Report("cache", "x").figure("no_such_figure") is None


@pytest.mark.parametrize(
    "gauges",
    [{"x" * 65: 1.0}, {"": 1.0}, {"hit": float("nan")}, {f"g{i}": 1.0 for i in range(17)}],
    ids=["long-name", "empty-name", "nan", "too-many"],
)
def test_malformed_gauges_are_refused(gauges: dict[str, float]) -> None:
    from services.scaler.app import InvalidArgument

    with pytest.raises(InvalidArgument) as raised:
        validate_report(Report("cache", "c", gauges=gauges))
    assert raised.value.field == "metrics.gauges"


async def test_the_optimiser_tunes_real_replicas_from_their_reports(
    replicas: tuple[list[FakeCacheTuning], list[RunningServer]], tmp_path: Any
) -> None:
    """End to end on the wall clock with short windows: the replicas report their hit ratio as a
    gauge, the optimiser grows the near cache through TuningService and the scaler logs each trial."""
    hooks, servers = replicas
    scaler = Scaler(ScalerConfig(port=0, state_dir=str(tmp_path)), {})
    for index, server in enumerate(servers):
        scaler.registry.add(
            "cache", f"cache-{index}", address=f"127.0.0.1:{server.port}", state=ReplicaState.READY
        )
    optimiser = Optimiser(
        [near_cache_knob(0.7, settle_ms=0)],
        GrpcActuator(scaler.registry, load_suite_security("scaler").credentials),
        ReportProbe(scaler.registry),
        OptimiserSettings(window_ms=300, sample_interval_ms=50, pause_ms=0),
    )
    scaler.attach_optimiser(optimiser)

    async def report_forever() -> None:
        while True:
            for index, hook in enumerate(hooks):
                scaler.registry.report(
                    Report("cache", f"cache-{index}", gauges={"near_cache_hit_ratio": hook.hit_ratio()})
                )
            await asyncio.sleep(0.02)

    reporter = asyncio.get_running_loop().create_task(report_forever())
    try:
        for _ in range(6):
            await optimiser.step()
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        await scaler.close()
    # ln(c) / ln(1e6) >= 0.7 first at 2**14 entries: four kept trials from 2**10.
    assert [hook.l1_max_entries for hook in hooks] == [2**14, 2**14]
    kept = [record.trial for record in scaler.trials if record.trial.kept]
    assert [t.to_value for t in kept] == [2.0**11, 2.0**12, 2.0**13, 2.0**14]
    assert [r.decision_id for r in scaler.get_log()] == sorted(
        (r.decision_id for r in scaler.trials), reverse=True
    )


async def test_a_service_reports_its_gauges_for_the_probe(tmp_path: Any) -> None:
    from hftgate.loadreport import LoadReporter, ServiceFigures
    from services.scaler.server import start

    config = ScalerConfig(port=0, state_dir=str(tmp_path), policies=("cache:inflight_requests:100:1:2",))
    running = await start(
        config, load_suite_security("scaler"), backends={"local_process": _NoBackend()}, loops=False
    )
    reporter = LoadReporter(
        "cache",
        f"127.0.0.1:{running.port}",
        load_suite_security("cache").credentials,
        replica_id="cache-a",
        figures=lambda: ServiceFigures(gauges={"near_cache_hit_ratio": 0.93}),
        report_interval_s=0.1,
    )
    reporter.start()
    try:
        assert running.scaler is not None
        registry = running.scaler.registry
        for _ in range(200):
            if registry.get("cache", "cache-a") is not None:
                break
            await asyncio.sleep(0.01)
        probe = ReportProbe(registry)
        assert await probe.sample(near_cache_knob()) == pytest.approx(0.93)
    finally:
        await reporter.close()
        await running.stop(0.2)


class _NoBackend:
    name = "local_process"

    async def start(self, service: str, replica_id: str, target_count: int) -> Any:
        raise AssertionError("no replica is started in this test")

    async def stop(self, service: str, replica_id: str, handle: str, target_count: int) -> None:
        return None

    def exited(self) -> list[tuple[str, str, str]]:
        return []

    async def close(self) -> None:
        return None


def test_trials_are_counted_for_prometheus(tmp_path: Any) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from services.scaler.metrics import register
    from services.scaler.optimiser import Measurement, Purpose, Trial

    scaler = Scaler(ScalerConfig(port=0, state_dir=str(tmp_path)), {})
    knob = near_cache_knob()
    for kept in (True, True, False):
        scaler.record_trial(
            Trial(
                service="cache",
                setting=knob.setting,
                purpose=Purpose.IMPROVE,
                from_value=1_024.0,
                to_value=2_048.0,
                objective=knob.objective,
                baseline=Measurement(0.5, 0.01, 10),
                measured=Measurement(0.6, 0.01, 10),
                kept=kept,
                reason="test",
                started_ns=1,
                decided_ns=2,
                window_ms=10_000,
            )
        )
    registry = CollectorRegistry()
    register(scaler, registry)
    text = generate_latest(registry).decode()
    assert 'hftgate_scaler_optimiser_trials{kept="true",service="cache",setting="l1_max_entries"} 2.0' in text
    assert (
        'hftgate_scaler_optimiser_trials{kept="false",service="cache",setting="l1_max_entries"} 1.0' in text
    )
