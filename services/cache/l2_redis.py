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
with exponential backoff. Before the tier serves again, Redis is *healed*:

- the tier remembers the oldest version Redis may have missed: the last moment a call of
  this tier succeeded (in µs, the unit of versions), or the version of an older write it
  had to skip; its :data:`Healer` (the tiered cache's) deletes from Redis every key SQL
  changed since then, by any replica, and tells the other replicas (see tiered.py);
- keys and patterns whose Redis write was skipped (cache-only writes too, which SQL does not
  know) are remembered and deleted as well (everything under the prefix if there were too
  many to remember).

Each step bumps the pattern epoch before it deletes, so a load that missed before the heal
cannot promote an older value after it. If a step fails (Redis or SQL gone again) the tier
stays down and the probe tries again later; nothing is forgotten. While the heal runs,
writes (write-if-newer) and publishes go to Redis again, so that a steady stream of writes
cannot keep adding to what must be healed; reads and promotions wait until it is done.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.cache import globs
from services.cache.errorlog import RateLimitedLog
from services.cache.model import StoredEntry, StoreUnavailable, wall_ms

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

# Deletes from Redis every key SQL changed at or after the version it is given (an outage's
# start), before the tier serves again; raises (L2Unavailable, StoreUnavailable) if it cannot.
Healer = Callable[[int], Awaitable[object]]

# Keys per UNLINK while healing.
_UNLINK_CHUNK = 1000


class L2Unavailable(RuntimeError):
    """Redis is down (or was just found down); the caller should go on without L2."""


# What keeps the probe from serving again (it retries later): Redis or SQL gone during the heal.
_PROBE_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, L2Unavailable, StoreUnavailable)


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
        # True while the probe heals Redis: writes go through, reads do not yet.
        self._healing = False
        self._probe: asyncio.Task[None] | None = None
        self._closed = False
        self.errors = 0
        self._untracked: UntrackedExecutor | None = None
        # The last moment (wall ms) a call of this tier succeeded: Redis missed nothing before it.
        self._last_ok_ms = now_ms()
        # The oldest version Redis may have missed while down (None: nothing to heal).
        self._heal_since: int | None = None
        self._healer: Healer | None = None
        self.heals = 0

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Connect; if Redis is not there yet, start down and keep probing."""
        try:
            await self.client.ping()
            self._available = True
            self._last_ok_ms = self._now_ms()
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

    def heal_with(self, healer: Healer | None) -> None:
        """Run ``healer`` before the tier serves again after an outage (see the module docstring)."""
        self._healer = healer

    @property
    def heal_pending_since(self) -> int | None:
        """The oldest version Redis may have missed, while a heal is pending (else None)."""
        return self._heal_since

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
        self._last_ok_ms = self._now_ms()
        epoch = blobs[0] or b""
        return [decode(blob) if blob else None for blob in blobs[1:]], epoch

    # --- writes ------------------------------------------------------------------------
    async def put_many(self, entries: Sequence[tuple[str, StoredEntry]], ttl_absent_ms: int = 0) -> list[int]:
        """Write each entry unless Redis holds the same or a newer version.

        Returns the version each key holds afterwards (the entry's own where written).

        Absent entries (tombstones) live ``ttl_absent_ms``; live ones until their expiry.
        Pipelined: one round trip for the batch.
        """
        if not (self._available or self._healing):
            self._remember_entries(entries)
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
            self._remember_entries(entries)
            self._mark_down(exc)
            raise L2Unavailable(str(exc)) from exc
        self._last_ok_ms = now
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

    async def delete_matching(self, pattern: str, version: int = 0) -> int:
        """Bump the pattern epoch, then delete every key matching ``pattern``; returns how many.

        ``version`` is the invalidation's (its SQL tombstones'), for the heal if Redis is down.
        """
        if not (self._available or self._healing):
            self._remember_pattern(pattern, version)
            raise L2Unavailable("Redis is down")
        try:
            await self.client.incr(self.epoch_key)
            removed = await self._unlink_matching(globs.escape(self.prefix) + pattern)
        except CONNECTION_ERRORS as exc:
            self._remember_pattern(pattern, version)
            self._mark_down(exc)
            raise L2Unavailable(str(exc)) from exc
        self._last_ok_ms = self._now_ms()
        return removed

    async def publish(self, channel: str, message: bytes) -> int:
        """PUBLISH ``message``; returns how many subscribers got it."""
        if not (self._available or self._healing):
            raise L2Unavailable("Redis is down")
        try:
            receivers = int(await self.client.publish(channel, message))
        except CONNECTION_ERRORS as exc:
            self._mark_down(exc)
            raise L2Unavailable(str(exc)) from exc
        self._last_ok_ms = self._now_ms()
        return receivers

    async def forget(self, keys: Sequence[str] | None) -> int:
        """Delete ``keys`` from Redis (None: every key under the prefix); returns how many were there.

        For healing: works whether or not the tier is marked available, and raises
        :class:`L2Unavailable` (without marking the tier down) if Redis cannot be reached.
        The pattern epoch moves first, so a load that missed before cannot promote an older
        value after the delete.
        """
        try:
            await self.client.incr(self.epoch_key)
            if keys is None:
                return await self._unlink_matching(globs.escape(self.prefix) + "*")
            removed = 0
            names = [self.prefix + key for key in dict.fromkeys(keys)]
            for start in range(0, len(names), _UNLINK_CHUNK):
                removed += int(await self.client.unlink(*names[start : start + _UNLINK_CHUNK]))
            return removed
        except CONNECTION_ERRORS as exc:
            raise L2Unavailable(str(exc)) from exc

    async def announce(self, channel: str, messages: Sequence[bytes]) -> None:
        """PUBLISH each message, whether or not the tier is marked available (for healing);
        raises :class:`L2Unavailable` if Redis cannot be reached."""
        try:
            for message in messages:
                await self.client.publish(channel, message)
        except CONNECTION_ERRORS as exc:
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
        self._healing = False
        # Redis may have missed SQL changes (anyone's) since the last call that succeeded.
        self._note_heal_since(self._last_ok_ms * 1000)
        if self._probe is None and not self._closed:
            self._probe = asyncio.get_running_loop().create_task(self._reconnect(), name="redis-reconnect")

    async def _reconnect(self) -> None:
        delay = self._backoff_initial_s
        try:
            while not self._closed:
                await asyncio.sleep(delay)
                try:
                    await self.client.ping()
                    self._healing = True
                    await self._forget_skipped_writes()
                except _PROBE_ERRORS as exc:
                    self._healing = False
                    self.errors += 1
                    self._error_log.warning(
                        "Redis at %s not served yet (%s: %s)", self._safe_url(), type(exc).__name__, exc
                    )
                    delay = min(self._backoff_max_s, delay * 2)
                    continue
                except Exception as exc:  # a bug in a heal must not stop the probe for good
                    self._healing = False
                    self.errors += 1
                    log.error("Redis heal failed (%s: %s); retrying", type(exc).__name__, exc, exc_info=True)
                    delay = min(self._backoff_max_s, delay * 2)
                    continue
                self._last_ok_ms = self._now_ms()
                self._available = True
                self._healing = False
                log.info("Redis at %s is back: L2 serves again", self._safe_url())
                return
        finally:
            self._probe = None

    def _note_heal_since(self, version: int) -> None:
        if self._heal_since is None or version < self._heal_since:
            self._heal_since = version

    def _remember_entries(self, entries: Sequence[tuple[str, StoredEntry]]) -> None:
        if entries:
            self._note_heal_since(min(entry.version for _, entry in entries))
        self._remember([key for key, _ in entries])

    def _remember(self, keys: Sequence[str]) -> None:
        if self._skipped_overflow:
            return
        self._skipped_keys.update(keys)
        if len(self._skipped_keys) > self._max_remembered:
            self._skipped_overflow = True
            self._skipped_keys.clear()

    def _remember_pattern(self, pattern: str, version: int) -> None:
        if version > 0:
            self._note_heal_since(version)
        if not self._skipped_overflow:
            self._skipped_patterns.add(pattern)

    async def _forget_skipped_writes(self) -> None:
        """Heal Redis: delete what changed in SQL while Redis could not be told.

        Loops until nothing is left, so that a write skipped while this runs is handled
        too; the caller marks the tier available right after, with no await in between.
        """
        while (
            self._skipped_keys
            or self._skipped_patterns
            or self._skipped_overflow
            or (self._heal_since is not None and self._healer is not None)
        ):
            since, self._heal_since = self._heal_since, None
            keys, self._skipped_keys = self._skipped_keys, set()
            patterns, self._skipped_patterns = self._skipped_patterns, set()
            overflow, self._skipped_overflow = self._skipped_overflow, False
            try:
                if since is not None and self._healer is not None:
                    await self._healer(since)
                    self.heals += 1
                if keys or patterns or overflow:
                    # The epoch first: a load that missed before cannot promote after the delete.
                    await self.client.incr(self.epoch_key)
                if overflow:
                    removed = await self._unlink_matching(globs.escape(self.prefix) + "*")
                    log.info("Redis recovery: too many skipped writes to list; cleared all %d keys", removed)
                else:
                    names = [self.prefix + key for key in keys]
                    for start in range(0, len(names), _UNLINK_CHUNK):
                        await self.client.unlink(*names[start : start + _UNLINK_CHUNK])
                    for pattern in patterns:
                        await self._unlink_matching(globs.escape(self.prefix) + pattern)
            except BaseException:
                if since is not None:
                    self._note_heal_since(since)
                self._remember(list(keys))
                self._skipped_patterns |= patterns
                self._skipped_overflow |= overflow
                raise
        self._heal_since = None  # without a healer there is nothing more to do about it

    def _safe_url(self) -> str:
        return (
            self._pool.connection_kwargs.get("host", "?")
            + ":"
            + str(self._pool.connection_kwargs.get("port", "?"))
        )
