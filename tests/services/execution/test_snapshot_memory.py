"""Issue #13 part 2: a snapshot must not make the service's memory jump (``rss_bytes_per_order``).

By default a forked child that runs no Python writes the snapshot from a copy-on-write image
(test_snapshot_child_writer.py: that it restores the same state). Where the service captures a
snapshot itself (the fallback), its captured copies are streamed into its file in bounded pieces
and each is freed once written; large freed blocks leave the process (the allocator's mmap
threshold is pinned). These tests check each of those behaviours, the writer child's lifecycle,
and that the benchmark's measure tells growth from a snapshot's transient copy.
"""

from __future__ import annotations

import os
import signal
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hftgate.native import memory
from hftgate.native.process import die_with_parent
from services.execution import snapshot
from services.execution.state import REPORT_DTYPE

from .test_retirement import ENGINE, _apply_all, _flow, _retained, _state

linux_only = pytest.mark.skipif(not snapshot._CAN_FORK, reason="fork_writer needs Linux")


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_the_streamed_archive_is_what_numpy_writes_and_reads(tmp_path: Path) -> None:
    rows = np.zeros(1000, REPORT_DTYPE)
    rows["sequence"] = np.arange(1000)
    arrays = {
        "wide": np.arange(3 * snapshot.WRITE_PIECE_BYTES // 8 + 7, dtype=np.int64),  # pieces and a rest
        "rows": rows,
        "matrix": np.arange(12, dtype=np.int64).reshape(3, 4),
        "empty": np.zeros(0, REPORT_DTYPE),
        "info": np.frombuffer(b'{"a": 1}', np.uint8).copy(),
    }
    path = tmp_path / "a.npz"
    with open(path, "wb") as file:
        snapshot.write_npz(file, arrays)
    with np.load(path, allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(arrays)
        for name, array in arrays.items():
            assert archive[name].dtype == array.dtype and archive[name].shape == array.shape
            assert archive[name].tobytes() == array.tobytes()
    with zipfile.ZipFile(path) as archive:  # stored, not compressed: np.load may map it
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}


def test_consume_frees_each_array_once_written_and_writes_the_same_archive(tmp_path: Path) -> None:
    arrays = {"a": np.arange(1000, dtype=np.int64), "r": np.zeros(3, REPORT_DTYPE)}
    kept = {name: array.copy() for name, array in arrays.items()}
    with open(tmp_path / "c.npz", "wb") as file:
        snapshot.write_npz(file, arrays, consume=True)
    assert arrays == {}
    with np.load(tmp_path / "c.npz", allow_pickle=False) as archive:
        assert sorted(archive.files) == sorted(kept)
        for name, array in kept.items():
            assert archive[name].tobytes() == array.tobytes()


def test_an_array_of_python_objects_is_refused(tmp_path: Path) -> None:
    with open(tmp_path / "b.npz", "wb") as file, pytest.raises(ValueError, match="Python objects"):
        snapshot.write_npz(file, {"bad": np.array(["x", None], object)})


@linux_only
def test_a_writer_killed_mid_write_leaves_no_pending_file_and_says_so(tmp_path: Path) -> None:
    import asyncio

    live = _state(retained_reports=16)
    _apply_all(live, _flow(seed=5, batches=20))
    final = snapshot.path_for(tmp_path, 20)
    pending = final.with_name(final.name + ".pending")
    os.mkfifo(pending)  # holds the child in open() until it is killed: caught mid-snapshot
    pid = snapshot.fork_writer(live, 20, tmp_path)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=f"exited with {-int(signal.SIGKILL)} \\(killed by a signal\\)"):
        asyncio.run(snapshot.Snapshotter._reap_writer(pid, final))
    assert not pending.exists() and snapshot.newest(tmp_path) is None
    # A child reaped by someone else has an unknown outcome: a failure too.
    assert snapshot.wait_writer(pid) == -1


