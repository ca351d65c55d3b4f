"""Benchmark: the cost of one ``hftgate.native.clock.now_ns()`` call from Python.

Each sample times a tight loop of calls through the module-level binding (as user
code would call it) and divides by the count; the loop's own overhead is included,
so the figure is an upper bound on the call. ``time.monotonic_ns()`` is measured
the same way for scale. Figures are medians over ``repeats`` interleaved samples.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from hftgate.native import clock

CALLS_PER_SAMPLE = 200_000


def _per_call_ns(read: Callable[[], int]) -> float:
    start = time.perf_counter_ns()
    for _ in range(CALLS_PER_SAMPLE):
        read()
    return (time.perf_counter_ns() - start) / CALLS_PER_SAMPLE


def run(repeats: int = 5) -> dict[str, float]:
    contenders: dict[str, Callable[[], int]] = {
        "clock_read_ns": clock.now_ns,
        "clock_time_monotonic_ns": time.monotonic_ns,
    }
    for read in contenders.values():
        _per_call_ns(read)  # warm up
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(max(repeats, 1)):
        for name, read in contenders.items():
            samples[name].append(_per_call_ns(read))
    result = {name: statistics.median(values) for name, values in samples.items()}
    result["clock_source_is_tsc"] = float(clock.source() == "tsc")
    result["clock_tsc_ghz"] = clock.tsc_ghz()
    return result


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:28s} {value:10.3f}")
