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
        self.snapshots_taken = 2 + shard_id

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
            snapshots_taken=self.snapshots_taken,
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
    assert [s["snapshots_taken"] for s in execution["shards"]] == [2, 3]
    assert execution["snapshots_taken"] == 5
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


# --- server-sent events ---------------------------------------------------------------------------


def _read_events(port: int, count: int, timeout_s: float = 10) -> list[tuple[str, Any]]:
    """The first ``count`` events of /api/events, as (event name, decoded data)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as conn:
        conn.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            buffer += conn.recv(65536)
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Type: text/event-stream" in head
        events: list[tuple[str, Any]] = []
        while len(events) < count:
            while b"\n\n" not in buffer:
                chunk = conn.recv(65536)
                assert chunk, "the event stream closed"
                buffer += chunk
            block, _, buffer = buffer.partition(b"\n\n")
            fields = dict(line.split(": ", 1) for line in block.decode().split("\n") if ": " in line)
            if "event" in fields:
                events.append((fields["event"], json.loads(fields["data"])))
    return events


async def test_events_push_the_history_then_every_sample(served: Served) -> None:
    await _wait_for_state(served)
    events = await asyncio.to_thread(_read_events, served.dashboard.port, 4)
    names = [name for name, _ in events]
    assert names[0] == "history" and set(names[1:]) == {"state"}
    history = events[0][1]
    assert history and all("t" in point and "p99_ms" in point for point in history)
    states = [data for name, data in events[1:]]
    # One sample per poll (200 ms here), each newer than the one before.
    times = [s["collected_ms"] for s in states]
    assert times == sorted(times) and len(set(times[1:])) == len(times) - 1
    assert states[-1]["series"]["t"] == states[-1]["collected_ms"]
    assert states[-1]["series"]["venue binance-spot"] is not None or len(states) < 3
    # Closing the stream frees its slot.
    deadline = time.monotonic() + 5
    while served.dashboard.event_streams:
        assert time.monotonic() < deadline, "the closed event stream still holds its slot"
        await asyncio.sleep(0.05)


async def test_event_streams_are_bounded_with_a_message(served: Served, monkeypatch: Any) -> None:
    from hftgate.dashboard import server

    await _wait_for_state(served)
    monkeypatch.setattr(server, "MAX_EVENT_STREAMS", 1)
    port = served.dashboard.port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as first:
        first.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        assert first.recv(100).startswith(b"HTTP/1.1 200 OK")
        status, _, body = await asyncio.to_thread(served.get, "/api/events")
    assert status == 503
    assert json.loads(body) == {"error": "too many event streams (at most 1)"}


async def test_page_scripts_are_served_from_the_package_with_a_strict_policy(served: Served) -> None:
    for path in ("/static/chart.js", "/static/app.js"):
        status, content_type, body = await asyncio.to_thread(served.get, path)
        assert (status, content_type) == (200, "text/javascript; charset=utf-8")
        assert b"http://" not in body and b"https://" not in body  # nothing from elsewhere
    status, _, body = await asyncio.to_thread(served.get, "/")
    assert b'<script src="/static/chart.js"' in body and b"<script>" not in body  # no inline script
    request = urllib.request.Request(served.dashboard.url)
    with urllib.request.urlopen(request, timeout=5) as reply:
        assert reply.headers["Content-Security-Policy"].startswith("default-src 'self'")


# --- a real headless Chromium, driven over the DevTools protocol ----------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    message = "chromium is not installed (apt-get install -y chromium; .ci/run installs it)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol (CDP) on a websocket.

    The page stays open, so its event stream and charts run as in a user's browser (a
    ``--dump-dom`` run would wait forever on the open stream)."""

    def __init__(self, chromium: str, profile: Path, size: tuple[int, int] = (1400, 1900)) -> None:
        import websocket  # websocket-client, a dependency of the kubernetes client

        self.process = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        active = profile / "DevToolsActivePort"  # Chromium writes its debugging port here
        deadline = time.monotonic() + 60
        while not (active.exists() and len(active.read_text().split()) >= 2):
            assert self.process.poll() is None, f"chromium exited with code {self.process.returncode}"
            assert time.monotonic() < deadline, "chromium did not open its debugging port"
            time.sleep(0.1)
        port = active.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            page = next(t for t in json.load(reply) if t["type"] == "page")
        self._socket = websocket.create_connection(
            page["webSocketDebuggerUrl"], suppress_origin=True, timeout=30
        )
        self._next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        self._socket.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:  # events (no id) are skipped
            message = json.loads(self._socket.recv())
            if message.get("id") == self._next_id:
                assert "error" not in message, message
                return dict(message["result"])

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 30) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            assert time.monotonic() < deadline, f"the page never satisfied: {expression}"
            time.sleep(0.2)

    def screenshot(self, path: Path) -> Path:
        import base64

        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        self._socket.close()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    opened = Browser(_chromium(), tmp_path / "chromium-profile")
    yield opened
    opened.close()


