"""The optimiser (the seed's AutoOptimizer): tunes one service setting at a time toward its goal.

A *knob* is one setting of one service (the cache's near-cache capacity, the execution journal's
group-commit window) with the ladder of values it may take and the *objective* it serves (the
near cache's hit ratio at least 0.95; the order path's p99 latency at most 1 ms). A trial:

1. reads the setting (:class:`Actuator`) and measures the objective over ``window_ms``, one
   sample every ``sample_interval_ms`` from a :class:`Probe`: the baseline;
2. picks a move of one rung. The objective missed: an *improve* move, the knob's ``helps``
   direction first and the other one once that has failed. The objective met with ``margin`` to
   spare: an *economise* move toward the knob's ``cheaper`` end (a smaller near cache, a longer
   window and fewer fsyncs). Met without margin, or no move left to try: no trial;
3. writes the new value, waits ``settle_ms`` (a near cache refills) and measures the same way;
4. keeps the change only when the measurement shows it helped. An improve move must beat the
   baseline by more than ``min_improvement`` of it *and* by more than ``z`` standard errors of
   the difference, so noise is never taken for an improvement; an economise move must still meet
   the objective. Otherwise the old value is written back;
5. logs the trial and hands it to ``on_trial`` (the scaler adds it to its decision log, so
   GetDecisions shows it).

Trials run one at a time across every knob (round robin), so each measured effect has one cause.
A move that did not help is not tried again for ``retry_after_ms`` (the load may have changed by
then); a kept move clears the knob's memory, since the landscape around the new value is new.

Known limit: baseline and trial are measured one after the other, so a load that changes between
the two windows is read as the setting's effect. The significance test guards against noise, not
against that; short windows under a steady load are where a trial is meaningful.

How a setting changes on a running service is the actuator's business: nothing here restarts a
process (an execution shard cannot be restarted to change a setting). No gRPC import; the clock
and the sleep are injected, so tests drive a simulated service through whole tuning runs without
waiting.

Bounds: a ladder has at most :data:`MAX_LADDER` rungs, a window at most
:data:`MAX_SAMPLES_PER_WINDOW` samples, the memory of failed moves one entry per knob and
direction.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

log = logging.getLogger(__name__)

#: Most values one knob may take.
MAX_LADDER = 64
#: Most samples one measurement window holds (a longer window samples less often).
MAX_SAMPLES_PER_WINDOW = 1_000
#: Fewest samples a measurement needs to count.
MIN_SAMPLES = 3

NS_PER_MS = 1_000_000
UP = 1
DOWN = -1


class Purpose(StrEnum):
    #: The objective is missed: move the way that should help it.
    IMPROVE = "improve"
    #: The objective is met with a margin: move the cheaper way while it stays met.
    ECONOMISE = "economise"


class ActuatorError(RuntimeError):
    """A setting could not be read or changed; the message says why."""


@dataclass(frozen=True)
class Objective:
    """What a knob serves: ``metric`` at least (or at most) ``target``."""

    metric: str
    target: float
    higher_is_better: bool

    def met(self, value: float) -> bool:
        return value >= self.target if self.higher_is_better else value <= self.target

    def met_with_margin(self, value: float, margin: float) -> bool:
        if self.higher_is_better:
            return value >= self.target + abs(self.target) * margin
        return value <= self.target - abs(self.target) * margin

    def gain(self, after: float, before: float) -> float:
        """How much better ``after`` is than ``before`` (negative: worse), in the metric's unit."""
        return after - before if self.higher_is_better else before - after

    def describe(self) -> str:
        return f"{self.metric} {'>=' if self.higher_is_better else '<='} {self.target:.4g}"


