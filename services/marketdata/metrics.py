"""Prometheus view of the market data service: symbols, subscribers, ticks and rejects by reason.

Read from the engine when Prometheus scrapes (the engine's one writer, the event loop, is not
slowed by it). ``python -m services.marketdata`` registers it on the default registry and serves
it on ``HFTGATE_MARKETDATA_METRICS_PORT`` (hftgate/prometheus.py).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from services.marketdata.engine import MarketDataEngine
from services.marketdata.fanout import SymbolFilter
from services.marketdata.reasons import RejectReason

_EVERY_SYMBOL = SymbolFilter()


class MarketDataCollector(Collector):
    """Reads a :class:`MarketDataEngine` when Prometheus scrapes."""

    def __init__(self, engine: MarketDataEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        engine = self.engine
        stats = engine.stats()
        symbols = GaugeMetricFamily(
            "hftgate_marketdata_symbols", "(venue, symbol) pairs tracked, by venue", labels=["venue"]
        )
        by_venue: dict[str, int] = {}
        for state in engine.symbols(_EVERY_SYMBOL):
            by_venue[state.venue] = by_venue.get(state.venue, 0) + 1
        for venue, count in sorted(by_venue.items()):
            symbols.add_metric([venue], count)
        yield symbols
        yield GaugeMetricFamily(
            "hftgate_marketdata_symbols_limit",
            "Most (venue, symbol) pairs tracked (max_symbols)",
            value=engine.config.max_symbols,
        )
        subscribers = GaugeMetricFamily(
            "hftgate_marketdata_subscribers", "Open streams, by kind", labels=["stream"]
        )
        subscribers.add_metric(["subscribe"], stats.subscribers)
        subscribers.add_metric(["arbitrage"], stats.arbitrage_subscribers)
        yield subscribers
        refused = CounterMetricFamily(
            "hftgate_marketdata_streams_refused",
            "Streams refused RESOURCE_EXHAUSTED, by the limit that refused them",
            labels=["limit"],
        )
        for scope, count in sorted(engine.streams.refused.items()):
            refused.add_metric([scope], count)
        yield refused
        yield CounterMetricFamily(
            "hftgate_marketdata_ticks_accepted",
            "Ticks (quotes, trades, depth) accepted",
            value=stats.accepted,
        )
        rejected = CounterMetricFamily(
            "hftgate_marketdata_ticks_rejected", "Ticks rejected, by reason", labels=["reason"]
        )
        for reason in RejectReason:
            rejected.add_metric([reason.name.lower()], stats.rejected_by_reason.get(reason, 0))
        yield rejected


def register(engine: MarketDataEngine, registry: CollectorRegistry = REGISTRY) -> MarketDataCollector:
    collector = MarketDataCollector(engine)
    registry.register(collector)
    return collector
