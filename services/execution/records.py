"""What the execution service writes into its journal: one record per accepted batch of inputs.

The journal (journal.py) stores opaque payloads with a record type; this module defines them.
All integers little-endian.

``RECORD_BATCH`` (1): the inputs of one call (or one stream message) that passed validation and
risk, in the order the engine ran them::

    header   <QqqII   first_input_seq, received_ns, transact_ns, count, client_ids_bytes
    commands count x COMMAND_DTYPE   the exact engine commands (order ids already assigned)
    meta     count x META_DTYPE      what the client asked for beyond the engine command
    client_ids                       the NEW inputs' client order ids, ASCII, back to back
                                     (lengths in meta.client_id_length)

Input sequence numbers are ``first_input_seq + i``: the ``sequence`` of OrderAck. Replaying the
commands through the same engine state gives the same events, which is how recovery rebuilds
books, orders, reports and fills.

``RECORD_SYMBOL`` (2): ``<I`` engine symbol id, then the symbol's name (UTF-8).
``RECORD_ACCOUNT`` (3): ``<Q`` account id, then the account's name (UTF-8).
Both come before the first batch that uses the id, so the names survive a restart.
``RECORD_PURGE`` (4): ``<IQ`` engine symbol id, highest order id: the shard drops its frozen copies
of the symbol's working orders (ids up to that one), a book it handed over and now takes back
(``ExecutionState.purge_symbol``; services/execution/handover.py). It comes right before the batch
that imports the book again.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from hftgate.matching.types import COMMAND_DTYPE

#: A bytes-like object (bytes, or a cffi buffer over a C struct).
Buffer = Any

RECORD_BATCH = 1
RECORD_SYMBOL = 2
RECORD_ACCOUNT = 3
RECORD_PURGE = 4

META_DTYPE = np.dtype(
    [
        ("client_price", "<i8"),  # the limit price the client gave (0 for market types)
        ("protection", "<i8"),  # market/stop-market protective bound as given (0 = default)
        ("replace_quantity", "<i8"),  # REPLACE: the new total quantity, fills included
        ("priority", "<i4"),
        ("client_type", "u1"),  # execution.proto OrderType
        ("client_tif", "u1"),  # execution.proto TimeInForce, defaulted
        ("client_stp", "u1"),  # execution.proto SelfTradePrevention, defaulted
        ("post_only", "u1"),
        ("client_id_length", "u1"),
        ("cancel_reason", "u1"),  # common.proto RejectReason for a service-made cancel (kill switch)
        ("priority_kept", "u1"),  # REPLACE: decided before the engine ran (see state.py)
        ("reserved", "u1"),
    ]
)

_BATCH_HEADER = struct.Struct("<QqqII")


def struct_of(dtype: np.dtype) -> struct.Struct:
    """A ``struct.Struct`` with the byte layout of one ``dtype`` record (little-endian integers, no gaps).

    For building a one-row record from a tuple: ``struct`` packs one row in ~0.3 µs where
    ``np.array([row], dtype).tobytes()`` takes ~1.5 µs.
    """
    codes = {("i", 1): "b", ("i", 2): "h", ("i", 4): "i", ("i", 8): "q",
             ("u", 1): "B", ("u", 2): "H", ("u", 4): "I", ("u", 8): "Q"}  # fmt: skip
    layout = "<"
    offset = 0
    for name in dtype.names or ():
        field_dtype, field_offset = dtype.fields[name][:2]  # type: ignore[index]
        if (
            field_offset != offset
            or field_dtype.byteorder == ">"
            or (field_dtype.kind, field_dtype.itemsize) not in codes
        ):
            raise TypeError(f"field {name!r} of {dtype} has no plain struct equivalent")
        layout += codes[(field_dtype.kind, field_dtype.itemsize)]
        offset += field_dtype.itemsize
    packed = struct.Struct(layout)
    if packed.size != dtype.itemsize:
        raise TypeError(f"{dtype} has trailing padding")
    return packed


_SYMBOL = struct.Struct("<I")
_ACCOUNT = struct.Struct("<Q")


@dataclass(slots=True)
class Batch:
    """One journaled batch of inputs. (Not frozen: a frozen dataclass costs ~0.5 us more to
    build, and SubmitOrder builds one per order; nothing changes a batch once built.)"""

    first_input_seq: int
    received_ns: int
    transact_ns: int
    commands: np.ndarray  # COMMAND_DTYPE
    meta: np.ndarray  # META_DTYPE
    client_ids: bytes

    def __len__(self) -> int:
        return len(self.commands)


def encode_batch(batch: Batch) -> bytes:
    header = _BATCH_HEADER.pack(
        batch.first_input_seq,
        batch.received_ns,
        batch.transact_ns,
        len(batch.commands),
        len(batch.client_ids),
    )
    return b"".join((header, batch.commands.tobytes(), batch.meta.tobytes(), batch.client_ids))


def encode_one_batch(
    first_input_seq: int,
    received_ns: int,
    transact_ns: int,
    command: Buffer,
    meta: Buffer,
    client_ids: bytes,
) -> bytes:
    """:func:`encode_batch` of a batch of one input given as its COMMAND_DTYPE and META_DTYPE
    rows' bytes (any bytes-like object): the same bytes, without building arrays (the SubmitOrder
    path)."""
    header = _BATCH_HEADER.pack(first_input_seq, received_ns, transact_ns, 1, len(client_ids))
    return b"".join((header, command, meta, client_ids))


def decode_batch(payload: bytes) -> Batch:
    first, received, transact, count, ids_bytes = _BATCH_HEADER.unpack_from(payload, 0)
    offset = _BATCH_HEADER.size
    commands_end = offset + count * COMMAND_DTYPE.itemsize
    meta_end = commands_end + count * META_DTYPE.itemsize
    if meta_end + ids_bytes != len(payload):
        raise ValueError(f"batch record of {len(payload)} bytes does not hold {count} inputs")
    # Writable copies made as bytes: copying a structured array (ndarray.copy) walks its fields
    # one by one and costs ~9 us for one row against ~1 us (the SubmitOrder path decodes every
    # order's record).
    view = memoryview(payload)
    commands = np.ndarray((count,), COMMAND_DTYPE, bytearray(view[offset:commands_end]))
    meta = np.ndarray((count,), META_DTYPE, bytearray(view[commands_end:meta_end]))
    return Batch(first, received, transact, commands, meta, bytes(view[meta_end:]))


def encode_symbol(symbol_id: int, name: str) -> bytes:
    return _SYMBOL.pack(symbol_id) + name.encode("utf-8")


def decode_symbol(payload: bytes) -> tuple[int, str]:
    return _SYMBOL.unpack_from(payload)[0], payload[_SYMBOL.size :].decode("utf-8")


def encode_account(account_id: int, name: str) -> bytes:
    return _ACCOUNT.pack(account_id) + name.encode("utf-8")


def decode_account(payload: bytes) -> tuple[int, str]:
    return _ACCOUNT.unpack_from(payload)[0], payload[_ACCOUNT.size :].decode("utf-8")


_PURGE = struct.Struct("<IQ")


def encode_purge(symbol_id: int, up_to_order_id: int) -> bytes:
    return _PURGE.pack(symbol_id, up_to_order_id)


def decode_purge(payload: bytes) -> tuple[int, int]:
    symbol_id, up_to_order_id = _PURGE.unpack_from(payload)
    return int(symbol_id), int(up_to_order_id)
