"""Scaling execution by moving symbols (services/scaler/rebalancer.py, issue #15), with real
execution shards in this process and the real mover: a shard added takes the symbols rendezvous
hashing gives it, with their resting orders and ids; a shard retired hands all of its symbols
to the remaining one and is stopped; a move the new owner refuses stops the rebalance with one
owner per symbol and says so in the decision; a scaler restarted in the middle of a move
finishes it."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hftgate import security
from hftgate.security import load_suite_security
from hftgate.shardmap import Shard, ShardMap, ShardMapStore, order_id_shard
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from hftgate.v1.execution_pb2_grpc import ExecutionServiceStub
from services.scaler.app import Scaler
from services.scaler.backends import (
    LOCAL_PROCESS,
    BackendError,
    LocalProcessBackend,
    free_port,
    wait_serving,
)
from services.scaler.config import ScalerConfig
from services.scaler.decisions import Policy
from services.scaler.moves import Move, SymbolMover
from services.scaler.rebalancer import LocalShardLauncher, MoverRebalancer, reference_symbols
from services.scaler.registry import Report
from services.scaler.server import start
from tests.services.execution.conftest import Harness, execution_config, key, start_harness
from tests.services.gateway.conftest import _NoRegistry, shards_follow

#: Of the demo instruments, rendezvous hashing over shards {0, 1} gives these to shard 1 ...
TO_NEW_SHARD = ["ESZ4", "ETHUSDT"]
#: ... and this one to shard 0.
STAYING = "BTCUSDT"
MOVING = "ETHUSDT"
BUY, SELL = common.SIDE_BUY, common.SIDE_SELL


@pytest.fixture(autouse=True)
def _shards_share_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.execution.metrics.REGISTRY", _NoRegistry())


class InProcessShards:
    """A :class:`~services.scaler.rebalancer.ShardLauncher` whose shards are execution servers in
    this process, each in ``<tmp>/shard<id>``, on one shard map and one reference store."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.map_url = f"sqlite+aiosqlite:///{tmp / 'shardmap.sqlite3'}"
        self.reference_url = f"sqlite+aiosqlite:///{tmp / 'reference.sqlite3'}"
        self.shards: dict[int, Harness] = {}
        self.stopped: list[int] = []

    def has_state(self, shard_id: int) -> bool:
        return (self.tmp / f"shard{shard_id}").exists()

    async def start_shard(self, shard_id: int, address: str) -> None:
        config = execution_config(
            self.tmp / f"shard{shard_id}",
            reference_database_url=self.reference_url,
            shard_map_database_url=self.map_url,
            shard_id=shard_id,
            port=int(address.rpartition(":")[2]),
        )
        self.shards[shard_id] = await start_harness(config)

    async def stop_shard(self, shard_id: int) -> bool:
        harness = self.shards.pop(shard_id, None)
        if harness is None:
            return False
        await harness.close()
        self.stopped.append(shard_id)
        return True

    def shard_id_of(self, replica_id: str) -> int | None:
        return None  # in-process shards are never reported dead

    async def close(self) -> None:
        for harness in self.shards.values():
            await harness.close()
        self.shards.clear()


