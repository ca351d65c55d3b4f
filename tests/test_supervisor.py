"""`hftgate up` / `make run`: every built service starts as a plain process and reports SERVING."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hftgate.security import (
    SERVICE_TOKEN_METADATA,
    SecurityError,
    load_suite_secret,
    suite_client_tls,
)
from hftgate.shardmap import Shard, ShardMap, ShardMapError, ShardMapUnavailable
from hftgate.supervisor import (
    ALL_SERVICES,
    MAX_LOCAL_SHARDS,
    RunningService,
    ServiceSpec,
    available_services,
    execution_shard_env,
    prepare_suite_env,
    reference_url,
    shard_map_store,
    start_services,
    stop_services,
    store_shard_map,
    wait_until_serving,
    with_shards,
)
from services.cache.l3_sql import SqlStore
from services.cache.model import StoredEntry

# One RPC per service, for the bad-bytes and missing-credential checks on real processes.
PROBES: dict[str, str] = {
    "cache": "/hftgate.v1.CacheService/Get",
    "marketdata": "/hftgate.v1.MarketDataService/GetSnapshot",
    "execution": "/hftgate.v1.ExecutionService/GetOrder",
}


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free port not handed out before in this run: a port closed after the check can be
    given again by the kernel, and two services of one suite must never get the same one."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port found")


def submit_one_order_with_a_demo_key(
    address: str,
    channel_credentials: grpc.ChannelCredentials | None = None,
    client_order_id: str = "first-order",
) -> None:
    """What a new user does first: a limit order with a demo account's key is accepted durably."""
    import grpc

    from hftgate.v1 import common_pb2, execution_pb2, execution_pb2_grpc

    order = execution_pb2.NewOrder(
        client_order_id=client_order_id,
        symbol="BTCUSDT",
        side=common_pb2.SIDE_BUY,
        order_type=execution_pb2.ORDER_TYPE_LIMIT,
        time_in_force=execution_pb2.TIME_IN_FORCE_GTC,
        price_ticks=5_000_000,
        quantity_lots=100,
    )
    channel = (
        grpc.insecure_channel(address)
        if channel_credentials is None
        else grpc.secure_channel(address, channel_credentials)
    )
    with channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        reply = stub.SubmitOrder(
            execution_pb2.SubmitOrderRequest(order=order),
            metadata=(("x-api-key", "hftgate-demo-alice"),),
            timeout=10,
        )
        assert reply.ack.status == execution_pb2.ORDER_STATUS_NEW, reply
        assert reply.ack.durable
        with pytest.raises(grpc.RpcError) as missing_key:
            stub.SubmitOrder(execution_pb2.SubmitOrderRequest(order=order), timeout=10)
        assert missing_key.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_every_built_service_starts_serves_health_and_stops_cleanly(tmp_path: object) -> None:
    specs = available_services()
    if not specs:
        pytest.skip("no service is built yet")
    env = dict(os.environ)
    env["HFTGATE_STATE_DIR"] = str(tmp_path)
    for spec in specs:
        env[spec.port_variable] = str(free_port())
    running = start_services(specs, env=env, startup_timeout_s=60)
    try:
        assert [s.spec.name for s in running] == [s.name for s in specs]
        assert all(s.process.poll() is None for s in running)
        by_name = {s.spec.name: s for s in running}
        assert all(s.env["HFTGATE_PROFILE"] == "dev" for s in running)
        if "cache" in by_name and "marketdata" in by_name:
            # Market data verifies account keys through the cache.
            assert by_name["marketdata"].env["HFTGATE_MARKETDATA_CACHE_ADDRESS"] == by_name["cache"].address
        check_real_services_refuse_bad_bytes_and_missing_credentials(running)
        execution = by_name.get("execution")
        if execution is not None:
            submit_one_order_with_a_demo_key(execution.address)
        gateway = by_name.get("gateway")
        if gateway is not None and execution is not None:
            # The same first order through the front door, which routes it to the (only) shard.
            assert gateway.env["HFTGATE_GATEWAY_EXECUTION_SHARDS"] == f"0={execution.address}"
            submit_one_order_with_a_demo_key(gateway.address, client_order_id="first-order-via-gateway")
    finally:
        stop_services(running, grace_s=15)
    # SIGTERM is a graceful stop: every service drains and exits 0.
    assert [s.process.returncode for s in running] == [0] * len(running)