@linux_only
def test_the_snapshotter_copies_nothing_in_the_service_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the child writer, capture() never runs: the child writes the arrays as they lie."""
    import asyncio
    from types import SimpleNamespace

    live = _state(retained_reports=64, retain_orders=32)
    _apply_all(live, _flow(seed=2, batches=200))
    captured_here: list[int] = []
    real_capture = snapshot.capture
    parent = os.getpid()

    def watched(state: object, journal_seq: int) -> snapshot.SnapshotData:
        if os.getpid() == parent:
            captured_here.append(journal_seq)
        return real_capture(state, journal_seq)  # type: ignore[arg-type]

    monkeypatch.setattr(snapshot, "capture", watched)
    truncated: list[int] = []

    class Journal:
        next_seq = 201
        durable_seq = 200
        bytes_appended = replayed_bytes = replayed_records = 0

        def request_rotation(self) -> None:
            pass

        async def truncate_before(self, seq: int) -> None:
            truncated.append(seq)

    config = SimpleNamespace(
        snapshot_path=lambda: tmp_path,
        snapshot_every_inputs=0,
        snapshot_every_s=0.0,
        journal_truncate_after_snapshot=True,
    )

    async def run(in_child: bool) -> None:
        snapper = snapshot.Snapshotter(config, Journal(), None, in_child_process=in_child)  # type: ignore[arg-type]
        snapper._take(live, "test")
        await snapper.settled()
        assert snapper.taken == 1

    asyncio.run(run(True))
    assert captured_here == [] and truncated == [201]
    newest = snapshot.newest(tmp_path)
    assert newest is not None and snapshot.snapshot_seq(newest) == 200
    restored, _ = snapshot.load(newest, ENGINE, 64)
    restored.retain_orders = 32
    assert _retained(restored) == _retained(live)
    asyncio.run(run(False))  # the in-process path still works where fork is not wanted
    assert captured_here == [200]

    def no_child(*args: object) -> int:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(snapshot, "start_writer", no_child)
    asyncio.run(run(True))  # a fork that fails falls back to the in-process capture
    assert captured_here == [200, 200]


_FREED_BLOCKS_PROBE = """
import numpy as np
from hftgate.native import memory

def rss():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))

