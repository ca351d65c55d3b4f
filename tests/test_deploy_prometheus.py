"""deploy/prometheus and deploy/grafana: the scrape configurations and alert rules pass promtool,
the alerts fire when they should (promtool's rule unit tests), and every metric an alert or a
dashboard panel names is served by some process of a running suite."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hftgate import prometheus
from tests.running_suite import RunningSuite

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
RULES = PROMETHEUS_DIR / "rules" / "hftgate.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "rules" / "hftgate.rules.test.yml"
CONFIGS = (PROMETHEUS_DIR / "prometheus.local.yml", PROMETHEUS_DIR / "prometheus.compose.yml")
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
#: Series Prometheus makes itself, not a service.
PROMETHEUS_OWN = {"up"}
#: A metric name in PromQL: outside quotes, not a function or keyword (those are followed by "(").
_NAME = re.compile(r"(?<![\w:])([a-zA-Z_:][a-zA-Z0-9_:]*)(?=\s*[{\[)\s]|\s*$|\s*[<>=!/*+-])")
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
}


def require_promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        message = "promtool is not installed (apt-get install -y prometheus): the rule checks cannot run"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (label values, functions and keywords left out)."""
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    unlabelled = re.sub(r"\{[^}]*\}", "{}", unquoted)
    # `by (job, le)` and `on (job)` list labels, not metrics.
    unlabelled = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", unlabelled)
    unlabelled = re.sub(r"\[[^\]]*\]", "", unlabelled)  # range selectors
    names = set()
    for match in _NAME.finditer(unlabelled):
        name = match.group(1)
        following = unlabelled[match.end() :].lstrip()
        if name in _KEYWORDS or following.startswith("("):
            continue
        if re.fullmatch(r"\d.*", name):
            continue
        names.add(name)
    return names


def alert_and_record_exprs() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule.get("alert") or rule["record"]: rule["expr"] for group in groups for rule in group["rules"]}


def recorded_names() -> set[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def dashboard_exprs() -> dict[str, str]:
    exprs = {}
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                exprs[f"{path.name}: {panel['title']} [{target['refId']}]"] = target["expr"]
    return exprs


# --- promtool ---------------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS, ids=lambda path: path.name)
def test_promtool_accepts_each_scrape_configuration(config: Path) -> None:
    checked = promtool("check", "config", str(config))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout


def test_promtool_accepts_the_alert_rules() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_each_alert_fires_on_the_series_that_should_fire_it_and_only_those() -> None:
    tested = promtool("test", "rules", str(RULE_TESTS.relative_to(PROMETHEUS_DIR)))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert has a unit test.
    alerts = {
        rule["alert"]
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for rule in g["rules"]
        if "alert" in rule
    }
    covered = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert alerts - {"HftgateSpansDropped", "HftgateServiceDown"} <= covered, alerts - covered


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each panel's query as a recording rule's expression."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 20
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": expr} for n, expr in enumerate(exprs.values())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules))
    checked = promtool("check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- the files agree with the suite -----------------------------------------------------------


def test_the_local_scrape_configuration_names_hftgate_ups_metrics_ports() -> None:
    config = yaml.safe_load(CONFIGS[0].read_text())
    named = {
        (job["job_name"], target, static["labels"]["process"])
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    expected = {
        (f"hftgate-{t.service}", t.address, t.label)
        for t in prometheus.suite_targets(prometheus.metrics_env(environ={}), shards=2)
    }
    assert named == expected


def test_the_compose_scrape_configuration_names_the_same_processes_by_their_service_names() -> None:
    local, compose = (yaml.safe_load(path.read_text()) for path in CONFIGS)

    def by_process(config: dict[str, Any]) -> dict[str, tuple[str, str]]:
        return {
            static["labels"]["process"]: (job["job_name"], target.rsplit(":", 1)[1])
            for job in config["scrape_configs"]
            for static in job["static_configs"]
            for target in static["targets"]
        }

    assert by_process(local) == by_process(compose)  # same jobs, processes and ports
    for job in compose["scrape_configs"]:
        for static in job["static_configs"]:
            host = static["targets"][0].rsplit(":", 1)[0]
            assert host == static["labels"]["process"], "compose reaches each process by its service name"


def test_the_metric_name_extraction_reads_series_not_labels_or_functions() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(hftgate_rpc_seconds_bucket{method=~"a|b"}[1m])))'
        ' / on (job) up{job="hftgate-execution"} > 0.05 and absent(process_cpu_seconds_total)'
    )
    assert metric_names(expr) == {"hftgate_rpc_seconds_bucket", "up", "process_cpu_seconds_total"}
    assert metric_names("hftgate:cache_l1_hit_ratio:rate5m < 0.95") == {"hftgate:cache_l1_hit_ratio:rate5m"}


# --- every named metric is served -------------------------------------------------------------


@pytest.fixture(scope="module")
def served_names(two_shard_suite: RunningSuite) -> set[str]:
    """Every series name some process of the running two-shard suite (tests/running_suite.py)
    serves on /metrics, after orders to both shards (labelled series appear once used)."""
    running = two_shard_suite.running
    shards = {s.spec.label: s.address for s in running if s.spec.name == "execution"}
    # Straight to each owner (the default two-shard map), so that this check does not
    # depend on the gateway's own behaviour.
    _submit(shards["execution"], "BTCUSDT", 5_000_000)
    _submit(shards["execution-1"], "ETHUSDT", 300_000)
    names: set[str] = set()
    for target in prometheus.targets_of_running(running):
        with urllib.request.urlopen(f"http://{target.address}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            # A declared family counts even with no sample yet (the scaler's replicas with
            # no policy, spans dropped before any drop), under each name Prometheus stores.
            suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}
            names.add(family.name)
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
            names.update(sample.name for sample in family.samples)
    return names


def _submit(address: str, symbol: str, price: int) -> None:
    import grpc

    from hftgate.v1 import common_pb2, execution_pb2, execution_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        for n in range(2):
            order = execution_pb2.NewOrder(
                client_order_id=f"deploy-{symbol}-{n}",
                symbol=symbol,
                side=common_pb2.SIDE_BUY,
                order_type=execution_pb2.ORDER_TYPE_LIMIT,
                time_in_force=execution_pb2.TIME_IN_FORCE_GTC,
                price_ticks=price,
                quantity_lots=100,
            )
            reply = stub.SubmitOrder(
                execution_pb2.SubmitOrderRequest(order=order),
                metadata=(("x-api-key", "hftgate-demo-alice"),),
                timeout=10,
            )
            assert reply.ack.status == execution_pb2.ORDER_STATUS_NEW, reply


def test_every_metric_an_alert_or_a_panel_names_is_served_by_some_process(served_names: set[str]) -> None:
    assert "hftgate_rpc_seconds_bucket" in served_names  # the scrape itself worked
    recorded = recorded_names()
    named: dict[str, set[str]] = {}
    for where, expr in {**alert_and_record_exprs(), **dashboard_exprs()}.items():
        for name in metric_names(expr):
            named.setdefault(name, set()).add(where)
    assert {"hftgate_cache_lookups_total", "hftgate_execution_stage_latency_seconds", "up"} <= set(named)
    missing = {
        name: sorted(where)
        for name, where in named.items()
        if name not in served_names and name not in recorded and name not in PROMETHEUS_OWN
    }
    assert not missing, f"named but served by no process: {missing}"
