"""CI smoke run of loadtest/locustfile.py: a few seconds of headless locust through the gateway of a
real suite (tests/running_suite.py); fails on any failed call."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hftgate.supervisor import RunningService
from loadtest.open_loop import DEMO_API_KEYS
from tests.running_suite import RunningSuite

ROOT = Path(__file__).resolve().parents[2]
RUN_SECONDS = 4


def locust_command() -> list[str]:
    beside = Path(sys.executable).with_name("locust")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("locust")
    if found is None:
        pytest.fail("locust is not installed in this environment (it is a dependency of the project)")
    return [found]


@pytest.fixture
def gateway(two_shard_suite: RunningSuite) -> RunningService:
    return two_shard_suite.gateway


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
