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


# --- observability: collector, Jaeger, Prometheus, Grafana --------------------------------------

OBSERVABILITY = ("otel-collector", "jaeger", "prometheus", "grafana")
#: Where a hftgate service's environment variables are read: the services, the shared package, the
#: image's entry point.
_SOURCES = (
    *sorted((ROOT / "hftgate").rglob("*.py")),
    *sorted((ROOT / "services").rglob("*.py")),
    ENTRYPOINT,
)
_CONFIG_CLASSES = {
    "HFTGATE_CACHE_": ("services.cache.config", "CacheConfig"),
    "HFTGATE_EXECUTION_": ("services.execution.config", "ExecutionConfig"),
    "HFTGATE_GATEWAY_": ("services.gateway.config", "GatewayConfig"),
    "HFTGATE_MARKETDATA_": ("services.marketdata.config", "MarketDataConfig"),
    "HFTGATE_SCALER_": ("services.scaler.config", "ScalerConfig"),
}


def _config_fields(prefix: str) -> set[str]:
    import dataclasses
    import importlib

    module, name = _CONFIG_CLASSES[prefix]
    return {field.name for field in dataclasses.fields(getattr(importlib.import_module(module), name))}


def _otel_sdk_variables() -> set[str]:
    import opentelemetry.sdk.environment_variables as sdk_variables

    return {
        value
        for key, value in vars(sdk_variables).items()
        if key.startswith("OTEL_") and isinstance(value, str)
    }


def test_every_environment_variable_a_service_is_given_is_one_the_code_reads() -> None:
    source = "\n".join(path.read_text(encoding="utf-8") for path in _SOURCES)
    otel = _otel_sdk_variables()
    for name, spec in hftgate_services().items():
        for key in spec["environment"]:
            prefix = next((p for p in _CONFIG_CLASSES if key.startswith(p)), None)
            if prefix is not None:
                field = key[len(prefix) :].lower()
                assert field in _config_fields(prefix), (
                    f"{name}: {key} is no field of {_CONFIG_CLASSES[prefix][1]}"
                )
            elif key.startswith("OTEL_"):
                assert key in otel or f'"{key}"' in source, (
                    f"{name}: {key} is read by neither the SDK nor hftgate"
                )
            else:
                assert f'"{key}"' in source or key in ENTRYPOINT.read_text(), f"{name}: nothing reads {key}"


def _bind_mounts(spec: dict[str, Any]) -> list[str]:
    return [volume.split(":")[0] for volume in spec.get("volumes", []) if volume.startswith("./")]


def test_every_file_the_compose_file_mounts_exists_in_the_repo() -> None:
    compose = load_compose()
    mounted = [source for spec in compose["services"].values() for source in _bind_mounts(spec)]
    assert len(mounted) >= 5  # the collector's config, Prometheus' config and rules, Grafana's two
    for source in mounted:
        assert (ROOT / source).exists(), f"docker-compose.yml mounts {source}, which is not in the repo"
    # Secrets are made by the operator (README, "Security"), and kept out of the repo and the image.
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    # The image is built from this repo's Dockerfile.
    assert all(spec.get("build") == "." for spec in hftgate_services().values())


def test_the_stack_has_a_collector_jaeger_prometheus_and_grafana_started_in_order() -> None:
    services = load_compose()["services"]
    assert set(OBSERVABILITY) <= set(services)
    for name, spec in services.items():
        for needed, how in spec.get("depends_on", {}).items():
            assert needed in services, f"{name} depends on {needed}, which is not a service"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[needed], f"{name} waits for {needed} to be healthy: no check"
    # No cycle: a start order exists.
    started: list[str] = []
    pending = dict(services)
    while pending:
        ready = [n for n, s in pending.items() if set(s.get("depends_on", {})) <= set(started)]
        assert ready, f"a depends_on cycle among {sorted(pending)}"
        for name in ready:
            started.append(name)
            del pending[name]
    order = started.index
    assert order("jaeger") < order("otel-collector") < order("cache")
    assert order("execution") < order("gateway") and order("execution-1") < order("gateway")
    assert order("prometheus") < order("grafana")


