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
from typing import Any, NoReturn, TypeVar

import grpc

from hftgate import tuning
from hftgate.grpcserver import RunningServer, ServiceBinding, abort_invalid_argument, create_server
from hftgate.security import (
    ServiceAuthInterceptor,
    SuiteSecret,
    SuiteSecurity,
    api_key_of,
    load_suite_security,
    principal_of,
)
from hftgate.v1 import admin_pb2_grpc, cache_pb2, cache_pb2_grpc, common_pb2
from services.cache import admin_server
from services.cache.admin import Admin, AuditLog
from services.cache.authz import (
    API_KEY_PREFIX,
    FLUSH,
    MAX_NAMESPACE_BYTES,
    AccountResolver,
    Denied,
    Namespace,
    Unauthenticated,
)
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
#: Longer x-api-key values are refused before they are hashed.
MAX_API_KEY_CHARS = 256
#: Bounds within which the scaler's optimiser may resize the near cache live (TuningService).
L1_MAX_ENTRIES_TUNABLE = (1024.0, 4_194_304.0)

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


def invalidation_to_proto(invalidation: Invalidation, sequence: int) -> cache_pb2.CacheInvalidation:
    return cache_pb2.CacheInvalidation(
        reason=_REASONS[invalidation.reason],
        keys=invalidation.keys,
        pattern=invalidation.pattern,
        flush_all=invalidation.flush_all,
        sequence=sequence,
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


#: CacheService methods an account may call with its API key (admin methods never).
API_KEY_METHODS: frozenset[str] = frozenset(
    f"/{SERVICE_NAME}/{name}"
    for name in (
        "Get",
        "GetMany",
        "Set",
        "SetMany",
        "Delete",
        "InvalidatePattern",
        "Stats",
        "WatchInvalidations",
    )
)


class CacheServicer(cache_pb2_grpc.CacheServiceServicer):
    """Translates CacheService calls to TieredCache calls, in the caller's namespace (authz.py).

    Keys and patterns are checked against the clients' limits as the client wrote them, then
    mapped to stored keys; the store's own limit leaves room for the longest namespace prefix,
    and admin, who names stored keys, has the store's limit.
    """

    def __init__(
        self,
        cache: TieredCache,
        secret: SuiteSecret,
        accounts: AccountResolver,
        limits: Limits,
        max_watcher_name_chars: int = 128,
    ) -> None:
        self._cache = cache
        self._secret = secret
        self._accounts = accounts
        self._client_limits = limits
        self._store_limits = cache.limits
        self._max_watcher_name = max_watcher_name_chars

    async def _namespace(self, context: grpc.aio.ServicerContext) -> Namespace:
        """The caller's namespace: its token's principal, else its API key's account."""
        principal = principal_of(context, self._secret)
        if principal is not None:
            return Namespace.service(principal)
        api_key = api_key_of(context)
        if not api_key or len(api_key) > MAX_API_KEY_CHARS:
            raise Unauthenticated("a service token or a valid API key (x-api-key) is required")
        return Namespace.account(await self._accounts.account_of(self._secret.api_key_hash(api_key)))

    def _limits_for(self, ns: Namespace) -> Limits:
        return self._store_limits if ns.is_admin else self._client_limits

    async def Get(self, request: cache_pb2.CacheGetRequest, context: grpc.aio.ServicerContext) -> Any:
        async def get() -> Any:
            ns = await self._namespace(context)
            self._limits_for(ns).check_key(request.key, "key")
            return lookup_to_proto(request.key, await self._cache.get(ns.read_key(request.key)))

        return await _guard(context, get())

    async def GetMany(self, request: cache_pb2.CacheGetManyRequest, context: grpc.aio.ServicerContext) -> Any:
        async def get_many() -> Any:
            ns = await self._namespace(context)
            keys = list(request.keys)
            self._limits_for(ns).check_batch(len(keys), "keys")
            for index, key in enumerate(keys):
                self._limits_for(ns).check_key(key, f"keys[{index}]")
            lookups = await self._cache.get_many([ns.read_key(key) for key in keys])
            return cache_pb2.CacheGetManyResponse(
                results=[lookup_to_proto(key, lookup) for key, lookup in zip(keys, lookups, strict=True)]
            )

        return await _guard(context, get_many())

    async def Set(self, request: cache_pb2.CacheSetRequest, context: grpc.aio.ServicerContext) -> Any:
        async def set_one() -> Any:
            ns = await self._namespace(context)
            limits = self._limits_for(ns)
            limits.check_key(request.key, "key")
            limits.check_value(request.value, "value")
            limits.check_ttl(request.ttl_ms, "ttl_ms")
            key = ns.write_key(request.key)
            outcome = await self._cache.set(key, request.value, request.ttl_ms, request.cache_only)
            return cache_pb2.CacheSetResponse(applied=outcome.applied, version=outcome.version)

        return await _guard(context, set_one())

    async def SetMany(self, request: cache_pb2.CacheSetManyRequest, context: grpc.aio.ServicerContext) -> Any:
        async def set_many() -> Any:
            ns = await self._namespace(context)
            self._limits_for(ns).check_batch(len(request.entries), "entries")
            for index, e in enumerate(request.entries):
                self._limits_for(ns).check_key(e.key, f"entries[{index}].key")
            # Every key is mapped (and refused) before anything is written: all or nothing.
            items = [SetItem(ns.write_key(e.key), e.value, e.ttl_ms, e.cache_only) for e in request.entries]
            outcomes = await self._cache.set_many(items)
            return cache_pb2.CacheSetManyResponse(
                results=[cache_pb2.CacheSetResponse(applied=o.applied, version=o.version) for o in outcomes]
            )

        return await _guard(context, set_many())

    async def Delete(self, request: cache_pb2.CacheDeleteRequest, context: grpc.aio.ServicerContext) -> Any:
        async def delete() -> Any:
            ns = await self._namespace(context)
            self._limits_for(ns).check_key(request.key, "key")
            return cache_pb2.CacheDeleteResponse(version=await self._cache.delete(ns.write_key(request.key)))

        return await _guard(context, delete())

    async def InvalidatePattern(
        self, request: cache_pb2.CacheInvalidatePatternRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async def invalidate() -> Any:
            ns = await self._namespace(context)
            self._limits_for(ns).check_pattern(request.pattern)
            pattern = ns.write_pattern(request.pattern)
            outcome = await self._cache.invalidate_pattern(pattern, request.keep_durable)
            return cache_pb2.CacheInvalidatePatternResponse(
                l1_removed=outcome.l1_removed,
                l2_removed=outcome.l2_removed,
                l3_removed=outcome.l3_removed,
                version=outcome.version,
            )

        return await _guard(context, invalidate())

    async def Stats(self, request: cache_pb2.CacheStatsRequest, context: grpc.aio.ServicerContext) -> Any:
        ns = await _guard(context, self._namespace(context))
        if ns.is_account:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{ns.who} may not read the service's statistics"
            )
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
        ns = await _guard(context, self._namespace(context))
        if len(request.watcher_name) > self._max_watcher_name:
            await _abort_bad_request(
                context,
                "watcher_name",
                f"is {len(request.watcher_name)} characters, more than the limit of {self._max_watcher_name}",
            )
        name = f"{request.watcher_name or context.peer()!r} ({ns.who})"
        hub = self._cache.hub
        watcher = hub.watch(name)
        log.info("near cache %s subscribed to invalidations", name)
        sequence = 0
        try:
            while True:
                invalidation = _visible(ns, await watcher.next())
                if invalidation is None:
                    continue
                sequence += 1  # numbered here: what the caller may not see leaves no gap
                yield invalidation_to_proto(invalidation, sequence)
        finally:
            hub.unwatch(watcher)
            log.info("near cache %s unsubscribed", name)


def _visible(ns: Namespace, invalidation: Invalidation) -> Invalidation | None:
    """``invalidation`` as the caller of namespace ``ns`` must apply it, or None if none of it."""
    if ns.is_admin or invalidation.flush_all:
        return invalidation
    if invalidation.pattern:
        pattern = ns.view_pattern(invalidation.pattern)
        if pattern is None:
            return None
        if pattern is FLUSH:
            return Invalidation(invalidation.reason, flush_all=True)
        assert isinstance(pattern, str)
        return Invalidation(invalidation.reason, pattern=pattern)
    keys = ns.view_keys(invalidation.keys)
    return Invalidation(invalidation.reason, keys=keys) if keys else None


async def _guard(context: grpc.aio.ServicerContext, call: Awaitable[T]) -> T:
    """Await a domain call, turning its errors into precise statuses."""
    try:
        return await call
    except InvalidArgument as exc:
        await _abort_bad_request(context, exc.field, exc.description)
    except StoreUnavailable as exc:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"the SQL store is unavailable: {exc}")
    except Unauthenticated as exc:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
    except Denied as exc:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
    raise AssertionError("unreachable: abort raises")


