"""The open-loop generator through the gateway of a real suite (cache, market data, two execution
shards, the gateway), with the dev profile's demo keys: every order answered, figures sane."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from hftgate.supervisor import RunningService, available_services, start_services, stop_services, with_shards
from loadtest.open_loop import DEMO_API_KEYS, OpenLoopSettings, main, resolve_target, run_open_loop

SUITE = ("cache", "marketdata", "execution", "gateway")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    specs = [s for s in available_services() if s.name in SUITE]
    if {s.name for s in specs} != set(SUITE):
        pytest.skip("the gateway load test needs cache, marketdata, execution and the gateway")
    env = dict(os.environ)
    env.update(
        HFTGATE_STATE_DIR=str(tmp_path_factory.mktemp("open-loop-gateway")),
        # A shared 2-CPU test machine: no pinned or busy-polling threads.
        HFTGATE_EXECUTION_LOOP_CPUS="off",
        HFTGATE_EXECUTION_JOURNAL_WRITER_CPUS="off",
        HFTGATE_EXECUTION_JOURNAL_ACK_POLL_US="0",
    )
    for spec in with_shards(specs, 2):
        env[spec.port_variable] = str(free_port())
    running = start_services(specs, env=env, startup_timeout_s=60, shards=2)
    try:
        yield next(s for s in running if s.spec.name == "gateway")
    finally:
        stop_services(running, grace_s=15)


async def test_the_open_loop_through_the_gateway_gets_every_order_answered_with_sane_figures(
    gateway: RunningService,
) -> None:
    settings = OpenLoopSettings(
        target=gateway.address, api_keys=DEMO_API_KEYS, rate_per_s=200, duration_s=2.0, max_orders=400
    )

    report = await run_open_loop(settings)

    assert report.target == gateway.address
    assert report.scheduled == 400 and report.sent == 400 and report.shed == 0
    assert report.failed == 0, report.failures_by_code
    assert report.rejected == 0, report.rejects_by_reason
    assert report.accepted == 400
    latency = report.latency_ms
    assert latency["count"] == 400
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    # One loopback hop more than a shard direct: milliseconds, not seconds (a loose bar for a
    # shared 2-CPU machine; the bars of the issue are for `hftgate bench e2e`).
    assert latency["p50"] < 250, latency
    assert report.service_time_ms["p50"] <= latency["p50"] + 1e-6
    assert 150 <= report.completed_per_s <= 260, report.completed_per_s
    assert report.rate_sustained


def test_a_wrong_key_through_the_gateway_fails_every_order_unauthenticated(gateway: RunningService) -> None:
    code = main(
        ["--target", gateway.address, "--api-key", "not-a-key", "--rate", "50", "--duration-s", "0.2",
         "--warmup-orders", "0"]
    )  # fmt: skip

    assert code == 1  # the rate was not sustained: every order failed


def test_targets_by_name_are_hftgate_ups_addresses_and_others_pass_through() -> None:
    assert resolve_target("gateway") == "127.0.0.1:50050"
    assert resolve_target("execution") == "127.0.0.1:50051"
    assert resolve_target("127.0.0.1:6000") == "127.0.0.1:6000"


def test_the_command_needs_a_key_and_a_loopback_target(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as no_key:
        main(["--target", "gateway"])
    assert no_key.value.code == 2
    assert "--api-key or --demo-keys is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as remote:
        main(["--target", "10.0.0.1:50050", "--demo-keys"])
    assert remote.value.code == 2
    assert "refusing to send load to '10.0.0.1:50050'" in capsys.readouterr().err
