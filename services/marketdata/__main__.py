"""``python -m services.marketdata``: run the market data service until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from hftgate import loadreport, prometheus
from hftgate.config import describe, from_env
from hftgate.grpcserver import serve_until_signalled
from hftgate.security import load_suite_security
from services.marketdata import metrics
from services.marketdata.access import ApiKeyVerifier
from services.marketdata.config import MarketDataConfig
from services.marketdata.engine import MarketDataEngine
from services.marketdata.server import start

log = logging.getLogger("services.marketdata")


async def main() -> None:
    config = from_env(MarketDataConfig, "HFTGATE_MARKETDATA_")
    log.info("config: %s", describe(config))
    try:
        prometheus.serve_metrics("marketdata", config.metrics_port)
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None
    security = load_suite_security("marketdata")
    async with contextlib.AsyncExitStack() as stack:
        api_keys = None
        if config.cache_address:
            from services.cache.client import CacheClient

            cache = CacheClient(
                config.cache_address,
                watcher_name="marketdata",
                near_cache_max_entries=config.api_key_cache_max_entries,
                near_cache_max_ttl_ms=config.api_key_cache_ttl_ms,
                negative_ttl_ms=min(1_000, config.api_key_cache_ttl_ms),
                credentials=security.credentials,
            )
            # A cache that is down at start-up does not hold the service up: keys are answered
            # UNAVAILABLE until it is reachable.
            await cache.start(wait_s=1.0)
            stack.push_async_callback(cache.close)
            api_keys = ApiKeyVerifier(security.secret, cache.get, config.max_api_key_chars)
            log.info("API keys resolved through the cache service at %s", config.cache_address)
        else:
            log.info("no cache address: API keys are refused, service tokens only")
        engine = MarketDataEngine(config)
        metrics.register(engine)
        running = await start(config, engine, security=security, api_keys=api_keys)
        log.info(
            "listening on %s:%d (%s)",
            config.host,
            running.port,
            "TLS" if security.server_tls else "plaintext",
        )
        # Drained by the scaler: NOT_SERVING, so the gateway moves away; its back end stops the process.
        reporter = loadreport.start_reporter(
            "marketdata",
            config.scaler_address,
            security.credentials,
            host=config.host,
            port=running.port,
            on_drain=lambda: running.set_serving(False),
        )
        if reporter is not None:
            stack.push_async_callback(reporter.close)
        await serve_until_signalled(running, config.shutdown_grace_s)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
