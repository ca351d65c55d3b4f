"""hftgate.native.exec_wire and services.execution.codec's wire encoders: the C encoding of acks
and execution reports is the bytes protobuf writes for the same messages, as the service's own
protobuf encoders (encode_acks, encode_reports) build them, on random extreme columns."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hftgate.native.client_ids import joined
from hftgate.native.errors import NativeError
from hftgate.native.exec_wire import ExecWireEncoder, TextTable
from hftgate.v1 import execution_pb2 as api
from services.execution import codec
from services.execution.admission import Acks
from services.execution.state import REASON_TEXT, REPORT_DTYPE

INT64 = st.integers(-(2**63), 2**63 - 1)
SMALL = st.integers(0, 3)
# Client ids as the service may echo them: ASCII, empty, or (refused ids) any UTF-8.
TEXT = st.one_of(st.text(st.characters(codec="ascii"), max_size=70), st.text(max_size=8))


def _int64s(draw: st.DrawFn, count: int, values: st.SearchStrategy[int] = INT64) -> np.ndarray:
    return np.array(draw(st.lists(values, min_size=count, max_size=count)), np.int64)


@st.composite
def random_acks(draw: st.DrawFn) -> tuple[Acks, list[str]]:
    count = draw(st.integers(0, 12))
    reasons = draw(st.lists(st.sampled_from([0, 0, *REASON_TEXT]), min_size=count, max_size=count))
    acks = Acks(
        kind=_int64s(draw, count, st.integers(1, 3)),
        client_ids=draw(st.lists(TEXT, min_size=count, max_size=count)),
        order_ids=_int64s(draw, count),
        sequences=_int64s(draw, count, st.one_of(st.just(0), INT64)),
        status=np.array(draw(st.lists(st.integers(0, 255), min_size=count, max_size=count)), np.uint8),
        reason=np.array(reasons, np.uint16),
        price=_int64s(draw, count),
        quantity=_int64s(draw, count),
        leaves=_int64s(draw, count),
        cum=_int64s(draw, count, st.one_of(SMALL, INT64)),
        priority_kept=np.array(draw(st.lists(st.booleans(), min_size=count, max_size=count)), bool),
        received_ns=draw(INT64),
        durable=draw(st.booleans()),
    )
    symbols = draw(st.lists(st.text(max_size=6), min_size=count, max_size=count))
    return acks, symbols


@settings(max_examples=150, deadline=None)
@given(random_acks(), INT64, st.sampled_from([0, 1 << 48, 5 << 48]))
def test_acks_are_the_bytes_protobuf_writes(
    case: tuple[Acks, list[str]], ack_ns: int, shard_base: int
) -> None:
    acks, symbols = case
    if shard_base:
        # local ids: below the shard bits
        acks.order_ids = np.abs(acks.order_ids) & ((1 << 48) - 1)
    reference = api.SubmitOrdersResponse()
    codec.encode_acks(acks, ack_ns, symbols, reference.acks.add, shard_base)
    wire = codec.ack_entries(acks, ack_ns, symbols, ExecWireEncoder(capacity_bytes=16), shard_base)
    assert wire == reference.SerializeToString()
    assert api.SubmitOrdersResponse.FromString(wire) == reference


class _State:
    """What report_entries reads of the execution state: names, and client ids by order id."""

    def __init__(self, symbol_names: list[str], client_ids: dict[int, str]) -> None:
        self.symbol_names = symbol_names
        self._client_ids = client_ids

    def client_ids_of(self, order_ids: np.ndarray) -> list[str]:
        return [self._client_ids.get(int(i), "") for i in order_ids.tolist()]

    def client_id_text_of(self, order_ids: np.ndarray) -> tuple[bytes, np.ndarray]:
        return joined(self.client_ids_of(order_ids))


@st.composite
def random_reports(draw: st.DrawFn) -> tuple[np.ndarray, _State]:
    count = draw(st.integers(0, 10))
    names = draw(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=5))
    rows = np.zeros(count, REPORT_DTYPE)
    for name in REPORT_DTYPE.names or ():
        kind = REPORT_DTYPE[name]
        if name == "symbol_id":
            values = st.integers(0, len(names) - 1)
        elif name == "reason":
            values = st.sampled_from([0, 0, 999, *REASON_TEXT])
        elif name == "order_id":
            values = st.integers(1, (1 << 48) - 1)
        elif kind.kind == "u":
            values = st.integers(0, 2 ** (8 * kind.itemsize) - 1)
        else:
            values = st.one_of(SMALL, INT64)
        rows[name] = draw(st.lists(values, min_size=count, max_size=count))
    client_ids = {int(i): draw(TEXT) for i in rows["order_id"].tolist()}
    return rows, _State(names, client_ids)


@settings(max_examples=150, deadline=None)
@given(random_reports(), st.sampled_from([0, 1 << 48, 7 << 48]))
def test_reports_are_the_bytes_protobuf_writes(case: tuple[np.ndarray, _State], shard_base: int) -> None:
    rows, state = case
    reference = api.OrderStreamResponse()
    codec.encode_reports(rows, state, shard_base, reference.executions.add)  # type: ignore[arg-type]
    wire = codec.report_entries(
        rows,
        state,
        codec.SymbolTexts(),
        ExecWireEncoder(capacity_bytes=16),
        shard_base,  # type: ignore[arg-type]
    )
    assert wire == reference.SerializeToString()


def test_a_report_naming_a_symbol_past_the_table_is_refused_not_read() -> None:
    rows = np.zeros(1, REPORT_DTYPE)
    rows["order_id"], rows["symbol_id"] = 1, 2
    with pytest.raises(NativeError):
        ExecWireEncoder().reports(2, rows, b"", np.zeros(1, np.int64), TextTable(["A", "B"]), TextTable([]))


def _one_ack(**changed: object) -> dict[str, object]:
    """ExecWireEncoder.acks' keyword arguments for one accepted ack, with ``changed`` in place."""
    one = np.ones(1, np.int64)
    columns: dict[str, object] = dict(
        action=one,
        order_id=one,
        sequence=one,
        status=np.zeros(1, np.uint8),
        reason=np.zeros(1, np.uint16),
        price=one,
        quantity=one,
        leaves=one,
        cum=one,
        priority_kept=np.zeros(1, bool),
        client_ids=b"a",
        client_id_lengths=one,
        reason_texts=b"",
        reason_text_lengths=np.zeros(1, np.int64),
        received_ns=0,
        ack_ns=0,
        durable=False,
    )
    return {**columns, **changed}


