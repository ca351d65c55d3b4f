"""The fence is checked again right before the journal append (issue #14): an order that passed
the servicer's check and then awaited its instrument look-up while the shard map moved the symbol
away (or marked it moving) is refused, and nothing of it is journaled."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest

from hftgate.shardmap import Shard, ShardMap
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.reference import NOT_HELD
from tests.services.execution.conftest import Harness, key
from tests.services.gateway.conftest import new_order


class SlowLookup:
    """Holds every instrument look-up until released, so the map can change in between."""

    def __init__(self, h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        reference = h.core.reference
        self.original = reference.instrument
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        monkeypatch.setattr(reference, "instrument_held", lambda symbol: NOT_HELD)
        monkeypatch.setattr(reference, "instrument", self.instrument)

    async def instrument(self, symbol: str) -> Any:
        self.entered.set()
        await self.release.wait()
        return await self.original(symbol)


def moved_away(h: Harness) -> ShardMap:
    here = h.running.fence.map.shards[0].address
    return ShardMap(
        h.running.fence.epoch + 1, [Shard(0, here), Shard(1, "127.0.0.1:1")], {"BTCUSDT": 1, "ETHUSDT": 0}
    )


def marked_moving(h: Harness) -> ShardMap:
    here = h.running.fence.map.shards[0].address
    return ShardMap(
        h.running.fence.epoch + 1,
        [Shard(0, here), Shard(1, "127.0.0.1:1")],
        {"BTCUSDT": 0, "ETHUSDT": 0},
        {"BTCUSDT": 1},
    )


@pytest.fixture
async def slow(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[SlowLookup]:
    await harness.stub.SubmitOrder(  # the account and book exist: only the look-up awaits below
        api.SubmitOrderRequest(order=new_order("warm", "BTCUSDT", 4_000_000)), metadata=key("alice")
    )
    yield SlowLookup(harness, monkeypatch)


async def _while_looking_up(
    h: Harness, slow: SlowLookup, call: Any, new_map: Callable[[Harness], ShardMap]
) -> Any:
    task = asyncio.ensure_future(call)
    await asyncio.wait_for(slow.entered.wait(), 10)
    journaled = h.core.journal.next_seq
    assert h.running.fence.follow(new_map(h))
    slow.release.set()
    try:
        return await task
    finally:
        assert h.core.journal.next_seq == journaled  # nothing appended after the map moved


@pytest.mark.parametrize(
    ("new_map", "code"),
    [(moved_away, grpc.StatusCode.FAILED_PRECONDITION), (marked_moving, grpc.StatusCode.UNAVAILABLE)],
)
async def test_submit_order_refused_when_the_map_moves_during_the_lookup(
    harness: Harness, slow: SlowLookup, new_map: Callable[[Harness], ShardMap], code: grpc.StatusCode
) -> None:
    accepted = harness.core.counters.orders_accepted
    call = harness.stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("o1", "BTCUSDT", 4_000_000)), metadata=key("alice")
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _while_looking_up(harness, slow, call, new_map)
    assert err.value.code() == code
    assert harness.core.counters.orders_accepted == accepted


async def test_submit_orders_refused_when_the_map_moves_during_the_lookup(
    harness: Harness, slow: SlowLookup
) -> None:
    batch = api.SubmitOrdersRequest(
        orders=[new_order("b1", "BTCUSDT", 4_000_000), new_order("b2", "ETHUSDT", 200_000)]
    )
    call = harness.stub.SubmitOrders(batch, metadata=key("alice"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _while_looking_up(harness, slow, call, moved_away)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not own symbol 'BTCUSDT'" in (err.value.details() or "")


async def test_stream_input_refused_when_the_map_moves_during_the_lookup(
    harness: Harness, slow: SlowLookup
) -> None:
    stream = harness.stub.OrderStream(metadata=key("alice"))
    message = api.OrderStreamRequest(
        inputs=[
            api.OrderInput(new_order=new_order("s1", "BTCUSDT", 4_000_000)),
            api.OrderInput(new_order=new_order("s2", "ETHUSDT", 200_000)),
        ]
    )

    async def exchange() -> list[api.OrderAck]:
        await stream.write(message)
        acks: list[api.OrderAck] = []
        while len(acks) < 2:
            response = await stream.read()
            acks.extend(response.acks)
        await stream.done_writing()
        return acks

    acks = await asyncio.wait_for(_accepting_after(harness, slow, exchange()), 20)
    assert acks[0].reason == common.REJECT_REASON_NOT_SHARD_OWNER
    assert acks[1].status == api.ORDER_STATUS_NEW  # the symbol still owned goes on


async def _accepting_after(h: Harness, slow: SlowLookup, call: Any) -> Any:
    """As _while_looking_up, for a call that journals what it still owns."""
    task = asyncio.ensure_future(call)
    await asyncio.wait_for(slow.entered.wait(), 10)
    assert h.running.fence.follow(moved_away(h))
    slow.release.set()
    return await task


async def test_stream_inputs_of_a_moving_symbol_are_refused_unavailable_and_another_shards_not_owner(
    harness: Harness,
) -> None:
    """Per input on a stream: a symbol marked moving answers UNAVAILABLE (retry once the move is
    done), another shard's NOT_SHARD_OWNER (go to its owner), and one still owned goes on."""
    here = harness.running.fence.map.shards[0].address
    assert harness.running.fence.follow(
        ShardMap(
            harness.running.fence.epoch + 1,
            [Shard(0, here), Shard(1, "127.0.0.1:1")],
            {"BTCUSDT": 0, "ETHUSDT": 1, "ESZ4": 0},
            {"BTCUSDT": 1},
        )
    )
    journaled = harness.core.journal.next_seq
    stream = harness.stub.OrderStream(metadata=key("alice"))
    await stream.write(
        api.OrderStreamRequest(
            inputs=[
                api.OrderInput(new_order=new_order("m1", "BTCUSDT")),
                api.OrderInput(new_order=new_order("m2", "ETHUSDT")),
                api.OrderInput(new_order=new_order("m3", "ESZ4")),
            ]
        )
    )
    acks: list[api.OrderAck] = []
    while len(acks) < 3:
        acks.extend((await asyncio.wait_for(stream.read(), 10)).acks)
    await stream.done_writing()
    assert [(a.client_order_id, a.reason) for a in acks] == [
        ("m1", common.REJECT_REASON_UNAVAILABLE),
        ("m2", common.REJECT_REASON_NOT_SHARD_OWNER),
        ("m3", 0),
    ]
    assert acks[2].status == api.ORDER_STATUS_NEW
    assert harness.core.journal.next_seq > journaled  # the owned symbol's order, only it
    assert harness.core.state.order_id_for(harness.core.reference.account_held("alice").account_id, "m1") == 0
