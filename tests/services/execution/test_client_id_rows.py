"""The order table keeps each row's client order id as fixed-width bytes (state.CLIENT_ID_DTYPE,
hftgate.native.client_ids.ROW_DTYPE): ids put into rows and read back give the ids exactly, empty
rows read as nothing in their place, and an id that does not fit is refused, never cut short."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hftgate.native.client_ids import ROW_DTYPE, ids_from_rows, ids_to_rows, joined
from services.execution.state import CLIENT_ID_DTYPE

IDS = st.lists(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=64), max_size=50
)


@settings(max_examples=200, deadline=None)
@given(ids=IDS, empty=st.lists(st.integers(0, 60), max_size=5))
def test_ids_go_into_rows_and_come_back_exactly(ids: list[str], empty: list[int]) -> None:
    assert CLIENT_ID_DTYPE == ROW_DTYPE
    text, lengths = joined(ids)
    rows = ids_to_rows(text, lengths)
    assert rows.dtype == ROW_DTYPE and len(rows) == len(ids)
    assert [r.decode("ascii") for r in rows.tolist()] == ids  # (numpy reads a row up to its padding)
    assert rows.view(np.uint8).reshape(-1, 64)[np.arange(64) >= lengths[:, None]].sum() == 0  # zero-padded
    back, back_lengths = ids_from_rows(rows)
    assert back == text and back_lengths.tolist() == lengths.tolist()
    # Empty rows (free table rows) among them read as length 0 and nothing in the text.
    mixed = rows.tolist()
    for at in empty:
        mixed.insert(min(at, len(mixed)), b"")
    text2, lengths2 = ids_from_rows(np.array(mixed, ROW_DTYPE))
    assert text2 == text and lengths2.tolist() == [len(m) for m in mixed]
    # Read from several arrays in turn (the snapshot's ring runs, read in place): the same as joined.
    cuts = sorted(min(at, len(mixed)) for at in empty)
    parts = np.split(np.array(mixed, ROW_DTYPE), cuts)
    text3, lengths3 = ids_from_rows(*parts)
    assert text3 == text and lengths3.tolist() == lengths2.tolist()


def test_an_id_that_does_not_fit_is_refused_not_cut() -> None:
    with pytest.raises(ValueError):
        ids_to_rows(b"x" * 65, np.array([65]))
    with pytest.raises(ValueError):  # lengths that do not add up to the text
        ids_to_rows(b"abc", np.array([2]))
    with pytest.raises(ValueError):
        ids_to_rows(b"abc", np.array([4, -1]))
    assert len(ids_to_rows(b"", np.zeros(0, np.int64))) == 0
    assert ids_from_rows(np.zeros(0, ROW_DTYPE))[0] == b""
    full = ids_to_rows(b"y" * 64, np.array([64]))  # 64 bytes: no padding left, still read whole
    assert ids_from_rows(full)[0] == b"y" * 64 and full.tolist() == [b"y" * 64]
