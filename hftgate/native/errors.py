"""One small exception hierarchy for every error code the C core returns."""

from __future__ import annotations

import errno


class NativeError(Exception):
    """A C function of the native core returned a failure code."""

    code: int = 0

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class WouldBlock(NativeError):
    """A non-blocking queue operation found the queue full (push) or empty (pop)."""

    code = -errno.EAGAIN


class PoolExhausted(NativeError, MemoryError):
    """A fixed-size pool or an allocation ran out of memory."""

    code = -errno.ENOMEM


class NotFound(NativeError, KeyError):
    """The item (order id, key, ...) does not exist."""

    code = -errno.ENOENT


class AlreadyExists(NativeError):
    """The item (order id, ...) is already present."""

    code = -errno.EEXIST


class InvalidArgument(NativeError, ValueError):
    """The C side rejected an argument."""

    code = -errno.EINVAL


class OutOfRange(NativeError, OverflowError):
    """A value does not fit the representable range."""

    code = -errno.ERANGE


class TimedOut(NativeError, TimeoutError):
    """A timed wait expired."""

    code = -errno.ETIMEDOUT


_BY_CODE: dict[int, type[NativeError]] = {
    cls.code: cls
    for cls in (WouldBlock, PoolExhausted, NotFound, AlreadyExists, InvalidArgument, OutOfRange, TimedOut)
}


def check(rc: int, what: str) -> int:
    """Return ``rc`` if it is not negative, else raise the exception for its code.

    ``what`` names the operation for the message, e.g. ``"spsc_ring_create(capacity=3)"``.
    """
    if rc >= 0:
        return rc
    cls = _BY_CODE.get(rc, NativeError)
    reason = errno.errorcode.get(-rc, "unknown")
    return _raise(cls, f"{what} failed: {reason} ({rc})", rc)


def _raise(cls: type[NativeError], message: str, rc: int) -> int:
    raise cls(message, rc)
