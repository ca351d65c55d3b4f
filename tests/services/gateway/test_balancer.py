"""The balancer's rules with an injected clock and random source: eligibility (health, draining,
ejection), power of two choices on peak-EWMA cost and on calls in flight, round robin."""

from __future__ import annotations

import random

import pytest

from services.gateway.balancer import Balancer, Endpoint
from services.gateway.config import load_config


class Clock:
    def __init__(self) -> None:
        self.now_ns = 1_000_000_000

    def __call__(self) -> int:
        return self.now_ns

    def advance_ms(self, ms: float) -> None:
        self.now_ns += int(ms * 1e6)


def serving(*addresses: str) -> list[Endpoint]:
    endpoints = [Endpoint(a) for a in addresses]
    for e in endpoints:
        e.serving = True
    return endpoints


def observe(balancer: Balancer, clock: Clock, endpoint: Endpoint, rtt_ms: float) -> None:
    started = balancer.started(endpoint)
    clock.advance_ms(rtt_ms)
    balancer.finished(endpoint, started)


def test_unhealthy_draining_and_ejected_replicas_get_no_calls() -> None:
    clock = Clock()
    balancer = Balancer("round_robin", clock_ns=clock, eject_ms=500)
    a, b, c, d = serving("a", "b", "c", "d")
    b.serving = False
    c.draining = True
    started = balancer.started(d)
    balancer.finished(d, started, transport_failure=True)  # ejected for 500 ms
    picks = {balancer.pick([a, b, c, d]).address for _ in range(20)}  # type: ignore[union-attr]
    assert picks == {"a"}
    clock.advance_ms(501)
    picks = {balancer.pick([a, b, c, d]).address for _ in range(20)}  # type: ignore[union-attr]
    assert picks == {"a", "d"}
    assert d.failures == 1


def test_no_eligible_replica_means_none_and_unprobed_ones_are_the_fallback() -> None:
    balancer = Balancer()
    down = serving("a")[0]
    down.serving = False
    assert balancer.pick([down]) is None
    assert balancer.pick([]) is None
    fresh = Endpoint("b")  # no health answer yet: used only while nothing is SERVING
    assert balancer.pick([down, fresh]) is fresh
    up = serving("c")[0]
    assert {balancer.pick([down, fresh, up]) for _ in range(10)} == {up}
    assert balancer.pick([up], exclude=up) is None


def test_p2c_peak_ewma_avoids_a_slow_replica_even_one_call_at_a_time() -> None:
    clock = Clock()
    balancer = Balancer("p2c_peak_ewma", clock_ns=clock, rng=random.Random(7), decay_ms=1_000)
    fast1, fast2, slow = serving("fast1", "fast2", "slow")
    counts = {"fast1": 0, "fast2": 0, "slow": 0}
    for _ in range(3_000):
        chosen = balancer.pick([fast1, fast2, slow])
        assert chosen is not None
        counts[chosen.address] += 1
        observe(balancer, clock, chosen, 5.3 if chosen is slow else 0.3)
    # Round robin would send 1,000 calls to the slow one; the decay re-tries it now and then.
    assert counts["slow"] < 60, counts
    assert min(counts["fast1"], counts["fast2"]) > 1_000, counts


def test_peak_ewma_takes_slowness_at_once_and_forgets_it_over_busy_time() -> None:
    clock = Clock()
    balancer = Balancer("p2c_peak_ewma", clock_ns=clock, decay_ms=100)
    e, other = serving("e", "other")
    observe(balancer, clock, e, 0.2)
    observe(balancer, clock, e, 8.0)
    assert e.latency_ns(balancer.busy_ns(), balancer.decay_ns) == pytest.approx(8e6)  # the peak
    clock.advance_ms(10_000)  # a pause in traffic: counts for IDLE_CAP_MS at most
    assert e.latency_ns(balancer.busy_ns(), balancer.decay_ns) > 8e6 * 0.3
    for _ in range(1_000):  # 500 ms of calls to another replica: five time constants
        observe(balancer, clock, other, 0.5)
    assert e.latency_ns(balancer.busy_ns(), balancer.decay_ns) < 8e6 * 0.01


def test_a_pause_in_traffic_does_not_send_a_burst_to_the_slow_replica() -> None:
    """Decaying on wall time, a pause left every replica's cost near zero; the fast ones, measured
    again first, then looked dearer than the slow one, which took calls until it answered."""
    clock = Clock()
    balancer = Balancer("p2c_peak_ewma", clock_ns=clock, rng=random.Random(3), decay_ms=1_000)
    fast1, fast2, slow = serving("fast1", "fast2", "slow")
    for endpoint, rtt in ((fast1, 0.6), (fast2, 0.6), (slow, 5.6)):
        observe(balancer, clock, endpoint, rtt)
    clock.advance_ms(3_000)  # the pause
    to_slow = 0
    in_flight: list[tuple[object, int]] = []
    for _ in range(200):  # 8 calls in flight, each fast one answering in 0.6 ms
        chosen = balancer.pick([fast1, fast2, slow])
        assert chosen is not None
        to_slow += chosen is slow
        in_flight.append((chosen, balancer.started(chosen)))
        if len(in_flight) == 8:
            clock.advance_ms(0.6 / 8)
            done, started = in_flight.pop(0)
            if done is not slow:
                balancer.finished(done, started)  # type: ignore[arg-type]
    assert to_slow == 0


def test_p2c_inflight_prefers_the_replica_with_fewer_calls_in_flight() -> None:
    balancer = Balancer("p2c_inflight", rng=random.Random(1))
    busy, idle = serving("busy", "idle")
    for _ in range(5):
        balancer.started(busy)
    assert {balancer.pick([busy, idle]) for _ in range(20)} == {idle}


def test_round_robin_takes_each_eligible_replica_in_turn() -> None:
    balancer = Balancer("round_robin")
    endpoints = serving("a", "b", "c")
    picks = [balancer.pick(endpoints).address for _ in range(6)]  # type: ignore[union-attr]
    assert sorted(picks) == ["a", "a", "b", "b", "c", "c"]
    assert picks[:3] == picks[3:]


def test_bad_balancer_settings_are_refused_with_the_variable_named() -> None:
    with pytest.raises(ValueError, match="unknown balancer 'fastest'"):
        Balancer("fastest")
    with pytest.raises(ValueError, match="HFTGATE_GATEWAY_BALANCER='fastest' is not one of"):
        load_config({"HFTGATE_GATEWAY_BALANCER": "fastest"})
    with pytest.raises(
        ValueError, match="HFTGATE_GATEWAY_MARKETDATA_REPLICAS: each replica must be HOST:PORT"
    ):
        load_config({"HFTGATE_GATEWAY_MARKETDATA_REPLICAS": "127.0.0.1:1,nohost"})
    with pytest.raises(ValueError, match="listed twice"):
        load_config({"HFTGATE_GATEWAY_CACHE_REPLICAS": "h:1,h:1"})
    with pytest.raises(ValueError, match="BALANCER_DECAY_MS must be at least 1"):
        load_config({"HFTGATE_GATEWAY_BALANCER_DECAY_MS": "0"})
    config = load_config({"HFTGATE_GATEWAY_MARKETDATA_REPLICAS": "h:1, h:2"})
    assert config.marketdata_replicas == ("h:1", "h:2")