@pytest.fixture
def artefacts() -> Iterator[Path]:
    folder = Path(os.environ.get("HFTGATE_TEST_ARTEFACTS", "build/test-artefacts"))
    folder.mkdir(parents=True, exist_ok=True)
    yield folder


def _figure(browser: Browser, figure_id: str) -> float | None:
    """A figure's raw value (its data-value), None when the page shows none."""
    value = browser.evaluate(f"document.getElementById({figure_id!r})?.dataset.value ?? null")
    return None if value is None else float(value)


def _chart_points(browser: Browser) -> dict[str, int]:
    drawn = browser.evaluate(
        "Object.fromEntries([...document.querySelectorAll('canvas.chart')]"
        ".map(c => [c.id, Number(c.dataset.points || 0)]))"
    )
    return dict(drawn)


@pytest.fixture
async def served_with_scaler(suite: Suite) -> AsyncIterator[Served]:
    dashboard = _serve_dashboard(suite)
    yield Served(dashboard, suite)
    await asyncio.to_thread(dashboard.stop)


async def test_chromium_fills_the_scaler_panel_when_the_scaler_answers(
    served_with_scaler: Served, browser: Browser
) -> None:
    await _wait_for_state(served_with_scaler)
    await asyncio.to_thread(browser.call, "Page.navigate", url=served_with_scaler.dashboard.url)
    await asyncio.to_thread(browser.wait_for, "document.getElementById('scaler-replicas') !== null")
    html = await asyncio.to_thread(browser.evaluate, "document.body.innerHTML")
    assert 'id="no-scaler"' not in html
    assert '<div class="figure" id="scaler-replicas" data-value="1"><b>1</b>' in html
    assert "<td>marketdata-2</td><td>127.0.0.1:50072</td><td>READY</td>" in html
    assert "<td>42</td><td>marketdata</td><td>SCALE_UP</td><td>1 → 2</td>" in html
    assert "ceil(1 * 1400 / 1000) = 2" in html
    assert "<td>L1</td><td>900</td><td>100</td><td>90.0%</td>" in html
    assert _figure(browser, "scaler-replicas") == 1


async def test_chromium_renders_live_panels_and_no_scaler(served: Served, browser: Browser) -> None:
    await _wait_for_state(served)
    await asyncio.to_thread(browser.call, "Page.navigate", url=served.dashboard.url)
    await asyncio.to_thread(browser.wait_for, "document.getElementById('orders-received') !== null")
    for shard, received in zip(served.suite.shards, (2_100, 1_100), strict=True):  # 2,000 + 1,000 in 1 s
        shard.orders_received = received
        shard.collected_ns = T0_NS + 10**9
    # Pushed to the open page by the event stream: no reload.
    await asyncio.to_thread(
        browser.wait_for, "document.getElementById('orders-per-s')?.dataset.value === '3000'"
    )
    html = await asyncio.to_thread(browser.evaluate, "document.body.innerHTML")
    assert '<p class="note" id="no-scaler">no scaler</p>' in html
    assert '<div class="figure" id="orders-per-s" data-value="3000"><b>3,000</b>' in html
    assert '<div class="figure" id="cache-hit-ratio" data-value="0.99"><b>99.0%</b>' in html
    assert '<div class="figure" id="md-symbols" data-value="2"><b>2</b>' in html
    assert "<td>BTCUSDT</td><td>61,000.5</td><td>61,001</td>" in html
    assert '<div class="figure" id="shard-map-epoch" data-value="3"><b>3</b>' in html
    assert '<div class="figure" id="snapshots" data-value="5"><b>5</b>' in html  # shards 0 and 1: 2 + 3
    assert '<span class="SERVING" title="">SERVING</span>' in html
    assert '<span class="UNREACHABLE"' in html  # the scaler's health
    # Shard 1 owns the pinned ETHUSDT; market data's BTCUSDT goes where the hash puts it.
    assert "ETHUSDT" in await asyncio.to_thread(
        browser.evaluate, "document.querySelector('#panel-gateway tr:nth-child(3) .symbols').textContent"
    )
    assert "waiting for the first sample" not in html
    assert (await asyncio.to_thread(_chart_points, browser))["chart-cache"] > 0


