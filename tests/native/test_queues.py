"""hftgate.native.queues: SpscRing and MpscQueue driven from Python threads.

Behaviour only (order, counts, timeouts, errors, closing); throughput lives in
hftgate/bench/native_queues.py.
"""

from __future__ import annotations

import struct
import threading
import time

import pytest

from hftgate.bench import native_queues
from hftgate.native.errors import TimedOut
from hftgate.native.queues import MpscQueue, QueueClosed, SpscRing

RECORD = struct.Struct("<QQ")  # (producer id, sequence number): 16 bytes

QueueType = type[SpscRing] | type[MpscQueue]
BOTH = pytest.mark.parametrize("queue_type", [SpscRing, MpscQueue])


def record(producer: int, seq: int) -> bytes:
    return RECORD.pack(producer, seq)


def records_in(batch: bytes) -> list[tuple[int, int]]:
    assert len(batch) % RECORD.size == 0
    return [RECORD.unpack_from(batch, offset) for offset in range(0, len(batch), RECORD.size)]


def start(target: object, *args: object) -> threading.Thread:
    thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


# --- single thread ----------------------------------------------------------------------


@BOTH
def test_capacity_is_rounded_up_and_sizes_are_reported(queue_type: QueueType) -> None:
    with queue_type(5, RECORD.size) as queue:
        assert queue.capacity == 8
        assert queue.record_size == RECORD.size
        assert len(queue) == 0
        assert not queue.closed


@BOTH
def test_full_and_empty(queue_type: QueueType) -> None:
    with queue_type(4, RECORD.size) as queue:
        assert queue.try_pop() is None
        for seq in range(4):
            assert queue.try_push(record(0, seq))
        assert len(queue) == 4
        assert not queue.try_push(record(0, 4))
        assert [RECORD.unpack(queue.try_pop() or b"") for _ in range(4)] == [(0, s) for s in range(4)]
        assert queue.try_pop() is None


@BOTH
def test_pop_many_concatenates_records_in_order(queue_type: QueueType) -> None:
    with queue_type(16, RECORD.size) as queue:
        for seq in range(10):
            queue.push(record(1, seq))
        first = queue.pop_many(4)
        rest = queue.pop_many(100)
        assert records_in(first) == [(1, s) for s in range(4)]
        assert records_in(rest) == [(1, s) for s in range(4, 10)]
        assert queue.pop_many(100, timeout_s=0) == b""


@BOTH
def test_any_buffer_of_the_right_size_is_a_record(queue_type: QueueType) -> None:
    with queue_type(4, 8) as queue:
        queue.push(b"12345678")
        queue.push(bytearray(b"abcdefgh"))
        queue.push(memoryview(b"xx-ABCDEFGH")[3:])
        assert [queue.pop(), queue.pop(), queue.pop()] == [b"12345678", b"abcdefgh", b"ABCDEFGH"]


@BOTH
def test_records_of_the_wrong_size_are_rejected(queue_type: QueueType) -> None:
    with queue_type(4, RECORD.size) as queue:
        for bad in (b"", b"short", bytes(RECORD.size + 1), bytearray(RECORD.size - 1)):
            with pytest.raises(ValueError, match="exactly 16 bytes"):
                queue.try_push(bad)
            with pytest.raises(ValueError):
                queue.push(bad, timeout_s=0)
        assert len(queue) == 0


@BOTH
def test_bad_arguments(queue_type: QueueType) -> None:
    for capacity, record_size in ((0, 16), (4, 0), (-1, 16)):
        with pytest.raises(ValueError):
            queue_type(capacity, record_size)
    with queue_type(4, RECORD.size) as queue:
        with pytest.raises(ValueError):
            queue.pop(timeout_s=-1)
        with pytest.raises(ValueError):
            queue.pop_many(0)


# --- timeouts ------------------------------------------------------------------------------


@BOTH
def test_timeouts(queue_type: QueueType) -> None:
    with queue_type(2, RECORD.size) as queue:
        with pytest.raises(TimedOut):
            queue.pop(timeout_s=0)
        before = time.monotonic()
        with pytest.raises(TimeoutError):  # TimedOut is a TimeoutError
            queue.pop(timeout_s=0.02)
        assert time.monotonic() - before >= 0.015
        assert queue.pop_many(8, timeout_s=0.02) == b""
        queue.push(record(0, 0))
        queue.push(record(0, 1))
        with pytest.raises(TimedOut):
            queue.push(record(0, 2), timeout_s=0.02)
        assert len(queue) == 2


# --- threads --------------------------------------------------------------------------------


def test_spsc_producer_and_consumer_threads_keep_order() -> None:
    n = 50_000
    received: list[tuple[int, int]] = []
    with SpscRing(64, RECORD.size) as ring:

        def produce() -> None:
            for seq in range(n):
                if seq % 2 or not ring.try_push(record(7, seq)):
                    ring.push(record(7, seq), timeout_s=30)

        def consume() -> None:
            while len(received) < n:
                received.extend(records_in(ring.pop_many(32, timeout_s=30)))

        threads = [start(consume), start(produce)]
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
    assert received == [(7, seq) for seq in range(n)]


