"""Nanosecond timestamps from the CPU's time-stamp counter (see native/include/hft_clock.h).

``now_ns()`` is on the same timeline as ``time.monotonic_ns()``, so the two can be
mixed, but reads the TSC instead of making a clock_gettime call. It is the C
function itself bound to a module name, so a call is a single cffi call with no
Python wrapper frame in between.

The source (``"tsc"`` or ``"monotonic"``) is chosen and the TSC calibrated (about
20 ms) when this module is imported; ``HFT_CLOCK_FORCE_MONOTONIC=1`` in the
environment before that forces ``"monotonic"``.
"""

from __future__ import annotations

from collections.abc import Callable

from hftgate.native import check, lib

check(lib.hft_clock_init(), "clock_init()")

#: Nanoseconds on the CLOCK_MONOTONIC timeline; never decreases within a thread.
now_ns: Callable[[], int] = lib.hft_clock_now_ns

#: Raw ticks of the active source (TSC cycles, or ns under "monotonic"); subtract two
#: readings and convert the difference with ``cycles_to_ns``.
cycles: Callable[[], int] = lib.hft_clock_cycles

#: Convert a tick count (a difference of ``cycles()`` readings) to nanoseconds.
cycles_to_ns: Callable[[int], int] = lib.hft_clock_cycles_to_ns

_SOURCE_NAMES = {lib.HFT_CLOCK_SOURCE_TSC: "tsc", lib.HFT_CLOCK_SOURCE_MONOTONIC: "monotonic"}


def source() -> str:
    """The clock source this process uses: ``"tsc"`` or ``"monotonic"``."""
    return _SOURCE_NAMES[lib.hft_clock_source()]


def tsc_ghz() -> float:
    """The calibrated TSC rate in GHz, or 0.0 when the source is not the TSC."""
    return float(lib.hft_clock_tsc_ghz())


__all__ = ["cycles", "cycles_to_ns", "now_ns", "source", "tsc_ghz"]
