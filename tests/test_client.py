"""The routing client (hftgate.client) against the gateway and two real shards, and against fake
shards for the refusals real shards do not make yet: orders straight to the owning shard, batches
split and merged, the map followed, the gateway as the fallback, one retry after NOT_SHARD_OWNER
and never another, never a retry of an order whose shard failed."""

# ruff: noqa: F811  (the gateway fixtures are imported by name, then requested as parameters)
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from hftgate.client import NOT_SHARD_OWNER, SYMBOL_METADATA, BatchError, HftgateClient
from hftgate.shardmap import Shard, ShardMap, order_id_shard
from hftgate.v1 import execution_pb2 as api
from tests.services.gateway.conftest import (  # noqa: F401 (fixtures)
    FakeShard,
    Suite,
    _shards_share_a_process,
    fake_gateway,
    new_order,
    suite,
)

ALICE_KEY = "hftgate-demo-alice"


async def test_orders_go_straight_to_the_owning_shard(suite: Suite) -> None:
    async with HftgateClient(f"127.0.0.1:{suite.gateway.port}", api_key=ALICE_KEY) as client:
        assert client.shard_map == suite.gateway.app.shard_map  # type: ignore[union-attr]
        btc = await client.submit(new_order("c-btc", "BTCUSDT"), timeout=5)
        eth = await client.submit(new_order("c-eth", "ETHUSDT"), timeout=5)
        assert btc.status == eth.status == api.ORDER_STATUS_NEW and btc.durable
        assert (suite.orders_on(0), suite.orders_on(1)) == (1, 1)
        assert client.sent == {0: 1, 1: 1}
        assert suite.gateway.forwarder.sent == {}  # type: ignore[union-attr]  # the gateway saw no order
        # Cancel, get and replace of orders it submitted go to their shard too.
        got = await client.get(client_order_id="c-eth", timeout=5)
        assert got.order_id == eth.order_id
        replaced = await client.replace(client_order_id="c-eth", price_ticks=299_000, timeout=5)
        assert replaced.ack.status != api.ORDER_STATUS_REJECTED
        canceled = await client.cancel(client_order_id="c-btc", timeout=5)
        assert canceled.ack.status == api.ORDER_STATUS_CANCELED
        assert client.sent == {0: 2, 1: 3}
        assert suite.gateway.forwarder.sent == {}  # type: ignore[union-attr]
        # Order ids carry their shard: the client sends a get straight to it, not through the gateway.
        assert order_id_shard(btc.order_id) == 0 and order_id_shard(eth.order_id) == 1
        assert (await client.get(order_id=eth.order_id, timeout=5)).order_id == eth.order_id
        assert client.sent.get(None, 0) == 0
        # An order it did not submit: the gateway finds the shard.
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await client.get(client_order_id="never-sent", timeout=5)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        assert client.sent[None] == 1


async def test_a_batch_is_split_by_shard_and_answered_in_request_order(suite: Suite) -> None:
    symbols = ["ETHUSDT", "BTCUSDT", "BTCUSDT", "NOPE", "ETHUSDT"]
    orders = [new_order(f"b{i}", s) for i, s in enumerate(symbols)]
    async with HftgateClient(f"127.0.0.1:{suite.gateway.port}", api_key=ALICE_KEY) as client:
        acks = await client.submit_many(orders, timeout=5)
    assert [a.client_order_id for a in acks] == [f"b{i}" for i in range(5)]
    assert [a.status == api.ORDER_STATUS_REJECTED for a in acks] == [s == "NOPE" for s in symbols]
    assert suite.orders_on(0) + suite.orders_on(1) == 5
    assert suite.gateway.forwarder.sent == {}  # type: ignore[union-attr]


async def test_a_column_batch_is_split_by_shard_and_answered_in_its_order(suite: Suite) -> None:
    from tests.services.execution.test_order_columns import as_columns

    symbols = ["ETHUSDT", "BTCUSDT", "BTCUSDT", "NOPE", "ETHUSDT"]
    orders = [new_order(f"k{i}", s) for i, s in enumerate(symbols)]
    async with HftgateClient(f"127.0.0.1:{suite.gateway.port}", api_key=ALICE_KEY) as client:
        acks = await client.submit_columns(as_columns(orders), timeout=5)
        # Each accepted order carries its shard in its id, and the client knows where it went.
        got = await client.get(acks.order_id[1], timeout=5)
    statuses = [s == api.ORDER_STATUS_REJECTED for s in acks.status]
    assert statuses == [s == "NOPE" for s in symbols]
    assert [order_id_shard(i) for i, s in zip(acks.order_id, symbols, strict=True) if s != "NOPE"] == [
        1,
        0,
        0,
        1,
    ]
    assert list(acks.reason_text) == ["Cannot submit order 'k3': unknown symbol 'NOPE'"]
    assert acks.durable and got.request.client_order_id == "k1"
    assert suite.orders_on(0) + suite.orders_on(1) == 5
    assert suite.gateway.forwarder.sent == {}  # type: ignore[union-attr]


