"""One shard owns everything (the default map): every call, streams included, goes through the
gateway to it unread; the map is stored on first start and the stored map wins afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from hftgate.shardmap import Shard, ShardMap, ShardMapStore
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc
from services.execution.app import ExecutionServer
from services.execution.app import start as start_execution
from services.gateway.server import GatewayServer
from services.gateway.server import start as start_gateway
from tests.services.execution.conftest import execution_config
from tests.services.gateway.conftest import ALICE, gateway_config, new_order


@pytest.fixture
async def one_shard(
    tmp_path: Path,
) -> AsyncIterator[tuple[ExecutionServer, GatewayServer, api_grpc.ExecutionServiceStub]]:
    reference = f"sqlite+aiosqlite:///{tmp_path / 'reference.sqlite3'}"
    shard = await start_execution(execution_config(tmp_path / "shard", reference_database_url=reference))
    url = f"sqlite+aiosqlite:///{tmp_path / 'shardmap.sqlite3'}"
    gateway = await start_gateway(
        gateway_config(tmp_path, url, execution_shards=(f"127.0.0.1:{shard.port}",))
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    try:
        yield shard, gateway, api_grpc.ExecutionServiceStub(channel)
    finally:
        await channel.close(None)
        await gateway.stop(0)
        await shard.stop(0.5)


async def test_first_start_stores_the_configured_map(one_shard: tuple) -> None:  # type: ignore[type-arg]
    shard, gateway, _ = one_shard
    assert gateway.app.shard_map == ShardMap(1, [Shard(0, f"127.0.0.1:{shard.port}")])
    stored = await gateway.app.store.load()
    assert stored == gateway.app.shard_map


async def test_unary_calls_pass_through_to_the_one_shard(one_shard: tuple) -> None:  # type: ignore[type-arg]
    _, gateway, stub = one_shard
    ack = (
        await stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("s1", "BTCUSDT")), metadata=ALICE)
    ).ack
    assert ack.status == api.ORDER_STATUS_NEW and ack.durable
    got = await stub.GetOrder(api.GetOrderRequest(order_id=ack.order_id), metadata=ALICE)
    assert got.order.request.client_order_id == "s1"
    batch = await stub.SubmitOrders(
        api.SubmitOrdersRequest(orders=[new_order("s2", "ETHUSDT"), new_order("s3", "ESZ4")]), metadata=ALICE
    )
    assert [a.client_order_id for a in batch.acks] == ["s2", "s3"]
    canceled = await stub.CancelOrder(api.CancelOrderRequest(order_id=ack.order_id), metadata=ALICE)
    assert canceled.ack.status == api.ORDER_STATUS_CANCELED
    # An account sees its own figures only (suite-wide ones are for service principals).
    stats = await stub.GetStats(api.GetStatsRequest(), metadata=ALICE)
    assert stats.open_orders == 2 and stats.orders_received == 0
    everything = await stub.CancelAll(api.CancelAllRequest(), metadata=ALICE)
    assert len(everything.canceled_order_ids) == 2
    # The shard's own refusals pass through unchanged.
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await stub.SubmitOrders(api.SubmitOrdersRequest(), metadata=ALICE)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the batch is empty" in (empty.value.details() or "")
    assert gateway.forwarder.sent == {0: 7}


async def test_streams_pass_through_to_the_one_shard(one_shard: tuple) -> None:  # type: ignore[type-arg]
    _, _, stub = one_shard
    # From the first retained report (the shard is new: st1's comes first), not live_only: a live
    # subscription could reach the shard after the order and miss its report (seen once under load).
    reports = stub.StreamExecutions(api.StreamExecutionsRequest(), metadata=ALICE)

    async def requests() -> AsyncIterator[api.OrderStreamRequest]:
        yield api.OrderStreamRequest(inputs=[api.OrderInput(new_order=new_order("st1", "BTCUSDT"))])
        await asyncio.sleep(0.2)

    session = stub.OrderStream(requests(), metadata=ALICE)
    first = await asyncio.wait_for(session.read(), 5)
    assert [a.client_order_id for a in first.acks] == ["st1"]
    assert first.acks[0].status == api.ORDER_STATUS_NEW
    report = await asyncio.wait_for(reports.read(), 5)
    assert report.client_order_id == "st1" and report.exec_type == api.EXEC_TYPE_NEW
    reports.cancel()
    session.cancel()


async def test_the_stored_map_wins_over_the_config(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shardmap.sqlite3'}"
    store = ShardMapStore(url)
    await store.start()
    stored = await store.create(ShardMap(3, [Shard(4, "127.0.0.1:7")]))
    await store.close()
    reference = f"sqlite+aiosqlite:///{tmp_path / 'reference.sqlite3'}"
    seeder = await start_execution(execution_config(tmp_path / "seed", reference_database_url=reference))
    await seeder.stop(0)
    gateway = await start_gateway(gateway_config(tmp_path, url, execution_shards=("127.0.0.1:50051",)))
    try:
        assert gateway.app.shard_map == stored
    finally:
        await gateway.stop(0)


async def test_a_bad_stream_message_is_refused_by_the_gateway_after_the_acks_before_it(
    one_shard: tuple,  # type: ignore[type-arg]
) -> None:
    """The gateway checks each OrderStream message as the shard would: one that does not decode, or
    carries no input, ends the stream INVALID_ARGUMENT saying why, after the acks of the messages
    before it, however many more the client sends. (Forwarded, the shard's abort raced the
    gateway's next write and reached the client as INTERNAL: grpc issue #36066.)"""
    _, gateway, _ = one_shard
    good = api.OrderStreamRequest(inputs=[api.OrderInput(new_order=new_order("ok", "BTCUSDT"))])
    cases = [
        (b"\x0a\xff\xff\x37", "request is not a valid hftgate.v1.OrderStreamRequest"),
        (api.OrderStreamRequest().SerializeToString(), "must carry 1..1000 inputs, got 0"),
    ]
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    raw = channel.stream_stream("/hftgate.v1.ExecutionService/OrderStream", None, None)
    try:
        for round_ in range(10):  # the race took one call in several to show
            for case, (bad, said) in enumerate(cases):
                name = f"g{round_}-{case}"
                first = api.OrderStreamRequest(inputs=[api.OrderInput(new_order=new_order(name, "ETHUSDT"))])
                call = raw(
                    iter([first.SerializeToString(), bad, *[good.SerializeToString()] * 4]), metadata=ALICE
                )
                acks: list[api.OrderAck] = []
                with pytest.raises(grpc.aio.AioRpcError) as ended:
                    async for data in call:
                        acks.extend(api.OrderStreamResponse.FromString(data).acks)
                assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ended.value.details()
                assert said in (ended.value.details() or "")
                assert [(a.client_order_id, a.status) for a in acks] == [(name, api.ORDER_STATUS_NEW)]
    finally:
        await channel.close(None)
