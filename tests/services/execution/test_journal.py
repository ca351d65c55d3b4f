"""The durable journal: group commit ordering, recovery, torn and corrupt tails, rotation, kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.execution import journal as journal_module
from services.execution.journal import (
    RECORD_HEADER_BYTES,
    Durability,
    Journal,
    JournalCorruption,
    JournalFailed,
    JournalUnwritable,
)

APPENDER = Path(__file__).with_name("journal_appender.py")


def payload(seq: int, size: int = 24) -> bytes:
    return f"input-{seq}:".encode() + bytes(seq % 256 for _ in range(size))


def segments_of(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.journal"))


async def write_records(directory: Path, count: int, **options: object) -> list[int]:
    journal = Journal.open(directory, **options)  # type: ignore[arg-type]
    journal.start()
    try:
        first = journal.next_seq
        return list(await asyncio.gather(*(journal.append(payload(first + i)) for i in range(count))))
    finally:
        await journal.close()


def replayed(directory: Path, **options: object) -> list[tuple[int, bytes]]:
    journal = Journal.open(directory, **options)  # type: ignore[arg-type]
    return [(record.seq, record.payload) for record in journal.replay()]


def flip_bit(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def record_offsets(path: Path) -> list[int]:
    """Start offset of every record in a clean segment (up to the zeros of its reserved space)."""
    data = path.read_bytes()
    offsets, offset = [], 0
    while offset < len(data) and data[offset : offset + 2] == b"HJ":
        offsets.append(offset)
        length = int.from_bytes(data[offset + 4 : offset + 8], "little")
        offset += RECORD_HEADER_BYTES + length
    return offsets


async def test_every_append_is_recovered_in_order_after_reopen(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, slot_bytes=64)
    journal.start()
    sizes = [
        0,
        1,
        47,
        48,
        49,
        500,
        70_000,
        3,
    ]  # around the 48-byte inline limit of a 64-byte slot, and far past it
    futures = [journal.append(payload(i + 1, size), record_type=i % 4) for i, size in enumerate(sizes * 10)]
    assert await asyncio.gather(*futures) == list(range(1, 81))
    await journal.close()

    reopened = Journal.open(tmp_path)
    records = list(reopened.replay())
    assert [r.seq for r in records] == list(range(1, 81))
    assert [r.payload for r in records] == [payload(i + 1, size) for i, size in enumerate(sizes * 10)]
    assert [r.record_type for r in records] == [i % 4 for i in range(80)]
    assert reopened.recovery.records == 80
    assert reopened.recovery.cut == []
    assert [r.seq for r in reopened.replay(after_seq=75)] == [76, 77, 78, 79, 80]


async def test_acks_come_only_after_their_fsync_and_batches_share_one(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    journal.start()
    violations: list[str] = []

    def check_durable(future: asyncio.Future[int]) -> None:
        # The C writer publishes synced_seq before acked_seq: a resolved future must be covered.
        seq = future.result()
        status = journal._writer_status()
        if status.synced_seq < seq:
            violations.append(f"seq {seq} acknowledged while fdatasync covered only {status.synced_seq}")
        on_disk = journal_module._scan_segment(
            (tmp_path / "00000000000000000001.journal").read_bytes(), 1, 1 << 30
        ).last_seq
        if on_disk < seq:
            violations.append(f"seq {seq} acknowledged before it was in the segment (last {on_disk})")

    appended = 0
    futures = []
    for wave in range(40):  # waves of appends in one loop step, so the writer finds several waiting
        for _ in range(5 + wave):
            future = journal.append(payload(appended))
            future.add_done_callback(check_durable)
            futures.append(future)
            appended += 1
        await asyncio.sleep(0.0005)
    await asyncio.gather(*futures)
    await journal.close()

    assert violations == []
    assert journal.records_written == appended
    assert 1 <= journal.fsyncs < appended
    assert journal.fsyncs == journal.batches_written
    # Each fsync's duration is counted once, and kept past the close.
    synced = journal.sync_latency()
    assert synced.count == journal.fsyncs
    assert 0 < synced.percentile(50) <= synced.percentile(99) < 10 * 1_000_000_000
    logging.getLogger(__name__).info(
        "group commit: %d appends, %d fsyncs, %.1f records per fsync",
        appended,
        journal.fsyncs,
        appended / journal.fsyncs,
    )


async def test_polling_for_durability_resolves_what_the_writer_made_durable_and_no_more(
    tmp_path: Path,
) -> None:
    journal = Journal.open(tmp_path)
    journal.start()
    try:
        first, second = journal.append(payload(1)), journal.append(payload(2))
        assert journal.poll_durable(2, 5_000_000_000)  # returns as soon as the fsync covers seq 2
        assert first.done() and second.done() and (first.result(), second.result()) == (1, 2)
        assert journal.durable_seq == 2 and journal._writer_status().synced_seq >= 2
        # Nothing appended as 3: the budget runs out and nothing is resolved.
        started = time.perf_counter_ns()
        assert not journal.poll_durable(3, 2_000_000)
        assert time.perf_counter_ns() - started >= 2_000_000
        third = journal.append(payload(3))
        assert await third == 3  # the eventfd path still resolves what polling did not
    finally:
        await journal.close()


async def test_an_ack_seen_by_polling_is_not_signalled_and_none_is_lost_around_the_poll(
    tmp_path: Path,
) -> None:
    """While the loop polls, the writer does not write the eventfd for its acks (the loop would
    only wake once more for nothing); an ack that lands as the poll gives up is resolved by the
    poll's last read or signalled: never lost, whatever the budget."""
    journal = Journal.open(tmp_path)
    journal.start()
    try:
        first = journal.append(payload(1))
        assert journal.poll_durable(1, 5_000_000_000)
        assert first.done()
        with pytest.raises(BlockingIOError):
            os.eventfd_read(journal._notify_fd)  # nothing signalled for the polled ack
        rng = random.Random(5)
        for seq in range(2, 302):
            future = journal.append(payload(seq))
            journal.poll_durable(seq, rng.choice((0, 1_000, 20_000, 60_000, 150_000)))
            assert await asyncio.wait_for(future, 10) == seq
    finally:
        await journal.close()


