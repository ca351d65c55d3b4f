"""hftgate.native.order_wire's column reader: a SubmitOrderColumnsRequest read from its wire bytes
in C gives the Inputs protobuf's reading and codec.decode_order_columns give, and whatever the
fast path does not take (a column that does not fit the others included) it hands back (None)
for protobuf and the service's checks to refuse with their message. Checked against protobuf
itself on random extreme batches, on hand-made encodings and on random corruptions."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hftgate.native.client_ids import joined
from hftgate.native.order_wire import SYMBOLS_MAX, NewOrderWireDecoder
from hftgate.v1 import execution_pb2 as api
from services.execution import codec
from tests.native.test_order_wire import ANY_TEXT, FAST_TEXT, INT32, INT64
from tests.protowire import LEN, VARINT, corrupted, key, length_delimited, varint

#: OrderColumns' numeric columns and their values.
NUMERIC = (
    ("side", INT32),
    ("order_type", INT32),
    ("time_in_force", INT32),
    ("price_ticks", INT64),
    ("stop_price_ticks", INT64),
    ("quantity_lots", INT64),
    ("display_quantity_lots", INT64),
    ("post_only", st.booleans()),
    ("self_trade_prevention", INT32),
    ("protection_price_ticks", INT64),
    ("priority", INT32),
)


@st.composite
def order_columns(draw: st.DrawFn, text: st.SearchStrategy[str] = FAST_TEXT) -> api.OrderColumns:
    count = draw(st.integers(1, 30))
    symbols = draw(st.lists(st.sampled_from(["BTCUSDT", "ETHUSDT", "", "SOLUSDT"]), min_size=1, max_size=4))
    columns = api.OrderColumns(
        symbols=symbols,
        symbol_index=draw(st.lists(st.integers(0, len(symbols) - 1), min_size=count, max_size=count)),
        client_order_id=draw(st.lists(text, min_size=count, max_size=count)),
    )
    for name, values in NUMERIC:
        if draw(st.booleans()):  # (a column left out: 0 for every order)
            getattr(columns, name).extend(draw(st.lists(values, min_size=count, max_size=count)))
    return columns


def _request(columns: api.OrderColumns) -> bytes:
    return api.SubmitOrderColumnsRequest(orders=columns).SerializeToString()


def _same_inputs(got: codec.Inputs | None, want: codec.Inputs) -> None:
    assert got is not None
    assert got.orders.dtype == want.orders.dtype
    assert got.orders.tolist() == want.orders.tolist()
    assert (got.symbols, got.client_ids) == (want.symbols, want.client_ids)
    assert got.client_text is not None and got.client_text[0] == joined(want.client_ids)[0]
    assert got.client_text[1].tolist() == joined(want.client_ids)[1].tolist()
    assert got.kind.tolist() == want.kind.tolist() and got.target_ids.tolist() == want.target_ids.tolist()
    assert (got.received_ns, got.arrival_ns, got.preset_reasons) == (want.received_ns, want.arrival_ns, None)


@settings(max_examples=300, deadline=None)
@given(columns=order_columns())
def test_ordinary_batches_read_as_protobuf_and_the_codec_read_them(columns: api.OrderColumns) -> None:
    decoder = NewOrderWireDecoder(capacity=2)  # (grows)
    got = codec.read_order_columns(_request(columns), decoder, 1000, 1, 2)
    _same_inputs(got, codec.decode_order_columns(columns, 1, 2))


@settings(max_examples=150, deadline=None)
@given(columns=order_columns(ANY_TEXT))
def test_texts_it_does_not_take_are_handed_back_and_the_others_read(columns: api.OrderColumns) -> None:
    got = codec.read_order_columns(_request(columns), NewOrderWireDecoder(), 1000, 1, 2)
    fast = all(
        len(text) <= 64 and all(0x20 <= ord(c) <= 0x7E for c in text)
        for text in [*columns.client_order_id, *columns.symbols]
    )
    if not fast:
        assert got is None
    else:
        _same_inputs(got, codec.decode_order_columns(columns, 1, 2))


def _packed(field: int, values: list[int]) -> bytes:
    return length_delimited(field, b"".join(varint(v) for v in values))


def _strings(field: int, texts: list[bytes]) -> bytes:
    return b"".join(length_delimited(field, t) for t in texts)


def _request_of(*fields: bytes) -> bytes:
    return length_delimited(1, b"".join(fields))


BASE = (_strings(1, [b"BTCUSDT", b"ETHUSDT"]), _packed(2, [0, 1]), _strings(3, [b"a", b"b"]))


def test_encodings_protobuf_never_writes_but_reads_are_read_the_same_way() -> None:
    """The fields in reverse order, ids between symbols, an int32 column written as 64-bit
    varints with high bits set (protobuf keeps the low 32), bools above 1, an empty packed field
    (no entries: 0 for every order)."""
    data = _request_of(
        _packed(14, [-7, (1 << 40) | 3]),
        _packed(11, [300, 0]),
        _packed(9, [2**63 - 1, -(2**63)]),
        length_delimited(8, b""),
        _strings(3, [b"a"]),
        _strings(1, [b"BTCUSDT"]),
        _strings(3, [b"b"]),
        _packed(2, [1, 0]),
        _strings(1, [b"ETHUSDT"]),
    )
    parsed = api.SubmitOrderColumnsRequest.FromString(data)
    got = codec.read_order_columns(data, NewOrderWireDecoder(), 10, 1, 2)
    _same_inputs(got, codec.decode_order_columns(parsed.orders, 1, 2))
    assert got is not None
    assert got.symbols == ["ETHUSDT", "BTCUSDT"] and got.client_ids == ["a", "b"]
    assert got.orders["priority"].tolist() == [-7, 3]
    assert got.orders["post_only"].tolist() == [1, 0]
    assert got.orders["quantity"].tolist() == [2**63 - 1, -(2**63)]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="no-orders-field"),
        pytest.param(_request_of(_strings(1, [b"BTCUSDT"])), id="no-order"),
        pytest.param(_request_of(*BASE) + _request_of(*BASE), id="orders-twice"),
        pytest.param(_request_of(*BASE) + key(2, VARINT) + b"\x01", id="other-request-field"),
        pytest.param(_request_of(*BASE, key(4, VARINT) + b"\x01"), id="unpacked-column"),
        pytest.param(_request_of(*BASE, _packed(4, [1]), _packed(4, [2])), id="column-twice"),
        pytest.param(_request_of(*BASE, _packed(9, [1])), id="column-short"),
        pytest.param(_request_of(*BASE, _packed(9, [1, 2, 3])), id="column-long"),
        pytest.param(_request_of(*BASE[::2]), id="no-symbol-index"),
        pytest.param(_request_of(BASE[0], _packed(2, [0]), BASE[2]), id="symbol-index-short"),
        pytest.param(_request_of(BASE[0], _packed(2, [0, 2]), BASE[2]), id="symbol-index-past-symbols"),
        pytest.param(_request_of(_packed(2, [0, 0]), BASE[2]), id="no-symbols"),
        pytest.param(_request_of(*BASE, _packed(15, [1, 1])), id="unknown-field"),
        pytest.param(_request_of(*BASE, key(16, LEN) + b"\x00"), id="field-past-15"),
        pytest.param(_request_of(*BASE, key(9, LEN) + b"\x02\x81\x00"), id="overlong-varint"),
        pytest.param(
            _request_of(*BASE, key(9, LEN) + b"\x0c" + b"\xff" * 10 + b"\x01\x01"), id="varint-over-ten"
        ),
        pytest.param(_request_of(*BASE, key(9, LEN) + b"\x02\x01"), id="length-past-the-end"),
        pytest.param(_request_of(BASE[0], BASE[1], _strings(3, [b"a", b"b\n"])), id="newline-in-id"),
        pytest.param(_request_of(BASE[0], BASE[1], _strings(3, [b"a", "é".encode()])), id="non-ascii-id"),
        pytest.param(_request_of(_strings(1, [b"S" * 65]), *BASE[1:]), id="symbol-over-64"),
        pytest.param(b"\x0a\x80\x00", id="overlong-request-length"),
    ],
)
def test_what_the_fast_path_does_not_take_is_handed_back(data: bytes) -> None:
    assert NewOrderWireDecoder().decode_columns(data, 10) is None


def test_more_orders_than_allowed_or_too_many_symbols_are_handed_back() -> None:
    decoder = NewOrderWireDecoder(capacity=2)
    names = [f"S{i}" for i in range(SYMBOLS_MAX + 1)]
    columns = api.OrderColumns(symbols=names, symbol_index=[0, 1, 2], client_order_id=["a", "b", "c"])
    assert decoder.decode_columns(_request(columns), 1000) is None  # one symbol too many
    del columns.symbols[SYMBOLS_MAX:]
    decoded = decoder.decode_columns(_request(columns), 1000)
    assert decoded is not None and decoded.symbols == ["S0", "S1", "S2"]
    assert decoder.decode_columns(_request(columns), 2) is None  # over the caller's bound
    assert decoder.decode_columns(_request(columns), 3) is not None


def test_a_batch_whose_columns_do_not_fit_is_still_refused_with_what_is_wrong() -> None:
    """What the fast path hands back, protobuf reads and the codec refuses naming the column."""
    columns = api.OrderColumns(symbols=["BTCUSDT"], symbol_index=[0, 0], client_order_id=["a", "b"])
    columns.quantity_lots.extend([1, 2, 3])
    assert codec.read_order_columns(_request(columns), NewOrderWireDecoder(), 10, 1, 2) is None
    with pytest.raises(codec.BadColumns, match="quantity_lots has 3 entries for 2 orders"):
        codec.decode_order_columns(columns, 1, 2)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    columns=order_columns(),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 2)), max_size=4),
)
def test_corrupted_requests_are_refused_or_read_exactly_as_protobuf_reads_them(
    columns: api.OrderColumns, edits: list[tuple[int, int, int]]
) -> None:
    """Random byte changes, insertions and cuts of real requests: whatever the fast path takes,
    protobuf parses too, into a batch the codec takes, and the same orders."""
    data = corrupted(_request(columns), edits)
    got = codec.read_order_columns(data, NewOrderWireDecoder(), 1000, 1, 2)
    if got is None:
        return
    parsed = api.SubmitOrderColumnsRequest.FromString(data)  # raises if it took what protobuf refuses
    _same_inputs(got, codec.decode_order_columns(parsed.orders, 1, 2))


def test_the_rows_are_the_callers_own() -> None:
    """Two reads with one decoder: the first batch's rows are not overwritten by the second."""
    decoder = NewOrderWireDecoder()
    first = api.OrderColumns(symbols=["X"], symbol_index=[0], client_order_id=["a"], quantity_lots=[5])
    second = api.OrderColumns(symbols=["Y"], symbol_index=[0], client_order_id=["b"], quantity_lots=[9])
    a = decoder.decode_columns(_request(first), 10)
    b = decoder.decode_columns(_request(second), 10)
    assert a is not None and b is not None
    assert (a.rows["quantity"].tolist(), b.rows["quantity"].tolist()) == ([5], [9])
    assert isinstance(a.rows, np.ndarray) and a.symbols == ["X"] and b.symbols == ["Y"]
