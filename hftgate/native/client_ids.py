"""The client order id index, in C (``native/include/hft_client_ids.h``).

:class:`ClientIdIndex` maps (account, client order id) to the order id it names. Single ids go
in and out as ``str``; batches as one text and the byte lengths of its ids, which is how the
journal holds them, so a batch crosses in one call with no string per order. Not thread-safe.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hftgate.native import check, ffi, lib

#: The longest client order id, in bytes.
MAX_LENGTH = lib.HFT_CLIENT_ID_MAX


def valid_client_id(client_id: str) -> bool:
    """Whether ``client_id`` is a client order id the index takes: 1..MAX_LENGTH printable ASCII."""
    return 0 < len(client_id) <= MAX_LENGTH and client_id.isascii() and client_id.isprintable()


def joined(client_ids: list[str]) -> tuple[bytes, np.ndarray]:
    """``client_ids`` as one text and their byte lengths (int64). Ids that are not ASCII are
    UTF-8 (never valid: their bytes are above 0x7e)."""
    text = "".join(client_ids)
    if text.isascii():
        return text.encode("ascii"), np.fromiter(map(len, client_ids), np.int64, len(client_ids))
    encoded = [c.encode("utf-8", "surrogatepass") for c in client_ids]
    return b"".join(encoded), np.fromiter(map(len, encoded), np.int64, len(encoded))


#: One client order id per fixed-width row, zero-padded (what ``ids_to_rows`` gives).
ROW_DTYPE = np.dtype(f"S{MAX_LENGTH}")


def ids_to_rows(text: bytes, lengths: np.ndarray) -> np.ndarray:
    """Ids (``text`` split by ``lengths``) as :data:`ROW_DTYPE` rows, in one C call.
    ValueError when a length is over MAX_LENGTH or the lengths do not add up to the text."""
    count = len(lengths)
    rows = np.empty(count, ROW_DTYPE)
    lengths = np.ascontiguousarray(lengths, np.int64)
    rc = lib.hft_client_ids_to_rows(
        text,
        len(text),
        ffi.from_buffer("int64_t[]", lengths),
        count,
        ffi.from_buffer("char[]", rows, require_writable=True),
    )
    if rc == lib.HFT_EINVAL:
        raise ValueError("client ids: a length over 64 bytes, or lengths that do not fit the text")
    check(rc, "hft_client_ids_to_rows")
    return rows


#: Buffers the C code fills before anything reads them: not zeroed first, so a big one costs no
#: resident memory beyond what is written (the snapshot joins every retained order's id).
_unzeroed = ffi.new_allocator(should_clear_after_alloc=False)


def ids_from_rows(*parts: np.ndarray) -> tuple[bytes, np.ndarray]:
    """The ids of :data:`ROW_DTYPE` rows (one or more arrays of them, in order, read in place) as
    one text and each row's length (0 for an empty row), in one C call per part."""
    count = sum(len(part) for part in parts)
    text = _unzeroed("char[]", max(1, count * MAX_LENGTH))
    lengths = np.empty(count, np.int64)
    written = ffi.new("size_t *")
    at = row = 0
    for part in parts:
        part = np.ascontiguousarray(part, ROW_DTYPE)
        rc = lib.hft_client_ids_from_rows(
            ffi.from_buffer("char[]", part), len(part), text + at, count * MAX_LENGTH - at,
            ffi.from_buffer("int64_t[]", lengths[row:], require_writable=True), written,
        )  # fmt: skip
        check(rc, "hft_client_ids_from_rows")
        at += written[0]
        row += len(part)
    return ffi.unpack(text, at), lengths


