"""HAProxy that follows the shard map and the replica sets: :class:`HaproxyRunner`.

It runs HAProxy in master-worker mode (:class:`~services.gateway.haproxy.HaproxyProcess` with
``master_worker=True``) on the configuration generated from the stored shard map and the replica
sets, then follows both:

* a new map epoch (:meth:`hftgate.shardmap.ShardMapStore.watch`) that names the same shards (a pin
  moved, a symbol added) is applied through the runtime API, entry by entry, to the running worker:
  the next call with that symbol goes to its new owner, and no connection is touched. The map file
  is rewritten too, for the next reload;
* a map with other shards, or a replica set with other addresses, needs other backends: the
  configuration is rewritten, checked, and the master is told to reload (SIGUSR2). The new worker
  takes the listening sockets; the old one answers what it has in flight, then closes its idle
  HTTP/2 connections (GOAWAY) so that clients reconnect to the new one. A configuration HAProxy
  refuses leaves the running one in place (logged, tried again on the next change);
* a replica that turns draining, or back, is set to ``drain`` / ``ready`` through the runtime API
  (again after every reload, which starts every server ready).

Changes are applied one at a time, in the order they come. Replica sets come from the gateway's
:class:`~services.gateway.replicas.ReplicaSource` (a static list, or the scaler's WatchReplicas).

``python -m services.gateway.haproxy_runner`` runs it beside the Python gateway until SIGTERM,
configured by ``HFTGATE_HAPROXY_*`` variables (:class:`HaproxyRunnerConfig`); the shard map is the
suite's (``HFTGATE_SHARD_MAP_DATABASE_URL``, else ``DATABASE_URL``, else SQLite under the state
directory), and it must be stored already (the shards and the gateway store it).

Security: HAProxy never names an account. The generated frontend deletes ``x-hftgate-account``
from every request and forwards the client's own ``x-api-key``, which the shard checks itself; a
shard believes an account header only next to the gateway's service token, which HAProxy does not
have. A client that goes through HAProxy is exactly as trusted as one that calls the shard directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from hftgate import shardmap
from hftgate.config import default_state_dir, describe, from_env
from hftgate.shardmap import ShardMap, ShardMapStore
from services.gateway.haproxy import HaproxyError, HaproxyPlan, HaproxyProcess
from services.gateway.replicas import ReplicaSource, ReplicaSpec, ScalerReplicas, StaticReplicas

log = logging.getLogger(__name__)

#: The replica sets the runner follows, by HAProxy backend name.
REPLICA_BACKENDS = ("marketdata", "cache")


def _addresses(specs: Sequence[ReplicaSpec]) -> tuple[str, ...]:
    return tuple(spec.address for spec in specs)


class HaproxyRunner:
    """HAProxy on ``plan`` (its ``shard_map`` the map to start from) under ``folder``, following
    ``store`` every ``map_poll_ms`` and the ``marketdata`` / ``cache`` replica sources."""

    def __init__(
        self,
        plan: HaproxyPlan,
        folder: Path,
        store: ShardMapStore,
        *,
        map_poll_ms: int = 200,
        marketdata: ReplicaSource | None = None,
        cache: ReplicaSource | None = None,
    ) -> None:
        if map_poll_ms < 1:
            raise ValueError(f"map_poll_ms must be at least 1, not {map_poll_ms}")
        self.process = HaproxyProcess(plan, folder, master_worker=True)
        self.store = store
        self.map_poll_ms = map_poll_ms
        self.sources: dict[str, ReplicaSource] = {}
        if marketdata is not None:
            self.sources["marketdata"] = marketdata
        if cache is not None:
            self.sources["cache"] = cache
        #: Replicas named draining by their source, per backend.
        self.draining: dict[str, frozenset[str]] = {name: frozenset() for name in REPLICA_BACKENDS}
        #: Graceful reloads done, and map changes applied through the runtime API.
        self.reloads = 0
        self.live_updates = 0
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def plan(self) -> HaproxyPlan:
        return self.process.plan

    @property
    def epoch(self) -> int:
        """The epoch of the shard map HAProxy routes by now."""
        return self.plan.shard_map.epoch

    async def start(self) -> HaproxyRunner:
        await self.process.astart()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._follow_map(), name="haproxy-shard-map"))
        for backend, source in self.sources.items():
            self._tasks.append(
                loop.create_task(self._follow_replicas(backend, source), name=f"haproxy-{backend}")
            )
        return self

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await self.process.astop()

    async def __aenter__(self) -> HaproxyRunner:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_epoch(self, epoch: int, timeout_s: float = 10.0) -> None:
        """Until HAProxy routes by a map of at least ``epoch`` (TimeoutError after ``timeout_s``)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: self.epoch >= epoch), timeout_s)

    # --- following ---------------------------------------------------------------------------------
    async def _follow_map(self) -> None:
        async for shard_map in self.store.watch(self.map_poll_ms, known_epoch=self.epoch):
            try:
                await self.apply_map(shard_map)
            except (HaproxyError, OSError) as exc:
                log.error(
                    "haproxy keeps the map of epoch %d: epoch %d failed: %s", self.epoch, shard_map.epoch, exc
                )

    async def _follow_replicas(self, backend: str, source: ReplicaSource) -> None:
        async for specs in source.sets():
            try:
                await self.apply_replicas(backend, specs)
            except (HaproxyError, OSError) as exc:
                log.error("haproxy keeps its %s replicas: %s", backend, exc)

    async def apply_map(self, shard_map: ShardMap) -> None:
        """Route by ``shard_map`` from now on (ignored when not newer than the current one)."""
        async with self._lock:
            current = self.plan
            if shard_map.epoch <= current.shard_map.epoch:
                return
            if shard_map.shards == current.shard_map.shards:
                await asyncio.to_thread(self.process.set_symbols, shard_map, current.symbols)
                self.live_updates += 1
                log.info("haproxy routes by shard map epoch %d (runtime API)", shard_map.epoch)
            else:
                await self._reload(replace(current, shard_map=shard_map))
                log.info("haproxy reloaded for shard map epoch %d: %r", shard_map.epoch, shard_map)
        await self._notify()

    async def apply_replicas(self, backend: str, specs: Sequence[ReplicaSpec]) -> None:
        """Balance ``backend`` (marketdata or cache) over ``specs`` from now on."""
        if backend not in REPLICA_BACKENDS:
            raise ValueError(f"no replica backend {backend!r}; choose from {', '.join(REPLICA_BACKENDS)}")
        async with self._lock:
            current = self.plan
            field_name = f"{backend}_replicas"
            addresses = _addresses(specs)
            draining = frozenset(spec.address for spec in specs if spec.draining)
            if addresses != getattr(current, field_name):
                self.draining[backend] = draining
                if backend == "marketdata":
                    await self._reload(replace(current, marketdata_replicas=addresses))
                else:
                    await self._reload(replace(current, cache_replicas=addresses))
                log.info("haproxy reloaded for %d %s replicas", len(addresses), backend)
            elif draining != self.draining[backend]:
                self.draining[backend] = draining
                await asyncio.to_thread(self._set_drain_states, backend)
        await self._notify()

    async def _reload(self, plan: HaproxyPlan) -> None:
        await asyncio.to_thread(self.process.graceful_reload, plan)
        for backend in REPLICA_BACKENDS:
            if self.draining[backend]:
                await asyncio.to_thread(self._set_drain_states, backend)
        self.reloads += 1

    def _set_drain_states(self, backend: str) -> None:
        for index, address in enumerate(getattr(self.plan, f"{backend}_replicas")):
            self.process.set_draining(backend, index, address in self.draining[backend])

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()


