"""The load reporter against a real in-process scaler: its figures arrive, drain is obeyed, a scaler
that is down or refuses never disturbs the service."""

from __future__ import annotations

import asyncio
import logging
import math
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, Histogram

from hftgate.loadreport import (
    LoadReporter,
    RpcTotals,
    ServiceFigures,
    default_replica_id,
    is_streaming,
    quantile_seconds,
    rpc_totals,
)
from hftgate.security import SERVICE_TOKEN_METADATA, load_suite_secret, load_suite_security
from hftgate.v1 import scaler_pb2 as pb
from hftgate.v1 import scaler_pb2_grpc
from services.scaler.backends import Backend, Started
from services.scaler.config import ScalerConfig
from services.scaler.registry import ReplicaState
from services.scaler.server import ScalerRunningServer, start


class NoBackend(Backend):
    name = "local_process"

    async def start(self, service: str, replica_id: str, target_count: int) -> Started:
        raise AssertionError("these tests start nothing")

    async def stop(self, service: str, replica_id: str, handle: str, target_count: int) -> None:
        raise AssertionError("these tests stop nothing")


@pytest.fixture
async def scaler(tmp_path: Any) -> AsyncIterator[ScalerRunningServer]:
    config = ScalerConfig(
        port=0,
        state_dir=str(tmp_path),
        policies=("marketdata:inflight_requests:100:1:4", "execution:orders_per_s:1000:1:4"),
        report_interval_ms=100,
    )
    running = await start(
        config, load_suite_security("scaler"), backends={"local_process": NoBackend()}, loops=False
    )
    try:
        yield running
    finally:
        await running.stop(0.2)


