"""GetStats across shards: one GetStatsResponse made of every shard's, with no gRPC import.

* Counters (orders, cancels, trades, journal records, lookups, open orders, snapshots, rejects by
  reason) are summed; ``order_path_hit_ratio`` is recomputed from the summed lookups.
* ``started_ns`` is the earliest shard's start, ``collected_ns`` the latest shard's snapshot.
* Latency summaries: ``count`` summed, ``mean_ns`` and ``stdev_ns`` of the pooled samples (exact,
  from each shard's count, mean and stdev); the percentiles and ``max_ns`` are the worst shard's
  (the highest), an upper bound of the pooled percentile: a histogram per shard cannot be merged
  exactly from its summary, and the slowest shard is what an operator looks for. Per-shard figures
  come from each shard's own GetStats (GatewayService.GetShardMap lists them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api

_LATENCIES = ("risk_latency", "match_latency", "journal_latency", "ack_latency", "total_latency")
_COUNTERS = (
    "orders_received",
    "orders_accepted",
    "inputs_rejected",
    "cancels_accepted",
    "replaces_accepted",
    "trades",
    "traded_lots",
    "open_orders",
    "journal_records",
    "journal_fsyncs",
    "reference_lookups",
    "reference_sql_lookups",
    "snapshots_taken",
)
_WORST = ("p50_ns", "p90_ns", "p99_ns", "p99_9_ns", "p99_99_ns", "max_ns")


def merge_latency(parts: Sequence[common.LatencySummary]) -> common.LatencySummary:
    """The pooled summary of several shards' (see the module docstring for the percentiles)."""
    merged = common.LatencySummary()
    count = sum(p.count for p in parts)
    merged.count = count
    if count:
        mean = sum(p.mean_ns * p.count for p in parts) / count
        # E[x^2] of each shard is stdev^2 + mean^2: pooled variance = E[x^2] - mean^2.
        second = sum((p.stdev_ns**2 + p.mean_ns**2) * p.count for p in parts) / count
        merged.mean_ns = mean
        merged.stdev_ns = math.sqrt(max(0.0, second - mean * mean))
    for name in _WORST:
        setattr(merged, name, max((getattr(p, name) for p in parts), default=0))
    return merged


def merge_stats(parts: Sequence[api.GetStatsResponse]) -> api.GetStatsResponse:
    """One response for the whole suite from every shard's (at least one)."""
    if not parts:
        raise ValueError("no shard answered GetStats")
    merged = api.GetStatsResponse(
        started_ns=min(p.started_ns for p in parts),
        collected_ns=max(p.collected_ns for p in parts),
    )
    for name in _COUNTERS:
        setattr(merged, name, sum(getattr(p, name) for p in parts))
    for name in _LATENCIES:
        getattr(merged, name).CopyFrom(merge_latency([getattr(p, name) for p in parts]))
    rejects: dict[int, int] = {}
    for part in parts:
        for entry in part.rejects_by_reason:
            rejects[entry.reason] = rejects.get(entry.reason, 0) + entry.count
    for reason in sorted(rejects):
        merged.rejects_by_reason.add(reason=reason, count=rejects[reason])  # type: ignore[arg-type]
    lookups = merged.reference_lookups
    # No lookups: the shards' own value (1.0 for the suite's figures, 0 in an account's).
    merged.order_path_hit_ratio = (
        1.0 - merged.reference_sql_lookups / lookups
        if lookups
        else max(p.order_path_hit_ratio for p in parts)
    )
    return merged
