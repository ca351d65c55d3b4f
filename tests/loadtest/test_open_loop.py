"""The open-loop generator against a real execution service: on schedule, bounded, every order answered."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from hftgate.bench.execution import ExecutionProcess
from loadtest.open_loop import OpenLoopSettings, run_open_loop


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExecutionProcess]:
    with ExecutionProcess(tmp_path_factory.mktemp("open-loop")) as process:
        process.start()
        yield process


def settings_for(
    service: ExecutionProcess,
    rate_per_s: float,
    duration_s: float,
    max_orders: int,
    max_in_flight: int = 5_000,
) -> OpenLoopSettings:
    return OpenLoopSettings(
        target=service.address,
        api_keys=(service.account("alice").api_key, service.account("bob").api_key),
        rate_per_s=rate_per_s,
        duration_s=duration_s,
        max_orders=max_orders,
        max_in_flight=max_in_flight,
    )


async def test_open_loop_sends_every_scheduled_order_and_times_each_answer(service: ExecutionProcess) -> None:
    report = await run_open_loop(settings_for(service, rate_per_s=400, duration_s=5.0, max_orders=300))

    assert report.scheduled == 300
    assert report.warmup_orders == 20  # sent first, in no figure
    assert gc.isenabled()  # off only while the clock ran
    assert report.sent == 300 and report.shed == 0
    assert report.failed == 0, report.failures_by_code
    assert report.accepted + report.rejected == report.sent
    assert report.rejected == 0, report.rejects_by_reason
    assert report.latency_ms["count"] == report.sent
    latency = report.latency_ms
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    assert latency["p50"] / 2 < latency["mean"] <= latency["max"]  # a mean of 300 real answers
    assert 0 <= latency["stdev"] <= latency["max"]
    assert report.rate_sustained


async def test_open_loop_stops_at_its_time_bound(service: ExecutionProcess) -> None:
    report = await run_open_loop(settings_for(service, rate_per_s=500, duration_s=0.3, max_orders=100_000))

    assert 0 < report.scheduled <= 151  # 0.3 s at 500/s, and not one order more
    assert report.accepted + report.rejected + report.failed == report.sent


async def test_open_loop_sheds_instead_of_queueing_when_calls_pile_up(service: ExecutionProcess) -> None:
    """At 20,000/s with one call allowed open, most orders fall due while a call is open: they are
    counted as shed, never queued behind it (that would hide the stall: coordinated omission)."""
    settings = settings_for(service, rate_per_s=20_000, duration_s=0.2, max_orders=2_000, max_in_flight=1)

    report = await run_open_loop(settings)

    assert report.shed > 0
    assert report.sent + report.shed == report.scheduled
    assert not report.rate_sustained


def test_open_loop_refuses_targets_off_this_machine() -> None:
    with pytest.raises(ValueError, match="refusing"):
        OpenLoopSettings(target="10.1.2.3:50051", api_keys=("key",))
