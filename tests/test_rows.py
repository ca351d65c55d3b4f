"""hftgate.rows: whole-row operations on the order path's structured arrays give what numpy's own
give (same dtype, same bytes, fresh arrays), on random rows of every dtype they are used on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hftgate import rows
from hftgate.matching.engine import COMMAND_DTYPE, EVENT_DTYPE
from services.execution.records import META_DTYPE
from services.execution.risk import NEW_ORDER_DTYPE
from services.execution.state import FILL_DTYPE, ORDER_DTYPE, REPORT_DTYPE

DTYPES = [REPORT_DTYPE, COMMAND_DTYPE, META_DTYPE, NEW_ORDER_DTYPE, FILL_DTYPE, EVENT_DTYPE, ORDER_DTYPE]


def random_rows(seed: int, count: int, dtype: np.dtype) -> np.ndarray:
    data = np.random.default_rng(seed).integers(0, 256, count * dtype.itemsize, dtype=np.uint8)
    return np.frombuffer(data.tobytes(), dtype).copy()


def same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype
    assert got.shape == want.shape
    assert got.tobytes() == want.tobytes()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(0, 40), dtype=st.sampled_from(DTYPES))
def test_take_select_concat_and_copy_are_numpys(seed: int, count: int, dtype: np.dtype) -> None:
    array = random_rows(seed, count, dtype)
    rng = np.random.default_rng(seed + 1)
    index = rng.integers(0, max(count, 1), rng.integers(0, 30)) if count else np.zeros(0, np.int64)
    mask = rng.random(count) < 0.5
    same(rows.take(array, index), array[index])
    same(rows.select(array, mask), array[mask])
    same(rows.concat([array, array[::-1], array[:3]]), np.concatenate([array, array[::-1], array[:3]]))
    same(rows.copy(array), array.copy())
    same(rows.empty_like(array), array[:0].copy())
    if count:
        targets = rng.permutation(count)[: len(index)] if len(index) <= count else np.arange(count)
        sources = index[: len(targets)]
        want, got = array.copy(), rows.copy(array)
        want[targets] = want[sources]
        rows.move(got, targets, sources)
        same(got, want)
        rows.move(got, 0, count - 1)  # one row
        want[0] = want[count - 1]
        same(got, want)
        # From another array: by positions and by slices.
        other = random_rows(seed + 2, count, dtype)
        want[targets] = other[sources]
        rows.put(got, targets, other, sources)
        same(got, want)
        want[count // 2 :] = other[: count - count // 2]
        rows.put(got, slice(count // 2, None), other, slice(0, count - count // 2))
        same(got, want)
    # Every result is an array of its own: writing to it leaves the source as it was.
    before = array.tobytes()
    for result in (rows.take(array, index), rows.select(array, mask), rows.copy(array), rows.concat([array])):
        if len(result):
            result.view(np.uint8)[:] = 0
    assert array.tobytes() == before


def test_a_strided_source_and_refusals() -> None:
    array = random_rows(7, 20, REPORT_DTYPE)
    same(rows.take(array[::2], np.array([0, 3, 9])), array[::2][[0, 3, 9]])
    with pytest.raises(TypeError):
        rows.concat([array, random_rows(1, 2, FILL_DTYPE)])
    with pytest.raises(TypeError):
        rows.put(array, np.array([0]), random_rows(1, 2, FILL_DTYPE), np.array([0]))
    with pytest.raises(TypeError):
        rows.take(np.zeros(2, [("a", object)]), np.array([0]))