async def test_without_a_map_everything_goes_through_the_gateway(suite: Suite) -> None:
    address = f"127.0.0.1:{suite.gateway.port}"
    async with HftgateClient(address, api_key=ALICE_KEY, route_directly=False) as client:
        assert client.shard_map is None
        ack = await client.submit(new_order("g1", "ETHUSDT"), timeout=5)
        assert ack.status == api.ORDER_STATUS_NEW
        assert client.sent == {None: 1}
    assert suite.gateway.forwarder.sent == {1: 1}  # type: ignore[union-attr]
    # A key the gateway does not know cannot read the map: the client routes through the gateway,
    # which refuses the order with the same precise status.
    async with HftgateClient(address, api_key="not-a-key") as client:
        assert client.shard_map is None
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.submit(new_order("g2", "ETHUSDT"), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_client_follows_a_new_map(suite: Suite) -> None:
    async with HftgateClient(
        f"127.0.0.1:{suite.gateway.port}", api_key=ALICE_KEY, watch_retry_s=0.05
    ) as client:
        assert client.shard_map is not None and client.shard_map.epoch == 1
        await suite.store.update(lambda m: m.with_pin("ESZ4", 1))
        for _ in range(200):
            if client.shard_map.epoch == 2:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.02)
        assert client.shard_map.epoch == 2  # type: ignore[union-attr]
        assert client.shard_map.owner("ESZ4").shard_id == 1  # type: ignore[union-attr]
        client.install(ShardMap(1, [Shard(0, "127.0.0.1:1")]))  # an older map never wins
        assert client.shard_map.epoch == 2  # type: ignore[union-attr]


# --- refusals, with fake shards ----------------------------------------------------------------
def not_owner(owner_address: str = "") -> Callable[[str, bytes, grpc.aio.ServicerContext], Awaitable[bytes]]:
    async def refuse(method: str, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        info = error_details_pb2.ErrorInfo(
            reason=NOT_SHARD_OWNER, domain="hftgate.v1", metadata={"epoch": "1"}
        )
        if owner_address:
            info.metadata["owner_address"] = owner_address
        status = status_pb2.Status(code=code_pb2.FAILED_PRECONDITION, message="not the owner of the symbol")
        status.details.add().Pack(info)
        await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]
        return b""

    return refuse