def test_with_shards_adds_numbered_execution_instances_in_place() -> None:
    specs = with_shards(ALL_SERVICES, 3)
    assert [s.label for s in specs] == [
        "cache",
        "marketdata",
        "execution",
        "execution-1",
        "execution-2",
        "gateway",
        "scaler",
    ]
    shards = [s for s in specs if s.name == "execution"]
    assert [s.default_port for s in shards] == [50051, 50061, 50071]
    assert [s.module for s in shards] == ["services.execution"] * 3
    # Each shard's port can be chosen apart; the service itself always reads HFTGATE_EXECUTION_PORT.
    assert [s.port_variable for s in shards] == [
        "HFTGATE_EXECUTION_PORT",
        "HFTGATE_EXECUTION_1_PORT",
        "HFTGATE_EXECUTION_2_PORT",
    ]
    assert {s.service_port_variable for s in shards} == {"HFTGATE_EXECUTION_PORT"}
    assert with_shards(ALL_SERVICES) == list(ALL_SERVICES)  # one shard: today's suite
    for bad in (0, MAX_LOCAL_SHARDS + 1):
        with pytest.raises(ValueError, match="shards must be"):
            with_shards(ALL_SERVICES, bad)


def test_a_second_shard_gets_its_id_its_own_state_the_shared_ledger_and_no_demo_data(tmp_path: Path) -> None:
    env = {"HFTGATE_STATE_DIR": str(tmp_path), "HFTGATE_EXECUTION_METRICS_PORT": "9100"}
    assert execution_shard_env(0, env) == {}  # shard 0 is today's single service
    second = execution_shard_env(1, env)
    assert second["HFTGATE_EXECUTION_SHARD_ID"] == "1"
    assert second["HFTGATE_EXECUTION_STATE_DIR"] == str(tmp_path / "execution-1")
    assert second["HFTGATE_EXECUTION_SEED_DEMO_DATA"] == "false"
    ledger = (tmp_path / "execution" / "ledger.sqlite3").resolve()
    assert second["HFTGATE_EXECUTION_LEDGER_DATABASE_URL"] == f"sqlite+aiosqlite:///{ledger}"
    assert second["HFTGATE_EXECUTION_METRICS_PORT"] == "9110"
    # What the operator configured is followed: a ledger URL is shared as it is, no metrics stays off.
    chosen = execution_shard_env(
        2,
        {
            "HFTGATE_STATE_DIR": str(tmp_path),
            "HFTGATE_EXECUTION_STATE_DIR": str(tmp_path / "x"),
            "HFTGATE_EXECUTION_LEDGER_DATABASE_URL": "postgresql+asyncpg://h@db/l",
        },
    )
    assert chosen["HFTGATE_EXECUTION_STATE_DIR"] == str(tmp_path / "x-2")
    assert "HFTGATE_EXECUTION_LEDGER_DATABASE_URL" not in chosen
    assert "HFTGATE_EXECUTION_METRICS_PORT" not in chosen


