"""Invalidations: how a change made anywhere reaches every replica's L1 and every near cache.

Between replicas we use what Redis already does. Each replica keeps two connections of
its own: a *listener* subscribed to ``__redis__:invalidate`` and a *tracker* that turned
on ``CLIENT TRACKING ON REDIRECT <listener> BCAST PREFIX <prefix>``. From then on Redis
itself tells the listener about every key under the prefix that anyone writes, deletes,
or that expires or is evicted; RESP2 and redis.asyncio suffice (Redis 6+). Pattern
invalidations, which Redis cannot express as keys (a key in some L1 may be in no Redis),
travel on a pub/sub channel of ours. Servers without tracking (or with it disabled) get
the fallback: every replica publishes its own key changes on that channel too.

Filling Redis from SQL (a promotion) changes no value, so it should not evict anyone's
copy of it; this replica's promotions therefore run on the tracker connection itself,
whose tracking is ``NOLOOP``: Redis does not report them back to us (other replicas
still hear of them, harmlessly). See :meth:`RedisInvalidationListener.untracked_connection`.

Within a replica, the :class:`InvalidationHub` applies each invalidation to the local
L1 and fans it out to every ``WatchInvalidations`` subscriber (the near caches inside
other services). A subscriber's stream starts with a flush; one that falls behind by
more than its queue holds gets a flush (RESYNC) instead of a silent gap; and whenever
the listener reconnects (it may have missed messages meanwhile) the hub flushes L1 and
tells every subscriber to flush.

The degraded bound. Every health-check interval (100 ms) the listener PINGs the tracker,
then sends a PING down the subscribed listener connection itself: Redis answers it in
order with the invalidations, so its PONG proves that every change Redis saw before the
round began has reached us. When Redis goes away (a closed connection, a failed PING, or
no PONG for the liveness timeout, half the bound by default, which catches a hung Redis
whose connections stay open) the hub is marked down: every L1 entry is cut to expire
``degraded_near_ttl_ms`` after the last proven moment, loads that began before are not
cached, and every subscriber is told to flush (RESYNC). While the hub is down, answers
carry that bound as their near-cache TTL and L1 keeps nothing longer. So a change made
through another replica during an outage (to SQL only: Redis cannot tell anyone) is seen
everywhere within the bound, and on reconnect L1 and the subscribers are flushed again.

Healing on reconnect. A change written to SQL only, during the outage, left Redis holding the
old value. So when the listener has subscribed again, and before the hub goes live (until
then the tiered cache reads SQL, not Redis), the hub's ``heal`` (the tiered cache's) deletes
from Redis every key SQL changed since the last proven moment, whoever changed it, and tells
the other replicas; only then are L1 and the subscribers flushed and the hub marked live.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from services.cache.errorlog import RateLimitedLog
from services.cache.l1 import NearCache
from services.cache.l2_redis import CONNECTION_ERRORS, L2Unavailable
from services.cache.model import StoreUnavailable, wall_ms

log = logging.getLogger(__name__)

TRACKING_CHANNEL = "__redis__:invalidate"
# What makes the listener reconnect: a lost connection, a refusal (tracking in "tracking" mode),
# or a heal that could not finish (Redis or SQL gone again).
_LISTENER_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    RedisError,
    L2Unavailable,
    StoreUnavailable,
)

# Keep-alive PINGs the listener may have sent without their PONG before it gives up.
_MAX_PINGS_IN_FLIGHT = 64

SUBSCRIBED = "subscribed"
KEYS = "keys"
PATTERN = "pattern"
RESYNC = "resync"


@dataclass(frozen=True)
class Invalidation:
    """One thing a near cache must drop: ``keys``, keys matching ``pattern``, or everything."""

    reason: str
    keys: tuple[str, ...] = ()
    pattern: str = ""
    flush_all: bool = False
    sequence: int = 0


@dataclass(eq=False)
class Watcher:
    """One subscriber's bounded queue of invalidations."""

    name: str
    max_queued: int
    _queue: deque[Invalidation] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _sequence: int = 0
    closed: bool = False
    overflows: int = 0

    def push(self, invalidation: Invalidation) -> None:
        if self.closed:
            return
        if len(self._queue) >= self.max_queued:
            # Too far behind to catch up message by message: a flush replaces the backlog.
            self._queue.clear()
            self.overflows += 1
            invalidation = Invalidation(RESYNC, flush_all=True)
        self._queue.append(invalidation)
        self._ready.set()

    async def next(self) -> Invalidation:
        """The next invalidation, numbered from 1 without gaps."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        item = self._queue.popleft()
        self._sequence += 1
        return Invalidation(item.reason, item.keys, item.pattern, item.flush_all, self._sequence)


class InvalidationHub:
    """Applies invalidations to this replica's L1 and fans them out to its watchers.

    It also keeps the *degraded bound* (``degraded_ttl_ms``, set by the tiered cache from
    ``degraded_near_ttl_ms``): the listener confirms, ping by ping, the moment up to which
    every other replica's changes have reached us (:meth:`confirm`). When it loses Redis
    (:meth:`mark_down`), nothing this replica or its near caches hold may outlive that
    moment by more than the bound: L1 entries are cut to expire by then, and every watcher
    is told to flush (it reloads, and while the hub is down answers carry the bound as
    their near-cache TTL). When the listener is back it has Redis healed
    (:meth:`heal_before_live`) and resyncs (:meth:`resync`) before it marks the hub live
    again (:meth:`mark_live`).
    """

    def __init__(
        self,
        l1: NearCache | None,
        *,
        max_queued_per_watcher: int = 10_000,
        degraded_ttl_ms: int = 1_000,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        wall_ms: Callable[[], int] = wall_ms,
    ) -> None:
        self._l1 = l1
        self._max_queued = max_queued_per_watcher
        self._watchers: set[Watcher] = set()
        self.clock_ns = clock_ns
        # How long anything held may be served once invalidations may be missed (ms).
        self.degraded_ttl_ms = degraded_ttl_ms
        # True while every other replica's changes reach us (the listener is subscribed).
        self._live = False
        # Every change made before this moment (clock_ns) has reached us.
        self.confirmed_ns = 0
        # The same moment on the wall clock (ms since the epoch), the timeline of versions;
        # None until the hub was first live (nothing held, nothing to heal).
        self.confirmed_wall_ms: int | None = None
        self._wall_ms = wall_ms
        # Deletes from Redis every key SQL changed at or after a version (set by the tiered
        # cache); awaited by heal_before_live.
        self.heal: Callable[[int], Awaitable[object]] | None = None
        self.received = 0
        # How many times the hub went from live to down (each cut L1 and flushed the watchers).
        self.degradations = 0
        self._down_log = RateLimitedLog(log, 10_000)

    @property
    def live(self) -> bool:
        """True while every other replica's changes reach us (:meth:`mark_live`/:meth:`mark_down`)."""
        return self._live

    @live.setter
    def live(self, value: bool) -> None:
        if value:
            self.mark_live()
        else:
            self.mark_down()

    def mark_live(self) -> None:
        """Invalidations flow from now on (call :meth:`heal_before_live` and :meth:`resync`
        first if some may have been missed)."""
        self.confirmed_ns = self.clock_ns()
        self.confirmed_wall_ms = self._wall_ms()
        self._live = True

    def confirm(self, as_of_ns: int) -> None:
        """Every change made before ``as_of_ns`` (clock_ns) has been applied here."""
        if self._live and as_of_ns > self.confirmed_ns:
            self.confirmed_ns = as_of_ns
            self.confirmed_wall_ms = self._wall_ms() - (self.clock_ns() - as_of_ns) // 1_000_000

    async def heal_before_live(self) -> bool:
        """Have Redis healed of every SQL change since the last proven moment (while down).

        Changes written to SQL only during the outage (by any replica) left Redis with older
        values; they are deleted before the hub goes live, since from then on Redis is read
        again. True if a heal ran; nothing to do before the hub was first live. Raises what
        the heal raises (L2Unavailable, StoreUnavailable): the hub then stays down.
        """
        if self._live or self.heal is None or self.confirmed_wall_ms is None:
            return False
        await self.heal(self.confirmed_wall_ms * 1000)
        return True

    def mark_down(self) -> None:
        """Invalidations may be missed from now on: apply the degraded bound to everything held.

        Idempotent: only the first call after :meth:`mark_live` acts. L1 keeps its entries
        until ``degraded_ttl_ms`` after the last confirmed moment (at once if that has passed);
        near caches elsewhere cannot be cut remotely, so they are told to flush.
        """
        if not self._live:
            return
        self._live = False
        self.degradations += 1
        left_ms = (self.confirmed_ns + self.degraded_ttl_ms * 1_000_000 - self.clock_ns()) // 1_000_000
        cut = self._l1.expire_within(max(0, left_ms)) if self._l1 is not None else 0
        self._down_log.warning(
            "invalidations from other replicas may be missed: L1 entries expire within %d ms "
            "(%d shortened), near caches flushed; answers carry a %d ms near-cache TTL until Redis is back",
            max(0, left_ms),
            cut,
            self.degraded_ttl_ms,
        )
        self.tell_watchers(Invalidation(RESYNC, flush_all=True))

    # --- from Redis (another replica, or anyone writing under our prefix) ----------------
    def apply_keys(self, keys: Sequence[str]) -> None:
        """Keys changed elsewhere: drop them here and tell the watchers."""
        self.received += 1
        if self._l1 is not None:
            for key in keys:
                self._l1.delete(key)
        self.tell_watchers(Invalidation(KEYS, keys=tuple(keys)))

    def apply_pattern(self, pattern: str) -> None:
        self.received += 1
        if self._l1 is not None:
            self._l1.delete_matching(pattern)
        self.tell_watchers(Invalidation(PATTERN, pattern=pattern))

    def resync(self) -> None:
        """Invalidations may have been missed: flush L1 and every watcher."""
        if self._l1 is not None:
            self._l1.clear()
        self.tell_watchers(Invalidation(RESYNC, flush_all=True))

    # --- to the near caches -------------------------------------------------------------
    def tell_watchers(self, invalidation: Invalidation) -> None:
        for watcher in self._watchers:
            watcher.push(invalidation)

    def watch(self, name: str) -> Watcher:
        """Subscribe; the first message is a flush (SUBSCRIBED). Call :meth:`unwatch` when done."""
        watcher = Watcher(name, self._max_queued)
        watcher.push(Invalidation(SUBSCRIBED, flush_all=True))
        self._watchers.add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        watcher.closed = True
        self._watchers.discard(watcher)

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)


