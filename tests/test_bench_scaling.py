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
    result = scaling.run(1, settings)
    assert set(result) >= KEYS
    assert result["capacity_calls_per_s"] > 0
    assert result["replicas_before"] == 1
    # The step made the scaler decide, after the step began.
    assert not math.isnan(float(result["step_to_decision_s"]))
    assert float(result["step_to_decision_s"]) > 0
    assert result["errors_bar_holds"] == (result["errors"] == 0)
    assert result["replicas_after_bar_holds"] == (result["replicas_after"] > result["replicas_before"])


def test_most_in_window_counts_the_worst_window() -> None:
    ms = 1_000_000
    assert scaling.most_in_window([], 1_000) == 0
    assert scaling.most_in_window([0, 500 * ms, 2_000 * ms, 2_100 * ms, 2_200 * ms], 1_000) == 3
    assert scaling.most_in_window([0, 1_000 * ms], 1_000) == 1
