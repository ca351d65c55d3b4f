"""kill -9 under a steady order flow, a few times (the short run of ``hftgate bench crash``).

A real ``python -m services.execution`` process is SIGKILLed at random moments while two
accounts stream orders and cancels at it, and restarted each time. Afterwards every input the
client saw acknowledged must be in the recovered state, no fill may appear twice, the books must
equal a reference-book replay of the client's inputs, and the ledger must verify and hold each
fill exactly once. See hftgate/bench/crash.py for how each of these is checked.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hftgate.bench import execution as bench_execution
from hftgate.bench.crash import CrashSettings, run_crash_harness
from services.execution import journal as journal_module

# Two shards, as hftgate up runs them: the kills alternate (shard 0, then shard 1) while the other
# keeps trading, and both shards' fills must be in the one ledger.
SHORT_RUN = CrashSettings(kills=2, kill_after_s=(0.2, 0.6), final_flow_s=0.3, live_check_orders=30, shards=2)


async def test_sigkill_of_either_shard_loses_no_acked_input_and_duplicates_no_fill(tmp_path: Path) -> None:
    report = await run_crash_harness(SHORT_RUN, tmp_path)

    assert report.kills == SHORT_RUN.kills and len(report.recovery_ms) == SHORT_RUN.kills
    assert report.acked > 200, "the order flow hardly ran"
    assert report.lost_acked == 0, report.problems[:10]
    assert report.duplicate_fills == 0, report.problems[:10]
    assert report.books_match, report.problems[:10]
    # Both shards' fills are in the one ledger, each once, under its shard's public order ids.
    assert report.ledger_matches and report.ledger_fills > 0, report.problems[:10]
    assert set(report.acked_by_shard) == {0, 1} and min(report.acked_by_shard.values()) > 100


async def test_harness_reports_acked_inputs_that_vanish_from_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check is not vacuous: after the kill, cut the journal's second half, as a service that
    acknowledged before its fsync might lose it, and the harness must count those inputs as lost."""
    real_kill = bench_execution.ExecutionProcess.kill

    def kill_and_lose_the_tail(process: bench_execution.ExecutionProcess) -> None:
        was_running = process.is_running()
        real_kill(process)
        if was_running:
            segment = sorted(process.journal_dir.glob("*.journal"))[-1]
            first_seq = int(segment.name.split(".")[0])
            # Half of the records, not of the file: the rest of the file is reserved space.
            records_end = journal_module._scan_segment(segment.read_bytes(), first_seq, 1 << 30).good_end
            os.truncate(segment, records_end // 2)

    monkeypatch.setattr(bench_execution.ExecutionProcess, "kill", kill_and_lose_the_tail)
    # No snapshot before the kill: the cut then loses acked inputs outright. (A journal cut below
    # a snapshot makes the service refuse to start instead: see test_execution_recovery.py.)
    settings = CrashSettings(
        kills=1,
        kill_after_s=(0.5, 0.8),
        final_flow_s=0.2,
        live_check_orders=20,
        snapshot_every_inputs=1_000_000_000,
    )

    report = await run_crash_harness(settings, tmp_path)

    assert report.lost_acked > 0
    assert not report.books_match
