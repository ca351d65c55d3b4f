"""The optimiser driven against simulated services through an injected clock (no sleeping, no processes)."""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, field, replace

import pytest

from services.scaler.optimiser import (
    DOWN,
    UP,
    ActuatorError,
    Knob,
    Objective,
    Optimiser,
    OptimiserSettings,
    Purpose,
    Trial,
    group_commit_knob,
    near_cache_knob,
)

SETTINGS = OptimiserSettings(window_ms=10_000, sample_interval_ms=500, pause_ms=1_000, retry_after_ms=600_000)


@dataclass
class SimulatedSuite:
    """The settings of a running cache and execution service and what they do to the objectives.

    The cache's keys are Zipf-distributed over a million keys, so the near cache's hit ratio is
    about ln(capacity) / ln(keys); the journal's p99 is U-shaped in its group-commit window (an
    ack waits the window, while fsyncs queue up when the window is short)."""

    values: dict[str, float] = field(
        default_factory=lambda: {
            "cache.l1_max_entries": 1_024.0,
            "execution.journal_group_commit_window_us": 0.0,
        }
    )
    noise: float = 0.0
    now_ns: int = 1_700_000_000 * 1_000_000_000
    rng: random.Random = field(default_factory=lambda: random.Random(11))
    writes: list[tuple[int, str, float]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    #: How each objective depends on its setting.
    flat: bool = False

    def clock(self) -> int:
        return self.now_ns

    async def sleep(self, seconds: float) -> None:
        self.now_ns += round(seconds * 1e9)

    async def read(self, knob: Knob) -> float:
        return self.values[knob.name]

    async def write(self, knob: Knob, value: float) -> None:
        if knob.name in self.refuse:
            raise ActuatorError(f"{knob.service} has no tuning hook for {knob.setting}")
        self.writes.append((self.now_ns, knob.name, value))
        self.values[knob.name] = value

    def truth(self, knob: Knob) -> float:
        value = self.values[knob.name]
        if knob.setting == "l1_max_entries":
            return 0.8 if self.flat else math.log(value + 1) / math.log(1_000_001)
        window = value
        return (200 + window + 40_000 / (window + 50)) * 1_000.0  # ns

    async def sample(self, knob: Knob) -> float | None:
        truth = self.truth(knob)
        return truth * (1 + self.rng.gauss(0.0, self.noise)) if self.noise else truth


def optimiser(suite: SimulatedSuite, knobs: list[Knob], trials: list[Trial]) -> Optimiser:
    return Optimiser(
        knobs, suite, suite, SETTINGS, clock=suite.clock, sleep=suite.sleep, on_trial=trials.append
    )


async def run(opt: Optimiser, steps: int) -> None:
    for _ in range(steps):
        await opt.step()


async def test_near_cache_grows_to_its_hit_ratio_target_then_stops() -> None:
    suite = SimulatedSuite(noise=0.002)
    trials: list[Trial] = []
    knob = near_cache_knob(0.95, settle_ms=2_000)
    opt = optimiser(suite, [knob], trials)
    await run(opt, 20)
    # ln(c) / ln(1e6) >= 0.95 first at 2**19 = 524288 entries.
    assert suite.values[knob.name] == 2.0**19
    assert all(t.purpose is Purpose.IMPROVE for t in trials if t.kept)
    assert [t.to_value for t in trials if t.kept] == [2.0**p for p in range(11, 20)]
    # Past the target with no margin it makes no more trials (nothing is logged).
    before = len(trials)
    assert await opt.step() is None
    assert len(trials) == before


async def test_each_trial_measures_a_window_and_says_why() -> None:
    suite = SimulatedSuite(noise=0.002)
    trials: list[Trial] = []
    opt = optimiser(suite, [near_cache_knob(0.95, settle_ms=2_000)], trials)
    trial = await opt.step()
    assert trial is not None and trial.kept
    assert (trial.from_value, trial.to_value) == (1_024.0, 2_048.0)
    assert trial.baseline.samples == 20 and trial.measured is not None and trial.measured.samples == 20
    assert trial.measured.mean > trial.baseline.mean
    # baseline window + settle + trial window, on the injected clock
    assert trial.decided_ns - trial.started_ns == (10_000 + 2_000 + 10_000) * 1_000_000
    assert trial.reason.startswith("improve: l1_max_entries 1024 -> 2048: near_cache_hit_ratio")
    assert trial.reason.endswith("kept")


async def test_a_change_that_does_not_help_is_reverted_and_not_retried_soon() -> None:
    suite = SimulatedSuite(noise=0.01, flat=True)  # the hit ratio does not depend on the capacity
    trials: list[Trial] = []
    knob = near_cache_knob(0.95, settle_ms=0)
    opt = optimiser(suite, [knob], trials)
    await run(opt, 6)
    # Up (helps) then down were tried, both reverted; then nothing until retry_after_ms.
    assert [(t.to_value, t.kept) for t in trials] == [(2_048.0, False)]  # down from the bottom rung: none
    assert suite.values[knob.name] == 1_024.0
    assert [w[2] for w in suite.writes] == [2_048.0, 1_024.0]
    assert "reverted" in trials[0].reason and "not above" in trials[0].reason
    suite.now_ns += SETTINGS.retry_after_ms * 1_000_000
    assert await opt.step() is not None  # tried again once the block has passed


async def test_noise_alone_never_keeps_a_change() -> None:
    for seed in range(5):
        suite = SimulatedSuite(noise=0.05, flat=True, rng=random.Random(seed))
        suite.values["cache.l1_max_entries"] = 65_536.0
        trials: list[Trial] = []
        opt = optimiser(suite, [near_cache_knob(0.95, settle_ms=0)], trials)
        await run(opt, 4)
        assert trials and not any(t.kept for t in trials)
        assert suite.values["cache.l1_max_entries"] == 65_536.0


async def test_group_commit_window_finds_the_other_direction_then_economises_while_on_target() -> None:
    suite = SimulatedSuite(noise=0.002)
    trials: list[Trial] = []
    knob = group_commit_knob(p99_latency_target_ns=600_000, settle_ms=500)
    opt = optimiser(suite, [knob], trials)
    await run(opt, 10)
    window = suite.values[knob.name]
    # From 0 (p99 1 ms): shorter is impossible, so longer; it keeps moving while p99 improves,
    # then economises (a longer window, fewer fsyncs) only while p99 stays within its target.
    assert 100.0 <= window <= 200.0
    assert suite.truth(knob) <= 600_000
    assert trials[0].purpose is Purpose.IMPROVE and trials[0].to_value == 25.0 and trials[0].kept
    economised = [t for t in trials if t.purpose is Purpose.ECONOMISE]
    assert economised and not economised[-1].kept  # 400 us would miss the target: reverted
    assert "no longer met" in economised[-1].reason


async def test_one_setting_changes_at_a_time_across_knobs() -> None:
    suite = SimulatedSuite(noise=0.002)
    trials: list[Trial] = []
    knobs = [near_cache_knob(0.95, settle_ms=1_000), group_commit_knob(600_000, settle_ms=500)]
    opt = optimiser(suite, knobs, trials)
    await run(opt, 12)
    assert {t.service for t in trials} == {"cache", "execution"}
    # Trials never overlap in time, and each one's writes fall inside it.
    for earlier, later in itertools.pairwise(trials):
        assert earlier.decided_ns <= later.started_ns
    for _, name, _ in suite.writes:
        assert name in {k.name for k in knobs}
    for trial in trials:
        inside = {w[1] for w in suite.writes if trial.started_ns < w[0] <= trial.decided_ns}
        assert inside == {f"{trial.service}.{trial.setting}"}


async def test_a_refused_change_is_logged_not_kept() -> None:
    suite = SimulatedSuite(refuse={"cache.l1_max_entries"})
    trials: list[Trial] = []
    opt = optimiser(suite, [near_cache_knob()], trials)
    trial = await opt.step()
    assert trial is not None and not trial.kept and trial.measured is None
    assert "could not change: cache has no tuning hook" in trial.reason


def test_knobs_and_settings_are_checked() -> None:
    objective = Objective("x", 1.0, higher_is_better=True)
    with pytest.raises(ValueError, match="ascending"):
        Knob("cache", "a", (2.0, 1.0), objective).validate()
    with pytest.raises(ValueError, match=r"2\.\.64"):
        Knob("cache", "a", (1.0,), objective).validate()
    with pytest.raises(ValueError, match="helps"):
        Knob("cache", "a", (1.0, 2.0), objective, helps=0).validate()
    with pytest.raises(ValueError, match="samples"):
        OptimiserSettings(window_ms=1_000, sample_interval_ms=500).validate()
    with pytest.raises(ValueError, match="once"):
        knob = near_cache_knob()
        Optimiser([knob, replace(knob)], SimulatedSuite(), SimulatedSuite())
    assert Knob("cache", "a", (1.0, 2.0, 4.0), objective, helps=UP, cheaper=DOWN).rung(3.1) == 2


async def test_a_setting_that_cannot_be_read_is_left_alone_until_retry_after() -> None:
    class NoHook(SimulatedSuite):
        reads: int = 0

        async def read(self, knob: Knob) -> float:
            self.reads += 1
            raise ActuatorError("no READY execution replica with an address to tune")

    suite = NoHook()
    trials: list[Trial] = []
    opt = optimiser(suite, [group_commit_knob()], trials)
    started = suite.now_ns
    assert await opt.step() is None and await opt.step() is None
    assert suite.reads == 1 and suite.now_ns == started  # no window spent measuring it
    suite.now_ns += SETTINGS.retry_after_ms * 1_000_000
    assert await opt.step() is None
    assert suite.reads == 2 and trials == []
