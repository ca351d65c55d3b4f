"""CI smoke run of loadtest/locustfile.py: a few seconds of headless locust through the gateway of a
real suite (cache, market data, two execution shards, the gateway); fails on any failed call."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hftgate.supervisor import RunningService, available_services, start_services, stop_services, with_shards
from loadtest.open_loop import DEMO_API_KEYS

ROOT = Path(__file__).resolve().parents[2]
SUITE = ("cache", "marketdata", "execution", "gateway")
RUN_SECONDS = 4


def start_with_retries(start: Callable[[], list[RunningService]], attempts: int = 3) -> list[RunningService]:
    """``start()`` again with fresh ports when a port picked free was taken meanwhile by another
    process of a busy machine (start_services stops what it started before it raises)."""
    for attempt in range(attempts):
        try:
            return start()
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def locust_command() -> list[str]:
    beside = Path(sys.executable).with_name("locust")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("locust")
    if found is None:
        pytest.fail("locust is not installed in this environment (it is a dependency of the project)")
    return [found]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    specs = [s for s in available_services() if s.name in SUITE]
    if {s.name for s in specs} != set(SUITE):
        pytest.skip("the locust smoke run needs cache, marketdata, execution and the gateway")
    env = dict(os.environ)
    env.update(
        HFTGATE_STATE_DIR=str(tmp_path_factory.mktemp("locust-smoke")),
        # A shared 2-CPU test machine: no pinned or busy-polling threads.
        HFTGATE_EXECUTION_LOOP_CPUS="off",
        HFTGATE_EXECUTION_JOURNAL_WRITER_CPUS="off",
        HFTGATE_EXECUTION_JOURNAL_ACK_POLL_US="0",
    )

    def start() -> list[RunningService]:
        for spec in with_shards(specs, 2):
            env[spec.port_variable] = str(free_port())
        return start_services(specs, env=env, startup_timeout_s=60, shards=2)

    running = start_with_retries(start)
    try:
        yield next(s for s in running if s.spec.name == "gateway")
    finally:
        stop_services(running, grace_s=15)


def run_locust(
    host: str, api_keys: str, folder: Path
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, str]]]:
    env = dict(
        os.environ,
        HFTGATE_LOADTEST_API_KEYS=api_keys,
        HFTGATE_LOADTEST_MAX_SECONDS=str(RUN_SECONDS),
        HFTGATE_LOADTEST_MARKETDATA="1",  # the gateway serves market data too
    )
    done = subprocess.run(
        [
            *locust_command(),
            # No -t: locust arms that timer on gevent's clock as cached before its imports, which
            # took longer than this whole run on a loaded machine (the run ended at once). The
            # locustfile's own bound, armed when the test starts, ends it instead.
            "-f", "loadtest/locustfile.py", "--headless", "-u", "5", "-r", "5",
            "--host", host, "--only-summary", "--csv", str(folder / "smoke"), "--exit-code-on-error", "1",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_SECONDS * 15,
        check=False,
    )  # fmt: skip
    stats_path = folder / "smoke_stats.csv"
    rows = list(csv.DictReader(stats_path.open())) if stats_path.exists() else []
    return done, rows


def test_a_short_locust_run_through_the_gateway_has_no_failures(
    gateway: RunningService, tmp_path: Path
) -> None:
    done, rows = run_locust(gateway.address, ",".join(DEMO_API_KEYS), tmp_path)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    by_name = {row["Name"]: row for row in rows}
    total = by_name["Aggregated"]
    assert int(total["Request Count"]) > 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert int(total["Failure Count"]) == 0, done.stderr[-3000:]
    # The mix ran: orders, batches, market data reads at least (replaces, cancels and gets need
    # resting orders; every one that ran is in the zero failures above).
    for name in ("SubmitOrder", "SubmitOrders", "GetSnapshot"):
        assert int(by_name[name]["Request Count"]) > 0, (name, sorted(by_name))


def test_the_smoke_run_fails_when_calls_fail(gateway: RunningService, tmp_path: Path) -> None:
    """The same run with a key the suite does not know: every call UNAUTHENTICATED, locust exits 1."""
    done, rows = run_locust(gateway.address, "not-a-key", tmp_path)

    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    total = next(row for row in rows if row["Name"] == "Aggregated")
    assert int(total["Failure Count"]) == int(total["Request Count"]) > 0
