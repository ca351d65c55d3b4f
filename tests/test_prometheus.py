"""Prometheus for the suite: metrics ports, the generated scrape configuration, each service's
collector, and a real Prometheus (Debian's package) scraping a running suite."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from typer.testing import CliRunner

from hftgate import prometheus
from hftgate.cli import app as cli_app
from hftgate.prometheus import MetricsTarget, metrics_env, scrape_config, suite_targets
from hftgate.supervisor import RunningService
from tests.running_suite import SUITE, RunningSuite, free_port

# --- ports and the scrape configuration ------------------------------------------------------


def test_metrics_env_gives_each_service_its_default_port_and_a_port_already_set_wins() -> None:
    env = metrics_env(environ={"HFTGATE_CACHE_METRICS_PORT": "9999"})

    assert env == {
        "HFTGATE_GATEWAY_METRICS_PORT": "9100",
        "HFTGATE_EXECUTION_METRICS_PORT": "9101",
        "HFTGATE_MARKETDATA_METRICS_PORT": "9102",
        "HFTGATE_CACHE_METRICS_PORT": "9999",
        "HFTGATE_SCALER_METRICS_PORT": "9104",
    }
    assert metrics_env(0) == {}  # base 0: no /metrics anywhere
    assert metrics_env(9200, ["cache"]) == {"HFTGATE_CACHE_METRICS_PORT": "9203"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics_env(70_000), "metrics base port must be 0 .* not 70000"),
        (lambda: metrics_env(-1), "not -1"),
        (lambda: metrics_env(services=["ledger"]), "unknown service 'ledger'"),
        (
            lambda: metrics_env(environ={"HFTGATE_CACHE_METRICS_PORT": "nine"}),
            "HFTGATE_CACHE_METRICS_PORT must be a port number, not 'nine'",
        ),
        (
            lambda: suite_targets({"HFTGATE_GATEWAY_METRICS_PORT": "65536"}),
            "HFTGATE_GATEWAY_METRICS_PORT must be 0 .* up to 65535, not 65536",
        ),
        (lambda: scrape_config([], scrape_interval_s=0), "scrape interval must be above 0"),
    ],
)
def test_bad_ports_and_intervals_are_refused_saying_which_and_why(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_suite_targets_put_execution_shards_ten_ports_apart_and_skip_services_without_a_port() -> None:
    env = {"HFTGATE_EXECUTION_METRICS_PORT": "9101", "HFTGATE_CACHE_METRICS_PORT": "0"}

    targets = suite_targets(env, ["execution", "cache", "gateway"], shards=3)

    assert targets == [
        MetricsTarget("execution", "execution", "127.0.0.1:9101"),
        MetricsTarget("execution", "execution-1", "127.0.0.1:9111"),
        MetricsTarget("execution", "execution-2", "127.0.0.1:9121"),
    ]


def test_the_scrape_configuration_has_a_job_per_service_and_labels_each_process(tmp_path: Path) -> None:
    targets = suite_targets(metrics_env(), shards=2)
    path = prometheus.write_scrape_config(tmp_path / "p" / "prometheus.yml", targets, scrape_interval_s=0.5)

    config = yaml.safe_load(path.read_text())

    assert config["global"]["scrape_interval"] == "500ms"
    assert config["global"]["scrape_timeout"] == "500ms"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {f"hftgate-{name}" for name in prometheus.METRICS_PORT_OFFSETS}
    execution = jobs["hftgate-execution"]["static_configs"]
    assert [(s["targets"], s["labels"]["process"]) for s in execution] == [
        (["127.0.0.1:9101"], "execution"),
        (["127.0.0.1:9111"], "execution-1"),
    ]
    if shutil.which("promtool"):
        checked = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_hftgate_prometheus_config_prints_or_writes_the_suite_configuration(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(cli_app, ["prometheus-config", "--shards", "1", "--metrics-base-port", "9300"])
    assert printed.exit_code == 0, printed.output
    targets = [
        target
        for job in yaml.safe_load(printed.stdout)["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    assert sorted(targets) == [f"127.0.0.1:{port}" for port in range(9300, 9305)]

    out = tmp_path / "prometheus.yml"
    written = runner.invoke(cli_app, ["prometheus-config", "-o", str(out), "-s", "cache", "-s", "gateway"])
    assert written.exit_code == 0, written.output
    assert len(yaml.safe_load(out.read_text())["scrape_configs"]) == 2

    refused = runner.invoke(cli_app, ["prometheus-config", "--metrics-base-port", "99999"])
    assert refused.exit_code == 2
    assert "metrics base port" in refused.output
    assert "Traceback" not in refused.output


def test_a_busy_metrics_port_is_logged_and_the_service_goes_on_without_metrics(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with caplog.at_level(logging.ERROR, logger="hftgate.prometheus"):
            assert prometheus.serve_metrics("cache", port) is False
    assert f"cache: cannot serve /metrics on 127.0.0.1:{port}" in caplog.text
    assert prometheus.serve_metrics("cache", 0) is False  # 0: none asked for, nothing logged
    with pytest.raises(ValueError, match=r"HFTGATE_SCALER_METRICS_PORT must be 0 .* not 70000"):
        prometheus.serve_metrics("scaler", 70_000)


def test_metrics_bind_to_loopback_unless_the_suite_names_an_address() -> None:
    assert prometheus.metrics_host({}) == "127.0.0.1"
    assert prometheus.metrics_host({"HFTGATE_METRICS_HOST": "0.0.0.0"}) == "0.0.0.0"
    assert prometheus.metrics_host({"HFTGATE_METRICS_HOST": "::1"}) == "::1"
    with pytest.raises(ValueError, match=r"must be an IP address .* not 'metrics.evil.example'"):
        prometheus.metrics_host({"HFTGATE_METRICS_HOST": "metrics.evil.example"})
    with pytest.raises(ValueError, match="HFTGATE_METRICS_HOST"):
        prometheus.serve_metrics("cache", 9_999, environ={"HFTGATE_METRICS_HOST": "x" * 10_000})


# --- the services' own series ----------------------------------------------------------------


def scrape(collector: Any) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_market_data_reports_symbols_by_venue_subscribers_and_rejects_by_reason() -> None:
    from services.marketdata.config import MarketDataConfig
    from services.marketdata.engine import MarketDataEngine
    from services.marketdata.metrics import MarketDataCollector

    engine = MarketDataEngine(MarketDataConfig())
    before = scrape(MarketDataCollector(engine))
    assert 'hftgate_marketdata_subscribers{stream="subscribe"} 0.0' in before
    assert "hftgate_marketdata_ticks_accepted_total 0.0" in before
    assert 'hftgate_marketdata_ticks_rejected_total{reason="unknown_venue"} 0.0' in before
    assert "hftgate_marketdata_symbols_limit 4096.0" in before


def test_the_scaler_reports_replicas_by_state_and_its_policies() -> None:
    from services.scaler.app import Scaler
    from services.scaler.config import ScalerConfig
    from services.scaler.metrics import ScalerCollector
    from services.scaler.registry import ReplicaState

    scaler = Scaler(ScalerConfig(), {})
    scaler.registry.add("cache", "cache-1", backend="local_process", state=ReplicaState.READY)
    scaler.registry.add("cache", "cache-2", backend="local_process", state=ReplicaState.STARTING)

    text = scrape(ScalerCollector(scaler))

    assert 'hftgate_scaler_replicas{service="cache",state="ready"} 1.0' in text
    assert 'hftgate_scaler_replicas{service="cache",state="starting"} 1.0' in text
    assert 'hftgate_scaler_replicas{service="cache",state="failed"} 0.0' in text
    assert "hftgate_scaler_policies 0.0" in text
    assert "hftgate_scaler_restarts_total 0.0" in text


# --- a real Prometheus against a running suite -----------------------------------------------


def require_prometheus() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        message = "prometheus is not installed (apt-get install -y prometheus): the scrape test cannot run"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


class PrometheusProcess:
    """Debian's Prometheus on a free port with its own storage under ``folder``."""

    def __init__(self, binary: str, config: Path, folder: Path) -> None:
        self.port = free_port()
        self.log = folder / "prometheus.log"
        self._log_file = open(self.log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, **query: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=2) as reply:
            return json.loads(reply.read()) if path.startswith("/api/") else reply.read()

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.process.returncode}: {self.log.read_text()}")
            try:
                self.get("/-/ready")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready after {timeout_s} s: {self.log.read_text()}")

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=promql)
        assert answer["status"] == "success", answer
        return list(answer["data"]["result"])

    def wait_for(self, promql: str, check: Any, timeout_s: float) -> list[dict[str, Any]]:
        """Query until ``check(result)`` holds; the last result in the failure message."""
        deadline = time.monotonic() + timeout_s
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            result = self.query(promql)
            if check(result):
                return result
            time.sleep(0.25)
        raise AssertionError(f"{promql} never satisfied the check in {timeout_s} s: {result}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()


@pytest.fixture(scope="module")
def scraped_suite(
    two_shard_suite: RunningSuite, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[RunningService], PrometheusProcess]]:
    """A real Prometheus scraping the running suite (tests/running_suite.py) every 0.5 s."""
    binary = require_prometheus()
    folder = tmp_path_factory.mktemp("prometheus")
    running = two_shard_suite.running
    config = prometheus.write_scrape_config(
        folder / "prometheus.yml", prometheus.targets_of_running(running), scrape_interval_s=0.5
    )
    server = PrometheusProcess(binary, config, folder)
    try:
        server.wait_ready()
        yield running, server
    finally:
        server.stop()


