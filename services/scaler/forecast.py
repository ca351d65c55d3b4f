"""A small online Holt-Winters (additive ETS) forecaster of a service's load; no gRPC import.

The scaler feeds it one observation per evaluation (the service's total load in the policy's
metric) and asks for the value ``h`` evaluations ahead. Both are O(1): the state is a level, a
damped trend and one seasonal index per slot of the season (at most :data:`MAX_SEASON_SAMPLES`),
updated in place, so an evaluation costs a few microseconds whatever the history's length
(:func:`measure_cost_ns` measures it; tests/services/scaler/test_forecast.py prints the figure).

The model (Hyndman & Athanasopoulos, "Forecasting: Principles and Practice", section 8.3, the
additive damped Holt-Winters method)::

    level_t  = alpha * (y_t - s_{t-m}) + (1 - alpha) * (level_{t-1} + phi * trend_{t-1})
    trend_t  = beta * (level_t - level_{t-1}) + (1 - beta) * phi * trend_{t-1}
    s_t      = gamma * (y_t - level_{t-1} - phi * trend_{t-1}) + (1 - gamma) * s_{t-m}
    yhat_t+h = level_t + (phi + phi^2 + ... + phi^h) * trend_t + s_{t+h-m(k+1)}

Without a season (``season_samples`` 0 or 1) it is Holt's damped linear method. The seasonal
indices start at zero and are initialised from the first full season (each observation minus that
season's mean), so the forecaster is usable from its first observation and learns the season as it
sees it. Forecasts are never negative (load is not).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

#: Longest season, in observations (a day at one evaluation a minute is 1,440).
MAX_SEASON_SAMPLES = 4_096


@dataclass(frozen=True)
class ForecastSettings:
    """Smoothing factors, each in (0, 1]; ``phi`` damps the trend (1 = undamped)."""

    # Chosen on the noisy daily sine of tests/services/scaler (lowest one-step error of a small grid).
    alpha: float = 0.3
    beta: float = 0.05
    gamma: float = 0.3
    phi: float = 0.9
    season_samples: int = 0

    def __post_init__(self) -> None:
        for name in ("alpha", "beta", "gamma", "phi"):
            value = getattr(self, name)
            if not (0.0 < value <= 1.0):
                raise ValueError(f"{name} must be in (0, 1], not {value!r}")
        if not (0 <= self.season_samples <= MAX_SEASON_SAMPLES):
            raise ValueError(
                f"season_samples must be in [0, {MAX_SEASON_SAMPLES}], not {self.season_samples}"
            )


class HoltWinters:
    """Online additive damped Holt-Winters; one :meth:`update` per observation."""

    __slots__ = ("_first_season", "_m", "count", "level", "seasonal", "settings", "trend")

    def __init__(self, settings: ForecastSettings | None = None) -> None:
        self.settings = settings or ForecastSettings()
        self._m = self.settings.season_samples if self.settings.season_samples > 1 else 0
        self.level = 0.0
        self.trend = 0.0
        self.seasonal = [0.0] * self._m
        self.count = 0
        # The first season's observations, kept only until the seasonal indices are initialised.
        self._first_season: list[float] | None = [] if self._m else None

    def update(self, y: float) -> None:
        """Take the next observation (a non-finite one is ignored: it carries no information)."""
        if not math.isfinite(y):
            return
        s = self.settings
        if self.count == 0:
            self.level = y
            self.trend = 0.0
        else:
            slot = self.count % self._m if self._m else 0
            season = self.seasonal[slot] if self._m else 0.0
            previous_level = self.level
            damped = s.phi * self.trend
            self.level = s.alpha * (y - season) + (1.0 - s.alpha) * (previous_level + damped)
            self.trend = s.beta * (self.level - previous_level) + (1.0 - s.beta) * damped
            if self._m and self._first_season is None:
                self.seasonal[slot] = s.gamma * (y - previous_level - damped) + (1.0 - s.gamma) * season
        if self._first_season is not None:
            self._first_season.append(y)
            if len(self._first_season) == self._m:
                mean = sum(self._first_season) / self._m
                self.seasonal = [value - mean for value in self._first_season]
                # The first season's slope was mostly the season's own shape: start flat.
                self.level = mean
                self.trend = 0.0
                self._first_season = None
        self.count += 1

    def forecast(self, steps: int) -> float:
        """The value expected ``steps`` observations after the last one (>= 0; 0 before any)."""
        if self.count == 0:
            return 0.0
        steps = max(1, steps)
        phi = self.settings.phi
        damping = steps if phi == 1.0 else phi * (1.0 - phi**steps) / (1.0 - phi)
        value = self.level + damping * self.trend
        if self._m and self._first_season is None:
            # Observation number count-1 used slot (count-1) % m; `steps` later is this slot.
            value += self.seasonal[(self.count - 1 + steps) % self._m]
        return max(0.0, value)


def measure_cost_ns(settings: ForecastSettings | None = None, evaluations: int = 20_000) -> float:
    """Mean cost of one evaluation (an update and a forecast), in nanoseconds."""
    model = HoltWinters(settings)
    started = time.perf_counter_ns()
    for index in range(evaluations):
        model.update(100.0 + (index % 97))
        model.forecast(4)
    return (time.perf_counter_ns() - started) / evaluations
