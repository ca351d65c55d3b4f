"""hftgate.native.vwap against numpy: both kernels, the threaded variant, every layout rule and error."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from hftgate.native import lib
from hftgate.native.errors import InvalidArgument, NativeError
from hftgate.native.vwap import (
    MAX_THREADS,
    active_kernel,
    avx2_supported,
    resolve_threads,
    threads_used,
    vwap,
    vwap_avx2,
    vwap_scalar,
)

KERNELS = [
    vwap,
    vwap_scalar,
    pytest.param(vwap_avx2, marks=pytest.mark.skipif(not avx2_supported(), reason="CPU lacks AVX2+FMA")),
]


def numpy_vwap(prices: np.ndarray, volumes: np.ndarray) -> float:
    p, v = prices.astype(np.float64), volumes.astype(np.float64)
    return float(np.dot(p, v) / v.sum())


def random_market(n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(99.0, 101.0, n), rng.integers(1, 1000, n).astype(np.float64)


@pytest.mark.parametrize("kernel", KERNELS)
def test_matches_numpy_for_every_short_length(kernel) -> None:
    prices, volumes = random_market(70)
    for n in range(1, 71):
        assert kernel(prices[:n], volumes[:n]) == pytest.approx(numpy_vwap(prices[:n], volumes[:n]), rel=1e-9)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("n", [1_000, 65_537, 1_000_003])
def test_matches_numpy_on_large_arrays(kernel, n: int) -> None:
    prices, volumes = random_market(n, seed=n)
    assert kernel(prices, volumes) == pytest.approx(numpy_vwap(prices, volumes), rel=1e-9)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_unaligned_slices(kernel, offset: int) -> None:
    # Four consecutive 8-byte offsets put the start at every residue modulo the 32-byte AVX
    # register width, whatever the alignment of the buffer numpy allocated.
    prices, volumes = random_market(200)
    p, v = prices[offset : offset + 131], volumes[offset + 1 : offset + 132]
    assert kernel(p, v) == pytest.approx(numpy_vwap(p, v), rel=1e-9)


def test_unaligned_by_bytes_not_just_elements() -> None:
    raw = np.zeros(8 * 100 + 4, dtype=np.uint8)
    prices = raw[4:].view(np.float64)  # start 4 bytes off double alignment
    prices[:] = np.linspace(10.0, 20.0, 100)
    volumes = np.arange(1.0, 101.0)
    for kernel in (vwap, vwap_scalar):
        assert kernel(prices, volumes) == pytest.approx(numpy_vwap(prices, volumes), rel=1e-9)


@pytest.mark.parametrize("kernel", KERNELS)
def test_float32_accumulates_in_double(kernel) -> None:
    prices, volumes = random_market(100_003)
    p32, v32 = prices.astype(np.float32), volumes.astype(np.float32)
    assert kernel(p32, v32) == pytest.approx(numpy_vwap(p32, v32), rel=1e-9)


def test_known_value_and_read_only_input() -> None:
    prices, volumes = np.array([1.0, 2.0, 3.0]), np.array([1.0, 1.0, 2.0])
    prices.flags.writeable = False
    assert vwap(prices, volumes) == 2.25


def test_kernels_agree() -> None:
    prices, volumes = random_market(10_001)
    assert vwap_scalar(prices, volumes) == pytest.approx(vwap(prices, volumes), rel=1e-12)


def test_active_kernel_matches_cpu() -> None:
    if os.environ.get("HFT_NATIVE_FORCE_SCALAR") == "1" or not avx2_supported():
        assert active_kernel() == "scalar"
    else:
        assert active_kernel() == "avx2"


@pytest.mark.parametrize("forced, expected", [("1", "scalar"), ("0", None)])
def test_force_scalar_switch(forced: str, expected: str | None) -> None:
    code = (
        "import numpy as np\n"
        "from hftgate.native.vwap import active_kernel, vwap\n"
        "assert vwap(np.array([1.0, 3.0]), np.array([1.0, 1.0])) == 2.0\n"
        "print(active_kernel())\n"
    )
    env = dict(os.environ, HFT_NATIVE_FORCE_SCALAR=forced)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    if expected is None:
        expected = "avx2" if avx2_supported() else "scalar"
    assert result.stdout.strip() == expected


@pytest.mark.parametrize("kernel", KERNELS)
def test_errors_from_c(kernel) -> None:
    empty = np.array([], dtype=np.float64)
    with pytest.raises(InvalidArgument):
        kernel(empty, empty)
    with pytest.raises(ValueError):  # InvalidArgument is a ValueError
        kernel(np.array([100.0, 101.0]), np.zeros(2))


@pytest.mark.parametrize(
    "prices, volumes, error, fragment",
    [
        ([1.0, 2.0], np.ones(2), TypeError, "prices must be a numpy array"),
        (np.ones(2, dtype=np.int64), np.ones(2), TypeError, "dtype float64 or float32"),
        (np.ones(2), np.ones(2, dtype=np.float32), TypeError, "prices are float64 but volumes are float32"),
        (np.ones((2, 2)), np.ones((2, 2)), ValueError, "one-dimensional"),
        (np.ones(4)[::2], np.ones(2), ValueError, "not contiguous"),
        (np.ones(3), np.ones(2), ValueError, "3 prices but 2 volumes"),
    ],
)
def test_rejects_what_it_cannot_pass_zero_copy(prices, volumes, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        vwap(prices, volumes)


@pytest.mark.skipif(avx2_supported(), reason="only meaningful on a CPU without AVX2")
def test_avx2_kernel_refuses_without_avx2() -> None:
    with pytest.raises(NativeError):
        vwap_avx2(np.ones(4), np.ones(4))


# ---- threads ---------------------------------------------------------------------------------

# Elements of each dtype in the smallest chunk one thread is given.
CHUNK64 = lib.HFT_VWAP_PARALLEL_MIN_CHUNK_BYTES // 16
CHUNK32 = lib.HFT_VWAP_PARALLEL_MIN_CHUNK_BYTES // 8
THREAD_COUNTS = [0, 2, 3, 4, 7, MAX_THREADS]


@pytest.fixture(scope="module")
def big_market() -> tuple[np.ndarray, np.ndarray]:
    return random_market(4 * CHUNK64 + 50, seed=99)


# Tiny, around the first split (2 chunks), 3 chunks with a scalar tail, the benchmark's size, 4 chunks.
THREADED_LENGTHS = [1, 2, 17, 1_000, 2 * CHUNK64 - 1, 2 * CHUNK64, 2 * CHUNK64 + 1, 3 * CHUNK64 + 7]


@pytest.mark.parametrize("threads", THREAD_COUNTS)
@pytest.mark.parametrize("n", [*THREADED_LENGTHS, 1_000_003, 4 * CHUNK64 + 50])
def test_threaded_matches_numpy(big_market, n: int, threads: int) -> None:
    prices, volumes = big_market[0][:n], big_market[1][:n]
    assert vwap(prices, volumes, threads=threads) == pytest.approx(numpy_vwap(prices, volumes), rel=1e-9)


@pytest.mark.parametrize("threads", [0, 2, 3])
@pytest.mark.parametrize("n", [1, 1_000, 2 * CHUNK32 - 1, 2 * CHUNK32 + 3])
def test_threaded_float32_matches_numpy(n: int, threads: int) -> None:
    prices, volumes = random_market(n, seed=n)
    p32, v32 = prices.astype(np.float32), volumes.astype(np.float32)
    assert vwap(p32, v32, threads=threads) == pytest.approx(numpy_vwap(p32, v32), rel=1e-9)


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_threaded_unaligned_slices(big_market, offset: int) -> None:
    prices = big_market[0][offset : offset + 2 * CHUNK64 + 5]
    volumes = big_market[1][offset : offset + 2 * CHUNK64 + 5]
    assert vwap(prices, volumes, threads=2) == pytest.approx(numpy_vwap(prices, volumes), rel=1e-9)


@pytest.mark.parametrize("threads", [2, 3, 4])
def test_threaded_result_is_the_same_on_every_call(big_market, threads: int) -> None:
    prices, volumes = big_market
    first = vwap(prices, volumes, threads=threads)
    assert all(vwap(prices, volumes, threads=threads) == first for _ in range(20))


def test_threaded_result_is_the_same_from_concurrent_callers(big_market) -> None:
    prices, volumes = big_market
    expected = vwap(prices, volumes, threads=3)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda _: vwap(prices, volumes, threads=3), range(16)))
    assert results == [expected] * 16


@pytest.mark.parametrize("n", [1, 2, 1_000, 2 * CHUNK64 - 1])
def test_arrays_too_small_to_split_give_the_single_thread_bits(big_market, n: int) -> None:
    prices, volumes = big_market[0][:n], big_market[1][:n]
    assert threads_used(n, np.float64, threads=MAX_THREADS) == 1
    assert vwap(prices, volumes, threads=MAX_THREADS) == vwap(prices, volumes)


def test_one_thread_is_the_default(big_market) -> None:
    prices, volumes = big_market
    assert vwap(prices, volumes, threads=1) == vwap(prices, volumes)


def test_threads_used() -> None:
    assert threads_used(1) == 1
    assert threads_used(2 * CHUNK64 - 1, threads=8) == 1
    assert threads_used(2 * CHUNK64, threads=8) == 2
    assert threads_used(2 * CHUNK64, np.float32, threads=8) == 1
    assert threads_used(2 * CHUNK32, np.float32, threads=8) == 2
    assert threads_used(10 * CHUNK64, threads=3) == 3
    assert threads_used(10**12, threads=0) == resolve_threads(0)
    with pytest.raises(TypeError, match="float64 or float32"):
        threads_used(10, np.int32)
    with pytest.raises(ValueError, match="n must be >= 0"):
        threads_used(-1)


def test_zero_threads_means_one_per_cpu() -> None:
    assert resolve_threads(0) == min(os.cpu_count() or 1, MAX_THREADS)
    assert resolve_threads(5) == 5


@pytest.mark.parametrize(
    "threads, error, fragment",
    [
        (-1, ValueError, "threads must be 0"),
        (MAX_THREADS + 1, ValueError, "threads must be 0"),
        (2.0, TypeError, "threads must be an int"),
        (True, TypeError, "threads must be an int"),
    ],
)
def test_rejects_bad_thread_counts(threads: object, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        vwap(np.ones(4), np.ones(4), threads=threads)  # type: ignore[arg-type]


def test_threaded_errors_from_c(big_market) -> None:
    empty = np.array([], dtype=np.float64)
    with pytest.raises(InvalidArgument):
        vwap(empty, empty, threads=2)
    prices = big_market[0][: 2 * CHUNK64]
    with pytest.raises(InvalidArgument, match="threads=2"):
        vwap(prices, np.zeros_like(prices), threads=2)  # split in two chunks, both of zero volume


def test_threaded_checks_layout_like_the_default() -> None:
    with pytest.raises(ValueError, match="not contiguous"):
        vwap(np.ones(8)[::2], np.ones(4), threads=2)
    with pytest.raises(TypeError, match="prices are float64 but volumes are float32"):
        vwap(np.ones(2), np.ones(2, dtype=np.float32), threads=2)
