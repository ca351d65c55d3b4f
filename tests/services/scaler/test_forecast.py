"""The Holt-Winters forecaster (services/scaler/forecast.py): accuracy on clean signals, its cost."""

from __future__ import annotations

import math

import pytest

from services.scaler.forecast import ForecastSettings, HoltWinters, measure_cost_ns


def test_linear_trend_is_extrapolated() -> None:
    model = HoltWinters(ForecastSettings(alpha=0.8, beta=0.5, phi=1.0))
    for index in range(50):
        model.update(100.0 + 10.0 * index)
    assert model.forecast(5) == pytest.approx(100.0 + 10.0 * 54, rel=0.01)


def test_season_is_learned_and_forecast() -> None:
    period = 24
    model = HoltWinters(ForecastSettings(season_samples=period))

    def signal(index: int) -> float:
        return 500.0 + 300.0 * math.sin(2 * math.pi * index / period)

    for index in range(period * 3):
        model.update(signal(index))
    for steps in (1, 3, 6):
        assert model.forecast(steps) == pytest.approx(signal(period * 3 - 1 + steps), abs=15.0)


def test_forecast_is_never_negative_and_ignores_non_finite() -> None:
    model = HoltWinters(ForecastSettings(phi=1.0))
    assert model.forecast(3) == 0.0
    for value in (100.0, 50.0, 0.0, float("nan"), float("inf")):
        model.update(value)
    assert model.count == 3
    assert model.forecast(100) == 0.0


@pytest.mark.parametrize("bad", [{"alpha": 0.0}, {"phi": 1.5}, {"season_samples": 10**6}])
def test_bad_settings_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ForecastSettings(**bad)  # type: ignore[arg-type]


def test_cost_per_evaluation_is_microseconds() -> None:
    cost_ns = measure_cost_ns(ForecastSettings(season_samples=1_440), evaluations=5_000)
    print(f"forecast cost per evaluation: {cost_ns / 1000:.2f} us")
    # O(1) per evaluation: a few microseconds of Python; the bound leaves room for a loaded machine.
    assert cost_ns < 200_000