class ClientIdIndex:
    """(account, client order id) -> order id (see the module docstring)."""

    def __init__(self, capacity_hint: int = 1024) -> None:
        out = ffi.new("hft_client_ids **")
        check(lib.hft_client_ids_new(capacity_hint, out), "hft_client_ids_new")
        self._index = ffi.gc(out[0], lib.hft_client_ids_free)
        self._states = np.zeros(0, np.uint8)
        self._all_ok = ffi.new("int *")
        self._removed = ffi.new("size_t *")
        # One id's arrays, for add_one: no numpy for a single order.
        self._one_account = ffi.new("uint64_t[1]")
        self._one_length = ffi.new("int64_t[1]")
        self._one_order_id = ffi.new("int64_t[1]")
        # forget_rows' table, slot ids and id rows, and their C views (bound on first use).
        self._rows_of: tuple[Any, Any, Any] = (None, None, None)
        self._rows_c: tuple[Any, Any, Any] = (None, None, None)

    def __len__(self) -> int:
        return int(lib.hft_client_ids_count(self._index))

    def clear(self) -> None:
        lib.hft_client_ids_clear(self._index)

    @property
    def pointer(self) -> Any:
        """The C index, for C calls that look ids up themselves (hft_admission_admit_one)."""
        return self._index

    def get(self, account: int, client_id: str) -> int:
        """The order id ``client_id`` of ``account`` names, or 0."""
        data = client_id.encode("utf-8", "surrogatepass")
        return int(lib.hft_client_ids_get(self._index, account, data, len(data)))

    def check(
        self, account: int, client_ids: list[str], joined_ids: tuple[bytes, np.ndarray] | None = None
    ) -> np.ndarray | None:
        """Each id's state (uint8: hft_risk.h's HFT_RISK_ID_*) for a batch of ``account``'s, or
        None when every one is valid, new to the account and not repeated in the batch.
        ``joined_ids``: :func:`joined` of ``client_ids``, when the caller has it already."""
        count = len(client_ids)
        if count == 0:
            return None
        text, lengths = joined(client_ids) if joined_ids is None else joined_ids
        states = np.empty(count, np.uint8)
        rc = lib.hft_client_ids_check(
            self._index, account, text, len(text), ffi.from_buffer("int64_t[]", lengths), count,
            ffi.from_buffer("uint8_t[]", states, require_writable=True), self._all_ok,
        )  # fmt: skip
        check(rc, "hft_client_ids_check")
        return None if self._all_ok[0] else states

    def add(self, accounts: np.ndarray, text: bytes, lengths: np.ndarray, order_ids: np.ndarray) -> None:
        """Index ids (``text`` split by ``lengths``) of ``accounts`` as ``order_ids``; ValueError
        (nothing indexed) when one is not a valid client order id."""
        count = len(lengths)
        keep = self._arrays(accounts, lengths, order_ids, count)
        rc = lib.hft_client_ids_add(self._index, keep[0], text, len(text), keep[1], keep[2], count)
        if rc == lib.HFT_EINVAL:
            raise ValueError("client ids: not valid client order ids, or lengths that do not fit the text")
        check(rc, "hft_client_ids_add")

    def add_one(self, account: int, client_id: bytes, order_id: int) -> None:
        """:meth:`add` of one id (ASCII bytes)."""
        self._one_account[0], self._one_length[0], self._one_order_id[0] = account, len(client_id), order_id
        rc = lib.hft_client_ids_add(
            self._index, self._one_account, client_id, len(client_id), self._one_length, self._one_order_id, 1
        )
        if rc == lib.HFT_EINVAL:
            raise ValueError("client ids: not a valid client order id")
        check(rc, "hft_client_ids_add")

    def remove(self, accounts: np.ndarray, text: bytes, lengths: np.ndarray, order_ids: np.ndarray) -> int:
        """Forget each id that still names its order id; how many went."""
        count = len(lengths)
        keep = self._arrays(accounts, lengths, order_ids, count)
        rc = lib.hft_client_ids_remove(
            self._index, keep[0], text, len(text), keep[1], keep[2], count, self._removed
        )
        check(rc, "hft_client_ids_remove")
        return int(self._removed[0])

    def forget_rows(
        self, table: np.ndarray, slot_ids: np.ndarray, id_rows: np.ndarray, slots: np.ndarray, *, free: bool
    ) -> int:
        """:meth:`remove` of the ids of order table rows ``slots`` (int64), read in place: each
        row's account from ``table`` (hft_order_row rows), its order from ``slot_ids`` (int64),
        its id from ``id_rows`` (:data:`ROW_DTYPE`; empty rows skipped). ``free``: zero those rows'
        ``slot_ids`` and ``id_rows`` too. How many ids went (native/include/hft_order_retire.h)."""
        if slot_ids.dtype != np.int64 or id_rows.dtype != ROW_DTYPE or slots.dtype != np.int64:
            raise TypeError("forget_rows: slot_ids and slots must be int64, id_rows client id rows")
        if table.dtype.itemsize != ffi.sizeof("hft_order_row"):
            raise TypeError("forget_rows: the table's rows are not hft_order_row")
        if len(slot_ids) != len(table) or len(id_rows) != len(table):
            raise TypeError("forget_rows: one slot id and one id row per table row")
        bound = self._rows_of
        if table is not bound[0] or slot_ids is not bound[1] or id_rows is not bound[2]:
            # (bound once: the state replaces the three arrays together, when its table grows)
            self._rows_of = (table, slot_ids, id_rows)
            self._rows_c = (
                ffi.from_buffer("hft_order_row[]", table),
                ffi.from_buffer("int64_t[]", slot_ids, require_writable=True),
                ffi.from_buffer("char[]", id_rows, require_writable=True),
            )
        table_c, slot_ids_c, id_rows_c = self._rows_c
        rc = lib.hft_order_retire_rows(
            self._index, table_c, slot_ids_c, id_rows_c, len(table),
            ffi.from_buffer("int64_t[]", slots), len(slots), free, self._removed,
        )  # fmt: skip
        if rc == lib.HFT_EINVAL:
            raise ValueError("forget_rows: a slot past the table")
        check(rc, "hft_order_retire_rows")
        return int(self._removed[0])

    def items(self) -> list[tuple[int, str, int]]:
        """Every (account, client order id, order id), sorted."""
        count = len(self)
        accounts = np.empty(count, np.uint64)
        order_ids = np.empty(count, np.int64)
        lengths = np.empty(count, np.int64)
        text = bytearray(count * MAX_LENGTH)
        written = lib.hft_client_ids_export(
            self._index,
            ffi.from_buffer("uint64_t[]", accounts, require_writable=True),
            ffi.from_buffer("int64_t[]", order_ids, require_writable=True),
            ffi.from_buffer("char[]", text, require_writable=True),
            ffi.from_buffer("int64_t[]", lengths, require_writable=True),
            count,
        )
        return sorted(
            (
                int(accounts[i]),
                bytes(text[i * MAX_LENGTH : i * MAX_LENGTH + int(lengths[i])]).decode("ascii"),
                int(order_ids[i]),
            )
            for i in range(written)
        )

    @staticmethod
    def _arrays(
        accounts: np.ndarray, lengths: np.ndarray, order_ids: np.ndarray, count: int
    ) -> tuple[Any, ...]:
        if len(accounts) != count or len(order_ids) != count:
            raise ValueError("client ids: one account, length and order id per id")
        return (
            ffi.from_buffer("uint64_t[]", np.ascontiguousarray(accounts, np.uint64)),
            ffi.from_buffer("int64_t[]", np.ascontiguousarray(lengths, np.int64)),
            ffi.from_buffer("int64_t[]", np.ascontiguousarray(order_ids, np.int64)),
        )
