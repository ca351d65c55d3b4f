"""Prometheus view of one cache replica: lookups, hit ratio, size and errors per level.

Read from :meth:`TieredCache.stats` when Prometheus scrapes, so a lookup pays nothing for them.
``python -m services.cache`` registers it on the default registry and serves it on
``HFTGATE_CACHE_METRICS_PORT`` (hftgate/prometheus.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from services.cache.tiered import Level, TieredCache


class CacheCollector(Collector):
    """Reads a :class:`TieredCache` when Prometheus scrapes."""

    def __init__(self, cache: TieredCache) -> None:
        self.cache = cache

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.cache.stats()
        lookups = CounterMetricFamily(
            "hftgate_cache_lookups",
            "Lookups answered at each level (l1: this replica's memory, l2: Redis, l3: SQL), by result",
            labels=["level", "result"],
        )
        ratio = GaugeMetricFamily(
            "hftgate_cache_hit_ratio",
            "Hits / (hits + misses) at each level since start (0 before the first lookup)",
            labels=["level"],
        )
        entries = GaugeMetricFamily("hftgate_cache_entries", "Entries held at each level", labels=["level"])
        size = GaugeMetricFamily("hftgate_cache_bytes", "Bytes held at each level", labels=["level"])
        evictions = CounterMetricFamily(
            "hftgate_cache_evictions", "Entries evicted at each level", labels=["level"]
        )
        errors = CounterMetricFamily(
            "hftgate_cache_errors", "Lookups that failed at each level", labels=["level"]
        )
        for level in stats.levels:
            if level.level is Level.NONE:
                continue
            name = level.level.name.lower()
            lookups.add_metric([name, "hit"], level.hits)
            lookups.add_metric([name, "miss"], level.misses)
            lookups.add_metric([name, "negative_hit"], level.negative_hits)
            ratio.add_metric([name], level.hit_ratio)
            entries.add_metric([name], level.entries)
            size.add_metric([name], level.bytes)
            evictions.add_metric([name], level.evictions)
            errors.add_metric([name], level.errors)
        yield from (lookups, ratio, entries, size, evictions, errors)
        yield GaugeMetricFamily(
            "hftgate_cache_redis_available",
            "1 while Redis answers, 0 during an outage",
            value=1.0 if stats.redis_available else 0.0,
        )
        yield GaugeMetricFamily(
            "hftgate_cache_invalidation_watchers",
            "Open WatchInvalidations streams",
            value=stats.invalidation_watchers,
        )
        yield CounterMetricFamily(
            "hftgate_cache_invalidations_received",
            "Invalidations received from other replicas",
            value=stats.invalidations_received,
        )
        yield CounterMetricFamily(
            "hftgate_cache_single_flight_joins",
            "Misses that joined a load already in flight for their key",
            value=stats.single_flight_joins,
        )


def register(cache: TieredCache, registry: CollectorRegistry = REGISTRY) -> CacheCollector:
    collector = CacheCollector(cache)
    registry.register(collector)
    return collector
