"""OrderStream isolation through a real server: every ack reaches the stream that sent its input.

Issue #12 part 2: a stream message whose inputs were all refused used to wait behind the last
batch in flight of *any* stream and went out through that stream, so another account got the
acks (client order ids, prices, reasons) and the sender's stream never completed. Here many
streams of several accounts run at once, mixing accepted inputs (GTC limits, crossing and
non-crossing IOCs, cancels of working orders) with refused ones (quantity 0, cancels of finished
orders), and each stream must get exactly its own acks, one per input, in input order, and end.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api

from .conftest import execution_config, key, start_harness


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Any]:
    """The shared harness with room for every report these floods make (8,000 for the largest):
    the tests are about whose acks and reports reach which stream, so no reader here may be cut
    off as too slow (test_execution_streams_bounded.py tests that), however the machine's load
    shares the event loop between the server and the test's readers."""
    h = await start_harness(execution_config(tmp_path, retained_reports=100_000))
    try:
        yield h
    finally:
        await h.close()


BUY, SELL = common.SIDE_BUY, common.SIDE_SELL
NEW, CANCEL = api.ORDER_ACTION_NEW, api.ORDER_ACTION_CANCEL
REJECTED = api.ORDER_STATUS_REJECTED
#: How long one stream may take before the test calls it stuck (a stream that never completes).
STREAM_DEADLINE_S = 60.0

Check = Callable[[api.OrderAck], bool]


def _order(
    client_id: str, side: int, price: int, qty: int, tif: int = api.TIME_IN_FORCE_GTC
) -> api.OrderInput:
    return api.OrderInput(
        new_order=api.NewOrder(
            client_order_id=client_id,
            symbol="BTCUSDT",
            side=side,  # type: ignore[arg-type]
            order_type=api.ORDER_TYPE_LIMIT,
            time_in_force=tif,  # type: ignore[arg-type]
            price_ticks=price,
            quantity_lots=qty,
        )
    )


def _cancel(client_id: str) -> api.OrderInput:
    return api.OrderInput(cancel=api.CancelOrderRequest(client_order_id=client_id))


def _rejected(reason: int) -> Check:
    return lambda ack: ack.status == REJECTED and ack.reason == reason


def _accepted(ack: api.OrderAck) -> bool:
    return ack.status != REJECTED and ack.sequence > 0 and ack.order_id > 0


@dataclass
class Script:
    """One stream's messages and, per input in order, the ack it must get: (client id, action, check)."""

    name: str
    account: str
    messages: list[list[api.OrderInput]] = field(default_factory=list)
    expected: list[tuple[str, int, Check]] = field(default_factory=list)

    def send(self, inputs: list[tuple[api.OrderInput, str, int, Check]]) -> None:
        self.messages.append([i for i, _, _, _ in inputs])
        self.expected.extend((cid, action, check) for _, cid, action, check in inputs)


async def _run(stub: Any, script: Script) -> tuple[list[api.OrderAck], list[api.ExecutionReport]]:
    async def requests() -> AsyncIterator[api.OrderStreamRequest]:
        for inputs in script.messages:
            yield api.OrderStreamRequest(inputs=inputs)
            await asyncio.sleep(0)  # interleave with the other streams' messages

    acks: list[api.OrderAck] = []
    reports: list[api.ExecutionReport] = []

    async def read() -> None:
        async for response in stub.OrderStream(requests(), metadata=key(script.account)):
            acks.extend(response.acks)
            reports.extend(response.executions)

    await asyncio.wait_for(read(), STREAM_DEADLINE_S)
    return acks, reports


def _assert_own_acks(script: Script, acks: list[api.OrderAck]) -> None:
    foreign = [a.client_order_id for a in acks if not a.client_order_id.startswith(script.name + "-")]
    assert not foreign, f"{script.name} got acks of other streams: {foreign[:5]}"
    got = [(a.client_order_id, a.action) for a in acks]
    want = [(cid, action) for cid, action, _ in script.expected]
    assert len(got) == len(want), f"{script.name}: {len(got)} acks for {len(want)} inputs"
    assert got == want, f"{script.name}: acks out of input order"
    bad = [
        (a.client_order_id, a.status, a.reason)
        for a, (_, _, check) in zip(acks, script.expected, strict=True)
        if not check(a)
    ]
    assert not bad, f"{script.name}: unexpected ack contents {bad[:5]}"
    sequences = [a.sequence for a in acks if a.sequence]
    assert sequences == sorted(sequences), f"{script.name}: accepted inputs acked out of journal order"


def _ioc_flood(name: str, account: str, messages: int, per_message: int) -> Script:
    """Messages of IOC buys far below any ask: each is accepted and expires unfilled."""
    script = Script(name, account)
    for m in range(messages):
        script.send(
            [
                (_order(f"{name}-{m}-{i}", BUY, 10 + i, 1, api.TIME_IN_FORCE_IOC), f"{name}-{m}-{i}", NEW,
                 lambda a: a.status == api.ORDER_STATUS_EXPIRED and a.sequence > 0)
                for i in range(per_message)
            ]
        )  # fmt: skip
    return script


