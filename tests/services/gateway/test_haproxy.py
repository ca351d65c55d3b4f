"""HAProxy (Debian's 2.6) as a real process in front of two real shards, the Python gateway and a
market data replica, from the generated configuration: orders with a symbol header go straight to
their shard, the rest through the gateway, a forged account header never reaches a shard, market
data is balanced, and the symbol map changes without a reload."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hftgate.bench.gateway import start_marketdata_replica
from hftgate.security import SERVICE_TOKEN_METADATA, load_suite_secret
from hftgate.shardmap import Shard, ShardMap
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc
from hftgate.v1 import marketdata_pb2, marketdata_pb2_grpc
from services.gateway.haproxy import HaproxyError, HaproxyPlan, HaproxyProcess, haproxy_binary, render
from tests.services.gateway.conftest import ALICE, BOB, FakeShard, Suite, new_order


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def require_haproxy() -> None:
    if haproxy_binary() is None:
        message = "haproxy is not installed (apt-get install -y haproxy): the HAProxy data plane is untested"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
async def proxied(suite: Suite, tmp_path: Path) -> AsyncIterator[tuple[Suite, HaproxyProcess, Any, Any]]:
    require_haproxy()
    replica = await start_marketdata_replica()
    plan = HaproxyPlan(
        bind=f"127.0.0.1:{free_port()}",
        gateway=f"127.0.0.1:{suite.gateway.port}",
        shard_map=suite.gateway.app.shard_map,  # type: ignore[union-attr]
        symbols=("BTCUSDT", "ETHUSDT"),
        marketdata_replicas=(f"127.0.0.1:{replica.port}",),
        check_interval_ms=200,
    )
    proxy = HaproxyProcess(plan, tmp_path / "haproxy")
    await proxy.astart()
    channel = grpc.aio.insecure_channel(plan.bind)
    try:
        yield (
            suite,
            proxy,
            api_grpc.ExecutionServiceStub(channel),
            marketdata_pb2_grpc.MarketDataServiceStub(channel),
        )
    finally:
        await channel.close(None)
        await proxy.astop()
        await replica.stop(0)


def with_symbol(symbol: str) -> tuple[tuple[str, str], ...]:
    return (*ALICE, ("x-hftgate-symbol", symbol))


async def test_orders_with_a_symbol_header_go_straight_to_their_shard(proxied: Any) -> None:
    suite, _, stub, _ = proxied
    eth = await stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("h1", "ETHUSDT")), metadata=with_symbol("ETHUSDT"), timeout=5
    )
    btc = await stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("h2", "BTCUSDT")), metadata=with_symbol("BTCUSDT"), timeout=5
    )
    assert eth.ack.status == btc.ack.status == api.ORDER_STATUS_NEW and eth.ack.durable
    assert (suite.orders_on(0), suite.orders_on(1)) == (1, 1)
    assert suite.gateway.forwarder.sent == {}  # the Python gateway saw neither
    # No header, or a batch across shards: the Python gateway routes (and splits) them.
    await stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("h3", "ETHUSDT")), metadata=ALICE, timeout=5
    )
    batch = await stub.SubmitOrders(
        api.SubmitOrdersRequest(orders=[new_order("h4", "BTCUSDT"), new_order("h5", "ETHUSDT")]),
        metadata=ALICE,
        timeout=5,
    )
    assert [a.client_order_id for a in batch.acks] == ["h4", "h5"]
    assert (suite.orders_on(0), suite.orders_on(1)) == (2, 3)
    assert suite.gateway.forwarder.sent == {1: 2, 0: 1}
    got = await stub.GetOrder(api.GetOrderRequest(client_order_id="h5"), metadata=ALICE, timeout=5)
    assert got.order.order_id == batch.acks[1].order_id


async def test_a_column_batch_with_a_symbol_header_goes_straight_to_its_shard(proxied: Any) -> None:
    from tests.services.execution.test_order_columns import as_columns

    suite, _, stub, _ = proxied
    orders = [new_order(f"col{i}", "ETHUSDT") for i in range(3)]
    reply = await stub.SubmitOrderColumns(
        api.SubmitOrderColumnsRequest(orders=as_columns(orders)), metadata=with_symbol("ETHUSDT"), timeout=5
    )
    assert list(reply.acks.status) == [api.ORDER_STATUS_NEW] * 3 and reply.acks.durable
    assert (suite.orders_on(0), suite.orders_on(1)) == (0, 3)
    assert suite.gateway.forwarder.sent == {}  # the Python gateway never saw it


async def test_unknown_symbols_go_to_the_gateway_and_bad_keys_are_refused(proxied: Any) -> None:
    suite, _, stub, _ = proxied
    reply = await stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("u1", "NOPE")), metadata=with_symbol("NOPE"), timeout=5
    )
    assert reply.ack.status == api.ORDER_STATUS_REJECTED
    assert sum(suite.gateway.forwarder.sent.values()) == 1
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("u2", "BTCUSDT")),
            metadata=(("x-api-key", "wrong"), ("x-hftgate-symbol", "BTCUSDT")),
            timeout=5,
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED  # the shard's own check


async def test_through_haproxy_an_order_belongs_to_the_key_never_to_a_forged_account(proxied: Any) -> None:
    """HAProxy has no service token: the shard checks the client's own key, and a forged account
    header (stripped by HAProxy in any case) or a forged service token buys nothing."""
    suite, _, stub, _ = proxied
    forged = (*with_symbol("BTCUSDT"), ("x-hftgate-account", "bob"))
    ack = await stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("fa1", "BTCUSDT")), metadata=forged, timeout=5
    )
    assert ack.ack.status == api.ORDER_STATUS_NEW
    assert suite.gateway.forwarder.sent == {}  # it went straight to the shard, not via the gateway
    gateway = api_grpc.ExecutionServiceStub(suite.channel)
    mine = await gateway.GetOrder(api.GetOrderRequest(client_order_id="fa1"), metadata=ALICE, timeout=5)
    assert mine.order.order_id == ack.ack.order_id  # alice's order, as her key says
    with pytest.raises(grpc.aio.AioRpcError) as not_bobs:
        await gateway.GetOrder(api.GetOrderRequest(client_order_id="fa1"), metadata=BOB, timeout=5)
    assert not_bobs.value.code() == grpc.StatusCode.NOT_FOUND
    token = (
        ("x-hftgate-service-token", "gateway.forged"),
        ("x-hftgate-account", "bob"),
        ("x-hftgate-symbol", "BTCUSDT"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("fa2", "BTCUSDT")), metadata=token, timeout=5
        )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_market_data_goes_to_its_replicas(proxied: Any) -> None:
    _, _, _, md = proxied
    feed = ((SERVICE_TOKEN_METADATA, load_suite_secret().token_for("feed")),)
    reply = await md.GetSnapshot(marketdata_pb2.GetSnapshotRequest(), metadata=feed, timeout=5)
    assert reply.HasField("stats")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await md.GetSnapshot(marketdata_pb2.GetSnapshotRequest(depth_levels=-1), metadata=feed, timeout=5)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # the replica's status, through HAProxy


async def test_a_forged_account_header_never_reaches_a_shard_and_the_map_changes_live(tmp_path: Path) -> None:
    require_haproxy()

    async def ok(method: str, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        order = api.SubmitOrderRequest.FromString(data).order
        return api.SubmitOrderResponse(
            ack=api.OrderAck(client_order_id=order.client_order_id)
        ).SerializeToString()

    first, second = await FakeShard(ok).start(), await FakeShard(ok).start()
    shard_map = ShardMap(1, [Shard(0, first.address), Shard(1, second.address)], {"XYZ": 0})
    plan = HaproxyPlan(
        bind=f"127.0.0.1:{free_port()}", gateway="127.0.0.1:1", shard_map=shard_map, symbols=("XYZ",)
    )
    proxy = HaproxyProcess(plan, tmp_path / "haproxy")
    await proxy.astart()
    try:
        async with grpc.aio.insecure_channel(plan.bind) as channel:
            stub = api_grpc.ExecutionServiceStub(channel)
            forged = (("x-api-key", "k"), ("x-hftgate-symbol", "XYZ"), ("x-hftgate-account", "victim"))
            await stub.SubmitOrder(
                api.SubmitOrderRequest(order=new_order("f1", "XYZ")), metadata=forged, timeout=5
            )
            assert len(first.calls) == 1 and "x-hftgate-account" not in first.calls[0][2]
            assert first.calls[0][2]["x-api-key"] == "k"
            proxy.set_symbols(shard_map.with_pin("XYZ", 1), ["XYZ"])  # runtime API, no reload
            await stub.SubmitOrder(
                api.SubmitOrderRequest(order=new_order("f2", "XYZ")), metadata=forged, timeout=5
            )
            assert (len(first.calls), len(second.calls)) == (1, 1)
            # The gateway backend is down here: what HAProxy cannot route fails cleanly, no hang.
            with pytest.raises(grpc.aio.AioRpcError) as down:
                await stub.GetOrder(api.GetOrderRequest(order_id=1), metadata=forged, timeout=5)
            assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await proxy.astop()
        await first.stop()
        await second.stop()


def test_the_configuration_refuses_what_could_inject_lines() -> None:
    shard_map = ShardMap(1, [Shard(0, "127.0.0.1:5")])
    with pytest.raises(HaproxyError, match="is not host:port"):
        render(
            HaproxyPlan(bind="0.0.0.0:1\n  bind 0.0.0.0:2", gateway="g:1", shard_map=shard_map), Path("/x")
        )
    text = render(HaproxyPlan(bind="127.0.0.1:9", gateway="127.0.0.1:8", shard_map=shard_map), Path("/m"))
    assert "http-request del-header x-hftgate-account" in text
    assert "retries 0" in text and "backend shard_0" in text
