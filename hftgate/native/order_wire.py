"""New orders read from their protobuf wire bytes, many in one C call (``native/include/hft_order_wire.h``).

``NewOrderWireDecoder.decode`` reads the NewOrder messages of a serialized SubmitOrdersRequest
(or of an OrderStreamRequest whose every input is a new order) into the order path's columns:
one row of eleven int64 per order (the layout of the service's ``NEW_ORDER_DTYPE``), the client
order ids and the symbols as lists of ``str``. Read field by field in Python the same orders
cost ~1.5 us each; here a batch of 1,000 costs a few tens of microseconds.
``NewOrderWireDecoder.decode_one`` reads SubmitOrder's one order into plain values.
``NewOrderWireDecoder.decode_columns`` does the same for a SubmitOrderColumnsRequest, whose packed
columns go straight into the rows (~29 us per 1,000 orders, against ~143 us for protobuf's parse
and the columns' conversion to numpy).

It is a fast path for the messages protobuf libraries write for ordinary orders: anything else
(an unknown field, a text that is not printable ASCII, a client order id over 64 bytes, more
than 16 symbols, ...) gives None, and the caller reads the message with protobuf as before. What
it does decode, it decodes exactly as protobuf does; the header lists the rules.

A decoder owns growable buffers; it is not safe to share between threads (the service uses
one on its event loop).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from hftgate.native import check, ffi, lib

SUBMIT_ORDERS: Final[int] = lib.HFT_ORDER_WIRE_SUBMIT_ORDERS
STREAM: Final[int] = lib.HFT_ORDER_WIRE_STREAM
TEXT_MAX: Final[int] = lib.HFT_ORDER_WIRE_TEXT_MAX
SYMBOLS_MAX: Final[int] = lib.HFT_ORDER_WIRE_SYMBOLS_MAX
_GENERAL: Final[int] = lib.HFT_ORDER_WIRE_GENERAL

#: The numeric fields of one decoded order, as ``hft_new_order_row`` lays them out.
ROW_FIELDS: Final[tuple[str, ...]] = (
    "side",
    "order_type",
    "tif",
    "price",
    "stop_price",
    "quantity",
    "display",
    "post_only",
    "stp",
    "protection",
    "priority",
)
ROW_DTYPE: Final[np.dtype] = np.dtype([(name, "<i8") for name in ROW_FIELDS])
#: One row as struct reads it (decode_one's fields, with no array).
_ROW_STRUCT: Final = struct.Struct(f"<{len(ROW_FIELDS)}q")
#: Up to this many ids, their lengths are read one by one (numpy's set-up costs more below).
_LENGTHS_BY_MAP_MAX = 400
assert ROW_DTYPE.itemsize == ffi.sizeof("hft_new_order_row")


@dataclass(frozen=True, slots=True)
class DecodedOrders:
    """A message's new orders: ``rows`` (:data:`ROW_DTYPE`, a fresh array the caller owns), and
    per order its client order id and its symbol; the ids also as one ASCII text and each one's
    byte length (int64), as ``hftgate.native.client_ids.joined`` gives them."""

    rows: np.ndarray
    client_ids: list[str]
    symbols: list[str]
    client_text: bytes = b""
    client_lengths: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class NewOrderWireDecoder:
    """Reads new orders from wire bytes (see the module docstring)."""

    def __init__(self, capacity: int = 1024) -> None:
        self._out = ffi.new("hft_order_wire_out *")
        self._symbols = ffi.new("char[]", lib.HFT_ORDER_WIRE_SYMBOLS_BYTES)
        self._out.symbols = self._symbols
        self._capacity = 0
        self._text_capacity = 0
        self._reserve(capacity, 1 << 16)

    def _reserve(self, orders: int, text_bytes: int) -> None:
        if orders > self._capacity:
            self._rows = np.empty(orders, ROW_DTYPE)
            self._index = np.empty(orders, np.uint8)
            self._out.rows = ffi.from_buffer("hft_new_order_row[]", self._rows, require_writable=True)
            self._out.symbol_index = ffi.from_buffer("uint8_t[]", self._index, require_writable=True)
            self._out.capacity = self._capacity = orders
            self._first_row = ffi.buffer(self._out.rows, ROW_DTYPE.itemsize)  # (decode_one's)
        if text_bytes > self._text_capacity:
            self._text = ffi.new("char[]", text_bytes)
            self._out.client_ids = self._text
            self._out.client_ids_capacity = self._text_capacity = text_bytes

    def decode(self, data: bytes, message: int, max_orders: int) -> DecodedOrders | None:
        """The new orders of ``data`` (a serialized message of kind ``message``: :data:`SUBMIT_ORDERS`
        or :data:`STREAM`), or None when it is not for the fast path or holds more than
        ``max_orders`` orders (the caller then reads it with protobuf)."""
        out = self._prepared(data, max_orders)
        rc = lib.hft_order_wire_decode_new_orders(ffi.from_buffer(data), len(data), message, out)
        return self._decoded(rc, "hft_order_wire_decode_new_orders")

    def decode_one(self, data: bytes) -> tuple[tuple[int, ...], str, str] | None:
        """The order of ``data``, a serialized SubmitOrderRequest, as (its row's fields in
        :data:`ROW_FIELDS` order, its client order id, its symbol), or None when it is not for the
        fast path. (A SubmitOrderRequest's ``order`` is field 1, as a SubmitOrdersRequest's
        ``orders``: for one order the bytes are the same.) A request with no order, or with the
        field twice (protobuf merges the two), is not for the fast path either: protobuf reads it.
        No array on the way: SubmitOrder's latency is what a client waits on."""
        out = self._prepared(data, 1)
        rc = lib.hft_order_wire_decode_new_orders(ffi.from_buffer(data), len(data), SUBMIT_ORDERS, out)
        if rc == _GENERAL:
            return None
        check(rc, "hft_order_wire_decode_new_orders")
        if out.count != 1:
            return None
        return (
            _ROW_STRUCT.unpack_from(self._first_row),
            ffi.unpack(self._text, int(out.client_ids_size)).decode("ascii"),
            ffi.unpack(self._symbols, int(out.symbols_size)).decode("ascii"),
        )

    def decode_columns(self, data: bytes, max_orders: int) -> DecodedOrders | None:
        """The orders of ``data``, a serialized SubmitOrderColumnsRequest, or None when it is not
        for the fast path (a column that does not fit the others included: protobuf's reading and
        the service's checks then say what is wrong) or holds more than ``max_orders`` orders."""
        out = self._prepared(data, max_orders)
        rc = lib.hft_order_wire_decode_columns(ffi.from_buffer(data), len(data), out)
        return self._decoded(rc, "hft_order_wire_decode_columns")

    def _prepared(self, data: bytes, max_orders: int) -> Any:
        # Each order takes at least two bytes of the message (its client order id's tag and
        # length), and its id no more bytes than it has there; the '\n' between ids fits in the
        # tag bytes they do not copy.
        self._reserve(min(max_orders, len(data) // 2 + 1), len(data) + 1)
        out = self._out
        out.capacity = min(self._capacity, max_orders)
        return out

    def _decoded(self, rc: int, call: str) -> DecodedOrders | None:
        if rc == lib.HFT_ORDER_WIRE_GENERAL:
            return None
        check(rc, call)
        out = self._out
        count = int(out.count)
        if not count:
            return DecodedOrders(np.zeros(0, ROW_DTYPE), [], [])
        raw = ffi.unpack(self._text, int(out.client_ids_size))
        ids = raw.decode("ascii").split("\n")
        if len(ids) != count:  # pragma: no cover - the C code writes one id per order
            raise ValueError(f"{call}: {len(ids)} client order ids for {count} orders")
        # The ids as one text and byte lengths too (they are ASCII: a character is a byte), as
        # joined() gives them: admission and the acks take them so.
        if count <= _LENGTHS_BY_MAP_MAX:
            lengths = np.fromiter(map(len, ids), np.int64, count)
        else:  # from the '\n' between them: no Python call per id
            bounds = np.empty(count + 1, np.int64)
            bounds[0], bounds[count] = -1, len(raw)
            bounds[1:count] = np.flatnonzero(np.frombuffer(raw, np.uint8) == 10)
            lengths = bounds[1:] - bounds[:-1]
            lengths -= 1
        names = ffi.unpack(self._symbols, int(out.symbols_size)).decode("ascii").split("\n")
        # (One symbol, the common case: the list built by one repetition, not an index per order.)
        symbols = names * count if len(names) == 1 else [names[i] for i in self._index[:count].tolist()]
        rows = np.ndarray((count,), ROW_DTYPE, bytearray(ffi.buffer(out.rows, count * ROW_DTYPE.itemsize)))
        return DecodedOrders(rows, ids, symbols, raw.replace(b"\n", b""), lengths)
