"""The execution service's durable input journal: group commit on a writer thread, CRC-checked recovery.

Every accepted input (order, cancel, replace: opaque bytes here) is appended as one
record; :meth:`Journal.append` returns a future that resolves with the record's
sequence number once the record is durable, and the service sends the
acknowledgement only then.

How a record travels
--------------------
The event loop assigns the next sequence number and pushes the record as fixed-size
*slots* into the native lock-free MPSC queue (:class:`hftgate.native.queues.MpscQueue`);
it never touches the disk. The writer is a C thread
(:class:`hftgate.native.journal_writer.JournalWriterThread`, ``native/src/journal_writer.c``)
that never needs the GIL: it takes every slot that is waiting in one go, frames the
records (header and CRC-32), writes the batch with one ``write`` and makes it durable
with ONE ``fdatasync`` (group commit: the inputs that arrived while the previous fsync
ran share the next one), then publishes the batch's last sequence number and writes to
an eventfd. The event loop watches that eventfd (``loop.add_reader``): one wake-up per
batch reads the number and resolves every waiting future up to it. So durability costs
one fsync per batch, and the faster inputs arrive the bigger the batches get.

Why C and not a Python thread: a Python writer woken by a record must first wait for
the event loop to release the GIL, and again after its fsync to schedule the
acknowledgement. Measured on the 2-core VM through the real service, those two waits and
the Python framing cost ~120 µs per SubmitOrder, on top of the fsync.

Queue slot (``slot_bytes`` each, 256 by default; little-endian)::

    offset size field
    0      8    seq               sequence number the loop assigned
    8      4    payload_length
    12     1    record_type
    13     1    flags             bit 0: the payload continues in the next slots
    14     2    (zero)
    16     ..   payload           its first slot_bytes - 16 bytes

A payload too big for one slot (a batch of many orders) continues, raw, in as many
further slots as it needs, pushed as one unbroken run (``MpscQueue.try_push_many``: all
of them or, when they do not all fit now, none), so they are consecutive in the queue. When the
queue is momentarily full, records wait in an event-loop-side backlog (in order) that
is pushed on as each batch completes, so ``append`` never blocks; past
``backlog_max_records`` it raises :class:`JournalOverloaded` and the service turns the
input away. ``max_payload_bytes`` must fit in the queue (checked when opening).

A full disk
-----------
When the disk (or quota) cannot take the next batch, the C writer keeps that batch and retries by
itself (reserving smaller steps while some room is left, then pausing 1 ms, 2 ms, ... up to
``space_retry_max_ms`` between attempts) and says it is *blocked*. The loop learns it from the
same eventfd: :attr:`Journal.writable` turns False, the callbacks registered with
:meth:`Journal.on_writable_change` run (the service reports NOT_SERVING), and
:meth:`Journal.check_writable` -- the admission check the order path runs before it changes any
state -- raises :class:`JournalUnwritable` with what is short, so new inputs are refused. Records
appended before that stay queued and are acknowledged only once written and synced: nothing is
acknowledged that is not durable, nothing acknowledged is lost. When space returns the writer goes
on with them, ``writable`` turns True again and the callbacks run once more. A stop while blocked
waits up to ``close_blocked_timeout_s`` for space, then makes the writer give up; the records it
could not write fail their futures (never acknowledged).

Durability modes
----------------
``Durability.FSYNC`` (default): a future resolves only after the ``fdatasync``
covering its record has returned. ``Durability.WRITE``: a future resolves once
``write`` has handed the batch to the kernel, and the writer fsyncs right after; a
killed *process* loses nothing acknowledged (the data is in the page cache), but a
machine crash or power loss can lose the batches of the last fsync interval. A
trade-off for users who choose speed.

On-disk format
--------------
A journal is a directory of segment files named ``<first seq, 20 digits>.journal``
(e.g. ``00000000000000000001.journal``), each a run of records with consecutive
sequence numbers continuing from the previous segment. A segment is closed and a
new one started by the writer once it reaches ``segment_max_bytes`` (checked between
batches, so a segment can exceed it by one batch). The writer reserves space ahead of
the records with ``fallocate`` (``preallocate_bytes`` at a time) and writes into it, so
an fsync need not persist a new file size as well (~90 µs instead of ~130 µs per
fdatasync on this ext4). Reserved space reads as zeros: an all-zero remainder is the
end of a segment's records, not damage. Record (little-endian)::

    offset size field
    0      2    magic             b"HJ"
    2      1    version           1
    3      1    record_type       caller's tag (0..255), opaque to the journal
    4      4    payload_length
    8      8    seq
    16     4    crc32             zlib.crc32 over bytes 0..15 then the payload
    20     ..   payload

Recovery
--------
:meth:`Journal.open` reads every segment and checks every record's magic, version,
length, CRC and sequence. The first record that fails is a *tail* problem when no
valid record follows it anywhere (a write torn by a crash, or a flipped bit in the
last records): the file is truncated there, since those records were never
acknowledged, and what was cut is logged. When valid records follow the bad one,
the corruption is in the *middle*: ``open`` raises :class:`JournalCorruption`
unless ``allow_mid_corruption=True``, in which case it keeps the records before
the damage and moves everything from the damage on into ``*.corrupt-<ns>`` files
beside the segments (never deleted silently). Then :meth:`Journal.replay` yields
the recovered records and appends continue the sequence. The service takes
snapshots; :meth:`Journal.truncate_before` then drops the segments that hold only
records older than the snapshot (after each snapshot the writer starts a new segment,
:meth:`Journal.request_rotation`, so that happens at the next one). Given the snapshot's
sequence (``covered_seq``), ``open`` does not even read the segments it covers whole, so a
journal kept whole does not make every start slower than the last.

A filesystem that persists an unsynced batch's pages out of order could, after a
power loss (not a process crash), leave a hole inside the last unsynced batch that
looks like mid-file corruption; ``open`` then refuses rather than guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import os
import re
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hftgate.native.errors import NativeError
from hftgate.native.histogram import LatencyHistogram
from hftgate.native.journal_writer import (
    SLOT_FLAG_CONTINUED,
    SYNC_BUCKETS,
    JournalWriterThread,
    KeeperStats,
    WriterStatus,
    sync_latency_histogram,
)
from hftgate.native.queues import MpscQueue

log = logging.getLogger(__name__)

RECORD_MAGIC = b"HJ"
RECORD_VERSION = 1
# magic, version, record_type, payload_length, seq -- the part the CRC covers first.
_RECORD_PREFIX = struct.Struct("<2sBBIQ")
_RECORD_CRC = struct.Struct("<I")
RECORD_HEADER_BYTES = _RECORD_PREFIX.size + _RECORD_CRC.size  # 20

_SLOT_HEADER = struct.Struct("<QIBB2x")  # seq, payload_length, record_type, flags

DEFAULT_MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
DEFAULT_PREALLOCATE_BYTES = 4 * 1024 * 1024
DEFAULT_SPACE_RETRY_MAX_MS = 100
DEFAULT_CLOSE_BLOCKED_TIMEOUT_S = 10.0

_SEGMENT_NAME = re.compile(r"^(\d{20})\.journal$")


class Durability(enum.Enum):
    """When an append's future resolves."""

    #: After the fdatasync that covers the record has returned (nothing acknowledged is ever lost).
    FSYNC = "fsync"
    #: After write() handed the record to the kernel; survives a process kill, not a power loss.
    WRITE = "write"


