"""The three levels as one cache: read-through with promotion, write-through, invalidation.

Reads: L1, then Redis, then SQL. What a lower level returns fills the levels above it
(SQL -> Redis -> L1), a miss is cached as a miss for ``negative_ttl_ms``, and concurrent
misses for one key share one load (single-flight: one in-flight task per key, which
late-comers await instead of starting their own).

Writes go to SQL first (the source of truth decides by version which write wins), then
Redis, then L1. Deletes are versioned tombstones on every level, so a write that lost a
race with a delete cannot resurrect the key.

Stale set-backs, the race where a load reads an old value, an invalidation passes, and
the load then stores the old value back, are closed on both shared and local levels:
Redis is filled only if the key is still absent and no pattern invalidation happened
since the miss (see l2_redis), and L1 only if no invalidation covering the key was
applied since the load began (L1 load tokens).

While Redis is down or invalidations from other replicas cannot arrive, answers carry a
short near-cache TTL (``degraded_near_ttl_ms``) and L1 keeps entries no longer than that;
what was already held when invalidations stopped expires within the same bound (the hub
cuts L1 and flushes every near cache, see invalidation.py), and everything is dropped again
when they resume. No replica serves a value more than the bound after a change it missed.

Healing Redis (:meth:`TieredCache.heal_redis`). A write made while a replica cannot reach
Redis goes to SQL only, and Redis keeps the old value. Two rules keep it from being served:

1. A replica reads Redis only while its tier is up *and* its invalidations are live; in
   between it reads SQL (the source of truth) and caches answers for the degraded bound.
2. Before either comes back, Redis is healed: every key SQL changed at or after the outage's
   start (whoever wrote it) is deleted from Redis (the pattern epoch moved first, so no
   older load promotes after it), dropped from this replica's L1 and near caches, and
   announced on the invalidation channel, so other replicas' L1s drop it too. The start is
   the last moment this replica proved Redis complete (the listener's last PONG, the tier's
   last successful call, or an older skipped write), less ``heal_clock_skew_ms`` for other
   replicas' clocks. The list is capped at ``heal_max_keys``; above it, or when the outage
   began before the purge horizon (``tombstone_ttl_ms``: older tombstones and expired rows
   may be gone from SQL), every key under the prefix is deleted instead and a ``*``
   pattern invalidation is announced.

So after an outage of Redis itself, every replica heals before it reads Redis again: none
serves an old value from it, whichever replica made the change. The bound that remains is
that of a *partitioned* replica: when only B cannot reach Redis, the others still read
Redis, which holds the old value of what B wrote to SQL until B's tier or listener reaches
Redis again and heals it (within ``redis_backoff_max_ms`` of Redis being reachable for B,
plus the heal itself); the others' L1 and near caches drop it as the heal's deletes and
announcement arrive. If B dies before it reaches Redis again, its SQL-only writes are
healed only when some replica's own outage heal covers them (or their Redis TTLs end).
A heal needs SQL: while SQL cannot say what changed, Redis stays out of use (reads go to
SQL, and fail with it) rather than serve what may be stale.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import TypeVar

from hftgate.native.histogram import LatencyHistogram
from services.cache.invalidation import KEYS, PATTERN, RESYNC, Invalidation, InvalidationHub, encode_message
from services.cache.l1 import NearCache
from services.cache.l2_redis import L2Unavailable, RedisTier
from services.cache.l3_sql import SqlStore
from services.cache.model import Limits, StoredEntry, VersionClock, wall_ms

log = logging.getLogger(__name__)

# Keys per invalidation message (to watchers and on the channel) when a heal lists keys.
_HEAL_MESSAGE_KEYS = 1000

T = TypeVar("T")


class Level(IntEnum):
    """Where an answer came from (values match the proto's CacheLevel)."""

    NONE = 0
    L1 = 1
    L2 = 2
    L3 = 3


@dataclass(frozen=True, slots=True)
class Lookup:
    """The answer for one key."""

    found: bool
    value: bytes = b""
    version: int = 0
    # Time to live left in ms; 0 = no expiry.
    ttl_ms: int = 0
    level: Level = Level.NONE
    # How long a near cache may keep this answer in ms; 0 = until TTL or invalidation.
    near_cache_ttl_ms: int = 0


@dataclass(frozen=True, slots=True)
class SetItem:
    """One write: ``cache_only`` keeps it out of SQL."""

    key: str
    value: bytes
    ttl_ms: int = 0
    cache_only: bool = False


@dataclass(frozen=True, slots=True)
class SetOutcome:
    applied: bool
    version: int


@dataclass(frozen=True, slots=True)
class PatternOutcome:
    l1_removed: int
    l2_removed: int
    l3_removed: int
    version: int


@dataclass(frozen=True)
class TieredSettings:
    """Timing policy of the tiered cache (all in milliseconds)."""

    negative_ttl_ms: int = 2_000
    # How long Redis keeps a delete's tombstone; SQL keeps them this long too before purging.
    tombstone_ttl_ms: int = 60_000
    # Cap on an L1 entry's life even when invalidations flow (0 = none): insurance only.
    l1_max_ttl_ms: int = 300_000
    # Cap on near-cache life while invalidations may be missed (Redis or the listener down).
    degraded_near_ttl_ms: int = 1_000
    # Healing Redis after an outage: at most this many changed keys are listed from SQL and
    # deleted one by one; with more, every key under the prefix is deleted instead.
    heal_max_keys: int = 50_000
    # How far other replicas' wall clocks (hence their versions) may lag ours: an outage's
    # start is taken this much earlier when asking SQL what changed since.
    heal_clock_skew_ms: int = 1_000


@dataclass(frozen=True, slots=True)
class HealOutcome:
    """What one heal of Redis did."""

    # SQL changes at or after this version were looked for (the outage's start, less the skew).
    since_version: int
    # The keys listed and deleted, or None when everything under the prefix was deleted.
    keys: tuple[str, ...] | None
    # How many of them Redis still held.
    removed: int
    # Why everything was deleted ("" when keys were listed).
    broad_reason: str = ""


@dataclass
class LevelCounters:
    hits: int = 0
    misses: int = 0
    negative_hits: int = 0
    errors: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass(frozen=True)
class LevelStats:
    level: Level
    hits: int
    misses: int
    negative_hits: int
    evictions: int
    entries: int
    bytes: int
    errors: int
    latency: dict[str, float]

    @property
    def hit_ratio(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


@dataclass(frozen=True)
class TieredStats:
    levels: tuple[LevelStats, ...]
    single_flight_joins: int
    stale_set_backs_refused: int
    invalidations_received: int
    invalidation_watchers: int
    redis_available: bool
    invalidations_live: bool
    invalidation_mode: str
    # Heals of Redis after outages (keys listed, or everything under the prefix deleted).
    redis_heals: int = 0
    redis_heals_broad: int = 0


class TieredCache:
    """L1 + Redis + SQL behind one get/set/delete interface (one event loop owns it)."""

    def __init__(
        self,
        *,
        l1: NearCache | None,
        l2: RedisTier | None,
        l3: SqlStore,
        hub: InvalidationHub,
        replica_id: str,
        invalidation_channel: str = "",
        invalidation_mode: Callable[[], str] = lambda: "tracking",
        limits: Limits | None = None,
        settings: TieredSettings | None = None,
        clock: VersionClock | None = None,
        now_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self.l1 = l1
        self.l2 = l2
        self.l3 = l3
        self.hub = hub
        self.replica_id = replica_id
        self.limits = limits or Limits()
        self.settings = settings or TieredSettings()
        self._channel = invalidation_channel
        self._mode = invalidation_mode
        self._clock = clock or VersionClock()
        self._now_ms = now_ms
        self._inflight: dict[str, asyncio.Task[dict[str, Lookup]]] = {}
        self._counters = {level: LevelCounters() for level in (Level.L1, Level.L2, Level.L3)}
        self._l1_latency = self._counters[Level.L1].latency.record
        self._joins = 0
        self._refused_l2 = 0
        self._background: set[asyncio.Task[None]] = set()
        self._heals = 0
        self._broad_heals = 0
        # The hub applies the degraded bound to what is held when invalidations stop.
        hub.degraded_ttl_ms = self.settings.degraded_near_ttl_ms
        if l2 is not None:
            # Neither the listener nor the tier lets Redis be read again before it is healed.
            hub.heal = self.heal_redis
            l2.heal_with(self.heal_redis)

    # --- reads -------------------------------------------------------------------------
    async def get(self, key: str) -> Lookup:
        self.limits.check_key(key)
        hit = self._from_l1(key)
        if hit is not None:
            return hit
        return (await self._load([key]))[key]

    async def get_many(self, keys: Sequence[str]) -> list[Lookup]:
        self.limits.check_batch(len(keys), "keys")
        for index, key in enumerate(keys):
            self.limits.check_key(key, f"keys[{index}]")
        answers: dict[str, Lookup] = {}
        missing: list[str] = []
        for key in dict.fromkeys(keys):
            hit = self._from_l1(key)
            if hit is None:
                missing.append(key)
            else:
                answers[key] = hit
        if missing:
            answers.update(await self._load(missing))
        return [answers[key] for key in keys]

    def _from_l1(self, key: str) -> Lookup | None:
        if self.l1 is None:
            return None
        start = time.perf_counter_ns()
        entry = self.l1.get(key)
        self._l1_latency(time.perf_counter_ns() - start)
        if entry is None:
            return None
        near_ttl = self._near_cache_ttl_ms()
        left = self.l1.ttl_left_ms(entry)
        if near_ttl and left:
            # Held here only until the degraded bound runs out: a near cache may not hold it longer.
            near_ttl = min(near_ttl, left)
        if entry.negative:
            return Lookup(False, level=Level.L1, near_cache_ttl_ms=near_ttl)
        return Lookup(True, entry.value, entry.version, left, Level.L1, near_ttl)

    async def _load(self, keys: Sequence[str]) -> dict[str, Lookup]:
        """Single-flight: keys already being loaded are awaited, the rest loaded in one batch."""
        waiting: dict[str, asyncio.Task[dict[str, Lookup]]] = {}
        mine: list[str] = []
        for key in keys:
            task = self._inflight.get(key)
            if task is None:
                mine.append(key)
            else:
                waiting[key] = task
                self._joins += 1
        if mine:
            task = asyncio.get_running_loop().create_task(self._load_from_levels(mine))
            for key in mine:
                self._inflight[key] = task
            task.add_done_callback(functools.partial(self._load_finished, keys=tuple(mine)))
            for key in mine:
                waiting[key] = task
        # Shielded: a caller that gives up does not cancel the load others wait for.
        return {key: (await asyncio.shield(task))[key] for key, task in waiting.items()}

    def _load_finished(self, task: asyncio.Task[dict[str, Lookup]], keys: tuple[str, ...]) -> None:
        for key in keys:
            if self._inflight.get(key) is task:
                del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so an error nobody awaited is not logged twice

    async def _load_from_levels(self, keys: list[str]) -> dict[str, Lookup]:
        token = self.l1.load_token() if self.l1 is not None else 0
        answers: dict[str, Lookup] = {}
        remaining = keys
        epoch: bytes | None = None
        near_ttl = self._near_cache_ttl_ms()
        l2 = self.l2
        # Not while invalidations are down: Redis may hold values older than SQL until the
        # listener's heal (see the module docstring).
        if l2 is not None and l2.available and self.hub.live:
            counters = self._counters[Level.L2]
            start = time.perf_counter_ns()
            try:
                entries, epoch = await l2.get_many(remaining)
            except L2Unavailable:
                counters.errors += 1
                near_ttl = self._near_cache_ttl_ms()
            else:
                counters.latency.record(time.perf_counter_ns() - start)
                now = self._now_ms()
                remaining = []
                for key, entry in zip(keys, entries, strict=True):
                    if entry is None:
                        counters.misses += 1
                        remaining.append(key)
                    elif entry.value is None:
                        counters.negative_hits += 1
                        answers[key] = Lookup(False, level=Level.L2, near_cache_ttl_ms=near_ttl)
                    else:
                        counters.hits += 1
                        answers[key] = self._found(entry, Level.L2, now, near_ttl)
        if remaining:
            answers.update(await self._load_from_sql(remaining, epoch, near_ttl))
        late_near_ttl = self._near_cache_ttl_ms()
        if late_near_ttl > near_ttl:
            # Invalidations stopped while we loaded: what we read may already be stale, so
            # nobody may keep it longer than the bound (L1's token refuses it outright).
            answers = {
                key: replace(answer, near_cache_ttl_ms=late_near_ttl) for key, answer in answers.items()
            }
        if self.l1 is not None:
            self._fill_l1(answers, token)
        return answers

    async def _load_from_sql(self, keys: list[str], epoch: bytes | None, near_ttl: int) -> dict[str, Lookup]:
        counters = self._counters[Level.L3]
        start = time.perf_counter_ns()
        now = self._now_ms()
        try:
            rows = await self.l3.get_many(keys, now)
        except Exception:
            counters.errors += 1
            raise
        counters.latency.record(time.perf_counter_ns() - start)
        answers: dict[str, Lookup] = {}
        promotions: list[tuple[str, StoredEntry]] = []
        for key in keys:
            row = rows.get(key)
            if row is None or row.value is None:
                counters.misses += 1
                answers[key] = Lookup(False, level=Level.L3, near_cache_ttl_ms=near_ttl)
                promotions.append((key, row or StoredEntry(None, 0)))
            else:
                counters.hits += 1
                self._clock.observe(row.version)
                answers[key] = self._found(row, Level.L3, now, near_ttl)
                promotions.append((key, row))
        if self.l2 is not None and epoch is not None:
            try:
                stored = await self.l2.promote(promotions, epoch, self.settings.negative_ttl_ms)
            except L2Unavailable:
                self._counters[Level.L2].errors += 1
            else:
                self._refused_l2 += stored.count(False)
        return answers

    def _found(self, entry: StoredEntry, level: Level, now_ms: int, near_ttl: int) -> Lookup:
        assert entry.value is not None
        return Lookup(True, entry.value, entry.version, entry.ttl_ms(now_ms), level, near_ttl)

    def _fill_l1(self, answers: dict[str, Lookup], token: int) -> None:
        assert self.l1 is not None
        for key, answer in answers.items():
            if answer.found:
                ttl = _min_ttl(answer.ttl_ms, self.settings.l1_max_ttl_ms, answer.near_cache_ttl_ms)
                self.l1.put(key, answer.value, version=answer.version, ttl_ms=ttl, token=token)
            else:
                ttl = _min_ttl(self.settings.negative_ttl_ms, answer.near_cache_ttl_ms)
                self.l1.put(key, b"", negative=True, ttl_ms=ttl, token=token)

    def _near_cache_ttl_ms(self) -> int:
        if self.l2 is None:
            return 0  # a lone replica without Redis: every change is made here and seen here
        if self.l2.available and self.hub.live:
            return 0
        return self.settings.degraded_near_ttl_ms

    # --- writes ------------------------------------------------------------------------
    async def set(self, key: str, value: bytes, ttl_ms: int = 0, cache_only: bool = False) -> SetOutcome:
        return (await self.set_many([SetItem(key, value, ttl_ms, cache_only)]))[0]

    async def set_many(self, items: Sequence[SetItem]) -> list[SetOutcome]:
        self.limits.check_batch(len(items), "entries")
        for index, item in enumerate(items):
            self.limits.check_key(item.key, f"entries[{index}].key")
            self.limits.check_value(item.value, f"entries[{index}].value")
            self.limits.check_ttl(item.ttl_ms, f"entries[{index}].ttl_ms")
        token = self.l1.load_token() if self.l1 is not None else 0
        now = self._now_ms()
        # The last write of a key in a batch wins, as if the writes came one by one.
        last = {item.key: item for item in items}
        entries = {
            key: StoredEntry(item.value, self._clock.next(), now + item.ttl_ms if item.ttl_ms else 0)
            for key, item in last.items()
        }
        # The version each key holds once SQL, then Redis, had their say.
        holds = {key: entry.version for key, entry in entries.items()}
        durable = [(key, entries[key]) for key, item in last.items() if not item.cache_only]
        if durable:
            holds.update(await self._sql_write(durable))
        won = [(key, entry) for key, entry in entries.items() if holds[key] == entry.version]
        if won:
            for (key, _), redis_holds in zip(won, await self._redis_write(won, 0), strict=True):
                if redis_holds is not None and last[key].cache_only:
                    holds[key] = redis_holds  # for cache-only entries Redis is the judge
        changed = [key for key, entry in entries.items() if holds[key] == entry.version]
        if self.l1 is not None:
            near_ttl = self._near_cache_ttl_ms()
            for key in changed:
                entry = entries[key]
                ttl = _min_ttl(entry.ttl_ms(now), self.settings.l1_max_ttl_ms, near_ttl)
                self.l1.put(key, entry.value or b"", version=entry.version, ttl_ms=ttl, token=token)
        if changed:
            await self._announce_keys(changed)
        outcomes = []
        for item in items:
            if last[item.key] is item:
                version = holds[item.key]
                outcomes.append(SetOutcome(version == entries[item.key].version, version))
            else:  # overwritten by a later write of the same key in this batch
                outcomes.append(SetOutcome(False, entries[item.key].version))
        return outcomes

    async def delete(self, key: str) -> int:
        """Delete ``key`` everywhere; returns the delete's version (or the newer one that won)."""
        self.limits.check_key(key)
        version = self._clock.next()
        tombstone = StoredEntry(None, version)
        stored = (await self._sql_write([(key, tombstone)]))[key]
        if stored == version:
            await self._redis_write([(key, tombstone)], self.settings.tombstone_ttl_ms)
        if self.l1 is not None:
            self.l1.delete(key)
        await self._announce_keys([key])
        return stored

    async def invalidate_pattern(self, pattern: str, keep_durable: bool = False) -> PatternOutcome:
        self.limits.check_pattern(pattern)
        version = self._clock.next()
        # SQL first: a load that starts after the Redis epoch moves must see SQL's new state.
        l3_removed = (
            0 if keep_durable else len(await self._sql_call(self.l3.tombstone_matching(pattern, version)))
        )
        l2_removed = 0
        if self.l2 is not None:
            try:
                l2_removed = await self.l2.delete_matching(pattern, version)
            except L2Unavailable:
                self._counters[Level.L2].errors += 1
        l1_removed = self.l1.delete_matching(pattern) if self.l1 is not None else 0
        self.hub.tell_watchers(Invalidation(PATTERN, pattern=pattern))
        await self._publish(encode_message(self.replica_id, pattern=pattern))
        return PatternOutcome(l1_removed, l2_removed, l3_removed, version)

    async def heal_redis(self, since_version: int) -> HealOutcome:
        """Delete from Redis every key SQL changed at or after ``since_version`` (less the
        clock-skew allowance), and tell everyone who may hold them (see the module docstring).

        Works whether or not the tier is marked available (it runs before it is). Raises
        L2Unavailable or StoreUnavailable if Redis or SQL cannot be reached: the caller then
        keeps Redis out of use and tries again.
        """
        l2 = self.l2
        if l2 is None:
            raise L2Unavailable("this cache has no Redis level to heal")
        since = since_version - self.settings.heal_clock_skew_ms * 1000
        # No purge (whichever replica ran it) removed rows at or after this version.
        now = self._now_ms()
        complete_from = (now + self.settings.heal_clock_skew_ms - self.settings.tombstone_ttl_ms) * 1000
        changed: list[str] | None = None
        reason = ""
        if since < complete_from:
            reason = "the outage began before the SQL purge horizon (tombstone_ttl_ms)"
        else:
            changed = await self._sql_call(self.l3.changed_since(since, self.settings.heal_max_keys))
            if changed is None:
                reason = f"more than heal_max_keys ({self.settings.heal_max_keys}) keys changed"
        removed = await l2.forget(changed)
        if changed is None:
            if self.l1 is not None:
                self.l1.clear()
            self.hub.tell_watchers(Invalidation(RESYNC, flush_all=True))
            messages = [encode_message(self.replica_id, pattern="*")]
        else:
            chunks = [changed[i : i + _HEAL_MESSAGE_KEYS] for i in range(0, len(changed), _HEAL_MESSAGE_KEYS)]
            for chunk in chunks:
                if self.l1 is not None:
                    for key in chunk:
                        self.l1.delete(key)
                self.hub.tell_watchers(Invalidation(KEYS, keys=tuple(chunk)))
            messages = [encode_message(self.replica_id, keys=chunk) for chunk in chunks]
        if self._channel and messages:
            await l2.announce(self._channel, messages)
        self._heals += 1
        if changed is None:
            self._broad_heals += 1
            log.warning("Redis healed after an outage: every key deleted (%s)", reason)
        elif changed:
            log.info(
                "Redis healed after an outage: %d keys changed in SQL, %d deleted", len(changed), removed
            )
        return HealOutcome(since, None if changed is None else tuple(changed), removed, reason)

    async def purge_sql(self) -> int:
        """Delete expired rows and tombstones older than the tombstone TTL from SQL."""
        cutoff_version = (self._now_ms() - self.settings.tombstone_ttl_ms) * 1000
        return await self._sql_call(self.l3.purge(self._now_ms(), cutoff_version))

    async def _sql_write(self, entries: list[tuple[str, StoredEntry]]) -> dict[str, int]:
        return await self._sql_call(self.l3.put_many(entries))

    async def _sql_call(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except Exception:
            self._counters[Level.L3].errors += 1
            raise

    async def _redis_write(
        self, entries: list[tuple[str, StoredEntry]], absent_ttl_ms: int
    ) -> list[int | None]:
        """Write-if-newer into Redis: the version each key holds, or None for all when Redis is down."""
        if self.l2 is None:
            return [None] * len(entries)
        try:
            return list(await self.l2.put_many(entries, absent_ttl_ms))
        except L2Unavailable:
            self._counters[Level.L2].errors += 1
            return [None] * len(entries)

    async def _announce_keys(self, keys: list[str]) -> None:
        """Tell this replica's watchers now; other replicas learn through Redis."""
        self.hub.tell_watchers(Invalidation(KEYS, keys=tuple(keys)))
        if self._mode() == "pubsub":
            await self._publish(encode_message(self.replica_id, keys=keys))

    async def _publish(self, message: bytes) -> None:
        if self.l2 is None or not self._channel:
            return
        try:
            await self.l2.publish(self._channel, message)
        except L2Unavailable:
            self._counters[Level.L2].errors += 1

    # --- statistics --------------------------------------------------------------------
    def stats(self) -> TieredStats:
        levels = []
        for level, counters in self._counters.items():
            evictions = entries = size = 0
            hits, misses, negative = counters.hits, counters.misses, counters.negative_hits
            errors = counters.errors
            if level is Level.L1 and self.l1 is not None:
                near = self.l1.stats()
                hits, misses, negative = near.hits, near.misses, near.negative_hits
                evictions, entries, size = near.evictions, near.entries, near.bytes
            if level is Level.L2 and self.l2 is not None:
                errors = max(errors, self.l2.errors)
            levels.append(
                LevelStats(
                    level,
                    hits,
                    misses,
                    negative,
                    evictions,
                    entries,
                    size,
                    errors,
                    counters.latency.summary(),
                )
            )
        refused_l1 = self.l1.stats().refused_stale_puts if self.l1 is not None else 0
        return TieredStats(
            levels=tuple(levels),
            single_flight_joins=self._joins,
            stale_set_backs_refused=refused_l1 + self._refused_l2,
            invalidations_received=self.hub.received,
            invalidation_watchers=self.hub.watcher_count,
            redis_available=self.l2 is not None and self.l2.available,
            invalidations_live=self.hub.live,
            invalidation_mode=self._mode(),
            redis_heals=self._heals,
            redis_heals_broad=self._broad_heals,
        )


def _min_ttl(*ttls_ms: int) -> int:
    """The smallest positive TTL (0 means none, so it never wins)."""
    positive = [ttl for ttl in ttls_ms if ttl > 0]
    return min(positive) if positive else 0
