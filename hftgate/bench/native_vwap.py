"""Benchmark: the C core's one-pass SIMD VWAP against numpy, the scalar kernel and plain Python.

All contenders see the same 1M-element float64 arrays (the pure-Python loop sees
lists, see below). Samples are interleaved (one of each contender per round) so a
noisy neighbour on a shared machine hurts all of them alike, and every figure is
the median over the rounds. numpy runs exactly as configured in the caller's
environment (BLAS threads, OPENBLAS_* variables): that is the honest comparison.

numpy's ``np.dot`` runs on OpenBLAS's threads, ``v.sum()`` on one. So besides the
single-thread fused kernel (``vwap_simd_*``) the threaded one (``vwap_simd_mt_*``)
runs with as many threads as numpy's BLAS uses (read with threadpoolctl, else
``os.cpu_count()``), and, when threadpoolctl is installed, numpy also runs pinned
to one BLAS thread (``vwap_simd_vs_numpy_1thread``): one core against one core.
The threaded kernel uses the process's dispatched kernel (AVX2 unless
``HFT_NATIVE_FORCE_SCALAR=1``).

OpenBLAS's worker threads busy-wait for about 0.1 s after each numpy call (that is
how ``np.dot`` gets both cores at once back to back). Anything that needs the
second core in that window shares it with a spinning thread: measured here, the
threaded VWAP then takes 650-1000 us instead of ~400-450 us. So each threaded
sample starts only after ``BLAS_SPIN_SETTLE_NS`` without a numpy call (spent on
the single-threaded samples, then busy-waiting, not sleeping: an idle virtual CPU
comes back slow), the way each contender is timed in its own steady state.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from hftgate.bench import BenchResult
from hftgate.native.vwap import avx2_supported, threads_used, vwap, vwap_avx2, vwap_scalar

N_ELEMENTS = 1_000_000
# The pure-Python loop is far slower; it runs on a 100k-element prefix and its time
# is scaled per element (the interpreter's cost per element does not depend on the
# size). vwap_simd_vs_python divides that by the SIMD cost per element at 1M;
# vwap_simd_vs_python_same_slice by the SIMD cost on the same 100k prefix.
PYTHON_N_ELEMENTS = 100_000
# Each timed sample repeats its call until it lasts at least this long, so the
# timer's resolution and the call overhead are negligible.
MIN_SAMPLE_NS = 20_000_000
# How long after the last numpy call a threaded sample waits (see the module docstring);
# twice OpenBLAS's default spin (2**28 cycles, ~0.1 s at 2.6 GHz).
BLAS_SPIN_SETTLE_NS = 250_000_000


def python_vwap(prices: list[float], volumes: list[float]) -> float:
    numerator = 0.0
    denominator = 0.0
    for price, volume in zip(prices, volumes, strict=True):
        numerator += price * volume
        denominator += volume
    return numerator / denominator


def _blas_controller() -> Any | None:
    """A threadpoolctl controller over numpy's BLAS, or None without threadpoolctl."""
    try:
        from threadpoolctl import ThreadpoolController
    except ModuleNotFoundError:
        return None
    controller = ThreadpoolController().select(user_api="blas")
    return controller if controller.lib_controllers else None


def _blas_threads(controller: Any | None) -> tuple[int, str]:
    """How many threads numpy's BLAS uses, and where that figure comes from."""
    if controller is None:
        return os.cpu_count() or 1, "os.cpu_count"
    return max(lib.num_threads for lib in controller.lib_controllers), "threadpoolctl"


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


class _Contender:
    """One timed call: what it runs, over how many elements, and how it shares the cores."""

    def __init__(
        self,
        call: Callable[[], object],
        n_elements: int,
        *,
        context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
        calls_blas: bool = False,
        needs_idle_cores: bool = False,
    ) -> None:
        self.call = call
        self.n_elements = n_elements
        # Entered around a whole sample, outside the timed loop (threadpoolctl's limit
        # costs far more than one call).
        self.context = context
        self.calls_blas = calls_blas
        self.needs_idle_cores = needs_idle_cores
        self.calls = 1


