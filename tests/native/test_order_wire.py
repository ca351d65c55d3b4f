"""hftgate.native.order_wire: new orders read from wire bytes in C are what protobuf reads from
the same bytes, and whatever the fast path does not take, it hands back (None) rather than
guessing. Checked against protobuf itself on random extreme orders, on hand-made encodings
protobuf never writes but accepts, and on random corruptions of real messages."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hftgate.native.client_ids import joined
from hftgate.native.order_wire import ROW_FIELDS, STREAM, SUBMIT_ORDERS, SYMBOLS_MAX, NewOrderWireDecoder
from hftgate.v1 import execution_pb2 as api
from services.execution import codec
from tests.protowire import corrupted, key, length_delimited, varint

INT64 = st.integers(-(2**63), 2**63 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
# Texts the fast path takes (printable ASCII up to 64 bytes) and some it must hand back.
FAST_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=64)
ANY_TEXT = st.one_of(FAST_TEXT, st.text(max_size=70))
# The NewOrder fields as protobuf names them, and their row field.
NUMERIC = (
    ("side", "side", INT32),
    ("order_type", "order_type", INT32),
    ("time_in_force", "tif", INT32),
    ("price_ticks", "price", INT64),
    ("stop_price_ticks", "stop_price", INT64),
    ("quantity_lots", "quantity", INT64),
    ("display_quantity_lots", "display", INT64),
    ("post_only", "post_only", st.booleans()),
    ("self_trade_prevention", "stp", INT32),
    ("protection_price_ticks", "protection", INT64),
    ("priority", "priority", INT32),
)


@st.composite
def new_orders(draw: st.DrawFn, text: st.SearchStrategy[str] = FAST_TEXT) -> api.NewOrder:
    order = api.NewOrder(client_order_id=draw(text), symbol=draw(st.sampled_from(["BTCUSDT", "ETHUSDT", ""])))
    for name, _, values in NUMERIC:
        if draw(st.booleans()):
            setattr(order, name, draw(values))
    return order


def _expected(orders: list[api.NewOrder], stream: bool) -> tuple[np.ndarray, list[str], list[str]]:
    """What the service's protobuf decoders make of the orders (the reference)."""
    if stream:
        inputs = codec.decode_stream_inputs([api.OrderInput(new_order=o) for o in orders], 0, 0)
    else:
        inputs = codec.decode_new_orders(orders, 0, 0)
    return inputs.orders, inputs.client_ids, inputs.symbols


def _same(decoded: object, expected: tuple[np.ndarray, list[str], list[str]], stream: bool) -> None:
    assert decoded is not None
    rows, client_ids, symbols = expected
    got = decoded.rows.copy()  # type: ignore[attr-defined]
    if stream:
        got["priority"] = 0  # (codec.read_stream_message's rule, not the decoder's)
    assert got.tolist() == rows.tolist()
    assert decoded.client_ids == client_ids  # type: ignore[attr-defined]
    assert decoded.symbols == symbols  # type: ignore[attr-defined]
    # The ids as one text and lengths too: what joined() makes of the list (empty ids included).
    text, lengths = joined(client_ids)
    assert decoded.client_text == text  # type: ignore[attr-defined]
    assert decoded.client_lengths.tolist() == lengths.tolist()  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None)
@given(orders=st.lists(new_orders(), max_size=40), stream=st.booleans())
def test_ordinary_orders_decode_as_protobuf_decodes_them(orders: list[api.NewOrder], stream: bool) -> None:
    decoder = NewOrderWireDecoder(capacity=4)  # (grows)
    if stream:
        data = api.OrderStreamRequest(
            inputs=[api.OrderInput(new_order=o) for o in orders]
        ).SerializeToString()
    else:
        data = api.SubmitOrdersRequest(orders=orders).SerializeToString()
    _same(decoder.decode(data, STREAM if stream else SUBMIT_ORDERS, 1000), _expected(orders, stream), stream)


@settings(max_examples=200, deadline=None)
@given(orders=st.lists(new_orders(ANY_TEXT), min_size=1, max_size=10))
def test_texts_it_does_not_take_are_handed_back_and_the_others_decode(orders: list[api.NewOrder]) -> None:
    data = api.SubmitOrdersRequest(orders=orders).SerializeToString()
    decoded = NewOrderWireDecoder().decode(data, SUBMIT_ORDERS, 1000)
    fast = all(
        len(o.client_order_id) <= 64 and all(0x20 <= ord(c) <= 0x7E for c in o.client_order_id)
        for o in orders
    )
    if not fast:
        assert decoded is None
    else:
        _same(decoded, _expected(orders, False), False)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return key(number, wire) + payload


