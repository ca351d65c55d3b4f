"""``python -m services.marketdata``: run the market data service until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging

from hftgate.config import describe, from_env
from hftgate.grpcserver import serve_until_signalled
from services.marketdata.config import MarketDataConfig
from services.marketdata.server import start

log = logging.getLogger("services.marketdata")


async def main() -> None:
    config = from_env(MarketDataConfig, "HFTGATE_MARKETDATA_")
    log.info("config: %s", describe(config))
    running = await start(config)
    log.info("listening on %s:%d", config.host, running.port)
    await serve_until_signalled(running, config.shutdown_grace_s)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
