"""Latency histogram over the C core's HDR-style histogram (``native/include/hft_histogram.h``).

Values are integer nanoseconds. Every statistic is exact to ``significant_figures``
decimal digits (3 -> within 0.1%), whatever the number of values recorded, and
recording never allocates. The policy for odd values comes from the C side:
negative values raise :class:`~hftgate.native.errors.OutOfRange` and record nothing;
values above ``highest_ns`` are recorded as ``highest_ns`` and counted in
:attr:`LatencyHistogram.overflow_count`.

One writer per histogram, and no reading while it writes: to measure from several
threads give each its own histogram and :meth:`LatencyHistogram.merge` them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hftgate.native import check, ffi, lib

# The percentiles summary() reports, in ascending order (the C side walks them in one pass).
SUMMARY_PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0),
    ("p90", 90.0),
    ("p99", 99.0),
    ("p99_9", 99.9),
    ("p99_99", 99.99),
)


def _record_rejected(value_ns: int) -> None:
    check(lib.HFT_ERANGE, f"histogram_record({value_ns!r}): latencies cannot be negative")


def _record_after_close(value_ns: int) -> None:
    raise ValueError("LatencyHistogram is closed")


class LatencyHistogram:
    """A fixed-size latency histogram for integer nanosecond values.

    ``lowest_ns`` is the resolution (1 keeps small values exact), ``highest_ns`` the
    largest value tracked (default one hour), ``significant_figures`` the precision
    (1..5). Memory is fixed at creation: about 270 KB with the defaults.
    """

    # Set per instance in __init__ to a closure over the bound C function and the
    # handle: no attribute lookups on the hot path (see _make_record).
    record: Callable[[int], None]
    """Record one latency in ns. Raises OutOfRange for a negative value."""

    def __init__(
        self, lowest_ns: int = 1, highest_ns: int = 3_600_000_000_000, significant_figures: int = 3
    ) -> None:
        out = ffi.new("hft_histogram **")
        check(
            lib.hft_histogram_create(lowest_ns, highest_ns, significant_figures, out),
            f"histogram_create(lowest_ns={lowest_ns}, highest_ns={highest_ns}, "
            f"significant_figures={significant_figures})",
        )
        self.lowest_ns = lowest_ns
        self.highest_ns = highest_ns
        self.significant_figures = significant_figures
        self._handle: Any = ffi.gc(out[0], lib.hft_histogram_destroy)
        self._closed = False
        self.record = self._make_record(self._handle)
        self._summary_pcts = ffi.new("double[]", [pct for _, pct in SUMMARY_PERCENTILES])
        self._summary_values = ffi.new("int64_t[]", len(SUMMARY_PERCENTILES))

    @staticmethod
    def _make_record(handle: Any) -> Callable[[int], None]:
        record_one = lib.hft_histogram_record

        def record(value_ns: int) -> None:
            if record_one(handle, value_ns):
                _record_rejected(value_ns)

        return record

    def _live_handle(self) -> Any:
        if self._closed:
            raise ValueError("LatencyHistogram is closed")
        return self._handle

    def record_many(self, values_ns: npt.ArrayLike) -> None:
        """Record a batch; an int64 C-contiguous numpy array is read in place, anything else is
        converted first. All or nothing: a negative value raises OutOfRange and records none."""
        handle = self._live_handle()
        array = np.ascontiguousarray(values_ns, dtype=np.int64)
        if array.ndim != 1:
            array = array.reshape(-1)
        check(
            lib.hft_histogram_record_many(handle, ffi.from_buffer("int64_t[]", array), array.size),
            f"histogram_record_many(<{array.size} values>)",
        )

    def record_n(self, value_ns: int, count: int) -> None:
        """Record ``count`` occurrences of ``value_ns``."""
        check(
            lib.hft_histogram_record_n(self._live_handle(), value_ns, count),
            f"histogram_record_n({value_ns}, {count})",
        )

    def percentile(self, pct: float) -> int:
        """The value at percentile ``pct`` (0..100), nearest-rank, erring high within the precision."""
        if not 0.0 <= pct <= 100.0:
            raise ValueError(f"percentile must be within 0..100, got {pct!r}")
        return int(lib.hft_histogram_value_at_percentile(self._live_handle(), pct))

    def percentiles(self, pcts: Sequence[float]) -> list[int]:
        """Several percentiles in one pass over the counters (any order; each within 0..100)."""
        handle = self._live_handle()
        if not all(0.0 <= p <= 100.0 for p in pcts):
            raise ValueError(f"percentiles must be within 0..100, got {list(pcts)!r}")
        order = sorted(range(len(pcts)), key=pcts.__getitem__)
        ascending = ffi.new("double[]", [pcts[i] for i in order])
        values = ffi.new("int64_t[]", len(pcts))
        check(
            lib.hft_histogram_values_at_percentiles(handle, ascending, values, len(pcts)),
            "histogram_values_at_percentiles",
        )
        result = [0] * len(pcts)
        for position, index in enumerate(order):
            result[index] = int(values[position])
        return result

    @property
    def count(self) -> int:
        return int(lib.hft_histogram_total_count(self._live_handle()))

    @property
    def overflow_count(self) -> int:
        """How many recorded values were above ``highest_ns`` and clamped to it."""
        return int(lib.hft_histogram_overflow_count(self._live_handle()))

    @property
    def min(self) -> int:
        return int(lib.hft_histogram_min(self._live_handle()))

    @property
    def max(self) -> int:
        return int(lib.hft_histogram_max(self._live_handle()))

    @property
    def mean(self) -> float:
        return float(lib.hft_histogram_mean(self._live_handle()))

    @property
    def stdev(self) -> float:
        """Population standard deviation (numpy's default, ddof=0)."""
        return float(lib.hft_histogram_stdev(self._live_handle()))

    def summary(self) -> dict[str, float]:
        """count, min, max, mean, stdev and p50 .. p99_99, all in ns; zeros when empty."""
        handle = self._live_handle()
        check(
            lib.hft_histogram_values_at_percentiles(
                handle, self._summary_pcts, self._summary_values, len(SUMMARY_PERCENTILES)
            ),
            "histogram_values_at_percentiles",
        )
        result: dict[str, float] = {
            "count": int(lib.hft_histogram_total_count(handle)),
            "min": int(lib.hft_histogram_min(handle)),
            "max": int(lib.hft_histogram_max(handle)),
            "mean": float(lib.hft_histogram_mean(handle)),
            "stdev": float(lib.hft_histogram_stdev(handle)),
        }
        for i, (name, _) in enumerate(SUMMARY_PERCENTILES):
            result[name] = int(self._summary_values[i])
        return result

    def merge(self, other: LatencyHistogram) -> None:
        """Add every value recorded in ``other`` (same lowest, highest and figures) into this one."""
        check(
            lib.hft_histogram_merge(self._live_handle(), other._live_handle()),
            f"histogram_merge({self._config()} <- {other._config()})",
        )

    def reset(self) -> None:
        """Forget every recorded value; the configuration stays."""
        lib.hft_histogram_reset(self._live_handle())

    def close(self) -> None:
        """Release the C histogram. Idempotent.

        The memory is freed once nothing refers to the handle: at once, unless a
        ``record`` fetched before close() is still held somewhere (it keeps working
        on the orphaned histogram rather than touching freed memory).
        """
        if not self._closed:
            self._closed = True
            self.record = _record_after_close
            self._handle = None

    def _config(self) -> str:
        return f"lowest_ns={self.lowest_ns}, highest_ns={self.highest_ns}, figures={self.significant_figures}"

    def __enter__(self) -> LatencyHistogram:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"count={self.count}"
        return f"LatencyHistogram({self._config()}, {state})"