def submit(gateway: RunningService, client_order_id: str, symbol: str, price_ticks: int) -> None:
    import grpc

    from hftgate.v1 import common_pb2, execution_pb2, execution_pb2_grpc

    order = execution_pb2.NewOrder(
        client_order_id=client_order_id,
        symbol=symbol,
        side=common_pb2.SIDE_BUY,
        order_type=execution_pb2.ORDER_TYPE_LIMIT,
        time_in_force=execution_pb2.TIME_IN_FORCE_GTC,
        price_ticks=price_ticks,
        quantity_lots=100,
    )
    with grpc.insecure_channel(gateway.address) as channel:
        reply = execution_pb2_grpc.ExecutionServiceStub(channel).SubmitOrder(
            execution_pb2.SubmitOrderRequest(order=order),
            metadata=(("x-api-key", "hftgate-demo-alice"),),
            timeout=10,
        )
    assert reply.ack.status == execution_pb2.ORDER_STATUS_NEW, reply


def by_process(result: list[dict[str, Any]]) -> dict[str, float]:
    return {sample["metric"]["process"]: float(sample["value"][1]) for sample in result}


def test_prometheus_scrapes_every_process_of_the_suite_and_sees_the_orders(
    scraped_suite: tuple[list[RunningService], PrometheusProcess],
) -> None:
    running, server = scraped_suite
    labels = {s.spec.label for s in running}
    assert labels == {"cache", "marketdata", "execution", "execution-1", "gateway", "scaler"}
    gateway = next(s for s in running if s.spec.name == "gateway")
    for index in range(3):  # through the gateway to both shards (default map: BTC and ETH apart)
        submit(gateway, f"prometheus-btc-{index}", "BTCUSDT", 5_000_000)
        submit(gateway, f"prometheus-eth-{index}", "ETHUSDT", 300_000)

    up = server.wait_for("up", lambda r: by_process(r) == dict.fromkeys(labels, 1.0), timeout_s=15)
    assert {sample["metric"]["job"] for sample in up} == {f"hftgate-{name}" for name in SUITE}

    submitted = server.wait_for(
        'sum by (process) (hftgate_rpc_total{job="hftgate-execution",method=~".*/SubmitOrder",code="OK"})',
        lambda r: len(r) == 2 and all(v >= 3 for v in by_process(r).values()),
        timeout_s=10,
    )
    assert set(by_process(submitted)) == {"execution", "execution-1"}
    # The gateway counted the same calls on its side.
    server.wait_for(
        'hftgate_rpc_total{job="hftgate-gateway",method=~".*/SubmitOrder",code="OK"}',
        lambda r: sum(float(s["value"][1]) for s in r) >= 6,
        timeout_s=10,
    )