def _refused_singles(name: str, account: str, messages: int) -> Script:
    """One IOC that expires, then single-input messages that are all refused: quantity 0, and
    cancels of that finished order."""
    script = Script(name, account)
    done = f"{name}-done"
    script.send([(_order(done, BUY, 11, 1, api.TIME_IN_FORCE_IOC), done, NEW, _accepted)])
    for m in range(messages):
        if m % 2:
            script.send([(_cancel(done), done, CANCEL, _rejected(common.REJECT_REASON_UNKNOWN_ORDER))])
        else:
            cid = f"{name}-zero-{m}"
            script.send(
                [(_order(cid, BUY, 100, 0), cid, NEW, _rejected(common.REJECT_REASON_INVALID_QUANTITY))]
            )
    return script


async def test_refused_only_messages_never_reach_another_accounts_stream(harness: Any) -> None:
    """The issue's repro: bob's 200 messages of 20 IOCs against alice's 200 refused singles."""
    bob = _ioc_flood("bob", "bob", 200, 20)
    alice = _refused_singles("alice", "alice", 200)
    (bob_acks, _), (alice_acks, alice_reports) = await asyncio.gather(
        _run(harness.stub, bob), _run(harness.stub, alice)
    )
    _assert_own_acks(bob, bob_acks)
    _assert_own_acks(alice, alice_acks)
    assert all(r.client_order_id.startswith("alice-") for r in alice_reports)


def _mixed(name: str, account: str, seed: int, messages: int, price_base: int) -> Script:
    """A random mix per message of resting orders, crossing IOCs, cancels of working and of finished
    orders, and refused inputs; some messages refused as a whole."""
    rng = random.Random(seed)
    script = Script(name, account)
    working: list[str] = []
    finished: list[str] = []
    serial = 0

    def fresh() -> str:
        nonlocal serial
        serial += 1
        return f"{name}-{serial}"

    for _ in range(messages):
        inputs: list[tuple[api.OrderInput, str, int, Check]] = []
        refused_only = rng.random() < 0.4
        for _ in range(1 if refused_only else rng.randint(1, 6)):
            roll = rng.random()
            if refused_only or roll < 0.2:
                if finished and rng.random() < 0.5:
                    cid = rng.choice(finished)
                    inputs.append((_cancel(cid), cid, CANCEL, _rejected(common.REJECT_REASON_UNKNOWN_ORDER)))
                else:
                    cid = fresh()
                    inputs.append(
                        (
                            _order(cid, BUY, price_base, 0),
                            cid,
                            NEW,
                            _rejected(common.REJECT_REASON_INVALID_QUANTITY),
                        )
                    )
            elif roll < 0.5:
                # A resting sell far above every buy of the test: it stays working.
                cid = fresh()
                inputs.append((_order(cid, SELL, 1_000_000 + price_base, 1), cid, NEW, _accepted))
                working.append(cid)
            elif roll < 0.75 and working:
                cid = working.pop(rng.randrange(len(working)))
                inputs.append(
                    (
                        _cancel(cid),
                        cid,
                        CANCEL,
                        lambda a: a.status == api.ORDER_STATUS_CANCELED and a.sequence > 0,
                    )
                )
                finished.append(cid)
            else:
                # An IOC buy below every sell: accepted, expires unfilled, finished for later cancels.
                cid = fresh()
                inputs.append((_order(cid, BUY, price_base, 1, api.TIME_IN_FORCE_IOC), cid, NEW, _accepted))
                finished.append(cid)
        script.send(inputs)
    return script


async def test_many_concurrent_streams_of_several_accounts_each_get_exactly_their_acks(harness: Any) -> None:
    scripts = [
        _mixed(f"{account}{copy}", account, seed=n, messages=120, price_base=50 + n)
        for n, (account, copy) in enumerate(
            (account, copy) for account in ("alice", "bob", "carol", "dave") for copy in range(2)
        )
    ]
    results = await asyncio.gather(*(_run(harness.stub, script) for script in scripts))
    for script, (acks, reports) in zip(scripts, results, strict=True):
        _assert_own_acks(script, acks)
        # Reports are the account's (from both of its streams), never another account's.
        owners = {r.client_order_id.split("-")[0].rstrip("0123456789") for r in reports}
        assert owners <= {script.account}, (script.name, owners)


async def test_stream_state_is_released_once_nothing_is_in_flight(harness: Any) -> None:
    """The per-stream bookkeeping of batches in flight does not outlive the batches."""
    script = _refused_singles("carol", "carol", 20)
    acks, _ = await _run(harness.stub, script)
    _assert_own_acks(script, acks)
    await asyncio.sleep(0.05)
    assert harness.core._inflight == {}