async def _abort_bad_request(
    context: grpc.aio.ServicerContext, field_name: str, description: str
) -> NoReturn:
    await abort_invalid_argument(context, field_name, description, message=f"{field_name}: {description}")


@dataclass
class CacheRunningServer(RunningServer):
    """A started cache-service replica: its server plus the levels it owns, stopped together."""

    cache: TieredCache | None = None
    admin: Admin | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def stop(self, grace_s: float) -> None:
        await super().stop(grace_s)
        for close in reversed(self.closers):
            try:
                await close()
            except Exception:
                log.exception("error while closing the cache service")


async def start(config: CacheConfig, security: SuiteSecurity | None = None) -> CacheRunningServer:
    """Build the levels from ``config``, start serving, and return the running replica.

    ``security`` (default: the "cache" principal's, from the environment) gives the suite
    secret that authenticates callers and the server's TLS.
    """
    closers: list[Callable[[], Awaitable[None]]] = []
    if security is None:
        security = load_suite_security("cache")
    try:
        return await _start(config, security, closers)
    except BaseException:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                await close()
        raise


async def _start(
    config: CacheConfig, security: SuiteSecurity, closers: list[Callable[[], Awaitable[None]]]
) -> CacheRunningServer:
    secret = security.secret
    state = config.state_path()
    redis_url = config.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(state / "redis", password=secret.redis_password())
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
        # Clients' keys are checked against max_key_bytes before their namespace is added.
        limits=Limits(
            max_key_bytes=config.max_key_bytes + MAX_NAMESPACE_BYTES,
            max_value_bytes=config.max_value_bytes,
            max_batch_keys=config.max_batch_keys,
        ),
        settings=TieredSettings(
            negative_ttl_ms=config.negative_ttl_ms,
            tombstone_ttl_ms=config.tombstone_ttl_ms,
            l1_max_ttl_ms=config.l1_max_ttl_ms,
            degraded_near_ttl_ms=config.degraded_near_ttl_ms,
            heal_max_keys=config.heal_max_keys,
            heal_clock_skew_ms=config.heal_clock_skew_ms,
        ),
    )
    purger = asyncio.get_running_loop().create_task(_purge_periodically(cache, config.sql_purge_interval_ms))

    async def stop_purger() -> None:
        purger.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purger

    closers.append(stop_purger)

    async def account_of(key_hash: str) -> str | None:
        lookup = await cache.get(API_KEY_PREFIX + key_hash)
        return lookup.value.decode("utf-8", "replace") if lookup.found else None

    accounts = AccountResolver(
        account_of, ttl_ms=config.api_key_cache_ms, max_entries=config.api_key_cache_max_entries
    )
    audit = AuditLog(sql.engine, config.admin_audit_table)
    await audit.start()
    admin = Admin(
        cache,
        sql,
        audit,
        secret,
        rotation_overlap_ms=config.key_rotation_overlap_ms,
        on_key_revoked=accounts.forget,
    )
    servicer = CacheServicer(
        cache,
        secret,
        accounts,
        Limits(
            max_key_bytes=config.max_key_bytes,
            max_value_bytes=config.max_value_bytes,
            max_batch_keys=config.max_batch_keys,
        ),
        max_watcher_name_chars=config.max_watcher_name_chars,
    )
    admin_servicer = admin_server.AdminServicer(admin, secret)
    tunables = []
    if l1 is not None:
        near_cache = l1
        tunables.append(
            tuning.TunableSetting(
                "l1_max_entries",
                L1_MAX_ENTRIES_TUNABLE[0],
                L1_MAX_ENTRIES_TUNABLE[1],
                get=lambda: near_cache.max_entries,
                set=lambda value: near_cache.resize(int(value)),
            )
        )
    tuning_servicer = tuning.TuningServicer("cache", tunables, secret)
    running = await create_server(
        config.address,
        [
            ServiceBinding(
                SERVICE_NAME,
                lambda server: cache_pb2_grpc.add_CacheServiceServicer_to_server(servicer, server),
            ),
            ServiceBinding(
                admin_server.SERVICE_NAME,
                lambda server: admin_pb2_grpc.add_AdminServiceServicer_to_server(admin_servicer, server),
            ),
            tuning.binding(tuning_servicer),
        ],
        tls=security.server_tls,
        auth=ServiceAuthInterceptor(secret, api_key_methods=API_KEY_METHODS),
    )
    log.info(
        "cache replica %s: Redis %s (%s invalidations), SQL %s, L1 %s, %s, callers authenticated",
        replica_id,
        "up" if l2.available else "DOWN (retrying)",
        listener.mode_in_use,
        sql.safe_url(),
        f"{config.l1_max_entries} entries" if l1 is not None else "off",
        "TLS" if security.server_tls is not None else "plaintext",
    )
    return CacheRunningServer(
        server=running.server,
        port=running.port,
        health=running.health,
        service_names=running.service_names,
        cache=cache,
        admin=admin,
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