def _orders_message(*bodies: bytes) -> bytes:
    return b"".join(length_delimited(1, body) for body in bodies)


def test_encodings_protobuf_never_writes_but_reads_are_read_the_same_way() -> None:
    """Fields out of order, a field repeated (the last one counts), an int32 written as a
    64-bit varint with high bits set (protobuf keeps the low 32), a bool varint above 1."""
    body = b"".join(
        [
            _field(8, 0, varint(5)),  # quantity before the texts
            length_delimited(2, b"ETHUSDT"),
            length_delimited(1, b"first"),
            length_delimited(1, b"second"),  # the last one counts
            _field(3, 0, varint((1 << 40) | 2)),  # side: the low 32 bits (2)
            _field(13, 0, varint(-7)),  # priority: a ten-byte varint, -7
            _field(11, 0, varint(0xFFFFFFFF)),  # stp: int32 -1
            _field(10, 0, varint(300)),  # post_only: true
            _field(6, 0, varint(-(2**63))),
            _field(6, 0, varint(2**63 - 1)),  # the last price counts
        ]
    )
    data = _orders_message(body, b"")
    parsed = api.SubmitOrdersRequest.FromString(data)
    decoded = NewOrderWireDecoder().decode(data, SUBMIT_ORDERS, 10)
    _same(decoded, _expected(list(parsed.orders), False), False)
    assert decoded is not None
    assert decoded.client_ids == ["second", ""]
    row = decoded.rows[0]
    assert (row["side"], row["priority"], row["stp"], row["post_only"]) == (2, -7, -1, 1)
    assert row["price"] == 2**63 - 1


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_orders_message(_field(14, 0, varint(1))), id="unknown-field"),
        pytest.param(_orders_message(bytes([0x80 | (16 << 3) & 0x7F, 1, 0])), id="field-number-past-15"),
        pytest.param(_orders_message(_field(3, 2, varint(1) + b"x")), id="known-field-wrong-wire-type"),
        pytest.param(_orders_message(_field(1, 0, varint(1))), id="text-field-as-varint"),
        pytest.param(_orders_message(_field(3, 0, b"\x81\x00")), id="overlong-varint"),
        pytest.param(_orders_message(_field(3, 0, b"\xff" * 9 + b"\x02")), id="varint-past-64-bits"),
        pytest.param(_orders_message(_field(3, 0, b"\xff" * 10 + b"\x01")), id="varint-over-ten-bytes"),
        pytest.param(_orders_message(length_delimited(1, b"a\nb")), id="newline-in-id"),
        pytest.param(_orders_message(length_delimited(1, "é".encode())), id="non-ascii-id"),
        pytest.param(_orders_message(length_delimited(2, b"x" * 65)), id="symbol-over-64"),
        pytest.param(_orders_message(b"") + b"\x12\x00", id="other-request-field"),
        pytest.param(b"\x0a\x85\x00" + b"\x00" * 5, id="overlong-length"),
        pytest.param(b"\x0a\x05\x18\x01", id="length-past-the-end"),
        pytest.param(_orders_message(b"\x18"), id="cut-inside-a-field"),
    ],
)
def test_what_the_fast_path_does_not_take_is_handed_back(data: bytes) -> None:
    assert NewOrderWireDecoder().decode(data, SUBMIT_ORDERS, 10) is None


def test_stream_inputs_other_than_one_new_order_are_handed_back() -> None:
    order = api.NewOrder(client_order_id="a", symbol="BTCUSDT", quantity_lots=1)
    cancel = api.OrderInput(cancel=api.CancelOrderRequest(order_id=5))
    decoder = NewOrderWireDecoder()
    for inputs in (
        [api.OrderInput(new_order=order), cancel],
        [api.OrderInput()],  # an input that says nothing
        [api.OrderInput(replace=api.ReplaceOrderRequest(order_id=1, quantity_lots=2))],
    ):
        assert decoder.decode(api.OrderStreamRequest(inputs=inputs).SerializeToString(), STREAM, 10) is None
    # new_order twice in one input: protobuf merges the two; the fast path does not try.
    twice = length_delimited(1, length_delimited(1, b"") + length_delimited(1, b""))
    assert decoder.decode(twice, STREAM, 10) is None
    # Without a cancel the same message is taken.
    only = api.OrderStreamRequest(inputs=[api.OrderInput(new_order=order)] * 3).SerializeToString()
    decoded = decoder.decode(only, STREAM, 10)
    assert decoded is not None and decoded.client_ids == ["a"] * 3


