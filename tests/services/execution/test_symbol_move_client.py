"""The routing client across a symbol move: while the symbol is marked moving it waits out the
shards' UNAVAILABLE + RetryInfo and sends again; after the move, a cancel or get of an order the
old shard took follows the NOT_SHARD_OWNER refusal to the new owner (once)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from hftgate.client import HftgateClient
from hftgate.v1 import execution_pb2 as api
from services.scaler.moves import Move
from tests.services.execution.test_symbol_move import (
    BUY,
    SELL,
    SYMBOL,
    Pair,
    _Abandoned,
    order,
    shards_follow,
)
from tests.services.gateway.conftest import _NoRegistry


@pytest.fixture(autouse=True)
def _shards_share_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.execution.metrics.REGISTRY", _NoRegistry())


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    made = Pair(tmp_path)
    await made.start()
    try:
        yield made
    finally:
        await made.close()


async def client_for(pair: Pair, account: str, **options: float) -> HftgateClient:
    # No gateway here: the client is given the stored map instead of reading it from one.
    client = HftgateClient("127.0.0.1:1", api_key=f"hftgate-demo-{account}", watch_map=False, **options)
    client._route_directly = False  # start() must not wait on the absent gateway
    await client.start()
    client._route_directly = True
    stored = await pair.store.load()
    assert stored is not None and client.install(stored)
    return client


async def test_a_client_waits_out_a_move_and_follows_moved_orders_to_their_new_shard(pair: Pair) -> None:
    zero, one = pair.shards
    alice = await client_for(pair, "alice")
    try:
        resting = await alice.submit(order("r1", BUY, 4_990_000))
        assert resting.status == api.ORDER_STATUS_NEW and alice.sent == {0: 1}

        def stop_at_export(move: Move) -> None:
            if move.step == "export":
                raise _Abandoned(move.step)

        async with pair.mover() as mover:
            mover.before_step = stop_at_export
            move = await mover.start_move(SYMBOL, 1)
            with pytest.raises(_Abandoned):
                await mover.run(move.move_id)
        marked = await pair.store.load()
        assert marked is not None and marked.moving == {SYMBOL: 1}
        await shards_follow([zero.running, one.running], marked.epoch)

        # An order sent while the symbol is marked is refused before acceptance and re-sent
        # until the move ends (the mover finishes it meanwhile).
        async def finish_move() -> None:
            await asyncio.sleep(0.2)
            async with pair.mover() as mover:
                assert [m.step for m in await mover.resume_all()] == ["done"]

        finishing = asyncio.create_task(finish_move())
        during = await alice.submit(order("r2", BUY, 4_980_000), timeout=10)
        await finishing
        assert during.status == api.ORDER_STATUS_NEW
        assert alice.moving_retries >= 1

        # The client's map is stale (no watch): r1's id names shard 0, which answers
        # NOT_SHARD_OWNER naming shard 1; the client goes there once and remembers it.
        got = await alice.get(order_id=resting.order_id)
        assert got.order_id == resting.order_id and got.request.client_order_id == "r1"
        assert alice.owner_retries >= 1
        before = alice.sent.get(0, 0)
        cancelled = await alice.cancel(order_id=resting.order_id)
        assert cancelled.ack.order_id == resting.order_id
        assert cancelled.ack.status == api.ORDER_STATUS_CANCELED
        assert alice.sent.get(0, 0) == before, "the second call went straight to the new owner"
    finally:
        await alice.close()


async def test_a_plain_unavailable_is_never_resent(pair: Pair) -> None:
    zero, _ = pair.shards
    bob = await client_for(pair, "bob", moving_retry_s=5.0)
    try:
        await zero.close()  # the owner is down: UNAVAILABLE without RetryInfo
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await bob.submit(order("s1", SELL, 5_000_000), timeout=2)
        assert down.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert bob.moving_retries == 0 and bob.sent == {0: 1}
    finally:
        await bob.close()