# --- python -m services.gateway.haproxy_runner -------------------------------------------------------
ENV_PREFIX = "HFTGATE_HAPROXY_"


@dataclass(frozen=True)
class HaproxyRunnerConfig:
    """Every setting of the runner, from ``HFTGATE_HAPROXY_<FIELD IN UPPER CASE>``."""

    # Where HAProxy listens (host:port), and the Python gateway it sends what it cannot route to.
    bind: str = "127.0.0.1:50040"
    gateway: str = "127.0.0.1:50050"
    # Symbols routed by the x-hftgate-symbol header (comma separated; pinned symbols always are):
    # HAProxy cannot compute the rendezvous hash, so it looks these up in a map file.
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "ESZ4")
    # Replicas balanced with leastconn ("HOST:PORT", comma separated; empty = via the gateway).
    marketdata_replicas: tuple[str, ...] = ()
    cache_replicas: tuple[str, ...] = ()
    # The scaler's host:port: follow its WatchReplicas on top of the lists above (empty = no).
    scaler_address: str = ""
    # How often the stored shard map's epoch is read, and HAProxy's TCP health-check interval.
    map_poll_ms: int = 200
    check_interval_ms: int = 500
    # HAProxy's files (haproxy.cfg, symbols.map, admin.sock, haproxy.log); empty = <state dir>/haproxy.
    folder: str = ""
    # The shard map store (empty = the suite's, see the module docstring).
    shard_map_database_url: str = ""
    shard_map_table: str = shardmap.DEFAULT_TABLE
    shard_map_name: str = shardmap.DEFAULT_MAP_NAME


def load_config(environ: Mapping[str, str] | None = None) -> HaproxyRunnerConfig:
    config = from_env(HaproxyRunnerConfig, ENV_PREFIX, environ)
    for name in ("map_poll_ms", "check_interval_ms"):
        if getattr(config, name) < 1:
            raise ValueError(f"{ENV_PREFIX}{name.upper()} must be at least 1, not {getattr(config, name)}")
    for symbol in config.symbols:
        shardmap.check_symbol(symbol)
    return config


async def main(environ: Mapping[str, str] | None = None) -> None:
    """Run HAProxy following the suite's shard map and replica sets until SIGTERM or SIGINT."""
    from hftgate.security import load_suite_security

    config = load_config(environ)
    log.info("config: %s", describe(config))
    store = ShardMapStore(
        config.shard_map_database_url or shardmap.default_url(environ),
        table_name=config.shard_map_table,
        name=config.shard_map_name,
    )
    await store.start()
    try:
        stored = await store.load()
        if stored is None:
            raise SystemExit(
                f"no shard map is stored at {store.safe_url()}: start the shards or the gateway first"
            )
        sources: dict[str, ReplicaSource] = {}
        for backend, static in (("marketdata", config.marketdata_replicas), ("cache", config.cache_replicas)):
            if config.scaler_address:
                credentials = load_suite_security("gateway", environ).credentials
                sources[backend] = ScalerReplicas(backend, config.scaler_address, credentials, static)
            elif static:
                sources[backend] = StaticReplicas(static)
        plan = HaproxyPlan(
            bind=config.bind,
            gateway=config.gateway,
            shard_map=stored,
            symbols=config.symbols,
            check_interval_ms=config.check_interval_ms,
        )
        folder = Path(config.folder) if config.folder else default_state_dir() / "haproxy"
        runner = HaproxyRunner(
            plan,
            folder,
            store,
            map_poll_ms=config.map_poll_ms,
            marketdata=sources.get("marketdata"),
            cache=sources.get("cache"),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        async with runner:
            log.info("haproxy listening on %s, shard map epoch %d", config.bind, runner.epoch)
            await stop.wait()
    finally:
        await store.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