class Suite:
    """Execution shards 0..n-1 on a stored map, and rebalancers over them."""

    def __init__(self, tmp: Path) -> None:
        self.launcher = InProcessShards(tmp)
        self.store = ShardMapStore(self.launcher.map_url)
        self.movers: list[SymbolMover] = []

    async def start(self, shards: int) -> None:
        await self.store.start()
        # Shard 0 first (it seeds the demo instruments and accounts), on a port of its own.
        await self.launcher.start_shard(0, "127.0.0.1:0")
        zero = self.launcher.shards[0]
        initial = [Shard(0, f"127.0.0.1:{zero.running.port}")]
        for shard_id in range(1, shards):
            initial.append(Shard(shard_id, f"127.0.0.1:{free_port()}"))
        await self.store.create(ShardMap(1, initial))
        for shard in initial[1:]:
            await self.launcher.start_shard(shard.shard_id, shard.address)
        await shards_follow(self.running(), 1)

    def running(self) -> list[Any]:
        return [h.running for h in self.launcher.shards.values()]

    def rebalancer(self) -> MoverRebalancer:
        mover = SymbolMover(
            self.store, security.load_suite_secret().service_credentials("scaler"), retry_delay_s=0.05
        )
        self.movers.append(mover)
        return MoverRebalancer(
            self.store,
            mover,
            self.launcher,
            reference_symbols(self.launcher.reference_url),
            retire_grace_s=0.0,
        )

    async def stored(self) -> ShardMap:
        stored = await self.store.load()
        assert stored is not None
        return stored

    async def followed(self) -> ShardMap:
        """The stored map, once every running shard follows it."""
        stored = await self.stored()
        await shards_follow(self.running(), stored.epoch)
        return stored

    async def close(self) -> None:
        for mover in self.movers:
            await mover.close()
        await self.launcher.close()
        await self.store.close()


@pytest.fixture
async def suite(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Suite]:
    made = Suite(tmp_path)
    try:
        await made.start(getattr(request, "param", 1))
        yield made
    finally:
        await made.close()


def order(client_id: str, symbol: str, side: int, price: int, qty: int = 10) -> api.NewOrder:
    return api.NewOrder(
        client_order_id=client_id,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        order_type=api.ORDER_TYPE_LIMIT,
        time_in_force=api.TIME_IN_FORCE_GTC,
        price_ticks=price,
        quantity_lots=qty,
    )


async def submit(h: Harness, account: str, new: api.NewOrder) -> api.OrderAck:
    reply = await h.stub.SubmitOrder(api.SubmitOrderRequest(order=new), metadata=key(account))
    assert reply.ack.reason == 0, reply.ack.reason_text
    return reply.ack


async def refused_code(h: Harness, account: str, new: api.NewOrder) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await h.stub.SubmitOrder(api.SubmitOrderRequest(order=new), metadata=key(account))
    return err.value.code()


