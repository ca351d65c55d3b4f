"""The C CRC-32 the journal writer frames records with equals zlib's (Python recovery checks with zlib);
the writer thread's Python wrapper."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from hftgate.native.journal_writer import JournalWriterThread, crc32, crc32_kernel
from hftgate.native.queues import MpscQueue


def small_writer(queue: MpscQueue, directory: Path, fd: int, notify: int) -> JournalWriterThread:
    """A writer of 8-record batches of 48-byte payloads on a new segment ``fd``."""
    return JournalWriterThread(
        queue,
        directory=directory,
        fd=fd,
        segment_bytes=0,
        preallocate_bytes=0,
        segment_max_bytes=1 << 20,
        next_seq=1,
        sync_before_ack=True,
        notify_fd=notify,
        batch_max_records=8,
        max_payload_bytes=48,
        space_retry_max_ms=5,
    )


def test_crc32_equals_zlib_on_random_data_and_chains() -> None:
    rng = random.Random(7)
    for size in [0, 1, 7, 8, 9, 63, 64, 65, 1000, 70_001]:
        data = rng.randbytes(size)
        assert crc32(data) == zlib.crc32(data)
        split = size // 3
        assert crc32(data[split:], crc32(data[:split])) == zlib.crc32(data)
    view = memoryview(bytearray(b"unaligned start")).cast("B")[1:]
    assert crc32(view) == zlib.crc32(bytes(view))


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_crc32_kernel_follows_the_cpu_and_the_scalar_switch() -> None:
    flags = _cpu_flags()
    has_clmul = os.uname().machine == "x86_64" and {"pclmulqdq", "sse4_1"} <= flags
    forced = os.environ.get("HFT_NATIVE_FORCE_SCALAR") == "1"
    assert crc32_kernel() == ("pclmul" if has_clmul and not forced else "slice8")
    code = (
        "import zlib\n"
        "from hftgate.native.journal_writer import crc32, crc32_kernel\n"
        "data = bytes(range(256)) * 40\n"
        "assert all(crc32(data[i:]) == zlib.crc32(data[i:]) for i in range(64))\n"
        "print(crc32_kernel())\n"
    )
    env = dict(os.environ, HFT_NATIVE_FORCE_SCALAR="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "slice8"


def test_crc32_equals_zlib_at_every_length_offset_and_start_around_the_folding() -> None:
    """Lengths across the folding kernel's 64-byte entry, 16-byte steps and 64-byte loop, at
    each alignment, chained from arbitrary CRCs (whichever kernel this CPU runs)."""
    rng = random.Random(11)
    data = rng.randbytes(600) + b"\xff" * 600
    for offset in range(16):
        for length in range(0, 260):
            for base in (0, 600):
                piece = data[base + offset : base + offset + length]
                start = rng.getrandbits(32)
                assert crc32(piece, start) == zlib.crc32(piece, start)


def test_writer_status_reports_space_fields_and_a_joined_writer_refuses_requests(tmp_path: Path) -> None:
    queue = MpscQueue(64, 64)
    segment = tmp_path / "00000000000000000001.journal"
    fd = os.open(segment, os.O_WRONLY | os.O_CREAT, 0o644)
    notify = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        writer = small_writer(queue, tmp_path, fd, notify)
        status = writer.status()
        assert (status.blocked, status.blocked_error, status.blocked_bytes, status.stalls) == (False, 0, 0, 0)
        assert writer.progress() == (0, False, False)
        writer.request_rotation()  # nothing written yet: no empty segment is started
        writer.abort()  # not blocked: nothing to give up, the writer goes on
        queue.try_push(struct.pack("<QIBB2x", 1, 3, 0, 0) + b"abc".ljust(48, b"\0"))
        queue.close()
        final = writer.join()
        assert final.acked_seq == 1 and not final.failed and final.rotations == 0
        for request in (writer.request_rotation, writer.abort, writer.status):
            with pytest.raises(RuntimeError, match="joined"):
                request()
        assert sorted(p.name for p in tmp_path.iterdir()) == [segment.name]
    finally:
        os.close(notify)


def test_a_commit_window_lets_records_that_follow_share_the_first_ones_fdatasync(tmp_path: Path) -> None:
    queue = MpscQueue(64, 64)
    segment = tmp_path / "00000000000000000001.journal"
    fd = os.open(segment, os.O_WRONLY | os.O_CREAT, 0o644)
    notify = os.eventfd(0, os.EFD_CLOEXEC)
    try:
        writer = small_writer(queue, tmp_path, fd, notify)
        assert writer.commit_window_us == 0
        for bad in (-1, JournalWriterThread.MAX_COMMIT_WINDOW_US + 1):
            with pytest.raises(ValueError, match=r"commit window must be 0\.\.10000 us"):
                writer.set_commit_window_us(bad)
        writer.set_commit_window_us(JournalWriterThread.MAX_COMMIT_WINDOW_US)
        assert writer.commit_window_us == JournalWriterThread.MAX_COMMIT_WINDOW_US

        # The first record wakes the writer, which takes it and then waits up to 10 ms for more: the
        # three pushed once it has taken the first share its single write and fdatasync.
        def push(seq: int) -> None:
            assert queue.try_push(struct.pack("<QIBB2x", seq, 3, 0, 0) + b"abc".ljust(48, b"\0"))

        push(1)
        while len(queue):
            pass
        for seq in (2, 3, 4):
            push(seq)
        queue.close()
        final = writer.join()
        assert final.acked_seq == 4 and not final.failed
        assert final.batches == 1 and final.fsyncs == 1
    finally:
        os.close(notify)


def test_fsync_latency_counts_read_back_within_a_bucket_of_their_values() -> None:
    from hftgate.native.journal_writer import _SYNC_BUCKET_MIDDLES, SYNC_BUCKETS, sync_latency_histogram

    middles = _SYNC_BUCKET_MIDDLES
    assert len(middles) == SYNC_BUCKETS and (middles[1:] > middles[:-1]).all()
    assert middles[:32].tolist() == list(range(32))  # exact below 32 ns
    counts = np.zeros(SYNC_BUCKETS, np.uint64)
    # 90 fsyncs in the bucket of ~30 us and 10 in the bucket of ~180 us: the median is the first.
    fast, slow = int(np.searchsorted(middles, 30_000)), int(np.searchsorted(middles, 180_000))
    counts[fast], counts[slow] = 90, 10
    histogram = sync_latency_histogram(counts)
    assert histogram.count == 100
    assert abs(histogram.percentile(50) - 30_000) <= 30_000 / 16
    assert abs(histogram.percentile(99) - 180_000) <= 180_000 / 16
    assert sync_latency_histogram(np.zeros(SYNC_BUCKETS, np.uint64)).count == 0
