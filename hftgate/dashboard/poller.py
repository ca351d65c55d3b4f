"""Poll the suite over gRPC and build the dashboard's state (what ``/api/state`` serves).

One :class:`Poller` holds one admin-credentialed channel per address and, on each
:meth:`Poller.poll`, asks every service for its figures in parallel: ``grpc.health.v1``
Check, execution ``GetStats`` on every shard of the gateway's map, market data
``GetSnapshot`` (top of book only), cache ``Stats``, gateway ``GetShardMap`` and the scaler's
``ListReplicas`` and ``GetDecisions``; market data's ``StreamArbitrage`` is followed by one
long-lived stream (:class:`ArbitrageWatch`). A service that does not answer within
``call_timeout_ms`` is shown as such (its panel says why); the scaler's absence is the
"no scaler" state. Rates (orders/s, rejects/s, fsyncs/s, ticks/s per venue) are computed from
two successive samples of the same counters.

Latency percentiles are the services' own (``GetStats``: HDR histograms since each shard
started); the suite-wide figure of a percentile is the worst shard's, since percentiles of
different shards cannot be merged from summaries. Each sample also carries ``series``: one
flat point of the charted figures, which the HTTP side keeps a bounded history of.

No gRPC import leaks into the state: it is plain JSON-ready dicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hftgate import shardmap
from hftgate.security import ADMIN, ClientCredentials, load_suite_secret, suite_client_tls
from hftgate.v1 import (
    cache_pb2,
    cache_pb2_grpc,
    common_pb2,
    execution_pb2,
    execution_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    marketdata_pb2,
    marketdata_pb2_grpc,
    scaler_pb2,
    scaler_pb2_grpc,
)

log = logging.getLogger(__name__)

#: Default gRPC ports, as ``hftgate up`` uses them (hftgate.supervisor.ALL_SERVICES).
DEFAULT_PORTS: Mapping[str, int] = {
    "gateway": 50050,
    "execution": 50051,
    "marketdata": 50052,
    "cache": 50053,
    "scaler": 50054,
}
#: Symbols shown with their top of book; the snapshot asks for at most this many.
MAX_TOP_OF_BOOK = 8
#: Scaling decisions shown, newest first.
MAX_DECISIONS = 10
#: Replicas shown (a scaler with more lists the first ones).
MAX_REPLICAS = 50
#: Execution shards polled (the gateway's map may name more; the rest are not shown).
MAX_SHARDS = 32
#: Longest error text kept for a panel (gRPC details can be long).
MAX_ERROR_CHARS = 200
#: Venues whose tick rates are shown (a feed naming more shows the first ones by name).
MAX_VENUES = 16
#: Symbols listed under each shard (the owners of the symbols market data has seen, and pins).
MAX_SYMBOLS_PER_SHARD = 40
#: Reject reasons shown, largest count first.
MAX_REJECT_REASONS = 8
#: Arbitrage opportunities tracked as open (beyond it the oldest are forgotten) and recent
#: events shown.
MAX_OPEN_ARBITRAGE = 1_024
MAX_RECENT_ARBITRAGE = 10
#: Wait before reopening the arbitrage stream after it ended or failed.
ARBITRAGE_RETRY_S = 2.0


@dataclass(frozen=True)
class DashboardConfig:
    """Where the suite's services are and how the dashboard serves and polls them."""

    #: host:port of each service (``execution`` is shard 0: the others come from the gateway's map).
    addresses: Mapping[str, str]
    #: Interface of the HTTP server; loopback only by default.
    http_host: str = "127.0.0.1"
    #: Port of the HTTP server (0 = any free port).
    http_port: int = 8080
    #: How often the suite is polled, in milliseconds.
    poll_interval_ms: int = 1000
    #: Deadline of each gRPC call, in milliseconds.
    call_timeout_ms: int = 800
    #: How often services that were SERVING are health-checked again (any other state is checked
    #: on every poll); the other figures fail on their own, at once, when a service goes away.
    health_interval_ms: int = 5000

    @staticmethod
    def from_env(environ: Mapping[str, str] | None = None, *, http_port: int = 8080) -> DashboardConfig:
        """Addresses from the variables ``hftgate up`` uses: ``HFTGATE_<SERVICE>_PORT`` (on
        127.0.0.1) unless ``HFTGATE_DASHBOARD_<SERVICE>_ADDRESS`` names a host:port."""
        env = os.environ if environ is None else environ
        addresses = {}
        for service, default_port in DEFAULT_PORTS.items():
            explicit = env.get(f"HFTGATE_DASHBOARD_{service.upper()}_ADDRESS")
            if explicit:
                addresses[service] = explicit
            else:
                port = env.get(f"HFTGATE_{service.upper()}_PORT") or str(default_port)
                addresses[service] = f"127.0.0.1:{port}"
        return DashboardConfig(addresses=addresses, http_port=http_port)


