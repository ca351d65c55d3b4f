"""Where replicas run: one interface; local-process, docker compose and Kubernetes back ends.

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
* :class:`KubernetesBackend` patches the scale subresource of the service's Deployment, or of the
  execution shards' StatefulSet, with the official ``kubernetes`` client (imported on first use);
  the manifests it expects are under ``deploy/k8s/``.
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

    def child_env(
        self, service: str, replica_id: str, port: int, extra_env: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """The environment of one replica: the suite's, plus its port, state directory and id;
        ``extra_env`` last, over all of them (an execution shard's id, state and shard map)."""
        prefix = f"HFTGATE_{service.upper()}_"
        env = dict(self._env)
        if self._service_env is not None:
            env.update(self._service_env(service))
        env[prefix + "HOST"] = "127.0.0.1"
        env[prefix + "PORT"] = str(port)
        # Not the metrics port of the service it replicates (taken): a replica serves none for now.
        env[prefix + "METRICS_PORT"] = "0"
        env["HFTGATE_STATE_DIR"] = str(self._state_root / service / replica_id)
        env[REPLICA_ID_VARIABLE] = replica_id
        env.update(extra_env or {})
        return env

    async def start(
        self,
        service: str,
        replica_id: str,
        target_count: int,
        *,
        port: int = 0,
        extra_env: Mapping[str, str] | None = None,
    ) -> Started:
        """See :meth:`Backend.start`; ``port`` 0 = a free one. An execution shard is given its port
        (the shard map names it before it starts) and ``extra_env`` (see :meth:`child_env`)."""
        if service not in RUNNABLE_SERVICES:
            raise BackendError(f"the local back end does not run {service!r}")
        if (service, replica_id) in self._processes:
            raise BackendError(f"replica {service}/{replica_id} is already running")
        if len(self._processes) >= self._max_processes:
            raise BackendError(f"the local back end already runs {self._max_processes} processes (its limit)")
        port = port or free_port()
        env = self.child_env(service, replica_id, port, extra_env)
        # The replica's own folder holds its log even when extra_env points its state elsewhere.
        state_dir = self._state_root / service / replica_id
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


# --- Kubernetes -----------------------------------------------------------------------------------
#: The port each runnable service listens on in its container (the image's defaults).
SERVICE_PORTS: Mapping[str, int] = {"gateway": 50050, "execution": 50051, "marketdata": 50052, "cache": 50053}
#: How the back end finds its cluster: inside a pod, from a kubeconfig, or the first that applies.
KUBERNETES_CONFIG_MODES = ("auto", "in_cluster", "kubeconfig")
#: Content type of the scale patches: a JSON merge patch of ``{"spec": {"replicas": n}}``.
MERGE_PATCH = "application/merge-patch+json"
#: Longest part of an API server's error message kept in a failure (the decision log is bounded too).
MAX_API_MESSAGE_CHARS = 300

_STATUS_CODES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
}
_HINTS = {
    401: "the scaler's credentials for the cluster were refused (token expired or kubeconfig wrong)",
    403: "the scaler's ServiceAccount needs get and patch on {kind}/scale in namespace {namespace} "
    "(deploy/k8s/scaler.yaml grants exactly that)",
    404: "no {kind} named {name} in namespace {namespace} (apply deploy/k8s/, or set "
    "HFTGATE_SCALER_KUBERNETES_NAMESPACE)",
    409: "another writer changed the scale {retries} times in a row",
}


class KubernetesApiError(BackendError):
    """The API server refused or failed a request. ``code`` names the gRPC status it amounts to
    (PERMISSION_DENIED for 403, NOT_FOUND for 404, ABORTED for a conflict, UNAVAILABLE when the
    server could not be reached or failed); ``http_status`` is 0 when no answer came."""

    def __init__(self, code: str, http_status: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.http_status = http_status


def _api_message(body: object) -> str:
    """The ``message`` of a Kubernetes Status body, else the body's text, cut to a bounded size."""
    import json

    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("message"), str):
        text = parsed["message"]
    text = " ".join(text.split())
    return text[:MAX_API_MESSAGE_CHARS] + ("..." if len(text) > MAX_API_MESSAGE_CHARS else "")


