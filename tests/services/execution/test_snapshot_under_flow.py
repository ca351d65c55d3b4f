"""Snapshots keep coming while fills never stop, and a restart recovers from the newest one with a
level ledger: every fill once, chain unbroken (after a close, and after SIGKILL of the process)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import grpc
import pytest

from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc
from services.execution import snapshot
from services.execution.config import ExecutionConfig, load_config
from services.execution.ledger import Ledger
from services.execution.recovery import _close_unstarted, comparable_books, load_state, recover
from tests.services.execution.test_execution_process import free_port, service_env, start_process

SYMBOL = "BTCUSDT"
#: Enough to see several snapshots come and go, short of hanging a broken build for long.
WAIT_FOR_SNAPSHOTS_S = 60.0


def key(name: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", f"hftgate-demo-{name}"),)


def crossing(number: int, side: int, count: int) -> list[api.NewOrder]:
    return [
        api.NewOrder(
            client_order_id=f"{number}-{side}-{i}",
            symbol=SYMBOL,
            side=side,
            order_type=api.ORDER_TYPE_LIMIT,
            price_ticks=100,
            quantity_lots=1,
        )
        for i in range(count)
    ]


async def steady_fills(stub: Any, stop: asyncio.Event, per_batch: int = 8) -> None:
    """Alice and bob cross each other at one price, round after round: every round trades
    ``per_batch`` times, and they swap sides each round so positions stay bounded."""
    number = 0
    while not stop.is_set():
        number += 1
        buyer, seller = ("alice", "bob") if number % 2 else ("bob", "alice")
        try:
            await stub.SubmitOrders(
                api.SubmitOrdersRequest(orders=crossing(number, common.SIDE_BUY, per_batch)),
                metadata=key(buyer),
                timeout=5,
            )
            await stub.SubmitOrders(
                api.SubmitOrdersRequest(orders=crossing(number, common.SIDE_SELL, per_batch)),
                metadata=key(seller),
                timeout=5,
            )
        except grpc.aio.AioRpcError:
            return  # the service was killed


async def assert_ledger_level(config: ExecutionConfig, trades: int) -> None:
    """The ledger holds trade ids 1..trades exactly once each, and its chain verifies."""
    ledger = await Ledger.open(config.ledger_url(), config.ledger_table)
    try:
        ids = [e.transaction_id for e in await ledger.entries()]
        assert await ledger.verify() is None
    finally:
        await ledger.close()
    assert len(ids) == len(set(ids)), "a fill is in the ledger twice"
    assert set(ids) == {f"{SYMBOL}:{t}" for t in range(1, trades + 1)}


def view(state: Any) -> tuple[Any, int, int]:
    """Books, next input sequence and trade count: what a restart must give back."""
    return comparable_books(state.engine, state.symbol_ids), state.next_input_seq, state.trades


def recovered_trades(config: ExecutionConfig) -> int:
    """How many trades the state rebuilt from ``config``'s state directory has made."""
    recovery = recover(config)
    try:
        return recovery.state.next_trade_id - 1
    finally:
        _close_unstarted(recovery.journal)


async def test_snapshots_complete_while_the_ledger_is_never_idle(
    tmp_path: Path, make_config: Any, launch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slow database: each ledger batch takes a few ms, so under the flow below its queue is
    # never empty, and a snapshot that waited for an empty queue would wait forever.
    real_append = Ledger._append_once

    async def slow_append(self: Ledger, fills: Any) -> int:
        await asyncio.sleep(0.003)
        return await real_append(self, fills)

    monkeypatch.setattr(Ledger, "_append_once", slow_append)
    config = make_config(tmp_path, snapshot_every_inputs=60, snapshot_every_s=0)
    harness = await launch(config)
    stop = asyncio.Event()
    flow = asyncio.create_task(steady_fills(harness.stub, stop))
    backlog_when_taken: list[int] = []
    try:
        snapshotter = harness.running.snapshotter
        ledger = harness.core.ledger
        seen = 0
        loop = asyncio.get_running_loop()
        give_up = loop.time() + WAIT_FOR_SNAPSHOTS_S
        while snapshotter.taken < 4 and loop.time() < give_up and not flow.done():
            await asyncio.sleep(0.005)
            if snapshotter.taken > seen:
                seen = snapshotter.taken
                backlog_when_taken.append(ledger.backlog_fills)
        assert snapshotter.taken >= 4, f"only {snapshotter.taken} snapshot(s) completed under the flow"
        assert any(backlog_when_taken), "the ledger was idle at every snapshot: the test proves nothing"
        stop.set()
        await flow
        before = view(harness.core.state)
    finally:
        stop.set()
        await flow
        await harness.close()
    assert before[2] > 0
    newest = snapshot.newest(config.snapshot_path())
    assert newest is not None
    assert not list(config.snapshot_path().glob("*.pending"))
    # The restart starts from the newest snapshot (the journal before it is gone) with the ledger level.
    assert load_state(tmp_path, config).snapshot_seq == snapshot.snapshot_seq(newest) > 0
    harness = await launch(config)
    try:
        assert view(harness.core.state) == before
    finally:
        await harness.close()
    await assert_ledger_level(config, before[2])


@pytest.mark.timeout(120)
async def test_restart_after_sigkill_under_flow_recovers_from_the_newest_snapshot(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **service_env(tmp_path, port),
        "HFTGATE_EXECUTION_JOURNAL_TRUNCATE_AFTER_SNAPSHOT": "true",
        "HFTGATE_EXECUTION_SNAPSHOT_EVERY_INPUTS": "100",
    }
    config = load_config(env)
    log = tmp_path / "service.log"
    process = start_process(env, log)
    stop = asyncio.Event()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            flow = asyncio.create_task(steady_fills(api_grpc.ExecutionServiceStub(channel), stop))
            loop = asyncio.get_running_loop()
            give_up = loop.time() + WAIT_FOR_SNAPSHOTS_S
            seen: set[Path] = set()
            while len(seen) < 4 and loop.time() < give_up and not flow.done():
                newest = snapshot.newest(config.snapshot_path())
                if newest is not None:
                    seen.add(newest)
                await asyncio.sleep(0.01)
            process.send_signal(signal.SIGKILL)  # mid-flow
            process.wait()
            stop.set()
            await flow
        assert len(seen) >= 4, f"only {len(seen)} successive snapshot(s) while the fills kept coming"
        newest = snapshot.newest(config.snapshot_path())
        assert newest is not None
        assert load_state(tmp_path, config).snapshot_seq == snapshot.snapshot_seq(newest)
        trades = recovered_trades(config)
        assert trades > 0
        process = start_process(env, log)  # recovery's catch-up brings the ledger level
    finally:
        stop.set()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert process.returncode == 0, log.read_text()[-3000:]
    await assert_ledger_level(config, trades)