def test_more_orders_than_allowed_or_too_many_symbols_are_handed_back() -> None:
    decoder = NewOrderWireDecoder(capacity=2)
    orders = [api.NewOrder(client_order_id=str(i), symbol=f"S{i}") for i in range(SYMBOLS_MAX + 1)]
    data = api.SubmitOrdersRequest(orders=orders).SerializeToString()
    assert decoder.decode(data, SUBMIT_ORDERS, 1000) is None  # one symbol too many
    fits = api.SubmitOrdersRequest(orders=orders[:SYMBOLS_MAX]).SerializeToString()
    decoded = decoder.decode(fits, SUBMIT_ORDERS, 1000)
    assert decoded is not None and decoded.symbols == [f"S{i}" for i in range(SYMBOLS_MAX)]
    assert decoder.decode(fits, SUBMIT_ORDERS, SYMBOLS_MAX - 1) is None  # over the caller's bound
    assert decoder.decode(b"", SUBMIT_ORDERS, 10) is not None  # an empty batch: the caller refuses it


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    orders=st.lists(new_orders(), min_size=1, max_size=6),
    stream=st.booleans(),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255), st.integers(0, 2)), max_size=4),
)
def test_corrupted_messages_are_refused_or_read_exactly_as_protobuf_reads_them(
    orders: list[api.NewOrder], stream: bool, edits: list[tuple[int, int, int]]
) -> None:
    """Random byte changes, insertions and cuts of real messages: whatever the fast path takes,
    protobuf parses too, into the same orders (never a message protobuf refuses, never a
    different reading)."""
    if stream:
        message_bytes = api.OrderStreamRequest(
            inputs=[api.OrderInput(new_order=o) for o in orders]
        ).SerializeToString()
    else:
        message_bytes = api.SubmitOrdersRequest(orders=orders).SerializeToString()
    data = corrupted(message_bytes, edits)
    decoded = NewOrderWireDecoder().decode(data, STREAM if stream else SUBMIT_ORDERS, 1000)
    if decoded is None:
        return
    message = api.OrderStreamRequest if stream else api.SubmitOrdersRequest
    parsed = message.FromString(data)  # raises if the fast path took what protobuf refuses
    if stream:
        assert all(item.WhichOneof("input") == "new_order" for item in parsed.inputs)
        taken = [item.new_order for item in parsed.inputs]
    else:
        taken = list(parsed.orders)
    _same(decoded, _expected(taken, stream), stream)


@settings(max_examples=150, deadline=None)
@given(orders=st.lists(new_orders(ANY_TEXT), min_size=3, max_size=8))
def test_the_service_decoders_give_the_inputs_protobufs_reading_gives(orders: list[api.NewOrder]) -> None:
    """codec.read_submit_orders and read_stream_message (where the fast path takes the bytes)
    against the protobuf readers they replace: the same Inputs, a stream's priorities ignored
    included."""
    wire = NewOrderWireDecoder()
    batch = api.SubmitOrdersRequest(orders=orders)
    stream = api.OrderStreamRequest(inputs=[api.OrderInput(new_order=o) for o in orders])
    read_batch = codec.read_submit_orders(batch.SerializeToString(), wire, 1000, 1, 2)
    read_stream = codec.read_stream_message(stream.SerializeToString(), wire, 1000, 1, 2)
    assert (read_batch is None) == (read_stream is None)  # (the same orders either way)
    pairs = [
        (read_batch, codec.decode_new_orders(batch.orders, 1, 2)),
        (read_stream, codec.decode_stream_inputs(stream.inputs, 1, 2)),
    ]
    for got, want in [(g, w) for g, w in pairs if g is not None]:
        assert got.orders.dtype == want.orders.dtype
        assert got.orders.tolist() == want.orders.tolist()
        assert (got.symbols, got.client_ids) == (want.symbols, want.client_ids)
        assert got.client_text is not None
        assert (got.client_text[0], got.client_text[1].tolist()) == (
            joined(want.client_ids)[0],
            joined(want.client_ids)[1].tolist(),
        )
        assert got.kind.tolist() == want.kind.tolist() and got.target_ids.tolist() == want.target_ids.tolist()
        assert (got.received_ns, got.arrival_ns, got.preset_reasons) == (1, 2, None)