class KubernetesBackend(Backend):
    """Sets the replica count of the service's Deployment (``deployments/<service>/scale``) or,
    for the services in ``statefulsets`` (execution shards, each with its own volume), of its
    StatefulSet (``statefulsets/<service>/scale``) in one namespace, with the official client.

    The patch is a JSON merge patch ``{"spec": {"replicas": n}}`` of the scale subresource, the
    only write the scaler's Role allows. Calls for one service are serialised and never move the
    count the wrong way: a start raises it to at least ``target_count`` (concurrent starts of one
    scale-up then end at the highest count, whatever order they run in), a stop lowers it to at
    most ``target_count``. A start then waits, up to ``ready_timeout_s`` (0: not at all), until
    the workload reports that many ready replicas (``get`` on the workload, also in the Role).

    Which pod a Deployment removes on scale-down is the Deployment controller's choice (not
    necessarily the replica the scaler drained: its readiness probe then fails over to the
    others); a StatefulSet always removes the highest ordinal, ``<service>-<count>``, which is
    the handle this back end gives the replica it adds, so the scaler drains the right shard.

    API failures become :class:`KubernetesApiError` with the status they amount to; no cluster
    configuration (not in a pod, no kubeconfig) is :class:`BackendUnavailable`. The client is
    synchronous: every call runs in a worker thread with ``request_timeout_s``.
    """

    name = KUBERNETES

    def __init__(
        self,
        namespace: str,
        *,
        statefulsets: frozenset[str] | set[str] | tuple[str, ...] = ("execution",),
        config_mode: str = "auto",
        kubeconfig: str = "",
        context: str = "",
        request_timeout_s: float = 10.0,
        ready_timeout_s: float = 120.0,
        poll_interval_s: float = 1.0,
        conflict_retries: int = 3,
        api_client: object | None = None,
    ) -> None:
        if config_mode not in KUBERNETES_CONFIG_MODES:
            raise ValueError(
                f"config_mode must be one of {', '.join(KUBERNETES_CONFIG_MODES)}, not {config_mode!r}"
            )
        self.namespace = namespace
        self.statefulsets = frozenset(statefulsets)
        self._config_mode = config_mode
        self._kubeconfig = kubeconfig
        self._context = context
        self._request_timeout_s = request_timeout_s
        self._ready_timeout_s = ready_timeout_s
        self._poll_interval_s = poll_interval_s
        self._conflict_retries = conflict_retries
        self._api_client = api_client  # a kubernetes.client.ApiClient; built on first use when None
        self._apps: object | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    # --- the API ----------------------------------------------------------------------------------
    def kind_of(self, service: str) -> str:
        """``statefulsets`` or ``deployments``: the resource that runs ``service``."""
        return "statefulsets" if service in self.statefulsets else "deployments"

    def _load_client(self) -> object:
        from kubernetes import client, config

        if self._api_client is not None:
            return self._api_client
        mode = self._config_mode
        if mode == "auto":
            mode = "in_cluster" if os.environ.get("KUBERNETES_SERVICE_HOST") else "kubeconfig"
        configuration = client.Configuration()
        try:
            if mode == "in_cluster":
                config.load_incluster_config(client_configuration=configuration)
            else:
                config.load_kube_config(
                    config_file=self._kubeconfig or None,
                    context=self._context or None,
                    client_configuration=configuration,
                )
        except (config.ConfigException, OSError, ValueError, TypeError) as exc:
            where = "in-cluster service account" if mode == "in_cluster" else "kubeconfig"
            raise BackendUnavailable(
                f"no Kubernetes cluster configured ({where}): {' '.join(str(exc).split())[:200]}"
            ) from None
        self._api_client = client.ApiClient(configuration)
        return self._api_client

    def _apps_api(self) -> object:
        if self._apps is None:
            from kubernetes import client

            self._apps = client.AppsV1Api(self._load_client())
        return self._apps

    async def _call(self, action: str, service: str, method: str, *args: object, **kwargs: object) -> object:
        """Run one AppsV1Api method in a thread, turning its failures into back-end errors."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        kind = self.kind_of(service)
        api = self._apps_api()
        call = getattr(api, method)
        try:
            return await asyncio.to_thread(
                call, service, self.namespace, *args, _request_timeout=self._request_timeout_s, **kwargs
            )
        except ApiException as exc:
            status = int(exc.status or 0)
            code = _STATUS_CODES.get(status, "UNAVAILABLE" if status >= 500 or status == 0 else "UNKNOWN")
            hint = _HINTS.get(status, "").format(
                kind=kind, name=service, namespace=self.namespace, retries=self._conflict_retries + 1
            )
            detail = _api_message(exc.body) or str(exc.reason or "")
            raise KubernetesApiError(
                code,
                status,
                f"Kubernetes answered {status} to {action} {kind}/{service} in namespace "
                f"{self.namespace}: {detail}" + (f" ({hint})" if hint else ""),
            ) from None
        except (HTTPError, OSError) as exc:
            raise KubernetesApiError(
                "UNAVAILABLE",
                0,
                f"the Kubernetes API server could not be reached to {action} {kind}/{service}: "
                f"{' '.join(str(exc).split())[:200]}",
            ) from None

    async def get_replicas(self, service: str) -> int:
        """The replica count the workload's scale subresource asks for (``spec.replicas``)."""
        method = (
            "read_namespaced_stateful_set_scale"
            if self.kind_of(service) == "statefulsets"
            else "read_namespaced_deployment_scale"
        )
        scale = await self._call("read the scale of", service, method)
        return int(getattr(getattr(scale, "spec", None), "replicas", None) or 0)

    async def set_replicas(self, service: str, count: int) -> None:
        """PATCH the scale subresource to ``count`` replicas (a merge patch; retried on 409)."""
        if count < 0:
            raise BackendError(f"cannot scale {service} to {count} replicas")
        method = (
            "patch_namespaced_stateful_set_scale"
            if self.kind_of(service) == "statefulsets"
            else "patch_namespaced_deployment_scale"
        )
        body = {"spec": {"replicas": count}}
        for attempt in range(self._conflict_retries + 1):
            try:
                await self._call("patch the scale of", service, method, body, _content_type=MERGE_PATCH)
                return
            except KubernetesApiError as exc:
                if exc.http_status != 409 or attempt == self._conflict_retries:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    async def ready_replicas(self, service: str) -> int:
        """``status.readyReplicas`` of the workload."""
        method = (
            "read_namespaced_stateful_set"
            if self.kind_of(service) == "statefulsets"
            else "read_namespaced_deployment"
        )
        workload = await self._call("read", service, method)
        return int(getattr(getattr(workload, "status", None), "ready_replicas", None) or 0)

    # --- Backend ------------------------------------------------------------------------------------
    def _check(self, service: str) -> None:
        if service not in RUNNABLE_SERVICES:
            raise BackendError(f"the Kubernetes back end does not run {service!r}")

    def handle_of(self, service: str, target_count: int) -> str:
        """A StatefulSet's newest pod (``<service>-<ordinal>``); a Deployment's own name."""
        if self.kind_of(service) == "statefulsets":
            return f"{service}-{target_count - 1}"
        return f"deployment/{service}"

    def address_of(self, service: str, target_count: int) -> str:
        port = SERVICE_PORTS.get(service, 0)
        if self.kind_of(service) == "statefulsets":  # one DNS name per shard (headless Service)
            return f"{service}-{target_count - 1}.{service}.{self.namespace}.svc:{port}"
        return f"{service}.{self.namespace}.svc:{port}"

    async def start(self, service: str, replica_id: str, target_count: int) -> Started:
        self._check(service)
        if target_count < 1:
            raise BackendError(f"cannot start a replica of {service} with a target of {target_count}")
        async with self._locks.setdefault(service, asyncio.Lock()):
            if await self.get_replicas(service) < target_count:
                await self.set_replicas(service, target_count)
        if self._ready_timeout_s > 0:
            deadline = time.monotonic() + self._ready_timeout_s
            ready = await self.ready_replicas(service)
            while ready < target_count:
                if time.monotonic() >= deadline:
                    raise BackendError(
                        f"{self.kind_of(service)}/{service} in namespace {self.namespace} has {ready} of "
                        f"{target_count} replicas ready after {self._ready_timeout_s:g} s"
                    )
                await asyncio.sleep(self._poll_interval_s)
                ready = await self.ready_replicas(service)
        return Started(
            address=self.address_of(service, target_count), handle=self.handle_of(service, target_count)
        )

    async def stop(self, service: str, replica_id: str, handle: str, target_count: int) -> None:
        self._check(service)
        async with self._locks.setdefault(service, asyncio.Lock()):
            if await self.get_replicas(service) > target_count:
                await self.set_replicas(service, max(target_count, 0))

    async def close(self) -> None:
        client = self._api_client
        self._api_client = None
        self._apps = None
        close = getattr(client, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(close)
