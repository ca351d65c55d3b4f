"""The live dashboard (hftgate/dashboard): its JSON against in-process servers, its HTTP edge, and
the page rendered by a real headless Chromium.

The suite is made of fakes that speak the real protos behind the real ServiceAuthInterceptor
(so the dashboard must present the admin principal's token), plus the real market data service.
Chromium is Debian's package (.ci/run installs it); without it the browser tests skip, except
under CI=true, where they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from hftgate.dashboard import Dashboard, DashboardConfig, Poller
from hftgate.grpcserver import RunningServer, ServiceBinding, create_server
from hftgate.security import ADMIN, ServiceAuthInterceptor, load_suite_secret, principal_of
from hftgate.v1 import (
    cache_pb2,
    cache_pb2_grpc,
    common_pb2,
    execution_pb2,
    execution_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    scaler_pb2,
    scaler_pb2_grpc,
)
from services.marketdata.config import MarketDataConfig
from services.marketdata.engine import MarketDataEngine
from services.marketdata.server import start as start_marketdata

SECRET = load_suite_secret()
T0_NS = 1_700_000_000 * 10**9


@dataclass
class Calls:
    """Principals the fakes saw, per RPC (the dashboard must call as admin)."""

    principals: dict[str, set[str | None]] = field(default_factory=dict)

    def saw(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.principals.setdefault(method, set()).add(principal_of(context, SECRET))


class FakeExecution(execution_pb2_grpc.ExecutionServiceServicer):
    def __init__(self, calls: Calls, shard_id: int) -> None:
        self.calls = calls
        self.shard_id = shard_id
        self.orders_received = 100
        self.collected_ns = T0_NS
        self.open_orders = 7

    async def GetStats(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls.saw(f"GetStats/{self.shard_id}", context)
        total = common_pb2.LatencySummary(count=self.orders_received, p50_ns=1_250_000, p99_ns=4_500_000)
        return execution_pb2.GetStatsResponse(
            started_ns=T0_NS - 10**9,
            collected_ns=self.collected_ns,
            orders_received=self.orders_received,
            orders_accepted=self.orders_received - 3,
            inputs_rejected=3,
            open_orders=self.open_orders,
            total_latency=total,
        )


class FakeCache(cache_pb2_grpc.CacheServiceServicer):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def Stats(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls.saw("Stats", context)
        levels = [  # 1,000 lookups: 900 in L1, 60 of the 100 L1 misses in L2, 30 of the 40 L2 misses in L3
            cache_pb2.CacheLevelStats(level=cache_pb2.CACHE_LEVEL_L1, hits=900, misses=100, hit_ratio=0.9),
            cache_pb2.CacheLevelStats(level=cache_pb2.CACHE_LEVEL_L2, hits=60, misses=40, hit_ratio=0.6),
            cache_pb2.CacheLevelStats(level=cache_pb2.CACHE_LEVEL_L3, hits=30, misses=10, hit_ratio=0.75),
        ]
        return cache_pb2.CacheStatsResponse(levels=levels, redis_available=True)


class FakeGateway(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, calls: Calls, shards: list[tuple[int, str]]) -> None:
        self.calls = calls
        self.shards = shards

    async def GetShardMap(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls.saw("GetShardMap", context)
        shard_map = gateway_pb2.ShardMap(
            epoch=3,
            shards=[gateway_pb2.Shard(shard_id=i, address=a) for i, a in self.shards],
            pins=[gateway_pb2.SymbolPin(symbol="ETHUSDT", shard_id=1)],
            hash_algorithm="rendezvous-blake2b64-v1",
            order_id_shard_shift=48,
        )
        return gateway_pb2.GetShardMapResponse(map=shard_map)


class FakeScaler(scaler_pb2_grpc.ScalerServiceServicer):
    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    async def ListReplicas(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls.saw("ListReplicas", context)
        replica = scaler_pb2.Replica(
            service="marketdata",
            replica_id="marketdata-2",
            address="127.0.0.1:50072",
            state=scaler_pb2.REPLICA_STATE_READY,
        )
        return scaler_pb2.ListReplicasResponse(replicas=[replica])

    async def GetDecisions(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls.saw("GetDecisions", context)
        assert request.limit > 0  # the dashboard asks for the newest few, not every retained one
        decision = scaler_pb2.ScalingDecision(
            decision_id=42,
            service="marketdata",
            action=scaler_pb2.SCALING_ACTION_SCALE_UP,
            current_replicas=1,
            desired_replicas=2,
            reason="orders_per_s 1400 vs target 1000: ceil(1 * 1400 / 1000) = 2",
        )
        return scaler_pb2.GetDecisionsResponse(decisions=[decision])


@dataclass
class Suite:
    calls: Calls
    shards: list[FakeExecution]
    servers: list[RunningServer]
    marketdata: MarketDataEngine
    addresses: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _serve(full_name: str, add: Any) -> RunningServer:
    return await create_server(
        "127.0.0.1:0", [ServiceBinding(full_name, add)], auth=ServiceAuthInterceptor(SECRET)
    )


async def _start_suite(*, scaler: bool) -> Suite:
    calls = Calls()
    shards = [FakeExecution(calls, 0), FakeExecution(calls, 1)]
    servers = []
    shard_addresses = []
    for shard in shards:
        server = await _serve(
            "hftgate.v1.ExecutionService",
            lambda s, shard=shard: execution_pb2_grpc.add_ExecutionServiceServicer_to_server(shard, s),
        )
        servers.append(server)
        shard_addresses.append((shard.shard_id, f"127.0.0.1:{server.port}"))
    cache = await _serve(
        "hftgate.v1.CacheService",
        lambda s: cache_pb2_grpc.add_CacheServiceServicer_to_server(FakeCache(calls), s),
    )
    gateway = await _serve(
        "hftgate.v1.GatewayService",
        lambda s: gateway_pb2_grpc.add_GatewayServiceServicer_to_server(
            FakeGateway(calls, shard_addresses), s
        ),
    )
    servers += [cache, gateway]
    engine = MarketDataEngine(MarketDataConfig(port=0))
    for venue, symbol, bid, ask in (
        ("binance-spot", "BTCUSDT", 61_000.5, 61_001.0),
        ("binance-usdm", "ETHUSDT", 2_500.25, 2_500.5),
    ):
        assert engine.on_quote(venue, symbol, T0_NS, T0_NS, 1, bid, 1.0, ask, 2.0) == 0
    marketdata = await start_marketdata(MarketDataConfig(port=0), engine)
    servers.append(marketdata)
    if scaler:
        scaler_server = await _serve(
            "hftgate.v1.ScalerService",
            lambda s: scaler_pb2_grpc.add_ScalerServiceServicer_to_server(FakeScaler(calls), s),
        )
        servers.append(scaler_server)
        scaler_address = f"127.0.0.1:{scaler_server.port}"
    else:
        scaler_address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    addresses = {
        "gateway": f"127.0.0.1:{gateway.port}",
        "execution": shard_addresses[0][1],
        "marketdata": f"127.0.0.1:{marketdata.port}",
        "cache": f"127.0.0.1:{cache.port}",
        "scaler": scaler_address,
    }
    return Suite(calls, shards, servers, engine, addresses)


@pytest.fixture
async def suite() -> AsyncIterator[Suite]:
    running = await _start_suite(scaler=True)
    yield running
    for server in running.servers:
        await server.server.stop(0)


@pytest.fixture
async def suite_without_scaler() -> AsyncIterator[Suite]:
    running = await _start_suite(scaler=False)
    yield running
    for server in running.servers:
        await server.server.stop(0)


def _poller(suite: Suite, principal: str = ADMIN) -> Poller:
    config = DashboardConfig(addresses=suite.addresses, call_timeout_ms=2000)
    return Poller(config, SECRET.service_credentials(principal))


async def test_state_shows_every_panel_with_orders_per_s_from_successive_samples(suite: Suite) -> None:
    poller = _poller(suite)
    try:
        first = await poller.poll()
        for shard, received in zip(suite.shards, (600, 350), strict=True):
            shard.orders_received = received
            shard.collected_ns = T0_NS + 2 * 10**9  # 2 s after the first sample
        second = await poller.poll()
    finally:
        await poller.close()

    assert {s["name"]: s["status"] for s in second["services"]} == dict.fromkeys(suite.addresses, "SERVING")
    assert first["execution"]["orders_per_s"] is None  # one sample is no rate
    execution = second["execution"]
    assert [s["orders_per_s"] for s in execution["shards"]] == [250.0, 125.0]  # (600-100)/2, (350-100)/2
    assert execution["orders_per_s"] == 375.0
    assert execution["open_orders"] == 14
    assert execution["orders_received"] == 950
    shard0 = execution["shards"][0]
    assert (shard0["shard_id"], shard0["p50_ms"], shard0["p99_ms"]) == (0, 1.25, 4.5)

    marketdata = second["marketdata"]
    assert marketdata["symbols"] == 2
    assert [(t["venue"], t["symbol"], t["bid"], t["ask"]) for t in marketdata["top"]] == [
        ("binance-spot", "BTCUSDT", 61_000.5, 61_001.0),
        ("binance-usdm", "ETHUSDT", 2_500.25, 2_500.5),
    ]
    cache = second["cache"]
    assert cache["hit_ratio"] == 0.99  # (900 + 60 + 30) / 1,000 lookups
    assert [lv["level"] for lv in cache["levels"]] == ["CACHE_LEVEL_L1", "CACHE_LEVEL_L2", "CACHE_LEVEL_L3"]
    gateway = second["gateway"]
    assert gateway["epoch"] == 3
    assert [s["shard_id"] for s in gateway["shards"]] == [0, 1]
    assert gateway["pins"] == [{"symbol": "ETHUSDT", "shard_id": 1}]
    scaler = second["scaler"]
    assert scaler["available"] is True
    assert scaler["replicas"][0]["state"] == "REPLICA_STATE_READY"
    assert scaler["decisions"][0]["action"] == "SCALING_ACTION_SCALE_UP"
    assert scaler["decisions"][0]["reason"].startswith("orders_per_s 1400")
    json.dumps(second)  # JSON-ready as served
    # Every call went out as the admin principal.
    assert suite.calls.principals and all(p == {ADMIN} for p in suite.calls.principals.values())


async def test_no_scaler_state_when_the_scaler_does_not_answer(suite_without_scaler: Suite) -> None:
    poller = _poller(suite_without_scaler)
    try:
        state = await poller.poll()
    finally:
        await poller.close()
    scaler = state["scaler"]
    assert scaler["available"] is False
    assert scaler["error"].startswith("UNAVAILABLE")
    assert (scaler["replicas"], scaler["decisions"]) == ([], [])
    health = {s["name"]: s["status"] for s in state["services"]}
    assert health["scaler"] == "UNREACHABLE"
    assert health["execution"] == "SERVING"
    assert state["execution"]["shards"][0]["available"] is True  # the rest of the suite still shows


async def test_shard_restart_gives_no_rate_rather_than_a_negative_one(suite: Suite) -> None:
    poller = _poller(suite)
    try:
        await poller.poll()
        suite.shards[0].orders_received = 5  # restarted: counters from zero
        suite.shards[0].collected_ns = T0_NS + 10**9
        state = await poller.poll()
    finally:
        await poller.close()
    assert state["execution"]["shards"][0]["orders_per_s"] is None


async def test_forged_principal_is_refused_and_the_panels_say_so(suite: Suite) -> None:
    from hftgate.security import ClientCredentials, SuiteSecret

    wrong = SuiteSecret(b"x" * 40).service_credentials(ADMIN)
    poller = Poller(DashboardConfig(addresses=suite.addresses), ClientCredentials(wrong.metadata, None))
    try:
        state = await poller.poll()
    finally:
        await poller.close()
    assert state["cache"]["error"].startswith("UNAUTHENTICATED")
    assert state["gateway"]["error"].startswith("UNAUTHENTICATED")
    assert state["scaler"]["available"] is False
    assert all(s["status"] == "SERVING" for s in state["services"])  # health stays open
    assert "Traceback" not in json.dumps(state)


async def test_gateway_down_falls_back_to_the_configured_shard(suite: Suite) -> None:
    addresses = {**suite.addresses, "gateway": f"127.0.0.1:{_free_port()}"}
    poller = Poller(
        DashboardConfig(addresses=addresses, call_timeout_ms=2000), SECRET.service_credentials(ADMIN)
    )
    try:
        state = await poller.poll()
    finally:
        await poller.close()
    assert state["gateway"]["available"] is False
    assert [s["address"] for s in state["execution"]["shards"]] == [suite.addresses["execution"]]
    assert state["execution"]["shards"][0]["open_orders"] == 7


def test_config_reads_the_ports_hftgate_up_uses() -> None:
    config = DashboardConfig.from_env(
        {"HFTGATE_CACHE_PORT": "6000", "HFTGATE_DASHBOARD_SCALER_ADDRESS": "10.0.0.5:7000"}, http_port=9999
    )
    assert config.addresses == {
        "gateway": "127.0.0.1:50050",
        "execution": "127.0.0.1:50051",
        "marketdata": "127.0.0.1:50052",
        "cache": "127.0.0.1:6000",
        "scaler": "10.0.0.5:7000",
    }
    assert (config.http_host, config.http_port) == ("127.0.0.1", 9999)


# --- the HTTP server, in threads beside the test's event loop -------------------------------------


@dataclass
class Served:
    dashboard: Dashboard
    suite: Suite

    def get(self, path: str, method: str = "GET") -> tuple[int, str, bytes]:
        request = urllib.request.Request(self.dashboard.url.rstrip("/") + path, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as reply:
                return reply.status, reply.headers["Content-Type"], reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers["Content-Type"], error.read()


def _serve_dashboard(suite: Suite) -> Dashboard:
    config = DashboardConfig(
        addresses=suite.addresses, http_port=0, poll_interval_ms=200, call_timeout_ms=2000
    )
    dashboard = Dashboard(config, Poller(config, SECRET.service_credentials(ADMIN)))
    dashboard.start()
    return dashboard


async def _wait_for_state(served: Served, timeout_s: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status, _, body = await asyncio.to_thread(served.get, "/api/state")
        if status == 200:
            return dict(json.loads(body))
        await asyncio.sleep(0.1)
    raise AssertionError("no /api/state within the timeout")


@pytest.fixture
async def served(suite_without_scaler: Suite) -> AsyncIterator[Served]:
    dashboard = _serve_dashboard(suite_without_scaler)
    yield Served(dashboard, suite_without_scaler)
    await asyncio.to_thread(dashboard.stop)


async def test_http_serves_state_page_and_precise_errors(served: Served) -> None:
    state = await _wait_for_state(served)
    assert state["scaler"]["available"] is False
    assert state["marketdata"]["symbols"] == 2
    status, content_type, body = await asyncio.to_thread(served.get, "/")
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert b'id="panel-scaler"' in body
    assert b"http://" not in body and b"https://" not in body  # no CDN: the page loads nothing else
    status, content_type, body = await asyncio.to_thread(served.get, "/etc/passwd")
    assert (status, content_type) == (404, "application/json")
    assert json.loads(body) == {"error": "no such path: /etc/passwd"}
    status, _, body = await asyncio.to_thread(served.get, "/api/state", "POST")
    assert status == 405 and json.loads(body) == {"error": "method POST not allowed"}
    assert served.dashboard.url.startswith("http://127.0.0.1:")


async def test_requests_for_another_host_name_are_refused(served: Served) -> None:
    await _wait_for_state(served)

    def get_as(host: str) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", served.dashboard.port), timeout=5) as conn:
            conn.sendall(f"GET /api/state HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
        head, _, body = reply.partition(b"\r\n\r\n")
        return int(head.split()[1]), body

    status, body = await asyncio.to_thread(get_as, f"evil.example:{served.dashboard.port}")
    assert status == 403
    assert json.loads(body) == {"error": f"host 'evil.example:{served.dashboard.port}' not allowed"}
    status, body = await asyncio.to_thread(get_as, f"localhost:{served.dashboard.port}")
    assert status == 200 and "scaler" in json.loads(body)


class StuckPoller(Poller):
    """A poller whose first poll never finishes (a suite that hangs)."""

    async def poll(self) -> dict[str, Any]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_state_is_503_with_a_message_before_the_first_poll_and_stop_cancels_it(suite: Suite) -> None:
    config = DashboardConfig(addresses=suite.addresses, http_port=0)
    dashboard = Dashboard(config, StuckPoller(config, SECRET.service_credentials(ADMIN)))
    dashboard.start()
    try:
        status, _, body = await asyncio.to_thread(Served(dashboard, suite).get, "/api/state")
        assert status == 503
        assert json.loads(body) == {"error": "first poll of the suite not finished"}
    finally:
        started = time.monotonic()
        await asyncio.to_thread(dashboard.stop)
    assert time.monotonic() - started < 3  # the stuck poll was cancelled, not waited out
    assert not any(t.is_alive() for t in dashboard._threads)


def test_port_in_use_is_a_clear_cli_error() -> None:
    from typer.testing import CliRunner

    from hftgate.cli import app

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = CliRunner().invoke(app, ["dashboard", "--port", str(port)])
    assert result.exit_code == 2
    assert f"cannot serve on 127.0.0.1:{port}" in result.output
    assert "Traceback" not in result.output


# --- a real headless Chromium ---------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _chromium_args(chromium: str, profile: Path) -> list[str]:
    return [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=3000",  # lets the page fetch /api/state and render before the dump
    ]


@pytest.fixture
def artefacts() -> Iterator[Path]:
    folder = Path(os.environ.get("HFTGATE_TEST_ARTEFACTS", "build/test-artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    yield folder


async def _rendered_dom(chromium: str, served: Served, tmp_path: Path) -> str:
    """The page's DOM after its script fetched /api/state and rendered it."""
    dump = await asyncio.to_thread(
        subprocess.run,
        [*_chromium_args(chromium, tmp_path / "profile"), "--dump-dom", served.dashboard.url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dump.returncode == 0, dump.stderr[-2000:]
    return dump.stdout


@pytest.fixture
async def served_with_scaler(suite: Suite) -> AsyncIterator[Served]:
    dashboard = _serve_dashboard(suite)
    yield Served(dashboard, suite)
    await asyncio.to_thread(dashboard.stop)


async def test_chromium_fills_the_scaler_panel_when_the_scaler_answers(
    served_with_scaler: Served, tmp_path: Path
) -> None:
    chromium = _chromium()
    await _wait_for_state(served_with_scaler)
    dom = await _rendered_dom(chromium, served_with_scaler, tmp_path)
    assert 'id="no-scaler"' not in dom
    assert '<div class="figure" id="scaler-replicas"><b>1</b>' in dom
    assert "<td>marketdata-2</td><td>127.0.0.1:50072</td><td>READY</td>" in dom
    assert "<td>42</td><td>marketdata</td><td>SCALE_UP</td><td>1 → 2</td>" in dom
    assert "ceil(1 * 1400 / 1000) = 2" in dom
    assert "<td>L1</td><td>900</td><td>100</td><td>90.0%</td>" in dom


async def test_chromium_renders_live_panels_and_no_scaler(
    served: Served, tmp_path: Path, artefacts: Path
) -> None:
    chromium = _chromium()
    await _wait_for_state(served)
    for shard, received in zip(
        served.suite.shards, (2_100, 1_100), strict=True
    ):  # 2,000 + 1,000 orders in 1 s
        shard.orders_received = received
        shard.collected_ns = T0_NS + 10**9
    deadline = time.monotonic() + 10
    while (await _wait_for_state(served))["execution"]["orders_per_s"] is None:
        assert time.monotonic() < deadline, "the dashboard never computed orders/s"
        await asyncio.sleep(0.1)

    dom = await _rendered_dom(chromium, served, tmp_path)
    for panel in ("panel-services", "panel-execution", "panel-marketdata", "panel-cache", "panel-gateway"):
        assert f'id="{panel}"' in dom
    assert '<p class="note" id="no-scaler">no scaler</p>' in dom
    assert '<div class="figure" id="orders-per-s"><b>3,000</b>' in dom  # (2,000 + 1,000) / 1 s
    assert '<div class="figure" id="cache-hit-ratio"><b>99.0%</b>' in dom
    assert '<div class="figure" id="md-symbols"><b>2</b>' in dom
    assert "<td>BTCUSDT</td><td>61,000.5</td><td>61,001</td>" in dom
    assert '<div class="figure" id="shard-map-epoch"><b>3</b>' in dom
    assert '<span class="SERVING" title="">SERVING</span>' in dom
    assert '<span class="UNREACHABLE"' in dom  # the scaler's health
    assert "waiting for the first sample" not in dom  # the script ran and rendered a sample

    screenshot = artefacts / "dashboard.png"
    screenshot.unlink(missing_ok=True)
    shot = await asyncio.to_thread(
        subprocess.run,
        [
            *_chromium_args(chromium, tmp_path / "profile-shot"),
            f"--screenshot={screenshot.resolve()}",
            "--window-size=1400,900",
            served.dashboard.url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shot.returncode == 0, shot.stderr[-2000:]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_a_suite_secret_the_cli_says_where_it_looked_and_makes_none(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hftgate.cli import app

    env = {"HFTGATE_SUITE_SECRET": "", "HFTGATE_STATE_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["dashboard", "--port", "0"], env=env)
    assert result.exit_code == 1
    assert f"no suite secret at {tmp_path / 'secrets' / 'suite.secret'}" in result.output
    assert not (tmp_path / "secrets").exists()
