"""Whole-row operations on structured numpy arrays (the order path's commands, orders, reports), at
the speed of copying bytes.

numpy copies a structured array field by field: taking, masking, concatenating or copying rows of
a 20-field dtype sets up a transfer per field and runs it per row. Measured here on REPORT_DTYPE:
60 rows by a fancy index ~21 us, by a mask ~10 us, two slices concatenated ~37 us, an empty copy
~10 us. The same rows seen as opaque records of the same size (a ``np.void`` dtype) move as bytes:
~1.5-2.5 us for each. These helpers do that and give back arrays of the caller's dtype.

Only for dtypes without Python objects (every dtype on the order path).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["concat", "copy", "empty_like", "move", "put", "select", "take"]


def _records(array: np.ndarray) -> np.ndarray:
    dtype = array.dtype
    if dtype.hasobject:
        raise TypeError(f"{dtype} holds Python objects: its rows are not bytes")
    return array.view(np.dtype((np.void, dtype.itemsize)))


def take(array: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``array[index]`` for an integer index: a new array of the selected rows."""
    return _records(array)[index].view(array.dtype)


def select(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``array[mask]`` for a boolean mask: a new array of the rows where it is true."""
    return _records(array)[mask].view(array.dtype)


def concat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """``np.concatenate(arrays)`` of arrays of one dtype."""
    dtype = arrays[0].dtype
    if any(a.dtype != dtype for a in arrays):
        raise TypeError("concat: the arrays have different dtypes")
    return np.concatenate([_records(a) for a in arrays]).view(dtype)


def copy(array: np.ndarray) -> np.ndarray:
    """``array.copy()``."""
    return _records(array).copy().view(array.dtype)


def empty_like(array: np.ndarray) -> np.ndarray:
    """No rows, of ``array``'s dtype (what ``array[:0].copy()`` gives, without its cost)."""
    return np.empty(0, array.dtype)


def move(array: np.ndarray, targets: np.ndarray | int, sources: np.ndarray | int) -> None:
    """``array[targets] = array[sources]`` in place (rows or one row: integer positions)."""
    records = _records(array)
    records[targets] = records[sources]


Where = np.ndarray | int | slice


def put(target: np.ndarray, targets: Where, source: np.ndarray, sources: Where) -> None:
    """``target[targets] = source[sources]`` between two arrays of one dtype (integer positions or
    slices)."""
    if target.dtype != source.dtype:
        raise TypeError("put: the arrays have different dtypes")
    _records(target)[targets] = _records(source)[sources]
