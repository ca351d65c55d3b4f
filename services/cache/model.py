"""What every level of the cache shares: stored entries, versions, limits and errors.

No gRPC here: the servicer translates these to and from the proto messages.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from services.cache import globs


def wall_ms() -> int:
    """Milliseconds since the Unix epoch: the timeline of every ``expires_at_ms``."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """A key's state on a shared level (Redis or SQL).

    ``value`` None means the key is known to be absent: a tombstone left by a delete
    (``version`` > 0, the delete's version) or a cached miss (``version`` 0).
    """

    value: bytes | None
    version: int
    # Wall-clock deadline in ms since the epoch; 0 = never expires.
    expires_at_ms: int = 0

    def ttl_ms(self, now_ms: int) -> int:
        """Time left in ms (at least 1 while not expired); 0 when the entry never expires."""
        if not self.expires_at_ms:
            return 0
        return max(1, self.expires_at_ms - now_ms)

    def expired(self, now_ms: int) -> bool:
        return bool(self.expires_at_ms) and self.expires_at_ms <= now_ms


class VersionClock:
    """Hands out versions: a hybrid logical clock in microseconds.

    A version is the wall clock in µs, or one more than the last version handed out or
    seen, whichever is larger; so versions from one replica strictly increase, and a
    write follows every write this replica has seen. Microseconds keep versions below
    2^53, exact in Redis's Lua numbers.
    """

    def __init__(self, wall_us: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self._wall_us = wall_us
        self._last = 0

    def next(self) -> int:
        version = max(self._wall_us(), self._last + 1)
        self._last = version
        return version

    def observe(self, version: int) -> None:
        """Note a version written elsewhere so that our next one orders after it."""
        if version > self._last:
            self._last = version


class InvalidArgument(ValueError):
    """A request the cache refuses as it stands; ``field`` names what is wrong."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


class StoreUnavailable(RuntimeError):
    """The SQL store (the source of truth) could not be reached or failed."""


@dataclass(frozen=True)
class Limits:
    """Size limits checked at the edge, before anything touches a level."""

    max_key_bytes: int = 512
    max_value_bytes: int = 1 << 20
    max_batch_keys: int = 10_000
    max_ttl_ms: int = 365 * 24 * 3600 * 1000

    def check_key(self, key: str, field: str = "key") -> None:
        if not key:
            raise InvalidArgument(field, "must not be empty")
        size = len(key.encode("utf-8", "surrogatepass"))
        if size > self.max_key_bytes:
            raise InvalidArgument(field, f"is {size} bytes, more than the limit of {self.max_key_bytes}")

    def check_value(self, value: bytes, field: str = "value") -> None:
        if len(value) > self.max_value_bytes:
            raise InvalidArgument(
                field, f"is {len(value)} bytes, more than the limit of {self.max_value_bytes}"
            )

    def check_ttl(self, ttl_ms: int, field: str = "ttl_ms") -> None:
        if ttl_ms < 0:
            raise InvalidArgument(field, f"must not be negative (got {ttl_ms}); 0 means no expiry")
        if ttl_ms > self.max_ttl_ms:
            raise InvalidArgument(field, f"is {ttl_ms}, more than the limit of {self.max_ttl_ms}")

    def check_batch(self, count: int, field: str) -> None:
        if count > self.max_batch_keys:
            raise InvalidArgument(field, f"has {count} items, more than the limit of {self.max_batch_keys}")

    def check_pattern(self, pattern: str, field: str = "pattern") -> None:
        self.check_key(pattern, field)
        try:
            globs.compile_glob(pattern)
        except globs.GlobError as exc:
            raise InvalidArgument(field, str(exc)) from None
