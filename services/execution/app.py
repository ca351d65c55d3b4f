"""The execution service's composition root: :func:`start` recovers the state, opens the ledger,
reference data, trade feed and shard fence, builds the core and the servicers (server.py), and
serves them; :class:`ExecutionServer` is what runs, stopped as one. ``python -m
services.execution`` (``__main__.py``) calls it; so do the tests, in process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftgate import security, tuning
from hftgate.grpcserver import RunningServer, ServiceBinding, create_server
from hftgate.native.journal_writer import JournalWriterThread
from hftgate.v1 import execution_pb2_grpc as api_grpc
from hftgate.v1 import shard_admin_pb2_grpc
from services.cache.client import CacheClient
from services.cache.l3_sql import SqlStore
from services.execution import fencing, metrics
from services.execution.config import ExecutionConfig
from services.execution.core import ExecutionCore
from services.execution.handover import Handover, read_taken_over
from services.execution.journal import Journal
from services.execution.ledger import Ledger
from services.execution.publishing import Publisher
from services.execution.recovery import Recovery, recover
from services.execution.reference import (
    INSTRUMENT_PREFIX,
    CacheSource,
    ReferenceData,
    ReferenceSource,
    SqlSource,
    demo_rows,
)
from services.execution.server import PRINCIPAL, SERVICE_NAME, ExecutionServicer
from services.execution.shard_admin import ADMIN_SERVICE_NAME, ShardAdminServicer
from services.execution.snapshot import Snapshotter
from services.execution.trade_feed import TradeFeed

log = logging.getLogger(__name__)


@dataclass
class ExecutionServer(RunningServer):
    """The running gRPC server plus everything behind it, stopped together."""

    core: ExecutionCore | None = None
    snapshotter: Snapshotter | None = None
    fence: fencing.ShardFence | None = None
    closers: list[Any] = field(default_factory=list)
    recovery_ms: float = 0.0

    async def stop(self, grace_s: float) -> None:
        await super().stop(grace_s)
        if self.core is not None:
            await self.core.drain()
        if self.snapshotter is not None:
            await self.snapshotter.close()
        for close in self.closers:
            try:
                await close()
            except Exception:
                log.exception("error while stopping")


async def _unregister(collector: metrics.ExecutionCollector) -> None:
    metrics.unregister(collector)


def _health_follows_intake(core: ExecutionCore, journal: Journal, running: RunningServer) -> None:
    """Health says NOT_SERVING while the service cannot take inputs, so balancers stop sending
    them: while the journal's disk is full (SERVING again once it writes), and for good once a
    journaled batch failed to apply (a defect, contained until a restart replays it without the
    record)."""
    tasks: set[asyncio.Task[None]] = set()

    def report(serving: bool) -> None:
        task = asyncio.get_running_loop().create_task(running.set_serving(serving))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def stopped(why: str) -> None:
        log.critical("reporting NOT_SERVING: %s", why)
        report(False)

    def writable(ok: bool) -> None:
        if core.apply_failed is None:
            log.warning(
                "journal %s: reporting %s",
                "writes again" if ok else "cannot write",
                "SERVING" if ok else "NOT_SERVING",
            )
            report(ok)

    core.on_apply_failed = stopped
    journal.on_writable_change(writable)


def _sizes_of(reference: ReferenceData, symbol: str) -> tuple[str, str] | None:
    """(tick size, lot size) of an instrument the order path has looked up."""
    held = reference._decoded.get(INSTRUMENT_PREFIX + symbol)
    return None if held is None else (held[1].tick_size, held[1].lot_size)


async def _reference_source(config: ExecutionConfig, suite: security.SuiteSecurity) -> ReferenceSource:
    if config.cache_address:
        # As "execution": the cache lets it read reference rows, never write them.
        client = CacheClient(config.cache_address, watcher_name="execution", credentials=suite.credentials)
        await client.start()
        return CacheSource(client)
    if not config.reference_database_url and "sqlite" in config.reference_url():
        Path(config.reference_url().split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    store = SqlStore(config.reference_url(), table_name=config.reference_table)
    await store.start()
    return SqlSource(store, config.reference_local_ttl_ms)


async def _seed_demo_rows(
    config: ExecutionConfig, suite: security.SuiteSecurity, source: ReferenceSource
) -> list[tuple[str, bytes]]:
    """Write the missing demo rows (dev profile only; see ExecutionConfig.seeds_demo_data) and
    return them all. Through the cache, the rows are written with the "admin" principal's token:
    reference rows are an operator's, and seeding them is done on the operator's behalf (only a
    process holding the suite secret can); the service's own identity stays read-only."""
    if not config.seeds_demo_data():
        return []
    demo = demo_rows(config.demo_accounts, config.demo_key_secret, suite.secret)
    if isinstance(source, CacheSource):
        admin = suite.secret.service_credentials(security.ADMIN, suite.client_tls)
        async with CacheClient(
            config.cache_address, watcher_name="execution-seed", credentials=admin
        ) as client:
            added = await CacheSource(client).put_if_absent(demo)
    else:
        added = await source.put_if_absent(demo)
    if added:
        log.info("seeded %d demo reference row(s) (instruments, accounts, API keys)", added)
    return demo


def _server_tls(config: ExecutionConfig, suite: security.SuiteSecurity) -> security.ServerTls | None:
    """The front door's own certificate when configured, else the suite's (HFTGATE_TLS_DIR), else none."""
    if config.tls_cert_path:
        ca = Path(config.tls_client_ca_path) if config.tls_client_ca_path else None
        return security.ServerTls(
            Path(config.tls_cert_path),
            Path(config.tls_key_path),
            client_ca_path=ca,
            require_client_cert=bool(ca),
        )
    return suite.server_tls


