"""Issue #13 part 2: snapshots written by a forked child that runs no Python (snapshot.start_writer,
native/src/snapshot_writer.c), so the service copies none of its big arrays.

Differential: a snapshot the child writes from the state's memory as it lies recovers the very
state a snapshot captured in the service does (orders with the window's ring wrapped and
survivors, reports with the report ring wrapped, books, positions). A child that fails or is
killed leaves the journal whole and, after MAX_WRITER_FAILURES in a row, the service captures
snapshots itself. The service's resident memory does not take the captured size during one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from hftgate.matching.types import TimeInForce
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution import snapshot
from services.execution.config import ExecutionConfig
from services.execution.journal import segment_path
from services.execution.recovery import comparable_books
from services.execution.state import ExecutionState

from .conftest import key
from .test_retirement import ENGINE, MID, _apply_all, _batch, _flow, _retained, _state

linux_only = pytest.mark.skipif(not snapshot._CAN_FORK, reason="the child writer needs Linux")
pytestmark = linux_only


def _pending(directory: Path, journal_seq: int) -> Path:
    final = snapshot.path_for(directory, journal_seq)
    return final.with_name(final.name + ".pending")


def _written_by_child(state: ExecutionState, directory: Path, journal_seq: int) -> Path:
    child = snapshot.start_writer(state, journal_seq, directory)
    assert snapshot.wait_writer(child.pid) == 0
    return snapshot.confirm(_pending(directory, journal_seq))


def _captured_here(state: ExecutionState, directory: Path, journal_seq: int) -> Path:
    return snapshot.confirm(snapshot.write_pending(directory, snapshot.capture(state, journal_seq)))


def _everything(state: ExecutionState) -> tuple[Any, ...]:
    """What a recovery must give back: orders, client id index, books, risk, reports, counters."""
    rows = len(state._account_rows)
    return (
        _retained(state),
        comparable_books(state.engine, state.symbol_ids),
        [state.last_trade_prices()],
        state.position[:rows].tobytes(),
        state.open_buy[:rows].tobytes(),
        state.open_sell[:rows].tobytes(),
        state.open_orders[:rows].tobytes(),
        list(state._account_rows),
        dict(state.account_names),
        state.retained_reports_after(0).tobytes(),
        (state.next_input_seq, state.next_report_seq, state.next_trade_id, state.trades, state.traded_lots),
        (state.order_count, state.order_base),
    )


def _window_wraps(state: ExecutionState) -> bool:
    window = state.order_count - state.order_base
    return (state.order_base & state._mask) + window > state._ring


def _reports_wrap(state: ExecutionState) -> bool:
    newest, oldest = state.next_report_seq - 1, state.oldest_retained_report
    return (oldest - 1) % len(state.reports) + (newest - oldest + 1) > len(state.reports)


@pytest.mark.parametrize("seed", [11, 23, 37])
def test_a_snapshot_the_child_writes_recovers_the_state_a_capture_in_the_service_does(
    tmp_path: Path, seed: int
) -> None:
    live = _state(retained_reports=64, retain_orders=32)
    batches = 300
    flow = _flow(seed=seed, batches=batches)
    # The case the regions are about: the order window and the report ring both wrapped round,
    # survivors beside the ring, orders resting on the book.
    for count in range(1, batches + 1):
        _apply_all(live, flow[count - 1 : count])
        if _window_wraps(live) and _reports_wrap(live) and count > 100:
            break
    assert _window_wraps(live) and _reports_wrap(live)
    assert live._survivor_slots and live.retired_orders > 0
    assert sum(len(b) for b in live.engine_orders()) > 0
    before = _everything(live)
    here = _captured_here(live, tmp_path / "here", count)
    forked = _written_by_child(live, tmp_path / "child", count)
    assert _everything(live) == before  # the service's own state is untouched
    with zipfile.ZipFile(forked) as archive:
        assert archive.testzip() is None  # every member's CRC-32 checks out
    loaded = []
    for path in (here, forked):
        state, seq = snapshot.load(path, ENGINE, 64)
        state.retain_orders = 32
        assert seq == count
        loaded.append(state)
    assert _everything(loaded[0]) == _everything(loaded[1]) == before
    # And both go on alike from there.
    more = _flow(seed=seed + 1, batches=150)
    outcomes = [_apply_all(state, more) for state in (*loaded, live)]
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert _everything(loaded[0]) == _everything(loaded[1]) == _everything(live)


@pytest.mark.parametrize("shape", ["empty", "warm-up", "keeps every order"])
def test_the_child_writes_states_of_every_shape(tmp_path: Path, shape: str) -> None:
    if shape == "empty":
        live = _state(retained_reports=8)
    elif shape == "warm-up":  # the window short of the ring, the report ring not yet full
        live = _state(retained_reports=10_000)
        _apply_all(live, _flow(seed=3, batches=20))
        assert not _reports_wrap(live) and live.order_base == 0
    else:
        live = _state(retained_reports=64, retire=False)
        _apply_all(live, _flow(seed=5, batches=200))
    retained = len(live.reports)
    here, _ = snapshot.load(_captured_here(live, tmp_path / "here", 1), ENGINE, retained, retire=live.retire)
    forked, _ = snapshot.load(
        _written_by_child(live, tmp_path / "child", 1), ENGINE, retained, retire=live.retire
    )
    for state in (here, forked):
        state.retain_orders = live.retain_orders
    assert _everything(here) == _everything(forked) == _everything(live)


def test_snapshots_of_the_earlier_writers_still_load(tmp_path: Path) -> None:
    """An archive as the service wrote it before (capture, sorted retained orders: write_npz) and
    as numpy's own savez wrote it before that load to the state a child's snapshot gives."""
    live = _state(retained_reports=64, retain_orders=32)
    _apply_all(live, _flow(seed=13, batches=250))
    numpy_written = tmp_path / "numpy" / snapshot.path_for(tmp_path, 250).name
    numpy_written.parent.mkdir()
    arrays: dict[str, Any] = snapshot.capture(live, 250).arrays
    np.savez(numpy_written, **arrays)
    paths = (
        numpy_written,
        _captured_here(live, tmp_path / "here", 250),
        _written_by_child(live, tmp_path / "c", 250),
    )
    states = [snapshot.load(path, ENGINE, 64)[0] for path in paths]
    for state in states:
        state.retain_orders = 32
    assert _everything(states[0]) == _everything(states[1]) == _everything(states[2]) == _everything(live)


def test_a_corrupted_member_is_refused_on_load(tmp_path: Path) -> None:
    live = _state(retained_reports=64, retain_orders=32)
    _apply_all(live, _flow(seed=7, batches=100))
    path = _written_by_child(live, tmp_path, 100)
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("orders.npy")
    data = bytearray(path.read_bytes())
    data[member.header_offset + 100 + member.file_size // 2] ^= 0x40  # a byte amid the order rows
    path.write_bytes(bytes(data))
    with pytest.raises(zipfile.BadZipFile, match="CRC"):
        snapshot.load(path, ENGINE, 64)


def _a_journal() -> Any:
    class Journal:
        next_seq = 101
        durable_seq = 100
        bytes_appended = replayed_bytes = replayed_records = 0

        def __init__(self) -> None:
            self.truncated: list[int] = []

        def request_rotation(self) -> None:
            pass

        async def truncate_before(self, seq: int) -> None:
            self.truncated.append(seq)

    return Journal()


def test_a_killed_child_and_a_failing_child_leave_the_journal_whole_then_the_service_captures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    live = _state(retained_reports=64, retain_orders=32)
    _apply_all(live, _flow(seed=9, batches=100))
    journal = _a_journal()
    config = SimpleNamespace(
        snapshot_path=lambda: tmp_path,
        snapshot_every_inputs=0,
        snapshot_every_s=0.0,
        journal_truncate_after_snapshot=True,
    )
    real_start = snapshot.start_writer
    outcomes: list[str] = []

    def sabotaged(state: ExecutionState, journal_seq: int, directory: Path) -> snapshot.WriterChild:
        pending = _pending(directory, journal_seq)
        directory.mkdir(parents=True, exist_ok=True)
        if not outcomes:  # killed mid-snapshot: a FIFO holds the child in open() until the kill
            os.mkfifo(pending)
            child = real_start(state, journal_seq, directory)
            os.kill(child.pid, signal.SIGKILL)
            outcomes.append("killed")
        else:  # a full disk
            pending.symlink_to("/dev/full")
            child = real_start(state, journal_seq, directory)
            outcomes.append("full")
        return child

    monkeypatch.setattr(snapshot, "start_writer", sabotaged)
    snapper = snapshot.Snapshotter(config, journal, None, in_child_process=True)  # type: ignore[arg-type]
    failures: list[str] = []

    async def run() -> None:
        for _ in range(snapshot.MAX_WRITER_FAILURES):
            assert snapper.in_child_process
            snapper._take(live, "test")
            await snapper.settled()
            failures.append(str(snapper.writer_failures))
        assert not snapper.in_child_process and snapper.taken == 0
        assert journal.truncated == []  # nothing was dropped from the journal
        assert list(tmp_path.iterdir()) == []  # no pending file, no FIFO, no link left
        snapper._take(live, "test")  # captured in the service now
        await snapper.settled()

    asyncio.run(run())
    assert outcomes == ["killed", "full", "full"]
    assert failures == ["1", "2", "3"]
    assert snapper.taken == 1 and snapper.writer_failures == 0 and journal.truncated == [101]
    newest = snapshot.newest(tmp_path)
    assert newest is not None
    restored, _ = snapshot.load(newest, ENGINE, 64)
    restored.retain_orders = 32
    assert _everything(restored) == _everything(live)


def _resident_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_the_service_memory_does_not_take_the_captured_size_during_a_snapshot(tmp_path: Path) -> None:
    """With the default configuration, taking a snapshot adds to the service's resident memory a
    small fraction of what a capture in the service copies (the order rows and the reports)."""
    orders = 100_000
    live = _state(retained_reports=orders, retain_orders=orders)
    # IOC buys far below any ask (each expires at once: two reports), 1000 per batch; the first
    # batch made the usual way, the others from it with new order and client ids (quicker).
    template = _batch(live, [(1 + i % 3, 1, int(TimeInForce.IOC), MID - 500, 1) for i in range(1000)])
    for _ in range(orders // len(template)):
        first = live.order_count + 1
        ids = range(first, first + len(template))
        commands, meta = template.commands.copy(), template.meta.copy()
        commands["order_id"] = np.arange(first, first + len(template))
        meta["client_id_length"] = [len(f"o{i}") for i in ids]
        client_ids = "".join(f"o{i}" for i in ids).encode("ascii")
        live.apply_batch(
            dataclasses.replace(
                template,
                first_input_seq=live.next_input_seq,
                commands=commands,
                meta=meta,
                client_ids=client_ids,
            )
        )
    copy_bytes = live.retained_order_count * live.table.itemsize + len(live.retained_reports_after(0)) * (
        live.reports.itemsize
    )
    assert copy_bytes > 20 * 2**20
    config = ExecutionConfig(state_dir=str(tmp_path))
    journal = _a_journal()
    journal.next_seq, journal.durable_seq = 101, 100

    async def run() -> int:
        snapper = snapshot.Snapshotter(config, journal, None)  # the default: config.py's
        before = _resident_bytes()
        snapper._take(live, "test")
        grown = _resident_bytes() - before
        await snapper.settled()
        assert snapper.taken == 1
        return grown

    grown = asyncio.run(run())
    assert grown < copy_bytes / 4, (grown, copy_bytes)
    newest = snapshot.newest(config.snapshot_path())
    assert newest is not None
    restored, _ = snapshot.load(newest, ENGINE, orders)
    restored.retain_orders = orders
    assert _everything(restored) == _everything(live)


async def test_a_service_whose_writer_children_fail_keeps_its_journal_and_recovers_whole(
    tmp_path: Path, make_config: Any, launch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the real service: children that fail (a full disk) truncate nothing; the service then
    captures snapshots itself; a restart gives back the same state."""
    config = make_config(
        tmp_path, snapshot_every_inputs=20, snapshot_every_s=0, journal_truncate_after_snapshot=True
    )
    real_start = snapshot.start_writer
    children: list[int] = []

    def on_a_full_disk(state: ExecutionState, journal_seq: int, directory: Path) -> snapshot.WriterChild:
        directory.mkdir(parents=True, exist_ok=True)
        _pending(directory, journal_seq).symlink_to("/dev/full")
        child = real_start(state, journal_seq, directory)
        children.append(child.pid)
        return child

    monkeypatch.setattr(snapshot, "start_writer", on_a_full_disk)

    async def some_orders(harness: Any, tag: str) -> None:
        for side, name in ((common.SIDE_BUY, "alice"), (common.SIDE_SELL, "bob")):
            orders = [
                api.NewOrder(
                    client_order_id=f"{tag}-{side}-{i}",
                    symbol="BTCUSDT",
                    side=side,
                    order_type=api.ORDER_TYPE_LIMIT,
                    price_ticks=100 + i % 3,
                    quantity_lots=1,
                )
                for i in range(15)
            ]
            await harness.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=key(name))
        await harness.running.snapshotter.settled()

    harness = await launch(config)
    try:
        snapper = harness.running.snapshotter
        assert snapper.in_child_process  # the default
        round_ = 0
        while snapper.in_child_process and round_ < 20:
            await some_orders(harness, f"r{round_}")
            round_ += 1
        assert len(children) == snapshot.MAX_WRITER_FAILURES and not snapper.in_child_process
        assert snapper.taken == 0 and snapshot.newest(config.snapshot_path()) is None
        assert segment_path(config.journal_path(), 1).exists()  # the journal from its first record
        assert not list(config.snapshot_path().glob("*.pending"))
        await some_orders(harness, "after")  # captured in the service
        assert snapper.taken == 1 and snapshot.newest(config.snapshot_path()) is not None
        await some_orders(harness, "tail")
        state = harness.core.state
        before = (_retained(state), comparable_books(state.engine, state.symbol_ids), state.next_input_seq)
        assert state.trades > 0
    finally:
        await harness.close()
    monkeypatch.setattr(snapshot, "start_writer", real_start)
    harness = await launch(config)
    try:
        state = harness.core.state
        after = (_retained(state), comparable_books(state.engine, state.symbol_ids), state.next_input_seq)
        assert after == before
    finally:
        await harness.close()