# --- the real suite under load ----------------------------------------------------------------------

#: Stated tolerances of "the figures shown match the services' own GetStats". While the load runs, a
#: figure on the page is at most one poll plus its way to the page old, so the orders received it
#: shows may lag GetStats by what the load adds in LAG_S (at the flow's rate) and never lead it.
#: Once the load stops, the page must catch up within QUIESCE_S and then show every shard's figures
#: exactly (counters, and p50/p99/p99.9 to the microsecond the page rounds to): a percentile of a
#: histogram moves with each order, so comparing those under load would test the timing, not the page.
#: The cache's hit ratio moves with lookups the dashboard cannot see coming: within HIT_RATIO_TOLERANCE.
LAG_S = 3.0
QUIESCE_S = 15.0
LOAD_ORDERS_PER_S = 100.0
HIT_RATIO_TOLERANCE = 0.05


@pytest.fixture
def real_suite(tmp_path: Path) -> Iterator[dict[str, Any]]:
    from hftgate.supervisor import ALL_SERVICES, start_services, stop_services

    specs = [s for s in ALL_SERVICES if s.name != "scaler" and s.is_available()]
    if {s.name for s in specs} != {"cache", "marketdata", "execution", "gateway"}:
        pytest.skip("the suite's services are not all built")
    env = dict(os.environ)
    env["HFTGATE_STATE_DIR"] = str(tmp_path / "state")
    for spec in specs:
        env[spec.port_variable] = str(_free_port())
    env["HFTGATE_EXECUTION_1_PORT"] = str(_free_port())
    running = start_services(specs, env=env, startup_timeout_s=90, shards=2)
    try:
        yield {s.spec.label: s for s in running}
    finally:
        stop_services(running, grace_s=15)


async def _get_stats(addresses: list[str]) -> list[Any]:
    metadata = SECRET.service_credentials(ADMIN).metadata
    replies = []
    for address in addresses:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = execution_pb2_grpc.ExecutionServiceStub(channel)
            replies.append(
                await stub.GetStats(execution_pb2.GetStatsRequest(), metadata=metadata, timeout=10)
            )
    return replies


async def _settled_stats(addresses: list[str], timeout_s: float = QUIESCE_S) -> list[Any]:
    """GetStats of every shard once two readings a second apart agree (orders in flight landed)."""
    deadline = time.monotonic() + timeout_s
    before = await _get_stats(addresses)
    while True:
        await asyncio.sleep(1)
        after = await _get_stats(addresses)
        if [s.orders_received for s in after] == [s.orders_received for s in before]:
            return after
        assert time.monotonic() < deadline, "the shards kept receiving orders after the load stopped"
        before = after