@dataclass(frozen=True)
class Knob:
    """One tunable setting of one service."""

    service: str
    setting: str
    #: The values the setting may take, ascending; a move is one rung.
    ladder: tuple[float, ...]
    objective: Objective
    #: The move expected to help the objective (UP or DOWN); the other is tried when it fails.
    helps: int = UP
    #: The move that costs less (memory, fsyncs) when the objective has margin; 0 = never economise.
    cheaper: int = 0
    #: After a change, how long before measuring (a near cache refills, a window takes effect).
    settle_ms: int = 0

    @property
    def name(self) -> str:
        return f"{self.service}.{self.setting}"

    def validate(self) -> None:
        if not self.service or not self.setting:
            raise ValueError("a knob needs its service and setting")
        if not 2 <= len(self.ladder) <= MAX_LADDER:
            raise ValueError(f"{self.name}: a ladder has 2..{MAX_LADDER} values, not {len(self.ladder)}")
        if any(not math.isfinite(v) for v in self.ladder) or list(self.ladder) != sorted(set(self.ladder)):
            raise ValueError(f"{self.name}: the ladder must be finite and strictly ascending")
        if self.helps not in (UP, DOWN) or self.cheaper not in (UP, DOWN, 0):
            raise ValueError(f"{self.name}: helps must be UP or DOWN, cheaper UP, DOWN or 0")
        if self.settle_ms < 0:
            raise ValueError(f"{self.name}: settle_ms must be >= 0")

    def rung(self, value: float) -> int:
        """The ladder index nearest ``value``."""
        return min(range(len(self.ladder)), key=lambda i: (abs(self.ladder[i] - value), i))


@dataclass(frozen=True)
class Measurement:
    """The objective's mean over one window, with its standard error."""

    mean: float
    stderr: float
    samples: int


@dataclass(frozen=True)
class Trial:
    """One change tried: what, why, what was measured and whether it was kept."""

    service: str
    setting: str
    purpose: Purpose
    from_value: float
    to_value: float
    objective: Objective
    baseline: Measurement
    #: The measurement with ``to_value`` in place; None when it could not be taken.
    measured: Measurement | None
    kept: bool
    reason: str
    started_ns: int
    decided_ns: int
    window_ms: int

    @property
    def value_now(self) -> float:
        return self.to_value if self.kept else self.from_value


class Actuator(Protocol):
    """Reads and changes a setting of a running service, without restarting it. Raises
    :class:`ActuatorError` when it cannot."""

    async def read(self, knob: Knob) -> float: ...

    async def write(self, knob: Knob, value: float) -> None: ...


class Probe(Protocol):
    """One reading of a knob's objective over the last moments (e.g. the hit ratio of the lookups
    since the previous sample); None when there is nothing to read (no traffic)."""

    async def sample(self, knob: Knob) -> float | None: ...


