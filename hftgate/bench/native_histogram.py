"""Benchmark: recording latencies into ``hftgate.native.histogram.LatencyHistogram``.

- ``hist_record_ns``: one ``record(value)`` call from Python. Each sample times a tight
  loop over 1M pre-built lognormal latencies (so every call hits a different counter,
  as in real use) and divides by the count; the loop's own overhead is included, so
  the figure is an upper bound on the call.
- ``hist_record_many_ns_per_value``: ``record_many`` on the same values as one int64
  numpy array (read in place), per value.
- ``hist_python_call_floor_ns``: the same loop calling an empty one-argument Python
  function, for scale: no Python-level ``record`` can cost less.

Samples are interleaved and every figure is the median over ``repeats`` rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from hftgate.native.histogram import LatencyHistogram

N_VALUES = 1_000_000


def _per_call_ns(call: Callable[[int], object], values: list[int]) -> float:
    start = time.perf_counter_ns()
    for value in values:
        call(value)
    return (time.perf_counter_ns() - start) / len(values)


def _record_many_ns_per_value(hist: LatencyHistogram, values: np.ndarray) -> float:
    start = time.perf_counter_ns()
    hist.record_many(values)
    return (time.perf_counter_ns() - start) / values.size


def _empty_call(value: int) -> None:
    pass


def run(repeats: int = 5) -> dict[str, float]:
    rng = np.random.default_rng(20240601)
    array = np.rint(rng.lognormal(np.log(20_000.0), 1.0, N_VALUES)).astype(np.int64)
    values = array.tolist()
    hist = LatencyHistogram()
    record = hist.record  # bound once, as a hot loop in user code would

    _per_call_ns(record, values)  # warm up: page in the counters
    samples: dict[str, list[float]] = {"record": [], "record_many": [], "floor": []}
    for _ in range(max(repeats, 1)):
        samples["record"].append(_per_call_ns(record, values))
        samples["record_many"].append(_record_many_ns_per_value(hist, array))
        samples["floor"].append(_per_call_ns(_empty_call, values))
    hist.close()
    return {
        "hist_record_ns": statistics.median(samples["record"]),
        "hist_record_many_ns_per_value": statistics.median(samples["record_many"]),
        "hist_python_call_floor_ns": statistics.median(samples["floor"]),
    }


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:32s} {value:10.3f}")
