"""L2: Redis, shared by every replica, through ``redis.asyncio``.

Layout: one Redis string per key, ``<prefix><key>``, holding a 17-byte header (kind,
version, wall-clock expiry) and the value; Redis's own PX expiry carries the TTL, so an
entry leaves every level at the same instant. A key known to be absent is stored too: a
tombstone after a delete (with the delete's version) or a cached miss (version 0).

Two Lua scripts keep stale values out:

- *write if newer* (Set, Delete): replaces the stored entry only if its version is lower,
  so the outcome matches SQL's, whatever order the writes arrive in.
- *promote if untouched* (filling L2 after an L3 read): stores only if the key is still
  absent and no pattern invalidation happened since the L2 miss that started the load.
  A pattern invalidation bumps an *epoch* counter that every multi-get reads in the same
  MGET, so "since" is exact without comparing clocks between replicas.

Outages: any connection error marks the tier down at once. While down every call raises
:class:`L2Unavailable` without touching the network (the tiered cache goes on with L1
and L3), errors are counted and logged at most once per interval, and a probe reconnects
with exponential backoff. Keys whose Redis write was skipped are remembered; before the
tier serves again they are deleted from Redis (everything under the prefix if there were
too many to remember), so Redis can hold no value older than SQL's.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.cache import globs
from services.cache.errorlog import RateLimitedLog
from services.cache.model import StoredEntry, wall_ms

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">BQq")  # kind, version, expires_at_ms
_LIVE = 1
_ABSENT = 2

# KEYS[1] key; ARGV[1] encoded entry, ARGV[2] its version, ARGV[3] PX ms (0 = none).
# Returns the version stored afterwards: ARGV[2] if written, else the newer one kept.
_WRITE_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current and string.len(current) >= 17 then
  local hi, lo = struct.unpack('>I4I4', string.sub(current, 2, 9))
  local stored = hi * 4294967296 + lo
  if stored >= tonumber(ARGV[2]) then return stored end
end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return tonumber(ARGV[2])
"""

