"""``python -m services.gateway``: run the gateway until SIGTERM or SIGINT.

Configuration: ``HFTGATE_GATEWAY_*`` environment variables (services/gateway/config.py). The
shard map is read from ``HFTGATE_GATEWAY_SHARD_MAP_DATABASE_URL`` (else
``HFTGATE_SHARD_MAP_DATABASE_URL``, ``DATABASE_URL``, or SQLite under the state directory); when
none is stored yet, the map of ``HFTGATE_GATEWAY_EXECUTION_SHARDS`` (default: one shard at
127.0.0.1:50051) is stored. A map that cannot be read refuses the start with the reason (exit 2).
"""

from __future__ import annotations

import asyncio
import logging

from hftgate import loadreport, prometheus, security
from hftgate.config import describe
from hftgate.grpcserver import serve_until_signalled
from services.gateway import metrics
from services.gateway.app import StartError
from services.gateway.config import load_config
from services.gateway.server import start

log = logging.getLogger("services.gateway")


async def main() -> None:
    try:
        config = load_config()
    except (ValueError, security.SecurityError) as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None
    log.info("config: %s", describe(config))
    try:
        prometheus.serve_metrics("gateway", config.metrics_port)
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None
    try:
        running = await start(config)
    except (StartError, security.SecurityError) as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None
    assert running.app is not None
    metrics.register(running.app)
    log.info("routing by %r", running.app.shard_map)
    log.info("listening on %s:%d", config.host, running.port)
    # Drained by the scaler: NOT_SERVING, so load balancers in front move away.
    reporter = loadreport.start_reporter(
        "gateway",
        config.scaler_address,
        security.load_suite_security("gateway").credentials,
        host=config.host,
        port=running.port,
        on_drain=lambda: running.set_serving(False),
    )
    try:
        await serve_until_signalled(running, config.shutdown_grace_s)
    finally:
        if reporter is not None:
            await reporter.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
