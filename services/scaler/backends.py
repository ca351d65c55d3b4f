"""Where replicas run: one interface, a local-process back end and a docker compose back end.

No gRPC servicer code here; the local back end only uses a grpc.health.v1 client to know when a
replica it started is SERVING.

* :class:`LocalProcessBackend` starts ``python -m services.<name>`` (a fresh interpreter, never a
  fork of the scaler: STYLE 6) on a free port of 127.0.0.1 with the suite's environment (the
  suite secret, the profile, TLS), a state directory of its own and ``HFTGATE_REPLICA_ID``;
  waits until its health check answers SERVING; stops it with SIGTERM (the service reports
  NOT_SERVING and drains itself), then SIGKILL after the grace period. :meth:`exited` tells which
  replicas died on their own, so the scaler can restart them.
* :class:`ComposeBackend` issues ``docker compose up -d --scale <service>=N --no-recreate
  <service>`` through the compose CLI (the runner is injectable: tests check the command lists;
  no Docker engine runs on the development machines). Compose names containers
  ``<project>-<service>-<index>`` and removes the highest indexes when the count falls, so the
  scaler drains those.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hftgate.security import ClientTls

log = logging.getLogger(__name__)

LOCAL_PROCESS = "local_process"
DOCKER_COMPOSE = "docker_compose"
KUBERNETES = "kubernetes"

#: The services a back end knows how to run, with the prefix of their configuration variables.
RUNNABLE_SERVICES: frozenset[str] = frozenset({"execution", "marketdata", "cache", "gateway"})
#: The variable that tells a replica its id (it reports it in ReplicaMetrics.replica_id).
REPLICA_ID_VARIABLE = "HFTGATE_REPLICA_ID"


class BackendError(RuntimeError):
    """A back end could not carry out a start or a stop; the message says why."""


class BackendUnavailable(BackendError):
    """The back end cannot run on this host (no Docker, no cluster): FAILED_PRECONDITION."""


@dataclass(frozen=True)
class Started:
    """A replica a back end started: where it serves and the back end's own name for it."""

    address: str
    handle: str


class Backend(ABC):
    """Starts and stops replicas of a service."""

    name: str

    @abstractmethod
    async def start(self, service: str, replica_id: str, target_count: int) -> Started:
        """Start one replica and return once it serves (``target_count``: the service's count after)."""

    @abstractmethod
    async def stop(self, service: str, replica_id: str, handle: str, target_count: int) -> None:
        """Stop one replica that has been drained (``target_count``: the service's count after)."""

    def exited(self) -> list[tuple[str, str, str]]:
        """(service, replica id, why) of replicas that stopped on their own since the last call."""
        return []

    async def close(self) -> None:  # noqa: B027 - optional: back ends that own nothing keep it
        """Stop everything the back end started."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_serving(
    address: str, timeout_s: float, tls: ClientTls | None = None, alive: Callable[[], bool] = lambda: True
) -> bool:
    """Poll grpc.health.v1 at ``address`` until SERVING, ``timeout_s`` passes or ``alive()`` is False."""
    deadline = time.monotonic() + timeout_s
    channel = (
        grpc.aio.insecure_channel(address)
        if tls is None
        else grpc.aio.secure_channel(address, tls.credentials())
    )
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline and alive():
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            await asyncio.sleep(0.05)
        return False
    finally:
        await channel.close(None)


@dataclass
class _Process:
    service: str
    replica_id: str
    process: asyncio.subprocess.Process
    log_path: Path
    stopping: bool = False


class LocalProcessBackend(Backend):
    """Child processes on this host (see the module docstring)."""

    name = LOCAL_PROCESS

    def __init__(
        self,
        env: Mapping[str, str],
        state_root: Path,
        *,
        startup_timeout_s: float = 30.0,
        stop_grace_s: float = 10.0,
        health_tls: ClientTls | None = None,
        service_env: Callable[[str], Mapping[str, str]] | None = None,
        python: str = sys.executable,
        max_processes: int = 256,
    ) -> None:
        self._env = dict(env)
        self._state_root = state_root
        self._startup_timeout_s = startup_timeout_s
        self._stop_grace_s = stop_grace_s
        self._health_tls = health_tls
        self._service_env = service_env
        self._python = python
        self._max_processes = max_processes
        self._processes: dict[tuple[str, str], _Process] = {}

    def pid_of(self, service: str, replica_id: str) -> int | None:
        entry = self._processes.get((service, replica_id))
        return None if entry is None else entry.process.pid

    def child_env(self, service: str, replica_id: str, port: int) -> dict[str, str]:
        """The environment of one replica: the suite's, plus its port, state directory and id."""
        prefix = f"HFTGATE_{service.upper()}_"
        env = dict(self._env)
        if self._service_env is not None:
            env.update(self._service_env(service))
        env[prefix + "HOST"] = "127.0.0.1"
        env[prefix + "PORT"] = str(port)
        env["HFTGATE_STATE_DIR"] = str(self._state_root / service / replica_id)
        env[REPLICA_ID_VARIABLE] = replica_id
        return env

    async def start(self, service: str, replica_id: str, target_count: int) -> Started:
        if service not in RUNNABLE_SERVICES:
            raise BackendError(f"the local back end does not run {service!r}")
        if (service, replica_id) in self._processes:
            raise BackendError(f"replica {service}/{replica_id} is already running")
        if len(self._processes) >= self._max_processes:
            raise BackendError(f"the local back end already runs {self._max_processes} processes (its limit)")
        port = free_port()
        env = self.child_env(service, replica_id, port)
        state_dir = Path(env["HFTGATE_STATE_DIR"])
        state_dir.mkdir(parents=True, exist_ok=True)
        log_path = state_dir / "replica.log"
        with open(log_path, "ab") as out:
            process = await asyncio.create_subprocess_exec(
                self._python,
                "-m",
                f"services.{service}",
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a signal to the scaler's terminal does not reach it
            )
        entry = _Process(service, replica_id, process, log_path)
        self._processes[(service, replica_id)] = entry
        address = f"127.0.0.1:{port}"
        serving = await wait_serving(
            address, self._startup_timeout_s, self._health_tls, alive=lambda: process.returncode is None
        )
        if not serving:
            code = process.returncode
            await self._terminate(entry, grace_s=2.0)
            self._processes.pop((service, replica_id), None)
            state = f"exited with code {code}" if code is not None else "did not report SERVING in time"
            raise BackendError(f"{service} replica {replica_id} on {address} {state} (log: {log_path})")
        log.info("started %s replica %s on %s (pid %d)", service, replica_id, address, process.pid)
        return Started(address=address, handle=str(process.pid))

    async def stop(self, service: str, replica_id: str, handle: str, target_count: int) -> None:
        entry = self._processes.pop((service, replica_id), None)
        if entry is None:
            return
        await self._terminate(entry, self._stop_grace_s)
        log.info("stopped %s replica %s (exit code %s)", service, replica_id, entry.process.returncode)

    async def _terminate(self, entry: _Process, grace_s: float) -> None:
        entry.stopping = True
        process = entry.process
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    def exited(self) -> list[tuple[str, str, str]]:
        gone = []
        for key, entry in list(self._processes.items()):
            code = entry.process.returncode
            if code is not None and not entry.stopping:
                del self._processes[key]
                why = f"exited with code {code}" if code >= 0 else f"killed by signal {-code}"
                gone.append((entry.service, entry.replica_id, why))
        return gone

    async def close(self) -> None:
        entries = list(self._processes.values())
        self._processes.clear()
        await asyncio.gather(*(self._terminate(entry, self._stop_grace_s) for entry in entries))