class JournalCorruption(Exception):
    """A damaged record is followed by valid ones: recovering would silently drop acknowledged inputs."""


class JournalFailed(Exception):
    """The writer thread hit an error (I/O, or a malformed slot); nothing more is accepted or acknowledged."""


class JournalClosed(Exception):
    """The journal is closed (or not started) and accepts no appends."""


class JournalOverloaded(Exception):
    """The writer is so far behind that ``backlog_max_records`` inputs are already waiting."""


class JournalUnwritable(Exception):
    """The disk cannot take the journal's next batch; the writer retries and resumes by itself."""


@dataclass(frozen=True, slots=True)
class JournalRecord:
    seq: int
    record_type: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class CutRegion:
    """Bytes recovery removed from a segment, and why."""

    segment: Path
    offset: int
    length: int
    reason: str
    #: Where the bytes were moved (mid-file corruption under allow_mid_corruption), else None.
    quarantined_to: Path | None = None


@dataclass(slots=True)
class RecoveryReport:
    """What :meth:`Journal.open` found."""

    records: int = 0
    first_seq: int = 0
    last_seq: int = 0
    segments: int = 0
    cut: list[CutRegion] = field(default_factory=list)
    #: Where the records of the last segment end: appends continue there.
    active_segment_bytes: int = 0


@dataclass(slots=True)
class _Segment:
    first_seq: int
    path: Path


@dataclass(slots=True)
class _ScanResult:
    records: int
    last_seq: int  # of the last good record; first_seq - 1 when none
    good_end: int  # offset just past the last good record
    bad_reason: str | None  # why the record at good_end is bad, None when the segment is clean


def segment_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:020d}.journal"


def _decode_at(
    data: bytes | memoryview, offset: int, max_payload_bytes: int
) -> tuple[int, int, int, str | None]:
    """Check the record at ``offset``: (seq, record_type, end offset, None) or (.., reason) when it is bad."""
    if len(data) - offset < RECORD_HEADER_BYTES:
        return 0, 0, offset, f"torn header ({len(data) - offset} of {RECORD_HEADER_BYTES} bytes)"
    magic, version, record_type, length, seq = _RECORD_PREFIX.unpack_from(data, offset)
    if magic != RECORD_MAGIC:
        return seq, record_type, offset, f"bad magic {bytes(magic)!r}"
    if version != RECORD_VERSION:
        return seq, record_type, offset, f"unknown version {version}"
    if length > max_payload_bytes:
        return seq, record_type, offset, f"implausible payload length {length}"
    end = offset + RECORD_HEADER_BYTES + length
    if end > len(data):
        return (
            seq,
            record_type,
            offset,
            f"torn payload ({len(data) - offset - RECORD_HEADER_BYTES} of {length} bytes)",
        )
    (stored_crc,) = _RECORD_CRC.unpack_from(data, offset + _RECORD_PREFIX.size)
    crc = zlib.crc32(
        data[offset + RECORD_HEADER_BYTES : end], zlib.crc32(data[offset : offset + _RECORD_PREFIX.size])
    )
    if crc != stored_crc:
        return seq, record_type, offset, f"CRC mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"
    return seq, record_type, end, None


def _read_limit(max_payload_bytes: int) -> int:
    """The largest payload recovery accepts: any a default-sized journal could have written."""
    return max(max_payload_bytes, DEFAULT_MAX_PAYLOAD_BYTES)


def _is_reserved_space(data: bytes, offset: int) -> bool:
    """Whether everything from ``offset`` on is zero: space the writer reserved, never written."""
    return data.count(0, offset) == len(data) - offset