def test_columns_of_different_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="one entry per ack"):
        ExecWireEncoder().acks(1, **_one_ack(order_id=np.zeros(2, np.int64)))  # type: ignore[arg-type]


def test_client_id_lengths_past_their_text_are_refused() -> None:
    with pytest.raises(NativeError):
        ExecWireEncoder().acks(1, **_one_ack(client_ids=b""))  # type: ignore[arg-type]  # one byte claimed, none given


def _reference_ack_columns(acks: Acks, ack_ns: int, symbols: list[str], shard_base: int) -> api.AckColumns:
    """The columns built field by field with protobuf (what the service did before the C encoder)."""
    order_ids = np.where(acks.order_ids > 0, acks.order_ids | shard_base, acks.order_ids)
    refused = np.flatnonzero(acks.reason).tolist()
    return api.AckColumns(
        order_id=order_ids.tolist(),
        sequence=acks.sequences.tolist(),
        status=acks.status.tolist(),
        reason=acks.reason.tolist(),
        price_ticks=acks.price.tolist(),
        quantity_lots=acks.quantity.tolist(),
        leaves_quantity_lots=acks.leaves.tolist(),
        cum_quantity_lots=acks.cum.tolist(),
        reason_text=[
            codec.reason_text(codec.KIND_NEW, acks.client_ids[i], int(acks.reason[i]), symbols[i])
            for i in refused
        ],
        durable=bool(acks.durable and (acks.sequences > 0).any()),
        received_ns=acks.received_ns,
        ack_ns=ack_ns,
    )


@settings(max_examples=100, deadline=None)
@given(random_acks(), INT64, st.sampled_from([0, 1 << 48]))
def test_ack_columns_are_the_bytes_protobuf_writes(
    case: tuple[Acks, list[str]], ack_ns: int, shard_base: int
) -> None:
    acks, symbols = case
    if shard_base:
        acks.order_ids = np.abs(acks.order_ids) & ((1 << 48) - 1)
    reference = _reference_ack_columns(acks, ack_ns, symbols, shard_base)
    wire = codec.encode_ack_columns(acks, ack_ns, symbols, ExecWireEncoder(capacity_bytes=16), shard_base)
    assert wire == reference.SerializeToString()
    assert api.AckColumns.FromString(wire) == reference
