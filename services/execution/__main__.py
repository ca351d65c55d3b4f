"""``python -m services.execution``: run the execution service until SIGTERM or SIGINT.

Configuration: ``HFTGATE_EXECUTION_*`` environment variables (services/execution/config.py).

State directory: ``HFTGATE_EXECUTION_STATE_DIR``, else ``$HFTGATE_STATE_DIR/execution``, else
``./data/execution`` in the checkout. It holds ``journal/`` (the input journal segments),
``snapshots/`` (the recovery base) and ``ledger.sqlite3`` (the fill ledger, unless
``HFTGATE_EXECUTION_LEDGER_DATABASE_URL`` names another database). On start the service loads
the newest snapshot, replays the journal after it, brings the ledger level, and only then
reports SERVING. ``services.execution.recovery.load_state(state_dir)`` rebuilds the same state
offline.

Credentials: every call needs an account's API key (``x-api-key``) or a service token of the
suite (hftgate/security.py); the service's own calls to the cache and to market data carry the
"execution" principal's token. TLS: ``HFTGATE_EXECUTION_TLS_CERT_PATH``/``_KEY_PATH`` (and
``_TLS_CLIENT_CA_PATH`` to require client certificates), else the suite's ``HFTGATE_TLS_DIR``.

API keys on the embedded defaults: in the dev profile (``HFTGATE_PROFILE`` unset or ``dev``:
``hftgate up``, ``make run``) the service seeds, when missing, the demo instruments BTCUSDT,
ETHUSDT and ESZ4 and the demo accounts of ``HFTGATE_EXECUTION_DEMO_ACCOUNTS`` (default
``alice,bob,carol,dave``, account ids 1, 2, 3, 4 in that order). The API key of demo account
NAME is ``<secret>-<NAME>`` with ``HFTGATE_EXECUTION_DEMO_KEY_SECRET`` as the secret (default
``hftgate-demo``, so alice's key is ``hftgate-demo-alice``); only each key's HMAC under the
suite secret is stored. In the production profile nothing is seeded, and
``HFTGATE_EXECUTION_SEED_DEMO_DATA=true`` there refuses to start (demo keys are published).
Send the key in the ``x-api-key`` metadata of every call. The start-up log names the demo
accounts. Reference rows go to the cache service's SQL table (or through the cache service when
``HFTGATE_EXECUTION_CACHE_ADDRESS`` is set); services/execution/reference.py describes them,
for adding real accounts and instruments.
"""

from __future__ import annotations

import asyncio
import logging

from hftgate import loadreport, placement, prometheus, security
from hftgate.config import describe
from hftgate.grpcserver import serve_until_signalled
from services.execution.app import ExecutionServer, start
from services.execution.config import ExecutionConfig, load_config

log = logging.getLogger("services.execution")


async def main() -> None:
    try:
        config = load_config()
    except (ValueError, security.SecurityError) as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None

    log.info("config: %s", describe(config))
    try:
        prometheus.serve_metrics("execution", config.metrics_port)
    except ValueError as exc:
        log.error("cannot start: %s", exc)
        raise SystemExit(2) from None
    running = await start(config)
    place_threads(running, config)
    if config.seeds_demo_data():
        log.info(
            "demo accounts %s: API key of NAME is '<HFTGATE_EXECUTION_DEMO_KEY_SECRET>-NAME'",
            ", ".join(config.demo_accounts),
        )
    log.info("state directory %s (recovered in %.1f ms)", config.state_path(), running.recovery_ms)
    log.info("listening on %s:%d", config.host, running.port)
    reporter = start_load_reporter(running, config)
    try:
        await serve_until_signalled(running, config.shutdown_grace_s)
    finally:
        if reporter is not None:
            await reporter.close()


def start_load_reporter(running: ExecutionServer, config: ExecutionConfig) -> loadreport.LoadReporter | None:
    """Report orders/s (new orders received) to the scaler when it has an address. Drained by the
    scaler, the shard reports NOT_SERVING; its symbols move only through the shard map."""
    core = running.core
    assert core is not None

    def figures() -> loadreport.ServiceFigures:
        return loadreport.ServiceFigures(orders_total=core.counters.orders_received)

    return loadreport.start_reporter(
        "execution",
        config.scaler_address,
        security.load_suite_security("execution").credentials,
        host=config.host,
        port=running.port,
        figures=figures,
        on_drain=lambda: running.set_serving(False),
    )


def place_threads(running: ExecutionServer, config: ExecutionConfig) -> None:
    """Keep the event loop and the journal writer on different CPUs (hftgate/placement.py), and
    let SubmitOrder poll for its fsync when they are."""
    assert running.core is not None
    quota = placement.cpu_quota_limited()
    chosen = placement.plan(
        config.loop_cpus, config.journal_writer_cpus, placement.allowed_cpus(), cpu_quota=quota
    )
    placement.apply(chosen, asyncio.get_running_loop(), running.core.journal.place_writer)
    log.info(
        "CPU placement: %s%s", chosen.describe(), " (under a CPU quota: auto pins nothing)" if quota else ""
    )
    # ("auto" pins nothing under a CPU quota: then neither speed-up runs.)
    poll_ns, kept = running.core.journal.speed_up_apart_writer(
        chosen.writer_apart, config.journal_ack_poll_us, config.journal_keep_cpu_us
    )
    running.core.ack_poll_ns = poll_ns
    if poll_ns:
        log.info("SubmitOrder polls up to %d us for its fsync", config.journal_ack_poll_us)
    if kept:
        log.info(
            "the journal writer's CPU is kept awake %d us after each SubmitOrder", config.journal_keep_cpu_us
        )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
