"""The routing client across a symbol move: while the symbol is marked moving it waits out the
shards' UNAVAILABLE + RetryInfo and sends again, one call per symbol at a time; after the move,
a cancel or get of an order the old shard took follows the NOT_SHARD_OWNER refusal to the new
owner (once)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hftgate.client import HftgateClient, MovingSymbolGate, retry_delay_s
from hftgate.v1 import execution_pb2 as api
from tests.services.execution.conftest import key
from tests.services.execution.test_symbol_move import (
    BUY,
    SELL,
    SYMBOL,
    Pair,
    mark_moving,
    order,
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


async def client_for(pair: Pair, account: str, *, moving_retry_s: float = 2.0) -> HftgateClient:
    # No gateway here: the client is given the stored map instead of reading it from one.
    client = HftgateClient(
        "127.0.0.1:1", api_key=f"hftgate-demo-{account}", watch_map=False, moving_retry_s=moving_retry_s
    )
    client._route_directly = False  # start() must not wait on the absent gateway
    await client.start()
    client._route_directly = True
    stored = await pair.store.load()
    assert stored is not None and client.install(stored)
    return client


async def test_a_client_waits_out_a_move_and_follows_moved_orders_to_their_new_shard(pair: Pair) -> None:
    alice = await client_for(pair, "alice")
    try:
        resting = await alice.submit(order("r1", BUY, 4_990_000))
        assert resting.status == api.ORDER_STATUS_NEW and alice.sent == {0: 1}

        await mark_moving(pair)

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


class _CountingStub:
    """A shard stub that counts SubmitOrder calls out at once and the symbol's refusals per order."""

    def __init__(self, stub: Any, counts: _Counts) -> None:
        self._stub = stub
        self._counts = counts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stub, name)

    async def SubmitOrders(self, request: api.SubmitOrdersRequest, **kwargs: Any) -> Any:
        self._counts.batches.append([o.client_order_id for o in request.orders])
        return await self._stub.SubmitOrders(request, **kwargs)

    async def SubmitOrder(self, request: api.SubmitOrderRequest, **kwargs: Any) -> Any:
        counts = self._counts
        counts.out += 1
        counts.most_out = max(counts.most_out, counts.out)
        counts.sent_while_watched += counts.watching
        try:
            return await self._stub.SubmitOrder(request, **kwargs)
        except grpc.aio.AioRpcError as err:
            if retry_delay_s(err) is not None:
                counts.refused.add(request.order.client_order_id)
            raise
        finally:
            counts.out -= 1


class _Counts:
    def __init__(self) -> None:
        self.batches: list[list[str]] = []  # client order ids of each SubmitOrders
        self.out = 0
        self.most_out = 0
        self.watching = False
        self.sent_while_watched = 0
        self.refused: set[str] = set()


async def test_calls_waiting_out_a_move_send_again_one_at_a_time_then_all_reach_the_new_owner(
    pair: Pair,
) -> None:
    """One probe while the symbol is marked; once its order is accepted by the new owner, the nine
    orders that waited go there with it as one SubmitOrders, each call getting its own ack."""
    _, one = pair.shards
    alice = await client_for(pair, "alice", moving_retry_s=30.0)
    counts = _Counts()
    try:
        stored = await pair.store.load()
        assert stored is not None
        for shard in stored.shards:
            alice._shard_target(shard)
        for address, (channel, stub) in list(alice._shards.items()):
            alice._shards[address] = (channel, _CountingStub(stub, counts))  # type: ignore[assignment]

        await mark_moving(pair)

        names = [f"w{n}" for n in range(10)]
        waiting = [
            asyncio.create_task(alice.submit(order(name, BUY, 4_990_000 - 100 * n), timeout=30))
            for n, name in enumerate(names)
        ]
        async with asyncio.timeout(60):  # a guard against a hang, not a measurement
            while len(counts.refused) < len(names):  # every call was turned away once
                await asyncio.sleep(0.005)
            counts.most_out = counts.out
            counts.watching = True
            while counts.sent_while_watched < 20:  # the symbol stays marked while they wait
                await asyncio.sleep(0.005)
            counts.watching = False
        assert counts.most_out == 1, "while the symbol is marked one call is sent again at a time"
        assert not any(task.done() for task in waiting)

        async with pair.mover() as mover:
            assert [m.step for m in await mover.resume_all()] == ["done"]
        acks = await asyncio.gather(*waiting)
        assert [a.status for a in acks] == [api.ORDER_STATUS_NEW] * len(names)
        (batch,) = counts.batches  # all but the probe's own order, in one SubmitOrders
        assert len(batch) == len(names) - 1 and set(batch) < set(names)
        for ack, name in zip(acks, names, strict=True):
            got = await one.stub.GetOrder(api.GetOrderRequest(order_id=ack.order_id), metadata=key("alice"))
            assert got.order.request.client_order_id == name
    finally:
        await alice.close()