def test_the_stored_map_is_made_once_kept_and_replaced_when_the_shards_change(tmp_path: Path) -> None:
    env = {"HFTGATE_STATE_DIR": str(tmp_path)}
    two = [Shard(0, "127.0.0.1:50051"), Shard(1, "127.0.0.1:50061")]
    first = store_shard_map(env, two)
    assert (first.epoch, first.shard_ids) == (1, (0, 1))
    assert (tmp_path / "shardmap" / "shardmap.sqlite3").exists()  # where the shards and gateway look

    async def pin(symbol: str, shard_id: int) -> None:
        store = shard_map_store(env)
        await store.start()
        try:
            await store.update(lambda m: m.with_pin(symbol, shard_id))
        finally:
            await store.close()

    asyncio.run(pin("ETHUSDT", 0))
    asyncio.run(pin("ESZ4", 1))
    # The same shards again (a restart): the stored map stands, pins and epoch included.
    again = store_shard_map(env, list(reversed(two)))
    assert again.epoch == 3 and dict(again.pins) == {"ETHUSDT": 0, "ESZ4": 1}
    # `--shards 1` while shard 1 kept state (books, acknowledged orders): refused, saying how on.
    shard_1_state = tmp_path / "execution-1"
    (shard_1_state / "journal").mkdir(parents=True)
    with pytest.raises(
        ShardMapError, match=r"shard 1 \(127.0.0.1:50061, state in .*execution-1\)"
    ) as refused:
        store_shard_map(env, two[:1])
    assert "--shards N" in str(refused.value) and "hftgate move" in str(refused.value)
    assert store_shard_map(env, two).epoch == 3  # nothing was published
    # Its symbols moved off and its state removed: the next epoch names only shard 0; pins to it go.
    shard_1_state.joinpath("journal").rmdir()
    shard_1_state.rmdir()
    one = store_shard_map(env, two[:1])
    assert one.epoch == 4 and one.shard_ids == (0,) and dict(one.pins) == {"ETHUSDT": 0}
    # A store that cannot be opened says which.
    with pytest.raises(ShardMapUnavailable, match="shard map"):
        store_shard_map({"HFTGATE_SHARD_MAP_DATABASE_URL": "nosuchdriver://x/y"}, two)


def test_more_shards_leave_every_book_on_the_shard_that_holds_it(tmp_path: Path) -> None:
    """`--shards 2` after a run with one shard: the symbols the new hash gives shard 1 have their
    books on shard 0, so they are pinned there (a new shard gets books only by a move)."""
    env = {"HFTGATE_STATE_DIR": str(tmp_path)}
    one, two = [Shard(0, "127.0.0.1:50051")], [Shard(0, "127.0.0.1:50051"), Shard(1, "127.0.0.1:50061")]
    assert store_shard_map(env, one).epoch == 1
    symbols = ["BTCUSDT", "ETHUSDT", "ESZ4", "SOLUSDT", "XRPUSDT"]

    async def seed_reference() -> None:
        store = SqlStore(reference_url(env), table_name="cache_entries")
        await store.start()
        try:
            await store.put_many([(f"instrument:{s}", StoredEntry(b"{}", 0)) for s in symbols])
        finally:
            await store.close()

    (tmp_path / "cache").mkdir()
    asyncio.run(seed_reference())
    (tmp_path / "execution" / "journal").mkdir(parents=True)  # shard 0 kept state
    grown = store_shard_map(env, two)
    hashed = ShardMap(grown.epoch, grown.shards)
    moved_by_hash = [s for s in symbols if hashed.owner(s).shard_id == 1]
    assert moved_by_hash, "the test needs symbols the hash gives shard 1"
    assert dict(grown.pins) == {s: 0 for s in moved_by_hash}
    assert all(grown.owner(s).shard_id == 0 for s in symbols)
    # With no state anywhere (a fresh suite), the hash decides.
    fresh = {"HFTGATE_STATE_DIR": str(tmp_path / "fresh")}
    assert store_shard_map(fresh, one).epoch == 1
    assert dict(store_shard_map(fresh, two).pins) == {}


_RECORD_SIGTERM = """
import os, signal, sys, time
def stopped(*_):
    with open(sys.argv[1], "a") as out:
        out.write(sys.argv[2] + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stopped)
open(sys.argv[1] + "." + sys.argv[2], "w").close()
time.sleep(60)
"""


