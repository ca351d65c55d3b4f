"""LatencyHistogram against numpy on latency-shaped data, plus its edge-case policy."""

from __future__ import annotations

import gc
import math
from fractions import Fraction

import numpy as np
import pytest

from hftgate.native.errors import InvalidArgument, OutOfRange
from hftgate.native.histogram import LatencyHistogram

PERCENTILES = (0.0, 1.0, 10.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0)


def lognormal_ns(n: int, seed: int, median_ns: float = 20_000.0, sigma: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.rint(rng.lognormal(np.log(median_ns), sigma, n)).astype(np.int64)


def nearest_rank(pct: float, n: int) -> int:
    """1-based rank of the nearest-rank percentile, ceil(pct/100 * n), in exact arithmetic.

    numpy's method="inverted_cdf" is the same definition but computes the rank in
    floating point, so 99.9% of 200000 comes out as rank 199801 instead of 199800.
    """
    return max(1, math.ceil(Fraction(str(pct)) * n / 100))


def allowed_error(exact: float, significant_figures: int, lowest_ns: int) -> float:
    """The histogram's promise: 10^-sf relative, never finer than its resolution."""
    return max(exact * 10.0**-significant_figures, float(lowest_ns))


@pytest.mark.parametrize(("significant_figures", "lowest_ns"), [(2, 1), (3, 1), (3, 1000), (4, 1)])
def test_percentiles_match_numpy_within_precision(significant_figures: int, lowest_ns: int) -> None:
    data = lognormal_ns(200_000, seed=significant_figures)
    hist = LatencyHistogram(lowest_ns=lowest_ns, significant_figures=significant_figures)
    hist.record_many(data)
    ordered = np.sort(data)
    # It reports the top of the value's counter, so never below the exact answer.
    for pct in PERCENTILES:
        exact = float(ordered[nearest_rank(pct, data.size) - 1])
        reported = hist.percentile(pct)
        assert exact <= reported <= exact + allowed_error(exact, significant_figures, lowest_ns), pct


def test_default_configuration_agrees_with_numpy_default_percentile() -> None:
    # numpy's default interpolates between neighbouring samples; with 200k samples
    # they are far closer together than the 0.1% the default histogram promises.
    data = lognormal_ns(200_000, seed=9)
    hist = LatencyHistogram()
    hist.record_many(data)
    for pct in (50.0, 90.0, 99.0, 99.9):
        assert hist.percentile(pct) == pytest.approx(np.percentile(data, pct), rel=1e-3), pct


@pytest.mark.parametrize("significant_figures", [2, 3, 4])
def test_mean_and_stdev_within_precision(significant_figures: int) -> None:
    data = lognormal_ns(200_000, seed=10 + significant_figures)
    hist = LatencyHistogram(significant_figures=significant_figures)
    hist.record_many(data)
    eps = 10.0**-significant_figures
    assert hist.mean == pytest.approx(data.mean(), rel=eps)
    assert hist.stdev == pytest.approx(data.std(), rel=eps)
    assert hist.count == data.size
    assert hist.min == data.min()
    assert hist.max == data.max()


def test_summary_has_every_statistic_in_ns() -> None:
    data = lognormal_ns(100_000, seed=3)
    hist = LatencyHistogram()
    hist.record_many(data)
    summary = hist.summary()
    assert set(summary) == {"count", "min", "max", "mean", "stdev", "p50", "p90", "p99", "p99_9", "p99_99"}
    assert summary["count"] == data.size
    assert summary["min"] <= summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["p99_9"]
    assert summary["p99_9"] <= summary["p99_99"] <= summary["max"]
    assert summary["p99"] == hist.percentile(99.0)
    assert summary["p99_99"] == hist.percentile(99.99)
    assert summary["mean"] == hist.mean


def test_record_one_at_a_time_equals_record_many() -> None:
    data = lognormal_ns(5_000, seed=4)
    one, many = LatencyHistogram(), LatencyHistogram()
    for value in data.tolist():
        one.record(value)
    many.record_many(data)
    assert one.summary() == many.summary()


def test_record_many_accepts_other_integer_inputs() -> None:
    hist = LatencyHistogram()
    hist.record_many([5, 6, 7])  # a list is converted
    hist.record_many(np.array([8, 9], dtype=np.int32))  # another dtype is converted
    hist.record_many(np.arange(20, dtype=np.int64)[::2])  # a strided view is copied to contiguous
    hist.record_many(np.array([], dtype=np.int64))
    hist.record(np.int64(10))  # type: ignore[arg-type]  # numpy scalars work on the hot path too
    assert hist.count == 3 + 2 + 10 + 1


def test_percentiles_in_any_order_match_single_calls() -> None:
    hist = LatencyHistogram()
    hist.record_many(lognormal_ns(10_000, seed=5))
    pcts = [99.0, 50.0, 99.99, 0.0, 90.0]
    assert hist.percentiles(pcts) == [hist.percentile(p) for p in pcts]
    assert hist.percentiles([]) == []


def test_merge_equals_recording_both() -> None:
    fast, slow = lognormal_ns(30_000, seed=6, median_ns=5_000), lognormal_ns(30_000, seed=7, sigma=1.5)
    a, b, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    a.record_many(fast)
    b.record_many(slow)
    both.record_many(np.concatenate([fast, slow]))
    a.merge(b)
    assert a.summary() == both.summary()
    assert b.count == slow.size  # the source is left as it was


def test_merge_rejects_a_different_configuration() -> None:
    hist = LatencyHistogram()
    hist.record(100)
    for other in (
        LatencyHistogram(significant_figures=2),
        LatencyHistogram(lowest_ns=10),
        LatencyHistogram(highest_ns=1_000_000),
    ):
        with pytest.raises(InvalidArgument):
            hist.merge(other)
    assert hist.count == 1


def test_reset_forgets_values_but_keeps_configuration() -> None:
    hist = LatencyHistogram(highest_ns=1_000_000)
    hist.record_many(lognormal_ns(1_000, seed=8))
    hist.record(10**9)
    hist.reset()
    assert hist.summary() == dict.fromkeys(hist.summary(), 0)
    assert hist.overflow_count == 0
    hist.record(1234)
    assert (hist.min, hist.max, hist.percentile(50.0)) == (1234, 1234, 1234)


def test_values_above_highest_are_clamped_and_counted() -> None:
    hist = LatencyHistogram(highest_ns=1_000_000)
    hist.record(500)
    hist.record(5_000_000)
    hist.record_many(np.array([2**62, 700], dtype=np.int64))
    hist.record_n(10**12, 3)
    assert hist.count == 7
    assert hist.overflow_count == 5
    assert hist.max == 1_000_000
    assert hist.percentile(100.0) == 1_000_000
    assert hist.percentile(10.0) == 500


def test_negative_values_are_rejected_and_record_nothing() -> None:
    hist = LatencyHistogram()
    with pytest.raises(OutOfRange):
        hist.record(-1)
    with pytest.raises(OutOfRange):
        hist.record_many(np.array([10, -5, 20], dtype=np.int64))
    with pytest.raises(OutOfRange):
        hist.record_n(-1, 2)
    with pytest.raises(InvalidArgument):
        hist.record_n(10, -2)
    assert hist.count == 0
    with pytest.raises(OverflowError):
        hist.record(2**63)  # not an int64 at all: cffi refuses it before C sees it
    with pytest.raises(TypeError):
        hist.record(1.5)  # type: ignore[arg-type]


def test_zero_and_values_below_the_resolution_are_recorded() -> None:
    hist = LatencyHistogram(lowest_ns=1000)
    hist.record(0)
    hist.record(999)
    assert hist.count == 2
    assert hist.min == 0
    assert hist.max == 999
    assert hist.percentile(50.0) <= 1000


@pytest.mark.parametrize(
    ("lowest_ns", "highest_ns", "significant_figures"),
    [(0, 1000, 3), (-1, 1000, 3), (100, 150, 3), (1, 1000, 0), (1, 1000, 6), (1, 2**62, 3)],
)
def test_bad_configuration_is_rejected(lowest_ns: int, highest_ns: int, significant_figures: int) -> None:
    with pytest.raises(InvalidArgument):
        LatencyHistogram(lowest_ns, highest_ns, significant_figures)


def test_percentile_outside_0_to_100_is_rejected() -> None:
    hist = LatencyHistogram()
    for bad in (-0.1, 100.5, float("nan")):
        with pytest.raises(ValueError):
            hist.percentile(bad)
        with pytest.raises(ValueError):
            hist.percentiles([50.0, bad])


def test_empty_histogram_reports_zeros() -> None:
    hist = LatencyHistogram()
    assert hist.percentile(99.0) == 0
    assert hist.summary()["count"] == 0
    assert hist.mean == 0.0


def test_close_is_idempotent_and_blocks_further_use() -> None:
    with LatencyHistogram() as hist:
        held_record = hist.record
        hist.record(5)
    hist.close()
    with pytest.raises(ValueError):
        hist.record(5)
    with pytest.raises(ValueError):
        hist.summary()
    held_record(6)  # still safe: the C histogram lives as long as this reference
    del held_record
    gc.collect()
    assert "closed" in repr(hist)
