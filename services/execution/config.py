"""Configuration of the execution service, from ``HFTGATE_EXECUTION_*`` environment variables.

Every field below is read from ``HFTGATE_EXECUTION_<FIELD NAME IN UPPER CASE>``; e.g.
``HFTGATE_EXECUTION_JOURNAL_DURABILITY=write`` acknowledges before the fsync. The field
names are a stable interface (the crash harness and benchmarks set them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hftgate import placement, security, shardmap
from hftgate.config import default_state_dir, from_env
from hftgate.native.journal_writer import JournalWriterThread

ENV_PREFIX = "HFTGATE_EXECUTION_"


@dataclass(frozen=True)
class ExecutionConfig:
    """Every setting of the execution service, with its unit in its name."""

    # Interface and port to listen on.
    host: str = "127.0.0.1"
    port: int = 50051
    # How long a stopping server lets in-flight calls finish.
    shutdown_grace_s: float = 5.0
    # Where the journal, the snapshots and the SQLite ledger live; empty = HFTGATE_STATE_DIR/execution.
    state_dir: str = ""

    # TLS of the front door: both paths set = serve TLS with this PEM certificate chain and key.
    # Both empty: TLS from the suite's HFTGATE_TLS_DIR (hftgate certs init) when set, else plaintext.
    tls_cert_path: str = ""
    tls_key_path: str = ""
    # With tls_cert_path: a PEM CA bundle; when set, every client must present a certificate that
    # chains to it (mutual TLS), else its handshake fails.
    tls_client_ca_path: str = ""

    # Journal. "fsync": an ack leaves only once its input is on disk (group commit);
    # "write": ack once the kernel has the bytes (survives a process kill, not a power loss).
    journal_durability: str = "fsync"
    journal_segment_max_bytes: int = 64 * 1024 * 1024
    # Start even if the journal is damaged in the middle (the damage is moved aside and logged).
    journal_allow_mid_corruption: bool = False
    # Delete journal segments a confirmed snapshot covers. False keeps every input since the
    # first start (the crash harness replays all of them through the reference book).
    journal_truncate_after_snapshot: bool = True
    # Group commit: how long the writer waits after a batch's first input for more to share its
    # fdatasync (0: only what is queued already). The scaler's optimiser may change it live
    # (TuningService setting journal_group_commit_window_us, 0..10,000).
    journal_commit_window_us: int = 0

    # Snapshots of every book and order: taken after this many journaled inputs or this much
    # time since the last one (whichever comes first, and only when something changed); 0 disables.
    snapshot_every_inputs: int = 200_000
    snapshot_every_s: float = 60.0
    # Snapshots also after this many journal bytes since the last one (the replayed tail included),
    # and at once after a recovery that replayed at least snapshot_after_recovery_bytes, so a service
    # killed more often than snapshot_every_s still keeps its recovery short; 0 disables either.
    snapshot_every_journal_bytes: int = 16 * 1024 * 1024
    snapshot_after_recovery_bytes: int = 1024 * 1024
    # The inputs and journal-bytes triggers wait until this long has passed since the last snapshot
    # started (or the service did), so that under a sustained flood snapshots cost a bounded share
    # of the loop: each one holds it for the fork and then pays a page fault for every page the
    # order path writes while the child lives (~0.1 s of a 2-CPU VM's loop at 200,000 retained
    # orders: a snapshot every 16 MB of journal took a quarter of SubmitOrderColumns' throughput).
    # A recovery replays at most about what the service took in over this interval beyond the
    # triggers' amounts; replaying is faster than taking orders in. The time and recovery
    # triggers do not wait. 0 = no wait.
    snapshot_min_interval_s: float = 2.0
    # Write snapshots from a forked copy-on-write child (as Redis' BGSAVE does), so the service
    # copies none of the state's big arrays and its memory does not jump with each snapshot. The
    # child runs no Python, only system calls (native/src/snapshot_writer.c): safe in a child of
    # this multithreaded process. Linux only; where fork fails, and after three failed children in
    # a row, the service captures snapshots itself (a copy written by a thread).
    snapshot_in_child_process: bool = True
    # Full disk: the longest pause between the journal writer's attempts to find space, and how long
    # a stopping service waits for space before giving up on records it could not write (never acked).
    journal_space_retry_max_ms: int = 100
    journal_close_blocked_timeout_s: float = 10.0

    # Ledger of fills: SQLAlchemy async URL; empty = SQLite file in the state directory.
    ledger_database_url: str = ""
    ledger_table: str = "ledger_transactions"
    # The ledger writer waits this long after a fill for more to share its SQL transaction
    # (fewer transactions, less event-loop time per fill; the ledger only lags a little more).
    ledger_batch_linger_ms: float = 50.0

    # Reference data (instruments, accounts, API keys). With a cache service address the
    # lookups go through the embedded CacheClient (near cache); without one they read the
    # cache's SQL table directly (same rows): no row older than reference_local_ttl_ms is used,
    # and a background task re-reads the rows in use every half of it, off the order path.
    cache_address: str = ""
    reference_database_url: str = ""
    reference_table: str = "cache_entries"
    reference_local_ttl_ms: int = 1_000
    # Seed demo instruments and accounts (with published API keys) into the reference store when
    # they are missing. Unset (the default): on in the dev profile, off in production
    # (HFTGATE_PROFILE, hftgate.security.profile); forcing it on in production refuses to start.
    seed_demo_data: bool | None = None
    # Demo accounts; the API key of demo account NAME is "<demo_key_secret>-<NAME>".
    demo_accounts: tuple[str, ...] = ("alice", "bob", "carol", "dave")
    demo_key_secret: str = "hftgate-demo"

    # Market data service to publish our own trades to (venue "hftgate"); empty = do not publish.
    marketdata_address: str = ""

    # Request limits.
    max_batch_orders: int = 10_000
    max_stream_message_inputs: int = 1_000

    # Matching engine sizes.
    max_symbols: int = 64
    max_levels_per_side: int = 65_536
    max_live_orders: int = 1 << 20

    # Execution reports kept for StreamExecutions resumption.
    retained_reports: int = 200_000

    # Streams (StreamExecutions and OrderStream together) open at once, per account and for the
    # whole service; one more is refused with RESOURCE_EXHAUSTED and a google.rpc.QuotaFailure.
    max_streams_per_account: int = 8
    max_streams: int = 512
    # Reports a stream encodes at a time (StreamExecutions history and live reports, OrderStream
    # executions and acks per response): the most a stream holds beyond gRPC's flow-control window.
    stream_page_reports: int = 256
    # A stream (either kind) more than this many report sequences behind the newest report is cut
    # off with RESOURCE_EXHAUSTED "reader too slow"; capped at half of retained_reports, so that
    # what it had not read is still retained when it resumes (StreamExecutions after_sequence).
    stream_max_behind_reports: int = 100_000
    # An OrderStream stops reading its client's messages while this many of its inputs have acks
    # not yet written (the client is not reading them): backpressure, not buffering.
    order_stream_max_unsent_inputs: int = 10_000
    # Fair admission between accounts (fairness.FairAdmission). Per event-loop turn, batches run
    # while the turn's inputs stay within fair_slice_inputs (the first always runs); the rest
    # queue per account, served round-robin. A light call (a SubmitOrder, cancel, replace or a
    # batch of at most fair_light_inputs) runs at once, and while one is in flight (and for
    # fair_light_grace_us after its handler returns) heavy steps (stream messages, stream
    # responses, larger batches) wait, one of them released every fair_max_defer_us. The grace is
    # 4 ms: at 2 ms a sequential client on a shared 2-vCPU host often came back after it, and its
    # p99 under a flood was 7x its unloaded p99 (4 ms: 2-4x; the flood then runs ~16-18k orders/s
    # instead of ~27k: a flood is what fairness slows).
    fair_slice_inputs: int = 100
    fair_light_inputs: int = 8
    fair_max_defer_us: int = 5_000
    fair_light_grace_us: int = 4_000

    # CPU placement (hftgate/placement.py): "auto" keeps the event loop and the journal writer
    # thread on different CPUs when the process may use two or more (the writer on the highest);
    # "off" leaves a thread to the scheduler; or a CPU list such as "2" or "0-3,6".
    loop_cpus: str = "auto"
    journal_writer_cpus: str = "auto"
    # SubmitOrder, when it is the only order in flight and the journal writer has a CPU of its own:
    # after matching, the loop busy-polls up to this long for the fsync instead of sleeping until the
    # writer wakes it (a sleeping CPU's wake-up, ~45 us on a VM). Costs that CPU time; 0 = never.
    journal_ack_poll_us: int = 200
    # When the journal writer has a CPU of its own (as for journal_ack_poll_us): a SCHED_IDLE thread
    # keeps that CPU from going idle for this long after each SubmitOrder, so the fsync's completion
    # and the record's hand-off do not wait for a halted CPU to wake (on a VM, ~40 us per durable
    # order; hft_cpu_keeper.h). The CPU shows busy meanwhile, with time nothing else wanted.
    # 0 = never; at most 100000.
    journal_keep_cpu_us: int = 2000

    # Sharding (hftgate/shardmap.py). This shard's id (0..32767): public order and trade ids carry
    # it in bits 48..62 (shard 0's ids are today's ids), and new orders are accepted only for the
    # symbols the shard map gives this id. The map: SQLAlchemy async URL; empty =
    # HFTGATE_SHARD_MAP_DATABASE_URL, else DATABASE_URL, else SQLite under HFTGATE_STATE_DIR/shardmap
    # (the file the gateway reads). No stored map = one shard, id 0, owns every symbol.
    shard_id: int = 0
    shard_map_database_url: str = ""
    shard_map_table: str = shardmap.DEFAULT_TABLE
    shard_map_name: str = shardmap.DEFAULT_MAP_NAME
    # How often the stored map's epoch is read for changes (a shard stops accepting a symbol it
    # lost at most this long after the new map is stored).
    shard_map_poll_ms: int = 200
    # The map to store when none is stored yet ("ID=HOST:PORT", comma separated), so that shards
    # started together (compose, Kubernetes) agree on owners before the first order. Every shard
    # may name the same list: the first store wins, the others read it. Empty = store nothing.
    initial_shards: tuple[str, ...] = ()

    # Prometheus /metrics port; 0 = no metrics endpoint.
    metrics_port: int = 0
    # The scaler's "host:port": report this replica's load there every second (hftgate/loadreport.py);
    # empty = no reports.
    scaler_address: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def seeds_demo_data(self, profile: str | None = None) -> bool:
        """Whether this service seeds the demo rows under ``profile`` (default: the process's).

        Raises ValueError when seeding is forced on in the production profile: demo accounts have
        published keys, and anyone could trade as them."""
        profile = security.profile() if profile is None else profile
        if self.seed_demo_data is None:
            return profile == security.DEV_PROFILE
        if self.seed_demo_data and profile != security.DEV_PROFILE:
            raise ValueError(
                f"{ENV_PREFIX}SEED_DEMO_DATA is on in the {profile!r} profile: demo accounts have "
                f"published API keys, so they are seeded only in the {security.DEV_PROFILE!r} profile "
                f"({security.PROFILE_VARIABLE}={security.DEV_PROFILE}); unset it, or issue real accounts "
                "and keys with the admin CLI"
            )
        return self.seed_demo_data

    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir else default_state_dir() / "execution"

    def journal_path(self) -> Path:
        return self.state_path() / "journal"

    def snapshot_path(self) -> Path:
        return self.state_path() / "snapshots"

    def ledger_url(self) -> str:
        return self.ledger_database_url or f"sqlite+aiosqlite:///{self.state_path() / 'ledger.sqlite3'}"

    def shard_map_url(self, environ: Mapping[str, str] | None = None) -> str:
        return self.shard_map_database_url or shardmap.default_url(environ)

    def reference_url(self) -> str:
        """The reference store's SQL URL; by default the cache service's own SQLite file."""
        if self.reference_database_url:
            return self.reference_database_url
        if os.environ.get("DATABASE_URL"):  # the cache service's SQL store when deployed with one
            return os.environ["DATABASE_URL"]
        cache_state = os.environ.get("HFTGATE_CACHE_STATE_DIR") or str(default_state_dir() / "cache")
        return f"sqlite+aiosqlite:///{Path(cache_state) / 'cache.sqlite3'}"


def load_config(environ: Mapping[str, str] | None = None) -> ExecutionConfig:
    """The configuration from the environment; fails fast on a value that cannot work."""
    config = from_env(ExecutionConfig, ENV_PREFIX, environ)
    if config.journal_durability not in ("fsync", "write"):
        raise ValueError(
            f"{ENV_PREFIX}JOURNAL_DURABILITY must be fsync or write, not {config.journal_durability!r}"
        )
    if bool(config.tls_cert_path) != bool(config.tls_key_path):
        raise ValueError(f"{ENV_PREFIX}TLS_CERT_PATH and {ENV_PREFIX}TLS_KEY_PATH must be set together")
    if config.tls_client_ca_path and not config.tls_cert_path:
        raise ValueError(
            f"{ENV_PREFIX}TLS_CLIENT_CA_PATH needs {ENV_PREFIX}TLS_CERT_PATH and {ENV_PREFIX}TLS_KEY_PATH"
        )
    for name in ("tls_cert_path", "tls_key_path", "tls_client_ca_path"):
        path = getattr(config, name)
        if path and not Path(path).is_file():
            raise ValueError(f"{ENV_PREFIX}{name.upper()}={path!r}: no such file")
    config.seeds_demo_data(security.profile(environ))  # fails fast on demo keys in production
    for name in ("loop_cpus", "journal_writer_cpus"):
        try:
            placement.check_spec(getattr(config, name))
        except ValueError as exc:
            raise ValueError(f"{ENV_PREFIX}{name.upper()}: {exc}; use auto, off or a CPU list") from None
    if not 0 <= config.journal_commit_window_us <= 10_000:
        raise ValueError(
            f"{ENV_PREFIX}JOURNAL_COMMIT_WINDOW_US must be 0..10000 microseconds, "
            f"not {config.journal_commit_window_us}"
        )
    if config.journal_ack_poll_us < 0:
        raise ValueError(f"{ENV_PREFIX}JOURNAL_ACK_POLL_US must be 0 or more")
    if not 0 <= config.journal_keep_cpu_us <= JournalWriterThread.MAX_KEEP_CPU_US:
        raise ValueError(
            f"{ENV_PREFIX}JOURNAL_KEEP_CPU_US must be 0..{JournalWriterThread.MAX_KEEP_CPU_US} microseconds, "
            f"not {config.journal_keep_cpu_us}"
        )
    if not 0 <= config.snapshot_min_interval_s <= 3600:  # (False for NaN too)
        raise ValueError(
            f"{ENV_PREFIX}SNAPSHOT_MIN_INTERVAL_S must be 0..3600 seconds, "
            f"not {config.snapshot_min_interval_s}"
        )
    if not 0 <= config.shard_id <= shardmap.MAX_SHARD_ID:
        raise ValueError(f"{ENV_PREFIX}SHARD_ID must be 0..{shardmap.MAX_SHARD_ID}, not {config.shard_id}")
    if config.shard_map_poll_ms < 1:
        raise ValueError(f"{ENV_PREFIX}SHARD_MAP_POLL_MS must be at least 1")
    if config.max_batch_orders < 1 or config.max_stream_message_inputs < 1:
        raise ValueError("max_batch_orders and max_stream_message_inputs must be at least 1")
    for name in (
        "max_streams_per_account",
        "max_streams",
        "stream_page_reports",
        "stream_max_behind_reports",
        "order_stream_max_unsent_inputs",
        "fair_slice_inputs",
        "fair_max_defer_us",
        "retained_reports",
    ):
        if getattr(config, name) < 1:
            raise ValueError(f"{ENV_PREFIX}{name.upper()} must be at least 1")
    return config