async def test_the_gate_lets_one_probe_through_and_wakes_every_waiter_when_it_is_answered() -> None:
    gate = MovingSymbolGate()
    assert gate.claim(SYMBOL) and not gate.claim(SYMBOL) and gate.probing(SYMBOL)
    assert not gate.probing("ETHUSDT")
    loop = asyncio.get_running_loop()
    waiters = [asyncio.create_task(gate.wait(SYMBOL, loop.time() + 3600)) for _ in range(5)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    gate.release(SYMBOL)
    await asyncio.gather(*waiters)
    assert not gate.probing(SYMBOL) and gate.claim(SYMBOL)
    await gate.wait(SYMBOL, loop.time())  # past its deadline a waiter goes without the answer
    await gate.wait("ETHUSDT", loop.time() + 3600)  # nobody probes it: no wait


class _ScriptedStub:
    """SubmitOrders answering from a script: acks for each order, or raising the given error."""

    def __init__(self, error: grpc.aio.AioRpcError | None = None) -> None:
        self.error = error
        self.calls: list[list[str]] = []

    async def SubmitOrders(self, request: api.SubmitOrdersRequest, **_: Any) -> api.SubmitOrdersResponse:
        self.calls.append([o.client_order_id for o in request.orders])
        if self.error is not None:
            raise self.error
        return api.SubmitOrdersResponse(
            acks=[
                api.OrderAck(order_id=n + 1, client_order_id=o.client_order_id, status=api.ORDER_STATUS_NEW)
                for n, o in enumerate(request.orders)
            ]
        )


def _error(code: grpc.StatusCode) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=code.name)


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "acks"),
        (_error(grpc.StatusCode.UNAVAILABLE), "each its own error"),  # (no RetryInfo: maybe accepted)
        ("moving", "sent alone"),
        ("not owner", "sent alone"),
    ],
)
async def test_the_probes_batch_gives_each_waiter_its_ack_or_hands_back_what_was_refused_whole(
    monkeypatch: pytest.MonkeyPatch, error: Any, outcome: str
) -> None:
    from hftgate import client as client_module
    from hftgate.client import _Target

    refused = _error(
        grpc.StatusCode.UNAVAILABLE if error == "moving" else grpc.StatusCode.FAILED_PRECONDITION
    )
    if error == "moving":
        monkeypatch.setattr(client_module, "retry_delay_s", lambda e: 0.005 if e is refused else None)
    if error == "not owner":
        monkeypatch.setattr(client_module, "not_owner_info", lambda e: object() if e is refused else None)
    stub = _ScriptedStub(refused if isinstance(error, str) else error)
    gate = MovingSymbolGate()
    assert gate.hold(SYMBOL, order("nobody probes", BUY, 1), None) is None
    assert gate.claim(SYMBOL)
    held = [gate.hold(SYMBOL, order(f"h{n}", BUY, 4_990_000), 5.0) for n in range(3)]
    assert all(h is not None for h in held)
    gate.unhold(SYMBOL, held[1])  # (gave up waiting: sends it itself)
    taken = gate.take_held(SYMBOL)
    assert [h.order.client_order_id for h in taken] == ["h0", "h2"] and all(h.taken for h in taken)
    gate.release(SYMBOL)
    client = HftgateClient("127.0.0.1:1", watch_map=False)
    await client._send_held(_Target(stub, 1, "shard-1"), SYMBOL, taken)  # type: ignore[arg-type]
    assert stub.calls == [["h0", "h2"]]  # one batch, in the order they waited
    if outcome == "acks":
        assert [(await h.result).client_order_id for h in taken] == ["h0", "h2"]  # type: ignore[union-attr]
    elif outcome == "sent alone":
        assert [await h.result for h in taken] == [None, None]
    else:
        for h in taken:
            with pytest.raises(grpc.aio.AioRpcError):
                await h.result