async def test_chromium_shows_the_live_suite_under_load_as_its_get_stats_say(
    real_suite: dict[str, Any], browser: Browser, artefacts: Path
) -> None:
    from hftgate.demoflow import DemoFlow, DemoFlowConfig, DemoFlowThread

    gateway = real_suite["gateway"]
    shards = [real_suite["execution"].address, real_suite["execution-1"].address]
    flow = DemoFlowThread(DemoFlow(DemoFlowConfig(gateway.address, LOAD_ORDERS_PER_S)))
    flow.start()
    env = dict(gateway.env)
    config = DashboardConfig.from_env(
        {**env, "HFTGATE_EXECUTION_PORT": str(real_suite["execution"].port), "HFTGATE_SCALER_PORT": "1"},
        http_port=0,
    )
    dashboard = Dashboard(config, Poller.for_suite(config, env))
    dashboard.start()
    try:
        await asyncio.to_thread(browser.call, "Page.navigate", url=dashboard.url)
        # Live data: orders flowing, and every chart of the order path with points drawn.
        await asyncio.to_thread(
            browser.wait_for, "Number(document.getElementById('orders-per-s')?.dataset.value) > 0", 60
        )
        await asyncio.to_thread(
            browser.wait_for,
            "['chart-latency', 'chart-orders', 'chart-journal', 'chart-cache', 'chart-venues']"
            ".every(id => Number(document.getElementById(id).dataset.points) >= 3)",
            60,
        )
        # Through the gateway (a deadline missed on a loaded machine is the suite's business, not the page's).
        assert flow.flow.acked > 0, flow.flow.last_error

        shown_received = _figure(browser, "orders-received")
        shown_hit_ratio = _figure(browser, "cache-hit-ratio")
        shown_shards = _figure(browser, "shard-count")
        stats = await _get_stats(shards)
        async with grpc.aio.insecure_channel(real_suite["cache"].address) as channel:
            cache = await cache_pb2_grpc.CacheServiceStub(channel).Stats(
                cache_pb2.CacheStatsRequest(), metadata=SECRET.service_credentials(ADMIN).metadata, timeout=10
            )
        received = sum(s.orders_received for s in stats)
        assert shown_received is not None and 0 < shown_received <= received
        assert received - shown_received <= LAG_S * LOAD_ORDERS_PER_S, (shown_received, received)
        first = cache.levels[0]
        cache_ratio = sum(level.hits for level in cache.levels) / (first.hits + first.misses)
        assert shown_hit_ratio is not None and abs(shown_hit_ratio - cache_ratio) <= HIT_RATIO_TOLERANCE

        # The load stops: the page catches up with the services' own figures, exactly.
        flow.stop()
        stats = await _settled_stats(shards)
        received = sum(s.orders_received for s in stats)
        await asyncio.to_thread(
            browser.wait_for,
            f"Number(document.getElementById('orders-received')?.dataset.value) === {received}",
            QUIESCE_S,
        )
        recorded = [s.total_latency for s in stats if s.total_latency.count]
        for figure_id, field in (("p50-ms", "p50_ns"), ("p99-ms", "p99_ns"), ("p999-ms", "p99_9_ns")):
            worst = max(getattr(summary, field) for summary in recorded)
            assert _figure(browser, figure_id) == round(worst / 1e6, 3), figure_id
        assert _figure(browser, "open-orders") == sum(s.open_orders for s in stats)
        assert _figure(browser, "inputs-rejected") == sum(s.inputs_rejected for s in stats)
        assert shown_shards == 2
        # Each shard lists the demo symbol it owns (market data has seen both through the fills).
        symbols = await asyncio.to_thread(
            browser.evaluate,
            "[...document.querySelectorAll('#panel-gateway .symbols')].map(s => s.textContent)",
        )
        assert sorted(" ".join(symbols).split()) == ["BTCUSDT", "ETHUSDT"]
        assert await asyncio.to_thread(browser.evaluate, "document.getElementById('no-scaler') !== null")

        screenshot = (artefacts / "dashboard.png").resolve()
        await asyncio.to_thread(browser.screenshot, screenshot)
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"dashboard screenshot: {screenshot}")
    finally:
        flow.stop()
        await asyncio.to_thread(dashboard.stop)


