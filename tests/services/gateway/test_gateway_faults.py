"""Faults between the gateway and its shards: a shard that is down or hangs answers UNAVAILABLE or
DEADLINE_EXCEEDED naming the shard within the client's deadline (propagated to the shard); an
order is never retried; a shard's own status passes through with its details; order ids route by
their shard bits; what the gateway tells a shard about the caller; a map that cannot be read."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from hftgate.config import repo_root
from hftgate.security import load_suite_secret
from hftgate.shardmap import Shard, ShardMap, make_order_id, order_id_shard
from hftgate.v1 import execution_pb2 as api
from services.gateway.app import StartError
from services.gateway.config import GatewayConfig
from services.gateway.server import start as start_gateway
from tests.services.gateway.conftest import ALICE, FakeShard, Suite, new_order


async def _hang(method: str, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(3600)
    return b""


async def _unavailable(method: str, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "recovering the journal")
    return b""


def _echo_shard(shard_id: int) -> Any:
    async def answer(method: str, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        if method == "GetOrder":
            request = api.GetOrderRequest.FromString(data)
            if request.order_id and order_id_shard(request.order_id) != shard_id:
                # As a real shard: it knows only the orders it took (or was handed).
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no order with order_id {request.order_id}")
            order = api.Order(
                order_id=request.order_id, request=api.NewOrder(client_order_id=f"on-{shard_id}")
            )
            return api.GetOrderResponse(order=order).SerializeToString()
        if method == "SubmitOrder":
            request = api.SubmitOrderRequest.FromString(data)
            ack = api.OrderAck(
                client_order_id=request.order.client_order_id, order_id=make_order_id(shard_id, 1)
            )
            return api.SubmitOrderResponse(ack=ack).SerializeToString()
        return b""

    return answer


# --- real shards ----------------------------------------------------------------------------------
async def test_a_down_shard_is_unavailable_by_name_within_the_deadline(suite: Suite) -> None:
    down = suite.shards[1]
    address = f"127.0.0.1:{down.port}"
    await down.stop(0)
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("d1", "ETHUSDT")), metadata=ALICE, timeout=3
        )
    assert time.monotonic() - started < 3
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert (caught.value.details() or "").startswith(f"execution shard 1 at {address} is unavailable")
    # The other shard is untouched by it.
    ok = await suite.stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("d2", "BTCUSDT")), metadata=ALICE
    )
    assert ok.ack.status == api.ORDER_STATUS_NEW


async def test_a_split_batch_with_a_down_shard_returns_what_the_others_accepted(suite: Suite) -> None:
    await suite.shards[1].stop(0)
    symbols = ["BTCUSDT", "ETHUSDT", "BTCUSDT", "ETHUSDT"]
    orders = [new_order(f"p{i}", s) for i, s in enumerate(symbols)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=ALICE, timeout=3)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    details = caught.value.details() or ""
    assert "execution shard 1" in details and "2 of 4 orders got no answer" in details
    status = rpc_status.from_call(caught.value)
    assert status is not None and status.code == code_pb2.UNAVAILABLE
    partial = api.SubmitOrdersResponse()
    assert status.details[0].Unpack(partial)
    assert [a.client_order_id for a in partial.acks] == ["p0", "", "p2", ""]
    assert [a.status for a in partial.acks] == [api.ORDER_STATUS_NEW, 0, api.ORDER_STATUS_NEW, 0]
    assert suite.orders_on(0) == 2
    # Sending the whole batch again once shard 1 is back would not duplicate p0 and p2.
    again = await suite.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders[:1]), metadata=ALICE)
    assert again.acks[0].reason == 13  # REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID


# --- fake shards ----------------------------------------------------------------------------------
async def test_a_hanging_shard_gets_the_clients_deadline_and_the_client_gets_it_back(
    fake_gateway: Any,
) -> None:
    fake = await FakeShard(_hang).start()
    try:
        _, stub = await fake_gateway(ShardMap(1, [Shard(0, fake.address), Shard(1, "127.0.0.1:9")], {"X": 0}))
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitOrder(
                api.SubmitOrderRequest(order=new_order("h1", "X")), metadata=ALICE, timeout=0.5
            )
        elapsed = time.monotonic() - started
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert elapsed < 1.5, elapsed
        ((method, _, _, remaining),) = fake.calls
        assert method == "SubmitOrder"
        assert remaining is not None and 0 < remaining <= 0.5, "the client's deadline reached the shard"
        await asyncio.sleep(0.3)
        assert fake.cancelled == ["SubmitOrder"], "the shard's call ended with the deadline"
    finally:
        await fake.stop()


async def test_a_call_without_a_deadline_gets_the_gateways_default(fake_gateway: Any) -> None:
    fake = await FakeShard(_hang).start()
    try:
        shard_map = ShardMap(1, [Shard(0, fake.address), Shard(1, "127.0.0.1:9")], {"X": 0})
        _, stub = await fake_gateway(shard_map, default_deadline_ms=300)
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("h2", "X")), metadata=ALICE)
        assert time.monotonic() - started < 2
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert (
            caught.value.details()
            == f"execution shard 0 at {fake.address} did not answer within the deadline"
        )
    finally:
        await fake.stop()


async def test_an_order_is_never_retried(fake_gateway: Any) -> None:
    fake = await FakeShard(_unavailable).start()
    try:
        _, stub = await fake_gateway(ShardMap(1, [Shard(0, fake.address), Shard(1, "127.0.0.1:9")], {"X": 0}))
        calls = {
            "SubmitOrder": lambda: stub.SubmitOrder(
                api.SubmitOrderRequest(order=new_order("r1", "X")), metadata=ALICE
            ),
            "SubmitOrders": lambda: stub.SubmitOrders(
                api.SubmitOrdersRequest(orders=[new_order("r2", "X")]), metadata=ALICE
            ),
        }
        for name, call in calls.items():
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert caught.value.details() == (
                f"execution shard 0 at {fake.address} is unavailable: recovering the journal"
            )
            await asyncio.sleep(0.3)  # time for any retry to show
            assert [c[0] for c in fake.calls] == [name], "exactly one attempt"
            fake.calls.clear()
    finally:
        await fake.stop()


async def test_a_shards_own_status_passes_through_with_its_details(fake_gateway: Any) -> None:
    async def rate_limited(method: str, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="order rate limit reached")
        status.details.add().Pack(
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=5_000_000))
        )
        await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]
        return b""

    fake = await FakeShard(rate_limited).start()
    try:
        _, stub = await fake_gateway(ShardMap(1, [Shard(0, fake.address), Shard(1, "127.0.0.1:9")], {"X": 0}))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("q1", "X")), metadata=ALICE)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == "order rate limit reached"
        status = rpc_status.from_call(caught.value)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry) and retry.retry_delay.nanos == 5_000_000
    finally:
        await fake.stop()


async def test_order_ids_route_by_their_shard_bits(fake_gateway: Any) -> None:
    fakes = [await FakeShard(_echo_shard(i)).start() for i in range(2)]
    try:
        _, stub = await fake_gateway(
            ShardMap(1, [Shard(i, f.address) for i, f in enumerate(fakes)]), order_id_shard_bits=True
        )
        for shard_id in (0, 1, 1, 0):
            got = await stub.GetOrder(
                api.GetOrderRequest(order_id=make_order_id(shard_id, 7)), metadata=ALICE
            )
            assert got.order.request.client_order_id == f"on-{shard_id}"
        assert [len(f.calls) for f in fakes] == [2, 2], "one call each, no broadcast"
        # An id of a shard the map no longer names (retired after its symbols moved, its resting
        # orders with them under their ids): every shard is asked, read-only; none has it here.
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.CancelOrder(api.CancelOrderRequest(order_id=make_order_id(5, 7)), metadata=ALICE)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
        assert unknown.value.details() == f"no order with order_id {make_order_id(5, 7)}"
        assert [len(f.calls) for f in fakes] == [3, 3]
        assert [f.calls[-1][0] for f in fakes] == ["GetOrder", "GetOrder"]
        with pytest.raises(grpc.aio.AioRpcError) as negative:
            await stub.GetOrder(api.GetOrderRequest(order_id=-3), metadata=ALICE)
        assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as unnamed:
            await stub.ReplaceOrder(api.ReplaceOrderRequest(price_ticks=5), metadata=ALICE)
        assert unnamed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [len(f.calls) for f in fakes] == [3, 3]
    finally:
        for fake in fakes:
            await fake.stop()


@pytest.mark.parametrize("forward_api_key", [True, False])
async def test_the_shard_hears_the_gateway_principal_and_the_account(
    fake_gateway: Any, forward_api_key: bool
) -> None:
    fake = await FakeShard(_echo_shard(0)).start()
    try:
        _, stub = await fake_gateway(
            ShardMap(1, [Shard(0, fake.address), Shard(1, "127.0.0.1:9")], {"X": 0}),
            forward_api_key=forward_api_key,
        )
        await stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("m1", "X")),
            metadata=(*ALICE, ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")),
        )
        ((_, _, metadata, _),) = fake.calls
        assert load_suite_secret().verify_token(metadata["x-hftgate-service-token"]) == "gateway"
        assert metadata["x-hftgate-account"] == "alice"
        assert metadata["traceparent"].startswith("00-0af7651916cd43dd")
        assert ("x-api-key" in metadata) is forward_api_key
    finally:
        await fake.stop()


# --- start-up -------------------------------------------------------------------------------------
async def test_a_shard_map_that_cannot_be_read_refuses_the_start(tmp_path: Path) -> None:
    config = GatewayConfig(port=0, shard_map_database_url="postgresql+asyncpg://u:pw@127.0.0.1:1/none")
    with pytest.raises(StartError, match=r"cannot read the shard map: .*127\.0\.0\.1:1") as caught:
        await start_gateway(config)
    assert "pw@" not in str(caught.value)
    damaged = tmp_path / "damaged.sqlite3"
    damaged.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StartError, match="cannot read the shard map"):
        await start_gateway(GatewayConfig(port=0, shard_map_database_url=f"sqlite+aiosqlite:///{damaged}"))


def test_the_process_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "HFTGATE_STATE_DIR": str(tmp_path),
        "HFTGATE_GATEWAY_PORT": "0",
        "HFTGATE_GATEWAY_SHARD_MAP_DATABASE_URL": "postgresql+asyncpg://u:pw@127.0.0.1:1/none",
    }
    done = subprocess.run(
        [sys.executable, "-m", "services.gateway"], env=env, cwd=repo_root(), capture_output=True, timeout=60
    )
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "cannot start: cannot read the shard map" in err
    assert "Traceback" not in err and "pw@" not in err
    bad = {**env, "HFTGATE_GATEWAY_EXECUTION_SHARDS": "x=127.0.0.1:1"}
    done = subprocess.run(
        [sys.executable, "-m", "services.gateway"], env=bad, cwd=repo_root(), capture_output=True, timeout=60
    )
    assert done.returncode == 2
    assert (
        "HFTGATE_GATEWAY_EXECUTION_SHARDS: shard 'x=127.0.0.1:1': expected ID=HOST:PORT"
        in done.stderr.decode()
    )