def test_services_stop_in_dependency_waves(tmp_path: Path) -> None:
    """The gateway first, the cache last, each wave once the one before has exited: no service is
    left calling or reporting to one already gone (the warnings Ctrl-C used to print)."""
    log = tmp_path / "stopped.txt"
    names = ["cache", "marketdata", "execution", "execution", "gateway", "scaler"]  # start order
    running = []
    for number, name in enumerate(names):
        label = f"{name}-{number}"
        process = subprocess.Popen([sys.executable, "-c", _RECORD_SIGTERM, str(log), label])
        running.append(RunningService(spec=ServiceSpec(name, 1), port=1, process=process))
    for number, name in enumerate(names):  # each has its handler in place
        deadline = time.monotonic() + 10
        while not (tmp_path / f"stopped.txt.{name}-{number}").exists():
            assert time.monotonic() < deadline
            time.sleep(0.01)
    stop_services(running, grace_s=10)
    order = [line.split("-")[0] for line in log.read_text().split()]
    assert order[0] == "gateway" and order[-1] == "cache"
    assert order[1:3] == ["execution", "execution"] and order[3:5] == ["marketdata", "scaler"]


_CHILD_OF_SUPERVISOR = """
import os, signal, subprocess, sys
env = {**os.environ, "HFTGATE_SUPERVISOR_PID": str(os.getpid())}
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], env=env, start_new_session=True)
print(child.pid, flush=True)
sys.stdin.readline()  # until the test says so: then this "supervisor" exits without stopping it
"""
_SERVICE = """
import signal, sys, time
from hftgate.grpcserver import _stop_with_supervisor
def stopped(*_):
    open(sys.argv[1], "w").write("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, stopped)
_stop_with_supervisor()
open(sys.argv[1] + ".ready", "w").close()
time.sleep(60)
"""


