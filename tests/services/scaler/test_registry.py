"""The replica set (services/scaler/registry.py): staleness, forgetting, bounded watchers."""

from __future__ import annotations

from services.scaler.decisions import NS_PER_MS, Metric, ReplicaLoad
from services.scaler.registry import Change, Registry, ReplicaState, Report, TableFull

from .traces import START_NS


class Clock:
    def __init__(self) -> None:
        self.now = START_NS

    def __call__(self) -> int:
        return self.now

    def advance_ms(self, ms: int) -> None:
        self.now += ms * NS_PER_MS


def test_a_silent_replica_goes_stale_and_counts_as_missing() -> None:
    clock = Clock()
    registry = Registry(clock)
    registry.report(Report("marketdata", "a", inflight_requests=80))
    registry.report(Report("marketdata", "b", inflight_requests=90))
    registry.add("marketdata", "c", backend="local_process")  # starting, never reported
    assert registry.loads("marketdata", Metric.INFLIGHT_REQUESTS, 5_000) == [
        ReplicaLoad("a", True, 80.0),
        ReplicaLoad("b", True, 90.0),
        ReplicaLoad("c", False, None),
    ]
    clock.advance_ms(3_000)
    registry.report(Report("marketdata", "a", inflight_requests=70))
    clock.advance_ms(2_500)  # b last reported 5.5 s ago
    loads = registry.loads("marketdata", Metric.INFLIGHT_REQUESTS, 5_000)
    assert loads[:2] == [ReplicaLoad("a", True, 70.0), ReplicaLoad("b", True, None)]


def test_draining_replicas_are_not_counted() -> None:
    registry = Registry(Clock())
    registry.report(Report("cache", "a"))
    registry.report(Report("cache", "b"))
    registry.update("cache", "b", state=ReplicaState.DRAINING)
    assert [r.replica_id for r in registry.counted("cache")] == ["a"]


def test_outsiders_that_stop_reporting_are_forgotten_ours_are_not() -> None:
    clock = Clock()
    registry = Registry(clock)
    registry.report(Report("gateway", "outsider"))
    registry.add("gateway", "ours", backend="local_process", state=ReplicaState.READY)
    clock.advance_ms(60_001)
    gone = registry.expire(60_000)
    assert [(r.replica_id, r.state) for r in gone] == [("outsider", ReplicaState.FAILED)]
    assert [r.replica_id for r in registry.all()] == ["ours"]


def test_reports_per_replica_are_bounded() -> None:
    registry = Registry(Clock(), max_reports_per_replica=3)
    for index in range(10):
        registry.report(Report("cache", "a", queue_depth=index))
    replica = registry.get("cache", "a")
    assert replica is not None
    assert [r.queue_depth for r in replica.reports] == [7, 8, 9]


async def test_a_watcher_that_falls_behind_gets_a_fresh_snapshot() -> None:
    registry = Registry(Clock(), max_queued_per_watcher=2, max_watchers=1)
    watcher = registry.watch("cache")
    assert (await watcher.next()).change is Change.SNAPSHOT
    for index in range(5):  # more than the queue holds
        registry.report(Report("cache", f"r{index}"))
    registry.report(Report("marketdata", "other"))  # another service: not in this scope
    event = await watcher.next()
    assert event.change is Change.SNAPSHOT
    assert [r.replica_id for r in event.replicas] == [f"r{index}" for index in range(5)]
    try:
        registry.watch()
    except TableFull as exc:
        assert "64" not in str(exc) and "1 replica watchers" in str(exc)
    else:
        raise AssertionError("a second watcher beyond the bound was accepted")
    watcher.close()
    registry.watch().close()  # its slot is free again


def test_events_carry_a_copy_not_the_live_replica() -> None:
    registry = Registry(Clock())
    watcher = registry.watch()
    watcher._resnapshot = False  # look at queued changes directly
    registry.add("cache", "a", backend="local_process")
    registry.update("cache", "a", state=ReplicaState.READY, address="127.0.0.1:1")
    added, changed = watcher._queue
    assert added.change is Change.ADDED and added.replica is not None
    assert added.replica.state is ReplicaState.STARTING
    assert changed.replica is not None and changed.replica.address == "127.0.0.1:1"