class _Timer:
    """Times contenders, keeping threaded ones out of OpenBLAS's spin after a numpy call."""

    def __init__(self) -> None:
        self.last_blas_ns = 0

    def _settle(self, contender: _Contender) -> None:
        if contender.needs_idle_cores:
            while time.perf_counter_ns() - self.last_blas_ns < BLAS_SPIN_SETTLE_NS:
                pass

    def _ran(self, contender: _Contender) -> None:
        if contender.calls_blas:
            self.last_blas_ns = time.perf_counter_ns()

    def calibrate(self, contender: _Contender) -> None:
        self._settle(contender)
        with contender.context():
            contender.calls = _calls_per_sample(contender.call)
        self._ran(contender)

    def ns_per_element(self, contender: _Contender) -> float:
        self._settle(contender)
        with contender.context():
            sample_ns = _sample_ns(contender.call, contender.calls)
        self._ran(contender)
        return sample_ns / contender.n_elements


def run(repeats: int = 5) -> BenchResult:
    rng = np.random.default_rng(20240601)
    prices = rng.uniform(99.0, 101.0, N_ELEMENTS)
    volumes = rng.integers(1, 10_000, N_ELEMENTS).astype(np.float64)
    price_list = prices[:PYTHON_N_ELEMENTS].tolist()
    volume_list = volumes[:PYTHON_N_ELEMENTS].tolist()

    blas = _blas_controller()
    blas_threads, blas_threads_source = _blas_threads(blas)

    # Without AVX2 the "SIMD" figures are the dispatched kernel (scalar) and the ratios say so.
    simd = vwap_avx2 if avx2_supported() else vwap
    # In round order: the numpy samples are followed by the single-threaded ones, which
    # fill most of the settling time the threaded sample waits for.
    contenders: dict[str, _Contender] = {
        "numpy": _Contender(lambda: np.dot(prices, volumes) / volumes.sum(), N_ELEMENTS, calls_blas=True),
    }
    if blas is not None:
        contenders["numpy_1thread"] = _Contender(
            lambda: np.dot(prices, volumes) / volumes.sum(),
            N_ELEMENTS,
            context=lambda: blas.limit(limits=1, user_api="blas"),
            calls_blas=True,
        )
    contenders |= {
        "python": _Contender(lambda: python_vwap(price_list, volume_list), PYTHON_N_ELEMENTS),
        # The SIMD kernel on the very slice the Python loop sees (cache-resident at 100k).
        "simd_python_slice": _Contender(
            lambda: simd(prices[:PYTHON_N_ELEMENTS], volumes[:PYTHON_N_ELEMENTS]), PYTHON_N_ELEMENTS
        ),
        "simd": _Contender(lambda: simd(prices, volumes), N_ELEMENTS),
        "scalar": _Contender(lambda: vwap_scalar(prices, volumes), N_ELEMENTS),
        "simd_mt": _Contender(
            lambda: vwap(prices, volumes, threads=blas_threads), N_ELEMENTS, needs_idle_cores=True
        ),
    }

    timer = _Timer()
    for contender in contenders.values():
        timer.calibrate(contender)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(max(repeats, 1)):
        for name, contender in contenders.items():
            samples[name].append(timer.ns_per_element(contender))

    per_element = {name: statistics.median(values) for name, values in samples.items()}
    results: BenchResult = {
        "vwap_simd_vs_numpy": per_element["numpy"] / per_element["simd"],
        "vwap_simd_mt_vs_numpy": per_element["numpy"] / per_element["simd_mt"],
    }
    if "numpy_1thread" in per_element:
        results["vwap_simd_vs_numpy_1thread"] = per_element["numpy_1thread"] / per_element["simd"]
    results |= {
        "vwap_simd_vs_scalar": per_element["scalar"] / per_element["simd"],
        "vwap_simd_vs_python": per_element["python"] / per_element["simd"],
        "vwap_simd_mt_vs_python": per_element["python"] / per_element["simd_mt"],
        "vwap_simd_vs_python_same_slice": per_element["python"] / per_element["simd_python_slice"],
        "vwap_simd_ns_per_element": per_element["simd"],
        "vwap_simd_mt_ns_per_element": per_element["simd_mt"],
        "vwap_scalar_ns_per_element": per_element["scalar"],
        "vwap_numpy_ns_per_element": per_element["numpy"],
    }
    if "numpy_1thread" in per_element:
        results["vwap_numpy_1thread_ns_per_element"] = per_element["numpy_1thread"]
    results |= {
        "vwap_python_ns_per_element": per_element["python"],
        "numpy_blas_threads": blas_threads,
        "numpy_blas_threads_from": blas_threads_source,
        "vwap_simd_mt_threads_used": threads_used(N_ELEMENTS, np.float64, blas_threads),
        "vwap_avx2_available": float(avx2_supported()),
    }
    return results


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:36s} {value:>12.4f}" if isinstance(value, float) else f"{key:36s} {value!s:>12}")
