"""Prometheus view of the gateway: calls in flight per upstream replica, the shard map it routes by,
the calls its rate limit refused.

Read when Prometheus scrapes. ``python -m services.gateway`` registers it on the default
registry and serves it on ``HFTGATE_GATEWAY_METRICS_PORT`` (hftgate/prometheus.py). Each
forwarded call is also counted per method and status by the shared RPC series
(``hftgate_rpc_total``, ``hftgate_rpc_seconds``).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from services.gateway.app import GatewayApp


class GatewayCollector(Collector):
    """Reads a :class:`GatewayApp` when Prometheus scrapes."""

    def __init__(self, app: GatewayApp) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        labels = ["upstream", "replica"]
        inflight = GaugeMetricFamily(
            "hftgate_gateway_upstream_inflight", "Calls in flight to each balanced replica", labels=labels
        )
        calls = CounterMetricFamily(
            "hftgate_gateway_upstream_calls", "Calls sent to each balanced replica", labels=labels
        )
        failures = CounterMetricFamily(
            "hftgate_gateway_upstream_failures",
            "Calls to each balanced replica that failed in transport (UNAVAILABLE)",
            labels=labels,
        )
        serving = GaugeMetricFamily(
            "hftgate_gateway_upstream_serving",
            "1 when the replica's health watch says SERVING and it is not draining, else 0",
            labels=labels,
        )
        for pool in list(self.app.pools.values()):
            for replica in pool.replicas:
                endpoint = replica.endpoint
                key = [pool.label, endpoint.address]
                inflight.add_metric(key, endpoint.inflight)
                calls.add_metric(key, endpoint.calls)
                failures.add_metric(key, endpoint.failures)
                serving.add_metric(key, 1.0 if endpoint.serving is True and not endpoint.draining else 0.0)
        yield from (inflight, calls, failures, serving)
        shard_map = self.app.shard_map
        yield GaugeMetricFamily(
            "hftgate_gateway_shard_map_epoch",
            "Epoch of the shard map the gateway routes by",
            value=shard_map.epoch,
        )
        shards = GaugeMetricFamily(
            "hftgate_gateway_shard_pins",
            "Symbols pinned to each execution shard",
            labels=["shard", "address"],
        )
        pinned: dict[int, int] = {}
        for shard_id in shard_map.pins.values():
            pinned[shard_id] = pinned.get(shard_id, 0) + 1
        for shard in shard_map.shards:
            shards.add_metric([str(shard.shard_id), shard.address], pinned.get(shard.shard_id, 0))
        yield shards
        yield CounterMetricFamily(
            "hftgate_gateway_rate_limited_calls",
            "Calls refused with RESOURCE_EXHAUSTED by the per-account order rate limit (streams are paced)",
            value=self.app.rate_limited_calls,
        )
        buckets = self.app.rate_limits
        yield GaugeMetricFamily(
            "hftgate_gateway_rate_limit_accounts",
            "Accounts whose token buckets the gateway holds (bounded by rate_limit_max_accounts)",
            value=0 if buckets is None else len(buckets),
        )


def register(app: GatewayApp, registry: CollectorRegistry = REGISTRY) -> GatewayCollector:
    collector = GatewayCollector(app)
    registry.register(collector)
    return collector
