"""Volume-weighted average price over numpy arrays, computed by the C core in one pass.

The arrays are handed to C zero-copy (``ffi.from_buffer``), never converted or
copied behind the caller's back. So both must be one-dimensional, C-contiguous
and of the same dtype, float64 or float32; anything else raises (``TypeError``
for a wrong type or dtype, ``ValueError`` for a wrong shape, length or layout).
Call ``np.ascontiguousarray(x, dtype=np.float64)`` first if a copy is fine.

The kernel (AVX2 + FMA, or portable scalar) is chosen once per process by the C
side; ``HFT_NATIVE_FORCE_SCALAR=1`` in the environment before the first call
forces scalar. ``vwap_scalar`` and ``vwap_avx2`` bypass that choice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from hftgate.native import check, ffi, lib

FloatArray = npt.NDArray[np.float64] | npt.NDArray[np.float32]

# Per dtype: the C element type for ffi.from_buffer, and the C function behind each public name.
_KERNELS: dict[np.dtype[Any], tuple[str, dict[str, Any]]] = {
    np.dtype(np.float64): (
        "double[]",
        {
            "vwap": lib.hft_vwap_f64,
            "vwap_scalar": lib.hft_vwap_f64_scalar,
            "vwap_avx2": lib.hft_vwap_f64_avx2,
        },
    ),
    np.dtype(np.float32): (
        "float[]",
        {
            "vwap": lib.hft_vwap_f32,
            "vwap_scalar": lib.hft_vwap_f32_scalar,
            "vwap_avx2": lib.hft_vwap_f32_avx2,
        },
    ),
}


def _call(name: str, prices: FloatArray, volumes: FloatArray) -> float:
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
    ctype, functions = _KERNELS[prices.dtype]
    function = functions[name]
    out = ffi.new("double *")
    rc = function(ffi.from_buffer(ctype, prices), ffi.from_buffer(ctype, volumes), len(prices), out)
    if rc < 0:  # the message is built only on failure: formatting a dtype costs microseconds
        check(rc, f"{name}(n={len(prices)}, dtype={prices.dtype})")
    return float(out[0])


def vwap(prices: FloatArray, volumes: FloatArray) -> float:
    """``sum(prices * volumes) / sum(volumes)`` with the process's kernel.

    Raises ``InvalidArgument`` (a ``ValueError``) for empty arrays or a total volume of 0.
    """
    return _call("vwap", prices, volumes)


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