def encode_message(origin: str, *, keys: Iterable[str] = (), pattern: str = "") -> bytes:
    """A message for the invalidation channel (patterns; keys too in pub/sub mode)."""
    body: dict[str, Any] = {"origin": origin}
    if pattern:
        body["pattern"] = pattern
    else:
        body["keys"] = list(keys)
    return json.dumps(body, separators=(",", ":")).encode()


class RedisInvalidationListener:
    """Keeps this replica subscribed to every other replica's changes, through Redis.

    ``mode`` is ``"auto"`` (tracking, falling back to pub/sub if the server refuses it),
    ``"tracking"`` or ``"pubsub"``. :attr:`mode_in_use` says which one runs.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str,
        channel: str,
        hub: InvalidationHub,
        replica_id: str,
        mode: str = "auto",
        health_check_interval_ms: int = 100,
        liveness_timeout_ms: int = 0,
        backoff_initial_ms: int = 50,
        backoff_max_ms: int = 2000,
        error_log_interval_ms: int = 10_000,
    ) -> None:
        if mode not in ("auto", "tracking", "pubsub"):
            raise ValueError(f"invalidation mode must be auto, tracking or pubsub, not {mode!r}")
        self.url = url
        self.prefix = key_prefix
        self.channel = channel
        self.replica_id = replica_id
        self.mode = mode
        self.mode_in_use = "pubsub" if mode == "pubsub" else "tracking"
        self._hub = hub
        self._health_interval_s = health_check_interval_ms / 1000
        self._liveness_timeout_ms = liveness_timeout_ms
        # Send times (monotonic ns) of the listener PINGs whose PONG has not come back yet; at
        # most _MAX_PINGS_IN_FLIGHT (more means Redis stopped answering: the listener gives up).
        self._pings: deque[int] = deque()
        self._backoff_initial_s = backoff_initial_ms / 1000
        self._backoff_max_s = backoff_max_ms / 1000
        self._error_log = RateLimitedLog(log, error_log_interval_ms)
        # RESP2 on purpose: pub/sub messages come back as plain replies we read ourselves, and
        # tracking needs REDIRECT to a subscribed connection (RESP3 would push them instead).
        self._pool = aioredis.ConnectionPool.from_url(
            url, socket_timeout=None, socket_connect_timeout=2, protocol=2
        )
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._tracker: Any = None
        self._tracker_lock = asyncio.Lock()
        self.reconnects = 0

    async def start(self, wait_s: float = 5.0) -> None:
        """Start listening; wait up to ``wait_s`` for the first subscription (not fatal if Redis is down)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="cache-invalidation-listener")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), wait_s)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._pool.disconnect()

    @property
    def liveness_timeout_ms(self) -> int:
        """How long the listener may go without proof that invalidations flow before it gives up.

        Unless set, half the hub's degraded bound (at least two health-check intervals): a hung
        Redis is noticed, and L1 cut, well before anything held outlives the bound.
        """
        if self._liveness_timeout_ms > 0:
            return self._liveness_timeout_ms
        interval_ms = int(self._health_interval_s * 1000)
        return max(2 * interval_ms, self._hub.degraded_ttl_ms // 2)

    async def _run(self) -> None:
        delay = self._backoff_initial_s
        while True:
            try:
                await self._listen_once()
            except _LISTENER_ERRORS as exc:
                self._error_log.warning(
                    "invalidation listener lost Redis (%s: %s); reconnecting", type(exc).__name__, exc
                )
            except Exception:  # a bug must not leave the hub live with nobody listening
                log.exception("invalidation listener failed; reconnecting")
            # Whatever ended the subscription, changes elsewhere may now go unnoticed.
            self._hub.mark_down()
            self._subscribed.clear()
            await asyncio.sleep(delay)
            delay = min(self._backoff_max_s, delay * 2)
            self.reconnects += 1

    async def _listen_once(self) -> None:
        listener = self._pool.make_connection()
        tracker = self._pool.make_connection()
        try:
            await listener.connect()
            await listener.send_command("CLIENT", "ID")
            listener_id = await listener.read_response()
            channels = [self.channel]
            if self.mode_in_use == "tracking" and await self._enable_tracking(tracker, int(listener_id)):
                channels.append(TRACKING_CHANNEL)
            await listener.send_command("SUBSCRIBE", *channels)
            for _ in channels:
                await listener.read_response()
            # Anything may have changed while we were not listening: Redis too (writes to SQL
            # only). Healed first, so nobody here reads an old value from it once live.
            await self._hub.heal_before_live()
            self._hub.resync()
            self._pings.clear()
            self._hub.mark_live()
            self._subscribed.set()
            if self.mode_in_use == "tracking":
                self._tracker = tracker
            log.info("invalidations live via %s (channels %s)", self.mode_in_use, ", ".join(channels))
            # Both run until Redis goes away: the first to end (always with an error) ends the
            # subscription, and the keep-alive ends as soon as it misses a PONG.
            loop = asyncio.get_running_loop()
            tasks = {
                loop.create_task(self._read_forever(listener), name="cache-invalidation-reader"),
                loop.create_task(self._keep_alive(tracker, listener), name="cache-invalidation-keep-alive"),
            }
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            self._hub.mark_down()  # at once, before the connections are torn down
            for task in done:
                task.result()  # raises what ended it
            raise ConnectionError("the invalidation listener stopped")
        finally:
            self._tracker = None
            await listener.disconnect()
            await tracker.disconnect()

    @contextlib.asynccontextmanager
    async def untracked_connection(self) -> AsyncIterator[Any | None]:
        """The tracker connection, held exclusively: writes made on it are not reported back here.

        Yields None when there is none (pub/sub mode, or reconnecting): the caller then
        skips the write or makes it elsewhere. Only plain commands and MULTI/EXEC count as
        "made on it": Redis attributes a Lua script's writes to its own script client.
        """
        tracker = self._tracker
        if tracker is None:
            yield None
            return
        async with self._tracker_lock:
            yield tracker if self._tracker is tracker else None

    async def _enable_tracking(self, tracker: Any, listener_id: int) -> bool:
        await tracker.connect()
        await tracker.send_command(
            "CLIENT", "TRACKING", "on", "REDIRECT", listener_id, "BCAST", "PREFIX", self.prefix, "NOLOOP"
        )
        try:
            await tracker.read_response()
        except ResponseError as exc:
            if self.mode == "tracking":
                raise
            log.warning("Redis refused CLIENT TRACKING (%s): falling back to pub/sub invalidations", exc)
            self.mode_in_use = "pubsub"
            return False
        return True

    async def _read_forever(self, listener: Any) -> None:
        while True:
            self._dispatch(await listener.read_response())

    async def _keep_alive(self, tracker: Any, listener: Any) -> None:
        """Prove, every health-check interval, that invalidations still reach us.

        Each round first PINGs the tracker (tracking lives as long as its connection), then
        sends a PING down the listener: Redis answers it in order with everything it sent
        the listener, so its PONG proves that every change Redis saw before the round began
        has reached us (:meth:`InvalidationHub.confirm`). Raises, ending the subscription,
        when a round fails or no PONG proved anything for the liveness timeout (a hung Redis
        keeps its connections open). An event loop stalled that long counts too: nothing
        could be proven meanwhile, so the safe side is to apply the bound.
        """
        timeout_ns = self.liveness_timeout_ms * 1_000_000
        while True:
            await asyncio.sleep(self._health_interval_s)
            began_ns = self._hub.clock_ns()
            if began_ns - self._hub.confirmed_ns > timeout_ns:
                raise TimeoutError(f"no PONG from Redis for {self.liveness_timeout_ms} ms")
            if self.mode_in_use == "tracking":
                async with self._tracker_lock:
                    await tracker.send_command("PING")
                    await asyncio.wait_for(tracker.read_response(), timeout_ns / 1e9)
            if len(self._pings) >= _MAX_PINGS_IN_FLIGHT:
                raise TimeoutError(f"{len(self._pings)} PINGs without a PONG")
            self._pings.append(began_ns)
            await listener.send_command("PING")

    def _dispatch(self, message: Any) -> bool:
        """Apply one message from the listener; True if it was the PONG of a keep-alive PING."""
        if isinstance(message, list) and message and message[0] == b"pong":
            if self._pings:
                self._hub.confirm(self._pings.popleft())
            return True
        if not isinstance(message, list) or len(message) < 3 or message[0] != b"message":
            return False
        channel, payload = message[1], message[2]
        if channel == TRACKING_CHANNEL.encode():
            if payload is None:  # FLUSHALL / FLUSHDB
                self._hub.received += 1
                self._hub.resync()
                return False
            cut = len(self.prefix)
            keys = [raw.decode("utf-8", "surrogateescape")[cut:] for raw in payload]
            self._hub.apply_keys(keys)
            return False
        try:
            body = json.loads(payload)
        except (ValueError, TypeError):
            log.warning("ignoring malformed invalidation message on %s: %r", self.channel, payload[:200])
            return False
        if body.get("origin") == self.replica_id:
            return False  # our own change, already applied here
        if body.get("pattern"):
            self._hub.apply_pattern(str(body["pattern"]))
        elif body.get("keys"):
            self._hub.apply_keys([str(key) for key in body["keys"]])
        return False