# KEYS[1] key, KEYS[2] epoch key; ARGV[1] encoded entry, ARGV[2] epoch seen at the miss,
# ARGV[3] PX ms (0 = none).
_PROMOTE_IF_UNTOUCHED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local epoch = redis.call('GET', KEYS[2]) or ''
if epoch ~= ARGV[2] then return 0 end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"""

# Errors that mean "Redis is not there", as opposed to a bug in a command.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    asyncio.TimeoutError,
)


# Lends (exclusively) a connection whose writes this replica is not told about, or None.
UntrackedExecutor = Callable[[], AbstractAsyncContextManager[Any | None]]


class L2Unavailable(RuntimeError):
    """Redis is down (or was just found down); the caller should go on without L2."""


def encode(entry: StoredEntry) -> bytes:
    kind = _LIVE if entry.value is not None else _ABSENT
    return _HEADER.pack(kind, entry.version, entry.expires_at_ms) + (entry.value or b"")


def decode(blob: bytes) -> StoredEntry:
    kind, version, expires_at_ms = _HEADER.unpack_from(blob)
    return StoredEntry(blob[_HEADER.size :] if kind == _LIVE else None, version, expires_at_ms)


class RedisTier:
    """The Redis level of one replica: pooled connections, scripts, and outage handling."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str,
        max_connections: int = 32,
        timeout_ms: int = 1000,
        backoff_initial_ms: int = 50,
        backoff_max_ms: int = 2000,
        error_log_interval_ms: int = 10_000,
        max_remembered_keys: int = 100_000,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.url = url
        self.prefix = key_prefix
        self.meta_prefix = key_prefix.rstrip(":") + "-meta:"
        self.epoch_key = self.meta_prefix + "pattern-epoch"
        self._now_ms = now_ms
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_ms / 1000,
            socket_timeout=timeout_ms / 1000,
            socket_connect_timeout=timeout_ms / 1000,
            # One immediate retry replaces a pooled connection that died with a restarted
            # server; anything longer is the breaker's job, not the request's.
            retry=Retry(NoBackoff(), 1),
        )
        self.client = aioredis.Redis(connection_pool=self._pool)
        self._write_if_newer = self.client.register_script(_WRITE_IF_NEWER)
        self._promote = self.client.register_script(_PROMOTE_IF_UNTOUCHED)
        self._backoff_initial_s = backoff_initial_ms / 1000
        self._backoff_max_s = backoff_max_ms / 1000
        self._error_log = RateLimitedLog(log, error_log_interval_ms)
        self._max_remembered = max_remembered_keys
        self._skipped_keys: set[str] = set()
        self._skipped_patterns: set[str] = set()
        self._skipped_overflow = False
        self._available = False
        self._probe: asyncio.Task[None] | None = None
        self._closed = False
        self.errors = 0
        self._untracked: UntrackedExecutor | None = None

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Connect; if Redis is not there yet, start down and keep probing."""
        try:
            await self.client.ping()
            self._available = True
        except CONNECTION_ERRORS as exc:
            self._mark_down(exc)

    async def close(self) -> None:
        self._closed = True
        if self._probe is not None:
            self._probe.cancel()
        await self.client.aclose()
        await self._pool.disconnect()

    @property
    def available(self) -> bool:
        return self._available

    # --- reads -------------------------------------------------------------------------
    async def get_many(self, keys: Sequence[str]) -> tuple[list[StoredEntry | None], bytes]:
        """Entries for ``keys`` in order (None where Redis has nothing), and the pattern epoch.

        One MGET: the epoch is read atomically with the keys, for :meth:`promote`.
        """
        self._require()
        try:
            # bytes, not str: the pool does not decode responses.
            blobs = cast(
                list[bytes | None],
                await self.client.mget([self.epoch_key, *(self.prefix + key for key in keys)]),
            )
        except CONNECTION_ERRORS as exc:
            self._mark_down(exc)
            raise L2Unavailable(str(exc)) from exc
        epoch = blobs[0] or b""
        return [decode(blob) if blob else None for blob in blobs[1:]], epoch

    # --- writes ------------------------------------------------------------------------
    async def put_many(self, entries: Sequence[tuple[str, StoredEntry]], ttl_absent_ms: int = 0) -> list[int]:
        """Write each entry unless Redis holds the same or a newer version.

        Returns the version each key holds afterwards (the entry's own where written).

        Absent entries (tombstones) live ``ttl_absent_ms``; live ones until their expiry.
        Pipelined: one round trip for the batch.
        """
        if not self._available:
            self._remember([key for key, _ in entries])
            raise L2Unavailable("Redis is down")
        now = self._now_ms()
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, entry in entries:
                    px = entry.ttl_ms(now) if entry.value is not None else ttl_absent_ms
                    await self._write_if_newer(
                        keys=[self.prefix + key], args=[encode(entry), entry.version, px], client=pipe
                    )
                results = await pipe.execute()
        except CONNECTION_ERRORS as exc:
            self._remember([key for key, _ in entries])
            self._mark_down(exc)
            raise L2Unavailable(str(exc)) from exc
        return [int(result) for result in results]

    def promote_through(self, lender: UntrackedExecutor | None) -> None:
        """Make promotions on the connection ``lender`` lends (see invalidation.py: writes this
        replica is not told about, so filling Redis does not evict our own near caches)."""
        self._untracked = lender

    async def promote(
        self, entries: Sequence[tuple[str, StoredEntry]], epoch: bytes, ttl_absent_ms: int
    ) -> list[bool]:
        """Fill L2 with what was loaded from L3, where nothing changed since the miss.

        Absent entries (cached misses) live ``ttl_absent_ms``. True where stored.
        """
        if not self._available:
            raise L2Unavailable("Redis is down")
        now = self._now_ms()
        if self._untracked is not None:
            return await self._promote_untracked(entries, epoch, ttl_absent_ms, now)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for key, entry in entries:
                    px = entry.ttl_ms(now) if entry.value is not None else ttl_absent_ms
                    await self._promote(
                        keys=[self.prefix + key, self.epoch_key], args=[encode(entry), epoch, px], client=pipe
                    )
                results = await pipe.execute()
        except CONNECTION_ERRORS as exc:
            self._mark_down(exc)
            raise L2Unavailable(str(exc)) from exc
        return [bool(result) for result in results]

    async def _promote_untracked(
        self, entries: Sequence[tuple[str, StoredEntry]], epoch: bytes, ttl_absent_ms: int, now: int
    ) -> list[bool]:
        """The promote script's rule as WATCH/MULTI/EXEC: SET NX fills only empty slots, and
        EXEC aborts if the epoch moves after it was checked. (Not Lua: Redis would report a
        script's writes to us, NOLOOP or not.)"""
        assert self._untracked is not None
        declined = [False] * len(entries)
        async with self._untracked() as conn:
            if conn is None:
                return declined  # no tracker right now: skip; the next miss promotes
            try:
                await conn.send_packed_command(
                    conn.pack_commands([("WATCH", self.epoch_key), ("GET", self.epoch_key)])
                )
                await conn.read_response()
                if (await conn.read_response() or b"") != epoch:
                    await conn.send_command("UNWATCH")
                    await conn.read_response()
                    return declined
                commands: list[tuple[Any, ...]] = [("MULTI",)]
                for key, entry in entries:
                    px = entry.ttl_ms(now) if entry.value is not None else ttl_absent_ms
                    expiry = ("PX", px) if px > 0 else ()
                    commands.append(("SET", self.prefix + key, encode(entry), *expiry, "NX"))
                commands.append(("EXEC",))
                await conn.send_packed_command(conn.pack_commands(commands))
                replies = [await conn.read_response() for _ in commands]
            except CONNECTION_ERRORS:
                return declined
        outcome = replies[-1]
        if outcome is None:
            return declined  # the epoch moved: a pattern invalidation raced with this load
        return [reply is not None for reply in outcome]

    async def delete_matching(self, pattern: str) -> int:
        """Bump the pattern epoch, then delete every key matching ``pattern``; returns how many."""
        if not self._available:
            self._remember_pattern(pattern)
            raise L2Unavailable("Redis is down")
        try:
            await self.client.incr(self.epoch_key)
            return await self._unlink_matching(globs.escape(self.prefix) + pattern)
        except CONNECTION_ERRORS as exc:
            self._remember_pattern(pattern)
            self._mark_down(exc)
            raise L2Unavailable(str(exc)) from exc

    async def publish(self, channel: str, message: bytes) -> int:
        """PUBLISH ``message``; returns how many subscribers got it."""
        self._require()
        try:
            return int(await self.client.publish(channel, message))
        except CONNECTION_ERRORS as exc:
            self._mark_down(exc)
            raise L2Unavailable(str(exc)) from exc

    async def _unlink_matching(self, redis_pattern: str) -> int:
        removed = 0
        batch: list[bytes] = []
        async for key in self.client.scan_iter(match=redis_pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                removed += int(await self.client.unlink(*batch))
                batch.clear()
        if batch:
            removed += int(await self.client.unlink(*batch))
        return removed

    # --- outage handling ---------------------------------------------------------------
    def _require(self) -> None:
        if not self._available:
            raise L2Unavailable("Redis is down")

    def _mark_down(self, exc: BaseException) -> None:
        self.errors += 1
        self._error_log.warning(
            "Redis at %s failed (%s: %s): going on with L1 and L3", self._safe_url(), type(exc).__name__, exc
        )
        self._available = False
        if self._probe is None and not self._closed:
            self._probe = asyncio.get_running_loop().create_task(self._reconnect(), name="redis-reconnect")

    async def _reconnect(self) -> None:
        delay = self._backoff_initial_s
        try:
            while not self._closed:
                await asyncio.sleep(delay)
                try:
                    await self.client.ping()
                    await self._forget_skipped_writes()
                except CONNECTION_ERRORS as exc:
                    self.errors += 1
                    self._error_log.warning("Redis at %s still down (%s)", self._safe_url(), exc)
                    delay = min(self._backoff_max_s, delay * 2)
                    continue
                self._available = True
                log.info("Redis at %s is back: L2 serves again", self._safe_url())
                return
        finally:
            self._probe = None

    def _remember(self, keys: Sequence[str]) -> None:
        if self._skipped_overflow:
            return
        self._skipped_keys.update(keys)
        if len(self._skipped_keys) > self._max_remembered:
            self._skipped_overflow = True
            self._skipped_keys.clear()

    def _remember_pattern(self, pattern: str) -> None:
        if not self._skipped_overflow:
            self._skipped_patterns.add(pattern)

    async def _forget_skipped_writes(self) -> None:
        """Delete from Redis what changed in SQL while Redis could not be told.

        Loops until nothing is left, so that a write skipped while this runs is handled
        too; the caller marks the tier available right after, with no await in between.
        """
        while self._skipped_keys or self._skipped_patterns or self._skipped_overflow:
            keys, self._skipped_keys = self._skipped_keys, set()
            patterns, self._skipped_patterns = self._skipped_patterns, set()
            overflow, self._skipped_overflow = self._skipped_overflow, False
            try:
                if overflow:
                    removed = await self._unlink_matching(globs.escape(self.prefix) + "*")
                    log.info("Redis recovery: too many skipped writes to list; cleared all %d keys", removed)
                else:
                    names = [self.prefix + key for key in keys]
                    for start in range(0, len(names), 1000):
                        await self.client.unlink(*names[start : start + 1000])
                    for pattern in patterns:
                        await self._unlink_matching(globs.escape(self.prefix) + pattern)
                if patterns or overflow:
                    await self.client.incr(self.epoch_key)
            except BaseException:
                self._remember(list(keys))
                self._skipped_patterns |= patterns
                self._skipped_overflow |= overflow
                raise

    def _safe_url(self) -> str:
        return (
            self._pool.connection_kwargs.get("host", "?")
            + ":"
            + str(self._pool.connection_kwargs.get("port", "?"))
        )