def test_a_service_drains_when_its_supervisor_dies_without_stopping_it(tmp_path: Path) -> None:
    marker = tmp_path / "service.txt"
    supervisor = subprocess.Popen(
        [sys.executable, "-c", _CHILD_OF_SUPERVISOR, _SERVICE, str(marker)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert supervisor.stdout is not None and supervisor.stdin is not None
    service_pid = int(supervisor.stdout.readline())
    try:
        deadline = time.monotonic() + 30
        while not marker.with_name("service.txt.ready").exists():
            assert time.monotonic() < deadline, "the service never started"
            time.sleep(0.01)
        assert os.getsid(service_pid) != os.getsid(0)  # out of reach of the terminal's Ctrl-C
        supervisor.stdin.close()  # the supervisor exits; the service must be told
        supervisor.wait(10)
        while not (marker.exists() and marker.read_text()):  # (created, then written: wait for both)
            assert time.monotonic() < deadline, "the service outlived its supervisor"
            time.sleep(0.01)
        assert marker.read_text() == "SIGTERM"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(service_pid, signal.SIGKILL)


def check_real_services_refuse_bad_bytes_and_missing_credentials(running: list[RunningService]) -> None:
    """Every running service: malformed bytes with a valid token answer INVALID_ARGUMENT (never
    UNKNOWN), and a call with no credential answers UNAUTHENTICATED."""
    token = ((SERVICE_TOKEN_METADATA, load_suite_secret().token_for("admin")),)
    for service in running:
        method = PROBES.get(service.spec.name)
        if method is None:
            continue
        with grpc.insecure_channel(service.address) as channel:
            call = channel.unary_unary(method)
            with pytest.raises(grpc.RpcError) as malformed:
                call(b"\xff", metadata=token, timeout=10)
            assert malformed.value.code() == grpc.StatusCode.INVALID_ARGUMENT, service.spec.name
            assert (malformed.value.details() or "").startswith("request is not a valid hftgate.v1.")
            with pytest.raises(grpc.RpcError) as anonymous:
                call(b"", timeout=10)
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED, service.spec.name


def test_prepare_suite_env_makes_the_secret_once_and_defaults_to_the_dev_profile(tmp_path: Path) -> None:
    env = {"HFTGATE_STATE_DIR": str(tmp_path), "PATH": os.environ.get("PATH", "")}
    prepared = prepare_suite_env(env)
    secret_path = Path(prepared["HFTGATE_SUITE_SECRET_FILE"])
    assert secret_path == (tmp_path / "secrets" / "suite.secret").resolve()
    assert stat.S_IMODE(secret_path.stat().st_mode) == 0o600
    assert prepared["HFTGATE_PROFILE"] == "dev"
    assert "HFTGATE_TLS_DIR" not in prepared
    assert env == {"HFTGATE_STATE_DIR": str(tmp_path), "PATH": os.environ.get("PATH", "")}  # not changed
    # A second start keeps the same secret: tokens issued before stay valid.
    again = prepare_suite_env(env)
    first = load_suite_secret(prepared).token_for("execution")
    assert load_suite_secret(again).token_for("execution") == first
    # What the operator set is kept.
    production = prepare_suite_env({**env, "HFTGATE_PROFILE": "production"})
    assert production["HFTGATE_PROFILE"] == "production"
    given = prepare_suite_env({**env, "HFTGATE_SUITE_SECRET": "s" * 40})
    assert "HFTGATE_SUITE_SECRET_FILE" not in given
    with pytest.raises(SecurityError):
        prepare_suite_env({**env, "HFTGATE_PROFILE": "staging"})


def test_prepare_suite_env_with_tls_makes_the_suite_ca_once(tmp_path: Path) -> None:
    env = {"HFTGATE_STATE_DIR": str(tmp_path), "HFTGATE_SUITE_SECRET": "t" * 40}
    prepared = prepare_suite_env(env, tls=True)
    folder = Path(prepared["HFTGATE_TLS_DIR"])
    assert folder == (tmp_path / "tls").resolve()
    for name in ("ca", "cache", "marketdata", "execution", "admin", "feed"):
        assert (folder / f"{name}.pem").exists(), name
    ca = (folder / "ca.pem").read_bytes()
    prepare_suite_env(env, tls=True)
    assert (folder / "ca.pem").read_bytes() == ca, "a second start keeps the suite CA"


async def test_wait_until_serving_uses_the_suite_ca_when_tls_is_on(tmp_path: Path) -> None:
    import asyncio

    from hftgate.grpcserver import create_server
    from hftgate.security import certs_init, suite_server_tls

    certs_init(tmp_path)
    env = {"HFTGATE_TLS_DIR": str(tmp_path)}
    running = await create_server("127.0.0.1:0", [], tls=suite_server_tls("cache", env))
    address = f"127.0.0.1:{running.port}"
    try:
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(
            None, wait_until_serving, address, 10.0, suite_client_tls("admin", env)
        )
        # A plaintext probe of a TLS server never sees SERVING.
        assert not await loop.run_in_executor(None, wait_until_serving, address, 1.0, None)
    finally:
        await running.stop(0)


def test_the_suite_starts_over_tls_and_takes_the_first_order(tmp_path: Path) -> None:
    specs = available_services()
    if not specs:
        pytest.skip("no service is built yet")
    env = dict(os.environ)
    env["HFTGATE_STATE_DIR"] = str(tmp_path)
    for spec in specs:
        env[spec.port_variable] = str(free_port())
    running = start_services(specs, env=env, startup_timeout_s=60, tls=True)
    try:
        tls = suite_client_tls("admin", running[0].env)
        assert tls is not None and Path(running[0].env["HFTGATE_TLS_DIR"]) == (tmp_path / "tls").resolve()
        for service in running:
            # TLS only: plaintext is not answered.
            with grpc.insecure_channel(service.address) as plain, pytest.raises(grpc.RpcError):
                health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=2)
        execution = next((s for s in running if s.spec.name == "execution"), None)
        if execution is not None:
            ca_only = grpc.ssl_channel_credentials(root_certificates=tls.ca_path.read_bytes())
            submit_one_order_with_a_demo_key(execution.address, ca_only)
    finally:
        stop_services(running, grace_s=15)
    assert [s.process.returncode for s in running] == [0] * len(running)


# --- `hftgate up`: two execution shards behind the gateway -------------------------------------
@pytest.fixture(scope="module")
def two_shards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RunningService]]:
    """The suite as `hftgate up` starts it (two shards), on free ports, by label."""
    specs = [s for s in available_services() if s.name in ("cache", "marketdata", "execution", "gateway")]
    if {s.name for s in specs} != {"cache", "marketdata", "execution", "gateway"}:
        pytest.skip("the sharded suite needs cache, marketdata, execution and the gateway")
    state_dir = tmp_path_factory.mktemp("two-shards")
    env = dict(os.environ)
    env.update(
        HFTGATE_STATE_DIR=str(state_dir),
        # A shared 2-CPU test machine: no pinned or busy-polling threads.
        HFTGATE_EXECUTION_LOOP_CPUS="off",
        HFTGATE_EXECUTION_JOURNAL_WRITER_CPUS="off",
        HFTGATE_EXECUTION_JOURNAL_ACK_POLL_US="0",
    )
    for spec in with_shards(specs, 2):
        env[spec.port_variable] = str(free_port())
    running = start_services(specs, env=env, startup_timeout_s=90, shards=2)
    try:
        yield {s.spec.label: s for s in running}
    finally:
        stop_services(running, grace_s=15)
    assert [s.process.returncode for s in running] == [0] * len(running), [
        (s.spec.label, s.process.returncode) for s in running
    ]