def _error_text(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        code = error.code()
        text = f"{code.name if code else 'UNKNOWN'}: {error.details() or ''}".strip()
    elif isinstance(error, TimeoutError):
        text = "no answer in time"
    else:
        text = type(error).__name__
    return text[:MAX_ERROR_CHARS]


def _reject_reason(reason: int) -> str:
    return common_pb2.RejectReason.Name(reason).removeprefix("REJECT_REASON_")  # type: ignore[arg-type]


def _ms(ns: int | float) -> float:
    return round(ns / 1e6, 3)


class _Rates:
    """Per-second rates of monotonic counters between successive samples, by key.

    A counter that went back (a restart) or a first sample gives None; a repeated sample
    (same collection time) keeps the rate it had. Bounded: one entry per key polled."""

    def __init__(self, max_keys: int = 4 * MAX_SHARDS + 2 * MAX_VENUES + 8) -> None:
        self._last: dict[str, tuple[int, int, float | None]] = {}
        self._max_keys = max_keys

    def rate(self, key: str, count: int, collected_ns: int) -> float | None:
        previous = self._last.get(key)
        if previous is not None and collected_ns == previous[1]:
            return previous[2]
        rate: float | None = None
        if previous is not None and collected_ns > previous[1] and count >= previous[0]:
            rate = round((count - previous[0]) / ((collected_ns - previous[1]) / 1e9), 1)
        if key not in self._last and len(self._last) >= self._max_keys:
            self._last.pop(next(iter(self._last)))
        self._last[key] = (count, collected_ns, rate)
        return rate

    def forget(self, prefix: str) -> None:
        for key in [k for k in self._last if k.startswith(prefix)]:
            del self._last[key]


def _leg_text(leg: marketdata_pb2.ArbitrageLeg) -> str:
    side = "buy" if leg.side == 1 else "sell"
    return f"{side} {leg.venue} {leg.symbol} @ {leg.price:g}"


@dataclass
class ArbitrageWatch:
    """Follows market data's ``StreamArbitrage`` on one long-lived stream (reopened after
    ``ARBITRAGE_RETRY_S`` when it ends): opportunities open now, counts since the watch began,
    and the newest events. Its tables are bounded (``MAX_OPEN_ARBITRAGE``,
    ``MAX_RECENT_ARBITRAGE``)."""

    opened: int = 0
    closed: int = 0
    connected: bool = False
    error: str | None = "not connected yet"
    open_now: dict[int, float] = field(default_factory=dict)  # opportunity id -> edge bps
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=MAX_RECENT_ARBITRAGE))
    _seen_open_ids: bool = False

    def on_event(self, event: marketdata_pb2.ArbitrageEvent) -> None:
        opened = event.type == marketdata_pb2.ARBITRAGE_EVENT_TYPE_OPENED
        if opened:
            self.opened += 1
            if len(self.open_now) >= MAX_OPEN_ARBITRAGE:
                self.open_now.pop(next(iter(self.open_now)))
            self.open_now[event.opportunity_id] = event.edge_bps
        else:
            self.closed += 1
            self.open_now.pop(event.opportunity_id, None)
        self.recent.appendleft(
            {
                "opportunity_id": event.opportunity_id,
                "event": "opened" if opened else "closed",
                "kind": marketdata_pb2.ArbitrageKind.Name(event.kind).removeprefix("ARBITRAGE_KIND_"),
                "legs": " / ".join(_leg_text(leg) for leg in event.legs[:3]),
                "edge_bps": round(event.edge_bps, 3),
                "peak_edge_bps": round(event.peak_edge_bps, 3),
                "lifetime_ms": round(event.lifetime_ns / 1e6, 3) if not opened else None,
            }
        )

    def state(self) -> dict[str, Any]:
        return {
            "available": self.connected,
            "error": None if self.connected else self.error,
            "open_now": len(self.open_now),
            "best_open_edge_bps": round(max(self.open_now.values()), 3) if self.open_now else None,
            "opened": self.opened,
            "closed": self.closed,
            "recent": list(self.recent),
        }