def _scan_segment(data: bytes, first_seq: int, max_payload_bytes: int) -> _ScanResult:
    offset = 0
    expected_seq = first_seq
    records = 0
    while offset < len(data):
        seq, _, end, reason = _decode_at(data, offset, max_payload_bytes)
        if reason is None and seq != expected_seq:
            reason = f"sequence {seq} where {expected_seq} was expected"
        if reason is not None:
            if _is_reserved_space(data, offset):
                break
            return _ScanResult(records, expected_seq - 1, offset, reason)
        records += 1
        expected_seq += 1
        offset = end
    return _ScanResult(records, expected_seq - 1, offset, None)


def _has_valid_record_from(data: bytes, start: int, max_payload_bytes: int) -> bool:
    """Whether any CRC-valid record starts at or after ``start`` (byte-by-byte resync on the magic)."""
    position = data.find(RECORD_MAGIC, start)
    while position != -1:
        if _decode_at(data, position, max_payload_bytes)[3] is None:
            return True
        position = data.find(RECORD_MAGIC, position + 1)
    return False


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _truncate_durably(path: Path, length: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, length)
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """An append-only, sequence-numbered, CRC-checked journal with group commit.

    Life cycle: ``journal = Journal.open(directory)`` (recovers; blocking disk I/O, so
    call it at start-up or through ``asyncio.to_thread``), ``journal.replay()`` to
    rebuild state, ``journal.start()`` inside the running event loop, ``append`` from
    that loop only (it owns the sequence numbers), ``await journal.close()``.
    """

    def __init__(
        self,
        directory: Path,
        segments: list[_Segment],
        next_seq: int,
        recovery: RecoveryReport,
        *,
        durability: Durability,
        segment_max_bytes: int,
        max_payload_bytes: int,
        preallocate_bytes: int,
        queue_capacity: int,
        slot_bytes: int,
        batch_max_records: int,
        backlog_max_records: int,
        space_retry_max_ms: int = DEFAULT_SPACE_RETRY_MAX_MS,
        close_blocked_timeout_s: float = DEFAULT_CLOSE_BLOCKED_TIMEOUT_S,
    ) -> None:
        self.directory = directory
        self.durability = durability
        self.recovery = recovery
        self._segment_max_bytes = segment_max_bytes
        self._max_payload_bytes = max_payload_bytes
        self._preallocate_bytes = preallocate_bytes
        self._active_segment_bytes = recovery.active_segment_bytes  # where appends continue
        self._slot_bytes = slot_bytes
        self._inline_payload_bytes = slot_bytes - _SLOT_HEADER.size
        self._batch_max_records = batch_max_records
        self._backlog_max_records = backlog_max_records
        self._space_retry_max_ms = space_retry_max_ms
        self._close_blocked_timeout_s = close_blocked_timeout_s

        # Segments as recovery found them (the writer adds more on rotation, on disk only:
        # truncate_before lists the directory again). The lock serialises truncations.
        self._segments = segments
        self._segments_lock = threading.Lock()
        self._recovered_last_seq = next_seq - 1

        # Event-loop side (touched only on the loop thread).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._next_seq = next_seq
        self._waiters: deque[tuple[int, asyncio.Future[int]]] = deque()
        self._backlog: deque[bytes] = deque()  # whole records (all their slots), oldest first
        self._closing = False
        self._drained: asyncio.Future[None] | None = None  # close() waits on it for the last ack
        self._failure: JournalFailed | None = None
        self.durable_seq = next_seq - 1  # highest sequence number acknowledged so far
        # Full disk: why the writer waits (None while it can write), since when, and who to tell.
        self._unwritable: str | None = None
        self._unwritable_since = 0.0
        self._writable_listeners: list[Callable[[bool], None]] = []
        #: Record bytes (header included) appended since open; what the snapshotter measures.
        self.bytes_appended = 0
        #: Records and record bytes the last :meth:`replay` yielded (the recovery's tail).
        self.replayed_records = 0
        self.replayed_bytes = 0

        # The queue the loop fills and the C writer thread drains (open() checked that the
        # largest record fits in it).
        self._queue = MpscQueue(queue_capacity, slot_bytes)
        self._writer: JournalWriterThread | None = None
        self._writer_cpus: frozenset[int] | None = None
        self._keeper: JournalWriterThread | None = None  # the writer, once it has a CPU keeper
        self._notify_fd = -1
        self._final_status: WriterStatus | None = None
        self._final_sync_counts: np.ndarray | None = None

    # --- opening and recovery -------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        *,
        durability: Durability = Durability.FSYNC,
        allow_mid_corruption: bool = False,
        segment_max_bytes: int = 64 * 1024 * 1024,
        max_payload_bytes: int | None = None,
        preallocate_bytes: int = DEFAULT_PREALLOCATE_BYTES,
        queue_capacity: int = 65_536,
        slot_bytes: int = 256,
        batch_max_records: int = 8_192,
        backlog_max_records: int = 1_000_000,
        space_retry_max_ms: int = DEFAULT_SPACE_RETRY_MAX_MS,
        close_blocked_timeout_s: float = DEFAULT_CLOSE_BLOCKED_TIMEOUT_S,
        covered_seq: int = 0,
    ) -> Journal:
        """Open (creating if needed) the journal in ``directory``, verifying and repairing it.

        Raises :class:`JournalCorruption` when a damaged record is followed by valid
        ones, unless ``allow_mid_corruption`` (then the damage and everything after
        it is moved aside and logged). ``preallocate_bytes`` is how much space the
        writer reserves ahead of the records at a time (0: plain appends; recovery
        reads up to this much reserved space per segment). ``max_payload_bytes``
        defaults to what the queue can carry in one record, capped at 16 MiB; a larger
        value than the queue can carry is a ValueError. ``space_retry_max_ms`` is the longest
        pause between the writer's attempts while the disk is full; ``close_blocked_timeout_s``
        how long :meth:`close` waits for space before giving up on what is not written.

        ``covered_seq``: a snapshot already covers every record up to it, so segments holding only
        such records (the next segment starts at or before ``covered_seq + 1``) are listed by name
        but not read nor CRC-checked: recovery never replays them, and with the journal kept whole
        (no truncation after snapshots) reading them made every start slower than the last. The
        report's ``records`` then counts only the segments read; its ``first_seq`` is still the
        first segment's. 0 (the default) verifies everything, as a whole-journal replay needs.
        """
        if slot_bytes < _SLOT_HEADER.size + 8:
            raise ValueError(f"slot_bytes must be at least {_SLOT_HEADER.size + 8}, got {slot_bytes}")
        # A record's slots must all fit in the queue at once (capacity is a power of two).
        queue_slots = 1 << max(1, queue_capacity - 1).bit_length()
        carried = (queue_slots - 1) * slot_bytes + slot_bytes - _SLOT_HEADER.size
        if max_payload_bytes is None:
            max_payload_bytes = min(DEFAULT_MAX_PAYLOAD_BYTES, carried)
        elif max_payload_bytes > carried:
            raise ValueError(
                f"max_payload_bytes={max_payload_bytes} does not fit a queue of {queue_slots} slots of "
                f"{slot_bytes} bytes (at most {carried})"
            )
        if preallocate_bytes < 0:
            raise ValueError(f"preallocate_bytes must be 0 or more, got {preallocate_bytes}")
        if segment_max_bytes <= 0 or max_payload_bytes <= 0 or batch_max_records <= 0:
            raise ValueError("segment_max_bytes, max_payload_bytes and batch_max_records must be positive")
        if not 1 <= space_retry_max_ms <= 60_000:
            raise ValueError(f"space_retry_max_ms must be 1..60000, got {space_retry_max_ms}")
        if close_blocked_timeout_s < 0:
            raise ValueError(f"close_blocked_timeout_s must be 0 or more, got {close_blocked_timeout_s}")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        segments, report = _recover(path, _read_limit(max_payload_bytes), allow_mid_corruption, covered_seq)
        next_seq = report.last_seq + 1 if report.records else segments[-1].first_seq
        journal = cls(
            path,
            segments,
            next_seq,
            report,
            durability=durability,
            segment_max_bytes=segment_max_bytes,
            max_payload_bytes=max_payload_bytes,
            preallocate_bytes=preallocate_bytes,
            queue_capacity=queue_capacity,
            slot_bytes=slot_bytes,
            batch_max_records=batch_max_records,
            backlog_max_records=backlog_max_records,
            space_retry_max_ms=space_retry_max_ms,
            close_blocked_timeout_s=close_blocked_timeout_s,
        )
        log.info(
            "journal %s: %d records recovered (seq %d..%d) in %d segment(s), next seq %d",
            path,
            report.records,
            report.first_seq,
            report.last_seq,
            report.segments,
            next_seq,
        )
        return journal

    @property
    def next_seq(self) -> int:
        """The sequence number the next append gets."""
        return self._next_seq

    def restart_after(self, covered_seq: int) -> list[Path]:
        """Continue numbering at ``covered_seq + 1`` when the journal ends before it (before :meth:`start`).

        For a journal that lost records a newer snapshot was built from: every existing segment
        holds only records the snapshot covers, so each is moved aside (renamed
        ``*.behind-snapshot-<ns>``, never deleted) and an empty segment starts at
        ``covered_seq + 1``. Without this the next appends would reuse sequence numbers the
        snapshot already covers, and a later recovery from that snapshot would skip them.
        Returns the paths the old segments were moved to.
        """
        if self._loop is not None:
            raise RuntimeError("restart_after must run before start()")
        if covered_seq < self._next_seq:
            raise ValueError(f"the journal already continues past seq {covered_seq} (next {self._next_seq})")
        stamp = time.time_ns()
        moved = []
        for segment in self._segments:
            target = segment.path.with_name(f"{segment.path.name}.behind-snapshot-{stamp}")
            os.rename(segment.path, target)
            moved.append(target)
        first = covered_seq + 1
        path = segment_path(self.directory, first)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        _fsync_directory(self.directory)
        self._segments = [_Segment(first, path)]
        self._next_seq = first
        self._recovered_last_seq = first - 1
        self.durable_seq = first - 1
        self._active_segment_bytes = 0
        log.error("journal %s restarted at seq %d; moved aside: %s", self.directory, first, moved)
        return moved

    def replay(self, after_seq: int = 0) -> Iterator[JournalRecord]:
        """Yield the recovered records with ``seq > after_seq``, in order (reads the segments again).

        Meant for start-up, before :meth:`start`; it stops at the last record recovered by ``open``.
        """
        with self._segments_lock:
            segments = list(self._segments)
        self.replayed_records = self.replayed_bytes = 0
        for index, segment in enumerate(segments):
            next_first = segments[index + 1].first_seq if index + 1 < len(segments) else None
            if next_first is not None and next_first <= after_seq + 1:
                continue
            data = segment.path.read_bytes()
            offset = 0
            while offset < len(data):
                seq, record_type, end, reason = _decode_at(data, offset, _read_limit(self._max_payload_bytes))
                if reason is not None and _is_reserved_space(data, offset):
                    break
                if reason is not None:
                    raise JournalCorruption(f"{segment.path} offset {offset} changed since open: {reason}")
                if seq > self._recovered_last_seq:
                    return
                if seq > after_seq:
                    self.replayed_records += 1
                    self.replayed_bytes += end - offset
                    yield JournalRecord(seq, record_type, data[offset + RECORD_HEADER_BYTES : end])
                offset = end

    # --- running ----------------------------------------------------------------

    def start(self) -> None:
        """Start the writer thread; appends resolve on the event loop running this call."""
        if self._loop is not None:
            raise RuntimeError("journal already started")
        loop = asyncio.get_running_loop()
        active = self._segments[-1]
        fd = os.open(active.path, os.O_WRONLY | os.O_CLOEXEC)  # the writer writes at the records' end
        self._notify_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            self._writer = JournalWriterThread(
                self._queue,
                directory=self.directory,
                fd=fd,
                segment_bytes=self._active_segment_bytes,
                preallocate_bytes=self._preallocate_bytes,
                segment_max_bytes=self._segment_max_bytes,
                next_seq=self._next_seq,
                sync_before_ack=self.durability is Durability.FSYNC,
                notify_fd=self._notify_fd,
                batch_max_records=self._batch_max_records,
                max_payload_bytes=self._max_payload_bytes,
                space_retry_max_ms=self._space_retry_max_ms,
            )
        except BaseException:
            os.close(fd)
            os.close(self._notify_fd)
            self._notify_fd = -1
            raise
        self._loop = loop
        loop.add_reader(self._notify_fd, self._on_writer_signal)

    def set_commit_window_us(self, window_us: int) -> None:
        """How long the writer waits after a batch's first record for more to share its fdatasync
        (0: only what is already queued); changed live by the scaler's optimiser."""
        if self._writer is None:
            raise RuntimeError("journal is not started")
        self._writer.set_commit_window_us(window_us)

    @property
    def commit_window_us(self) -> int:
        return 0 if self._writer is None else self._writer.commit_window_us

    def place_writer(self, cpus: Iterable[int]) -> None:
        """Run the writer thread only on ``cpus`` (see :mod:`hftgate.placement`)."""
        if self._writer is None:
            raise RuntimeError("journal is not started")
        chosen = frozenset(cpus)
        self._writer.set_cpus(chosen)
        self._writer_cpus = chosen

    def keep_writer_cpu(self, spin_us: int) -> bool:
        """Give the writer a keeper that keeps its CPU out of idle for ``spin_us`` after each
        :meth:`keep_writer_cpu_awake` (a SCHED_IDLE thread spins there;
        ``hft_journal_writer_keep_cpu``): on a VM the fsync's completion and the writer's wake-up
        then no longer wait for a halted vCPU. Only after :meth:`place_writer`, for a writer with
        CPUs of its own. False, with a warning, where the machine refuses it (no SCHED_IDLE): the
        journal works as before."""
        if self._writer is None or self._writer_cpus is None:
            raise RuntimeError("keep_writer_cpu needs a started journal whose writer is placed")
        try:
            self._writer.keep_cpu(spin_us, self._writer_cpus)
        except NativeError as exc:
            log.warning("the journal writer's CPU is not kept awake: %s", exc)
            return False
        self._keeper = self._writer
        return True

    def speed_up_apart_writer(
        self, writer_apart: bool, ack_poll_us: int, keep_cpu_us: int
    ) -> tuple[int, bool]:
        """The two speed-ups that pay only when the writer has a CPU of its own (``writer_apart``,
        hftgate.placement): an fsync poll of up to ``ack_poll_us`` for a lone order's caller, and a
        keeper of ``keep_cpu_us`` (:meth:`keep_writer_cpu`); 0 turns either off. Returns (the poll
        in ns, whether the keeper runs). Beside a writer that shares the loop's CPU, polling takes
        the CPU the writer needs and a keeper would spin to no use. One rule for the service
        (``__main__.place_threads``) and its benchmark floors (hftgate/bench/floors.py)."""
        if not writer_apart:
            return 0, False
        kept = bool(keep_cpu_us) and self.keep_writer_cpu(keep_cpu_us)
        return ack_poll_us * 1000, kept

    def keep_writer_cpu_awake(self, record_coming: bool = True) -> None:
        """A record its caller will wait on is coming (a lone SubmitOrder's): keep the writer's CPU
        awake from now for the keeper's window, and the writer running for the record. A no-op
        without a keeper. Only such callers touch it: a throughput load never waits on one record,
        and a keeper spinning beside a busy writer would only take the core from the loop where
        vCPUs share one. ``record_coming=False`` (the bench's echo floor, which appends nothing):
        the CPU only."""
        keeper = self._keeper
        if keeper is not None:
            keeper.keep_cpu_awake(record_coming)

    def keeper_stats(self) -> KeeperStats:
        """The writer's CPU keeper's counters (all 0 without one, or once closed)."""
        return KeeperStats(0, 0, 0) if self._writer is None else self._writer.keeper_stats()

    def slots_for(self, payload_length: int) -> int:
        """How many queue slots a record with ``payload_length`` bytes of payload takes."""
        beyond = payload_length - self._inline_payload_bytes
        return 1 if beyond <= 0 else 1 + -(-beyond // self._slot_bytes)

    def check_writable(self) -> None:
        """The admission check: raise what :meth:`append` would raise now for a payload within limits
        (closed, failed, overloaded), or :class:`JournalUnwritable` while the disk is full.

        Lets a caller that must change its own state and journal the change in one step check first:
        between this call and ``append`` on the same event-loop step, nothing can change the answer.
        An input refused here was never journaled nor acknowledged; the client may send it again.
        """
        self._check_open()
        if self._unwritable is not None:
            raise JournalUnwritable(self._unwritable)

    def _check_open(self) -> None:
        """check_writable without the full-disk refusal: what append itself enforces."""
        if self._failure is not None:
            raise JournalFailed(f"journal writer failed: {self._failure}")
        if self._loop is None or self._closing:
            raise JournalClosed("journal is not started or is closing")
        if len(self._backlog) >= self._backlog_max_records:
            raise JournalOverloaded(f"{len(self._backlog)} journal records already wait for the writer")

    @property
    def writable(self) -> bool:
        """False while the writer waits for disk space (:meth:`check_writable` then refuses inputs)."""
        return self._unwritable is None

    def on_writable_change(self, callback: Callable[[bool], None]) -> None:
        """Call ``callback(writable)`` on the loop each time the writer becomes blocked for lack of disk
        space (False) or can write again (True), and with False when it fails for good (never True
        after that). For health: NOT_SERVING while it cannot write. A callback that raises is logged
        and the others still run."""
        self._writable_listeners.append(callback)

    def request_rotation(self) -> None:
        """Start a new segment before the next batch, so the records before it can be dropped whole
        by a later :meth:`truncate_before` (the snapshotter asks after each snapshot)."""
        if self._writer is not None:
            self._writer.request_rotation()

    def append(self, payload: bytes, record_type: int = 0) -> asyncio.Future[int]:
        """Journal ``payload``; the future resolves with its sequence number once it is durable.

        Event-loop thread only. Never blocks. Raises :class:`JournalClosed`,
        :class:`JournalFailed` (the writer stopped on an error), :class:`JournalOverloaded`,
        or ValueError for a payload over ``max_payload_bytes`` or a type outside 0..255.
        While the disk is full it still queues the record (bounded by ``backlog_max_records``), to be
        acknowledged once written: callers admit inputs with :meth:`check_writable` first.
        """
        self._check_open()
        length = len(payload)
        if length > self._max_payload_bytes:
            raise ValueError(
                f"journal record of {length} bytes exceeds max_payload_bytes={self._max_payload_bytes}"
            )
        if not 0 <= record_type <= 255:
            raise ValueError(f"record_type must be 0..255, got {record_type}")
        seq = self._next_seq
        self._next_seq = seq + 1
        self.bytes_appended += RECORD_HEADER_BYTES + length
        flags = SLOT_FLAG_CONTINUED if length > self._inline_payload_bytes else 0
        record = (_SLOT_HEADER.pack(seq, length, record_type, flags) + payload).ljust(
            self.slots_for(length) * self._slot_bytes, b"\0"
        )
        assert self._loop is not None
        future: asyncio.Future[int] = self._loop.create_future()
        self._waiters.append((seq, future))
        if self._backlog or not self._push(record):
            self._backlog.append(record)
        return future

    def poll_durable(self, seq: int, budget_ns: int) -> bool:
        """Busy-wait up to ``budget_ns`` for record ``seq`` to become durable; True once it is.

        On the loop's thread, for a caller with nothing else to do: it reads the writer's status
        instead of sleeping until the eventfd wakes the loop, which on a VM costs a halted CPU's
        wake-up (~45 µs measured here) after the fsync. Resolves the futures it finds durable, as
        the eventfd handler would. Meanwhile the writer does not signal its acks (the loop would
        only wake once more after the reply has left, for nothing): what it acknowledged by the
        end of the wait is acknowledged here."""
        writer = self._writer
        if writer is None:
            return False
        deadline = time.perf_counter_ns() + budget_ns
        writer.poll_begin()
        try:
            while True:
                acked, failed = writer.acked_seq()
                if failed:
                    return False
                if acked >= seq:
                    return True
                if time.perf_counter_ns() >= deadline:
                    return False
        finally:
            acked = writer.poll_end()
            if acked > self.durable_seq:
                self._acknowledge_through(acked)

    def _push(self, record: bytes) -> bool:
        """Push all of a record's slots as one unbroken run, or none when they do not all fit now."""
        if len(record) == self._slot_bytes:
            pushed = self._queue.try_push(record)
        else:
            pushed = self._queue.try_push_many(record)
        if pushed and self._keeper is not None:  # its writer may wait on a keeper held off its CPU
            self._keeper.kick()
        return pushed

    @property
    def batches_written(self) -> int:
        """Batches the writer has written and acknowledged (for stats and tests)."""
        return self._writer_status().batches

    @property
    def records_written(self) -> int:
        return self._writer_status().records

    @property
    def fsyncs(self) -> int:
        return self._writer_status().fsyncs

    def _writer_status(self) -> WriterStatus:
        if self._writer is not None:
            return self._writer.status()
        if self._final_status is not None:
            return self._final_status
        return WriterStatus(self.durable_seq, self.durable_seq, 0, 0, 0, 0, 0, False, 0, "")

    def writer_status(self) -> WriterStatus:
        """The writer's counters (stalls, space retries, blocked bytes...) for stats and tests."""
        return self._writer_status()

    def sync_latency(self) -> LatencyHistogram:
        """How long the writer's fdatasyncs took since start (each within 1/32): the disk's share
        of a durable acknowledgement, as the journal meets it (its cadence, its file), beside which
        a benchmark's back-to-back fsync floor can be read. Empty before start."""
        if self._writer is not None:
            counts = self._writer.sync_latency()
        elif self._final_sync_counts is not None:
            counts = self._final_sync_counts
        else:
            counts = np.zeros(SYNC_BUCKETS, np.uint64)
        return sync_latency_histogram(counts)

    async def close(self) -> None:
        """Wait for every append made so far to be durable, stop the writer and close the segment."""
        if self._closing:
            return
        self._closing = True
        writer, loop = self._writer, self._loop
        if writer is None or loop is None:
            return
        if self._failure is None and self.durable_seq < self._next_seq - 1:
            self._drained = loop.create_future()
            await self._wait_drained(writer, self._drained)
        self._queue.close()  # the writer drains the queue (empty by now) and exits
        # Let go of the writer before joining it: the join frees it on another thread, and a
        # signal handled meanwhile (the writer's last notify) or a stats read must not touch it.
        self._writer = self._keeper = None
        loop.remove_reader(self._notify_fd)
        self._final_sync_counts = writer.sync_latency()  # (the queue is drained: no fsync comes after)
        self._final_status = await asyncio.to_thread(writer.join)
        os.close(self._notify_fd)
        self._notify_fd = -1

    async def _wait_drained(self, writer: JournalWriterThread, drained: asyncio.Future[None]) -> None:
        """Wait for the last append to be durable; while the disk stays full, at most
        ``close_blocked_timeout_s``, then make the writer give up (its waiters fail, never acked)."""
        blocked_since: float | None = None
        while not drained.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(drained), 0.05)
                return
            if not writer.status().blocked:
                blocked_since = None
                continue
            now = time.monotonic()
            blocked_since = now if blocked_since is None else blocked_since
            if now - blocked_since >= self._close_blocked_timeout_s:
                log.error(
                    "journal: closing while the disk has been full for %.1f s: seq %d..%d are given up "
                    "(never acknowledged)",
                    now - blocked_since,
                    self.durable_seq + 1,
                    self._next_seq - 1,
                )
                writer.abort()
                await drained  # the writer fails at its next attempt; its signal fails the waiters
                return

    async def truncate_before(self, seq: int) -> int:
        """Delete the segments whose records all have sequence numbers below ``seq``.

        For after a snapshot that covers every input up to ``seq - 1``. The active
        segment is never deleted. Returns how many segments were removed.
        """
        return await asyncio.to_thread(self._drop_segments_before, seq)

    def _drop_segments_before(self, seq: int) -> int:
        with self._segments_lock:
            # The writer creates segments as it rotates: the directory is the list.
            segments = _list_segments(self.directory)
            droppable = 0
            while droppable + 1 < len(segments) and segments[droppable + 1].first_seq <= seq:
                droppable += 1
            dropped = segments[:droppable]
            for segment in dropped:
                segment.path.unlink()
            self._segments = segments[droppable:]
        if dropped:
            _fsync_directory(self.directory)
            log.info("journal: dropped %d segment(s) holding only records before seq %d", len(dropped), seq)
        return len(dropped)

    # --- the loop side of a completed batch --------------------------------------

    def _on_writer_signal(self) -> None:
        """Runs on the loop when the writer signals: acknowledge what is durable, or fail."""
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self._notify_fd)
        writer = self._writer
        if writer is None:
            return
        acked, failed, blocked = writer.progress()
        if acked > self.durable_seq:
            self._acknowledge_through(acked)
        if blocked != (self._unwritable is not None) and not failed:
            self._writable_changed(writer, blocked)
        if failed and self._failure is None:
            status = writer.status()
            failure = JournalFailed(status.message)
            self._failure = failure
            log.error("journal writer failed: %s; no further appends will be acknowledged", status.message)
            self._fail_waiters(failure)
            if self._unwritable is None:
                self._unwritable = f"the journal writer failed: {status.message}"
                self._tell_listeners(False)  # for good: never True again

    def _writable_changed(self, writer: JournalWriterThread, blocked: bool) -> None:
        """The writer became blocked for lack of space, or wrote again: refuse or admit, tell listeners."""
        if blocked:
            status = writer.status()
            if not status.blocked:  # it has written again since the signal
                return
            code = errno.errorcode.get(status.blocked_error, str(status.blocked_error))
            # Goes to clients (UNAVAILABLE): what is wrong, not where the server keeps its files.
            self._unwritable = (
                f"the journal's disk is full ({os.strerror(status.blocked_error)}, {code}): the next "
                f"{status.blocked_bytes} bytes do not fit; new inputs are refused until space is freed, "
                "and the service resumes by itself"
            )
            self._unwritable_since = time.monotonic()
            log.error(
                "journal %s cannot write: %s; records from seq %d wait",
                self.directory,
                self._unwritable,
                self.durable_seq + 1,
            )
        else:
            log.warning(
                "journal writes again after %.1f s without disk space; inputs are admitted again",
                time.monotonic() - self._unwritable_since,
            )
            self._unwritable = None
        self._tell_listeners(not blocked)

    def _tell_listeners(self, writable: bool) -> None:
        for callback in list(self._writable_listeners):
            try:
                callback(writable)
            except Exception:
                log.exception("journal writable-change callback failed")

    def _acknowledge_through(self, last_seq: int) -> None:
        """Resolve every future up to ``last_seq``, then push on what waits in the backlog."""
        waiters = self._waiters
        while waiters and waiters[0][0] <= last_seq:
            seq, future = waiters.popleft()
            if not future.done():
                future.set_result(seq)
        self.durable_seq = last_seq
        backlog = self._backlog
        while backlog and self._push(backlog[0]):
            backlog.popleft()
        if self._drained is not None and last_seq == self._next_seq - 1 and not self._drained.done():
            self._drained.set_result(None)

    def _fail_waiters(self, failure: JournalFailed) -> None:
        while self._waiters:
            _, future = self._waiters.popleft()
            if not future.done():
                future.set_exception(failure)
        self._backlog.clear()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)


