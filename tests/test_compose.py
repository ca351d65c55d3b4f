"""docker-compose.yml starts the same modules `hftgate up` starts, in the production profile, with
the suite secret on every service and only the front doors on the host (no Docker engine needed)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hftgate.shardmap import ShardMap, parse_shards
from hftgate.supervisor import ALL_SERVICES, with_shards

ROOT = Path(__file__).resolve().parent.parent
ENTRYPOINT = ROOT / "deploy" / "docker" / "entrypoint.sh"
#: What the host may reach: the gateway, execution shard 0 and market data (all authenticate every
#: call). Execution shard 1 (``execution-1``) is reached through the gateway.
PUBLIC = {"execution", "marketdata", "gateway"}
#: The compose stack runs what `hftgate up` runs: two execution shards.
SHARDS = 2
INTERNAL = ("cache", "redis", "postgres", "scaler")


def load_compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


def hftgate_services() -> dict[str, Any]:
    """The compose services that run an hftgate module."""
    return {
        name: spec
        for name, spec in load_compose()["services"].items()
        if spec.get("command", [])[:2] == ["python", "-m"]
    }


def test_every_compose_service_runs_a_real_module() -> None:
    for name, spec in hftgate_services().items():
        module = spec["command"][2]
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{name}: {module} not found"


def test_every_built_service_is_in_compose_and_only_public_ones_publish_a_port() -> None:
    services = load_compose()["services"]
    for spec in with_shards(ALL_SERVICES, SHARDS):
        if not spec.is_available():
            continue
        assert spec.label in services, f"{spec.label} is built but missing from docker-compose.yml"
        ports = services[spec.label].get("ports", [])
        if spec.label in PUBLIC:
            assert ports == [f"{spec.default_port}:{spec.default_port}"], spec.label
        else:
            assert ports == [], f"{spec.label} is internal: its port must not be published on the host"
    for name in INTERNAL:
        assert name in services
        assert "ports" not in services[name], f"{name} must not be published on the host"


def test_compose_services_listen_on_all_interfaces_of_the_compose_network() -> None:
    services = load_compose()["services"]
    for spec in with_shards(ALL_SERVICES, SHARDS):
        if spec.label in services:
            env = services[spec.label]["environment"]
            assert env.get(f"HFTGATE_{spec.name.upper()}_HOST") == "0.0.0.0"


def test_compose_runs_two_execution_shards_behind_the_gateway() -> None:
    services = load_compose()["services"]
    shards = {name: services[name] for name in ("execution", "execution-1")}
    for name, spec in shards.items():
        assert spec["command"] == ["python", "-m", "services.execution"], name
    env0, env1 = (shards[name]["environment"] for name in ("execution", "execution-1"))
    assert str(env0.get("HFTGATE_EXECUTION_SHARD_ID", "0")) == "0"
    assert str(env1["HFTGATE_EXECUTION_SHARD_ID"]) == "1"
    # Each shard its own journal and snapshots; one ledger table (trade ids carry the shard).
    volumes = [shards[name]["volumes"][0].split(":")[0] for name in shards]
    assert len(set(volumes)) == 2 and set(volumes) <= set(load_compose()["volumes"])
    assert env0["HFTGATE_EXECUTION_LEDGER_DATABASE_URL"] == env1["HFTGATE_EXECUTION_LEDGER_DATABASE_URL"]
    assert str(env1["HFTGATE_EXECUTION_SEED_DEMO_DATA"]).lower() == "false"
    # The gateway names both, at the address and port each one listens on, and waits for both.
    gateway = services["gateway"]
    listed = parse_shards(gateway["environment"]["HFTGATE_GATEWAY_EXECUTION_SHARDS"].split(","))
    ports = {"execution": "50051", "execution-1": str(env1["HFTGATE_EXECUTION_PORT"])}
    assert {(s.shard_id, s.address) for s in listed} == {
        (0, f"execution:{ports['execution']}"),
        (1, "execution-1:50061"),
    }
    assert ports["execution-1"] in shards["execution-1"]["expose"]
    assert {"execution", "execution-1"} <= set(gateway["depends_on"])
    # Both shards name the same initial map, the gateway's: whichever starts first stores it.
    for env in (env0, env1):
        assert (
            env["HFTGATE_EXECUTION_INITIAL_SHARDS"]
            == gateway["environment"]["HFTGATE_GATEWAY_EXECUTION_SHARDS"]
        )
    # The two-shard map gives each shard symbols (the README's BTCUSDT to the published shard 0).
    shard_map = ShardMap(1, listed)
    assert shard_map.owner("BTCUSDT").shard_id == 0 and shard_map.owner("ETHUSDT").shard_id == 1


def test_every_service_runs_in_the_production_profile_with_the_suite_secret() -> None:
    compose = load_compose()
    secret_file = compose["secrets"]["suite_secret"]["file"]
    assert secret_file == "./secrets/suite.secret"
    services = hftgate_services()
    assert {"cache", "marketdata", "execution"} <= set(services)
    for name, spec in services.items():
        env = spec["environment"]
        assert env["HFTGATE_PROFILE"] == "production", name
        assert "suite_secret" in spec["secrets"], name
        assert env["HFTGATE_SUITE_SECRET_FILE"] == "/run/secrets/suite_secret", name
        assert "HFTGATE_SUITE_SECRET" not in env, (
            f"{name}: the secret is a file, never a value in the compose file"
        )
    # Any container of the image defaults to production too.
    assert "ENV HFTGATE_PROFILE=production" in (ROOT / "Dockerfile").read_text().splitlines()


def test_compose_never_seeds_demo_accounts() -> None:
    for name, spec in hftgate_services().items():
        env = {key: str(value).lower() for key, value in spec["environment"].items()}
        for key, value in env.items():
            if key.endswith("SEED_DEMO_DATA"):
                assert value in ("false", "0", "no", "off"), f"{name}: {key}={value}"
            assert "DEMO_KEY" not in key, f"{name}: {key}"
    for shard in ("execution", "execution-1"):
        execution = load_compose()["services"][shard]["environment"]
        assert str(execution["HFTGATE_EXECUTION_SEED_DEMO_DATA"]).lower() == "false", shard


def test_redis_and_postgres_require_passwords_kept_in_secret_files() -> None:
    compose = load_compose()
    redis = compose["services"]["redis"]
    assert "--requirepass" in " ".join(redis["command"])
    assert "redis_password" in redis["secrets"]
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])  # the health check authenticates
    postgres = compose["services"]["postgres"]["environment"]
    assert "POSTGRES_PASSWORD" not in postgres
    assert postgres["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres_password"
    for name, spec in hftgate_services().items():
        env = spec["environment"]
        assert env["REDIS_URL"].startswith("redis://redis:"), name
        assert env["REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password", name
        assert env["DATABASE_PASSWORD_FILE"] == "/run/secrets/postgres_password", name
        assert {"redis_password", "postgres_password"} <= set(spec["secrets"]), name
        for key, value in env.items():
            if key.endswith("URL") and "@" in str(value):
                assert ":" not in str(value).split("://", 1)[1].split("@", 1)[0], f"{name}: password in {key}"
    assert set(compose["secrets"]) == {"suite_secret", "redis_password", "postgres_password"}


def test_secrets_stay_out_of_the_image() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "secrets" in ignored and "data" in ignored


def _entrypoint_env(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), "env"],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )


def test_the_entrypoint_puts_the_secret_passwords_into_the_urls(tmp_path: Path) -> None:
    (tmp_path / "redis").write_text("0123abcd\n")
    (tmp_path / "pg").write_text("s3cr3t-pw\n")
    done = _entrypoint_env(
        tmp_path,
        REDIS_URL="redis://redis:6379/0",
        REDIS_PASSWORD_FILE=str(tmp_path / "redis"),
        DATABASE_URL="postgresql+asyncpg://hftgate@postgres:5432/hftgate",
        HFTGATE_EXECUTION_LEDGER_DATABASE_URL="postgresql+asyncpg://hftgate@postgres:5432/hftgate",
        DATABASE_PASSWORD_FILE=str(tmp_path / "pg"),
    )
    assert done.returncode == 0, done.stderr
    lines = set(done.stdout.splitlines())
    assert "REDIS_URL=redis://:0123abcd@redis:6379/0" in lines
    assert "DATABASE_URL=postgresql+asyncpg://hftgate:s3cr3t-pw@postgres:5432/hftgate" in lines
    assert (
        "HFTGATE_EXECUTION_LEDGER_DATABASE_URL=postgresql+asyncpg://hftgate:s3cr3t-pw@postgres:5432/hftgate"
        in lines
    )
    # Without the variables the URLs pass through unchanged.
    plain = _entrypoint_env(tmp_path, REDIS_URL="redis://127.0.0.1:6379/0")
    assert "REDIS_URL=redis://127.0.0.1:6379/0" in plain.stdout.splitlines()


def test_the_entrypoint_refuses_a_password_that_would_break_the_url(tmp_path: Path) -> None:
    for bad in ("", "has space", "a@b", "a/b"):
        (tmp_path / "redis").write_text(bad)
        done = _entrypoint_env(
            tmp_path, REDIS_URL="redis://redis:6379/0", REDIS_PASSWORD_FILE=str(tmp_path / "redis")
        )
        assert done.returncode == 64, bad
        assert "must hold a non-empty URL-safe password" in done.stderr
        assert done.stdout == ""  # nothing ran, and the password is never echoed
    missing = _entrypoint_env(
        tmp_path, REDIS_URL="redis://redis:6379/0", REDIS_PASSWORD_FILE=str(tmp_path / "nope")
    )
    assert missing.returncode != 0


def test_the_compose_client_validates_the_file() -> None:
    if shutil.which("docker-compose"):
        command = ["docker-compose", "config", "--quiet"]
    elif (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        command = ["docker", "compose", "config", "--quiet"]
    else:
        pytest.skip("no compose client installed (.ci/run installs one)")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_kubernetes_manifests_run_production_with_the_secret_and_no_demo_data() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "hftgate.yaml").read_text()))
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    for name in ("cache", "redis"):
        assert services[name]["spec"].get("type", "ClusterIP") == "ClusterIP", name
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    assert {"cache", "marketdata", "execution", "redis"} <= set(workloads)
    for name in ("cache", "marketdata", "execution"):
        pod = workloads[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["HFTGATE_PROFILE"] == "production", name
        assert "HFTGATE_SUITE_SECRET" not in env
        mount = next(m for m in container["volumeMounts"] if m["name"] == "suite")
        assert env["HFTGATE_SUITE_SECRET_FILE"] == f"{mount['mountPath']}/suite.secret", name
        volume = next(v for v in pod["volumes"] if v["name"] == "suite")
        assert volume["secret"]["secretName"] == "hftgate-suite", name
        assert container["command"][:3] == ["/app/deploy/docker/entrypoint.sh", "python", "-m"], name
        assert not any(env[key].lower() in ("true", "1", "yes", "on") for key in env if "SEED" in key), name
        assert not any("DEMO_KEY" in key for key in env), name
    execution = workloads["execution"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "HFTGATE_EXECUTION_SEED_DEMO_DATA", "value": "false"} in execution["env"]
    assert "--requirepass" in " ".join(
        workloads["redis"]["spec"]["template"]["spec"]["containers"][0]["command"]
    )
