"""The scaling rule driven by load traces through an injected clock (services/scaler/decisions.py)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from services.scaler.decisions import (
    NS_PER_MS,
    Action,
    InvalidPolicy,
    Metric,
    Policy,
    RateLimit,
    ReplicaLoad,
    ScalingMemory,
    decide,
    hpa_recommendation,
    rate_limited,
    stabilize,
)

from .traces import (
    START_NS,
    Simulation,
    daily_sine_trace,
    ramp_trace,
    square_trace,
    step_trace,
)

INFLIGHT = Policy(
    service="marketdata",
    min_replicas=1,
    max_replicas=20,
    metric=Metric.INFLIGHT_REQUESTS,
    target_value=100.0,
    evaluation_interval_ms=15_000,
    scale_down_stabilization_ms=300_000,
)


def ready(*values: float | None) -> list[ReplicaLoad]:
    return [ReplicaLoad(f"r{i}", True, value) for i, value in enumerate(values)]


# --- the HPA rule itself ----------------------------------------------------------------------------
def test_hpa_rule_is_ceil_of_current_times_ratio() -> None:
    assert hpa_recommendation(ready(150, 150, 150), 100, 0.1, 0.1).replicas == 5  # ceil(3 * 1.5)
    assert hpa_recommendation(ready(30, 30, 30, 30), 100, 0.1, 0.1).replicas == 2  # ceil(4 * 0.3)


def test_hpa_tolerance_band_holds_within_ten_percent() -> None:
    assert hpa_recommendation(ready(109, 109), 100, 0.1, 0.1).replicas == 2
    assert hpa_recommendation(ready(91, 91), 100, 0.1, 0.1).replicas == 2
    assert hpa_recommendation(ready(111, 111), 100, 0.1, 0.1).replicas == 3


def test_separate_up_and_down_tolerances() -> None:
    # Eager up (2%), reluctant down (50%).
    assert hpa_recommendation(ready(103, 103), 100, 0.02, 0.5).replicas == 3
    assert hpa_recommendation(ready(55, 55), 100, 0.02, 0.5).replicas == 2
    assert hpa_recommendation(ready(45, 45), 100, 0.02, 0.5).replicas == 1


def test_missing_metrics_count_full_target_when_scaling_down() -> None:
    # Reported average 20% would say 1 replica of 3; the missing one counts 100%: (20 + 100) / 2 = 0.6.
    result = hpa_recommendation(ready(20, None), 100, 0.1, 0.1)
    assert result.adjusted_ratio == pytest.approx(0.6)
    assert result.replicas == 2  # ceil(0.6 * 2) = 2: the missing replica is not stopped
    assert "missing counted at 100%" in result.note


def test_missing_metrics_count_zero_when_scaling_up() -> None:
    # 300% reported on one replica; the missing one counts 0: (300 + 0) / 2 = 1.5 -> ceil(1.5 * 2) = 3.
    result = hpa_recommendation(ready(300, None), 100, 0.1, 0.1)
    assert result.adjusted_ratio == pytest.approx(1.5)
    assert result.replicas == 3


def test_missing_metric_that_flips_direction_holds() -> None:
    # 115% reported, one of two missing -> (115 + 0) / 2 = 0.575 < 1: HPA holds rather than scale down.
    assert hpa_recommendation(ready(115, None), 100, 0.1, 0.1).replicas == 2


def test_starting_replicas_count_zero_only_when_scaling_up() -> None:
    loads = [*ready(300), ReplicaLoad("new", False, None)]
    assert hpa_recommendation(loads, 100, 0.1, 0.1).replicas == 3  # (300 + 0) / 2 = 1.5 -> 3
    down = [*ready(20), ReplicaLoad("new", False, None)]
    # Scaling down ignores the starting replica: ceil(1 * 0.2) = 1.
    assert hpa_recommendation(down, 100, 0.1, 0.1).replicas == 1


def test_no_metrics_at_all_holds() -> None:
    result = hpa_recommendation(ready(None, None), 100, 0.1, 0.1)
    assert result.replicas == 2
    assert "no replica has reported" in result.note


def test_stabilize_up_to_lowest_and_down_to_highest_in_windows() -> None:
    now = START_NS
    history = [(now - 200_000 * NS_PER_MS, 6), (now - 10_000 * NS_PER_MS, 4)]
    # Down window 300 s holds the highest (6) of the last 300 s.
    assert stabilize(2, 5, history, now, 0, 300_000) == 5
    assert stabilize(2, 7, history, now, 0, 300_000) == 6
    # Up window 60 s: only the lowest recommendation of the last 60 s (4) is taken.
    assert stabilize(8, 3, history, now, 60_000, 0) == 4


def test_rate_limits_follow_hpa_max_policy() -> None:
    up = RateLimit(replicas=4, percent=100.0, period_ms=15_000)
    down = RateLimit(replicas=1, percent=0.0, period_ms=60_000)
    now = START_NS
    assert rate_limited(20, 2, [], now, up, down)[0] == 6  # max(2 + 4, 2 * 2)
    assert rate_limited(20, 10, [], now, up, down)[0] == 20  # max(14, 20)
    # Two replicas added 5 s ago count against the same period: start was 4 -> at most 8.
    assert rate_limited(20, 6, [(now - 5_000 * NS_PER_MS, 2)], now, up, down)[0] == 8
    # Down: one replica per minute.
    assert rate_limited(1, 5, [], now, up, down)[0] == 4
    assert rate_limited(1, 4, [(now - 30_000 * NS_PER_MS, -1)], now, up, down)[0] == 4


# --- traces -----------------------------------------------------------------------------------------
def test_five_x_step_is_met_in_one_decision() -> None:
    sim = Simulation(replace(INFLIGHT, scale_down_stabilization_ms=0), replicas=2)
    sim.run(step_trace(180, 900, at=3), 3)
    assert [d.desired_replicas for d in sim.decisions] == [2, 2, 2]
    decision = sim.step(900)
    assert decision.action is Action.SCALE_UP
    assert decision.desired_replicas == 9  # ceil(2 * 450 / 100), past the 6 the rate limit allows
    assert decision.panic
    assert "panic" in decision.reason
    # The next decision, with load now spread over 9, holds.
    assert sim.step(900).desired_replicas == 9


def test_without_panic_the_rate_limit_takes_two_decisions() -> None:
    sim = Simulation(replace(INFLIGHT, panic_threshold=0.0), replicas=2)
    sim.run(step_trace(180, 900, at=1), 2)
    assert [d.desired_replicas for d in sim.decisions] == [2, 6]
    assert "scale-up rate limit 6" in sim.decisions[1].reason


def test_cpu_saturates_so_a_step_is_not_seen_in_one_decision() -> None:
    # One replica at 0.4 cores, target 0.5; 5x load would need 4 replicas but the CPU reads at most 1.
    cpu = replace(INFLIGHT, metric=Metric.CPU_CORES, target_value=0.5)
    sim = Simulation(cpu, replicas=1, saturation=1.0)
    first = sim.run(step_trace(0.4, 2.0, at=0), 1)[0]
    assert first.desired_replicas == 2  # ceil(1 * 1.0 / 0.5): the saturated reading hides the rest


def test_ramp_scales_up_monotonically_and_keeps_up() -> None:
    sim = Simulation(INFLIGHT, replicas=1)
    sim.run(ramp_trace(50, 1_000, 60), 70)
    counts = [d.desired_replicas for d in sim.decisions]
    assert counts == sorted(counts), "a rising ramp never scales down"
    assert counts[-1] == 10
    # Every evaluation ends with capacity for the load it saw (within tolerance).
    for decision, load in zip(sim.decisions, sim.loads, strict=True):
        assert decision.desired_replicas >= math.ceil(load / 100 / 1.1)


def test_square_wave_does_not_flap() -> None:
    # 4 minutes high, 4 minutes low, 40 minutes; the 5-minute scale-down window spans each low half.
    sim = Simulation(INFLIGHT, replicas=2)
    sim.run(square_trace(low=100, high=800, half_period=16), 160)
    assert sim.scale_downs_per_window(300_000) <= 1
    ups = [d for d in sim.decisions if d.action is Action.SCALE_UP]
    assert ups, "the first high half scales up"
    # A short square wave (1 minute halves) never scales down at all inside the window.
    short = Simulation(INFLIGHT, replicas=2)
    short.run(square_trace(low=100, high=800, half_period=4), 160)
    assert sum(1 for d in short.decisions if d.action is Action.SCALE_DOWN) == 0


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    sim = Simulation(INFLIGHT, replicas=1)
    sim.run(step_trace(800, 100, at=2), 2 + 30)
    high = sim.decisions[1].desired_replicas
    assert high == 8
    downs = [i for i, d in enumerate(sim.decisions) if d.action is Action.SCALE_DOWN]
    # 300 s at 15 s per evaluation: the first scale-down is 20 evaluations after the last high one.
    assert downs and downs[0] >= 2 + 20 - 1
    assert sim.decisions[-1].desired_replicas == 1


def test_panic_holds_scale_down() -> None:
    policy = replace(INFLIGHT, scale_down_stabilization_ms=0, panic_hold_ms=60_000)
    sim = Simulation(policy, replicas=1)
    sim.step(500)  # panic -> 5
    assert sim.decisions[0].desired_replicas == 5
    for _ in range(3):  # 45 s, inside the hold: no scale-down despite the load falling away
        assert sim.step(50).desired_replicas == 5
    assert "panic held" in sim.decisions[-1].reason
    sim.step(50)
    sim.step(50)
    assert sim.decisions[-1].desired_replicas == 1


def test_bounds_clamp() -> None:
    sim = Simulation(replace(INFLIGHT, max_replicas=4), replicas=1)
    decision = sim.step(5_000)
    assert decision.desired_replicas == 4
    assert "clamped to max_replicas 4" in decision.reason
    assert decision.recommended_replicas == 50


def test_no_replicas_starts_min_replicas() -> None:
    decision = decide(START_NS, replace(INFLIGHT, min_replicas=2), [], ScalingMemory())
    assert decision.action is Action.SCALE_UP
    assert decision.desired_replicas == 2


def test_every_decision_records_its_inputs_and_reason() -> None:
    sim = Simulation(INFLIGHT, replicas=3)
    decision = sim.step(450)
    assert decision.loads == tuple(ReplicaLoad(f"r{i}", True, 150.0) for i in range(3))
    assert decision.observed_value == 150.0
    assert decision.target_value == 100.0
    assert "ceil(3 * 150 / 100) = 5" in decision.reason
    assert decision.reason.endswith("-> 5")


# --- prediction -------------------------------------------------------------------------------------
DAY_SAMPLES = 96  # one evaluation every 15 minutes of a simulated day
SINE = replace(
    INFLIGHT,
    evaluation_interval_ms=900_000,
    scale_down_stabilization_ms=0,
    scale_up_limit=RateLimit(0, 0, 0),
    panic_threshold=0.0,
    max_replicas=40,
)


def _under_provisioned(sim: Simulation, start: int) -> int:
    """Evaluations (from ``start``) whose load exceeded the capacity the previous one left."""
    bad = 0
    for index in range(max(start, 1), len(sim.loads)):
        capacity = sim.decisions[index - 1].desired_replicas * 100 * 1.1
        bad += sim.loads[index] > capacity
    return bad


def test_prediction_provisions_ahead_of_a_daily_sine() -> None:
    trace = daily_sine_trace(mean=1_500, amplitude=1_200, samples_per_day=DAY_SAMPLES, noise=30)
    reactive = Simulation(SINE, replicas=15)
    reactive.run(trace, DAY_SAMPLES * 4)
    predictive = Simulation(
        replace(SINE, prediction_horizon_ms=2 * 900_000, season_ms=DAY_SAMPLES * 900_000), replicas=15
    )
    predictive.run(trace, DAY_SAMPLES * 4)
    # After two days of learning, the forecast leaves far fewer evaluations under-provisioned.
    late_reactive = _under_provisioned(reactive, DAY_SAMPLES * 2)
    late_predictive = _under_provisioned(predictive, DAY_SAMPLES * 2)
    assert late_reactive >= 20
    assert late_predictive <= late_reactive // 3, (late_reactive, late_predictive)
    # ... for a few percent more replica-hours.
    late = slice(DAY_SAMPLES * 2, None)
    cost = sum(d.desired_replicas for d in predictive.decisions[late])
    assert cost <= 1.1 * sum(d.desired_replicas for d in reactive.decisions[late])


def test_prediction_never_lowers_the_recommendation() -> None:
    trace = daily_sine_trace(mean=1_500, amplitude=1_200, samples_per_day=DAY_SAMPLES, noise=200, seed=3)
    policy = replace(SINE, prediction_horizon_ms=4 * 900_000, season_ms=DAY_SAMPLES * 900_000)
    sim = Simulation(policy, replicas=10)
    sim.run(trace, DAY_SAMPLES * 3)
    for decision in sim.decisions:
        hpa = hpa_recommendation(decision.loads, 100.0, policy.up_tolerance, policy.down_tolerance)
        assert decision.recommended_replicas >= hpa.replicas


def test_forecast_only_records_and_does_not_act() -> None:
    trace = daily_sine_trace(mean=1_500, amplitude=1_200, samples_per_day=DAY_SAMPLES, noise=60)
    reactive = Simulation(SINE, replicas=15)
    reactive.run(trace, DAY_SAMPLES * 3)
    shadow = Simulation(
        replace(SINE, prediction_horizon_ms=2 * 900_000, season_ms=DAY_SAMPLES * 900_000, forecast_only=True),
        replicas=15,
    )
    shadow.run(trace, DAY_SAMPLES * 3)
    assert [d.desired_replicas for d in shadow.decisions] == [d.desired_replicas for d in reactive.decisions]
    would = [d for d in shadow.decisions if d.forecast_replicas > d.desired_replicas]
    assert len(would) >= 10
    assert all(d.forecast_only for d in shadow.decisions)
    assert "forecast-only: prediction would set" in would[0].reason


# --- validation -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "field_name"),
    [
        ({"service": ""}, "service"),
        ({"min_replicas": 0}, "min_replicas"),
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas"),
        ({"target_value": 0.0}, "target_value"),
        ({"target_value": float("nan")}, "target_value"),
        ({"tolerance": 1.0}, "tolerance"),
        ({"scale_up_tolerance": -0.1}, "scale_up_tolerance"),
        ({"panic_threshold": 0.5}, "panic_threshold"),
        ({"evaluation_interval_ms": 0}, "evaluation_interval_ms"),
        ({"scale_down_stabilization_ms": -1}, "scale_down_stabilization_ms"),
        ({"season_ms": 86_400_000, "evaluation_interval_ms": 1_000}, "season_ms"),
        ({"scale_up_limit": RateLimit(-1, 100, 15_000)}, "scale_up_limit.replicas"),
    ],
)
def test_invalid_policies_name_their_field(change: dict[str, object], field_name: str) -> None:
    with pytest.raises(InvalidPolicy) as raised:
        replace(INFLIGHT, **change).validate()  # type: ignore[arg-type]
    assert raised.value.field == field_name


def test_default_policy_is_valid() -> None:
    INFLIGHT.validate()
    Policy(service="cache").validate()


# --- discovery: replicas already running are counted, not started twice --------------------------------
def test_while_discovering_an_empty_service_waits_for_reports_instead_of_starting_min_replicas() -> None:
    policy = replace(INFLIGHT, min_replicas=2)
    memory = ScalingMemory(discovering_until_ns=START_NS + 5_000 * NS_PER_MS)
    decision = decide(START_NS, policy, [], memory)
    assert decision.action is Action.HOLD and decision.desired_replicas == 0
    assert "no replica has reported yet: waiting 5000 ms more" in decision.reason
    # The running replicas report: they are the current count, and min_replicas waits for the rest.
    decision = decide(START_NS + 1_000 * NS_PER_MS, policy, ready(100), memory)
    assert decision.action is Action.HOLD and decision.desired_replicas == 1
    assert "min_replicas 2 waits 4000 ms for reports" in decision.reason
    # Discovery over: min_replicas is enforced again.
    decision = decide(START_NS + 5_000 * NS_PER_MS, policy, ready(100), memory)
    assert decision.action is Action.SCALE_UP and decision.desired_replicas == 2


def test_while_discovering_load_still_scales_up() -> None:
    memory = ScalingMemory(discovering_until_ns=START_NS + 5_000 * NS_PER_MS)
    decision = decide(START_NS, INFLIGHT, ready(300, 300), memory)
    assert decision.action is Action.SCALE_UP and decision.desired_replicas == 6
