"""Bounded lock-free queues of fixed-size records, from the C core.

* :class:`SpscRing` -- one producer thread, one consumer thread (``native/include/hft_spsc.h``).
* :class:`MpscQueue` -- any number of producer threads, one consumer thread
  (``native/include/hft_mpsc.h``); the execution service's journal uses it: the event
  loop pushes records, a writer thread takes everything available with :meth:`pop_many`
  and writes it in one go (group commit).

Every record is exactly ``record_size`` bytes; it is copied in on push and out on pop, so
the caller's buffer may be reused at once. Pushing anything of another length raises
``ValueError``. The capacity is rounded up to a power of two (at least 2 for MpscQueue).

Blocking calls take ``timeout_s``: ``None`` waits forever, ``0`` does not wait, otherwise
the longest wait in seconds. They release the GIL (cffi does so around every C call), and
a waiting thread spins for a few microseconds and then sleeps on a futex, so an idle
consumer costs no CPU. A wait without a timeout cannot be interrupted by Ctrl-C until it
returns: in the main thread, prefer a timeout.

Threads: the producer side (``try_push``, ``push``) and the consumer side (``try_pop``,
``pop``, ``pop_many``) must each be used by one thread at a time, except that MpscQueue
accepts pushes from any number of threads at once. ``len()``, ``close()`` and the
properties may be called from any thread.

Closing: :meth:`close` (or leaving the ``with`` block) wakes every thread blocked on the
queue, which then raises :class:`QueueClosed`, as does every later call; records still
queued are discarded. The C memory is released when the last thread still inside a call
has returned (the handle is an ``ffi.gc`` object, so dropping the last reference also
frees it without ``close()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from hftgate.native import ffi, lib
from hftgate.native.errors import check

__all__ = ["MpscQueue", "QueueClosed", "SpscRing"]

BytesLike = bytes | bytearray | memoryview

_INT64_MAX = 2**63 - 1


class QueueClosed(ValueError):
    """The queue was closed, before or during the call (like I/O on a closed file)."""


@dataclass(frozen=True)
class _NativeOps:
    """The C functions behind one queue type; both types share the call shapes."""

    name: str
    handle_type: str
    create: Any
    destroy: Any
    try_push: Any
    push_wait: Any
    try_pop: Any
    pop_wait: Any
    pop_many: Any
    pop_many_wait: Any
    close: Any
    size_approx: Any
    capacity: Any


_SPSC_OPS = _NativeOps(
    name="spsc_ring",
    handle_type="hft_spsc_ring",
    create=lib.hft_spsc_ring_create,
    destroy=lib.hft_spsc_ring_destroy,
    try_push=lib.hft_spsc_ring_try_push,
    push_wait=lib.hft_spsc_ring_push_wait,
    try_pop=lib.hft_spsc_ring_try_pop,
    pop_wait=lib.hft_spsc_ring_pop_wait,
    pop_many=lib.hft_spsc_ring_pop_many,
    pop_many_wait=lib.hft_spsc_ring_pop_many_wait,
    close=lib.hft_spsc_ring_close,
    size_approx=lib.hft_spsc_ring_size_approx,
    capacity=lib.hft_spsc_ring_capacity,
)

_MPSC_OPS = _NativeOps(
    name="mpsc_queue",
    handle_type="hft_mpsc_queue",
    create=lib.hft_mpsc_queue_create,
    destroy=lib.hft_mpsc_queue_destroy,
    try_push=lib.hft_mpsc_queue_try_push,
    push_wait=lib.hft_mpsc_queue_push_wait,
    try_pop=lib.hft_mpsc_queue_try_pop,
    pop_wait=lib.hft_mpsc_queue_pop_wait,
    pop_many=lib.hft_mpsc_queue_pop_many,
    pop_many_wait=lib.hft_mpsc_queue_pop_many_wait,
    close=lib.hft_mpsc_queue_close,
    size_approx=lib.hft_mpsc_queue_size_approx,
    capacity=lib.hft_mpsc_queue_capacity,
)


def _timeout_ns(timeout_s: float | None) -> int:
    """The C convention: -1 = forever, 0 = do not wait, else nanoseconds."""
    if timeout_s is None:
        return -1
    if timeout_s < 0:
        raise ValueError(f"timeout_s must be None or >= 0, not {timeout_s}")
    return min(int(timeout_s * 1e9), _INT64_MAX)


class _RecordQueue:
    """What SpscRing and MpscQueue share: everything but the C functions they call."""

    _ops: _NativeOps

    def __init__(self, capacity: int, record_size: int) -> None:
        if capacity < 1 or record_size < 1:
            raise ValueError(f"capacity and record_size must be >= 1, not {capacity} and {record_size}")
        out = ffi.new(f"{self._ops.handle_type} **")
        check(
            self._ops.create(capacity, record_size, out),
            f"{self._ops.name}_create(capacity={capacity}, record_size={record_size})",
        )
        self._capacity: int = self._ops.capacity(out[0])
        self._record_size = record_size
        # ffi.gc frees the C queue when the last reference to the handle goes: ours
        # (dropped by close) or that of a thread still inside a call.
        self._handle: Any = ffi.gc(out[0], self._ops.destroy, size=self._capacity * record_size)
        # Consumer-side scratch space, reused across pops (one consumer at a time).
        self._record_out = ffi.new("char[]", record_size)
        self._batch_out = ffi.new("char[]", record_size)
        self._popped = ffi.new("size_t *")

    # --- properties ---------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Records the queue holds (the requested capacity rounded up to a power of two)."""
        return self._capacity

    @property
    def record_size(self) -> int:
        """Bytes in every record."""
        return self._record_size

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __len__(self) -> int:
        """Records queued right now (approximate while other threads push or pop); 0 once closed."""
        handle = self._handle
        return 0 if handle is None else int(self._ops.size_approx(handle))

    def native_handle(self) -> Any:
        """The C queue, for a C component that consumes it (the journal's writer thread).

        Keep the returned object referenced for as long as that component may touch the
        queue: it owns the C memory, so the queue outlives a :meth:`close` until then.
        """
        return self._open_handle()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self)} queued"
        return f"{type(self).__name__}(capacity={self._capacity}, record_size={self._record_size}, {state})"

    # --- producer side ------------------------------------------------------------

    def try_push(self, data: BytesLike) -> bool:
        """Copy one record in; False if the queue is full."""
        handle = self._handle
        # The journal's record of a lone order (bytes of the right size, the queue open) goes
        # straight through: on that cold path each Python call skipped counts.
        if handle is None or type(data) is not bytes or len(data) != self._record_size:
            handle = self._open_handle()
            data = self._record_arg(data)
        rc = self._ops.try_push(handle, data)
        if rc == lib.HFT_EAGAIN:
            return False
        self._check(rc, "try_push")
        return True

    def push(self, data: BytesLike, timeout_s: float | None = None) -> None:
        """Copy one record in, waiting for room; raises TimedOut when the timeout expires."""
        handle = self._open_handle()
        record = self._record_arg(data)
        self._check(self._ops.push_wait(handle, record, _timeout_ns(timeout_s)), "push")

    # --- consumer side ------------------------------------------------------------

    def try_pop(self) -> bytes | None:
        """The oldest record, or None if the queue is empty."""
        handle = self._open_handle()
        rc = self._ops.try_pop(handle, self._record_out)
        if rc == lib.HFT_EAGAIN:
            return None
        self._check(rc, "try_pop")
        return ffi.buffer(self._record_out, self._record_size)[:]

    def pop(self, timeout_s: float | None = None) -> bytes:
        """The oldest record, waiting for one; raises TimedOut when the timeout expires."""
        handle = self._open_handle()
        self._check(self._ops.pop_wait(handle, self._record_out, _timeout_ns(timeout_s)), "pop")
        return ffi.buffer(self._record_out, self._record_size)[:]

    def pop_many(self, max_records: int, timeout_s: float | None = None) -> bytes:
        """Up to ``max_records`` of the oldest records, concatenated into one bytes object.

        Waits until at least one record is there, then takes everything available up to
        ``max_records`` in one C call. The result's length is a multiple of
        ``record_size``; it is empty only when the timeout expired first (no exception, so
        a writer loop can poll a stop flag between calls).
        """
        if max_records < 1:
            raise ValueError(f"max_records must be >= 1, not {max_records}")
        handle = self._open_handle()
        if len(self._batch_out) < max_records * self._record_size:
            self._batch_out = ffi.new("char[]", max_records * self._record_size)
        rc = self._ops.pop_many_wait(
            handle, self._batch_out, max_records, self._popped, _timeout_ns(timeout_s)
        )
        if rc == lib.HFT_ETIMEDOUT:
            return b""
        self._check(rc, "pop_many")
        return ffi.buffer(self._batch_out, self._popped[0] * self._record_size)[:]

    # --- closing --------------------------------------------------------------------

    def close(self) -> None:
        """Wake every blocked thread (they raise QueueClosed) and release the queue. Idempotent."""
        handle = self._handle
        if handle is None:
            return
        # Mark closed before waking anyone, so a woken thread knows why its wait ended.
        self._handle = None
        self._ops.close(handle)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- helpers ----------------------------------------------------------------------

    def _open_handle(self) -> Any:
        # Callers keep the handle in a local for the whole C call, so a close() from
        # another thread cannot free the memory under them.
        handle = self._handle
        if handle is None:
            raise QueueClosed(f"{type(self).__name__} is closed")
        return handle

    def _record_arg(self, data: BytesLike) -> Any:
        # bytes go to C as a pointer to their own buffer; anything else with the buffer
        # protocol goes through from_buffer. Neither copies.
        if type(data) is bytes:
            size = len(data)
            arg: Any = data
        else:
            arg = ffi.from_buffer(data)
            size = len(arg)
        if size != self._record_size:
            raise ValueError(f"a record must be exactly {self._record_size} bytes, not {size}")
        return arg

    def _check(self, rc: int, what: str) -> None:
        if rc >= 0:  # (before the message's f-string: this runs on every push and pop)
            return
        # The C side answers a wait on a closed queue with EINVAL.
        if rc == lib.HFT_EINVAL and self._handle is None:
            raise QueueClosed(f"{type(self).__name__} was closed during {what}")
        check(rc, f"{self._ops.name}_{what}(record_size={self._record_size})")


class SpscRing(_RecordQueue):
    """Bounded ring of fixed-size records for exactly one producer and one consumer thread."""

    _ops = _SPSC_OPS


class MpscQueue(_RecordQueue):
    """Bounded queue of fixed-size records for many producer threads and one consumer thread."""

    _ops = _MPSC_OPS

    def try_push_many(self, data: BytesLike) -> bool:
        """Copy ``len(data) // record_size`` records in as one unbroken run, or none of them.

        False when there is not room for all of them now. The consumer gets them back to
        back, no other producer's record in between, so a payload larger than one record
        can travel as several. ValueError when ``data`` is not whole records or holds more
        than the capacity.
        """
        handle = self._open_handle()
        buffer = data if type(data) is bytes else ffi.from_buffer(data)
        count, remainder = divmod(len(buffer), self._record_size)
        if remainder or count > self._capacity:
            raise ValueError(
                f"{len(buffer)} bytes is not a run of at most {self._capacity} records "
                f"of {self._record_size} bytes"
            )
        rc = lib.hft_mpsc_queue_try_push_many(handle, buffer, count)
        if rc == lib.HFT_EAGAIN:
            return False
        self._check(rc, "try_push_many")
        return True