def test_without_a_suite_secret_the_cli_says_where_it_looked_and_makes_none(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hftgate.cli import app

    env = {"HFTGATE_SUITE_SECRET": "", "HFTGATE_STATE_DIR": str(tmp_path)}
    result = CliRunner().invoke(app, ["dashboard", "--port", "0"], env=env)
    assert result.exit_code == 1
    assert f"no suite secret at {tmp_path / 'secrets' / 'suite.secret'}" in result.output
    assert not (tmp_path / "secrets").exists()


async def test_arbitrage_venue_rates_owned_symbols_and_suite_figures(suite: Suite) -> None:
    poller = _poller(suite)
    try:
        first = await poller.poll()
        # A cross-venue opportunity: usdm's bid above spot's ask (61,001) by far more than the fees.
        assert (
            suite.marketdata.on_quote("binance-usdm", "BTCUSDT", T0_NS, T0_NS, 2, 62_000, 1.0, 62_001, 1.0)
            == 0
        )
        deadline = time.monotonic() + 10
        while True:
            second = await poller.poll()
            if second["arbitrage"]["opened"]:
                break
            assert time.monotonic() < deadline, second["arbitrage"]
            await asyncio.sleep(0.1)
    finally:
        await poller.close()

    assert first["arbitrage"]["opened"] == 0
    arbitrage = second["arbitrage"]
    assert arbitrage["available"] and arbitrage["open_now"] == 1 and arbitrage["closed"] == 0
    event = arbitrage["recent"][0]
    assert (event["event"], event["kind"]) == ("opened", "CROSS_VENUE")
    assert (
        "buy binance-spot BTCUSDT @ 61001" in event["legs"]
        and "sell binance-usdm BTCUSDT @ 62000" in event["legs"]
    )
    assert arbitrage["best_open_edge_bps"] > 0
    assert second["series"]["arbitrage_open"] == 1

    venues = {v["venue"]: v for v in second["marketdata"]["venues"]}
    assert venues["binance-usdm"]["quotes"] == 2  # the seeded quote and the new one
    assert venues["binance-spot"]["ticks_per_s"] is not None  # a second sample gives a rate
    assert "venue binance-usdm" in second["series"]

    # Symbols by owner, from the gateway's map: ETHUSDT is pinned to shard 1.
    owned = {s["shard_id"]: s["symbols"] for s in second["gateway"]["shards"]}
    assert "ETHUSDT" in owned[1] and sorted(owned[0] + owned[1]) == ["BTCUSDT", "ETHUSDT"]

    execution = second["execution"]
    assert (execution["p50_ms"], execution["p99_ms"]) == (1.25, 4.5)  # the worst shard's
    assert execution["inputs_rejected"] == 6
    assert execution["average_orders_per_s"] == 200.0  # 100 orders in each shard's first second
    assert second["series"]["p99_ms"] == 4.5 and second["series"]["hit_L1"] == 0.9


def test_arbitrage_watch_is_bounded_and_counts_opened_and_closed() -> None:
    from hftgate.dashboard.poller import MAX_OPEN_ARBITRAGE, MAX_RECENT_ARBITRAGE, ArbitrageWatch
    from hftgate.v1 import marketdata_pb2

    watch = ArbitrageWatch()
    for opportunity in range(MAX_OPEN_ARBITRAGE + 5):
        watch.on_event(
            marketdata_pb2.ArbitrageEvent(
                type=marketdata_pb2.ARBITRAGE_EVENT_TYPE_OPENED, opportunity_id=opportunity, edge_bps=1.5
            )
        )
    watch.on_event(
        marketdata_pb2.ArbitrageEvent(
            type=marketdata_pb2.ARBITRAGE_EVENT_TYPE_CLOSED, opportunity_id=7, lifetime_ns=2_500_000
        )
    )
    watch.connected = True
    state = watch.state()
    assert state["opened"] == MAX_OPEN_ARBITRAGE + 5 and state["closed"] == 1
    assert state["open_now"] == MAX_OPEN_ARBITRAGE - 1  # the oldest forgotten, then one closed
    assert len(state["recent"]) == MAX_RECENT_ARBITRAGE
    assert state["recent"][0] == {
        "opportunity_id": 7,
        "event": "closed",
        "kind": "UNSPECIFIED",
        "legs": "",
        "edge_bps": 0.0,
        "peak_edge_bps": 0.0,
        "lifetime_ms": 2.5,
    }
