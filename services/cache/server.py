"""gRPC wiring of the cache service: proto <-> domain translation and start-up/shut-down.

The domain lives in tiered.py (and the levels it composes); this module only builds it
from a :class:`CacheConfig`, serves it, and turns domain errors into statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from hftgate.grpcserver import RunningServer, ServiceBinding, create_server
from hftgate.v1 import cache_pb2, cache_pb2_grpc, common_pb2
from services.cache.config import CacheConfig
from services.cache.embedded_redis import EmbeddedRedis
from services.cache.invalidation import Invalidation, InvalidationHub, RedisInvalidationListener
from services.cache.l1 import NearCache
from services.cache.l2_redis import RedisTier
from services.cache.l3_sql import SqlStore
from services.cache.model import InvalidArgument, Limits, StoreUnavailable
from services.cache.tiered import Level, Lookup, SetItem, TieredCache, TieredSettings

log = logging.getLogger(__name__)

SERVICE_NAME = "hftgate.v1.CacheService"
T = TypeVar("T")

_LEVELS = {
    Level.NONE: cache_pb2.CACHE_LEVEL_UNSPECIFIED,
    Level.L1: cache_pb2.CACHE_LEVEL_L1,
    Level.L2: cache_pb2.CACHE_LEVEL_L2,
    Level.L3: cache_pb2.CACHE_LEVEL_L3,
}
_REASONS = {
    "subscribed": cache_pb2.CACHE_INVALIDATION_REASON_SUBSCRIBED,
    "keys": cache_pb2.CACHE_INVALIDATION_REASON_KEYS,
    "pattern": cache_pb2.CACHE_INVALIDATION_REASON_PATTERN,
    "resync": cache_pb2.CACHE_INVALIDATION_REASON_RESYNC,
}


def lookup_to_proto(key: str, lookup: Lookup) -> cache_pb2.CacheGetResponse:
    response = cache_pb2.CacheGetResponse(
        found=lookup.found,
        served_from=_LEVELS[lookup.level],
        near_cache_ttl_ms=lookup.near_cache_ttl_ms,
    )
    if lookup.found:
        entry = response.entry
        entry.key = key
        entry.value = lookup.value
        entry.version = lookup.version
        entry.ttl_ms = lookup.ttl_ms
    return response


def invalidation_to_proto(invalidation: Invalidation) -> cache_pb2.CacheInvalidation:
    return cache_pb2.CacheInvalidation(
        reason=_REASONS[invalidation.reason],
        keys=invalidation.keys,
        pattern=invalidation.pattern,
        flush_all=invalidation.flush_all,
        sequence=invalidation.sequence,
    )


def latency_to_proto(summary: dict[str, float]) -> common_pb2.LatencySummary:
    return common_pb2.LatencySummary(
        count=int(summary["count"]),
        mean_ns=float(summary["mean"]),
        stdev_ns=float(summary["stdev"]),
        p50_ns=int(summary["p50"]),
        p90_ns=int(summary["p90"]),
        p99_ns=int(summary["p99"]),
        p99_9_ns=int(summary["p99_9"]),
        p99_99_ns=int(summary["p99_99"]),
        max_ns=int(summary["max"]),
    )


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    """Translates CacheService calls to TieredCache calls."""

    def __init__(self, cache: TieredCache) -> None:
        self._cache = cache

    async def Get(self, request: cache_pb2.CacheGetRequest, context: grpc.aio.ServicerContext) -> Any:
        lookup = await _guard(context, self._cache.get(request.key))
        return lookup_to_proto(request.key, lookup)

    async def GetMany(self, request: cache_pb2.CacheGetManyRequest, context: grpc.aio.ServicerContext) -> Any:
        keys = list(request.keys)
        lookups = await _guard(context, self._cache.get_many(keys))
        return cache_pb2.CacheGetManyResponse(
            results=[lookup_to_proto(key, lookup) for key, lookup in zip(keys, lookups, strict=True)]
        )

    async def Set(self, request: cache_pb2.CacheSetRequest, context: grpc.aio.ServicerContext) -> Any:
        outcome = await _guard(
            context, self._cache.set(request.key, request.value, request.ttl_ms, request.cache_only)
        )
        return cache_pb2.CacheSetResponse(applied=outcome.applied, version=outcome.version)

    async def SetMany(self, request: cache_pb2.CacheSetManyRequest, context: grpc.aio.ServicerContext) -> Any:
        items = [SetItem(e.key, e.value, e.ttl_ms, e.cache_only) for e in request.entries]
        outcomes = await _guard(context, self._cache.set_many(items))
        return cache_pb2.CacheSetManyResponse(
            results=[cache_pb2.CacheSetResponse(applied=o.applied, version=o.version) for o in outcomes]
        )

    async def Delete(self, request: cache_pb2.CacheDeleteRequest, context: grpc.aio.ServicerContext) -> Any:
        version = await _guard(context, self._cache.delete(request.key))
        return cache_pb2.CacheDeleteResponse(version=version)

    async def InvalidatePattern(
        self, request: cache_pb2.CacheInvalidatePatternRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        outcome = await _guard(context, self._cache.invalidate_pattern(request.pattern, request.keep_durable))
        return cache_pb2.CacheInvalidatePatternResponse(
            l1_removed=outcome.l1_removed,
            l2_removed=outcome.l2_removed,
            l3_removed=outcome.l3_removed,
            version=outcome.version,
        )

    async def Stats(self, request: cache_pb2.CacheStatsRequest, context: grpc.aio.ServicerContext) -> Any:
        stats = self._cache.stats()
        return cache_pb2.CacheStatsResponse(
            levels=[
                cache_pb2.CacheLevelStats(
                    level=_LEVELS[level.level],
                    hits=level.hits,
                    misses=level.misses,
                    negative_hits=level.negative_hits,
                    hit_ratio=level.hit_ratio,
                    evictions=level.evictions,
                    entries=level.entries,
                    bytes=level.bytes,
                    errors=level.errors,
                    lookup_latency=latency_to_proto(level.latency),
                )
                for level in stats.levels
            ],
            single_flight_joins=stats.single_flight_joins,
            stale_set_backs_refused=stats.stale_set_backs_refused,
            invalidations_received=stats.invalidations_received,
            invalidation_watchers=stats.invalidation_watchers,
            redis_available=stats.redis_available,
            invalidations_live=stats.invalidations_live,
            invalidation_mode=stats.invalidation_mode,
        )

    async def WatchInvalidations(
        self, request: cache_pb2.CacheWatchInvalidationsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[cache_pb2.CacheInvalidation]:
        hub = self._cache.hub
        name = request.watcher_name or context.peer()
        watcher = hub.watch(name)
        log.info("near cache %r subscribed to invalidations", name)
        try:
            while True:
                yield invalidation_to_proto(await watcher.next())
        finally:
            hub.unwatch(watcher)
            log.info("near cache %r unsubscribed", name)


async def _guard(context: grpc.aio.ServicerContext, call: Awaitable[T]) -> T:
    """Await a domain call, turning its errors into precise statuses."""
    try:
        return await call
    except InvalidArgument as exc:
        await _abort_bad_request(context, exc.field, exc.description)
    except StoreUnavailable as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"the SQL store is unavailable: {exc}")
    raise AssertionError("unreachable: abort raises")


async def _abort_bad_request(context: grpc.aio.ServicerContext, field_name: str, description: str) -> None:
    """INVALID_ARGUMENT with a google.rpc.BadRequest naming the field, so a client can fix it."""
    detail = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=field_name, description=description)
        ]
    )
    packed = any_pb2.Any()
    packed.Pack(detail)
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=f"{field_name}: {description}", details=[packed]
    )
    await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]


@dataclass
class CacheRunningServer(RunningServer):
    """A started cache-service replica: its server plus the levels it owns, stopped together."""

    cache: TieredCache | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def stop(self, grace_s: float) -> None:
        await super().stop(grace_s)
        for close in reversed(self.closers):
            try:
                await close()
            except Exception:
                log.exception("error while closing the cache service")


async def start(config: CacheConfig) -> CacheRunningServer:
    """Build the levels from ``config``, start serving, and return the running replica."""
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        return await _start(config, closers)
    except BaseException:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                await close()
        raise


async def _start(config: CacheConfig, closers: list[Callable[[], Awaitable[None]]]) -> CacheRunningServer:
    state = config.state_path()
    redis_url = config.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(state / "redis")
        await asyncio.to_thread(embedded.start)
        closers.append(lambda: asyncio.to_thread(embedded.stop))
        redis_url = embedded.url
    if not config.database_url:
        state.mkdir(parents=True, exist_ok=True)
    sql = SqlStore(config.sql_url(), table_name=config.sql_table)
    await sql.start()
    closers.append(sql.close)

    l1 = NearCache(config.l1_max_entries, config.l1_max_bytes) if config.l1_max_entries > 0 else None
    hub = InvalidationHub(l1, max_queued_per_watcher=config.max_queued_invalidations_per_watcher)
    l2 = RedisTier(
        redis_url,
        key_prefix=config.key_prefix,
        max_connections=config.redis_max_connections,
        timeout_ms=config.redis_timeout_ms,
        backoff_initial_ms=config.redis_backoff_initial_ms,
        backoff_max_ms=config.redis_backoff_max_ms,
        error_log_interval_ms=config.error_log_interval_ms,
    )
    await l2.start()
    closers.append(l2.close)
    replica_id = config.replica_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    channel = l2.meta_prefix + "invalidations"
    listener = RedisInvalidationListener(
        redis_url,
        key_prefix=config.key_prefix,
        channel=channel,
        hub=hub,
        replica_id=replica_id,
        mode=config.invalidation_mode,
        backoff_initial_ms=config.redis_backoff_initial_ms,
        backoff_max_ms=config.redis_backoff_max_ms,
        error_log_interval_ms=config.error_log_interval_ms,
    )
    await listener.start()
    closers.append(listener.close)
    if listener.mode_in_use == "tracking":
        l2.promote_through(listener.untracked_connection)
    cache = TieredCache(
        l1=l1,
        l2=l2,
        l3=sql,
        hub=hub,
        replica_id=replica_id,
        invalidation_channel=channel,
        invalidation_mode=lambda: listener.mode_in_use,
        limits=Limits(
            max_key_bytes=config.max_key_bytes,
            max_value_bytes=config.max_value_bytes,
            max_batch_keys=config.max_batch_keys,
        ),
        settings=TieredSettings(
            negative_ttl_ms=config.negative_ttl_ms,
            tombstone_ttl_ms=config.tombstone_ttl_ms,
            l1_max_ttl_ms=config.l1_max_ttl_ms,
            degraded_near_ttl_ms=config.degraded_near_ttl_ms,
        ),
    )
    purger = asyncio.get_running_loop().create_task(_purge_periodically(cache, config.sql_purge_interval_ms))

    async def stop_purger() -> None:
        purger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purger

    closers.append(stop_purger)
    servicer = CacheServicer(cache)
    running = await create_server(
        config.address,
        [
            ServiceBinding(
                SERVICE_NAME,
                lambda server: cache_pb2_grpc.add_CacheServiceServicer_to_server(servicer, server),
            )
        ],
    )
    log.info(
        "cache replica %s: Redis %s (%s invalidations), SQL %s, L1 %s",
        replica_id,
        "up" if l2.available else "DOWN (retrying)",
        listener.mode_in_use,
        sql.safe_url(),
        f"{config.l1_max_entries} entries" if l1 is not None else "off",
    )
    return CacheRunningServer(
        server=running.server,
        port=running.port,
        health=running.health,
        service_names=running.service_names,
        cache=cache,
        closers=closers,
    )


async def _purge_periodically(cache: TieredCache, interval_ms: int) -> None:
    while True:
        await asyncio.sleep(interval_ms / 1000)
        try:
            purged = await cache.purge_sql()
        except StoreUnavailable as exc:
            log.warning("SQL purge failed: %s", exc)
        else:
            if purged:
                log.info("purged %d expired rows and old tombstones from SQL", purged)
