"""A load-trace simulator for the decision rule: an injected clock, no sleeping, no processes.

The service's total load (in the policy's metric, e.g. in-flight requests) is shared evenly by
its READY replicas; a replica the rule starts becomes READY ``startup_ms`` later and reports
nothing meanwhile; a scale-down removes the newest replicas at once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from services.scaler.decisions import (
    NS_PER_MS,
    Action,
    Decision,
    Policy,
    ReplicaLoad,
    ScalingMemory,
    decide,
)

START_NS = 1_700_000_000 * 1_000_000_000


@dataclass
class Simulation:
    policy: Policy
    replicas: int = 1
    startup_ms: int = 0
    #: Per-replica metric ceiling (a CPU saturates at one core); 0 = none.
    saturation: float = 0.0
    now_ns: int = START_NS
    memory: ScalingMemory = field(default_factory=ScalingMemory)
    decisions: list[Decision] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)
    _ready_at: list[int] = field(default_factory=list)
    _next_id: int = 0

    def __post_init__(self) -> None:
        self._ready_at = [self.now_ns] * self.replicas

    def step(self, total_load: float) -> Decision:
        ready = sum(1 for at in self._ready_at if at <= self.now_ns)
        per_replica = total_load / ready if ready else 0.0
        if self.saturation:
            per_replica = min(per_replica, self.saturation)
        loads = [
            ReplicaLoad(f"r{index}", at <= self.now_ns, per_replica if at <= self.now_ns else None)
            for index, at in enumerate(self._ready_at)
        ]
        decision = decide(self.now_ns, self.policy, loads, self.memory)
        change = decision.desired_replicas - decision.current_replicas
        if change > 0:
            self._ready_at += [self.now_ns + self.startup_ms * NS_PER_MS] * change
        elif change < 0:
            del self._ready_at[change:]
        self.memory.record_scaling(self.now_ns, change)
        self.decisions.append(decision)
        self.loads.append(total_load)
        self.now_ns += self.policy.evaluation_interval_ms * NS_PER_MS
        return decision

    def run(self, trace: Callable[[int], float], evaluations: int) -> list[Decision]:
        return [self.step(trace(index)) for index in range(evaluations)]

    def scale_downs_per_window(self, window_ms: int) -> int:
        """The most scale-downs inside any window of ``window_ms``."""
        times = [d.decided_ns for d in self.decisions if d.action is Action.SCALE_DOWN]
        worst = 0
        for index, start in enumerate(times):
            worst = max(worst, sum(1 for t in times[index:] if t < start + window_ms * NS_PER_MS))
        return worst


def step_trace(before: float, after: float, at: int) -> Callable[[int], float]:
    return lambda index: before if index < at else after


def ramp_trace(start: float, end: float, evaluations: int) -> Callable[[int], float]:
    return lambda index: start + (end - start) * min(index, evaluations) / evaluations


def square_trace(low: float, high: float, half_period: int) -> Callable[[int], float]:
    return lambda index: high if (index // half_period) % 2 == 0 else low


def daily_sine_trace(
    mean: float, amplitude: float, samples_per_day: int, noise: float, seed: int = 7
) -> Callable[[int], float]:
    rng = random.Random(seed)
    values: dict[int, float] = {}

    def trace(index: int) -> float:
        if index not in values:
            phase = 2 * math.pi * index / samples_per_day
            values[index] = max(0.0, mean + amplitude * math.sin(phase) + rng.gauss(0.0, noise))
        return values[index]

    return trace