@dataclass(frozen=True)
class OptimiserSettings:
    #: Each measurement (baseline, then trial) lasts this long.
    window_ms: int = 10_000
    sample_interval_ms: int = 500
    #: Between two trials.
    pause_ms: int = 5_000
    #: An improve move must gain more than this fraction of the baseline ...
    min_improvement: float = 0.02
    #: ... and more than this many standard errors of the difference.
    z: float = 2.0
    #: The objective must be met by this fraction of its target before an economise move.
    margin: float = 0.02
    #: A move that did not help is not tried again for this long.
    retry_after_ms: int = 300_000

    def validate(self) -> None:
        if self.window_ms <= 0 or self.sample_interval_ms <= 0:
            raise ValueError("window_ms and sample_interval_ms must be positive")
        if self.window_ms // self.sample_interval_ms < MIN_SAMPLES:
            raise ValueError(f"a window must hold at least {MIN_SAMPLES} samples")
        if self.pause_ms < 0 or self.retry_after_ms < 0:
            raise ValueError("pause_ms and retry_after_ms must be >= 0")
        for name in ("min_improvement", "z", "margin"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")


def summarise(values: Sequence[float]) -> Measurement:
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return Measurement(mean, math.sqrt(variance / n), n)


class Optimiser:
    """See the module docstring. ``clock`` gives nanoseconds; ``sleep`` takes seconds."""

    def __init__(
        self,
        knobs: Sequence[Knob],
        actuator: Actuator,
        probe: Probe,
        settings: OptimiserSettings | None = None,
        *,
        clock: Callable[[], int] = time.time_ns,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        on_trial: Callable[[Trial], object] | None = None,
    ) -> None:
        for knob in knobs:
            knob.validate()
        if len({knob.name for knob in knobs}) != len(knobs):
            raise ValueError("each knob may appear once")
        self.knobs = tuple(knobs)
        self.actuator = actuator
        self.probe = probe
        self.settings = settings or OptimiserSettings()
        self.settings.validate()
        self.clock = clock
        self.sleep = sleep
        self.on_trial = on_trial
        self._next = 0
        #: (knob name, direction) -> no move that way before this time.
        self._blocked: dict[tuple[str, int], int] = {}

    # --- measuring ---------------------------------------------------------------------------
    async def measure(self, knob: Knob) -> Measurement | None:
        """The objective over one window; None with fewer than :data:`MIN_SAMPLES` readings."""
        count = min(MAX_SAMPLES_PER_WINDOW, self.settings.window_ms // self.settings.sample_interval_ms)
        interval_s = self.settings.window_ms / count / 1000
        values: list[float] = []
        for _ in range(count):
            await self.sleep(interval_s)
            value = await self.probe.sample(knob)
            if value is not None and math.isfinite(value):
                values.append(value)
        return summarise(values) if len(values) >= MIN_SAMPLES else None

    # --- choosing ----------------------------------------------------------------------------
    def _readable(self, knob: Knob, now: int) -> bool:
        """False while both moves are blocked: nothing could be tried, so nothing is measured."""
        return any(self._blocked.get((knob.name, d), 0) <= now for d in (UP, DOWN))

    def _open(self, knob: Knob, rung: int, direction: int, now: int) -> bool:
        return (
            0 <= rung + direction < len(knob.ladder) and self._blocked.get((knob.name, direction), 0) <= now
        )

    def choose(self, knob: Knob, rung: int, baseline: Measurement) -> tuple[Purpose, int] | None:
        """The move to try from ``rung`` given ``baseline``, or None (at target, or nothing left)."""
        now = self.clock()
        objective = knob.objective
        if not objective.met(baseline.mean):
            for direction in (knob.helps, -knob.helps):
                if self._open(knob, rung, direction, now):
                    return Purpose.IMPROVE, direction
            return None
        if (
            knob.cheaper
            and objective.met_with_margin(baseline.mean, self.settings.margin)
            and self._open(knob, rung, knob.cheaper, now)
        ):
            return Purpose.ECONOMISE, knob.cheaper
        return None

    def verdict(
        self, knob: Knob, purpose: Purpose, baseline: Measurement, measured: Measurement
    ) -> tuple[bool, str]:
        """Whether the measured change helped, and why (the trial's reason)."""
        objective = knob.objective
        if purpose is Purpose.ECONOMISE:
            if objective.met(measured.mean):
                return True, f"{objective.describe()} still met ({measured.mean:.4g}) at less cost"
            return False, f"{objective.describe()} no longer met ({measured.mean:.4g})"
        gain = objective.gain(measured.mean, baseline.mean)
        noise = self.settings.z * math.hypot(baseline.stderr, measured.stderr)
        needed = max(self.settings.min_improvement * abs(baseline.mean), noise)
        moved = f"{objective.metric} {baseline.mean:.4g} -> {measured.mean:.4g}"
        if gain > needed:
            return True, f"{moved} (gain {gain:.3g} > {needed:.3g})"
        return False, (
            f"{moved}: gain {gain:.3g} not above {needed:.3g} ({self.settings.min_improvement:.0%} "
            f"of baseline, {self.settings.z:g} standard errors)"
        )

    # --- one trial ---------------------------------------------------------------------------
    async def trial(self, knob: Knob) -> Trial | None:
        """Try one move of ``knob`` (see the module docstring); None when no move is worth trying."""
        started = self.clock()
        if not self._readable(knob, started):
            return None
        try:
            current = await self.actuator.read(knob)
        except ActuatorError as exc:
            # Not tunable now (no replica, or no hook): leave it alone for retry_after_ms.
            log.warning(
                "optimiser: cannot read %s (%s); next try in %d ms",
                knob.name,
                exc,
                self.settings.retry_after_ms,
            )
            self._block(knob, UP)
            self._block(knob, DOWN)
            return None
        baseline = await self.measure(knob)
        if baseline is None:
            log.debug("optimiser: no readings of %s for %s", knob.objective.metric, knob.name)
            return None
        rung = knob.rung(current)
        choice = self.choose(knob, rung, baseline)
        if choice is None:
            return None
        purpose, direction = choice
        candidate = knob.ladder[rung + direction]
        try:
            await self.actuator.write(knob, candidate)
        except ActuatorError as exc:
            self._block(knob, direction)
            return self._finish(
                knob, purpose, current, candidate, baseline, None, False, f"could not change: {exc}", started
            )
        if knob.settle_ms:
            await self.sleep(knob.settle_ms / 1000)
        measured = await self.measure(knob)
        if measured is None:
            kept, reason = False, f"no readings of {knob.objective.metric} with the new value"
        else:
            kept, reason = self.verdict(knob, purpose, baseline, measured)
        if kept:
            self._blocked = {key: until for key, until in self._blocked.items() if key[0] != knob.name}
        else:
            self._block(knob, direction)
            try:
                await self.actuator.write(knob, current)
            except ActuatorError as exc:
                reason += f"; REVERT FAILED, {knob.setting} may still be {candidate:g}: {exc}"
        return self._finish(knob, purpose, current, candidate, baseline, measured, kept, reason, started)

    def _block(self, knob: Knob, direction: int) -> None:
        self._blocked[(knob.name, direction)] = self.clock() + self.settings.retry_after_ms * NS_PER_MS

    def _finish(
        self,
        knob: Knob,
        purpose: Purpose,
        current: float,
        candidate: float,
        baseline: Measurement,
        measured: Measurement | None,
        kept: bool,
        reason: str,
        started: int,
    ) -> Trial:
        trial = Trial(
            service=knob.service,
            setting=knob.setting,
            purpose=purpose,
            from_value=current,
            to_value=candidate,
            objective=knob.objective,
            baseline=baseline,
            measured=measured,
            kept=kept,
            reason=f"{purpose}: {knob.setting} {current:g} -> {candidate:g}: {reason}; "
            + ("kept" if kept else "reverted"),
            started_ns=started,
            decided_ns=self.clock(),
            window_ms=self.settings.window_ms,
        )
        log.info("optimiser trial of %s: %s", knob.name, trial.reason)
        if self.on_trial is not None:
            self.on_trial(trial)
        return trial

    # --- the loop ----------------------------------------------------------------------------
    async def step(self) -> Trial | None:
        """The next knob (round robin) that has a move worth trying makes one trial."""
        for _ in range(len(self.knobs)):
            knob = self.knobs[self._next % len(self.knobs)]
            self._next += 1
            trial = await self.trial(knob)
            if trial is not None:
                return trial
        return None

    async def run_forever(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("optimiser step failed")
            await self.sleep(self.settings.pause_ms / 1000)


# --- the suite's knobs ---------------------------------------------------------------------------------
def near_cache_knob(hit_ratio_target: float = 0.95, settle_ms: int = 5_000) -> Knob:
    """The cache's near cache (L1) capacity in entries toward its hit-ratio target; smaller is
    cheaper (memory). Powers of two from 1 Ki to 4 Mi entries."""
    return Knob(
        service="cache",
        setting="l1_max_entries",
        ladder=tuple(float(2**power) for power in range(10, 23)),
        objective=Objective("near_cache_hit_ratio", hit_ratio_target, higher_is_better=True),
        helps=UP,
        cheaper=DOWN,
        settle_ms=settle_ms,
    )


def group_commit_knob(p99_latency_target_ns: float = 1_000_000.0, settle_ms: int = 1_000) -> Knob:
    """The execution journal's group-commit window in microseconds (how long the writer waits for
    more inputs to share one fsync) toward the order path's p99 latency target. A shorter window
    helps a light load (an ack waits less), a longer one a heavy load (fewer fsyncs queue up), so
    both ways are tried; longer is cheaper (fewer fsyncs)."""
    return Knob(
        service="execution",
        setting="journal_group_commit_window_us",
        ladder=(0.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1_600.0, 3_200.0),
        objective=Objective("p99_latency_ns", p99_latency_target_ns, higher_is_better=False),
        helps=DOWN,
        cheaper=UP,
        settle_ms=settle_ms,
    )
