"""The gateway across a symbol move: a cancel or get of an order taken before its symbol moved
reaches the new owner (the old shard refuses NOT_SHARD_OWNER before acting; the gateway sends it
once to the owner its own map has); an order for a symbol being moved gets the shard's
UNAVAILABLE + RetryInfo back unchanged and is never re-sent by the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hftgate import security
from hftgate.shardmap import Shard, ShardMap, order_id_shard
from hftgate.v1 import execution_pb2 as api
from services.execution.app import start as start_execution
from services.scaler.moves import Move, SymbolMover
from tests.services.execution.conftest import execution_config
from tests.services.gateway.conftest import ALICE, Suite, new_order, shards_follow


class _Stop(Exception):
    pass


def mover(suite: Suite) -> SymbolMover:
    return SymbolMover(
        suite.store, security.load_suite_secret().service_credentials("scaler"), retry_delay_s=0.05
    )


async def test_orders_taken_before_a_move_are_found_on_the_new_owner_through_the_gateway(
    suite: Suite,
) -> None:
    ack = (
        await suite.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("pre", "BTCUSDT")), metadata=ALICE
        )
    ).ack
    assert ack.status == api.ORDER_STATUS_NEW and order_id_shard(ack.order_id) == 0
    async with mover(suite) as moving:
        done = await moving.move("BTCUSDT", 1)
    assert done.step == "done"
    stored = await suite.store.load()
    assert stored is not None and stored.owner("BTCUSDT").shard_id == 1
    await shards_follow(suite.shards, stored.epoch)
    app = suite.gateway.app
    assert app is not None
    for _ in range(200):  # the gateway polls the map (50 ms here)
        if app.shard_map.epoch >= stored.epoch:
            break
        await asyncio.sleep(0.02)
    got = await suite.stub.GetOrder(api.GetOrderRequest(order_id=ack.order_id), metadata=ALICE)
    assert got.order.order_id == ack.order_id and got.order.request.client_order_id == "pre"
    cancelled = await suite.stub.CancelOrder(api.CancelOrderRequest(order_id=ack.order_id), metadata=ALICE)
    assert cancelled.ack.status == api.ORDER_STATUS_CANCELED
    # New orders of the symbol now land on shard 1 with shard 1's ids.
    after = (
        await suite.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("post", "BTCUSDT")), metadata=ALICE
        )
    ).ack
    assert order_id_shard(after.order_id) == 1


async def test_an_order_for_a_moving_symbol_gets_the_shards_retry_advice_and_is_not_resent(
    suite: Suite,
) -> None:
    def stop_at_export(move: Move) -> None:
        if move.step == "export":
            raise _Stop

    async with mover(suite) as moving:
        moving.before_step = stop_at_export
        started = await moving.start_move("BTCUSDT", 1)
        with contextlib.suppress(_Stop):
            await moving.run(started.move_id)
    marked = await suite.store.load()
    assert marked is not None and marked.moving == {"BTCUSDT": 1}
    await shards_follow(suite.shards, marked.epoch)
    before = suite.orders_on(0) + suite.orders_on(1)
    try:
        await suite.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("mid", "BTCUSDT")), metadata=ALICE
        )
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
        assert status is not None
        assert any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    else:
        raise AssertionError("an order for a moving symbol was accepted")
    assert suite.orders_on(0) + suite.orders_on(1) - before <= 1, "sent to a shard at most once"
    async with mover(suite) as moving:
        assert [m.step for m in await moving.resume_all()] == ["done"]


async def test_an_order_of_a_retired_shard_is_found_where_its_symbol_moved(suite: Suite) -> None:
    # A third shard, so that two remain once shard 0 is retired (with one, every call goes there);
    # in the map before it starts, as the rebalancer adds one.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    grown = await suite.store.update(lambda m: m.with_shard(Shard(2, f"127.0.0.1:{port}")))
    third = await start_execution(
        execution_config(
            suite.tmp / "shard2",
            port=port,
            reference_database_url=f"sqlite+aiosqlite:///{suite.tmp / 'reference.sqlite3'}",
            shard_id=2,
            shard_map_database_url=suite.store.url,
        )
    )
    suite.extra.append(third)
    await shards_follow([*suite.shards, third], grown.epoch)
    ack, streamed = [
        (
            await suite.stub.SubmitOrder(
                api.SubmitOrderRequest(order=new_order(name, "BTCUSDT")), metadata=ALICE
            )
        ).ack
        for name in ("resting", "streamed")
    ]
    assert ack.status == api.ORDER_STATUS_NEW and order_id_shard(ack.order_id) == 0
    async with mover(suite) as moving:
        assert (await moving.move("BTCUSDT", 2)).step == "done"
    # Shard 0 retired (as the scaler's rebalancer does once its symbols are off): the map no longer
    # names it, so the order id's shard bits lead nowhere; the order rests on shard 2 under its id.
    retired = await suite.store.update(
        lambda m: ShardMap(
            m.epoch + 1,
            [s for s in m.shards if s.shard_id != 0],
            {symbol: sid for symbol, sid in m.pins.items() if sid != 0},
            m.moving,
        )
    )
    await shards_follow([*suite.shards, third], retired.epoch)
    app = suite.gateway.app
    assert app is not None
    for _ in range(200):
        if app.shard_map.epoch >= retired.epoch:
            break
        await asyncio.sleep(0.02)
    assert app.shard_map.shard(0) is None
    got = await suite.stub.GetOrder(api.GetOrderRequest(order_id=ack.order_id), metadata=ALICE)
    assert (got.order.order_id, got.order.request.client_order_id) == (ack.order_id, "resting")
    cancelled = await suite.stub.CancelOrder(api.CancelOrderRequest(order_id=ack.order_id), metadata=ALICE)
    assert cancelled.ack.status == api.ORDER_STATUS_CANCELED
    # The same on an OrderStream: the cancel by the retired shard's id reaches shard 2, not the
    # lowest shard (1), where a stream input that names no shard goes.
    session = suite.stub.OrderStream(metadata=ALICE)
    cancel = api.OrderInput(cancel=api.CancelOrderRequest(order_id=streamed.order_id))
    await session.write(api.OrderStreamRequest(inputs=[cancel]))
    while not (response := await asyncio.wait_for(session.read(), 10)).acks:
        assert response is not grpc.aio.EOF
    (stream_ack,) = response.acks
    assert (stream_ack.order_id, stream_ack.status) == (streamed.order_id, api.ORDER_STATUS_CANCELED)
    await session.done_writing()
