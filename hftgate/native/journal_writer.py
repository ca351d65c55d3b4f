"""The journal's group-commit writer thread, from the C core (``native/include/hft_journal.h``).

The execution service's :class:`~services.execution.journal.Journal` pushes records into an
:class:`~hftgate.native.queues.MpscQueue`; this thread, which never takes the GIL, frames
them (header + zlib-compatible CRC-32), writes each batch with one ``write`` and one
``fdatasync``, rotates segments, and signals an eventfd after every acknowledged batch.
The event loop watches that fd and reads :meth:`JournalWriterThread.status`.

The C header documents the slot and record formats; :data:`SLOT_HEADER_BYTES` and
:data:`SLOT_FLAG_CONTINUED` are the two constants a producer needs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from hftgate.native import ffi, lib
from hftgate.native.errors import check
from hftgate.native.histogram import LatencyHistogram
from hftgate.native.queues import MpscQueue

__all__ = [
    "SLOT_FLAG_CONTINUED",
    "SLOT_HEADER_BYTES",
    "JournalWriterThread",
    "KeeperStats",
    "WriterStatus",
    "crc32",
    "crc32_kernel",
    "sync_latency_histogram",
]

SLOT_HEADER_BYTES: int = lib.HFT_JOURNAL_SLOT_HEADER_BYTES
SLOT_FLAG_CONTINUED: int = lib.HFT_JOURNAL_SLOT_FLAG_CONTINUED
#: Buckets of the writer's fdatasync latency counts (see :meth:`JournalWriterThread.sync_latency`).
SYNC_BUCKETS: int = lib.HFT_JOURNAL_SYNC_BUCKETS


def _sync_bucket_middles() -> np.ndarray:
    low, width = ffi.new("int64_t *"), ffi.new("int64_t *")
    middles = np.empty(SYNC_BUCKETS, np.int64)
    for index in range(SYNC_BUCKETS):
        check(lib.hft_journal_sync_bucket(index, low, width), "hft_journal_sync_bucket")
        middles[index] = low[0] + width[0] // 2
    return middles


_SYNC_BUCKET_MIDDLES = _sync_bucket_middles()


def sync_latency_histogram(counts: np.ndarray) -> LatencyHistogram:
    """The writer's fdatasync latency counts (:meth:`JournalWriterThread.sync_latency`) as a
    :class:`LatencyHistogram`, each count at its bucket's middle (within 1/32 of the value)."""
    histogram = LatencyHistogram()
    for index in np.flatnonzero(counts).tolist():
        histogram.record_n(int(_SYNC_BUCKET_MIDDLES[index]), int(counts[index]))
    return histogram


def crc32(data: bytes | bytearray | memoryview, crc: int = 0) -> int:
    """zlib.crc32's value, computed by the C core (the journal writer uses the same function)."""
    buffer = ffi.from_buffer(data)
    return int(lib.hft_crc32(crc, buffer, len(buffer)))


def crc32_kernel() -> str:
    """The kernel :func:`crc32` uses in this process: ``"pclmul"`` (carry-less multiply folding)
    or ``"slice8"`` (tables; without PCLMULQDQ, or with ``HFT_NATIVE_FORCE_SCALAR=1``)."""
    return str(ffi.string(lib.hft_crc32_kernel_name()).decode("ascii"))


class KeeperStats(NamedTuple):
    """The writer's CPU keeper's counters (``hft_cpu_keeper_stats``)."""

    wakes: int  # times the keeper woke the writer for records
    parks: int  # times it stopped spinning
    kicks: int  # times the producer woke the writer because the keeper was held off its CPU
    prewakes: int = 0  # times the keeper woke the writer on a touch, ahead of its record


@dataclass(frozen=True, slots=True)
class WriterStatus:
    """A copy of the writer's counters (see ``hft_journal_writer_status``)."""

    acked_seq: int
    synced_seq: int
    batches: int
    records: int
    fsyncs: int
    bytes: int
    rotations: int
    failed: bool
    error: int
    message: str
    #: True while the writer waits for disk space (it retries by itself; nothing more is acked meanwhile).
    blocked: bool = False
    #: While blocked: ENOSPC or EDQUOT, and the bytes the batch in hand still needs.
    blocked_error: int = 0
    blocked_bytes: int = 0
    #: Times the writer became blocked, and pauses spent waiting, since start.
    stalls: int = 0
    space_retries: int = 0
    #: Rotations put off because the new segment found no space (the active one grew on instead).
    rotations_deferred: int = 0