def test_mpsc_python_producers_keep_their_own_order() -> None:
    producers, per_producer = 4, 10_000
    expected_next = [0] * producers
    out_of_order = 0
    with MpscQueue(32, RECORD.size) as queue:

        def produce(producer: int) -> None:
            for seq in range(per_producer):
                queue.push(record(producer, seq), timeout_s=30)

        threads = [start(produce, p) for p in range(producers)]
        total = 0
        while total < producers * per_producer:
            batch = queue.pop_many(64, timeout_s=30)
            assert batch, "no record within 30 s"
            for producer, seq in records_in(batch):
                out_of_order += seq != expected_next[producer]
                expected_next[producer] = seq + 1
                total += 1
        for thread in threads:
            thread.join(timeout=60)
        assert queue.try_pop() is None
    assert out_of_order == 0
    assert expected_next == [per_producer] * producers


@BOTH
def test_a_parked_consumer_is_woken_by_a_push(queue_type: QueueType) -> None:
    got: list[bytes] = []
    with queue_type(4, RECORD.size) as queue:
        consumer = start(lambda: got.append(queue.pop(timeout_s=30)))
        time.sleep(0.05)  # long enough for the consumer to stop spinning and sleep
        queue.push(record(3, 42))
        consumer.join(timeout=30)
    assert got == [record(3, 42)]


# --- closing ---------------------------------------------------------------------------------


@BOTH
def test_close_wakes_a_blocked_consumer_and_producer(queue_type: QueueType) -> None:
    errors: list[BaseException] = []

    def expect_closed(call: object) -> None:
        try:
            call()  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    # One queue per blocked thread: each has a single consumer or producer.
    empty_for_pop = queue_type(2, RECORD.size)
    empty_for_pop_many = queue_type(2, RECORD.size)
    full = queue_type(2, RECORD.size)
    full.push(record(0, 0))
    full.push(record(0, 1))
    threads = [
        start(expect_closed, lambda: empty_for_pop.pop()),
        start(expect_closed, lambda: empty_for_pop_many.pop_many(8)),
        start(expect_closed, lambda: full.push(record(0, 2))),
    ]
    time.sleep(0.05)  # let them block (a call that starts after close raises QueueClosed too)
    for queue in (empty_for_pop, empty_for_pop_many, full):
        queue.close()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads)
    assert len(errors) == 3
    assert all(isinstance(error, QueueClosed) for error in errors), errors


@BOTH
def test_calls_after_close_raise_and_close_is_idempotent(queue_type: QueueType) -> None:
    queue = queue_type(4, RECORD.size)
    queue.push(record(0, 0))
    queue.close()
    queue.close()
    assert queue.closed
    assert len(queue) == 0
    assert "closed" in repr(queue)
    for call in (
        lambda: queue.try_push(record(0, 1)),
        lambda: queue.push(record(0, 1)),
        queue.try_pop,
        queue.pop,
        lambda: queue.pop_many(4),
    ):
        with pytest.raises(QueueClosed):
            call()


def test_context_manager_closes() -> None:
    with SpscRing(4, RECORD.size) as ring:
        ring.push(record(0, 0))
    assert ring.closed


# --- the C benchmarks behind hftgate/bench/native_queues.py ---------------------------------


def test_benchmark_entry_points_run_and_check_their_records() -> None:
    assert native_queues.spsc_ops_per_s(10_000, 16) > 0
    assert native_queues.spsc_ops_per_s(10_000, 64) > 0
    assert native_queues.mpsc_ops_per_s(5_000, 2, 16) > 0
    with pytest.raises(ValueError):  # InvalidArgument: records must hold 16 bytes of checks
        native_queues.spsc_ops_per_s(10, 8)


def test_mpsc_push_many_is_one_run_or_nothing() -> None:
    with MpscQueue(4, 8) as queue:
        assert queue.try_push_many(b"".join(i.to_bytes(8, "little") for i in range(3)))
        assert not queue.try_push_many(bytes(16))  # room for one record, not two: nothing pushed
        assert len(queue) == 3
        assert queue.try_pop() == (0).to_bytes(8, "little")
        assert queue.try_push_many(memoryview(bytearray(b"\x07" * 16)))
        assert queue.pop_many(10, 0) == b"".join(i.to_bytes(8, "little") for i in (1, 2)) + b"\x07" * 16
        with pytest.raises(ValueError, match="not a run"):
            queue.try_push_many(bytes(12))  # not whole records
        with pytest.raises(ValueError, match="not a run"):
            queue.try_push_many(bytes(40))  # more than the capacity
