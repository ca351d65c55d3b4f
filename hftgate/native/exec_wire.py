"""The execution service's acks and execution reports as protobuf wire bytes, many in one C call.

``ExecWireEncoder.acks`` writes OrderAck entries and ``ExecWireEncoder.reports`` ExecutionReport
entries of a repeated message field, and ``ExecWireEncoder.packed`` one packed int64 column (a
column of AckColumns) (``field``: its number in the response message) from the
service's columns, exactly the bytes protobuf writes for the same messages (see
``native/include/hft_exec_wire.h``). The caller parses them into its response
(``SubmitOrdersResponse.FromString``: protobuf's C parser makes no Python object per entry) or
joins them with other fields' entries first. Built one protobuf object at a time in Python, an
ack or a report costs ~2 us; here a batch of 1,000 costs a few.

Texts cross as one ``bytes`` and their byte lengths (client order ids, an ack's reason text) or
as a :class:`TextTable` looked up by number (symbol names by symbol id, reason texts by
RejectReason value). An encoder owns a growable output buffer; it is not safe to share between
threads (the service uses one on its event loop).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np

from hftgate.native import check, ffi, lib

ACK_FIXED_MAX_BYTES: Final[int] = lib.HFT_EXEC_WIRE_ACK_FIXED_MAX_BYTES
REPORT_FIXED_MAX_BYTES: Final[int] = lib.HFT_EXEC_WIRE_REPORT_FIXED_MAX_BYTES
PACKED_FIXED_MAX_BYTES: Final[int] = lib.HFT_EXEC_WIRE_PACKED_FIXED_MAX_BYTES

_NO_LENGTHS = np.zeros(1, np.int64)


class TextTable:
    """Texts looked up by number (text ``i`` is ``texts[i]``), UTF-8, as the C encoder reads them."""

    def __init__(self, texts: Sequence[str]) -> None:
        encoded = [text.encode("utf-8") for text in texts]
        self.texts = list(texts)
        self.text = b"".join(encoded)
        self.offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(e) for e in encoded], out=self.offsets[1:])
        self.longest = max((len(e) for e in encoded), default=0)

    def __len__(self) -> int:
        return len(self.texts)


def _column(values: np.ndarray, dtype: type) -> np.ndarray:
    return np.ascontiguousarray(values, dtype)


class ExecWireEncoder:
    """Writes OrderAck and ExecutionReport entries (see the module docstring)."""

    def __init__(self, capacity_bytes: int = 1 << 16) -> None:
        self._buffer = bytearray(capacity_bytes)
        self._acks = ffi.new("hft_ack_columns *")
        self._texts = ffi.new("hft_report_texts *")
        self._written = ffi.new("size_t *")

    def _room(self, bound: int) -> None:
        if bound > len(self._buffer):
            self._buffer = bytearray(max(bound, 2 * len(self._buffer)))

    def acks(
        self,
        field: int,
        *,
        action: np.ndarray,
        order_id: np.ndarray,
        sequence: np.ndarray,
        status: np.ndarray,
        reason: np.ndarray,
        price: np.ndarray,
        quantity: np.ndarray,
        leaves: np.ndarray,
        cum: np.ndarray,
        priority_kept: np.ndarray,
        client_ids: bytes,
        client_id_lengths: np.ndarray,
        reason_texts: bytes,
        reason_text_lengths: np.ndarray,
        received_ns: int,
        ack_ns: int,
        durable: bool,
    ) -> bytes:
        """One OrderAck entry per element of the columns (all of one length): ``reason_texts``
        holds each ack's reason text (``reason_text_lengths[i]`` bytes, 0 for none), and an ack
        with ``sequence > 0`` says durable when ``durable`` is set."""
        count = len(action)
        columns = [
            _column(action, np.int64),
            _column(order_id, np.int64),
            _column(sequence, np.int64),
            _column(status, np.uint8),
            _column(reason, np.uint16),
            _column(price, np.int64),
            _column(quantity, np.int64),
            _column(leaves, np.int64),
            _column(cum, np.int64),
            _column(priority_kept, np.bool_).view(np.uint8),
            _column(client_id_lengths, np.int64),
            _column(reason_text_lengths, np.int64),
        ]
        if any(len(c) != count for c in columns):
            raise ValueError("acks: every column needs one entry per ack")
        a = self._acks
        (action_c, order_c, sequence_c, status_c, reason_c, price_c, quantity_c, leaves_c, cum_c, kept_c,
         client_lengths_c, reason_lengths_c) = (ffi.from_buffer(c) for c in columns)  # fmt: skip
        a.action = ffi.cast("const int64_t *", action_c)
        a.order_id = ffi.cast("const int64_t *", order_c)
        a.sequence = ffi.cast("const int64_t *", sequence_c)
        a.status = ffi.cast("const uint8_t *", status_c)
        a.reason = ffi.cast("const uint16_t *", reason_c)
        a.price = ffi.cast("const int64_t *", price_c)
        a.quantity = ffi.cast("const int64_t *", quantity_c)
        a.leaves = ffi.cast("const int64_t *", leaves_c)
        a.cum = ffi.cast("const int64_t *", cum_c)
        a.priority_kept = ffi.cast("const uint8_t *", kept_c)
        client_text = ffi.from_buffer(client_ids)
        reason_text = ffi.from_buffer(reason_texts)
        a.client_ids = ffi.cast("const char *", client_text)
        a.client_id_lengths = ffi.cast("const int64_t *", client_lengths_c)
        a.client_ids_size = len(client_ids)
        a.reason_texts = ffi.cast("const char *", reason_text)
        a.reason_text_lengths = ffi.cast("const int64_t *", reason_lengths_c)
        a.reason_texts_size = len(reason_texts)
        a.received_ns = received_ns
        a.ack_ns = ack_ns
        a.durable = 1 if durable else 0
        self._room(count * ACK_FIXED_MAX_BYTES + len(client_ids) + len(reason_texts))
        buffer = self._buffer
        check(
            lib.hft_exec_wire_acks(a, count, field, ffi.from_buffer(buffer), len(buffer), self._written),
            "hft_exec_wire_acks",
        )
        return bytes(memoryview(buffer)[: self._written[0]])

    def reports(
        self,
        field: int,
        rows: np.ndarray,
        client_ids: bytes,
        client_id_lengths: np.ndarray,
        symbols: TextTable,
        reasons: TextTable,
        shard_base: int = 0,
    ) -> bytes:
        """One ExecutionReport entry per REPORT_DTYPE row: its order's client order id (joined as
        for :meth:`acks`), its symbol's name from ``symbols`` by symbol id, its reason's text from
        ``reasons`` by RejectReason value (none past the table's end); ``shard_base`` goes into
        the order id and into trade and counterparty ids above 0."""
        count = len(rows)
        if rows.dtype.itemsize != ffi.sizeof("hft_report_row"):
            raise TypeError("reports: rows must be REPORT_DTYPE")
        rows = np.ascontiguousarray(rows)
        lengths = _column(client_id_lengths, np.int64) if count else _NO_LENGTHS
        if count and len(lengths) != count:
            raise ValueError("reports: one client id length per row")
        t = self._texts
        client_text = ffi.from_buffer(client_ids)
        symbol_text = ffi.from_buffer(symbols.text)
        reason_text = ffi.from_buffer(reasons.text)
        lengths_c = ffi.from_buffer(lengths)
        symbol_offsets = ffi.from_buffer(symbols.offsets)
        reason_offsets = ffi.from_buffer(reasons.offsets)
        t.client_ids = ffi.cast("const char *", client_text)
        t.client_id_lengths = ffi.cast("const int64_t *", lengths_c)
        t.client_ids_size = len(client_ids)
        t.symbols = ffi.cast("const char *", symbol_text)
        t.symbol_offsets = ffi.cast("const int64_t *", symbol_offsets)
        t.symbol_count = len(symbols)
        t.symbols_size = len(symbols.text)
        t.reason_texts = ffi.cast("const char *", reason_text)
        t.reason_offsets = ffi.cast("const int64_t *", reason_offsets)
        t.reason_count = len(reasons)
        t.reason_texts_size = len(reasons.text)
        t.shard_base = shard_base
        self._room(count * (REPORT_FIXED_MAX_BYTES + symbols.longest + reasons.longest) + len(client_ids))
        buffer = self._buffer
        rows_c = ffi.from_buffer("hft_report_row[]", rows)
        check(
            lib.hft_exec_wire_reports(
                rows_c, count, t, field, ffi.from_buffer(buffer), len(buffer), self._written
            ),
            "hft_exec_wire_reports",
        )
        return bytes(memoryview(buffer)[: self._written[0]])

    def packed(self, field: int, values: np.ndarray) -> bytes:
        """``values`` (any integer dtype, read as int64) as packed repeated field ``field``: its key,
        its length, the varints; ``b""`` for no values, as protobuf writes an empty column."""
        column = _column(values, np.int64)
        count = len(column)
        self._room(PACKED_FIXED_MAX_BYTES + 10 * count)
        buffer = self._buffer
        out = ffi.from_buffer(buffer)
        values_c = ffi.from_buffer("int64_t[]", column)
        check(
            lib.hft_exec_wire_packed(values_c, count, field, out, len(buffer), self._written),
            "hft_exec_wire_packed",
        )
        return bytes(memoryview(buffer)[: self._written[0]])
