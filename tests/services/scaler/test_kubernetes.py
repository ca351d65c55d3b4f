"""The Kubernetes back end against a local API server that records every request, and the
manifests under deploy/k8s/ loaded into the official client's models."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from hftgate.config import ConfigError
from services.scaler.app import Scaler
from services.scaler.backends import (
    KUBERNETES,
    MERGE_PATCH,
    BackendError,
    BackendUnavailable,
    KubernetesApiError,
    KubernetesBackend,
)
from services.scaler.config import ScalerConfig, load_config
from services.scaler.decisions import Metric, Policy

ROOT = Path(__file__).resolve().parents[3]
K8S = ROOT / "deploy" / "k8s"
NAMESPACE = "trading"


# --- a fake API server ----------------------------------------------------------------------------
@dataclass
class Request:
    method: str
    path: str
    content_type: str
    body: Any


@dataclass
class FakeApi:
    """Workloads by (kind, name) with their replicas; ``errors`` queues (status, message) answers."""

    replicas: dict[tuple[str, str], int] = field(default_factory=dict)
    ready: dict[tuple[str, str], int] = field(default_factory=dict)
    errors: list[tuple[int, str]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(api: FakeApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            with api.lock:
                api.requests.append(
                    Request(self.command, self.path, self.headers.get("Content-Type", ""), body)
                )
                error = api.errors.pop(0) if api.errors else None
            if error is not None:
                status, message = error
                reason = {403: "Forbidden", 404: "NotFound", 409: "Conflict"}.get(status, "InternalError")
                self._answer(
                    status,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "message": message,
                        "reason": reason,
                        "code": status,
                    },
                )
                return
            parts = self.path.split("?")[0].strip("/").split("/")
            # apis/apps/v1/namespaces/<ns>/<kind>/<name>[/scale]
            if parts[:4] != ["apis", "apps", "v1", "namespaces"] or len(parts) < 7:
                self._answer(404, {"kind": "Status", "message": f"no route {self.path}", "code": 404})
                return
            namespace, kind, name = parts[4], parts[5], parts[6]
            key = (kind, name)
            with api.lock:
                if key not in api.replicas:
                    self._answer(
                        404, {"kind": "Status", "message": f'{kind} "{name}" not found', "code": 404}
                    )
                    return
                if self.command == "PATCH":
                    api.replicas[key] = body["spec"]["replicas"]
                    api.ready[key] = api.replicas[key]  # the pods become ready at once
                count, ready = api.replicas[key], api.ready.get(key, 0)
            meta = {"name": name, "namespace": namespace}
            if parts[7:] == ["scale"]:
                self._answer(
                    200,
                    {
                        "kind": "Scale",
                        "apiVersion": "autoscaling/v1",
                        "metadata": meta,
                        "spec": {"replicas": count},
                        "status": {"replicas": count},
                    },
                )
            else:
                kind_name = "StatefulSet" if kind == "statefulsets" else "Deployment"
                self._answer(
                    200,
                    {
                        "kind": kind_name,
                        "apiVersion": "apps/v1",
                        "metadata": meta,
                        "spec": {
                            "replicas": count,
                            "selector": {"matchLabels": {"app": name}},
                            "template": {"metadata": {"labels": {"app": name}}},
                        },
                        "status": {"replicas": count, "readyReplicas": ready},
                    },
                )

        do_GET = do_PATCH = _handle

    return Handler


@pytest.fixture
def api() -> Iterator[tuple[FakeApi, str]]:
    state = FakeApi(
        replicas={("deployments", "marketdata"): 1, ("statefulsets", "execution"): 2},
        ready={("deployments", "marketdata"): 1, ("statefulsets", "execution"): 2},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def backend_for(host: str, **kwargs: Any) -> KubernetesBackend:
    configuration = client.Configuration(host=host)
    configuration.retries = 0
    kwargs.setdefault("ready_timeout_s", 5.0)
    kwargs.setdefault("poll_interval_s", 0.01)
    return KubernetesBackend(NAMESPACE, api_client=client.ApiClient(configuration), **kwargs)


SCALE_DEPLOYMENT = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/marketdata/scale"
SCALE_STATEFULSET = f"/apis/apps/v1/namespaces/{NAMESPACE}/statefulsets/execution/scale"


async def test_start_patches_the_deployment_scale_with_a_merge_patch_and_waits_ready(
    api: tuple[FakeApi, str],
) -> None:
    state, host = api
    backend = backend_for(host)
    started = await backend.start("marketdata", "marketdata-2", 3)
    assert [(r.method, r.path.split("?")[0]) for r in state.requests] == [
        ("GET", SCALE_DEPLOYMENT),
        ("PATCH", SCALE_DEPLOYMENT),
        ("GET", f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/marketdata"),
    ]
    patch = state.requests[1]
    assert patch.content_type == MERGE_PATCH
    assert patch.body == {"spec": {"replicas": 3}}
    assert state.replicas[("deployments", "marketdata")] == 3
    assert started.handle == "deployment/marketdata"
    assert started.address == f"marketdata.{NAMESPACE}.svc:50052"
    assert await backend.get_replicas("marketdata") == 3
    await backend.close()


async def test_execution_shards_scale_their_statefulset_and_never_the_wrong_way(
    api: tuple[FakeApi, str],
) -> None:
    state, host = api
    backend = backend_for(host, ready_timeout_s=0)
    started = await backend.start("execution", "execution-3", 3)
    assert started.handle == "execution-2"  # the StatefulSet's newest ordinal
    assert started.address == f"execution-2.execution.{NAMESPACE}.svc:50051"
    patches = [r for r in state.requests if r.method == "PATCH"]
    assert [(r.path.split("?")[0], r.body) for r in patches] == [
        (SCALE_STATEFULSET, {"spec": {"replicas": 3}})
    ]
    # A start whose target the count already covers (a concurrent start got there first) and a
    # stop to a count above the current one change nothing.
    state.requests.clear()
    await backend.start("execution", "execution-2", 2)
    await backend.stop("execution", "execution-9", "execution-8", 5)
    assert [r.method for r in state.requests] == ["GET", "GET"]
    await backend.stop("execution", "execution-3", "execution-2", 2)
    assert state.requests[-1].method == "PATCH" and state.requests[-1].body == {"spec": {"replicas": 2}}
    assert state.replicas[("statefulsets", "execution")] == 2
    await backend.close()


async def test_concurrent_starts_of_one_scale_up_end_at_the_highest_count(api: tuple[FakeApi, str]) -> None:
    import asyncio

    state, host = api
    backend = backend_for(host)
    await asyncio.gather(*(backend.start("marketdata", f"m-{n}", n) for n in (4, 2, 3)))
    assert state.replicas[("deployments", "marketdata")] == 4
    await backend.close()


async def test_forbidden_is_a_permission_denied_failure_that_names_the_missing_grant(
    api: tuple[FakeApi, str],
) -> None:
    state, host = api
    backend = backend_for(host)
    state.errors.append(
        (
            403,
            'deployments.apps "marketdata" is forbidden: User "system:serviceaccount:trading:default" '
            'cannot get resource "deployments/scale"',
        )
    )
    with pytest.raises(KubernetesApiError) as raised:
        await backend.start("marketdata", "m-2", 2)
    error = raised.value
    assert error.code == "PERMISSION_DENIED" and error.http_status == 403
    assert str(error).startswith(
        f"PERMISSION_DENIED: Kubernetes answered 403 to read the scale of deployments/marketdata in "
        f'namespace {NAMESPACE}: deployments.apps "marketdata" is forbidden'
    )
    assert "needs get and patch on deployments/scale" in str(error)
    assert "Traceback" not in str(error) and "HTTPHeaderDict" not in str(error)
    assert state.replicas[("deployments", "marketdata")] == 1


async def test_a_missing_workload_is_not_found(api: tuple[FakeApi, str]) -> None:
    _, host = api
    backend = backend_for(host)
    with pytest.raises(KubernetesApiError) as raised:
        await backend.start("gateway", "g-1", 1)
    assert raised.value.code == "NOT_FOUND"
    assert f"no deployments named gateway in namespace {NAMESPACE}" in str(raised.value)


async def test_a_conflict_is_retried_then_reported_as_aborted(api: tuple[FakeApi, str]) -> None:
    state, host = api
    backend = backend_for(host, conflict_retries=2)
    await backend.get_replicas("marketdata")  # warm the client
    state.requests.clear()
    state.errors.append((409, "the object has been modified"))
    await backend.set_replicas("marketdata", 2)
    assert [r.method for r in state.requests] == ["PATCH", "PATCH"]
    assert state.replicas[("deployments", "marketdata")] == 2

    state.requests.clear()
    state.errors.extend([(409, "the object has been modified")] * 3)
    with pytest.raises(KubernetesApiError) as raised:
        await backend.set_replicas("marketdata", 3)
    assert raised.value.code == "ABORTED"
    assert "another writer changed the scale 3 times in a row" in str(raised.value)
    assert [r.method for r in state.requests] == ["PATCH"] * 3
    assert state.replicas[("deployments", "marketdata")] == 2


async def test_pods_that_never_become_ready_fail_the_start(api: tuple[FakeApi, str]) -> None:
    state, host = api
    backend = backend_for(host, ready_timeout_s=0.2)

    original_ready = dict(state.ready)
    await backend.start("marketdata", "m-1", 1)
    assert original_ready == state.ready
    state.replicas[("deployments", "marketdata")] = 3  # asked for, but only 1 ready
    with pytest.raises(
        BackendError, match=r"deployments/marketdata in namespace trading has 1 of 3 replicas ready"
    ):
        await backend.start("marketdata", "m-3", 3)


async def test_an_unreachable_api_server_is_unavailable_and_no_cluster_is_a_precondition(
    tmp_path: Path,
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    backend = backend_for(f"http://127.0.0.1:{port}")
    with pytest.raises(KubernetesApiError) as raised:
        await backend.get_replicas("cache")
    assert raised.value.code == "UNAVAILABLE" and raised.value.http_status == 0
    assert "could not be reached to read the scale of deployments/cache" in str(raised.value)

    nowhere = KubernetesBackend("hftgate", config_mode="kubeconfig", kubeconfig=str(tmp_path / "none"))
    with pytest.raises(BackendUnavailable, match=r"no Kubernetes cluster configured \(kubeconfig\)"):
        await nowhere.get_replicas("cache")
    with pytest.raises(BackendError, match="does not run 'feed'"):
        await nowhere.start("feed", "f-1", 1)


async def test_a_refused_scale_up_is_recorded_in_the_decision(
    api: tuple[FakeApi, str], tmp_path: Path
) -> None:
    state, host = api
    backend = backend_for(host)
    scaler = Scaler(
        ScalerConfig(port=0, state_dir=str(tmp_path), default_backend=KUBERNETES, discovery_ms=0),
        {KUBERNETES: backend},
    )
    try:
        scaler.set_policy(
            "admin",
            Policy(service="marketdata", min_replicas=1, max_replicas=3, metric=Metric.INFLIGHT_REQUESTS),
        )
        state.errors.append((403, "forbidden"))
        record = await scaler.evaluate("marketdata")  # no replica reports yet: start min_replicas
        assert not record.applied
        assert record.error.startswith("PERMISSION_DENIED: Kubernetes answered 403")
        record = await scaler.evaluate("marketdata")
        assert record.applied, record.error
        assert state.replicas[("deployments", "marketdata")] == 1
        (replica,) = scaler.registry.all("marketdata")
        assert replica.backend == KUBERNETES and replica.backend_handle == "deployment/marketdata"
    finally:
        await scaler.close()


def test_config_selects_and_checks_the_kubernetes_back_end() -> None:
    config = load_config(
        {
            "HFTGATE_SCALER_DEFAULT_BACKEND": "kubernetes",
            "HFTGATE_SCALER_KUBERNETES_NAMESPACE": "prod-7",
            "HFTGATE_SCALER_KUBERNETES_CONFIG": "in_cluster",
            "HFTGATE_SCALER_KUBERNETES_STATEFULSETS": "execution,cache",
        }
    )
    scaler = Scaler(config, {})
    backend = scaler.backends[KUBERNETES]
    assert isinstance(backend, KubernetesBackend)
    assert backend.namespace == "prod-7"
    assert backend.kind_of("cache") == "statefulsets" and backend.kind_of("gateway") == "deployments"
    assert KUBERNETES not in Scaler(load_config({}), {}).backends
    bad = {
        "HFTGATE_SCALER_KUBERNETES_NAMESPACE": "Not_A_Label",
        "HFTGATE_SCALER_KUBERNETES_CONFIG": "cloud",
        "HFTGATE_SCALER_KUBERNETES_STATEFULSETS": "execution,feed",
        "HFTGATE_SCALER_KUBERNETES_REQUEST_TIMEOUT_S": "0",
        "HFTGATE_SCALER_DEFAULT_BACKEND": "nomad",
    }
    for name, value in bad.items():
        with pytest.raises(ConfigError, match=name):
            load_config({name: value})


# --- the manifests --------------------------------------------------------------------------------
MODELS: dict[str, type[Any]] = {
    "Namespace": client.V1Namespace,
    "Service": client.V1Service,
    "Deployment": client.V1Deployment,
    "StatefulSet": client.V1StatefulSet,
    "ServiceAccount": client.V1ServiceAccount,
    "Role": client.V1Role,
    "RoleBinding": client.V1RoleBinding,
    "PodDisruptionBudget": client.V1PodDisruptionBudget,
}
HFTGATE = {"cache", "marketdata", "gateway", "scaler", "execution"}


def _load() -> list[tuple[dict[str, Any], Any]]:
    loaded = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is None:
                continue
            assert doc["kind"] in MODELS, f"{path.name}: unexpected kind {doc['kind']}"
            loaded.append((doc, MODELS[doc["kind"]].from_dict(doc)))
    return loaded


def _by_kind(kind: str) -> dict[str, Any]:
    return {doc["metadata"]["name"]: model for doc, model in _load() if doc["kind"] == kind}


def test_every_manifest_loads_into_the_client_models_without_losing_a_field() -> None:
    loaded = _load()
    assert len(loaded) >= 20
    api_client = client.ApiClient()
    for doc, model in loaded:
        # A misspelt or misplaced field would be dropped by the model: the round trip shows it.
        assert api_client.sanitize_for_serialization(model) == doc, doc["metadata"]["name"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "hftgate", doc["metadata"]["name"]


def test_workloads_run_the_suite_in_production_with_the_secret_referenced_never_written() -> None:
    deployments, statefulsets = _by_kind("Deployment"), _by_kind("StatefulSet")
    assert {"cache", "marketdata", "gateway", "scaler", "redis"} <= set(deployments)
    assert "execution" in statefulsets and "execution" not in deployments
    texts = " ".join(path.read_text() for path in K8S.glob("*.yaml"))
    assert "kind: Secret\n" not in texts and "stringData" not in texts
    for name in HFTGATE:
        workload = deployments.get(name) or statefulsets[name]
        pod = workload.spec.template.spec
        (container,) = pod.containers
        assert container.command[:3] == ["/app/deploy/docker/entrypoint.sh", "python", "-m"]
        assert container.command[3] == f"services.{name}"
        env = {e.name: e for e in container.env}
        assert env["HFTGATE_PROFILE"].value == "production", name
        assert env[f"HFTGATE_{name.upper()}_HOST"].value == "0.0.0.0", name
        assert "HFTGATE_SUITE_SECRET" not in env
        for variable in env.values():  # no secret value, no demo data anywhere
            assert "DEMO_KEY" not in variable.name
            if "SEED" in variable.name:
                assert variable.value == "false", name
            if variable.name.endswith(("PASSWORD", "SECRET")):
                pytest.fail(f"{name}: {variable.name} holds a value; secrets come from files")
        mount = next(m for m in container.volume_mounts if m.name == "suite")
        assert mount.read_only
        assert env["HFTGATE_SUITE_SECRET_FILE"].value == f"{mount.mount_path}/suite.secret"
        volume = next(v for v in pod.volumes if v.name == "suite")
        assert volume.secret.secret_name == "hftgate-suite"
        assert pod.security_context.run_as_non_root and pod.security_context.run_as_user == 1000
        assert container.security_context.allow_privilege_escalation is False
        assert container.readiness_probe.grpc.port == container.ports[0].container_port
        # Only the scaler talks to the API server; no other pod gets a token.
        assert pod.automount_service_account_token is (name == "scaler"), name
    execution = statefulsets["execution"]
    env = {e.name: e.value for e in execution.spec.template.spec.containers[0].env}
    assert env["HFTGATE_EXECUTION_SEED_DEMO_DATA"] == "false"
    (claim,) = execution.spec.volume_claim_templates
    assert claim.spec.access_modes == ["ReadWriteOnce"] and claim.spec.resources.requests["storage"]
    mounts = {m.name: m.mount_path for m in execution.spec.template.spec.containers[0].volume_mounts}
    assert mounts[claim.metadata.name] == env["HFTGATE_STATE_DIR"] == "/data"
    assert execution.spec.service_name == "execution"


def test_the_scaler_may_only_read_workloads_and_get_or_patch_their_scale_in_its_namespace() -> None:
    roles, bindings = _by_kind("Role"), _by_kind("RoleBinding")
    kinds = {doc["kind"] for doc, _ in _load()}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    (role,) = roles.values()
    allowed = set()
    for rule in role.rules:
        assert rule.api_groups == ["apps"]
        assert set(rule.resource_names or ()) <= {"cache", "marketdata", "gateway", "execution"}
        assert rule.resource_names, "the Role names the workloads it may scale"
        for resource in rule.resources:
            for verb in rule.verbs:
                allowed.add((resource, verb))
    assert allowed == {
        ("deployments/scale", "get"),
        ("deployments/scale", "patch"),
        ("statefulsets/scale", "get"),
        ("statefulsets/scale", "patch"),
        ("deployments", "get"),
        ("statefulsets", "get"),
    }
    (binding,) = bindings.values()
    assert binding.role_ref.kind == "Role" and binding.role_ref.name == role.metadata.name
    (subject,) = binding.subjects
    scaler = _by_kind("Deployment")["scaler"].spec.template.spec
    assert subject.kind == "ServiceAccount" and subject.name == scaler.service_account_name
    assert subject.namespace == role.metadata.namespace == "hftgate"
    assert _by_kind("ServiceAccount")[subject.name].automount_service_account_token is False
    env = {e.name: e for e in scaler.containers[0].env}
    assert env["HFTGATE_SCALER_DEFAULT_BACKEND"].value == "kubernetes"
    assert env["HFTGATE_SCALER_KUBERNETES_NAMESPACE"].value_from.field_ref.field_path == "metadata.namespace"
    config = load_config(
        {
            e.name: e.value or "hftgate"
            for e in scaler.containers[0].env
            if e.name.startswith("HFTGATE_SCALER_")
        }
    )
    assert config.default_backend == KUBERNETES and config.kubernetes_statefulsets == ("execution",)


def test_only_the_gateway_is_reachable_from_outside_the_cluster() -> None:
    services = _by_kind("Service")
    assert HFTGATE | {"redis", "postgres"} <= set(services)
    for name, service in services.items():
        expected = "LoadBalancer" if name == "gateway" else "ClusterIP"
        assert service.spec.type == expected, name
        for port in service.spec.ports:
            assert port.node_port is None, name
    assert services["execution"].spec.cluster_ip == "None"  # per-shard DNS names
    for workload in [*_by_kind("Deployment").values(), *_by_kind("StatefulSet").values()]:
        pod = workload.spec.template.spec
        assert not pod.host_network and not pod.host_pid and not pod.host_ipc
        for container in pod.containers:
            for port in container.ports or ():
                assert port.host_port is None, workload.metadata.name
        # Every selector of a Service finds its pods.
    labels = {
        w.metadata.name: w.spec.template.metadata.labels
        for w in [*_by_kind("Deployment").values(), *_by_kind("StatefulSet").values()]
    }
    for name, service in services.items():
        assert service.spec.selector.items() <= labels[name].items(), name


def test_every_replicated_service_has_a_disruption_budget_matching_its_pods() -> None:
    budgets = _by_kind("PodDisruptionBudget")
    workloads = {**_by_kind("Deployment"), **_by_kind("StatefulSet")}
    assert {"cache", "marketdata", "gateway", "execution"} <= set(budgets)
    for name, budget in budgets.items():
        labels = workloads[name].spec.template.metadata.labels
        assert budget.spec.selector.match_labels.items() <= labels.items(), name
        assert (budget.spec.min_available is None) != (budget.spec.max_unavailable is None), name
