"""The snapshot triggers' minimum interval (snapshot_min_interval_s).

Under a sustained flood the inputs and journal-bytes triggers fired every ~0.3 s (16 MB of journal
at ~500,000 orders/s), and each snapshot cost the loop its fork and a page fault for every page it
wrote while the writer child lived: a quarter of SubmitOrderColumns' throughput. Those two triggers
now wait for the interval; the time trigger and the one after a recovery do not.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from hftgate.security import load_suite_secret
from hftgate.v1 import execution_pb2 as api
from services.execution.config import ExecutionConfig, load_config
from services.execution.snapshot import DEFAULT_SNAPSHOT_MIN_INTERVAL_S, Snapshotter
from tests.services.execution.conftest import execution_config, key, limit_order, start_harness

ADMIN = (("x-hftgate-service-token", load_suite_secret().token_for("admin")),)


class _Journal:
    """What the triggers read of the journal."""

    bytes_appended = 0
    replayed_bytes = 0


class _State:
    """What the triggers read of the state: as a fresh Snapshotter last saw it."""

    next_input_seq = 0


def _snapshotter(tmp_path: Path, **config: Any) -> tuple[Snapshotter, float, float]:
    """A Snapshotter over a fake journal, and the monotonic time just before and just after it was
    made (its interval counts from a moment between the two)."""
    before = time.monotonic()
    snapshotter = Snapshotter(execution_config(tmp_path, **config), _Journal(), None)  # type: ignore[arg-type]
    return snapshotter, before, time.monotonic()


def test_the_inputs_trigger_waits_for_the_interval(tmp_path: Path) -> None:
    snapshotter, start, made = _snapshotter(
        tmp_path, snapshot_every_inputs=10, snapshot_every_s=0, snapshot_min_interval_s=2.0
    )
    state = _State()
    state.next_input_seq = 10
    assert snapshotter.trigger_due(state, start + 1.0) == ""  # type: ignore[arg-type]
    assert snapshotter.trigger_due(state, made + 2.0) == "inputs"  # type: ignore[arg-type]
    state.next_input_seq = 9
    assert snapshotter.trigger_due(state, made + 5.0) == ""  # type: ignore[arg-type]


def test_the_journal_bytes_trigger_waits_for_the_interval(tmp_path: Path) -> None:
    snapshotter, start, made = _snapshotter(
        tmp_path,
        snapshot_every_inputs=0,
        snapshot_every_s=0,
        snapshot_every_journal_bytes=1000,
        snapshot_min_interval_s=2.0,
    )
    state = _State()
    snapshotter.journal.bytes_appended = 5000  # type: ignore[misc]
    assert snapshotter.trigger_due(state, start + 1.9) == ""  # type: ignore[arg-type]
    assert snapshotter.trigger_due(state, made + 2.0) == "journal_bytes"  # type: ignore[arg-type]


def test_the_time_trigger_does_not_wait(tmp_path: Path) -> None:
    snapshotter, _, made = _snapshotter(
        tmp_path, snapshot_every_inputs=0, snapshot_every_s=1.0, snapshot_min_interval_s=5.0
    )
    state = _State()
    assert snapshotter.trigger_due(state, made + 1.5) == ""  # type: ignore[arg-type]  # nothing changed
    state.next_input_seq = 1
    assert snapshotter.trigger_due(state, made + 1.5) == "time"  # type: ignore[arg-type]


def test_no_interval_fires_at_once(tmp_path: Path) -> None:
    snapshotter, _, made = _snapshotter(
        tmp_path, snapshot_every_inputs=1, snapshot_every_s=0, snapshot_min_interval_s=0.0
    )
    state = _State()
    state.next_input_seq = 1
    assert snapshotter.trigger_due(state, made) == "inputs"  # type: ignore[arg-type]


def test_the_default_interval_and_its_limits() -> None:
    assert ExecutionConfig().snapshot_min_interval_s == DEFAULT_SNAPSHOT_MIN_INTERVAL_S == 2.0
    assert load_config({"HFTGATE_EXECUTION_SNAPSHOT_MIN_INTERVAL_S": "0.5"}).snapshot_min_interval_s == 0.5
    for bad in ("-1", "nan", "3601"):
        with pytest.raises(ValueError, match="SNAPSHOT_MIN_INTERVAL_S"):
            load_config({"HFTGATE_EXECUTION_SNAPSHOT_MIN_INTERVAL_S": bad})


async def test_a_flow_that_calls_for_a_snapshot_every_input_gets_one_per_interval(tmp_path: Path) -> None:
    """Every batch asks for a snapshot (snapshot_every_inputs=1); over ~1.2 s of flow the service
    takes at most one per 0.4 s, and GetStats counts them."""
    interval = 0.4
    harness = await start_harness(
        execution_config(
            tmp_path, snapshot_every_inputs=1, snapshot_every_s=0, snapshot_min_interval_s=interval
        )
    )
    try:
        started = time.monotonic()
        batches = 0
        while time.monotonic() - started < 3 * interval:
            orders = [limit_order(f"o{batches}-{i}", price=100 + i % 5) for i in range(20)]
            await harness.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=key("alice"))
            batches += 1
        elapsed = time.monotonic() - started
        await harness.running.snapshotter.settled()
        taken = harness.running.snapshotter.taken
        assert batches > 10  # each of them asked for a snapshot
        # The first may come `interval` after the service started (before the flow), then one per interval.
        assert 1 <= taken <= 1 + elapsed / interval
        assert harness.running.snapshotter.last_trigger == "inputs"
        stats = await harness.stub.GetStats(api.GetStatsRequest(), metadata=ADMIN)
        assert stats.snapshots_taken == taken
    finally:
        await harness.close()
