"""Recovery stays bounded when the service restarts more often than the time and input triggers fire.

A service stopped every few seconds under flow never reached the 60 s / 200,000-input snapshot
triggers, so every restart replayed the whole journal (recovery 145 -> 807 ms over 12 kills). Now
snapshots also follow journal bytes and come right after a recovery that replayed much.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution import snapshot as snapshot_module
from services.execution.config import ExecutionConfig
from services.execution.journal import segment_path
from tests.services.execution.conftest import execution_config, key, start_harness

ALICE, BOB = key("alice"), key("bob")
EVERY_JOURNAL_BYTES = 256 * 1024
AFTER_RECOVERY_BYTES = 64 * 1024


def _orders(prefix: str, count: int, side: Any, price: int) -> api.SubmitOrdersRequest:
    return api.SubmitOrdersRequest(
        orders=[
            api.NewOrder(
                client_order_id=f"{prefix}-{i}",
                symbol="BTCUSDT",
                side=side,
                order_type=api.ORDER_TYPE_LIMIT,
                price_ticks=price + i % 20,
                quantity_lots=1 + i % 3,
            )
            for i in range(count)
        ]
    )


def _config(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> ExecutionConfig:
    """Time and input triggers off (as if killed before they fire); small journal-byte triggers."""
    config = execution_config(state_dir, snapshot_every_s=0, snapshot_every_inputs=0)
    fields = {f.name for f in dataclasses.fields(ExecutionConfig)}
    if {"snapshot_every_journal_bytes", "snapshot_after_recovery_bytes"} <= fields:
        return dataclasses.replace(
            config,
            snapshot_every_journal_bytes=EVERY_JOURNAL_BYTES,  # type: ignore[call-arg]
            snapshot_after_recovery_bytes=AFTER_RECOVERY_BYTES,  # type: ignore[call-arg]
        )
    monkeypatch.setattr(snapshot_module, "DEFAULT_SNAPSHOT_EVERY_JOURNAL_BYTES", EVERY_JOURNAL_BYTES)
    monkeypatch.setattr(snapshot_module, "DEFAULT_SNAPSHOT_AFTER_RECOVERY_BYTES", AFTER_RECOVERY_BYTES)
    return config


async def test_restarts_under_a_growing_journal_replay_a_bounded_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _config(tmp_path, monkeypatch)
    replayed_records: list[int] = []
    replayed_bytes: list[int] = []
    journal_bytes: list[int] = []
    acked = 0
    for restart in range(8):
        harness = await start_harness(config)
        try:
            journal = harness.core.journal
            replayed_records.append(journal.replayed_records)
            replayed_bytes.append(journal.replayed_bytes)
            # ~100-150 KB of journal per run: crossing flow, so fills, reports and the ledger move too.
            for round_ in range(6):
                for name, side, price, who in (
                    ("a", common.SIDE_BUY, 1_000, ALICE),
                    ("b", common.SIDE_SELL, 1_010, BOB),
                ):
                    reply = await harness.stub.SubmitOrders(
                        _orders(f"{restart}-{round_}-{name}", 150, side, price), metadata=who
                    )
                    acked += sum(1 for a in reply.acks if a.sequence)
        finally:
            await harness.close()  # like a kill for recovery: a stop takes no snapshot
        journal_bytes.append(sum(p.stat().st_size for p in config.journal_path().glob("*.journal")))

    grown = acked  # the journal took this many inputs over the restarts
    assert grown > 8_000
    # Without the journal-bytes triggers every restart replays everything so far (it grows each time);
    # with them, a restart replays at most a snapshot interval plus one run's flow.
    run_bytes = max(replayed_bytes[1], 1)
    bound = EVERY_JOURNAL_BYTES + 2 * run_bytes
    assert max(replayed_bytes) <= bound, (replayed_bytes, replayed_records)
    assert replayed_records[-1] <= 2 * max(replayed_records[1], 1), replayed_records
    assert sum(replayed_bytes[4:]) < sum(replayed_bytes[1:4]) * 3  # no upward trend
    # The journal on disk is bounded too (old segments are dropped whole after each snapshot).
    assert journal_bytes[-1] <= 2 * (EVERY_JOURNAL_BYTES + run_bytes) + 2 * 4 * 1024 * 1024, journal_bytes


# The recovery trigger does not wait for snapshot_min_interval_s (the others do).
@pytest.mark.parametrize("min_interval_s", [0.0, 60.0])
async def test_a_recovery_that_replayed_much_takes_a_snapshot_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, min_interval_s: float
) -> None:
    config = dataclasses.replace(_config(tmp_path, monkeypatch), snapshot_min_interval_s=min_interval_s)
    harness = await start_harness(config)
    try:
        for round_ in range(4):
            await harness.stub.SubmitOrders(_orders(f"x{round_}", 200, common.SIDE_BUY, 900), metadata=ALICE)
        assert harness.running.snapshotter.taken == 0  # under the journal-bytes trigger
    finally:
        await harness.close()
    assert snapshot_module.newest(config.snapshot_path()) is None

    harness = await start_harness(config)
    try:
        snapshotter = harness.running.snapshotter
        assert harness.core.journal.replayed_bytes >= AFTER_RECOVERY_BYTES
        await snapshotter.settled()
        assert snapshotter.taken == 1 and snapshotter.last_trigger == "recovery"
        newest = snapshot_module.newest(config.snapshot_path())
        assert (
            newest is not None and snapshot_module.snapshot_seq(newest) == harness.core.journal.next_seq - 1
        )
        # Flow after it goes to a new segment, so the next snapshot drops the old one whole.
        await harness.stub.SubmitOrders(_orders("y", 10, common.SIDE_BUY, 900), metadata=ALICE)
        assert segment_path(config.journal_path(), snapshot_module.snapshot_seq(newest) + 1).exists()
    finally:
        await harness.close()

    harness = await start_harness(config)
    try:
        assert harness.core.journal.replayed_records == 1  # only the batch after the snapshot
        assert harness.running.snapshotter.taken == 0  # too little replayed to snapshot again
    finally:
        await harness.close()


def test_a_snapshot_that_does_not_fit_leaves_no_half_written_file(tmp_path: Path) -> None:
    data = snapshot_module.SnapshotData(7, {"info": np.zeros(1 << 16, np.uint8)}, 0)
    target = tmp_path / "snapshots"
    target.mkdir()
    (target / "snapshot-00000000000000000007.npz.pending").symlink_to("/dev/full")
    with pytest.raises(OSError, match="No space left on device"):
        snapshot_module.write_pending(target, data)
    assert list(target.iterdir()) == []
