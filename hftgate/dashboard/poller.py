"""Poll the suite over gRPC and build the dashboard's state (what ``/api/state`` serves).

One :class:`Poller` holds one admin-credentialed channel per address and, on each
:meth:`Poller.poll`, asks every service for its figures in parallel: ``grpc.health.v1``
Check, execution ``GetStats`` on every shard of the gateway's map, market data
``GetSnapshot`` (top of book only), cache ``Stats``, gateway ``GetShardMap`` and the scaler's
``ListReplicas`` and ``GetDecisions``. A service that does not answer within
``call_timeout_ms`` is shown as such (its panel says why); the scaler's absence is the
"no scaler" state. Orders/s is computed from two successive ``GetStats`` samples of a shard.

No gRPC import leaks into the state: it is plain JSON-ready dicts.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hftgate.security import ADMIN, ClientCredentials, load_suite_secret, suite_client_tls
from hftgate.v1 import (
    cache_pb2,
    cache_pb2_grpc,
    execution_pb2,
    execution_pb2_grpc,
    gateway_pb2,
    gateway_pb2_grpc,
    marketdata_pb2,
    marketdata_pb2_grpc,
    scaler_pb2,
    scaler_pb2_grpc,
)

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


def _ms(ns: int | float) -> float:
    return round(ns / 1e6, 3)


@dataclass
class _Sample:
    orders_received: int
    collected_ns: int
    #: Orders/s between this sample and the one before it; None for a first sample.
    orders_per_s: float | None


@dataclass
class Poller:
    """Polls the suite; one instance per dashboard, used from one event loop."""

    config: DashboardConfig
    credentials: ClientCredentials
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    _previous: dict[str, _Sample] = field(default_factory=dict)

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
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close(None)

    async def _health(self, name: str, address: str) -> dict[str, Any]:
        stub = health_pb2_grpc.HealthStub(self._channel(address))
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=self._timeout_s)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            return {"name": name, "address": address, "status": status, "error": None}
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            return {"name": name, "address": address, "status": "UNREACHABLE", "error": _error_text(error)}

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

    def _orders_per_s(self, address: str, orders_received: int, collected_ns: int) -> float | None:
        """Orders/s of a shard between its previous sample and this one (None after a restart,
        whose counters went back, or for a first sample); a repeated sample keeps its rate."""
        previous = self._previous.get(address)
        if previous is not None and collected_ns == previous.collected_ns:
            return previous.orders_per_s
        rate: float | None = None
        if (
            previous is not None
            and collected_ns > previous.collected_ns
            and orders_received >= previous.orders_received
        ):
            elapsed_s = (collected_ns - previous.collected_ns) / 1e9
            rate = round((orders_received - previous.orders_received) / elapsed_s, 1)
        self._previous[address] = _Sample(orders_received, collected_ns, rate)
        return rate

    async def _shard_stats(self, shard_id: int | None, address: str) -> dict[str, Any]:
        stub = execution_pb2_grpc.ExecutionServiceStub(self._channel(address))
        base: dict[str, Any] = {"shard_id": shard_id, "address": address}
        try:
            reply = await stub.GetStats(
                execution_pb2.GetStatsRequest(), metadata=self.credentials.metadata, timeout=self._timeout_s
            )
        except (TimeoutError, grpc.aio.AioRpcError) as error:
            self._previous.pop(address, None)
            return {**base, "available": False, "error": _error_text(error)}
        rate = self._orders_per_s(address, reply.orders_received, reply.collected_ns)
        total = reply.total_latency
        return {
            **base,
            "available": True,
            "error": None,
            "orders_per_s": rate,
            "orders_received": reply.orders_received,
            "orders_accepted": reply.orders_accepted,
            "inputs_rejected": reply.inputs_rejected,
            "trades": reply.trades,
            "open_orders": reply.open_orders,
            "latency_count": total.count,
            "p50_ms": _ms(total.p50_ns),
            "p99_ms": _ms(total.p99_ns),
            "p999_ms": _ms(total.p99_9_ns),
        }

    async def _execution(self, shard_map: dict[str, Any]) -> dict[str, Any]:
        shards: list[tuple[int | None, str]] = [(s["shard_id"], s["address"]) for s in shard_map["shards"]]
        if not shards:  # no gateway: the configured shard 0
            shards = [(None, self.config.addresses["execution"])]
        results = await asyncio.gather(*(self._shard_stats(i, a) for i, a in shards))
        live = [r for r in results if r["available"]]
        rates = [r["orders_per_s"] for r in live if r["orders_per_s"] is not None]
        return {
            "shards": list(results),
            "orders_per_s": round(sum(rates), 1) if rates else None,
            "open_orders": sum(r["open_orders"] for r in live) if live else None,
            "orders_received": sum(r["orders_received"] for r in live) if live else None,
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
            return {"available": False, "error": _error_text(error), "symbols": None, "top": []}
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
        return {
            "available": True,
            "error": None,
            "symbols": len(reply.symbols),
            "more_symbols": reply.truncated,
            "accepted_ticks": reply.stats.accepted,
            "rejected_ticks": reply.stats.rejected,
            "subscribers": reply.stats.subscribers,
            "top": top,
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

    async def poll(self) -> dict[str, Any]:
        """One sample of the whole suite, as JSON-ready data (cancelling it cancels every call)."""
        health, (shard_map, execution), marketdata, cache, scaler = await asyncio.gather(
            asyncio.gather(*(self._health(name, a) for name, a in self.config.addresses.items())),
            self._gateway_and_execution(),
            self._marketdata(),
            self._cache(),
            self._scaler(),
        )
        return {
            "collected_ms": int(time.time() * 1000),
            "services": list(health),
            "execution": execution,
            "marketdata": marketdata,
            "cache": cache,
            "gateway": shard_map,
            "scaler": scaler,
        }
