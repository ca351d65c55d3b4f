"""`hftgate up` / `make run`: every built service starts as a plain process and reports SERVING."""

from __future__ import annotations

import os
import socket

import pytest

from hftgate.supervisor import available_services, start_services, stop_services


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def submit_one_order_with_a_demo_key(address: str) -> None:
    """What a new user does first: a limit order with a demo account's key is accepted durably."""
    import grpc

    from hftgate.v1 import common_pb2, execution_pb2, execution_pb2_grpc

    order = execution_pb2.NewOrder(
        client_order_id="first-order",
        symbol="BTCUSDT",
        side=common_pb2.SIDE_BUY,
        order_type=execution_pb2.ORDER_TYPE_LIMIT,
        time_in_force=execution_pb2.TIME_IN_FORCE_GTC,
        price_ticks=5_000_000,
        quantity_lots=100,
    )
    with grpc.insecure_channel(address) as channel:
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
        execution = next((s for s in running if s.spec.name == "execution"), None)
        if execution is not None:
            submit_one_order_with_a_demo_key(execution.address)
    finally:
        stop_services(running, grace_s=15)
    # SIGTERM is a graceful stop: every service drains and exits 0.
    assert [s.process.returncode for s in running] == [0] * len(running)