Runner = Callable[[Sequence[str]], Awaitable[tuple[int, str]]]


async def run_command(argv: Sequence[str]) -> tuple[int, str]:
    """Run ``argv``; (exit code, combined output). A missing executable is exit code 127."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
    except FileNotFoundError:
        return 127, f"{argv[0]}: not found"
    output, _ = await process.communicate()
    return process.returncode or 0, output.decode("utf-8", "replace")[-4_000:]


class ComposeBackend(Backend):
    """Containers of docker-compose.yml (see the module docstring)."""

    name = DOCKER_COMPOSE

    def __init__(
        self,
        compose_file: Path,
        project: str = "hftgate",
        *,
        runner: Runner = run_command,
        docker: str = "docker",
    ) -> None:
        self.compose_file = compose_file
        self.project = project
        self._runner = runner
        self._docker = docker
        self._checked = False

    def base_command(self) -> list[str]:
        return [self._docker, "compose", "-f", str(self.compose_file), "-p", self.project]

    def scale_command(self, service: str, count: int) -> list[str]:
        return [*self.base_command(), "up", "-d", "--no-recreate", "--scale", f"{service}={count}", service]

    def container_name(self, service: str, index: int) -> str:
        return f"{self.project}-{service}-{index}"

    async def _ensure_available(self) -> None:
        if self._checked:
            return
        code, output = await self._runner([self._docker, "compose", "version"])
        if code != 0:
            raise BackendUnavailable(f"docker compose is not usable on this host: {output.strip()[:200]}")
        self._checked = True

    async def _scale(self, service: str, count: int) -> None:
        if service not in RUNNABLE_SERVICES:
            raise BackendError(f"the compose back end does not run {service!r}")
        await self._ensure_available()
        code, output = await self._runner(self.scale_command(service, count))
        if code != 0:
            raise BackendError(f"docker compose could not scale {service} to {count}: {output.strip()[:500]}")

    async def start(self, service: str, replica_id: str, target_count: int) -> Started:
        await self._scale(service, target_count)
        # The container joins the replica set when it reports; its address is the compose service.
        return Started(address=f"{service}:0", handle=self.container_name(service, target_count))

    async def stop(self, service: str, replica_id: str, handle: str, target_count: int) -> None:
        await self._scale(service, target_count)


def default_local_env() -> dict[str, str]:
    """The scaler's own environment, which carries the suite's (secret, profile, TLS)."""
    return dict(os.environ)
