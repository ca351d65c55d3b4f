"""One running suite for the tests that only need *a* suite: cache, market data, two execution
shards, the gateway and the scaler as real processes, each serving /metrics.

Starting it takes ~8 s on a 2-CPU machine, and the locust smoke run, the open-loop run through the
gateway, the Prometheus scrape and the metric-name check used to start one each. They now share
the session fixture ``two_shard_suite`` (tests/conftest.py), whose tests run last, together, so
that the suite is started once and its idle processes never sit beside the rest of the run.

Tests that share it keep out of each other's way: each uses client order ids of its own, and none
asserts a total that another test's orders would change.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hftgate import prometheus
from hftgate.supervisor import (
    RunningService,
    ServiceSpec,
    available_services,
    start_services,
    stop_services,
    with_shards,
)

SUITE = ("cache", "marketdata", "execution", "gateway", "scaler")
#: Execution shard n serves /metrics this many ports above shard 0 (hftgate.prometheus).
SHARD_METRICS_STEP = 10


@dataclass
class RunningSuite:
    running: list[RunningService]
    folder: Path

    def service(self, label: str) -> RunningService:
        return next(s for s in self.running if s.spec.label == label)

    @property
    def gateway(self) -> RunningService:
        return self.service("gateway")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_port_pair(step: int = SHARD_METRICS_STEP) -> int:
    """A free port ``p`` with ``p + step`` free too (execution shard 1's metrics port)."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + step))
            except OSError:
                continue
            return port
    raise RuntimeError("no pair of free ports found")


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


def suite_specs() -> list[ServiceSpec]:
    return [s for s in available_services() if s.name in SUITE]


def start_suite(folder: Path) -> RunningSuite:
    """The suite on two shards (the default map puts BTCUSDT and ETHUSDT apart), every port
    distinct, in ``folder``."""
    specs = suite_specs()
    env = dict(os.environ)
    env.update(
        HFTGATE_STATE_DIR=str(folder / "state"),
        # A shared 2-CPU test machine: no pinned or busy-polling threads.
        HFTGATE_EXECUTION_LOOP_CPUS="off",
        HFTGATE_EXECUTION_JOURNAL_WRITER_CPUS="off",
        HFTGATE_EXECUTION_JOURNAL_ACK_POLL_US="0",
    )

    def start() -> list[RunningService]:
        # Every port distinct (a port closed after the check can be handed out again).
        taken: set[int] = set()

        def distinct(pick: Callable[[], int], span: int = 0) -> int:
            for _ in range(100):
                port = pick()
                if not {port, port + span} & taken:
                    taken.update({port, port + span})
                    return port
            raise RuntimeError("no distinct free port found")

        for spec in with_shards(specs, 2):
            env[spec.port_variable] = str(distinct(free_port))
        for name in SUITE:
            if name == "execution":
                port = distinct(free_port_pair, SHARD_METRICS_STEP)
            else:
                port = distinct(free_port)
            env[prometheus.metrics_port_variable(name)] = str(port)
        return start_services(specs, env=env, startup_timeout_s=60, shards=2)

    return RunningSuite(start_with_retries(start), folder)


def stop_suite(suite: RunningSuite) -> None:
    stop_services(suite.running, grace_s=15)
