"""Configuration of the cache service, from ``HFTGATE_CACHE_*`` environment variables.

``REDIS_URL`` and ``DATABASE_URL`` are honoured too (as the README promises) when the
``HFTGATE_CACHE_`` forms are not set. With no Redis URL the service starts its own
embedded Redis; with no database URL it keeps SQLite under its state directory.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from hftgate.config import default_state_dir, from_env

ENV_PREFIX = "HFTGATE_CACHE_"


@dataclass(frozen=True)
class CacheConfig:
    """Every setting of one cache-service replica."""

    host: str = "127.0.0.1"
    port: int = 50053
    # Redis URL (redis://host:port/db); empty = start an embedded redis-server.
    redis_url: str = ""
    # SQLAlchemy async URL; empty = SQLite at <state_dir>/cache.sqlite3.
    database_url: str = ""
    # Where the SQLite file and the embedded Redis's log live; empty = HFTGATE_STATE_DIR/cache.
    state_dir: str = ""
    sql_table: str = "cache_entries"
    # Namespace of this cache's keys in Redis (several suites may share one server).
    key_prefix: str = "hftgate:cache:"
    # Name of this replica in logs and invalidation messages; empty = hostname-pid-random.
    replica_id: str = ""
    # L1 (the service's own near cache); 0 entries disables it.
    l1_max_entries: int = 100_000
    l1_max_bytes: int = 256 * 1024 * 1024
    l1_max_ttl_ms: int = 300_000
    negative_ttl_ms: int = 2_000
    tombstone_ttl_ms: int = 60_000
    degraded_near_ttl_ms: int = 1_000
    # After Redis comes back, the keys written to SQL only during the outage are deleted from Redis
    # before it serves again: at most this many, one by one (beyond it, everything under key_prefix),
    # looked up from this long before the outage began (other replicas' clocks may run behind).
    heal_max_keys: int = 50_000
    heal_clock_skew_ms: int = 1_000
    max_key_bytes: int = 512
    max_value_bytes: int = 1024 * 1024
    max_batch_keys: int = 10_000
    redis_max_connections: int = 32
    redis_timeout_ms: int = 1_000
    redis_backoff_initial_ms: int = 50
    redis_backoff_max_ms: int = 2_000
    error_log_interval_ms: int = 10_000
    # "auto" (Redis CLIENT TRACKING, else pub/sub), "tracking" or "pubsub".
    invalidation_mode: str = "auto"
    max_queued_invalidations_per_watcher: int = 10_000
    sql_purge_interval_ms: int = 60_000
    # Table of the admin API's audit log (same database as the cache's table).
    admin_audit_table: str = "admin_audit"
    # How long an API key's account stays resolved (bounded LRU of max entries), so a revoked
    # key stops working on other replicas within this time; revocations here take effect at once.
    api_key_cache_ms: int = 1_000
    api_key_cache_max_entries: int = 10_000
    # Longest WatchInvalidations watcher_name (it is logged); longer is INVALID_ARGUMENT.
    max_watcher_name_chars: int = 128
    # How long a rotated key keeps working beside its successor, unless the request says.
    key_rotation_overlap_ms: int = 3_600_000
    shutdown_grace_ms: int = 5_000
    # Prometheus /metrics on 127.0.0.1 at this port (hftgate/prometheus.py); 0 = no metrics endpoint.
    metrics_port: int = 0
    # The scaler's "host:port": report this replica's load there every second (hftgate/loadreport.py);
    # empty = no reports.
    scaler_address: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir else default_state_dir() / "cache"

    def sql_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.state_path() / 'cache.sqlite3'}"


def load_config(environ: Mapping[str, str] | None = None) -> CacheConfig:
    """The configuration from the environment (see the module docstring)."""
    env = os.environ if environ is None else environ
    config = from_env(CacheConfig, ENV_PREFIX, env)
    if not config.redis_url and env.get("REDIS_URL"):
        config = replace(config, redis_url=env["REDIS_URL"])
    if not config.database_url and env.get("DATABASE_URL"):
        config = replace(config, database_url=env["DATABASE_URL"])
    for name in ("heal_max_keys", "heal_clock_skew_ms"):
        if getattr(config, name) < 0:
            raise ValueError(f"{ENV_PREFIX}{name.upper()} must not be negative")
    if config.degraded_near_ttl_ms <= 0:
        # 0 would mean "no TTL" to a near cache: the staleness bound of an outage would be gone.
        raise ValueError(
            f"{ENV_PREFIX}DEGRADED_NEAR_TTL_MS must be positive, not {config.degraded_near_ttl_ms}"
        )
    mode = config.invalidation_mode
    if mode not in ("auto", "tracking", "pubsub"):
        raise ValueError(f"{ENV_PREFIX}INVALIDATION_MODE must be auto, tracking or pubsub, not {mode!r}")
    return config
