"""Benchmark: the C core's one-pass SIMD VWAP against numpy, the scalar kernel and plain Python.

All contenders see the same 1M-element float64 arrays (the pure-Python loop sees
lists, see below). Samples are interleaved (one of each contender per round) so a
noisy neighbour on a shared machine hurts all of them alike, and every figure is
the median over the rounds. numpy runs exactly as configured in the caller's
environment (BLAS threads, OPENBLAS_* variables): that is the honest comparison.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np

from hftgate.native.vwap import avx2_supported, vwap, vwap_avx2, vwap_scalar

N_ELEMENTS = 1_000_000
# The pure-Python loop is far slower; it runs on a 100k-element prefix and its time
# is scaled per element (the interpreter's cost per element does not depend on the
# size). vwap_simd_vs_python divides that by the SIMD cost per element at 1M;
# vwap_simd_vs_python_same_slice by the SIMD cost on the same 100k prefix.
PYTHON_N_ELEMENTS = 100_000
# Each timed sample repeats its call until it lasts at least this long, so the
# timer's resolution and the call overhead are negligible.
MIN_SAMPLE_NS = 20_000_000


def python_vwap(prices: list[float], volumes: list[float]) -> float:
    numerator = 0.0
    denominator = 0.0
    for price, volume in zip(prices, volumes, strict=True):
        numerator += price * volume
        denominator += volume
    return numerator / denominator


def _calls_per_sample(call: Callable[[], object]) -> int:
    call()  # warm up: page in the arrays, resolve lazy bindings
    start = time.perf_counter_ns()
    call()
    once_ns = max(time.perf_counter_ns() - start, 1)
    return max(1, -(-MIN_SAMPLE_NS // once_ns))


def _sample_ns(call: Callable[[], object], calls: int) -> int:
    start = time.perf_counter_ns()
    for _ in range(calls):
        call()
    return (time.perf_counter_ns() - start) // calls


def run(repeats: int = 5) -> dict[str, float]:
    rng = np.random.default_rng(20240601)
    prices = rng.uniform(99.0, 101.0, N_ELEMENTS)
    volumes = rng.integers(1, 10_000, N_ELEMENTS).astype(np.float64)
    price_list = prices[:PYTHON_N_ELEMENTS].tolist()
    volume_list = volumes[:PYTHON_N_ELEMENTS].tolist()

    # Without AVX2 the "SIMD" figures are the dispatched kernel (scalar) and the ratios say so.
    simd = vwap_avx2 if avx2_supported() else vwap
    contenders: dict[str, tuple[Callable[[], object], int]] = {
        "simd": (lambda: simd(prices, volumes), N_ELEMENTS),
        "scalar": (lambda: vwap_scalar(prices, volumes), N_ELEMENTS),
        "numpy": (lambda: np.dot(prices, volumes) / volumes.sum(), N_ELEMENTS),
        "python": (lambda: python_vwap(price_list, volume_list), PYTHON_N_ELEMENTS),
        # The SIMD kernel on the very slice the Python loop sees (cache-resident at 100k).
        "simd_python_slice": (
            lambda: simd(prices[:PYTHON_N_ELEMENTS], volumes[:PYTHON_N_ELEMENTS]),
            PYTHON_N_ELEMENTS,
        ),
    }
    calls = {name: _calls_per_sample(call) for name, (call, _) in contenders.items()}
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(max(repeats, 1)):
        for name, (call, n_elements) in contenders.items():
            samples[name].append(_sample_ns(call, calls[name]) / n_elements)

    per_element = {name: statistics.median(values) for name, values in samples.items()}
    return {
        "vwap_simd_vs_numpy": per_element["numpy"] / per_element["simd"],
        "vwap_simd_vs_scalar": per_element["scalar"] / per_element["simd"],
        "vwap_simd_vs_python": per_element["python"] / per_element["simd"],
        "vwap_simd_vs_python_same_slice": per_element["python"] / per_element["simd_python_slice"],
        "vwap_simd_ns_per_element": per_element["simd"],
        "vwap_scalar_ns_per_element": per_element["scalar"],
        "vwap_numpy_ns_per_element": per_element["numpy"],
        "vwap_python_ns_per_element": per_element["python"],
        "vwap_avx2_available": float(avx2_supported()),
    }


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:32s} {value:12.4f}")
