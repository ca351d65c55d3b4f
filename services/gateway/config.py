"""Configuration of the gateway, from ``HFTGATE_GATEWAY_*`` environment variables.

Every field below is read from ``HFTGATE_GATEWAY_<FIELD NAME IN UPPER CASE>``; e.g.
``HFTGATE_GATEWAY_EXECUTION_SHARDS=0=127.0.0.1:50051,1=127.0.0.1:50061``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hftgate import shardmap
from hftgate.config import default_state_dir, from_env
from services.gateway import balancer as balancer_module

ENV_PREFIX = "HFTGATE_GATEWAY_"


@dataclass(frozen=True)
class GatewayConfig:
    """Every setting of the gateway, with its unit in its name."""

    # Interface and port to listen on.
    host: str = "127.0.0.1"
    port: int = 50050
    # How long a stopping gateway lets in-flight calls finish.
    shutdown_grace_s: float = 5.0
    # Where the default SQLite shard map lives (<state_dir>/shardmap/); empty = HFTGATE_STATE_DIR.
    state_dir: str = ""

    # The shard map (hftgate/shardmap.py): SQLAlchemy async URL; empty = HFTGATE_SHARD_MAP_DATABASE_URL,
    # else DATABASE_URL, else SQLite under the state directory (the same file every process reads).
    shard_map_database_url: str = ""
    shard_map_table: str = shardmap.DEFAULT_TABLE
    shard_map_name: str = shardmap.DEFAULT_MAP_NAME
    # The map to store when none is stored yet ("ID=HOST:PORT" or "HOST:PORT", comma separated);
    # empty = one shard, id 0, at 127.0.0.1:50051 owning everything. Once a map is stored it is
    # the truth: this setting is then only compared with it (a difference is logged).
    execution_shards: tuple[str, ...] = ()
    # How often the stored map's epoch is read for changes.
    shard_map_poll_ms: int = 500

    # Reference data (API keys -> accounts), as the execution service reads it: through the cache
    # service (as principal "gateway") when an address is set, else the cache's SQL table directly.
    cache_address: str = ""
    reference_database_url: str = ""
    reference_table: str = "cache_entries"
    reference_local_ttl_ms: int = 1_000

    # The deadline a forwarded unary call gets when its client set none (a shard that hangs must
    # not hold the call forever); a client's own deadline is always propagated as it is.
    default_deadline_ms: int = 10_000
    # Largest SubmitOrders batch the gateway splits (the shards' own limit applies per shard).
    max_batch_orders: int = 10_000
    # (account, client order id) -> shard routes remembered from submissions, so a cancel, replace or
    # get by client order id goes to one shard; older routes are forgotten past this many.
    max_routes: int = 200_000
    # Whether the shards allocate order ids with their shard id in bits 48..62 (hftgate/shardmap.py;
    # the execution service does, HFTGATE_EXECUTION_SHARD_ID). Then a cancel, replace or get by order
    # id goes straight to that shard. Off (for shards that predate it): ids of different shards
    # collide, so the gateway asks every shard (read-only GetOrder) and refuses an id that more than
    # one shard has for the account.
    order_id_shard_bits: bool = True
    # Also forward the caller's API key to the shard. Off: the shard trusts the account header
    # (x-hftgate-account) on calls with the "gateway" principal's token, so the key is checked
    # only here and never leaves the gateway.
    forward_api_key: bool = False

    # Per-account order rate limit at the gateway (services/gateway/ratelimit.py): a token bucket of
    # rate_limit_burst_orders tokens refilled at rate_limit_orders_per_s; an order or replace costs
    # one (a batch of N costs N), a cancel nothing. A unary call over it answers RESOURCE_EXHAUSTED
    # with RetryInfo; an OrderStream over it is paced (its messages are read more slowly).
    # rate_limit_orders_per_s = 0 turns the limit off (the shards' own limits still apply).
    rate_limit_orders_per_s: float = 10_000.0
    rate_limit_burst_orders: int = 20_000
    # Accounts whose buckets are kept (least recently used forgotten first; a forgotten bucket
    # comes back full, as an idle one would be).
    rate_limit_max_accounts: int = 100_000

    # OrderStream across shards (services/gateway/fanout.py): inputs sent to shards whose acks the
    # client has not been given; at this many the gateway reads no more of the client's messages.
    order_stream_max_pending_inputs: int = 10_000
    # Inputs a client stream message may carry (as the shards' max_stream_message_inputs).
    max_stream_message_inputs: int = 1_000
    # Shard response messages held per upstream stream before the gateway stops reading that shard
    # (gRPC flow control then holds the shard); a client that does not read is so cut off by the
    # shard's own "reader too slow", never buffered here without bound.
    stream_max_queued_messages: int = 64
    # Acks and reports per merged OrderStream response message.
    stream_page_items: int = 256
    # StreamExecutions across shards: reports read from the shards and not yet sent to the client.
    stream_merge_buffer_reports: int = 1_024

    # Replicas of the stateless services the gateway balances ("HOST:PORT", comma separated); empty =
    # the gateway does not serve that API. The scaler's WatchReplicas can replace these lists later
    # (services/gateway/replicas.py: ReplicaSource).
    marketdata_replicas: tuple[str, ...] = ()
    cache_replicas: tuple[str, ...] = ()
    # How a replica is chosen: p2c_peak_ewma, p2c_inflight or round_robin (services/gateway/balancer.py).
    balancer: str = balancer_module.DEFAULT_ALGORITHM
    # Time constant of the peak-EWMA latency's decay (towards faster observations, and towards zero
    # while a replica gets no calls and the others do, so a once-slow replica is tried again; a pause
    # in all traffic counts for 100 ms at most).
    balancer_decay_ms: int = 1_000
    # How long a replica that failed a call in transport (UNAVAILABLE) gets no new calls.
    balancer_eject_ms: int = 1_000
    # First back-off before a broken health watch of a replica is re-opened (doubles up to 1 s).
    health_retry_ms: int = 100
    # Prometheus /metrics on 127.0.0.1 at this port (hftgate/prometheus.py); 0 = no metrics endpoint.
    metrics_port: int = 0
    # The scaler's "host:port": report this replica's load there every second (hftgate/loadreport.py)
    # and follow its WatchReplicas for the market data and cache replicas, on top of the lists above
    # (services/gateway/replicas.py: ScalerReplicas); empty = neither.
    scaler_address: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def state_path(self) -> Path:
        return Path(self.state_dir) if self.state_dir else default_state_dir()

    def shard_map_url(self, environ: Mapping[str, str] | None = None) -> str:
        if self.shard_map_database_url:
            return self.shard_map_database_url
        return shardmap.default_url(environ, self.state_path())

    def initial_map(self) -> shardmap.ShardMap:
        """The map to store when none exists yet."""
        if not self.execution_shards:
            return shardmap.ShardMap.single()
        return shardmap.ShardMap(1, shardmap.parse_shards(self.execution_shards))

    def reference_url(self) -> str:
        """The reference store's SQL URL; by default the cache service's own SQLite file."""
        if self.reference_database_url:
            return self.reference_database_url
        if os.environ.get("DATABASE_URL"):
            return os.environ["DATABASE_URL"]
        cache_state = os.environ.get("HFTGATE_CACHE_STATE_DIR") or str(default_state_dir() / "cache")
        return f"sqlite+aiosqlite:///{Path(cache_state) / 'cache.sqlite3'}"


def load_config(environ: Mapping[str, str] | None = None) -> GatewayConfig:
    """The configuration from the environment; fails fast on a value that cannot work."""
    config = from_env(GatewayConfig, ENV_PREFIX, environ)
    if config.execution_shards:
        try:
            config.initial_map()
        except shardmap.ShardMapError as exc:
            raise ValueError(f"{ENV_PREFIX}EXECUTION_SHARDS: {exc}") from None
    for name in ("shard_map_poll_ms", "default_deadline_ms", "max_batch_orders", "max_routes"):
        if getattr(config, name) < 1:
            raise ValueError(f"{ENV_PREFIX}{name.upper()} must be at least 1, not {getattr(config, name)}")
    if config.balancer not in balancer_module.ALGORITHMS:
        raise ValueError(
            f"{ENV_PREFIX}BALANCER={config.balancer!r} is not one of {', '.join(balancer_module.ALGORITHMS)}"
        )
    for name in (
        "rate_limit_burst_orders",
        "rate_limit_max_accounts",
        "order_stream_max_pending_inputs",
        "max_stream_message_inputs",
        "stream_max_queued_messages",
        "stream_page_items",
        "stream_merge_buffer_reports",
    ):
        if getattr(config, name) < 1:
            raise ValueError(f"{ENV_PREFIX}{name.upper()} must be at least 1, not {getattr(config, name)}")
    if config.rate_limit_orders_per_s < 0 or config.rate_limit_orders_per_s != config.rate_limit_orders_per_s:
        raise ValueError(
            f"{ENV_PREFIX}RATE_LIMIT_ORDERS_PER_S must be >= 0 (0: off), not {config.rate_limit_orders_per_s}"
        )
    for name in ("balancer_decay_ms", "health_retry_ms"):
        if getattr(config, name) < 1:
            raise ValueError(f"{ENV_PREFIX}{name.upper()} must be at least 1, not {getattr(config, name)}")
    if config.balancer_eject_ms < 0:
        raise ValueError(f"{ENV_PREFIX}BALANCER_EJECT_MS must be >= 0, not {config.balancer_eject_ms}")
    for name in ("marketdata_replicas", "cache_replicas"):
        addresses = [a.strip() for a in getattr(config, name)]
        if any(not a or " " in a or ":" not in a for a in addresses):
            raise ValueError(f"{ENV_PREFIX}{name.upper()}: each replica must be HOST:PORT, got {addresses!r}")
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"{ENV_PREFIX}{name.upper()}: a replica is listed twice: {addresses!r}")
    if config.reference_local_ttl_ms < 1:
        raise ValueError(f"{ENV_PREFIX}REFERENCE_LOCAL_TTL_MS must be at least 1")
    return config
