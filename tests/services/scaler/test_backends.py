"""Back ends: real market data replicas on the local back end; docker compose as the commands it issues."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest

from services.scaler.app import Scaler
from services.scaler.backends import (
    REPLICA_ID_VARIABLE,
    BackendError,
    BackendUnavailable,
    ComposeBackend,
    LocalProcessBackend,
    wait_serving,
)
from services.scaler.config import ScalerConfig
from services.scaler.decisions import Metric, Policy
from services.scaler.registry import ReplicaState


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
async def test_local_backend_starts_restarts_and_stops_real_marketdata_replicas(tmp_path: Path) -> None:
    backend = LocalProcessBackend(dict(os.environ), tmp_path, startup_timeout_s=60, stop_grace_s=10)
    config = ScalerConfig(port=0, state_dir=str(tmp_path), drain_ms=50, discovery_ms=0)
    scaler = Scaler(config, {"local_process": backend})
    try:
        scaler.set_policy(
            "admin",
            Policy(service="marketdata", min_replicas=2, max_replicas=3, metric=Metric.INFLIGHT_REQUESTS),
        )
        record = await scaler.evaluate("marketdata")  # no replicas: start min_replicas
        assert record.applied, record.error
        replicas = scaler.registry.all("marketdata")
        assert [r.state for r in replicas] == [ReplicaState.READY, ReplicaState.READY]
        addresses = {r.address for r in replicas}
        assert len(addresses) == 2
        for replica in replicas:
            assert await wait_serving(replica.address, 5)
            state_dir = tmp_path / "marketdata" / replica.replica_id
            assert (state_dir / "replica.log").exists()
            pid = int(replica.backend_handle)
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"{REPLICA_ID_VARIABLE}={replica.replica_id}".encode() in environ

        # kill -9 one: the monitor notices and starts a replacement at once.
        victim = replicas[0]
        os.kill(int(victim.backend_handle), signal.SIGKILL)
        dead: list[tuple[str, str, str]] = []
        for _ in range(100):
            dead = await scaler.check_replicas()
            if dead:
                break
            await asyncio.sleep(0.05)
        assert dead == [("marketdata", victim.replica_id, "killed by signal 9")]
        for _ in range(600):
            ready = [r for r in scaler.registry.all("marketdata") if r.state is ReplicaState.READY]
            if len(ready) == 2:
                break
            await asyncio.sleep(0.1)
        ready = [r for r in scaler.registry.all("marketdata") if r.state is ReplicaState.READY]
        assert len(ready) == 2 and victim.replica_id not in {r.replica_id for r in ready}
        assert scaler.restarts == 1

        # Scale-down: DRAINING, then SIGTERM; the process exits and leaves the set as STOPPED.
        newest = max(ready, key=lambda r: r.started_ns)
        assert scaler._scale_down(scaler.get_policy("marketdata"), 1) == 1
        assert scaler.registry.get("marketdata", newest.replica_id).state is ReplicaState.DRAINING  # type: ignore[union-attr]
        for _ in range(300):
            if scaler.registry.get("marketdata", newest.replica_id) is None:
                break
            await asyncio.sleep(0.05)
        assert scaler.registry.get("marketdata", newest.replica_id) is None
        assert not pid_alive(int(newest.backend_handle))
        survivor = next(r for r in ready if r.replica_id != newest.replica_id)
    finally:
        await scaler.close()
    assert not pid_alive(int(survivor.backend_handle))


async def test_local_backend_reports_a_replica_that_cannot_start(tmp_path: Path) -> None:
    env = {**os.environ, "HFTGATE_MARKETDATA_VENUE_TAKER_FEES_BPS": "not-a-fee"}
    backend = LocalProcessBackend(env, tmp_path, startup_timeout_s=60)
    with pytest.raises(BackendError, match=r"marketdata replica bad-1 on 127\.0\.0\.1:\d+ exited with code"):
        await backend.start("marketdata", "bad-1", 1)
    assert backend.exited() == []
    with pytest.raises(BackendError, match="does not run 'feed'"):
        await backend.start("feed", "f-1", 1)


class Recorder:
    def __init__(self, codes: Sequence[int] = ()) -> None:
        self.commands: list[list[str]] = []
        self._codes = list(codes)

    async def __call__(self, argv: Sequence[str]) -> tuple[int, str]:
        self.commands.append(list(argv))
        code = self._codes.pop(0) if self._codes else 0
        return code, "" if code == 0 else "Cannot connect to the Docker daemon"


async def test_compose_backend_issues_scale_commands(tmp_path: Path) -> None:
    runner = Recorder()
    compose = ComposeBackend(tmp_path / "docker-compose.yml", "hft", runner=runner)
    started = await compose.start("marketdata", "marketdata-7", 3)
    await compose.stop("marketdata", "marketdata-7", started.handle, 2)
    base = ["docker", "compose", "-f", str(tmp_path / "docker-compose.yml"), "-p", "hft"]
    assert runner.commands == [
        ["docker", "compose", "version"],
        [*base, "up", "-d", "--no-recreate", "--scale", "marketdata=3", "marketdata"],
        [*base, "up", "-d", "--no-recreate", "--scale", "marketdata=2", "marketdata"],
    ]
    assert started.handle == "hft-marketdata-3"


async def test_compose_backend_without_docker_is_unavailable(tmp_path: Path) -> None:
    compose = ComposeBackend(tmp_path / "docker-compose.yml", runner=Recorder(codes=[127]))
    with pytest.raises(BackendUnavailable, match="docker compose is not usable"):
        await compose.start("cache", "cache-1", 2)


async def test_compose_backend_failure_is_reported(tmp_path: Path) -> None:
    compose = ComposeBackend(tmp_path / "docker-compose.yml", runner=Recorder(codes=[0, 1]))
    with pytest.raises(BackendError, match="could not scale cache to 2: Cannot connect"):
        await compose.start("cache", "cache-1", 2)