# --- 1 -> 2 --------------------------------------------------------------------------------------
async def test_a_new_shard_takes_its_symbols_with_their_resting_orders_and_ids(suite: Suite) -> None:
    zero = suite.launcher.shards[0]
    resting = await submit(zero, "alice", order("r1", MOVING, BUY, 300_000))
    kept = await submit(zero, "bob", order("k1", STAYING, BUY, 5_000_000))
    rebalancer = suite.rebalancer()
    await rebalancer.start()

    assert await rebalancer.rebalance("execution", 1, 2) == 2

    stored = await suite.followed()
    assert stored.shard_ids == (0, 1) and not stored.moving
    assert not stored.pins, "the moved symbols' pins are dropped: the hash gives them the same owner"
    assert [stored.owner(s).shard_id for s in (*TO_NEW_SHARD, STAYING)] == [1, 1, 0]
    assert rebalancer.history[-1].moved == [(s, 0, 1) for s in TO_NEW_SHARD]
    assert "added shard 1" in rebalancer.last_summary and "moved 2 symbol(s)" in rebalancer.last_summary
    one = suite.launcher.shards[1]

    # New orders for a moved symbol are taken by the new shard (its own ids), refused by the old.
    taken = await submit(one, "carol", order("n1", MOVING, SELL, 310_000))
    assert order_id_shard(taken.order_id) == 1
    assert await refused_code(zero, "dave", order("n2", MOVING, SELL, 310_000)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    # The resting order kept its id (shard 0's) and is cancelled on the new shard by that id.
    got = await one.stub.GetOrder(api.GetOrderRequest(order_id=resting.order_id), metadata=key("alice"))
    assert got.order.request.client_order_id == "r1" and got.order.order_id == resting.order_id
    cancelled = await one.stub.CancelOrder(
        api.CancelOrderRequest(order_id=resting.order_id), metadata=key("alice")
    )
    assert cancelled.ack.order_id == resting.order_id
    assert cancelled.ack.status == api.ORDER_STATUS_CANCELED
    # The symbol that stayed is untouched on shard 0.
    still = await zero.stub.GetOrder(api.GetOrderRequest(order_id=kept.order_id), metadata=key("bob"))
    assert still.order.order_id == kept.order_id
    assert await submit(zero, "dave", order("s1", STAYING, SELL, 5_100_000))


# --- 2 -> 1 --------------------------------------------------------------------------------------
@pytest.mark.parametrize("suite", [2], indirect=True)
async def test_a_retired_shard_hands_every_symbol_to_the_remaining_one_and_is_stopped(suite: Suite) -> None:
    zero, one = suite.launcher.shards[0], suite.launcher.shards[1]
    resting = await submit(one, "alice", order("r1", MOVING, BUY, 300_000))
    assert order_id_shard(resting.order_id) == 1
    rebalancer = suite.rebalancer()
    await rebalancer.start()

    assert await rebalancer.rebalance("execution", 2, 1) == 1

    stored = await suite.followed()
    assert stored.shard_ids == (0,) and not stored.moving and not stored.pins
    assert suite.launcher.stopped == [1] and 1 not in suite.launcher.shards
    assert rebalancer.history[-1].moved == [(s, 1, 0) for s in TO_NEW_SHARD]
    assert "retired shard 1" in rebalancer.last_summary
    assert not await wait_serving(f"127.0.0.1:{one.running.port}", 0.5), "its server is gone"
    # Shard 0 holds the book, by the original id, and takes new orders for the symbol.
    got = await zero.stub.GetOrder(api.GetOrderRequest(order_id=resting.order_id), metadata=key("alice"))
    assert got.order.order_id == resting.order_id and got.order.request.symbol == MOVING
    cancelled = await zero.stub.CancelOrder(
        api.CancelOrderRequest(order_id=resting.order_id), metadata=key("alice")
    )
    assert cancelled.ack.status == api.ORDER_STATUS_CANCELED
    assert order_id_shard((await submit(zero, "bob", order("b1", MOVING, BUY, 290_000))).order_id) == 0
    # Never below one shard.
    assert await rebalancer.rebalance("execution", 1, 0) == 1
    assert (await suite.stored()).shard_ids == (0,) and 0 in suite.launcher.shards
    with pytest.raises(BackendError, match="only execution is sharded"):
        await rebalancer.rebalance("marketdata", 1, 2)


# --- a refused move -------------------------------------------------------------------------------
async def test_a_refused_move_stops_the_rebalance_with_one_owner_and_the_decision_says_why(
    suite: Suite, tmp_path: Path
) -> None:
    rebalancer = suite.rebalancer()
    await rebalancer.start()
    # The local back end is configured but never used: execution's changes go to the rebalancer.
    local = LocalProcessBackend({}, tmp_path / "replicas")
    scaler = Scaler(ScalerConfig(port=0), {LOCAL_PROCESS: local}, rebalancer=rebalancer)
    scaler.set_policy(
        "admin",
        Policy(
            service="execution",
            target_value=100.0,
            min_replicas=1,
            max_replicas=2,
            scale_down_stabilization_ms=0,
            panic_threshold=0.0,
        ),
    )
    scaler.memories["execution"].discovering_until_ns = 0
    scaler.report("execution", Report("execution", "shard-0", inflight_requests=190))
    record = await scaler.evaluate("execution")
    assert record.decision.desired_replicas == 2 and record.applied, record.error
    assert "moved 2 symbol(s): ESZ4 0->1, ETHUSDT 0->1" in record.decision.reason
    zero, one = suite.launcher.shards[0], suite.launcher.shards[1]
    resting = await submit(one, "alice", order("r1", MOVING, BUY, 300_000))
    # Client order ids are unique per account on a shard: alice used "dup" on each of the two, so
    # shard 0 cannot take ETHUSDT's book back with her "dup" in it.
    await submit(one, "alice", order("dup", MOVING, BUY, 299_000))
    await submit(zero, "alice", order("dup", STAYING, BUY, 5_000_000))

    # Back to one shard: ESZ4 moves back (shard 0 takes back a book it handed over); ETHUSDT's
    # import is refused, so that move is abandoned and the rebalance stops there.
    scaler.report("execution", Report("execution", "shard-0", inflight_requests=1))
    scaler.report("execution", Report("execution", "shard-1", inflight_requests=1))
    record = await scaler.evaluate("execution")
    assert record.decision.desired_replicas == 1
    assert not record.applied and "stopped:" in record.error
    assert "client order id 'dup' of account alice is in use on shard 0" in record.error
    assert "moved 1 symbol(s): ESZ4 1->0; stopped:" in record.decision.reason
    stored = await suite.followed()
    assert stored.shard_ids == (0, 1) and not stored.moving
    assert [stored.owner(s).shard_id for s in TO_NEW_SHARD] == [0, 1]
    assert suite.launcher.stopped == [] and 1 in suite.launcher.shards
    got = await one.stub.GetOrder(api.GetOrderRequest(order_id=resting.order_id), metadata=key("alice"))
    assert got.order.order_id == resting.order_id
    assert await submit(one, "bob", order("b1", MOVING, SELL, 310_000))


# --- a scaler restarted in the middle --------------------------------------------------------------
class _Killed(Exception):
    """The scaler stops here, as if killed."""


async def test_a_restarted_scaler_finishes_the_move_its_predecessor_left(
    suite: Suite, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zero = suite.launcher.shards[0]
    resting = await submit(zero, "alice", order("r1", MOVING, BUY, 300_000))
    first = suite.rebalancer()
    await first.start()

    def killed_at_import_of_ethusdt(move: Move) -> None:
        if move.symbol == MOVING and move.step == "import":
            raise _Killed(move.step)

    first.mover.before_step = killed_at_import_of_ethusdt
    with pytest.raises(_Killed):
        await first.rebalance("execution", 1, 2)
    await first.mover.close()  # the process is gone; its shards keep running
    half = await suite.stored()
    assert half.moving == {MOVING: 1}, "the move was marked and its book exported"
    assert half.owner("ESZ4").shard_id == 1 and "ESZ4" not in half.pins

    # The next scaler, started as `python -m services.scaler` starts it (default back ends), finds
    # the suite's shard map store and reference data from the environment and resumes the move.
    monkeypatch.setenv("HFTGATE_STATE_DIR", str(tmp_path / "suite"))
    monkeypatch.setenv("HFTGATE_EXECUTION_SHARD_MAP_DATABASE_URL", suite.launcher.map_url)
    monkeypatch.setenv("HFTGATE_EXECUTION_REFERENCE_DATABASE_URL", suite.launcher.reference_url)
    running = await start(
        ScalerConfig(port=0, state_dir=str(tmp_path / "scaler")), load_suite_security("scaler"), loops=False
    )
    try:
        assert running.scaler is not None
        second = running.scaler.rebalancer
        assert isinstance(second, MoverRebalancer)
        assert not await second.mover.unfinished()
        await check_resumed(suite, resting.order_id)
        # The next rebalance finds the shards it wants and changes nothing.
        assert await second.rebalance("execution", 2, 2) == 2
        assert "moved no symbol" in second.last_summary
    finally:
        await running.stop(0.5)


async def check_resumed(suite: Suite, resting_order_id: int) -> None:
    zero = suite.launcher.shards[0]
    stored = await suite.followed()
    assert not stored.moving and stored.owner(MOVING).shard_id == 1
    one = suite.launcher.shards[1]
    got = await one.stub.GetOrder(api.GetOrderRequest(order_id=resting_order_id), metadata=key("alice"))
    assert got.order.order_id == resting_order_id
    assert await refused_code(zero, "bob", order("b1", MOVING, SELL, 310_000)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )


# --- a real shard process, started as the scaler starts one ----------------------------------------
async def test_the_local_launcher_starts_a_shard_process_that_takes_its_symbols(tmp_path: Path) -> None:
    """As in ``hftgate up``: shard 0's state in ``<state dir>/execution``, the new shard's in
    ``<state dir>/execution-1``, sharing shard 0's ledger, the suite's shard map and reference data."""
    reference = f"sqlite+aiosqlite:///{tmp_path / 'reference.sqlite3'}"
    store = ShardMapStore(f"sqlite+aiosqlite:///{tmp_path / 'shardmap.sqlite3'}")
    await store.start()
    zero = await start_harness(
        execution_config(
            tmp_path / "execution", reference_database_url=reference, shard_map_database_url=store.url
        )
    )
    await store.create(ShardMap(1, [Shard(0, f"127.0.0.1:{zero.running.port}")]))
    env = {
        **os.environ,
        "HFTGATE_STATE_DIR": str(tmp_path),
        "HFTGATE_EXECUTION_REFERENCE_DATABASE_URL": reference,
        "HFTGATE_EXECUTION_SHARD_MAP_POLL_MS": "50",
    }
    backend = LocalProcessBackend(env, tmp_path / "scaler", startup_timeout_s=60.0, stop_grace_s=5.0)
    launcher = LocalShardLauncher(backend, env, store)
    mover = SymbolMover(store, security.load_suite_secret().service_credentials("scaler"), retry_delay_s=0.05)
    rebalancer = MoverRebalancer(store, mover, launcher, reference_symbols(reference), retire_grace_s=0.0)
    try:
        resting = await submit(zero, "alice", order("r1", MOVING, BUY, 300_000))
        await rebalancer.start()
        assert await rebalancer.rebalance("execution", 1, 2) == 2, rebalancer.last_summary

        stored = await store.load()
        assert stored is not None and stored.owner(MOVING).shard_id == 1
        new_shard = stored.shard(1)
        assert new_shard is not None and launcher.started == {1}
        assert (tmp_path / "execution-1").is_dir(), "its own state directory beside shard 0's"
        async with grpc.aio.insecure_channel(new_shard.address) as channel:
            one = ExecutionServiceStub(channel)
            got = await one.GetOrder(api.GetOrderRequest(order_id=resting.order_id), metadata=key("alice"))
            assert got.order.order_id == resting.order_id
            taken = await one.SubmitOrder(
                api.SubmitOrderRequest(order=order("n1", MOVING, SELL, 310_000)), metadata=key("carol")
            )
            assert taken.ack.reason == 0 and order_id_shard(taken.ack.order_id) == 1

        # A shard it started that dies comes back as the same shard, with its book (journal).
        scaler = Scaler(ScalerConfig(port=0), {LOCAL_PROCESS: backend}, rebalancer=rebalancer)
        pid = backend.pid_of("execution", LocalShardLauncher.replica_id(1))
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        dead: list[tuple[str, str, str]] = []
        for _ in range(200):
            dead += await scaler.check_replicas()
            if dead:
                break
            await asyncio.sleep(0.05)
        assert dead == [("execution", "execution-shard-1", "killed by signal 9")]
        assert await wait_serving(new_shard.address, 60.0)
        assert backend.pid_of("execution", "execution-shard-1") not in (None, pid)
        async with grpc.aio.insecure_channel(new_shard.address) as channel:
            got = await ExecutionServiceStub(channel).GetOrder(
                api.GetOrderRequest(order_id=resting.order_id), metadata=key("alice")
            )
            assert got.order.order_id == resting.order_id

        # It stops (SIGTERM) the process it started, and only that.
        assert await launcher.stop_shard(1) and launcher.started == set()
        assert not await wait_serving(new_shard.address, 0.5)
        assert not await launcher.stop_shard(0), "a shard it did not start is not its to stop"
    finally:
        await rebalancer.close()
        await backend.close()
        await zero.close()
        await store.close()


# --- 1 -> 2 -> 1 ---------------------------------------------------------------------------------
async def test_scaling_back_down_gives_the_books_back_to_the_shard_that_handed_them_over(
    suite: Suite,
) -> None:
    zero = suite.launcher.shards[0]
    traded = await submit(zero, "alice", order("r1", MOVING, BUY, 300_000))
    gone = await submit(zero, "alice", order("r2", MOVING, BUY, 299_000))
    rebalancer = suite.rebalancer()
    await rebalancer.start()
    assert await rebalancer.rebalance("execution", 1, 2) == 2
    one = suite.launcher.shards[1]
    # On shard 1: r1 (born on shard 0) trades 4 of its 10 lots, r2 is cancelled, carol's n1 rests.
    await submit(one, "bob", order("s1", MOVING, SELL, 300_000, qty=4))
    await one.stub.CancelOrder(api.CancelOrderRequest(order_id=gone.order_id), metadata=key("alice"))
    born_on_one = await submit(one, "carol", order("n1", MOVING, SELL, 310_000))
    assert order_id_shard(born_on_one.order_id) == 1

    assert await rebalancer.rebalance("execution", 2, 1) == 1

    stored = await suite.followed()
    assert stored.shard_ids == (0,) and not stored.moving and suite.launcher.stopped == [1]
    assert rebalancer.history[-1].moved == [(s, 1, 0) for s in TO_NEW_SHARD]

    async def books_as_shard_one_left_them() -> None:
        got = await zero.stub.GetOrder(api.GetOrderRequest(order_id=traded.order_id), metadata=key("alice"))
        assert got.order.order_id == traded.order_id
        assert got.order.status == api.ORDER_STATUS_PARTIALLY_FILLED
        assert (got.order.cum_quantity_lots, got.order.leaves_quantity_lots) == (4, 6)
        got = await zero.stub.GetOrder(
            api.GetOrderRequest(order_id=born_on_one.order_id), metadata=key("carol")
        )
        assert got.order.order_id == born_on_one.order_id and got.order.status == api.ORDER_STATUS_NEW
        # Shard 0's frozen copy of r2 was dropped: it cannot say how r2 ended (shard 1 could).
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await zero.stub.GetOrder(api.GetOrderRequest(order_id=gone.order_id), metadata=key("alice"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # alice's client order id r2 is free again; r1's names the order that came back.
        by_client = await zero.stub.GetOrder(api.GetOrderRequest(client_order_id="r1"), metadata=key("alice"))
        assert by_client.order.order_id == traded.order_id

    await books_as_shard_one_left_them()
    # A restart replays the purge and the import: the same answers.
    address = f"127.0.0.1:{zero.running.port}"
    await suite.launcher.stop_shard(0)
    await suite.launcher.start_shard(0, address)
    zero = suite.launcher.shards[0]
    await books_as_shard_one_left_them()
    # The book trades on shard 0 with the moved orders' time priority and original ids.
    taker = await submit(zero, "dave", order("t1", MOVING, BUY, 310_000, qty=10))
    assert taker.status == api.ORDER_STATUS_FILLED
    got = await zero.stub.GetOrder(api.GetOrderRequest(order_id=born_on_one.order_id), metadata=key("carol"))
    assert got.order.status == api.ORDER_STATUS_FILLED
    assert await submit(zero, "alice", order("r2", MOVING, BUY, 299_000))
    cancelled = await zero.stub.CancelOrder(
        api.CancelOrderRequest(order_id=traded.order_id), metadata=key("alice")
    )
    assert cancelled.ack.status == api.ORDER_STATUS_CANCELED and cancelled.ack.order_id == traded.order_id