def _entry_view(entry: object) -> tuple[object, ...]:
    """A NewOrderEntry as comparable values (protobuf gives post_only as a bool, C as 0 or 1)."""
    fields = tuple(int(v) for v in entry.fields)  # type: ignore[attr-defined]
    return entry.symbol, entry.client_id, fields, entry.received_ns, entry.arrival_ns  # type: ignore[attr-defined]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    order=st.one_of(st.none(), new_orders(ANY_TEXT)),
    edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255), st.integers(0, 2)), max_size=3),
)
def test_submit_order_bytes_read_in_c_as_protobuf_reads_them(
    order: api.NewOrder | None, edits: list[tuple[int, int, int]]
) -> None:
    """SubmitOrder's one order from its bytes (codec.read_submit_order, NewOrderWireDecoder.decode_one),
    on real requests and corrupted ones: what the fast path takes, protobuf parses into the same
    entry; a request with no order is protobuf's (its default NewOrder)."""
    request = api.SubmitOrderRequest() if order is None else api.SubmitOrderRequest(order=order)
    data = corrupted(request.SerializeToString(), edits)
    got = codec.read_submit_order(data, NewOrderWireDecoder(), 5, 6)
    if got is None:
        if order is not None and not edits and all(0x20 <= ord(c) <= 0x7E for c in order.client_order_id):
            assert len(order.client_order_id) > 64  # the only real request it hands back
        return
    parsed = api.SubmitOrderRequest.FromString(data)  # raises if C took what protobuf refuses
    assert _entry_view(got) == _entry_view(codec.decode_new_order(parsed.order, 5, 6))


def test_a_submit_order_with_its_order_twice_or_none_is_left_to_protobuf() -> None:
    wire = NewOrderWireDecoder()
    first = api.NewOrder(client_order_id="a", symbol="BTCUSDT", side=1, price_ticks=5, quantity_lots=2)
    second = api.NewOrder(quantity_lots=7)
    twice = (
        api.SubmitOrderRequest(order=first).SerializeToString()
        + api.SubmitOrderRequest(order=second).SerializeToString()
    )
    assert codec.read_submit_order(twice, wire, 0, 0) is None
    merged = api.SubmitOrderRequest.FromString(twice).order  # protobuf merges the two: quantity 7
    assert (merged.client_order_id, merged.price_ticks, merged.quantity_lots) == ("a", 5, 7)
    assert codec.read_submit_order(b"", wire, 0, 0) is None
    one = codec.read_submit_order(api.SubmitOrderRequest(order=first).SerializeToString(), wire, 0, 0)
    assert one is not None and (one.symbol, one.client_id, one.fields[:6]) == (
        "BTCUSDT",
        "a",
        (1, 0, 0, 5, 0, 2),
    )


def test_row_fields_are_the_order_paths() -> None:
    from services.execution.risk import NEW_ORDER_DTYPE

    assert tuple(NEW_ORDER_DTYPE.names or ()) == ROW_FIELDS


def test_many_ids_come_as_one_text_and_lengths_too() -> None:
    # Past the count where the lengths are found from the separators (the SubmitOrders and
    # SubmitOrderColumns sizes): the same as joined(), ids of every length included.
    rng = np.random.default_rng(7)
    ids = [
        "".join(chr(c) for c in rng.integers(33, 127, size=int(n))) for n in rng.integers(1, 65, size=2_000)
    ]
    orders = [api.NewOrder(symbol="BTCUSDT", client_order_id=i, quantity_lots=1) for i in ids]
    decoded = NewOrderWireDecoder().decode(
        api.SubmitOrdersRequest(orders=orders).SerializeToString(), SUBMIT_ORDERS, 10_000
    )
    assert decoded is not None and decoded.client_ids == ids
    text, lengths = joined(ids)
    assert decoded.client_text == text and decoded.client_lengths.tolist() == lengths.tolist()
