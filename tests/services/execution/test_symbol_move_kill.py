"""kill -9 of a shard process at every step of a symbol move (issue #15).

Two real ``python -m services.execution`` processes share a shard map; the mover is abandoned
at each step in turn (as a killed mover would be), the shard that step talks to is SIGKILLed and
restarted from its state directory, and the mover resumes. At the end exactly one shard owns the symbol,
and it holds every working order with the state it had, under its original id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from hftgate.bench.execution import ExecutionProcess
from hftgate.security import ADMIN, load_suite_secret
from hftgate.shardmap import Shard, ShardMap, ShardMapStore
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc
from services.scaler.moves import STEPS, Move, SymbolMover

SYMBOL = "BTCUSDT"


class _Abandoned(Exception):
    pass


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[list[ExecutionProcess]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shardmap.sqlite3'}"
    made: list[ExecutionProcess] = []
    for shard_id in (0, 1):
        settings = {
            "shard_id": str(shard_id),
            "shard_map_database_url": url,
            "shard_map_poll_ms": "50",
            "state_dir": str(tmp_path / f"shard{shard_id}"),
            "snapshot_every_inputs": "4",  # snapshots too, so a restart starts from one
            "snapshot_min_interval_s": "0",
        }
        process = ExecutionProcess(tmp_path, settings)  # one suite secret under tmp_path
        process.log_dir = tmp_path / f"logs{shard_id}"  # the port is read from its own log
        if made:
            process.key_secret = made[0].key_secret  # one reference table, one set of demo keys
        made.append(process)
    try:
        yield made
    finally:
        for process in made:
            process.kill()


def _new(client_id: str, side: int, price: int, qty: int = 10, display: int = 0) -> api.NewOrder:
    return api.NewOrder(
        client_order_id=client_id,
        symbol=SYMBOL,
        side=side,  # type: ignore[arg-type]
        order_type=api.ORDER_TYPE_LIMIT,
        time_in_force=api.TIME_IN_FORCE_GTC,
        price_ticks=price,
        quantity_lots=qty,
        display_quantity_lots=display,
    )


async def test_kill_9_of_a_shard_at_every_step_recovers_one_owner_with_the_same_book(
    tmp_path: Path, processes: list[ExecutionProcess]
) -> None:
    zero, one = processes
    for process in processes:
        process.spawn()
    for process in processes:
        await process.wait_ready()
    url = f"sqlite+aiosqlite:///{tmp_path / 'shardmap.sqlite3'}"
    store = ShardMapStore(url)
    await store.start()
    await store.create(ShardMap(1, [Shard(0, zero.address), Shard(1, one.address)], {SYMBOL: 0}))
    secret = load_suite_secret(zero.environment(), state_dir=tmp_path, create=False)
    mover = SymbolMover(store, secret.service_credentials(ADMIN), retry_delay_s=0.1, attempts=100)
    await mover.start()
    channels = [grpc.aio.insecure_channel(p.address) for p in processes]
    try:
        stubs = [api_grpc.ExecutionServiceStub(c) for c in channels]
        book: dict[int, tuple[str, int, int]] = {}  # order id -> (account, status, leaves)
        plan = [
            ("alice", _new("a1", common.SIDE_BUY, 4_990_000)),
            ("bob", _new("b1", common.SIDE_BUY, 4_990_000)),
            ("carol", _new("c1", common.SIDE_BUY, 4_980_000)),
            ("dave", _new("d1", common.SIDE_SELL, 5_010_000, 30, display=10)),
            ("dave", _new("d2", common.SIDE_SELL, 4_990_000, 4)),  # fills 4 of a1 before the move
        ]
        for account, order in plan:
            for attempt in range(100):  # the shard follows the stored map within its poll
                try:
                    reply = await stubs[0].SubmitOrder(
                        api.SubmitOrderRequest(order=order), metadata=zero.account(account).metadata
                    )
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.FAILED_PRECONDITION or attempt == 99:
                        raise
                    await _sleep(0.05)
            assert reply.ack.reason == 0, reply.ack.reason_text
            book[reply.ack.order_id] = (account, reply.ack.status, reply.ack.leaves_quantity_lots)
        a1 = next(i for i, v in book.items() if v[0] == "alice")
        book[a1] = ("alice", api.ORDER_STATUS_PARTIALLY_FILLED, 6)
        book = {i: v for i, v in book.items() if v[1] != api.ORDER_STATUS_FILLED}

        move = await mover.start_move(SYMBOL, 1)
        # The shard the step about to run talks to dies: the old owner before it exports and
        # before it records the release, the new owner before it imports and before the pin.
        victims = {"export": zero, "import": one, "release": zero, "publish": one}
        for stop_at in STEPS[1:-1]:

            def kill_at(current: Move, stop_at: str = stop_at) -> None:
                if current.step == stop_at:
                    raise _Abandoned(stop_at)

            mover.before_step = kill_at
            with pytest.raises(_Abandoned):
                await mover.run(move.move_id)
            victim = victims[stop_at]
            victim.kill()  # SIGKILL, then a start from its state directory
            victim.spawn()
            await victim.wait_ready()
        mover.before_step = None
        assert (await mover.run(move.move_id)).step == "done"

        stored = await store.load()
        assert stored is not None and stored.owner(SYMBOL).shard_id == 1 and not stored.moving
        for order_id, (account, status, leaves) in book.items():
            metadata = one.account(account).metadata
            got = await stubs[1].GetOrder(api.GetOrderRequest(order_id=order_id), metadata=metadata)
            assert (got.order.order_id, got.order.status, got.order.leaves_quantity_lots) == (
                order_id,
                status,
                leaves,
            )
            with pytest.raises(grpc.aio.AioRpcError) as old:
                await stubs[0].GetOrder(api.GetOrderRequest(order_id=order_id), metadata=metadata)
            assert old.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        for channel in channels:
            await channel.close(None)
        await mover.close()
        await store.close()


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)