async def accept(method: str, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if method == "SubmitOrderColumns":
        count = len(api.SubmitOrderColumnsRequest.FromString(data).orders.client_order_id)
        acks = api.AckColumns(order_id=range(1, count + 1), sequence=range(1, count + 1), durable=True)
        acks.status.extend([api.ORDER_STATUS_NEW] * count)
        return api.SubmitOrderColumnsResponse(acks=acks).SerializeToString()
    if method == "SubmitOrders":
        request = api.SubmitOrdersRequest.FromString(data)
        return api.SubmitOrdersResponse(
            acks=[
                api.OrderAck(client_order_id=o.client_order_id, order_id=i + 1, status=api.ORDER_STATUS_NEW)
                for i, o in enumerate(request.orders)
            ]
        ).SerializeToString()
    order = api.SubmitOrderRequest.FromString(data).order
    return api.SubmitOrderResponse(
        ack=api.OrderAck(client_order_id=order.client_order_id, order_id=7, status=api.ORDER_STATUS_NEW)
    ).SerializeToString()


async def unavailable(method: str, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await context.abort(grpc.StatusCode.UNAVAILABLE, "shard is failing")
    return b""


async def fakes(*behaviours: Any) -> list[FakeShard]:
    return [await FakeShard(b).start() for b in behaviours]


async def wait_epoch(gateway: Any, epoch: int) -> None:
    for _ in range(200):
        if gateway.app.shard_map.epoch >= epoch:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the gateway never saw epoch {epoch}")


async def test_not_the_owner_refreshes_the_map_and_retries_once_on_the_new_owner(fake_gateway: Any) -> None:
    stale, owner = await fakes(not_owner(), accept)
    try:
        gateway, _ = await fake_gateway(
            ShardMap(1, [Shard(0, stale.address), Shard(1, owner.address)], {"XYZ": 0})
        )
        async with HftgateClient(f"127.0.0.1:{gateway.port}", api_key=ALICE_KEY, watch_map=False) as client:
            await gateway.app.store.update(lambda m: m.with_pin("XYZ", 1))  # the symbol moved
            await wait_epoch(gateway, 2)
            assert client.shard_map.epoch == 1  # type: ignore[union-attr]  # the client does not know yet
            ack = await client.submit(new_order("o1", "XYZ"), timeout=5)
            assert ack.status == api.ORDER_STATUS_NEW
            assert client.shard_map.epoch == 2  # type: ignore[union-attr]
            assert client.owner_retries == 1
            assert [c[0] for c in stale.calls] == ["SubmitOrder"] and [c[0] for c in owner.calls] == [
                "SubmitOrder"
            ]
            assert stale.calls[0][2][SYMBOL_METADATA] == "XYZ"  # for proxies that route by header
            assert stale.calls[0][2]["x-api-key"] == ALICE_KEY
    finally:
        for fake in (stale, owner):
            await fake.stop()


async def test_a_column_batch_refused_as_not_the_owner_goes_again_by_the_fresh_map(fake_gateway: Any) -> None:
    from tests.services.execution.test_order_columns import as_columns

    stale, owner = await fakes(not_owner(), accept)
    try:
        gateway, _ = await fake_gateway(
            ShardMap(1, [Shard(0, stale.address), Shard(1, owner.address)], {"XYZ": 0})
        )
        async with HftgateClient(f"127.0.0.1:{gateway.port}", api_key=ALICE_KEY, watch_map=False) as client:
            await gateway.app.store.update(lambda m: m.with_pin("XYZ", 1))  # the symbol moved
            await wait_epoch(gateway, 2)
            acks = await client.submit_columns(
                as_columns([new_order(f"c{i}", "XYZ") for i in range(3)]), timeout=5
            )
            assert list(acks.order_id) == [1, 2, 3] and client.owner_retries == 1
            assert [c[0] for c in stale.calls] == [c[0] for c in owner.calls] == ["SubmitOrderColumns"]
            assert stale.calls[0][2][SYMBOL_METADATA] == "XYZ"  # one symbol: the header for proxies
    finally:
        for fake in (stale, owner):
            await fake.stop()


async def test_a_second_refusal_is_returned_not_retried_again(fake_gateway: Any) -> None:
    first, second = await fakes(not_owner(), not_owner())
    try:
        gateway, _ = await fake_gateway(
            ShardMap(1, [Shard(0, first.address), Shard(1, second.address)], {"XYZ": 0})
        )
        async with HftgateClient(f"127.0.0.1:{gateway.port}", api_key=ALICE_KEY, watch_map=False) as client:
            await gateway.app.store.update(lambda m: m.with_pin("XYZ", 1))
            await wait_epoch(gateway, 2)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.submit(new_order("o2", "XYZ"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert (len(first.calls), len(second.calls)) == (1, 1)
            # A refusal whose map did not change and that names no other owner: not re-sent at all.
            with pytest.raises(grpc.aio.AioRpcError):
                await client.submit(new_order("o3", "XYZ"), timeout=5)
            assert (len(first.calls), len(second.calls)) == (1, 2)
    finally:
        for fake in (first, second):
            await fake.stop()


async def test_a_refusal_naming_the_owner_is_sent_there(fake_gateway: Any) -> None:
    owner = (await fakes(accept))[0]
    stale = (await fakes(not_owner(owner.address)))[0]
    try:
        gateway, _ = await fake_gateway(ShardMap(1, [Shard(0, stale.address)]))
        async with HftgateClient(f"127.0.0.1:{gateway.port}", api_key=ALICE_KEY, watch_map=False) as client:
            ack = await client.submit(new_order("o4", "XYZ"), timeout=5)
            assert ack.order_id == 7 and (len(stale.calls), len(owner.calls)) == (1, 1)
    finally:
        for fake in (stale, owner):
            await fake.stop()


async def test_an_order_whose_shard_failed_is_never_sent_again(fake_gateway: Any) -> None:
    failing, other = await fakes(unavailable, accept)
    try:
        gateway, _ = await fake_gateway(
            ShardMap(1, [Shard(0, failing.address), Shard(1, other.address)], {"XYZ": 0})
        )
        async with HftgateClient(f"127.0.0.1:{gateway.port}", api_key=ALICE_KEY) as client:
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await client.submit(new_order("o5", "XYZ"), timeout=5)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert len(failing.calls) == 1 and other.calls == [] and client.owner_retries == 0
            # A batch across both: the healthy shard's acks come back with the failure.
            orders = [new_order("p0", "XYZ"), new_order("p1", "ABC")]
            client.install(
                ShardMap(2, [Shard(0, failing.address), Shard(1, other.address)], {"XYZ": 0, "ABC": 1})
            )
            with pytest.raises(BatchError) as partial:
                await client.submit_many(orders, timeout=5)
            assert partial.value.acks[0] is None
            assert partial.value.acks[1] is not None and partial.value.acks[1].client_order_id == "p1"
            assert partial.value.errors[0].code() == grpc.StatusCode.UNAVAILABLE
            assert len(failing.calls) == 2 and len(other.calls) == 1
    finally:
        for fake in (failing, other):
            await fake.stop()
