"""hftgate.native.clock: one source per process, monotonic, on the CLOCK_MONOTONIC timeline.

Tolerances are loose (shared 2-core machine); nothing here asserts how fast a read is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hftgate.native import clock

# now_ns may sit this far from time.monotonic_ns() (Python call overhead, scheduling) ...
OFFSET_TOLERANCE_NS = 5_000_000
# ... and drift this much from it over the ~100 ms window (calibration error is a few ppm).
DRIFT_TOLERANCE_NS = 2_000_000


def cpu_has_invariant_tsc() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        return False
    flags = next((line.split() for line in cpuinfo.read_text().splitlines() if line.startswith("flags")), [])
    return {"constant_tsc", "nonstop_tsc", "rdtscp"} <= set(flags)


def check_tracks_monotonic() -> None:
    start, mono_start, cycles_start = clock.now_ns(), time.monotonic_ns(), clock.cycles()
    assert abs(start - mono_start) < OFFSET_TOLERANCE_NS
    time.sleep(0.1)
    end, mono_end, cycles_end = clock.now_ns(), time.monotonic_ns(), clock.cycles()
    mono_elapsed = mono_end - mono_start
    assert abs((end - start) - mono_elapsed) < DRIFT_TOLERANCE_NS
    assert abs(clock.cycles_to_ns(cycles_end - cycles_start) - mono_elapsed) < DRIFT_TOLERANCE_NS


def test_source_is_tsc_where_the_cpu_allows() -> None:
    if os.environ.get("HFT_CLOCK_FORCE_MONOTONIC") == "1" or not cpu_has_invariant_tsc():
        pytest.skip("TSC not expected here")
    assert clock.source() == "tsc"
    assert 0.1 < clock.tsc_ghz() < 100.0


def test_source_and_rate_are_consistent() -> None:
    assert clock.source() in ("tsc", "monotonic")
    assert (clock.tsc_ghz() > 0.0) == (clock.source() == "tsc")


def test_now_never_goes_backwards() -> None:
    now = clock.now_ns
    readings = [now() for _ in range(100_000)]
    assert readings == sorted(readings)


def test_tracks_clock_monotonic() -> None:
    check_tracks_monotonic()


def test_cycles_to_ns_is_proportional() -> None:
    assert clock.cycles_to_ns(0) == 0
    one_second = clock.cycles_to_ns(10**9)
    assert clock.cycles_to_ns(2 * 10**9) == pytest.approx(2 * one_second, abs=1)


def test_forced_monotonic_in_a_subprocess() -> None:
    code = (
        "import time\n"
        "from hftgate.native import clock\n"
        "assert clock.tsc_ghz() == 0.0\n"
        "assert clock.cycles_to_ns(12345) == 12345\n"
        "a = clock.now_ns(); b = time.monotonic_ns(); c = clock.now_ns()\n"
        "assert a <= b <= c, (a, b, c)\n"
        "print(clock.source())\n"
    )
    env = dict(os.environ, HFT_CLOCK_FORCE_MONOTONIC="1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "monotonic"


def test_monotonic_source_tracks_itself_in_a_subprocess() -> None:
    code = "import tests.native.test_clock as t\nt.check_tracks_monotonic()\n"
    env = dict(os.environ, HFT_CLOCK_FORCE_MONOTONIC="1")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=Path(__file__).parents[2])