async def start(config: ExecutionConfig, suite: security.SuiteSecurity | None = None) -> ExecutionServer:
    """Recover the state, open ledger and reference data, and serve the execution API on config.address.

    ``suite``: the suite's secret and TLS (default: ``load_suite_security("execution")``, from the
    environment). Raises ValueError, before touching any state, when demo seeding is forced on
    in the production profile."""
    config.seeds_demo_data()  # refuse before recovering anything
    suite = suite or security.load_suite_security(PRINCIPAL)
    try:  # also before recovering: a shard the map does not name must not start
        fence = await fencing.open_fence(
            config.shard_id,
            config.shard_map_url(),
            config.shard_map_table,
            config.shard_map_name,
            config.shard_map_poll_ms,
            config.address,
            initial_shards=config.initial_shards,
        )
    except fencing.ShardMapRefused as exc:
        log.error("cannot start: %s", exc.reason)
        raise
    closers: list[Any] = [fence.close]
    try:
        config.state_path().mkdir(parents=True, exist_ok=True)
        recovered: Recovery = await asyncio.to_thread(recover, config)
    except BaseException:
        await fence.close()
        raise
    journal = recovered.journal
    feed: TradeFeed | None = None
    try:
        ledger = await Ledger.open(
            config.ledger_url(), config.ledger_table, batch_linger_ms=config.ledger_batch_linger_ms
        )
        closers.append(ledger.close)
        if len(recovered.tail_fills):
            added = await ledger.catch_up(
                Publisher.fills_for_ledger_of(
                    recovered.state,
                    recovered.tail_fills,
                    config.shard_id,
                    read_taken_over(config.state_path()),
                )
            )
            log.info(
                "ledger caught up: %d of %d replayed fill(s) were missing", added, len(recovered.tail_fills)
            )
        # The snapshot's fills were in the ledger before it became the base, and the catch-up wrote
        # the tail's: every fill the recovered state knows is written (snapshots wait on this mark).
        ledger.mark_written_through(recovered.state.next_trade_id - 1)
        source = await _reference_source(config, suite)
        reference = ReferenceData(source, suite.secret)
        closers.append(reference.close)
        demo = await _seed_demo_rows(config, suite, source)
        # Before SERVING: the first orders after a (re)start must not each wait for an SQL read
        # (measured at 1,000 orders/s: the first 40 ms of orders took 20-50 ms each).
        state = recovered.state
        held = await reference.preload(
            state.symbol_names, state.account_names.values(), [key for key, _ in demo]
        )
        log.info("reference data: %d row(s) loaded before serving", held)
        journal.start()
        journal.set_commit_window_us(config.journal_commit_window_us)
        closers.append(journal.close)
        snapshotter = Snapshotter(config, journal, ledger)
        core = ExecutionCore(
            recovered.state,
            journal,
            ledger,
            reference,
            max_batch_orders=config.max_batch_orders,
        )
        snapshotter.attach(core)
        if config.marketdata_address:
            feed = TradeFeed(
                config.marketdata_address,
                lambda symbol_id: core.state.symbol_names[symbol_id],
                lambda symbol: _sizes_of(reference, symbol),
                credentials=suite.credentials,
                trade_id_base=config.shard_id << 48,
            )
            feed.start()
            core.publisher.trade_sink = feed.publish
            closers.append(feed.close)
        collector = metrics.register(core)
        closers.append(lambda: _unregister(collector))
        servicer = ExecutionServicer(core, config, suite.secret, fence)
        servicer.snapshotter = snapshotter
        handover = Handover(core, config.state_path(), config.shard_id, servicer.shard_base)
        handover.load()
        fence.handed_over = handover.handed_over
        servicer.handover = handover
        shard_admin = ShardAdminServicer(servicer, handover)
        tuning_servicer = tuning.TuningServicer(
            "execution",
            [
                tuning.TunableSetting(
                    "journal_group_commit_window_us",
                    0.0,
                    float(JournalWriterThread.MAX_COMMIT_WINDOW_US),
                    get=lambda: journal.commit_window_us,
                    set=lambda value: journal.set_commit_window_us(int(value)),
                )
            ],
            suite.secret,
        )
        # Accounts call with their API key (checked by the servicer); services (the gateway) with a
        # service token, and forward the account's key.
        auth = security.ServiceAuthInterceptor(suite.secret, api_key_methods=True)
        collector.servicer, collector.interceptor = servicer, auth
        running = await create_server(
            config.address,
            [
                ServiceBinding(
                    SERVICE_NAME, lambda s: api_grpc.add_ExecutionServiceServicer_to_server(servicer, s)
                ),
                ServiceBinding(
                    ADMIN_SERVICE_NAME,
                    lambda s: shard_admin_pb2_grpc.add_ShardAdminServiceServicer_to_server(shard_admin, s),
                ),
                tuning.binding(tuning_servicer),
            ],
            tls=_server_tls(config, suite),
            auth=auth,
        )
    except BaseException:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                await close()
        raise
    _health_follows_intake(core, journal, running)
    # The feed stops first, then the journal (every append made durable), then the ledger (its queue written).
    return ExecutionServer(
        server=running.server,
        port=running.port,
        health=running.health,
        service_names=running.service_names,
        core=core,
        snapshotter=snapshotter,
        fence=fence,
        closers=[
            *([feed.close] if feed is not None else []),
            journal.close,
            ledger.close,
            reference.close,
            lambda: _unregister(collector),
            fence.close,
        ],
        recovery_ms=recovered.recovery_ms,
    )