def _stored_map(env: dict[str, str]) -> ShardMap:
    async def load() -> ShardMap:
        store = shard_map_store(env)
        await store.start()
        try:
            found = await store.load()
            assert found is not None
            return found
        finally:
            await store.close()

    return asyncio.run(load())


def test_hftgate_up_starts_two_shards_with_one_stored_map_and_the_gateway_in_front(
    two_shards: dict[str, RunningService],
) -> None:
    assert list(two_shards) == ["cache", "marketdata", "execution", "execution-1", "gateway"]
    shard0, shard1, gateway = two_shards["execution"], two_shards["execution-1"], two_shards["gateway"]
    state = Path(shard0.env["HFTGATE_STATE_DIR"])
    assert shard1.env["HFTGATE_EXECUTION_SHARD_ID"] == "1"
    assert shard1.env["HFTGATE_EXECUTION_PORT"] == str(shard1.port) != str(shard0.port)
    assert shard1.env["HFTGATE_EXECUTION_SEED_DEMO_DATA"] == "false"
    assert "HFTGATE_EXECUTION_SHARD_ID" not in shard0.env  # shard 0: today's service, seeds demo data
    assert (state / "execution" / "journal").is_dir() and (state / "execution-1" / "journal").is_dir()
    stored = _stored_map(shard0.env)
    assert stored.epoch == 1 and stored.shards == (Shard(0, shard0.address), Shard(1, shard1.address))
    assert gateway.env["HFTGATE_GATEWAY_EXECUTION_SHARDS"] == f"0={shard0.address},1={shard1.address}"
    # The README's first order (BTCUSDT) on the shard that owns it, port 50051 by default...
    assert stored.owner("BTCUSDT") == Shard(0, shard0.address)
    submit_one_order_with_a_demo_key(shard0.address, client_order_id="first-order-direct")
    # ... and through the front door.
    submit_one_order_with_a_demo_key(gateway.address, client_order_id="first-order-via-gateway")