assert memory.pin_mmap_threshold()
size = 24 * 1024 * 1024
for _ in range(3):  # unpinned, the first free would move later blocks of this size onto the heap
    block = np.ones(size // 8)
    held = rss()
    del block
    assert rss() < held - size // 2, (held, rss())
print("ok")
"""


@pytest.mark.skipif(memory._LIBC is None, reason="glibc malloc only")
def test_large_freed_blocks_leave_the_process_once_the_threshold_is_pinned() -> None:
    # In a fresh interpreter: the test process's own heap history (every test before this one)
    # decides where a block lands, which is what the pinned threshold is about.
    import subprocess
    import sys

    probe = subprocess.run(
        [sys.executable, "-c", _FREED_BLOCKS_PROBE], capture_output=True, text=True, timeout=60, check=False
    )
    assert probe.returncode == 0 and probe.stdout.strip() == "ok", probe.stderr[-2000:]
    assert memory.release_free_memory() in (True, False)  # callable at any time; nothing to check
    with pytest.raises(ValueError):
        memory.pin_mmap_threshold(0)


@linux_only
def test_a_forked_helper_dies_with_its_parent() -> None:
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:  # the "service": forks the helper, reports its pid, then waits to be killed
        os.close(read_end)
        helper = os.fork()
        if helper == 0:
            die_with_parent(os.getppid())
            time.sleep(60)
            os._exit(0)
        os.write(write_end, str(helper).encode())
        time.sleep(60)
        os._exit(0)
    os.close(write_end)
    helper = int(os.read(read_end, 32))
    os.close(read_end)
    time.sleep(0.2)  # (the helper has asked for the signal by now; if not, it checks the parent)
    os.kill(middle, signal.SIGKILL)
    os.waitpid(middle, 0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(helper, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{helper}/stat", encoding="ascii") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":  # dead, awaiting its reaper
                break
        time.sleep(0.02)
    else:
        os.kill(helper, signal.SIGKILL)
        pytest.fail("the helper outlived its parent")


@linux_only
def test_a_writer_that_hangs_is_killed_and_repeated_failures_switch_to_capturing_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that deadlocked (e.g. on a lock another thread held at fork time) must not stop
    snapshots for good: it is killed after the timeout, and after MAX_WRITER_FAILURES failures in
    a row the service captures snapshots itself."""
    import asyncio
    import time
    from types import SimpleNamespace

    pid = os.fork()
    if pid == 0:  # a stuck writer
        time.sleep(60)
        os._exit(0)
    started = time.monotonic()
    assert snapshot.wait_writer(pid, timeout_s=0.2) == -9
    assert time.monotonic() - started < 10

    live = _state(retained_reports=64, retain_orders=32)
    _apply_all(live, _flow(seed=3, batches=20))

    def failing_child(*args: object) -> snapshot.WriterChild:
        child = os.fork()
        if child == 0:
            os._exit(3)
        return snapshot.WriterChild(child, 0, 0, 0.0)

    monkeypatch.setattr(snapshot, "start_writer", failing_child)

    class Journal:
        next_seq = 21
        durable_seq = 20
        bytes_appended = replayed_bytes = replayed_records = 0

        def request_rotation(self) -> None:
            pass

        async def truncate_before(self, seq: int) -> None:
            pass

    config = SimpleNamespace(
        snapshot_path=lambda: tmp_path,
        snapshot_every_inputs=0,
        snapshot_every_s=0.0,
        journal_truncate_after_snapshot=False,
    )

    async def run() -> snapshot.Snapshotter:
        snapper = snapshot.Snapshotter(config, Journal(), None, in_child_process=True)  # type: ignore[arg-type]
        for attempt in range(snapshot.MAX_WRITER_FAILURES):
            assert snapper.in_child_process, attempt
            snapper._take(live, "test")
            await snapper.settled()
        assert snapper.taken == 0 and not snapper.in_child_process
        snapper._take(live, "test")  # now captured here: it works
        await snapper.settled()
        assert snapper.taken == 1 and snapper.writer_failures == 0
        return snapper

    asyncio.run(run())
    assert snapshot.newest(tmp_path) is not None


async def test_the_rss_measure_reports_growth_and_transient_apart_on_a_real_service(tmp_path: Path) -> None:
    from hftgate.bench.execution import ExecutionProcess, RoundSettings, measure_rss_per_order

    settings = RoundSettings(batch_orders=200, rss_warmup_orders=4_000, rss_measured_orders=16_000)
    with ExecutionProcess(tmp_path) as process:
        process.start()
        figures = await measure_rss_per_order(process, settings, settle_s=0.02)
        process.stop()
    assert figures["rss_orders_measured"] >= 12_000  # whole calls per step
    # The settled reading is the least of several taken with the client paused, the instant one
    # among them: never above it, so the transient is never negative.
    assert figures["rss_transient_mb_max"] >= 0
    for key in ("rss_bytes_per_order", "rss_settled_bytes_per_order"):
        assert np.isfinite(figures[key]), key
    assert 50 < figures["rss_mb_after_warmup"] < 2_000


@linux_only
def test_the_writer_child_runs_only_on_idle_cpu_time(tmp_path: Path) -> None:
    """The child is background work (SCHED_IDLE): a snapshot never takes a CPU from order entry."""
    live = _state(retained_reports=16)
    _apply_all(live, _flow(seed=5, batches=20))
    final = snapshot.path_for(tmp_path, 20)
    pending = final.with_name(final.name + ".pending")
    os.mkfifo(pending)  # holds the child in open(), after it has set its policy
    pid = snapshot.fork_writer(live, 20, tmp_path)
    try:
        deadline = time.monotonic() + 10
        while os.sched_getscheduler(pid) != os.SCHED_IDLE and time.monotonic() < deadline:
            time.sleep(0.001)
        assert os.sched_getscheduler(pid) == os.SCHED_IDLE
        assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the service's own threads are untouched
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
