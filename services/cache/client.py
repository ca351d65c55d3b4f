"""The client other services embed: a near cache (L1) in front of the cache service.

    async with CacheClient("127.0.0.1:50053", watcher_name="execution-1") as cache:
        raw = await cache.get("instrument:BTCUSDT")      # bytes, or None if absent

Reads are answered from the in-process near cache (the same W-TinyLFU code as the
service's L1) when it can; a miss calls the service, concurrent misses for one key share
one call, and the answer (a miss included) is kept for next time. A background stream
(WatchInvalidations) removes whatever changes anywhere; the client caches only while
that stream is up, since without it changes could go unnoticed. When the stream drops,
the near cache is emptied and the stream re-opened with backoff; the service's first
message on every stream is a flush, after which caching resumes. Answers that arrive
while the service cannot promise every invalidation carry a short near-cache TTL, which
the client honours.

Every call (the invalidation stream included) carries ``credentials``' metadata (a service
token, or an account's API key) and the channel uses their TLS, if any: the service refuses
calls without them (UNAUTHENTICATED) and confines each caller to its namespace
(PERMISSION_DENIED for reference rows it may not touch).

Every call to the service is a CLIENT span (:class:`hftgate.telemetry.ClientSpan`) whose W3C
``traceparent`` goes with the credentials' metadata, so the service's span of the call joins
the caller's trace (execution's SubmitOrder -> cache Get). Attributes: the key's namespace
(``hftgate.cache.key_prefix``, e.g. ``instrument:``; never the key itself, which may be an API
key's hash), the batch size, and for reads whether the key was found and which level answered.
Near-cache hits make no call and no span. The invalidation stream carries no trace: it lives
as long as the client.

Use one client per event loop. RPC errors surface as ``grpc.aio.AioRpcError``
(INVALID_ARGUMENT for bad input, with a BadRequest detail; UNAVAILABLE when the service
or its SQL store cannot be reached).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

import grpc

from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.security import ClientCredentials
from hftgate.telemetry import ClientSpan
from hftgate.v1 import cache_pb2, cache_pb2_grpc
from services.cache.errorlog import RateLimitedLog
from services.cache.l1 import NearCache, NearCacheStats

log = logging.getLogger(__name__)

_SERVICE = "/hftgate.v1.CacheService/"
GET, GET_MANY, SET, SET_MANY = _SERVICE + "Get", _SERVICE + "GetMany", _SERVICE + "Set", _SERVICE + "SetMany"
DELETE, INVALIDATE_PATTERN, STATS = _SERVICE + "Delete", _SERVICE + "InvalidatePattern", _SERVICE + "Stats"
_KEY_PREFIX = "hftgate.cache.key_prefix"
_BATCH_SIZE = "hftgate.batch_size"


def _key_attributes(key: str) -> dict[str, str]:
    """The span attributes of a call about ``key``: its namespace only (see the module docstring)."""
    prefix, colon, _ = key.partition(":")
    return {_KEY_PREFIX: prefix + colon} if colon else {}


def _read_result(call: ClientSpan, response: cache_pb2.CacheGetResponse) -> None:
    call.set("hftgate.cache.found", response.found)
    if response.found:
        call.set("hftgate.cache.level", int(response.served_from))


@dataclass(frozen=True, slots=True)
class CachedValue:
    """A value with its version and the CacheLevel that answered (``level``).

    ``ttl_ms``: how long the answer stays valid, 0 = no expiry. An answer from the near cache
    (level 1 on the client) gives the time it stays held there, never more than the value's own.
    """

    value: bytes
    version: int
    ttl_ms: int = 0
    level: int = 0


@dataclass(frozen=True, slots=True)
class SetResult:
    """``applied`` False: a newer version (``version``) was already stored."""

    applied: bool
    version: int


class CacheClient:
    """A near cache plus calls to the cache service at ``target`` (``host:port``)."""

    def __init__(
        self,
        target: str,
        *,
        watcher_name: str = "",
        near_cache_max_entries: int = 10_000,
        near_cache_max_bytes: int = 64 * 1024 * 1024,
        near_cache_max_ttl_ms: int = 300_000,
        negative_ttl_ms: int = 1_000,
        timeout_ms: int = 5_000,
        reconnect_backoff_initial_ms: int = 50,
        reconnect_backoff_max_ms: int = 2_000,
        credentials: ClientCredentials | None = None,
    ) -> None:
        self.target = target
        self.credentials = credentials
        self._metadata = credentials.metadata if credentials is not None else None
        self.watcher_name = watcher_name
        self.near_cache = NearCache(near_cache_max_entries, near_cache_max_bytes)
        self._max_ttl_ms = near_cache_max_ttl_ms
        self._negative_ttl_ms = negative_ttl_ms
        self._timeout_s = timeout_ms / 1000
        self._backoff_initial_s = reconnect_backoff_initial_ms / 1000
        self._backoff_max_s = reconnect_backoff_max_ms / 1000
        self._channel: grpc.aio.Channel | None = None
        self._stub: cache_pb2_grpc.CacheServiceStub | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._live = asyncio.Event()
        self._inflight: dict[str, asyncio.Task[CachedValue | None]] = {}
        self._error_log = RateLimitedLog(log, 10_000)
        self.invalidations_applied = 0
        self.stream_restarts = 0

    # --- lifecycle ---------------------------------------------------------------------
    async def start(self, wait_s: float = 5.0) -> None:
        """Open the channel and the invalidation stream; wait up to ``wait_s`` for it to be live."""
        if self.credentials is not None:
            self._channel = self.credentials.open_channel(self.target, CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self._stub = cache_pb2_grpc.CacheServiceStub(self._channel)
        self._watch_task = asyncio.get_running_loop().create_task(
            self._watch_forever(), name="cache-client-watch"
        )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._live.wait(), wait_s)

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
        if self._channel is not None:
            await self._channel.close(None)
        self.near_cache.clear()

    async def __aenter__(self) -> CacheClient:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def live(self) -> bool:
        """True while invalidations stream in, i.e. while the near cache may cache."""
        return self._live.is_set()

    async def wait_live(self, timeout_s: float) -> bool:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._live.wait(), timeout_s)
        return self.live

    # --- reads -------------------------------------------------------------------------
    async def get(self, key: str) -> bytes | None:
        """The value of ``key``, or None if it has none."""
        entry = self.near_cache.get(key)
        if entry is not None:
            return None if entry.negative else entry.value
        found = await self._fetch(key)
        return None if found is None else found.value

    async def get_entry(self, key: str, *, near_cache: bool = True) -> CachedValue | None:
        """The value of ``key`` with its version; ``near_cache=False`` always asks the service."""
        if near_cache:
            entry = self.near_cache.get(key)
            if entry is not None:
                if entry.negative:
                    return None
                # The time it stays in the near cache: never past the value's own TTL (the near
                # cache holds a value at most that long), so a safe lower bound; 0 would say "never".
                ttl_ms = self.near_cache.ttl_left_ms(entry)
                return CachedValue(entry.value, entry.version, ttl_ms=ttl_ms, level=1)
            return await self._fetch(key)
        with ClientSpan(GET, self.target, self._metadata, _key_attributes(key)) as call:
            response = await self._service().Get(
                cache_pb2.CacheGetRequest(key=key), timeout=self._timeout_s, metadata=call.metadata
            )
            _read_result(call, response)
        return _from_proto(response)

    async def get_many(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Values of the ``keys`` that have one (absent keys are left out)."""
        values: dict[str, bytes] = {}
        missing: list[str] = []
        for key in dict.fromkeys(keys):
            entry = self.near_cache.get(key)
            if entry is None:
                missing.append(key)
            elif not entry.negative:
                values[key] = entry.value
        if missing:
            token = self.near_cache.load_token()
            live = self.live
            with ClientSpan(GET_MANY, self.target, self._metadata, {_BATCH_SIZE: len(missing)}) as call:
                response = await self._service().GetMany(
                    cache_pb2.CacheGetManyRequest(keys=missing),
                    timeout=self._timeout_s,
                    metadata=call.metadata,
                )
                call.set("hftgate.cache.found", sum(1 for result in response.results if result.found))
            for key, result in zip(missing, response.results, strict=True):
                found = _from_proto(result)
                if live:
                    self._keep(key, found, result.near_cache_ttl_ms, token)
                if found is not None:
                    values[key] = found.value
        return values

    async def _fetch(self, key: str) -> CachedValue | None:
        """One Get per key at a time, however many callers miss on it together."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _load(self, key: str) -> CachedValue | None:
        token = self.near_cache.load_token()
        live = self.live
        with ClientSpan(GET, self.target, self._metadata, _key_attributes(key)) as call:
            response = await self._service().Get(
                cache_pb2.CacheGetRequest(key=key), timeout=self._timeout_s, metadata=call.metadata
            )
            _read_result(call, response)
        found = _from_proto(response)
        if live:
            self._keep(key, found, response.near_cache_ttl_ms, token)
        return found

    def _keep(self, key: str, found: CachedValue | None, near_ttl_ms: int, token: int) -> None:
        """Cache an answer, unless an invalidation (or a stream restart) passed it meanwhile."""
        if found is None:
            ttl = _min_ttl(self._negative_ttl_ms, near_ttl_ms)
            self.near_cache.put(key, b"", negative=True, ttl_ms=ttl, token=token)
        else:
            ttl = _min_ttl(found.ttl_ms, near_ttl_ms, self._max_ttl_ms)
            self.near_cache.put(key, found.value, version=found.version, ttl_ms=ttl, token=token)

    # --- writes ------------------------------------------------------------------------
    async def set(self, key: str, value: bytes, *, ttl_ms: int = 0, cache_only: bool = False) -> SetResult:
        """Write ``key`` through every level (``cache_only``: not to SQL)."""
        token = self.near_cache.load_token()
        live = self.live
        with ClientSpan(SET, self.target, self._metadata, _key_attributes(key)) as call:
            response = await self._service().Set(
                cache_pb2.CacheSetRequest(key=key, value=value, ttl_ms=ttl_ms, cache_only=cache_only),
                timeout=self._timeout_s,
                metadata=call.metadata,
            )
            call.set("hftgate.cache.applied", response.applied)
        if response.applied and live:
            self._keep(key, CachedValue(value, response.version, ttl_ms), 0, token)
        else:
            self.near_cache.delete(key)
        return SetResult(response.applied, response.version)

    async def set_many(
        self, items: Iterable[tuple[str, bytes]], *, ttl_ms: int = 0, cache_only: bool = False
    ) -> list[SetResult]:
        """Write many keys in one call; results in order."""
        requests = [
            cache_pb2.CacheSetRequest(key=key, value=value, ttl_ms=ttl_ms, cache_only=cache_only)
            for key, value in items
        ]
        with ClientSpan(SET_MANY, self.target, self._metadata, {_BATCH_SIZE: len(requests)}) as call:
            response = await self._service().SetMany(
                cache_pb2.CacheSetManyRequest(entries=requests),
                timeout=self._timeout_s,
                metadata=call.metadata,
            )
        for request in requests:
            self.near_cache.delete(request.key)
        return [SetResult(r.applied, r.version) for r in response.results]

    async def delete(self, key: str) -> int:
        """Delete ``key`` everywhere; returns the delete's version."""
        self.near_cache.delete(key)
        with ClientSpan(DELETE, self.target, self._metadata, _key_attributes(key)) as call:
            response = await self._service().Delete(
                cache_pb2.CacheDeleteRequest(key=key), timeout=self._timeout_s, metadata=call.metadata
            )
        self.near_cache.delete(key)
        return int(response.version)

    async def invalidate_pattern(
        self, pattern: str, *, keep_durable: bool = False
    ) -> cache_pb2.CacheInvalidatePatternResponse:
        """Drop every key matching the glob everywhere (``keep_durable``: not from SQL)."""
        self.near_cache.delete_matching(pattern)
        with ClientSpan(INVALIDATE_PATTERN, self.target, self._metadata, _key_attributes(pattern)) as call:
            response: cache_pb2.CacheInvalidatePatternResponse = await self._service().InvalidatePattern(
                cache_pb2.CacheInvalidatePatternRequest(pattern=pattern, keep_durable=keep_durable),
                timeout=self._timeout_s,
                metadata=call.metadata,
            )
        return response

    async def service_stats(self) -> cache_pb2.CacheStatsResponse:
        """The service replica's counters per level."""
        with ClientSpan(STATS, self.target, self._metadata) as call:
            response: cache_pb2.CacheStatsResponse = await self._service().Stats(
                cache_pb2.CacheStatsRequest(), timeout=self._timeout_s, metadata=call.metadata
            )
        return response

    def near_cache_stats(self) -> NearCacheStats:
        return self.near_cache.stats()

    # --- invalidations -----------------------------------------------------------------
    async def _watch_forever(self) -> None:
        delay = self._backoff_initial_s
        while True:
            expected = 1
            try:
                call = self._service().WatchInvalidations(
                    cache_pb2.CacheWatchInvalidationsRequest(watcher_name=self.watcher_name),
                    metadata=self._metadata,
                )
                async for message in call:
                    if message.sequence != expected:  # never expected: a gap means we missed some
                        log.warning(
                            "invalidation stream skipped from %d to %d: flushing", expected, message.sequence
                        )
                        self.near_cache.clear()
                    expected = message.sequence + 1
                    self._apply(message)
                    delay = self._backoff_initial_s
            except grpc.aio.AioRpcError as exc:
                self._error_log.warning(
                    "invalidation stream from %s lost (%s); re-opening", self.target, exc.code()
                )
            self._live.clear()
            self.near_cache.clear()
            self.stream_restarts += 1
            await asyncio.sleep(delay)
            delay = min(self._backoff_max_s, delay * 2)

    def _apply(self, message: cache_pb2.CacheInvalidation) -> None:
        self.invalidations_applied += 1
        if message.flush_all:
            self.near_cache.clear()
        if message.pattern:
            self.near_cache.delete_matching(message.pattern)
        for key in message.keys:
            self.near_cache.delete(key)
        if message.reason == cache_pb2.CACHE_INVALIDATION_REASON_SUBSCRIBED:
            self._live.set()

    def _service(self) -> cache_pb2_grpc.CacheServiceStub:
        if self._stub is None:
            raise RuntimeError(
                "CacheClient is not started: use `async with CacheClient(...)` or await start()"
            )
        return self._stub


def _from_proto(response: cache_pb2.CacheGetResponse) -> CachedValue | None:
    if not response.found:
        return None
    entry = response.entry
    return CachedValue(entry.value, entry.version, entry.ttl_ms, int(response.served_from))


def _min_ttl(*ttls_ms: int) -> int:
    positive = [ttl for ttl in ttls_ms if ttl > 0]
    return min(positive) if positive else 0