def _list_segments(directory: Path) -> list[_Segment]:
    return sorted(
        (
            _Segment(int(match.group(1)), directory / name)
            for name in os.listdir(directory)
            if (match := _SEGMENT_NAME.match(name))
        ),
        key=lambda s: s.first_seq,
    )


def _recover(
    directory: Path, max_payload_bytes: int, allow_mid_corruption: bool, covered_seq: int = 0
) -> tuple[list[_Segment], RecoveryReport]:
    """Verify every segment (but those ``covered_seq`` makes unneeded), repair a bad tail, and return
    the segments with a report."""
    segments = _list_segments(directory)
    report = RecoveryReport(segments=len(segments))
    if not segments:
        first = _Segment(1, segment_path(directory, 1))
        first.path.touch(exist_ok=False)
        _fsync_directory(directory)
        return [first], RecoveryReport(segments=1)

    # Segments a snapshot covers whole (their successor starts by covered_seq + 1): never replayed.
    skipped = 0
    while skipped + 1 < len(segments) and segments[skipped + 1].first_seq <= covered_seq + 1:
        skipped += 1
    contents = [b"" if index < skipped else s.path.read_bytes() for index, s in enumerate(segments)]
    record_ends: list[int] = []  # per segment, where its good records end
    expected_first = segments[skipped].first_seq
    if skipped:
        report.first_seq = segments[0].first_seq
    for index, (segment, data) in enumerate(zip(segments, contents, strict=True)):
        if index < skipped:
            record_ends.append(0)
            continue
        if segment.first_seq != expected_first:
            # A segment is missing: everything in this one comes after the hole.
            scan = _ScanResult(
                0,
                expected_first - 1,
                0,
                f"segment starts at seq {segment.first_seq}, {expected_first} was expected",
            )
            resync_from = 0
        else:
            scan = _scan_segment(data, segment.first_seq, max_payload_bytes)
            resync_from = scan.good_end + 1
        if scan.records:
            if not report.records and not skipped:
                report.first_seq = segment.first_seq
            report.records += scan.records
            report.last_seq = scan.last_seq
        record_ends.append(scan.good_end)
        if scan.bad_reason is None:
            expected_first = scan.last_seq + 1
            continue
        later_valid = _has_valid_record_from(data, resync_from, max_payload_bytes) or any(
            _has_valid_record_from(later, 0, max_payload_bytes) for later in contents[index + 1 :]
        )
        where = f"{segment.path} offset {scan.good_end} (after seq {scan.last_seq})"
        if later_valid and not allow_mid_corruption:
            raise JournalCorruption(
                f"journal corrupt in the middle at {where}: {scan.bad_reason}, and valid records follow. "
                "Refusing to open: recovering would drop inputs that may have been acknowledged. "
                "Inspect the segment, or open with allow_mid_corruption=True to keep only what precedes "
                "the damage."
            )
        kept = segments[: index + 1]
        cut_bytes = len(data) - scan.good_end
        if later_valid:
            stamp = time.time_ns()
            quarantine = segment.path.with_name(f"{segment.path.name}.corrupt-{stamp}")
            quarantine.write_bytes(data[scan.good_end :])
            report.cut.append(CutRegion(segment.path, scan.good_end, cut_bytes, scan.bad_reason, quarantine))
            for later in segments[index + 1 :]:
                moved = later.path.with_name(f"{later.path.name}.corrupt-{stamp}")
                later.path.rename(moved)
                report.cut.append(
                    CutRegion(later.path, 0, moved.stat().st_size, "follows mid-journal corruption", moved)
                )
            log.error(
                "journal corrupt in the middle at %s: %s; allow_mid_corruption is set, so records from there "
                "on were moved aside to %s (and %d later segment(s)); recovery keeps seq %d..%d",
                where,
                scan.bad_reason,
                quarantine,
                len(segments) - index - 1,
                report.first_seq,
                report.last_seq,
            )
        else:
            report.cut.append(CutRegion(segment.path, scan.good_end, cut_bytes, scan.bad_reason))
            for later in segments[index + 1 :]:
                report.cut.append(
                    CutRegion(later.path, 0, later.path.stat().st_size, "no valid records after a bad tail")
                )
                later.path.unlink()
            log.warning(
                "journal tail cut at %s: %s; removed %d byte(s) and %d empty/invalid later segment(s). "
                "These records were never acknowledged (no valid record follows).",
                where,
                scan.bad_reason,
                cut_bytes,
                len(segments) - index - 1,
            )
        if scan.good_end == 0 and index > 0:
            # Nothing of this segment survives: drop the file so the previous segment,
            # whose name continues the sequence, becomes the active one again.
            segment.path.unlink(missing_ok=True)
            kept = segments[:index]
        elif cut_bytes:
            _truncate_durably(segment.path, scan.good_end)
        _fsync_directory(directory)
        segments = kept
        break
    report.segments = len(segments)
    report.active_segment_bytes = record_ends[len(segments) - 1]
    return segments, report