@dataclass
class Poller:
    """Polls the suite; one instance per dashboard, used from one event loop."""

    config: DashboardConfig
    credentials: ClientCredentials
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    _rates: _Rates = field(default_factory=_Rates)
    _peak_orders_per_s: float | None = None
    arbitrage: ArbitrageWatch = field(default_factory=ArbitrageWatch)
    _arbitrage_task: asyncio.Task[None] | None = None
    _health_checked: list[dict[str, Any]] | None = None
    _health_due: float = 0.0

    @staticmethod
    def for_suite(config: DashboardConfig, environ: Mapping[str, str] | None = None) -> Poller:
        """Admin credentials from the suite secret (and the suite's TLS when ``HFTGATE_TLS_DIR`` is set).

        The dashboard never makes a secret (one of its own would be refused by every service):
        with none to read it raises hftgate.security.SecurityError saying where it looked."""
        env = os.environ if environ is None else environ
        secret = load_suite_secret(env, create=False)
        return Poller(config, secret.service_credentials(ADMIN, suite_client_tls(ADMIN, env)))

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self.credentials.open_channel(address)
            self._channels[address] = channel
        return channel

    @property
    def _timeout_s(self) -> float:
        return self.config.call_timeout_ms / 1000

    async def close(self) -> None:
        task, self._arbitrage_task = self._arbitrage_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)

    async def _follow_arbitrage(self) -> None:
        watch = self.arbitrage
        while True:
            channel = self._channel(self.config.addresses["marketdata"])
            call = marketdata_pb2_grpc.MarketDataServiceStub(channel).StreamArbitrage(
                marketdata_pb2.StreamArbitrageRequest(include_open=True), metadata=self.credentials.metadata
            )
            try:
                # A reopened stream replays what is open now: start from an empty open set.
                watch.open_now.clear()
                watch.connected, watch.error = True, None
                async for event in call:
                    watch.on_event(event)
                watch.error = "stream ended"
            except grpc.aio.AioRpcError as error:
                watch.error = _error_text(error)
            finally:
                watch.connected = False
                call.cancel()
            await asyncio.sleep(ARBITRAGE_RETRY_S)

    async def _health(self, name: str, address: str) -> dict[str, Any]:
        stub = health_pb2_grpc.HealthStub(self._channel(address))
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=self._timeout_s)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return {"name": name, "address": address, "status": status, "error": None}
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            return {"name": name, "address": address, "status": "UNREACHABLE", "error": _error_text(error)}

    async def _all_health(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        checked = self._health_checked
        if checked is not None and now < self._health_due and all(h["status"] == "SERVING" for h in checked):
            return checked
        checked = list(await asyncio.gather(*(self._health(n, a) for n, a in self.config.addresses.items())))
        self._health_checked, self._health_due = checked, now + self.config.health_interval_ms / 1000
        return checked

    async def _shard_map(self) -> dict[str, Any]:
        stub = gateway_pb2_grpc.GatewayServiceStub(self._channel(self.config.addresses["gateway"]))
        try:
            reply = await stub.GetShardMap(
                gateway_pb2.GetShardMapRequest(), metadata=self.credentials.metadata, timeout=self._timeout_s
            )
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            return {"available": False, "error": _error_text(error), "epoch": None, "shards": [], "pins": []}
        return {
            "available": True,
            "error": None,
            "epoch": reply.map.epoch,
            "shards": [{"shard_id": s.shard_id, "address": s.address} for s in reply.map.shards][:MAX_SHARDS],
            "pins": [{"symbol": p.symbol, "shard_id": p.shard_id} for p in reply.map.pins],
        }

    async def _shard_stats(self, shard_id: int | None, address: str) -> dict[str, Any]:
        stub = execution_pb2_grpc.ExecutionServiceStub(self._channel(address))
        base: dict[str, Any] = {"shard_id": shard_id, "address": address}
        try:
            reply = await stub.GetStats(
                execution_pb2.GetStatsRequest(), metadata=self.credentials.metadata, timeout=self._timeout_s
            )
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            self._rates.forget(f"shard {address} ")
            return {**base, "available": False, "error": _error_text(error)}
        at = reply.collected_ns
        total, journal = reply.total_latency, reply.journal_latency
        up_s = (reply.collected_ns - reply.started_ns) / 1e9
        rejects = sorted(reply.rejects_by_reason, key=lambda r: -r.count)[:MAX_REJECT_REASONS]
        return {
            **base,
            "available": True,
            "error": None,
            "orders_per_s": self._rates.rate(f"shard {address} orders", reply.orders_received, at),
            "average_orders_per_s": round(reply.orders_received / up_s, 1) if up_s > 0 else None,
            "rejects_per_s": self._rates.rate(f"shard {address} rejects", reply.inputs_rejected, at),
            "fsyncs_per_s": self._rates.rate(f"shard {address} fsyncs", reply.journal_fsyncs, at),
            "orders_received": reply.orders_received,
            "orders_accepted": reply.orders_accepted,
            "inputs_rejected": reply.inputs_rejected,
            "rejects_by_reason": [{"reason": _reject_reason(r.reason), "count": r.count} for r in rejects],
            "trades": reply.trades,
            "open_orders": reply.open_orders,
            "journal_records": reply.journal_records,
            "journal_fsyncs": reply.journal_fsyncs,
            "snapshots_taken": reply.snapshots_taken,
            "latency_count": total.count,
            "p50_ms": _ms(total.p50_ns),
            "p99_ms": _ms(total.p99_ns),
            "p999_ms": _ms(total.p99_9_ns),
            "journal_p50_ms": _ms(journal.p50_ns),
            "journal_p99_ms": _ms(journal.p99_ns),
            "journal_p999_ms": _ms(journal.p99_9_ns),
        }

    async def _execution(self, shard_map: dict[str, Any]) -> dict[str, Any]:
        shards: list[tuple[int | None, str]] = [(s["shard_id"], s["address"]) for s in shard_map["shards"]]
        if not shards:  # no gateway: the configured shard 0
            shards = [(None, self.config.addresses["execution"])]
        results = await asyncio.gather(*(self._shard_stats(i, a) for i, a in shards))
        live = [r for r in results if r["available"]]

        def total(key: str, digits: int = 1) -> float | None:
            values = [r[key] for r in live if r[key] is not None]
            return round(sum(values), digits) if values else None

        def worst(key: str) -> float | None:
            # Shards that have not recorded an order yet report 0: they do not set the figure.
            values = [r[key] for r in live if r["latency_count"]]
            return max(values) if values else None

        rate = total("orders_per_s")
        if rate is not None:
            self._peak_orders_per_s = max(rate, self._peak_orders_per_s or 0.0)
        records, fsyncs = sum(r["journal_records"] for r in live), sum(r["journal_fsyncs"] for r in live)
        reasons: dict[str, int] = {}
        for shard in live:
            for reject in shard["rejects_by_reason"]:
                reasons[reject["reason"]] = reasons.get(reject["reason"], 0) + reject["count"]
        return {
            "shards": list(results),
            "orders_per_s": rate,
            "peak_orders_per_s": self._peak_orders_per_s,
            "average_orders_per_s": total("average_orders_per_s"),
            "rejects_per_s": total("rejects_per_s"),
            "fsyncs_per_s": total("fsyncs_per_s"),
            "records_per_fsync": round(records / fsyncs, 2) if fsyncs else None,
            "snapshots_taken": sum(r["snapshots_taken"] for r in live) if live else None,
            "open_orders": sum(r["open_orders"] for r in live) if live else None,
            "orders_received": sum(r["orders_received"] for r in live) if live else None,
            "inputs_rejected": sum(r["inputs_rejected"] for r in live) if live else None,
            "rejects_by_reason": [
                {"reason": k, "count": v} for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])
            ][:MAX_REJECT_REASONS],
            "p50_ms": worst("p50_ms"),
            "p99_ms": worst("p99_ms"),
            "p999_ms": worst("p999_ms"),
            "journal_p50_ms": worst("journal_p50_ms"),
            "journal_p99_ms": worst("journal_p99_ms"),
        }

    async def _marketdata(self) -> dict[str, Any]:
        stub = marketdata_pb2_grpc.MarketDataServiceStub(self._channel(self.config.addresses["marketdata"]))
        try:
            reply = await stub.GetSnapshot(
                marketdata_pb2.GetSnapshotRequest(depth_levels=0),
                metadata=self.credentials.metadata,
                timeout=self._timeout_s,
            )
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            self._rates.forget("venue ")
            return {
                "available": False,
                "error": _error_text(error),
                "symbols": None,
                "top": [],
                "venues": [],
                "symbol_names": [],
            }
        at = time.time_ns()
        top = [
            {
                "venue": s.symbol.venue,
                "symbol": s.symbol.name,
                "bid": s.top.bid_price or None,
                "ask": s.top.ask_price or None,
                "last": s.last_trade.price if s.HasField("last_trade") else None,
                "quotes": s.quotes,
                "trades": s.trades,
            }
            for s in reply.symbols[:MAX_TOP_OF_BOOK]
        ]
        ticks: dict[str, list[int]] = {}
        for s in reply.symbols:
            counts = ticks.get(s.symbol.venue)
            if counts is None:
                if len(ticks) >= MAX_VENUES:
                    continue
                counts = ticks[s.symbol.venue] = [0, 0]
            counts[0] += s.quotes
            counts[1] += s.trades
        venues = [
            {
                "venue": venue,
                "quotes": quotes,
                "trades": trades,
                "ticks_per_s": self._rates.rate(f"venue {venue}", quotes + trades, at),
            }
            for venue, (quotes, trades) in sorted(ticks.items())
        ]
        return {
            "available": True,
            "error": None,
            "symbols": len(reply.symbols),
            "more_symbols": reply.truncated,
            "accepted_ticks": reply.stats.accepted,
            "rejected_ticks": reply.stats.rejected,
            "subscribers": reply.stats.subscribers,
            "top": top,
            "venues": venues,
            "symbol_names": sorted({s.symbol.name for s in reply.symbols}),
        }

    async def _cache(self) -> dict[str, Any]:
        stub = cache_pb2_grpc.CacheServiceStub(self._channel(self.config.addresses["cache"]))
        try:
            reply = await stub.Stats(
                cache_pb2.CacheStatsRequest(), metadata=self.credentials.metadata, timeout=self._timeout_s
            )
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            return {"available": False, "error": _error_text(error), "hit_ratio": None, "levels": []}
        levels = [
            {
                "level": cache_pb2.CacheLevel.Name(level.level),
                "hits": level.hits,
                "misses": level.misses,
                "hit_ratio": round(level.hit_ratio, 4),
            }
            for level in reply.levels
        ]
        # Overall: a lookup is a hit if some level answered it; every lookup starts at the first level.
        first = reply.levels[0] if reply.levels else None
        lookups = (first.hits + first.misses) if first is not None else 0
        hits = sum(level.hits for level in reply.levels)
        return {
            "available": True,
            "error": None,
            "hit_ratio": round(hits / lookups, 4) if lookups else None,
            "levels": levels,
            "redis_available": reply.redis_available,
        }

    async def _scaler(self) -> dict[str, Any]:
        stub = scaler_pb2_grpc.ScalerServiceStub(self._channel(self.config.addresses["scaler"]))
        try:
            replicas, decisions = await asyncio.gather(
                stub.ListReplicas(
                    scaler_pb2.ListReplicasRequest(),
                    metadata=self.credentials.metadata,
                    timeout=self._timeout_s,
                ),
                stub.GetDecisions(
                    scaler_pb2.GetDecisionsRequest(limit=MAX_DECISIONS),
                    metadata=self.credentials.metadata,
                    timeout=self._timeout_s,
                ),
            )
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            return {"available": False, "error": _error_text(error), "replicas": [], "decisions": []}
        return {
            "available": True,
            "error": None,
            "replicas": [
                {
                    "service": r.service,
                    "replica_id": r.replica_id,
                    "address": r.address,
                    "state": scaler_pb2.ReplicaState.Name(r.state),
                }
                for r in replicas.replicas[:MAX_REPLICAS]
            ],
            "decisions": [
                {
                    "decision_id": d.decision_id,
                    "service": d.service,
                    "decided_ns": d.decided_ns,
                    "action": scaler_pb2.ScalingAction.Name(d.action),
                    "current_replicas": d.current_replicas,
                    "desired_replicas": d.desired_replicas,
                    "reason": d.reason,
                }
                for d in decisions.decisions[:MAX_DECISIONS]
            ],
        }

    async def _gateway_and_execution(self) -> tuple[dict[str, Any], dict[str, Any]]:
        shard_map = await self._shard_map()  # the shards to ask come from the gateway's map
        return shard_map, await self._execution(shard_map)

    def _ensure_arbitrage_watch(self) -> None:
        if self._arbitrage_task is None or self._arbitrage_task.done():
            self._arbitrage_task = asyncio.get_running_loop().create_task(
                self._follow_arbitrage(), name="dashboard-arbitrage"
            )

    async def poll(self) -> dict[str, Any]:
        """One sample of the whole suite, as JSON-ready data (cancelling it cancels every call)."""
        self._ensure_arbitrage_watch()
        health, (shard_map, execution), marketdata, cache, scaler = await asyncio.gather(
            self._all_health(),
            self._gateway_and_execution(),
            self._marketdata(),
            self._cache(),
            self._scaler(),
        )
        _add_owned_symbols(shard_map, marketdata["symbol_names"])
        arbitrage = self.arbitrage.state()
        state = {
            "collected_ms": int(time.time() * 1000),
            "services": list(health),
            "execution": execution,
            "marketdata": marketdata,
            "cache": cache,
            "gateway": shard_map,
            "scaler": scaler,
            "arbitrage": arbitrage,
        }
        state["series"] = chart_point(state)
        return state


