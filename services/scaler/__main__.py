"""``python -m services.scaler``: run the scaler until SIGTERM or SIGINT (then stop its replicas)."""

from __future__ import annotations

import asyncio
import logging

from hftgate import prometheus
from hftgate.config import describe
from hftgate.grpcserver import serve_until_signalled
from hftgate.security import load_suite_security
from services.scaler import metrics
from services.scaler.config import load_config
from services.scaler.server import start

log = logging.getLogger("services.scaler")


async def main() -> None:
    config = load_config()
    log.info("config: %s", describe(config))
    try:
        prometheus.serve_metrics("scaler", config.metrics_port)
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None
    security = load_suite_security("scaler")
    running = await start(config, security)
    assert running.scaler is not None
    metrics.register(running.scaler)
    log.info(
        "listening on %s:%d (%s)", config.host, running.port, "TLS" if security.server_tls else "plaintext"
    )
    await serve_until_signalled(running, config.shutdown_grace_ms / 1000)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