def test_every_hftgate_service_is_health_checked_on_its_own_grpc_port() -> None:
    specs = {spec.label: spec for spec in with_shards(ALL_SERVICES, SHARDS)}
    for name, spec in hftgate_services().items():
        test = spec["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"] and "HealthCheckRequest" in test[3], name
        port = int(
            spec["environment"].get(f"HFTGATE_{specs[name].name.upper()}_PORT", specs[name].default_port)
        )
        assert test[4] == f"127.0.0.1:{port}", name


def test_services_export_spans_to_the_collector_which_forwards_them_to_jaeger() -> None:
    compose = load_compose()
    collector = compose["services"]["otel-collector"]
    for name, spec in hftgate_services().items():
        env = spec["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317", name
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio", name
        assert 0 < float(env["OTEL_TRACES_SAMPLER_ARG"]) <= 1, name
    assert "4317" in collector["expose"]
    config_file = ROOT / _bind_mounts(collector)[0]
    config = yaml.safe_load(config_file.read_text())
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    for exporter in pipeline["exporters"]:
        assert config["exporters"][exporter]["endpoint"] == "jaeger:4317"
    for processor in pipeline["processors"]:
        assert processor in config["processors"]
    assert str(compose["services"]["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"]).lower() == "true"


def test_prometheus_scrapes_each_service_at_the_metrics_port_compose_gives_it() -> None:
    compose = load_compose()
    services = compose["services"]
    prometheus = services["prometheus"]
    config_path = next(v for v in prometheus["volumes"] if v.startswith("./deploy/prometheus/prometheus."))
    config = yaml.safe_load((ROOT / config_path.split(":")[0]).read_text())
    assert f"--config.file={config_path.split(':')[1]}" in prometheus["command"]
    rules_mount = next(v for v in prometheus["volumes"] if v.startswith("./deploy/prometheus/rules:"))
    for rule_file in config["rule_files"]:  # relative to the config file's folder in the container
        assert rules_mount.split(":")[1] == str(
            Path(config_path.split(":")[1]).parent / Path(rule_file).parent
        )
    scraped = {
        target.rsplit(":", 1)[0]: target.rsplit(":", 1)[1]
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert set(scraped) == set(hftgate_services())
    for name, port in scraped.items():
        env = services[name]["environment"]
        assert env["HFTGATE_METRICS_HOST"] == "0.0.0.0", name
        variable = next(key for key in env if key.endswith("_METRICS_PORT"))
        assert str(env[variable]) == port, f"{name}: Prometheus scrapes {port}, {variable}={env[variable]}"
        assert port in services[name]["expose"], name
        assert not any(port in str(p) for p in services[name].get("ports", [])), f"{name}: /metrics published"


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    services = load_compose()["services"]
    grafana = services["grafana"]
    mounts = {v.split(":")[1]: ROOT / v.split(":")[0] for v in grafana["volumes"] if v.startswith("./")}
    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    prometheus = next(d for d in datasources if d["type"] == "prometheus")
    assert prometheus["url"] == "http://prometheus:9090"
    assert "127.0.0.1:9090:9090" in services["prometheus"]["ports"]
    providers = yaml.safe_load((provisioning / "dashboards" / "hftgate.yml").read_text())["providers"]
    dashboards_path = providers[0]["options"]["path"]
    assert dashboards_path in mounts
    dashboards = list(mounts[dashboards_path].glob("*.json"))
    assert dashboards
    import json

    for path in dashboards:
        dashboard = json.loads(path.read_text())
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == prometheus["uid"], f"{path.name}: {panel['title']}"


def test_the_observability_uis_are_published_on_the_hosts_loopback_only() -> None:
    services = load_compose()["services"]
    for name in OBSERVABILITY:
        for port in services[name].get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is reachable from other hosts"
    assert "ports" not in services["otel-collector"]
