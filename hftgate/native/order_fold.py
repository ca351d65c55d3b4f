"""The matching engine's events folded into an order table, in C (``native/include/hft_order_fold.h``).

:class:`OrderFold` owns the output buffers (grown when a batch needs more, reused otherwise) and
the C structs of one call, so a call allocates nothing but its result arrays. The order table and
the reports and trades it returns have the dtypes of the caller's choosing, checked once against
the C structs, byte for byte (:meth:`OrderFold.__init__`): the execution service's
``ORDER_DTYPE``, ``REPORT_DTYPE`` and ``FILL_DTYPE`` (services/execution/state.py), so rows cross
with no conversion. Not thread-safe: one per state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hftgate.matching.types import check_layout
from hftgate.native import check, ffi, lib

#: A reason_of entry with no mapping (hft_order_fold.h).
UNMAPPED = lib.HFT_FOLD_UNMAPPED

#: What each input left its order in (hft_fold_outcome): its ack's values.
OUTCOME_DTYPE = np.dtype(
    [
        ("order_id", "<i8"),  # 0 for a refused NEW
        ("price", "<i8"),
        ("quantity", "<i8"),
        ("leaves", "<i8"),
        ("cum", "<i8"),
        ("reason", "<u2"),  # common.proto RejectReason
        ("status", "u1"),  # execution.proto OrderStatus (REJECTED when the engine refused the input)
        ("priority_kept", "u1"),
        ("reserved", "u1", (4,)),
    ]
)


@dataclass(frozen=True, slots=True)
class FoldResult:
    """What one batch's events did besides the rows they changed in place. ``reports`` and
    ``fills`` are the caller's; the other arrays are views of the fold's buffers, valid until
    its next call."""

    outcomes: np.ndarray  # OUTCOME_DTYPE, one per command (the caller's)
    reports: np.ndarray  # the caller's report dtype, in report sequence order
    fills: np.ndarray  # the caller's fill dtype, in trade id order
    rejected_index: np.ndarray  # int64: command index of each input the engine refused
    rejected_reason: np.ndarray  # uint16: its RejectReason
    touched: np.ndarray  # int64: each table row the batch touched, once
    before: np.ndarray  # int64: its open lots before the batch
    unknown: int  # events of a type the fold does not know (skipped)
    next_seq: int
    next_trade_id: int


class OrderFold:
    """Folds one batch's events at a time into an order table (see the module docstring)."""

    def __init__(
        self,
        order_dtype: np.dtype,
        report_dtype: np.dtype,
        fill_dtype: np.dtype,
        meta_dtype: np.dtype,
        reason_of: dict[int, int],
    ) -> None:
        # (Commands and events: hftgate.matching checks theirs when the engine is imported.)
        for c_name, dtype in (
            ("hft_order_row", order_dtype),
            ("hft_report_row", report_dtype),
            ("hft_fill_row", fill_dtype),
            ("hft_order_meta", meta_dtype),
            ("hft_fold_outcome", OUTCOME_DTYPE),
        ):
            check_layout(c_name, dtype)
        self.order_dtype = order_dtype
        self.report_dtype = report_dtype
        self.fill_dtype = fill_dtype
        self.meta_dtype = meta_dtype
        table = np.full(256, UNMAPPED, np.uint16)
        for engine_reason, reason in reason_of.items():
            table[int(engine_reason)] = int(reason)
        self._reason_of = table
        self._batch = ffi.new("hft_fold_batch *")
        self._out = ffi.new("hft_fold_out *")
        self._bad = ffi.new("size_t *")
        batch = self._batch
        batch.reason_of = ffi.from_buffer("uint16_t[]", self._reason_of)
        self._table: np.ndarray | None = None
        self._table_ptr: Any = None
        self._slot_ids: np.ndarray | None = None
        self._slot_ids_ptr: Any = None
        self._capacity = 0
        self._grow(1024)

    def _grow(self, events: int) -> None:
        """Room for a batch of ``events`` events and as many new orders."""
        capacity = max(events, 2 * self._capacity)
        self._reports = np.empty(2 * capacity, self.report_dtype)
        self._fills = np.empty(capacity, self.fill_dtype)
        # The rows' bytes: copying a slice of them costs ~1 us, a structured array's copy() ~4.
        self._report_bytes = self._reports.view(np.uint8)
        self._fill_bytes = self._fills.view(np.uint8)
        self._rejected_index = np.empty(capacity, np.int64)
        self._rejected_reason = np.empty(capacity, np.uint16)
        self._outcomes = np.empty(capacity, OUTCOME_DTYPE)
        self._outcome_bytes = self._outcomes.view(np.uint8)
        self._touched = np.empty(3 * capacity, np.int64)
        self._before = np.empty(3 * capacity, np.int64)
        #: Where callers put each event's order's and maker's table rows (:meth:`slot_buffers`).
        self._taker = np.empty(capacity, np.int64)
        self._maker = np.empty(capacity, np.int64)
        self._taker_ptr = ffi.from_buffer("int64_t[]", self._taker)
        self._maker_ptr = ffi.from_buffer("int64_t[]", self._maker)
        out = self._out
        out.reports = ffi.from_buffer("hft_report_row[]", self._reports, require_writable=True)
        out.report_cap = len(self._reports)
        out.fills = ffi.from_buffer("hft_fill_row[]", self._fills, require_writable=True)
        out.fill_cap = len(self._fills)
        out.rejected_index = ffi.from_buffer("int64_t[]", self._rejected_index, require_writable=True)
        out.rejected_reason = ffi.from_buffer("uint16_t[]", self._rejected_reason, require_writable=True)
        out.rejected_cap = capacity
        out.touched = ffi.from_buffer("int64_t[]", self._touched, require_writable=True)
        out.before = ffi.from_buffer("int64_t[]", self._before, require_writable=True)
        out.touched_cap = len(self._touched)
        out.outcomes = ffi.from_buffer("hft_fold_outcome[]", self._outcomes, require_writable=True)
        out.outcome_cap = len(self._outcomes)
        self._capacity = capacity

    def slot_buffers(self, events: int, commands: int) -> tuple[np.ndarray, np.ndarray]:
        """The fold's own (taker, maker) int64 slot arrays for a batch of ``events`` events and
        ``commands`` commands: fill them, then :meth:`fold` (no copy on the way in)."""
        if events + commands > self._capacity:
            self._grow(events + commands)
        return self._taker[:events], self._maker[:events]

    def fold(
        self,
        table: np.ndarray,
        slot_ids: np.ndarray,
        events: np.ndarray,
        commands: np.ndarray,
        meta: np.ndarray,
        command_slots: np.ndarray | None,
        *,
        first_new_id: int,
        new_count: int,
        slot_mask: int,
        first_input_seq: int,
        received_ns: int,
        transact_ns: int,
        restore_id_base: int,
        next_seq: int,
        next_trade_id: int,
    ) -> FoldResult:
        """Add the batch's new orders to ``table`` and fold ``events`` into it (rows changed in
        place), the rows of each event's order and maker being what the caller put in
        :meth:`slot_buffers` (-1: not held). The batch's NEW commands have ids ``first_new_id`` ..
        ``+ new_count - 1`` and rows ``(id - 1) & slot_mask``, whose ``slot_ids`` entries get their
        ids. ``command_slots`` (int64, -1: not held) is each command's order's row, None for a
        batch of NEW commands only. LookupError when an event names an order that is not held
        (nothing changed)."""
        count = len(events)
        if count + len(commands) > self._capacity:
            raise ValueError("fold: call slot_buffers for the batch first")
        if table is not self._table:  # (the table is replaced only when it grows)
            if table.dtype != self.order_dtype:
                raise TypeError("fold: the table has the wrong dtype")
            self._table, self._table_ptr = (
                table,
                ffi.from_buffer("hft_order_row[]", table, require_writable=True),
            )
        if slot_ids is not self._slot_ids:  # (replaced with the table)
            if slot_ids.dtype != np.int64 or len(slot_ids) != len(table):
                raise TypeError("fold: slot_ids must be int64, one per table row")
            self._slot_ids = slot_ids
            self._slot_ids_ptr = ffi.from_buffer("int64_t[]", slot_ids, require_writable=True)
        if (meta.dtype is not self.meta_dtype and meta.dtype != self.meta_dtype) or len(meta) != len(
            commands
        ):
            raise TypeError("fold: one meta row of the meta dtype per command")
        batch, out = self._batch, self._out
        # (held in locals until the call returns: the struct's pointers do not keep the buffers)
        commands_c = ffi.from_buffer("hft_order_command[]", commands)
        meta_c = ffi.from_buffer("hft_order_meta[]", meta)
        slots_c = ffi.NULL if command_slots is None else ffi.from_buffer("int64_t[]", command_slots)
        if command_slots is not None and (
            command_slots.dtype != np.int64 or len(command_slots) != len(commands)
        ):
            raise TypeError("fold: command_slots must be int64, one per command")
        batch.commands = commands_c
        batch.commands_count = len(commands)
        batch.meta = meta_c
        batch.slot_ids = self._slot_ids_ptr
        batch.command_slots = slots_c
        batch.first_new_id = first_new_id
        batch.new_count = new_count
        batch.slot_mask = slot_mask
        batch.first_input_seq = first_input_seq
        batch.received_ns = received_ns
        batch.transact_ns = transact_ns
        batch.restore_id_base = restore_id_base
        out.next_seq = next_seq
        out.next_trade_id = next_trade_id
        rc = lib.hft_order_fold(
            self._table_ptr,
            len(table),
            ffi.from_buffer("hft_match_event[]", events),
            count,
            self._taker_ptr,
            self._maker_ptr,
            batch,
            out,
            self._bad,
        )
        if rc == lib.HFT_ENOENT:
            raise LookupError(f"event {self._bad[0]} names an order that is not held")
        if rc < 0:
            check(rc, f"hft_order_fold(events={count})")
        touched, rejected = out.n_touched, out.n_rejected
        # Copies of the rows as fresh arrays of their dtypes (a bytearray wrapped by np.ndarray:
        # half the cost of copying bytes and viewing them as a structured dtype).
        n_outcomes, n_reports, n_fills = len(commands), out.n_reports, out.n_fills
        outcome_size, report_size, fill_size = (
            OUTCOME_DTYPE.itemsize,
            self.report_dtype.itemsize,
            self.fill_dtype.itemsize,
        )
        return FoldResult(
            outcomes=np.ndarray(
                (n_outcomes,), OUTCOME_DTYPE, bytearray(self._outcome_bytes[: n_outcomes * outcome_size])
            ),
            reports=np.ndarray(
                (n_reports,), self.report_dtype, bytearray(self._report_bytes[: n_reports * report_size])
            ),
            fills=np.ndarray((n_fills,), self.fill_dtype, bytearray(self._fill_bytes[: n_fills * fill_size])),
            rejected_index=self._rejected_index[:rejected],
            rejected_reason=self._rejected_reason[:rejected],
            touched=self._touched[:touched],
            before=self._before[:touched],
            unknown=int(out.unknown),
            next_seq=int(out.next_seq),
            next_trade_id=int(out.next_trade_id),
        )
