"""The gateway's composition root: shard map, router, account check and upstream channels.

:func:`build` reads (or first stores) the shard map and refuses to start, saying why, when it
cannot; it opens the reference data the API keys are checked against, and starts the task that
follows the stored map's epoch. server.py only wires RPCs to the :class:`GatewayApp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hftgate import security
from hftgate.shardmap import ShardMap, ShardMapError, ShardMapStore, ShardMapUnavailable
from services.cache.client import CacheClient
from services.cache.l3_sql import SqlStore
from services.execution.reference import (
    NOT_HELD,
    AccountSpec,
    CacheSource,
    ReferenceData,
    ReferenceSource,
    SqlSource,
)
from services.gateway.balancer import Balancer
from services.gateway.config import GatewayConfig
from services.gateway.ratelimit import TokenBuckets
from services.gateway.replicas import ReplicaPool, ReplicaSource, ScalerReplicas, StaticReplicas
from services.gateway.routing import PRINCIPAL, Router
from services.gateway.stateless import CACHE_SERVICE, MARKETDATA_SERVICE
from services.gateway.upstream import UpstreamPool

log = logging.getLogger(__name__)


class StartError(RuntimeError):
    """The gateway cannot start: the message says why (the shard map, the reference store)."""


class GatewayApp:
    """Everything behind the gateway's RPCs."""

    def __init__(
        self,
        config: GatewayConfig,
        suite: security.SuiteSecurity,
        store: ShardMapStore,
        router: Router,
        reference: ReferenceData,
        upstreams: UpstreamPool,
    ) -> None:
        self.config = config
        self.suite = suite
        self.store = store
        self.router = router
        self.reference = reference
        self.upstreams = upstreams
        self._changed = asyncio.Condition()
        self._follower: asyncio.Task[None] | None = None
        self._closers: list[Callable[[], Awaitable[Any]]] = []
        #: The balanced stateless services, by full service name (only those with replicas).
        self.pools: dict[str, ReplicaPool] = {}
        #: Per-account order rate limits (None: off, rate_limit_orders_per_s = 0).
        self.rate_limits: TokenBuckets | None = (
            TokenBuckets(
                config.rate_limit_orders_per_s, config.rate_limit_burst_orders, config.rate_limit_max_accounts
            )
            if config.rate_limit_orders_per_s > 0
            else None
        )
        #: Calls refused by the rate limit (streams are paced, never counted here).
        self.rate_limited_calls = 0

    # --- the map -------------------------------------------------------------------------------
    @property
    def shard_map(self) -> ShardMap:
        return self.router.map

    async def install(self, shard_map: ShardMap) -> bool:
        """Route by ``shard_map`` from now on if it is newer; wakes every map watcher."""
        if not self.router.install(shard_map):
            return False
        log.info("routing by shard map %r", shard_map)
        async with self._changed:
            self._changed.notify_all()
        return True

    async def next_map(self, known_epoch: int) -> ShardMap:
        """The current map once its epoch is above ``known_epoch`` (waits for a newer one)."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.router.map.epoch > known_epoch)
            return self.router.map

    def start_following(self) -> None:
        async def follow() -> None:
            async for found in self.store.watch(self.config.shard_map_poll_ms, self.router.map.epoch):
                await self.install(found)

        self._follower = asyncio.get_running_loop().create_task(follow(), name="shard-map-follow")

    # --- accounts --------------------------------------------------------------------------------
    async def account_for_key(self, api_key: str) -> AccountSpec | None:
        """The account owning ``api_key`` (None: unknown). Raises on a reference store failure."""
        held = self.reference.account_for_key_held(api_key)
        if held is not NOT_HELD:
            return held  # type: ignore[return-value]
        return await self.reference.account_for_key(api_key)

    # --- stateless services ------------------------------------------------------------------
    async def add_pool(self, service: str, label: str, source: ReplicaSource) -> ReplicaPool:
        """Balance ``service`` over the replicas ``source`` names (started before it returns)."""
        config = self.config
        pool = ReplicaPool(
            service,
            label,
            source,
            self.suite.credentials,
            Balancer(config.balancer, decay_ms=config.balancer_decay_ms, eject_ms=config.balancer_eject_ms),
            health_retry_ms=config.health_retry_ms,
        )
        self.pools[service] = pool
        await pool.start()
        return pool

    async def close(self) -> None:
        for pool in self.pools.values():
            await pool.close()
        self.pools.clear()
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await self.upstreams.close()
        await self.reference.close()
        await self.store.close()


async def _reference_source(config: GatewayConfig, suite: security.SuiteSecurity) -> ReferenceSource:
    if config.cache_address:
        # As "gateway": the cache lets it read API-key and account rows, never write them.
        client = CacheClient(config.cache_address, watcher_name="gateway", credentials=suite.credentials)
        await client.start()
        return CacheSource(client)
    url = config.reference_url()
    if not config.reference_database_url and "sqlite" in url:
        Path(url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    store = SqlStore(url, table_name=config.reference_table)
    await store.start()
    return SqlSource(store, config.reference_local_ttl_ms)


async def open_shard_map(config: GatewayConfig) -> tuple[ShardMapStore, ShardMap]:
    """The stored map (stored first from the config when there is none); StartError says why not."""
    store = ShardMapStore(
        config.shard_map_url(), table_name=config.shard_map_table, name=config.shard_map_name
    )
    try:
        await store.start()
        stored = await store.load()
        if stored is None:
            stored = await store.create(config.initial_map())
            log.info("no shard map was stored: stored %r", stored)
        elif config.execution_shards:
            wanted = config.initial_map().shards
            if wanted != stored.shards:
                log.warning(
                    "HFTGATE_GATEWAY_EXECUTION_SHARDS differs from the stored shard map (epoch %d): "
                    "routing by the stored map %r",
                    stored.epoch,
                    stored,
                )
    except (ShardMapUnavailable, ShardMapError) as exc:
        await store.close()
        raise StartError(f"cannot read the shard map: {exc}") from None
    return store, stored


async def build(config: GatewayConfig, suite: security.SuiteSecurity | None = None) -> GatewayApp:
    """The gateway's state, ready to serve; raises :class:`StartError` when it cannot be."""
    suite = suite or security.load_suite_security(PRINCIPAL)
    store, stored = await open_shard_map(config)
    try:
        source = await _reference_source(config, suite)
    except Exception as exc:
        await store.close()
        raise StartError(f"cannot open the reference data (API keys): {exc}") from None
    app = GatewayApp(
        config,
        suite,
        store,
        Router(stored, config.max_routes),
        ReferenceData(source, suite.secret),
        UpstreamPool(suite.credentials),
    )
    app.start_following()
    try:
        for service, label, static in (
            (MARKETDATA_SERVICE, "marketdata", config.marketdata_replicas),
            (CACHE_SERVICE, "cache", config.cache_replicas),
        ):
            if config.scaler_address:
                # The static list until the scaler answers, then its replicas on top of it.
                replicas: ReplicaSource = ScalerReplicas(
                    label, config.scaler_address, suite.credentials, static
                )
                await app.add_pool(service, label, replicas)
            elif static:
                await app.add_pool(service, label, StaticReplicas(static))
    except BaseException:
        await app.close()
        raise
    return app
