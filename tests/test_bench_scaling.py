"""A smoke run of ``hftgate bench scaling`` with tiny durations: real processes, every key, a decision.

Figures and bars are the bench's business (they depend on the machine); this checks that a round
runs end to end, that a load step through the gateway made the scaler decide to scale up, and that
every key is there.
"""

from __future__ import annotations

import math

import pytest

from hftgate.bench import scaling

KEYS = {
    "capacity_calls_per_s",
    "step_to_decision_s",
    "step_to_serving_s",
    "replicas_before",
    "replicas_after",
    "errors",
    "scale_downs_per_window",
    "step_to_serving_s_bar_holds",
    "errors_bar_holds",
    "replicas_after_bar_holds",
    "scale_downs_per_window_bar_holds",
}


@pytest.mark.slow
def test_a_tiny_round_decides_to_scale_up_and_reports_every_key() -> None:
    settings = scaling.ScalingSettings(
        ramp_levels=(1, 4),
        ramp_level_s=0.4,
        low_s=0.5,
        step_timeout_s=20.0,
        after_serving_s=0.2,
        square_periods=2,
        square_period_s=1.0,
        scale_down_window_ms=2_000,
        max_replicas=2,
    )
    result = scaling.run(1, settings, moves=False)  # the move: the next test
    assert set(result) >= KEYS
    assert result["capacity_calls_per_s"] > 0
    assert result["replicas_before"] == 1
    # The step made the scaler decide, after the step began.
    assert not math.isnan(float(result["step_to_decision_s"]))
    assert float(result["step_to_decision_s"]) > 0
    assert result["errors_bar_holds"] == (result["errors"] == 0)
    assert result["replicas_after_bar_holds"] == (result["replicas_after"] > result["replicas_before"])


@pytest.mark.slow
def test_a_tiny_move_out_and_back_under_flow_loses_nothing_and_its_bars_join_the_scaling_figures() -> None:
    from hftgate.bench import moves

    moved = moves.run(1, rate_per_s=200.0, flow_s=1.0)
    assert moved["lost_acked"] == 0 and moved["duplicate_fills"] == 0 and moved["books_match"] is True
    assert moved["orders_acked"] > 0 and moved["orders_moved"] > 0 and moved["orders_moved_back"] > 0
    assert float(moved["move_pause_max_ms"]) >= float(moved["move_pause_p50_ms"]) > 0
    figures = {name: moved[source] for source, name in scaling.MOVE_KEYS.items()}
    base = {"step_to_serving_s": 1.0, "errors": 0, "replicas_before": 1, "replicas_after": 2}
    out = scaling.with_bars({**base, "scale_downs_per_window": 0, **figures})
    assert out["lost_acked_bar_holds"] and out["duplicate_fills_bar_holds"] and out["books_match_bar_holds"]
    pause_holds = float(moved["move_pause_max_ms"]) <= scaling.BAR_MOVE_PAUSE_MAX_MS
    assert out["move_pause_max_ms_bar_holds"] == pause_holds
    assert out["bars_hold"] == pause_holds


def test_most_in_window_counts_the_worst_window() -> None:
    ms = 1_000_000
    assert scaling.most_in_window([], 1_000) == 0
    assert scaling.most_in_window([0, 500 * ms, 2_000 * ms, 2_100 * ms, 2_200 * ms], 1_000) == 3
    assert scaling.most_in_window([0, 1_000 * ms], 1_000) == 1