class JournalWriterThread:
    """A running C writer thread; :meth:`join` once the queue is closed.

    It takes ownership of ``fd`` (the active segment, opened ``O_WRONLY``; records go at
    ``segment_bytes`` and on) and closes it on :meth:`join`. ``notify_fd`` (an eventfd) stays the caller's.
    """

    def __init__(
        self,
        queue: MpscQueue,
        *,
        directory: str | os.PathLike[str],
        fd: int,
        segment_bytes: int,
        preallocate_bytes: int,
        segment_max_bytes: int,
        next_seq: int,
        sync_before_ack: bool,
        notify_fd: int,
        batch_max_records: int,
        max_payload_bytes: int,
        space_retry_max_ms: int = 100,
    ) -> None:
        # Both stay referenced until join(): the C thread reads the queue and the directory string.
        self._queue_handle: Any = queue.native_handle()
        self._directory = ffi.new("char[]", os.fsencode(os.fspath(directory)))
        config = ffi.new(
            "hft_journal_writer_config *",
            {
                "directory": self._directory,
                "fd": fd,
                "segment_bytes": segment_bytes,
                "preallocate_bytes": preallocate_bytes,
                "segment_max_bytes": segment_max_bytes,
                "next_seq": next_seq,
                "sync_before_ack": 1 if sync_before_ack else 0,
                "notify_fd": notify_fd,
                "batch_max_records": batch_max_records,
                "max_payload_bytes": max_payload_bytes,
                "space_retry_max_ms": space_retry_max_ms,
            },
        )
        out = ffi.new("hft_journal_writer **")
        check(lib.hft_journal_writer_start(self._queue_handle, config, out), "hft_journal_writer_start")
        self._writer: Any = out[0]
        self._status = ffi.new("hft_journal_writer_status *")

    def status(self) -> WriterStatus:
        """The counters right now (any thread; ~1 µs)."""
        if self._writer is None:
            raise RuntimeError("the journal writer thread was joined")
        lib.hft_journal_writer_status_get(self._writer, self._status)
        return _status_of(self._status)

    def sync_latency(self) -> np.ndarray:
        """How long each of the writer's fdatasyncs took: counts per nanosecond bucket
        (``hft_journal_writer_sync_latency``; :func:`sync_latency_histogram` reads them). Any
        thread: a copy taken while the writer syncs may miss that one fsync."""
        if self._writer is None:
            raise RuntimeError("the journal writer thread was joined")
        counts = np.zeros(SYNC_BUCKETS, np.uint64)
        check(
            lib.hft_journal_writer_sync_latency(
                self._writer, ffi.from_buffer("uint64_t[]", counts, require_writable=True), SYNC_BUCKETS
            ),
            "hft_journal_writer_sync_latency",
        )
        return counts

    def acked_seq(self) -> tuple[int, bool]:
        """(highest acknowledgeable sequence number, failed): the event loop's per-wake-up read."""
        status = self._status
        lib.hft_journal_writer_status_get(self._writer, status)
        return int(status.acked_seq), bool(status.failed)

    def poll_begin(self) -> None:
        """The loop busy-waits for an ack from now: acks are not signalled on the eventfd until
        :meth:`poll_end` (see ``hft_journal_writer_poll_begin``)."""
        lib.hft_journal_writer_poll_begin(self._writer)

    def poll_end(self) -> int:
        """End the busy-wait; the highest acknowledgeable sequence number, read after its end
        (acks published meanwhile were not signalled: the caller acknowledges through it)."""
        return int(lib.hft_journal_writer_poll_end(self._writer))

    def progress(self) -> tuple[int, bool, bool]:
        """(highest acknowledgeable sequence number, failed, blocked): the loop's read on a signal."""
        status = self._status
        lib.hft_journal_writer_status_get(self._writer, status)
        return int(status.acked_seq), bool(status.failed), bool(status.blocked)

    def request_rotation(self) -> None:
        """Start a new segment before the next batch (see ``hft_journal_writer_request_rotation``)."""
        if self._writer is None:
            raise RuntimeError("the journal writer thread was joined")
        check(lib.hft_journal_writer_request_rotation(self._writer), "hft_journal_writer_request_rotation")

    #: The longest group-commit window the writer takes (HFT_JOURNAL_MAX_COMMIT_WINDOW_US).
    MAX_COMMIT_WINDOW_US = 10_000
    #: The longest window :meth:`keep_cpu` takes (HFT_JOURNAL_MAX_KEEP_CPU_US).
    MAX_KEEP_CPU_US: int = lib.HFT_JOURNAL_MAX_KEEP_CPU_US

    def set_commit_window_us(self, window_us: int) -> None:
        """Wait up to ``window_us`` after a batch's first record for more to share its fdatasync
        (see ``hft_journal_writer_set_commit_window_us``); 0 takes only what is queued."""
        if self._writer is None:
            raise RuntimeError("the journal writer thread was joined")
        if not 0 <= window_us <= self.MAX_COMMIT_WINDOW_US:
            raise ValueError(f"commit window must be 0..{self.MAX_COMMIT_WINDOW_US} us, not {window_us}")
        check(
            lib.hft_journal_writer_set_commit_window_us(self._writer, window_us),
            "hft_journal_writer_set_commit_window_us",
        )

    @property
    def commit_window_us(self) -> int:
        return 0 if self._writer is None else int(lib.hft_journal_writer_commit_window_us(self._writer))

    def abort(self) -> None:
        """Make a writer that waits for disk space give up (it fails; see ``hft_journal_writer_abort``)."""
        if self._writer is None:
            raise RuntimeError("the journal writer thread was joined")
        check(lib.hft_journal_writer_abort(self._writer), "hft_journal_writer_abort")

    def set_cpus(self, cpus: Iterable[int]) -> None:
        """Run the thread only on ``cpus`` (see ``hft_journal_writer_set_cpus``); raises on a CPU
        number out of range or one this process may not use."""
        if self._writer is None:
            raise RuntimeError("the journal writer thread was joined")
        chosen = sorted(set(cpus))
        check(
            lib.hft_journal_writer_set_cpus(self._writer, ffi.new("int[]", chosen), len(chosen)),
            f"hft_journal_writer_set_cpus({chosen})",
        )

    def keep_cpu(self, spin_us: int, cpus: Iterable[int]) -> None:
        """Give the writer a keeper that keeps its CPUs ``cpus`` out of idle for ``spin_us`` after each
        :meth:`keep_cpu_awake` (see ``hft_journal_writer_keep_cpu``: a SCHED_IDLE thread spins
        there). Once per writer; raises ValueError for 0 or more than MAX_KEEP_CPU_US, and
        NativeError for no CPU or a second call."""
        if self._writer is None:
            raise RuntimeError("the journal writer thread was joined")
        chosen = sorted(set(cpus))
        if not 0 < spin_us <= self.MAX_KEEP_CPU_US:
            raise ValueError(f"spin_us must be 1..{self.MAX_KEEP_CPU_US}, got {spin_us}")
        check(
            lib.hft_journal_writer_keep_cpu(self._writer, spin_us, ffi.new("int[]", chosen), len(chosen)),
            f"hft_journal_writer_keep_cpu({spin_us}, {chosen})",
        )

    def keep_cpu_awake(self, record_coming: bool = True) -> None:
        """A record someone will wait on is coming: keep the writer's CPU awake from now for the
        keeper's window, and have the writer running when the record comes (see
        ``hft_journal_writer_keep_cpu_awake``); a no-op without a keeper. ``record_coming=False``:
        the CPU only, the writer left waiting (``hft_journal_writer_keep_cpu_awake_only``)."""
        if self._writer is None:
            raise RuntimeError("the journal writer thread was joined")
        if record_coming:
            lib.hft_journal_writer_keep_cpu_awake(self._writer)
        else:
            lib.hft_journal_writer_keep_cpu_awake_only(self._writer)

    def kick(self) -> None:
        """Records were pushed: wake the writer here if it waits on a keeper that other threads hold
        off its CPU (see ``hft_journal_writer_kick``); cheap otherwise."""
        if self._writer is None:
            raise RuntimeError("the journal writer thread was joined")
        lib.hft_journal_writer_kick(self._writer)

    def keeper_stats(self) -> KeeperStats:
        """The CPU keeper's counters (all 0 without one)."""
        if self._writer is None:
            raise RuntimeError("the journal writer thread was joined")
        out = ffi.new("hft_cpu_keeper_stats *")
        lib.hft_journal_writer_keeper_stats(self._writer, out)
        return KeeperStats(int(out.wakes), int(out.parks), int(out.kicks), int(out.prewakes))

    def join(self) -> WriterStatus:
        """Wait for the thread to end (close the queue first), free it, and return its last counters."""
        writer, self._writer = self._writer, None
        if writer is None:
            raise RuntimeError("the journal writer thread was already joined")
        final = ffi.new("hft_journal_writer_status *")
        check(lib.hft_journal_writer_join(writer, final), "hft_journal_writer_join")
        self._queue_handle = None
        return _status_of(final)


def _status_of(status: Any) -> WriterStatus:
    return WriterStatus(
        int(status.acked_seq),
        int(status.synced_seq),
        int(status.batches),
        int(status.records),
        int(status.fsyncs),
        int(status.bytes),
        int(status.rotations),
        bool(status.failed),
        int(status.error),
        ffi.string(status.message).decode("utf-8", "replace") if status.failed else "",
        blocked=bool(status.blocked),
        blocked_error=int(status.blocked_error),
        blocked_bytes=int(status.blocked_bytes),
        stalls=int(status.stalls),
        space_retries=int(status.space_retries),
        rotations_deferred=int(status.rotations_deferred),
    )
