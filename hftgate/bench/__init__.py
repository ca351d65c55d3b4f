"""Benchmarks behind ``hftgate bench``: each suite is a list of modules with ``run() -> dict``.

Benchmarks report ratios against floors measured in the same run (numpy, a
pure-Python reference, TCP, an empty gRPC call) and medians of several runs.
They never run as part of ``make test``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

BenchResult = dict[str, float | int | bool | str]

# suite name -> modules under hftgate.bench whose run() results are merged, in order
SUITES: dict[str, tuple[str, ...]] = {
    "native": ("native_vwap", "native_queues", "native_clock", "native_histogram", "native_crc32"),
    "matching": ("matching",),
    "marketdata": ("marketdata",),
    "cache": ("cache",),
    "execution": ("execution",),
    "crash": ("crash",),
    "tracing": ("tracing",),
    "gateway": ("gateway",),
    "scaling": ("scaling",),
    "moves": ("moves",),
}


def suite_steps(suite: str) -> list[tuple[str, Callable[..., BenchResult]]]:
    """The ``(module, run)`` pairs of a suite, skipping modules not built yet."""
    if suite not in SUITES:
        raise KeyError(f"unknown benchmark suite {suite!r}; choose from {', '.join(SUITES)}")
    steps = []
    for name in SUITES[suite]:
        try:
            module = importlib.import_module(f"hftgate.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"hftgate.bench.{name}":
                raise
            continue
        steps.append((name, module.run))
    return steps
