"""Volume-weighted average price over numpy arrays, computed by the C core in one pass.

The arrays are handed to C zero-copy (``ffi.from_buffer``), never converted or
copied behind the caller's back. So both must be one-dimensional, C-contiguous
and of the same dtype, float64 or float32; anything else raises (``TypeError``
for a wrong type or dtype, ``ValueError`` for a wrong shape, length or layout).
Call ``np.ascontiguousarray(x, dtype=np.float64)`` first if a copy is fine.

The kernel (AVX2 + FMA, or portable scalar) is chosen once per process by the C
side; ``HFT_NATIVE_FORCE_SCALAR=1`` in the environment before the first call
forces scalar. ``vwap_scalar`` and ``vwap_avx2`` bypass that choice.

``vwap(..., threads=N)`` splits a large array across up to N threads that live
only for the call (see ``native/include/hft_vwap.h``). The default, 1, never
starts a thread: a trading service should not get hidden threads unasked.
Threading only pays on arrays larger than the caches (several MB), so the C side
uses fewer threads, or none, below that; ``threads_used`` says how many.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import numpy.typing as npt

from hftgate.native import check, ffi, lib

FloatArray = npt.NDArray[np.float64] | npt.NDArray[np.float32]

MAX_THREADS: int = lib.HFT_VWAP_MAX_THREADS

# Per dtype: the C element type for ffi.from_buffer, and the C function behind each public name.
_KERNELS: dict[np.dtype[Any], tuple[str, dict[str, Any]]] = {
    np.dtype(np.float64): (
        "double[]",
        {
            "vwap": lib.hft_vwap_f64,
            "vwap_scalar": lib.hft_vwap_f64_scalar,
            "vwap_avx2": lib.hft_vwap_f64_avx2,
            "vwap_parallel": lib.hft_vwap_f64_parallel,
        },
    ),
    np.dtype(np.float32): (
        "float[]",
        {
            "vwap": lib.hft_vwap_f32,
            "vwap_scalar": lib.hft_vwap_f32_scalar,
            "vwap_avx2": lib.hft_vwap_f32_avx2,
            "vwap_parallel": lib.hft_vwap_f32_parallel,
        },
    ),
}


def _checked_pair(name: str, prices: FloatArray, volumes: FloatArray) -> tuple[str, dict[str, Any]]:
    for label, array in (("prices", prices), ("volumes", volumes)):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name}: {label} must be a numpy array, got {type(array).__name__}")
        if array.dtype not in _KERNELS:
            raise TypeError(f"{name}: {label} must have dtype float64 or float32, got {array.dtype}")
        if array.ndim != 1:
            raise ValueError(f"{name}: {label} must be one-dimensional, got shape {array.shape}")
        if not array.flags.c_contiguous:
            raise ValueError(
                f"{name}: {label} is not contiguous (strides {array.strides}); "
                "pass np.ascontiguousarray(...) to copy it explicitly"
            )
    if prices.dtype != volumes.dtype:
        raise TypeError(f"{name}: prices are {prices.dtype} but volumes are {volumes.dtype}")
    if len(prices) != len(volumes):
        raise ValueError(f"{name}: {len(prices)} prices but {len(volumes)} volumes")
    return _KERNELS[prices.dtype]


def _call(name: str, prices: FloatArray, volumes: FloatArray) -> float:
    ctype, functions = _checked_pair(name, prices, volumes)
    out = ffi.new("double *")
    rc = functions[name](ffi.from_buffer(ctype, prices), ffi.from_buffer(ctype, volumes), len(prices), out)
    if rc < 0:  # the message is built only on failure: formatting a dtype costs microseconds
        check(rc, f"{name}(n={len(prices)}, dtype={prices.dtype})")
    return float(out[0])


def _call_parallel(prices: FloatArray, volumes: FloatArray, threads: int) -> float:
    ctype, functions = _checked_pair("vwap", prices, volumes)
    out = ffi.new("double *")
    # cffi releases the GIL for the call, so other Python threads run meanwhile.
    rc = functions["vwap_parallel"](
        ffi.from_buffer(ctype, prices), ffi.from_buffer(ctype, volumes), len(prices), threads, out
    )
    if rc < 0:
        check(rc, f"vwap(n={len(prices)}, dtype={prices.dtype}, threads={threads})")
    return float(out[0])


def resolve_threads(threads: int) -> int:
    """The thread count ``vwap`` asks the C side for: ``threads``, or ``os.cpu_count()`` for 0.

    Raises ``TypeError`` for a non-int (a bool included), ``ValueError`` outside ``0..MAX_THREADS``.
    """
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"vwap: threads must be an int, got {type(threads).__name__}")
    if not 0 <= threads <= MAX_THREADS:
        raise ValueError(f"vwap: threads must be 0 (one per CPU) .. {MAX_THREADS}, got {threads}")
    if threads == 0:
        return min(os.cpu_count() or 1, MAX_THREADS)
    return threads


def vwap(prices: FloatArray, volumes: FloatArray, threads: int = 1) -> float:
    """``sum(prices * volumes) / sum(volumes)`` with the process's kernel.

    ``threads=1`` (the default) runs on the calling thread only. ``threads=N`` splits the
    arrays across up to N threads started and joined within the call (fewer, down to none,
    for arrays too small to gain; see ``threads_used``); ``threads=0`` means one per CPU
    (``os.cpu_count()``). For given arrays and thread count the result is the same on every
    call; it may differ from the single-threaded one in the last bits (another summation
    order), never when the array is too small to be split.

    Raises ``InvalidArgument`` (a ``ValueError``) for empty arrays or a total volume of 0,
    ``ValueError`` for a thread count outside ``0..MAX_THREADS``.
    """
    if type(threads) is int and threads == 1:  # the default path: not one extra call
        return _call("vwap", prices, volumes)
    return _call_parallel(prices, volumes, resolve_threads(threads))


def threads_used(n: int, dtype: npt.DTypeLike = np.float64, threads: int = 0) -> int:
    """How many threads ``vwap(..., threads=threads)`` uses for ``n`` elements of ``dtype``.

    The default ``threads=0`` asks what "one per CPU" gives; 1 means no thread is started.
    """
    element_type = np.dtype(dtype)
    if element_type not in _KERNELS:
        raise TypeError(f"threads_used: dtype must be float64 or float32, got {element_type}")
    if n < 0:
        raise ValueError(f"threads_used: n must be >= 0, got {n}")
    return int(lib.hft_vwap_parallel_threads_used(n, element_type.itemsize, resolve_threads(threads)))


def vwap_scalar(prices: FloatArray, volumes: FloatArray) -> float:
    """``vwap`` forced through the portable scalar kernel."""
    return _call("vwap_scalar", prices, volumes)


def vwap_avx2(prices: FloatArray, volumes: FloatArray) -> float:
    """``vwap`` forced through the AVX2 + FMA kernel.

    Raises ``NativeError`` (code ``HFT_VWAP_ENOTSUP``) when ``avx2_supported()`` is false.
    """
    return _call("vwap_avx2", prices, volumes)


def avx2_supported() -> bool:
    """Whether this CPU can run the AVX2 + FMA kernel (ignores the force-scalar switch)."""
    return bool(lib.hft_vwap_avx2_supported())


def active_kernel() -> str:
    """The kernel ``vwap`` uses in this process: ``"avx2"`` or ``"scalar"``."""
    name: bytes = ffi.string(lib.hft_vwap_kernel_name())
    return name.decode()
