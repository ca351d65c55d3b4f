"""`hftgate up` / `make run`: every built service starts as a plain process and reports SERVING."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hftgate.security import (
    SERVICE_TOKEN_METADATA,
    SecurityError,
    load_suite_secret,
    suite_client_tls,
)
from hftgate.supervisor import (
    RunningService,
    available_services,
    prepare_suite_env,
    start_services,
    stop_services,
    wait_until_serving,
)

# One RPC per service, for the bad-bytes and missing-credential checks on real processes.
PROBES: dict[str, str] = {
    "cache": "/hftgate.v1.CacheService/Get",
    "marketdata": "/hftgate.v1.MarketDataService/GetSnapshot",
    "execution": "/hftgate.v1.ExecutionService/GetOrder",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
            assert gateway.env["HFTGATE_GATEWAY_EXECUTION_SHARDS"] == execution.address
            submit_one_order_with_a_demo_key(gateway.address, client_order_id="first-order-via-gateway")
    finally:
        stop_services(running, grace_s=15)
    # SIGTERM is a graceful stop: every service drains and exits 0.
    assert [s.process.returncode for s in running] == [0] * len(running)


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