def _add_owned_symbols(shard_map: dict[str, Any], seen: list[str]) -> None:
    """Each shard of the map gets the symbols it owns among those seen (market data's names and
    the pins), computed from the map as every process computes it (hftgate.shardmap)."""
    if not shard_map["available"] or not shard_map["shards"]:
        return
    try:
        live = shardmap.ShardMap(
            shard_map["epoch"],
            [shardmap.Shard(s["shard_id"], s["address"]) for s in shard_map["shards"]],
            {p["symbol"]: p["shard_id"] for p in shard_map["pins"]},
        )
    except (shardmap.ShardMapError, ValueError):  # a map this build cannot read: no symbols shown
        return
    owned: dict[int, list[str]] = {s["shard_id"]: [] for s in shard_map["shards"]}
    for symbol in sorted({*seen, *(p["symbol"] for p in shard_map["pins"])}):
        try:
            owner = live.owner(symbol).shard_id
        except (shardmap.ShardMapError, ValueError):  # a name that is no valid symbol
            continue
        if owner in owned and len(owned[owner]) < MAX_SYMBOLS_PER_SHARD:
            owned[owner].append(symbol)
    for shard in shard_map["shards"]:
        shard["symbols"] = owned[shard["shard_id"]]


def chart_point(state: Mapping[str, Any]) -> dict[str, Any]:
    """The charted figures of one sample, flat (what the page's charts add a point of)."""
    execution, cache, scaler = state["execution"], state["cache"], state["scaler"]
    point: dict[str, Any] = {
        "t": state["collected_ms"],
        "p50_ms": execution["p50_ms"],
        "p99_ms": execution["p99_ms"],
        "p999_ms": execution["p999_ms"],
        "orders_per_s": execution["orders_per_s"],
        "rejects_per_s": execution["rejects_per_s"],
        "journal_p50_ms": execution["journal_p50_ms"],
        "journal_p99_ms": execution["journal_p99_ms"],
        "fsyncs_per_s": execution["fsyncs_per_s"],
        "hit_ratio": cache["hit_ratio"],
        "replicas": len(scaler["replicas"]) if scaler["available"] else None,
        "arbitrage_open": state["arbitrage"]["open_now"] if state["arbitrage"]["available"] else None,
    }
    for level in cache["levels"]:
        point["hit_" + level["level"].removeprefix("CACHE_LEVEL_")] = level["hit_ratio"]
    for venue in state["marketdata"]["venues"]:
        point["venue " + venue["venue"]] = venue["ticks_per_s"]
    return point