async def test_write_mode_acknowledges_and_still_persists(tmp_path: Path) -> None:
    assert await write_records(tmp_path, 30, durability=Durability.WRITE) == list(range(1, 31))
    assert [seq for seq, _ in replayed(tmp_path)] == list(range(1, 31))


async def test_torn_tail_is_cut_and_the_sequence_continues(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await write_records(tmp_path, 50, preallocate_bytes=0)  # a filesystem without fallocate: plain appends
    (segment,) = segments_of(tmp_path)
    size = segment.stat().st_size
    os.truncate(segment, size - 7)  # the last record lost its final 7 bytes mid-write

    with caplog.at_level(logging.WARNING):
        journal = Journal.open(tmp_path)
    assert journal.recovery.records == 49
    (cut,) = journal.recovery.cut
    assert cut.length == RECORD_HEADER_BYTES + len(payload(50)) - 7
    assert "torn payload" in cut.reason
    assert "journal tail cut" in caplog.text
    assert journal.next_seq == 50
    journal.start()
    assert await journal.append(b"after the crash") == 50
    await journal.close()
    records = replayed(tmp_path)
    assert [seq for seq, _ in records] == list(range(1, 51))
    assert records[-1][1] == b"after the crash"


async def test_a_write_torn_inside_reserved_space_is_cut_and_the_space_reused(tmp_path: Path) -> None:
    await write_records(tmp_path, 30)
    (segment,) = segments_of(tmp_path)
    reserved = segment.stat().st_size
    last = record_offsets(segment)[-1]
    assert reserved >= 4 * 1024 * 1024 > last  # the records sit at the start of reserved space
    data = bytearray(segment.read_bytes())
    data[last + RECORD_HEADER_BYTES + 5 :] = bytes(len(data) - last - RECORD_HEADER_BYTES - 5)
    segment.write_bytes(bytes(data))  # the last record's payload never reached the disk
    journal = Journal.open(tmp_path)
    assert journal.recovery.records == 29
    assert "CRC mismatch" in journal.recovery.cut[0].reason
    assert journal.recovery.active_segment_bytes == last
    journal.start()
    assert await journal.append(b"after the crash") == 30
    await journal.close()
    records = replayed(tmp_path)
    assert [seq for seq, _ in records] == list(range(1, 31))
    assert records[-1][1] == b"after the crash"
    assert record_offsets(segment)[-1] == last  # written where the torn record was


async def test_reserved_space_is_not_damage_and_appends_continue_in_it(tmp_path: Path) -> None:
    await write_records(tmp_path, 10)
    journal = Journal.open(tmp_path)
    assert journal.recovery.cut == []
    (segment,) = segments_of(tmp_path)
    assert segment.stat().st_size == 4 * 1024 * 1024
    journal.start()
    assert await journal.append(b"eleventh") == 11
    await journal.close()
    assert [seq for seq, _ in replayed(tmp_path)] == list(range(1, 12))
    assert segment.stat().st_size == 4 * 1024 * 1024  # no growth: the record went into reserved space


async def test_torn_header_is_cut(tmp_path: Path) -> None:
    await write_records(tmp_path, 10, preallocate_bytes=0)
    (segment,) = segments_of(tmp_path)
    with segment.open("ab") as f:
        f.write(b"HJ\x01")  # a header that never finished
    journal = Journal.open(tmp_path)
    assert journal.recovery.records == 10
    assert "torn header" in journal.recovery.cut[0].reason
    assert segment.stat().st_size == record_offsets(segment)[-1] + RECORD_HEADER_BYTES + len(payload(10))


async def test_flipped_bit_in_the_last_record_is_cut(tmp_path: Path) -> None:
    await write_records(tmp_path, 20)
    (segment,) = segments_of(tmp_path)
    last = record_offsets(segment)[-1]
    flip_bit(segment, last + RECORD_HEADER_BYTES + 3)
    journal = Journal.open(tmp_path)
    assert journal.recovery.records == 19
    assert "CRC mismatch" in journal.recovery.cut[0].reason
    assert journal.next_seq == 20
    assert segment.stat().st_size == last


async def test_flipped_bit_in_the_middle_refuses_to_open(tmp_path: Path) -> None:
    await write_records(tmp_path, 20)
    (segment,) = segments_of(tmp_path)
    before = segment.read_bytes()
    flip_bit(segment, record_offsets(segment)[7] + RECORD_HEADER_BYTES + 1)
    damaged = segment.read_bytes()
    with pytest.raises(JournalCorruption, match=r"middle.*after seq 7.*CRC mismatch"):
        Journal.open(tmp_path)
    assert segment.read_bytes() == damaged != before  # nothing repaired behind the operator's back


async def test_flipped_length_in_the_middle_refuses_to_open(tmp_path: Path) -> None:
    await write_records(tmp_path, 20)
    (segment,) = segments_of(tmp_path)
    flip_bit(segment, record_offsets(segment)[5] + 5)  # the payload length field
    with pytest.raises(JournalCorruption):
        Journal.open(tmp_path)


async def test_mid_corruption_when_allowed_keeps_the_prefix_and_moves_the_rest_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await write_records(tmp_path, 20)
    (segment,) = segments_of(tmp_path)
    damage_at = record_offsets(segment)[12]
    flip_bit(segment, damage_at + RECORD_HEADER_BYTES)
    damaged = segment.read_bytes()
    with caplog.at_level(logging.ERROR):
        journal = Journal.open(tmp_path, allow_mid_corruption=True)
    assert journal.recovery.records == 12
    assert journal.next_seq == 13
    (cut,) = journal.recovery.cut
    assert cut.quarantined_to is not None
    assert cut.quarantined_to.read_bytes() == damaged[damage_at:]
    assert segment.stat().st_size == damage_at
    assert "corrupt in the middle" in caplog.text


async def test_segments_rotate_and_truncate_before_drops_only_whole_old_segments(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, segment_max_bytes=1_000)
    journal.start()
    for _ in range(30):  # 30 batches of 5 records, about 280 bytes per batch
        await asyncio.gather(*(journal.append(payload(journal.next_seq)) for _ in range(5)))
    segments = segments_of(tmp_path)
    assert len(segments) > 5
    dropped = await journal.truncate_before(71)
    remaining = segments_of(tmp_path)
    assert dropped == len(segments) - len(remaining) > 0
    first_kept = int(remaining[0].name.split(".")[0])
    assert first_kept <= 71
    assert await journal.append(b"one more") == 151
    await journal.close()

    records = replayed(tmp_path)
    assert [seq for seq, _ in records] == list(range(first_kept, 152))
    assert [r.seq for r in Journal.open(tmp_path).replay(after_seq=140)] == list(range(141, 152))


async def test_segments_a_snapshot_covers_are_not_read_on_open_and_a_rotation_request_cuts_one(
    tmp_path: Path,
) -> None:
    journal = Journal.open(tmp_path, segment_max_bytes=1_000)
    journal.start()
    for _ in range(20):  # 20 batches of 5 records, several segments
        await asyncio.gather(*(journal.append(payload(journal.next_seq)) for _ in range(5)))
    journal.request_rotation()  # e.g. right after a snapshot at seq 100
    assert await journal.append(b"after the snapshot") == 101
    await journal.close()
    segments = segments_of(tmp_path)
    assert segments[-1].name == "00000000000000000101.journal"  # the request started a segment there
    flip_bit(segments[1], 30)  # damage inside a segment the snapshot covers

    with pytest.raises(JournalCorruption):
        Journal.open(tmp_path)  # a whole-journal open reads it and refuses
    opened = Journal.open(tmp_path, covered_seq=100)  # covered: never read, never replayed
    assert opened.recovery.first_seq == 1 and opened.next_seq == 102
    assert [(r.seq, r.payload) for r in opened.replay(after_seq=100)] == [(101, b"after the snapshot")]
    assert opened.replayed_records == 1 and opened.replayed_bytes == RECORD_HEADER_BYTES + 18
    # Only segments wholly before covered_seq + 1 are skipped: damage after it is still found.
    with pytest.raises(JournalCorruption):
        Journal.open(tmp_path, covered_seq=5)


async def test_a_missing_middle_segment_refuses_to_open(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, segment_max_bytes=500)
    journal.start()
    for _ in range(12):
        await asyncio.gather(*(journal.append(payload(journal.next_seq)) for _ in range(4)))
    await journal.close()
    segments = segments_of(tmp_path)
    assert len(segments) >= 3
    segments[1].unlink()
    with pytest.raises(JournalCorruption, match="was expected"):
        Journal.open(tmp_path)


async def test_a_full_queue_spills_into_the_backlog_without_blocking(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path, queue_capacity=4)
    journal.start()
    futures = [
        journal.append(payload(i + 1)) for i in range(400)
    ]  # no await in between: the loop never yields
    assert await asyncio.gather(*futures) == list(range(1, 401))
    await journal.close()
    assert [seq for seq, _ in replayed(tmp_path)] == list(range(1, 401))


async def test_records_spanning_many_slots_queue_whole_behind_a_full_queue(tmp_path: Path) -> None:
    # 64 slots of 64 bytes: a 3,000-byte record takes 48 of them, so most must wait in the backlog.
    journal = Journal.open(tmp_path, queue_capacity=64, slot_bytes=64)
    journal.start()
    sizes = [3_000, 10, 48, 49, 2_000, 0, 3_000, 3_000, 120] * 8
    futures = [journal.append(payload(i + 1, size), record_type=i % 3) for i, size in enumerate(sizes)]
    assert await asyncio.gather(*futures) == list(range(1, len(sizes) + 1))
    await journal.close()
    records = list(Journal.open(tmp_path).replay())
    assert [r.payload for r in records] == [payload(i + 1, size) for i, size in enumerate(sizes)]
    assert [r.record_type for r in records] == [i % 3 for i in range(len(sizes))]


def test_a_record_limit_the_queue_cannot_carry_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not fit a queue of 64 slots"):
        Journal.open(tmp_path, queue_capacity=64, slot_bytes=64, max_payload_bytes=64 * 64)
    journal = Journal.open(tmp_path, queue_capacity=64, slot_bytes=64)
    assert journal.slots_for(63 * 64 + 48) == 64  # the default limit is what the queue carries


def _swap_writer_fd(segment: Path, replacement: str, flags: int) -> None:
    """Put ``replacement`` under the writer's segment fd (found through /proc/self/fd)."""
    (writer_fd,) = [
        int(fd.name) for fd in Path("/proc/self/fd").iterdir() if fd.is_symlink() and fd.resolve() == segment
    ]
    other = os.open(replacement, flags)
    os.dup2(other, writer_fd)
    os.close(other)


async def test_an_io_error_other_than_no_space_fails_pending_and_later_appends(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    changes: list[bool] = []
    journal.on_writable_change(changes.append)
    journal.start()
    assert await journal.append(b"durable") == 1
    # A read-only fd under the writer: its next write fails with EBADF, which no wait cures.
    _swap_writer_fd(tmp_path / "00000000000000000001.journal", "/dev/null", os.O_RDONLY)
    future = journal.append(b"never durable")
    with pytest.raises(JournalFailed, match=r"write of .* failed"):
        await future
    with pytest.raises(JournalFailed):
        journal.append(b"refused")
    with pytest.raises(JournalFailed):
        journal.check_writable()
    assert changes == [False] and not journal.writable  # health turns NOT_SERVING, for good
    await journal.close()
    assert [seq for seq, _ in replayed(tmp_path)] == [1]


async def test_a_disk_that_stays_full_refuses_inputs_and_a_stop_gives_up_what_was_never_acked(
    tmp_path: Path,
) -> None:
    journal = Journal.open(tmp_path, space_retry_max_ms=5, close_blocked_timeout_s=0.2)
    changes: list[bool] = []
    journal.on_writable_change(changes.append)
    journal.start()
    assert await journal.append(b"durable") == 1
    # /dev/full under the writer: every write fails with ENOSPC, as on a full disk that never frees.
    _swap_writer_fd(tmp_path / "00000000000000000001.journal", "/dev/full", os.O_WRONLY)
    future = journal.append(b"waits for space")
    for _ in range(500):
        if not journal.writable:
            break
        await asyncio.sleep(0.01)
    assert changes == [False]
    assert not future.done()  # the writer still holds it and retries: not acked, not failed
    with pytest.raises(JournalUnwritable, match=r"disk is full \(No space left on device, ENOSPC\)"):
        journal.check_writable()
    status = journal.writer_status()
    assert status.blocked and status.stalls == 1 and status.blocked_bytes > 0 and not status.failed
    await asyncio.sleep(0.05)
    assert journal.writer_status().space_retries >= 2
    started = time.monotonic()
    await journal.close()  # gives up after close_blocked_timeout_s: the record was never acknowledged
    assert time.monotonic() - started < 5
    with pytest.raises(JournalFailed, match=r"waiting for .* bytes of disk space"):
        await future
    assert [seq for seq, _ in replayed(tmp_path)] == [1]


def test_kill_9_at_random_moments_loses_no_acknowledged_record(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    acked: set[int] = set()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for kill in range(4):
        child = subprocess.Popen(
            [sys.executable, str(APPENDER), str(tmp_path), str(rng.randrange(1 << 30))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert child.stdout is not None
        ready = child.stdout.readline()
        assert ready.startswith("ready"), (
            f"seed {seed} kill {kill}: child failed to start: {child.stderr.read()}"
        )  # type: ignore[union-attr]
        if kill:
            assert int(ready.split()[1]) > max(acked, default=0), f"seed {seed}: sequence went backwards"
        time.sleep(rng.uniform(0.05, 0.5))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
        assert child.returncode == -signal.SIGKILL
        acked.update(int(line) for line in out.split())

    recovered = Journal.open(tmp_path)
    records = {record.seq: record.payload for record in recovered.replay()}
    logging.getLogger(__name__).info(
        "kill -9 x4 (seed %d): %d acknowledged, %d recovered, last cut: %s",
        seed,
        len(acked),
        len(records),
        recovered.recovery.cut,
    )
    assert acked, f"seed {seed}: the child acknowledged nothing"
    lost = sorted(acked - records.keys())
    assert lost == [], f"seed {seed}: acknowledged records missing after kill -9: {lost[:10]}"
    assert sorted(records) == list(range(1, max(records) + 1)), f"seed {seed}: sequence has holes"
    for seq, data in records.items():
        assert data.startswith(f"seq={seq};".encode()), f"seed {seed}: record {seq} holds another payload"


async def test_a_signal_or_a_stats_read_while_close_joins_the_writer_touches_nothing_freed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The join frees the writer on a worker thread while the loop may still handle the writer's
    last signal or serve a stats read: both must see a closed journal, not the freed writer (they
    raised TypeError from cffi, logged as 'Exception in callback Journal._on_writer_signal')."""
    from hftgate.native.journal_writer import JournalWriterThread

    journal = Journal.open(tmp_path)
    journal.start()
    await journal.append(payload(1))
    seen: list[object] = []
    join = JournalWriterThread.join

    def join_then_race(writer: JournalWriterThread) -> object:
        final = join(writer)
        seen.append(journal.writer_status().acked_seq)  # a stats read meanwhile
        journal._on_writer_signal()  # the writer's last signal handled meanwhile
        return final

    monkeypatch.setattr(JournalWriterThread, "join", join_then_race)
    await journal.close()
    assert seen == [1]
    assert journal.writer_status().acked_seq == 1 and journal.durable_seq == 1


# --- the writer's CPU keeper (native/include/hft_cpu_keeper.h) ---------------------------------


def _thread_ids_named(name: str) -> list[int]:
    tids = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            if (task / "comm").read_text().strip() == name:
                tids.append(int(task.name))
    return tids


async def test_a_kept_writer_cpu_hands_records_over_and_acknowledges_each_after_its_fsync(
    tmp_path: Path,
) -> None:
    cpu = max(os.sched_getaffinity(0))
    journal = Journal.open(tmp_path)
    journal.start()
    try:
        with pytest.raises(RuntimeError):
            journal.keep_writer_cpu(2000)  # the writer is not placed yet: where would it spin?
        journal.place_writer([cpu])
        assert journal.keep_writer_cpu(50_000)
        keepers = _thread_ids_named("hft-keeper")
        assert len(keepers) == 1
        assert os.sched_getscheduler(keepers[0]) == os.SCHED_IDLE  # never in anyone's way
        assert os.sched_getaffinity(keepers[0]) == {cpu}
        # One record at a time, each announced, as SubmitOrder sends them: while the keeper spins,
        # it is the keeper that wakes the writer for the next record.
        for seq in range(1, 201):
            journal.keep_writer_cpu_awake()
            assert await journal.append(payload(seq)) == seq
            assert journal._writer_status().synced_seq >= seq
        journal.keep_writer_cpu_awake()  # (a window open now: the park awaited below comes after it)
        stats = journal.keeper_stats()
        # The keeper woke the writer, for a record or at the touch ahead of it (prewakes); or, where
        # other load held the SCHED_IDLE keeper off its CPU (the suite's other worker), the
        # producer's kick did: never nobody.
        assert stats.wakes + stats.prewakes + stats.kicks > 0
        # Past the window the keeper parks and hands the writer back to the queue's own wake-up;
        # records nobody announced (a throughput load) leave it parked. (A keeper held off parks
        # late: waited for, not assumed after a fixed sleep.)
        deadline = time.monotonic() + 10
        while journal.keeper_stats().parks == stats.parks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert journal.keeper_stats().parks > stats.parks
        wakes = journal.keeper_stats().wakes
        assert list(await asyncio.gather(*(journal.append(payload(seq)) for seq in range(201, 301)))) == list(
            range(201, 301)
        )
        for seq in range(301, 321):
            assert await journal.append(payload(seq)) == seq
        assert journal.keeper_stats().wakes == wakes
        # A second keeper is refused, and says so.
        assert not journal.keep_writer_cpu(2000)
        with pytest.raises(ValueError):
            journal._writer.keep_cpu(0, [cpu])  # type: ignore[union-attr]
    finally:
        await journal.close()
    journal.keep_writer_cpu_awake()  # after close: a no-op, never a freed writer
    assert _thread_ids_named("hft-keeper") == []  # stopped with the writer
    assert [seq for seq, _ in replayed(tmp_path)] == list(range(1, 321))


async def test_a_journal_closes_promptly_while_its_keeper_spins(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    journal.start()
    journal.place_writer([max(os.sched_getaffinity(0))])
    assert journal.keep_writer_cpu(100_000)  # the longest window
    journal.keep_writer_cpu_awake()
    futures = [journal.append(payload(seq)) for seq in range(1, 51)]
    started = time.monotonic()
    await journal.close()
    assert time.monotonic() - started < 5.0
    assert [future.result() for future in futures] == list(range(1, 51))


async def test_the_apart_writer_speed_ups_run_only_for_a_writer_with_a_cpu_of_its_own(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path)
    journal.start()
    try:
        assert journal.speed_up_apart_writer(False, 400, 2000) == (0, False)  # shares the loop's CPU
        assert _thread_ids_named("hft-keeper") == []
        journal.place_writer([max(os.sched_getaffinity(0))])
        assert journal.speed_up_apart_writer(True, 400, 0) == (400_000, False)  # keeper turned off
        assert _thread_ids_named("hft-keeper") == []
        assert journal.speed_up_apart_writer(True, 0, 2000) == (0, True)  # polling turned off
        assert len(_thread_ids_named("hft-keeper")) == 1
    finally:
        await journal.close()
