"""``python -m services.cache``: run one cache-service replica until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from hftgate import loadreport, prometheus
from hftgate.config import describe
from hftgate.grpcserver import serve_until_signalled
from hftgate.security import load_suite_security
from services.cache import metrics
from services.cache.config import CacheConfig, load_config
from services.cache.l1 import NearCache
from services.cache.server import start

log = logging.getLogger("services.cache")


def _without_credentials(config: CacheConfig) -> CacheConfig:
    """The config with passwords in URLs masked, for the log."""
    from sqlalchemy.engine import make_url

    def mask(url: str) -> str:
        if "@" not in url:
            return url
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"

    database_url = config.database_url
    if database_url:
        database_url = make_url(database_url).render_as_string(hide_password=True)
    return replace(config, redis_url=mask(config.redis_url), database_url=database_url)


class NearCacheHitRatio:
    """The near cache's hit ratio over each report interval, for the scaler's optimiser (it tunes
    ``l1_max_entries`` toward a hit-ratio target: a ratio since start would hide its changes)."""

    def __init__(self, near_cache: NearCache) -> None:
        self.near_cache = near_cache
        self._hits = self._lookups = 0

    def __call__(self) -> loadreport.ServiceFigures:
        stats = self.near_cache.stats()
        hits, lookups = stats.hits, stats.hits + stats.misses
        new_hits, new_lookups = hits - self._hits, lookups - self._lookups
        self._hits, self._lookups = hits, lookups
        if new_lookups <= 0:
            return loadreport.ServiceFigures()  # no lookups this interval: nothing to judge
        return loadreport.ServiceFigures(gauges={"near_cache_hit_ratio": new_hits / new_lookups})


async def main() -> None:
    config = load_config()
    log.info("config: %s", describe(_without_credentials(config)))
    try:
        prometheus.serve_metrics("cache", config.metrics_port)
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None
    running = await start(config)
    assert running.cache is not None
    metrics.register(running.cache)
    log.info("listening on %s:%d", config.host, running.port)
    # Drained by the scaler: NOT_SERVING, so balancers move away; its back end stops the process.
    reporter = loadreport.start_reporter(
        "cache",
        config.scaler_address,
        load_suite_security("cache").credentials,
        host=config.host,
        port=running.port,
        on_drain=lambda: running.set_serving(False),
        figures=NearCacheHitRatio(running.cache.l1) if running.cache.l1 is not None else None,
    )
    try:
        await serve_until_signalled(running, config.shutdown_grace_ms / 1000)
    finally:
        if reporter is not None:
            await reporter.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