def test_each_service_exports_its_own_series(
    scraped_suite: tuple[list[RunningService], PrometheusProcess],
) -> None:
    _, server = scraped_suite
    expected = {
        # Execution reads reference rows through the cache: L1 lookups happened.
        'hftgate_cache_lookups_total{level="l1"}': {"cache"},
        'hftgate_cache_hit_ratio{level="l1"}': {"cache"},
        'hftgate_marketdata_subscribers{stream="subscribe"}': {"marketdata"},
        "hftgate_execution_orders_accepted_total": {"execution", "execution-1"},
        "hftgate_gateway_shard_map_epoch": {"gateway"},
        'hftgate_gateway_upstream_inflight{upstream="cache"}': {"gateway"},
        'hftgate_gateway_shard_pins{shard="1"}': {"gateway"},
        "hftgate_scaler_policies": {"scaler"},
        "process_resident_memory_bytes": {
            "cache",
            "marketdata",
            "execution",
            "execution-1",
            "gateway",
            "scaler",
        },
    }
    for promql, processes in expected.items():
        result = server.wait_for(promql, lambda r, p=processes: set(by_process(r)) >= p, timeout_s=10)
        assert set(by_process(result)) >= processes, promql
    epoch = by_process(server.query("hftgate_gateway_shard_map_epoch"))["gateway"]
    assert epoch >= 1