def _direct_refusal(address: str, symbol: str) -> tuple[grpc.RpcError, dict[str, str]]:
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    from hftgate.v1 import common_pb2, execution_pb2, execution_pb2_grpc

    order = execution_pb2.NewOrder(
        client_order_id=f"wrong-shard-{symbol}",
        symbol=symbol,
        side=common_pb2.SIDE_BUY,
        order_type=execution_pb2.ORDER_TYPE_LIMIT,
        time_in_force=execution_pb2.TIME_IN_FORCE_GTC,
        price_ticks=100_000,
        quantity_lots=10,
    )
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as refused:
        execution_pb2_grpc.ExecutionServiceStub(channel).SubmitOrder(
            execution_pb2.SubmitOrderRequest(order=order),
            metadata=(("x-api-key", "hftgate-demo-alice"),),
            timeout=10,
        )
    status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
    assert status is not None, "the refusal carries a google.rpc.Status"
    info = error_details_pb2.ErrorInfo()
    assert any(detail.Unpack(info) for detail in status.details)
    assert info.reason == "NOT_SHARD_OWNER" and info.domain == "hftgate.v1"
    return refused.value, dict(info.metadata)


def test_a_symbol_sent_to_the_shard_that_does_not_own_it_is_refused_naming_the_owner(
    two_shards: dict[str, RunningService],
) -> None:
    shard0, shard1 = two_shards["execution"], two_shards["execution-1"]
    stored = _stored_map(shard0.env)
    assert stored.owner("ETHUSDT").shard_id == 1 and stored.owner("BTCUSDT").shard_id == 0
    error, metadata = _direct_refusal(shard0.address, "ETHUSDT")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not own symbol 'ETHUSDT'" in (error.details() or "")
    assert metadata == {
        "symbol": "ETHUSDT",
        "owner_shard_id": "1",
        "owner_address": shard1.address,
        "epoch": "1",
    }
    error, metadata = _direct_refusal(shard1.address, "BTCUSDT")  # and the other way round
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (metadata["owner_shard_id"], metadata["owner_address"]) == ("0", shard0.address)


def _order(client_order_id: str, symbol: str) -> Any:
    from hftgate.v1 import common_pb2, execution_pb2

    return execution_pb2.NewOrder(
        client_order_id=client_order_id,
        symbol=symbol,
        side=common_pb2.SIDE_SELL,
        order_type=execution_pb2.ORDER_TYPE_LIMIT,
        time_in_force=execution_pb2.TIME_IN_FORCE_GTC,
        price_ticks=9_000_000,
        quantity_lots=10,
    )


def test_the_routing_client_sends_each_order_straight_to_its_owning_shard(
    two_shards: dict[str, RunningService],
) -> None:
    from hftgate.client import HftgateClient
    from hftgate.shardmap import order_id_shard
    from hftgate.v1 import execution_pb2

    stored = _stored_map(two_shards["execution"].env)

    async def run() -> None:
        gateway = two_shards["gateway"].address
        async with HftgateClient(gateway, api_key="hftgate-demo-alice") as client:
            assert client.shard_map == stored
            btc = await client.submit(_order("rc-btc", "BTCUSDT"), timeout=10)
            eth = await client.submit(_order("rc-eth", "ETHUSDT"), timeout=10)
            assert btc.status == eth.status == execution_pb2.ORDER_STATUS_NEW and btc.durable
            assert client.sent == {0: 1, 1: 1}  # the gateway (None) saw neither
            assert (order_id_shard(btc.order_id), order_id_shard(eth.order_id)) == (0, 1)
            assert (await client.get(order_id=eth.order_id, timeout=10)).order_id == eth.order_id
            assert client.sent == {0: 1, 1: 2}

    asyncio.run(run())