def admin_stub(port: int) -> tuple[grpc.aio.Channel, scaler_pb2_grpc.ScalerServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return channel, scaler_pb2_grpc.ScalerServiceStub(channel)


def admin() -> tuple[tuple[str, str], ...]:
    return ((SERVICE_TOKEN_METADATA, load_suite_secret().token_for("admin")),)


class FakeRpc:
    """Cumulative unary totals that a test advances."""

    def __init__(self) -> None:
        self.totals = RpcTotals()

    def add(self, calls: int, seconds_each: float) -> None:
        bounds = (0.001, 0.01, 0.1, math.inf)
        buckets = dict(self.totals.buckets) or dict.fromkeys(bounds, 0.0)
        for bound in bounds:
            if seconds_each <= bound:
                buckets[bound] += calls
        self.totals = RpcTotals(
            self.totals.count + calls,
            self.totals.seconds + calls * seconds_each,
            tuple(sorted(buckets.items())),
        )

    def __call__(self) -> RpcTotals:
        return self.totals


async def wait_for(predicate: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_reports_reach_list_replicas_with_their_figures(scaler: ScalerRunningServer) -> None:
    rpc = FakeRpc()
    orders = {"total": 0}
    reporter = LoadReporter(
        "execution",
        f"127.0.0.1:{scaler.port}",
        load_suite_security("execution").credentials,
        address="127.0.0.1:50051",
        replica_id="exec-a",
        figures=lambda: ServiceFigures(orders_total=orders["total"], queue_depth=7),
        report_interval_s=0.1,
        rpc_source=rpc,
    )
    # One report made here rather than by the reporter's loop, so that the scaler lists the very
    # sample read below (with the loop, under load, a second sample could replace last_sample
    # before the listing was compared with it).
    reporter.sample()  # the interval starts now, as the loop's does
    try:
        await asyncio.sleep(0.05)
        rpc.add(200, 0.005)
        orders["total"] += 500
        await reporter.report_once()
        channel, stub = admin_stub(scaler.port)
        async with channel:
            listed = await stub.ListReplicas(pb.ListReplicasRequest(service="execution"), metadata=admin())
        [replica] = listed.replicas
        assert replica.replica_id == "exec-a"
        assert replica.state == pb.REPLICA_STATE_READY
        first = reporter.last_sample
        assert first is not None
        # The first report covered the 500 orders and the 200 calls of ~5 ms each.
        metrics = replica.last_metrics
        assert metrics.service == "execution"
        assert metrics.queue_depth == 7
        assert metrics.interval_ms > 0
        assert metrics.orders_per_s == pytest.approx(500 / first.interval_s, rel=0.01)
        assert first.requests_per_s == pytest.approx(200 / first.interval_s, rel=0.01)
        assert first.inflight_requests == round(200 * 0.005 / first.interval_s)
        assert 1_000_000 < metrics.p99_latency_ns <= 10_000_000  # in the (1 ms, 10 ms] bucket
        assert metrics.cpu_cores >= 0
        assert first.memory_bytes > 10_000_000  # a Python process's resident memory
    finally:
        await reporter.close()
    assert not reporter.running


async def test_reports_as_its_own_principal_and_a_forged_one_is_refused(scaler: ScalerRunningServer) -> None:
    forged = LoadReporter(
        "marketdata",
        f"127.0.0.1:{scaler.port}",
        load_suite_security("cache").credentials,  # the cache's token reporting for market data
        replica_id="md-forged",
        rpc_source=FakeRpc(),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await forged.report_once()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not report metrics for 'marketdata'" in (refused.value.details() or "")
    await forged.close()
    assert scaler.scaler is not None
    assert scaler.scaler.registry.all("marketdata") == ()

    own = LoadReporter(
        "marketdata",
        f"127.0.0.1:{scaler.port}",
        load_suite_security("marketdata").credentials,
        replica_id="md-1",
        rpc_source=FakeRpc(),
    )
    reply = await own.report_once()
    await own.close()
    assert reply.report_interval_ms == 100
    assert [r.replica_id for r in scaler.scaler.registry.all("marketdata")] == ["md-1"]


async def test_drain_in_a_reply_calls_the_callback_once(scaler: ScalerRunningServer) -> None:
    drained: list[str] = []

    async def on_drain() -> None:
        drained.append("drain")

    rpc = FakeRpc()
    reporter = LoadReporter(
        "marketdata",
        f"127.0.0.1:{scaler.port}",
        load_suite_security("marketdata").credentials,
        replica_id="md-drained",
        on_drain=on_drain,
        report_interval_s=0.1,
        rpc_source=rpc,
    )
    reporter.start()
    try:
        await wait_for(lambda: reporter.reports_sent >= 1)
        assert drained == []
        assert scaler.scaler is not None
        scaler.scaler.registry.update("marketdata", "md-drained", state=ReplicaState.DRAINING)
        await wait_for(lambda: drained == ["drain"])
        sent = reporter.reports_sent
        await wait_for(lambda: reporter.reports_sent >= sent + 2)  # it keeps reporting...
        assert drained == ["drain"]  # ...and is told to drain once
        assert reporter.drain_requested
    finally:
        await reporter.close()


async def test_scaler_down_is_retried_with_backoff_without_disturbing_the_loop() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    reporter = LoadReporter(
        "marketdata",
        dead,
        load_suite_security("marketdata").credentials,
        report_interval_s=0.1,
        max_backoff_s=0.4,
        rpc_timeout_s=0.2,
        rpc_source=FakeRpc(),
    )
    reporter.start()
    try:
        # The event loop stays responsive: a 10 ms tick never waits much longer than that.
        worst = 0.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.5
        while loop.time() < deadline:
            before = loop.time()
            await asyncio.sleep(0.01)
            worst = max(worst, loop.time() - before)
        assert worst < 0.25
        assert reporter.running  # still trying, never crashed
        assert 1 <= reporter.failures <= 8  # backed off: not one attempt per 0.1 s
        assert reporter.reports_sent == 0
        assert reporter.last_error.startswith(("UNAVAILABLE", "DEADLINE_EXCEEDED"))
    finally:
        await reporter.close()


async def test_reports_resume_once_the_scaler_is_up(tmp_path: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    reporter = LoadReporter(
        "marketdata",
        f"127.0.0.1:{port}",
        load_suite_security("marketdata").credentials,
        replica_id="md-late",
        report_interval_s=0.1,
        max_backoff_s=0.3,
        rpc_timeout_s=0.2,
        rpc_source=FakeRpc(),
    )
    reporter.start()
    try:
        await wait_for(lambda: reporter.failures >= 1)
        config = ScalerConfig(
            port=port, state_dir=str(tmp_path), policies=("marketdata:inflight_requests:100:1:4",)
        )
        running = await start(
            config, load_suite_security("scaler"), backends={"local_process": NoBackend()}, loops=False
        )
        try:
            await wait_for(lambda: reporter.reports_sent >= 1, timeout_s=10)
            assert running.scaler is not None
            assert [r.replica_id for r in running.scaler.registry.all("marketdata")] == ["md-late"]
        finally:
            await running.stop(0.2)
    finally:
        await reporter.close()


async def test_no_policy_keeps_reporting_at_the_normal_pace(scaler: ScalerRunningServer) -> None:
    reporter = LoadReporter(
        "cache",
        f"127.0.0.1:{scaler.port}",
        load_suite_security("cache").credentials,
        report_interval_s=0.1,
        rpc_source=FakeRpc(),
    )
    reporter.start()
    try:
        await asyncio.sleep(0.75)
        assert reporter.last_error.startswith("NOT_FOUND: no scaling policy for 'cache'")
        assert reporter.failures >= 4  # ~every 0.1 s, not backed off
        assert reporter.running
    finally:
        await reporter.close()


async def test_a_failing_figures_callable_does_not_stop_reports(scaler: ScalerRunningServer) -> None:
    def broken() -> ServiceFigures:
        raise RuntimeError("boom")

    reporter = LoadReporter(
        "marketdata",
        f"127.0.0.1:{scaler.port}",
        load_suite_security("marketdata").credentials,
        figures=broken,
        rpc_source=FakeRpc(),
    )
    reply = await reporter.report_once()
    await reporter.close()
    assert not reply.drain
    assert reporter.reports_sent == 1


def test_quantile_interpolates_within_the_bucket() -> None:
    rpc = FakeRpc()
    before = rpc()
    rpc.add(100, 0.005)  # all in (0.001, 0.01]
    assert quantile_seconds(0.99, before, rpc()) == pytest.approx(0.001 + 0.009 * 0.99)
    assert quantile_seconds(0.99, rpc(), rpc()) == 0.0  # no call in the interval
    mid = rpc()
    rpc.add(10, 50.0)  # beyond every finite bound: the highest finite one
    assert quantile_seconds(0.99, mid, rpc()) == 0.1


def test_rpc_totals_leave_streams_out() -> None:
    registry = CollectorRegistry()
    histogram = Histogram("t_rpc_seconds", "test", ["method"], registry=registry, buckets=(0.01, 1.0))
    histogram.labels("/hftgate.v1.ScalerService/ReportMetrics").observe(0.002)
    histogram.labels("/hftgate.v1.ScalerService/WatchReplicas").observe(3_600.0)
    assert is_streaming("/hftgate.v1.ScalerService/WatchReplicas")
    assert not is_streaming("/hftgate.v1.ScalerService/ReportMetrics")
    assert not is_streaming("/no.such.Service/Method")
    totals = rpc_totals(histogram)
    assert totals.count == 1
    assert totals.seconds == pytest.approx(0.002)


def test_replica_id_from_the_environment_else_host_and_pid() -> None:
    assert default_replica_id({"HFTGATE_REPLICA_ID": "marketdata-3"}) == "marketdata-3"
    assert default_replica_id({}).endswith(f"-{__import__('os').getpid()}")


def test_bad_configuration_is_refused() -> None:
    credentials = load_suite_security("cache").credentials
    with pytest.raises(ValueError, match="scaler's address"):
        LoadReporter("cache", "", credentials)
    with pytest.raises(ValueError, match="report_interval_s"):
        LoadReporter("cache", "127.0.0.1:1", credentials, report_interval_s=0)


def test_hftgate_up_gives_every_service_the_scaler_address_up_front() -> None:
    from hftgate.supervisor import ALL_SERVICES, scaler_address_env

    plan = [(spec, 60_000 + i) for i, spec in enumerate(ALL_SERVICES)]
    scaler_port = next(port for spec, port in plan if spec.name == "scaler")
    env = scaler_address_env(plan, {"HFTGATE_CACHE_SCALER_ADDRESS": "elsewhere:1"})
    assert env == {
        f"HFTGATE_{name}_SCALER_ADDRESS": f"127.0.0.1:{scaler_port}"
        for name in ("MARKETDATA", "EXECUTION", "GATEWAY")
    }  # one set already is kept
    assert scaler_address_env([(s, p) for s, p in plan if s.name != "scaler"], {}) == {}
    assert [s.name for s in ALL_SERVICES][-1] == "scaler"  # it starts last


def test_every_service_hftgate_up_starts_reports_to_its_scaler(tmp_path: Any) -> None:
    """Real processes: the supervisor gives each service the scaler's address before the scaler
    starts (last); each then shows up in ListReplicas under its own principal, with the replica id
    host-pid."""
    import os
    import time

    from hftgate.supervisor import ALL_SERVICES, start_services, stop_services

    specs = [s for s in ALL_SERVICES if s.name in ("cache", "marketdata", "gateway", "scaler")]
    env = dict(os.environ)
    env["HFTGATE_STATE_DIR"] = str(tmp_path)
    for spec in specs:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            env[spec.port_variable] = str(probe.getsockname()[1])
    env["HFTGATE_SCALER_POLICIES"] = ",".join(
        f"{name}:inflight_requests:100:1:2" for name in ("cache", "marketdata", "gateway")
    )
    env["HFTGATE_SCALER_EVALUATION_INTERVAL_MS"] = "600000"  # no decision during the test
    running = start_services(specs, env=env, startup_timeout_s=60)
    try:
        scaler = next(s for s in running if s.spec.name == "scaler")
        assert all(s.env["HFTGATE_GATEWAY_SCALER_ADDRESS"] == scaler.address for s in running)
        pids = {s.spec.name: s.process.pid for s in running}
        channel = grpc.insecure_channel(scaler.address)
        stub = scaler_pb2_grpc.ScalerServiceStub(channel)
        wanted = {
            f"{name}/{socket.gethostname()}-{pids[name]}" for name in ("cache", "marketdata", "gateway")
        }
        deadline = time.monotonic() + 20
        reported: dict[str, Any] = {}
        while time.monotonic() < deadline and not wanted <= set(reported):
            listed = stub.ListReplicas(pb.ListReplicasRequest(), metadata=admin(), timeout=5)
            reported = {f"{r.service}/{r.replica_id}": r for r in listed.replicas if r.last_report_ns}
            time.sleep(0.2)
        assert wanted <= set(reported)
        for key in wanted:
            replica = reported[key]
            assert replica.state == pb.REPLICA_STATE_READY
            assert replica.last_metrics.interval_ms > 0
        # The replicas the scaler starts itself (its min_replicas) inherit the address and report
        # under the id it gave them.
        started_by_scaler = [r for r in reported.values() if r.backend == pb.SCALING_BACKEND_LOCAL_PROCESS]
        assert all(r.replica_id.startswith(f"{r.service}-") for r in started_by_scaler)
        channel.close()
    finally:
        stop_services(running, grace_s=15)
    assert [s.process.returncode for s in running] == [0] * len(running)


@pytest.mark.parametrize("quiet_s", [30.0, 0.0])
async def test_a_scaler_not_up_yet_is_not_warned_about_during_start_up(
    quiet_s: float, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """hftgate up starts the scaler last: the reporters' first failures are no warning; later ones are."""
    import hftgate.loadreport as loadreport

    monkeypatch.setattr(loadreport, "STARTUP_QUIET_S", quiet_s)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{probe.getsockname()[1]}"
    reporter = LoadReporter(
        "cache",
        dead,
        load_suite_security("cache").credentials,
        report_interval_s=0.1,
        max_backoff_s=0.2,
        rpc_timeout_s=0.2,
        rpc_source=FakeRpc(),
    )
    with caplog.at_level(logging.DEBUG, logger="hftgate.loadreport"):
        reporter.start()
        try:
            for _ in range(100):
                await asyncio.sleep(0.02)
                if reporter.failures >= 2:
                    break
        finally:
            await reporter.close()
    assert reporter.failures >= 2
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING and "cannot report" in r.getMessage()]
    assert bool(warned) == (quiet_s == 0.0)