def test_the_routing_client_retries_once_on_the_new_owner_when_the_map_moves_a_symbol(
    two_shards: dict[str, RunningService],
) -> None:
    """Last in the module: it moves ETHUSDT from shard 1 to shard 0 with a pin (epoch 2)."""
    from hftgate.client import HftgateClient
    from hftgate.shardmap import order_id_shard
    from hftgate.v1 import execution_pb2

    env = two_shards["execution"].env

    async def run() -> None:
        gateway = two_shards["gateway"].address
        # No watch: the client keeps epoch 1 until a shard refuses it.
        async with HftgateClient(gateway, api_key="hftgate-demo-alice", watch_map=False) as client:
            assert client.shard_map is not None and client.shard_map.owner("ETHUSDT").shard_id == 1
            store = shard_map_store(env)
            await store.start()
            try:
                moved = await store.update(lambda m: m.with_pin("ETHUSDT", 0))
            finally:
                await store.close()
            assert moved.epoch == 2
            # Wait until the gateway serves the new map (it polls every 500 ms), then for shard 1,
            # which polls every 200 ms, to have certainly followed it.
            async with HftgateClient(gateway, api_key="hftgate-demo-alice", watch_map=False) as probe:
                for _ in range(100):
                    found = await probe.refresh_map()
                    if found is not None and found.epoch == 2:
                        break
                    await asyncio.sleep(0.1)
                assert probe.shard_map is not None and probe.shard_map.epoch == 2
            await asyncio.sleep(1.0)
            ack = await client.submit(_order("moved-eth", "ETHUSDT"), timeout=10)
            assert ack.status == execution_pb2.ORDER_STATUS_NEW
            assert order_id_shard(ack.order_id) == 0, "accepted by the new owner"
            assert client.owner_retries == 1 and client.sent == {1: 1, 0: 1}
            assert client.shard_map is not None and client.shard_map.epoch == 2
            # The next one goes straight to the new owner: no refusal, no retry.
            again = await client.submit(_order("moved-eth-2", "ETHUSDT"), timeout=10)
            assert order_id_shard(again.order_id) == 0
            assert client.owner_retries == 1 and client.sent == {1: 1, 0: 2}

    asyncio.run(run())
    # Shard 1 now refuses ETHUSDT, naming shard 0 at epoch 2.
    error, metadata = _direct_refusal(two_shards["execution-1"].address, "ETHUSDT")
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (metadata["owner_shard_id"], metadata["epoch"]) == ("0", "2")


def _sample(*, scaler: bool) -> dict[str, Any]:
    """A dashboard sample with what the summary line reads."""
    return {
        "execution": {
            "orders_per_s": 99.5,
            "p50_ms": 1.25,
            "p99_ms": 4.5,
            "shards": [{"available": True}, {"available": False}],
        },
        "cache": {"hit_ratio": 0.9876},
        "gateway": {"available": True, "shards": [{"shard_id": 0}, {"shard_id": 1}]},
        "scaler": {"available": scaler, "replicas": [{"replica_id": "marketdata-2"}] if scaler else []},
    }


def test_the_summary_line_gives_the_suite_the_demo_flow_and_the_dashboard() -> None:
    from hftgate.demoflow import FlowWindow
    from hftgate.supervisor import format_summary

    window = FlowWindow(
        elapsed_s=5.0,
        sent=500,
        acked=498,
        rejected=1,
        errors=1,
        filled=249,
        total_sent=1500,
        total_acked=1490,
        total_errors=3,
        p50_ms=2.5,
        p99_ms=9.75,
        last_error="UNAVAILABLE: shard restarting",
    )
    line = format_summary(_sample(scaler=False), window, "http://127.0.0.1:8080/")
    assert line.split(" | ") == [
        "orders/s 99.5 p50 1.250 ms p99 4.500 ms",
        "cache hit ratio 98.8%",
        "shards 1/2 up",
        "replicas: no scaler",
        "demo flow 100 acked/s, 1490 orders acked through the gateway"
        " (round trip p50 2.500 ms p99 9.750 ms), 1 errors and 1 rejects: UNAVAILABLE: shard restarting",
        "dashboard http://127.0.0.1:8080/",
    ]
    assert "replicas 1" in format_summary(_sample(scaler=True), None, None)
    assert format_summary(None, None, None) == "suite: first sample not taken yet"
