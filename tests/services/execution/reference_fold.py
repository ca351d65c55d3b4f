"""The Python fold of a batch's engine events into the order table, as apply_batch did it before
the fold moved to C (native/src/order_fold.c): the reference the C fold is compared with
(test_order_fold.py), kept in the tests only. Not for the service: ~5 us an event. It adds the
batch's new orders' rows and computes each input's outcome as the service did in Python too."""

from __future__ import annotations

import heapq
import logging
from typing import Any

import numpy as np

from hftgate.matching.types import EventType, Reason
from hftgate.matching.types import OrderType as EngineType
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.records import Batch
from services.execution.state import (
    _ACTION_NEW,
    _ENGINE_TO_REASON,
    _IS_OPEN,
    _ROW_BY_ROW_MAX,
    CANCELED,
    EXPIRED,
    FILL_DTYPE,
    FILLED,
    NEW,
    OPEN_STATUSES,
    ORDER_DTYPE,
    PARTIAL,
    PENDING,
    REJECTED,
    REPORT_DTYPE,
    RESTORE_ORDER_ID_BASE,
    BatchOutcome,
    ExecutionState,
)

log = logging.getLogger(__name__)

# Positions of ORDER_DTYPE fields in a row tuple (``orders[i].item()``).
_ORDER_FIELDS: tuple[str, ...] = tuple(ORDER_DTYPE.fields or ())
F_ACCOUNT, F_PRICE, F_QUANTITY = (_ORDER_FIELDS.index(n) for n in ("account_id", "price", "quantity"))
F_LEAVES, F_CUM, F_NOTIONAL = (_ORDER_FIELDS.index(n) for n in ("leaves", "cum", "notional"))
F_LAST, F_REASON, F_SIDE = (_ORDER_FIELDS.index(n) for n in ("last_exec_seq", "reason", "side"))
F_TYPE, F_STATUS = (_ORDER_FIELDS.index(n) for n in ("order_type", "status"))
F_UPDATED, F_STOP = _ORDER_FIELDS.index("updated_ns"), _ORDER_FIELDS.index("stop_price")

MARKET_TYPES = (api.ORDER_TYPE_MARKET, api.ORDER_TYPE_STOP_MARKET)
_ENGINE_STOP_TYPES = (int(EngineType.STOP_LIMIT), int(EngineType.STOP_MARKET))
_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)
_ORDER_EVENTS = frozenset(
    int(k)
    for k in (EventType.ACK, EventType.TRIGGERED, EventType.REPLACED, EventType.CANCELED, EventType.EXPIRED)
)


def reference_fold(
    self: ExecutionState, batch: Batch, events: np.ndarray, first_new_id: int, new_count: int
) -> BatchOutcome:
    """ExecutionState._fold, event by event in Python (``self``: the state)."""
    commands, meta = batch.commands, batch.meta
    count = len(commands)
    actions = commands["action"]
    if new_count:
        new_mask = actions == _ACTION_NEW
        _add_rows(self, commands[new_mask], meta[new_mask], first_new_id, batch.received_ns)
    received, transact = batch.received_ns, batch.transact_ns
    # Every order the events touch is copied once into a Python list (fast to update per event)
    # and written back to the numpy table in one pass at the end.
    orders = self.table
    mask = self._mask
    live: dict[int, list[Any]] = {}  # keyed by table row (slot)
    working_before: dict[int, int] = {}  # order row -> lots it had working before this batch

    ring = self._ring
    survivor_rows: list[int] = []  # rows of survivors the batch touches (retirement, below)

    def load(index: int) -> list[Any]:
        row = live.get(index)
        if row is None:
            if index < 0:  # an engine event for an order not held: a bug, contained by the caller
                raise LookupError("apply_batch: an engine event names an order that is not retained")
            row = live[index] = list(orders[index].item())
            working_before[index] = row[F_LEAVES] if row[F_STATUS] in OPEN_STATUSES else 0
            if index >= ring:
                survivor_rows.append(index)
        return row

    # slot_of with the window fixed for the batch's events (no order is added or retired meanwhile).
    window_base, last_id, survivor_get = self.order_base, self.order_count, self._survivor_slots.get

    def slot_of(order_id: int) -> int:
        if order_id > window_base:
            return (order_id - 1) & mask if order_id <= last_id else -1
        return survivor_get(order_id, -1)

    if new_count:  # the batch's new orders all get events: copy them in one call
        first_slot = (first_new_id - 1) & mask
        if first_slot + new_count <= self._ring:
            new_slots: list[int] = list(range(first_slot, first_slot + new_count))
            new_rows = orders[first_slot : first_slot + new_count].tolist()
        else:  # the ring wraps inside this batch
            wrapped = (np.arange(first_new_id, first_new_id + new_count) - 1) & mask
            new_slots, new_rows = wrapped.tolist(), orders[wrapped].tolist()
        for slot, values in zip(new_slots, new_rows, strict=True):
            live[slot] = list(values)
            working_before[slot] = 0
    cancel_reasons = meta["cancel_reason"]
    engine_types = commands["order_type"]  # a field view made once, not per event
    report_rows: list[tuple[int, ...]] = []
    fill_rows: list[tuple[int, ...]] = []
    rejected_inputs: list[tuple[int, int]] = []  # (command index, RejectReason)
    seq = self.next_report_seq
    trade_id = self.next_trade_id
    first_input = batch.first_input_seq
    liquidity_taker, liquidity_maker = api.LIQUIDITY_TAKER, api.LIQUIDITY_MAKER
    fill_kind, reject_kind = EventType.FILL, EventType.REJECT
    exec_fill, exec_partial = api.EXEC_TYPE_FILL, api.EXEC_TYPE_PARTIAL_FILL

    for event in events.tolist():
        order_id, account, maker_id, maker_account, price, qty, leaves, maker_leaves = event[:8]
        symbol_id, ci, kind, side, engine_reason = event[8], event[9], event[10], event[11], event[12]
        input_seq = first_input + ci
        if kind == fill_kind:
            taker_row = load(slot_of(order_id))
            maker_row = load(slot_of(maker_id))
            notional = price * qty
            for row, own_id, own_leaves, liquidity, other_account, other_id in (
                (taker_row, order_id, leaves, liquidity_taker, maker_account, maker_id),
                (maker_row, maker_id, maker_leaves, liquidity_maker, account, order_id),
            ):
                cum = row[F_CUM] + qty
                row[F_CUM] = cum
                total = row[F_NOTIONAL] + notional
                # Bounded at admission (risk.py); saturates rather than fail where an
                # instrument's limits were raised under orders still resting.
                row[F_NOTIONAL] = (
                    total if _INT64_MIN <= total <= _INT64_MAX else (_INT64_MAX if total > 0 else _INT64_MIN)
                )
                row[F_LEAVES] = own_leaves
                status = PARTIAL if own_leaves else FILLED
                row[F_STATUS] = status
                row[F_LAST] = seq
                own_account = row[F_ACCOUNT]
                report_rows.append(
                    (
                        seq, input_seq, own_id, own_account, row[F_PRICE], row[F_QUANTITY],
                        price, qty, own_leaves, cum, trade_id,
                        other_id if other_account == own_account else 0,
                        received, transact, symbol_id, 0, exec_partial if own_leaves else exec_fill,
                        row[F_SIDE], status, liquidity,
                    )
                )  # fmt: skip
                seq += 1
            buy_is_taker = side == 1
            fill_rows.append(
                (
                    trade_id, price, qty,
                    order_id if buy_is_taker else maker_id, account if buy_is_taker else maker_account,
                    maker_id if buy_is_taker else order_id, maker_account if buy_is_taker else account,
                    transact, symbol_id, side,
                )
            )  # fmt: skip
            trade_id += 1
            continue
        if kind == reject_kind:
            rejected_inputs.append(
                (ci, _ENGINE_TO_REASON.get(engine_reason, common.REJECT_REASON_INVALID_ORDER))
            )
            continue
        if order_id >= RESTORE_ORDER_ID_BASE:
            continue
        if kind not in _ORDER_EVENTS:
            log.error("apply_batch: engine event type %s ignored (input %d)", kind, input_seq)
            continue
        row = load(slot_of(order_id))
        reason: int = common.REJECT_REASON_UNSPECIFIED
        exec_type: int
        if kind == EventType.ACK:
            # The engine's type, not the client's: a stop-limit moved after it triggered is
            # entered on its new shard as the limit it became (handover.py), and is live.
            status = PENDING if int(engine_types[ci]) in _ENGINE_STOP_TYPES else NEW
            row[F_LEAVES] = qty
            exec_type = api.EXEC_TYPE_NEW
        elif kind == EventType.TRIGGERED:
            status = PARTIAL if row[F_CUM] else NEW
            exec_type = api.EXEC_TYPE_TRIGGERED
        elif kind == EventType.REPLACED:
            if row[F_STATUS] == PENDING:  # a stop still waiting: maybe a new trigger too
                status = PENDING
                new_stop = int(commands["stop_price"][ci])
                if new_stop:
                    row[F_STOP] = new_stop
                if row[F_TYPE] != api.ORDER_TYPE_STOP_MARKET:  # its engine price is a band edge
                    row[F_PRICE] = price
            else:
                status = PARTIAL if row[F_CUM] else NEW
                row[F_PRICE] = price
            row[F_QUANTITY] = row[F_CUM] + qty
            row[F_LEAVES] = qty
            exec_type = api.EXEC_TYPE_REPLACED
        elif kind == EventType.CANCELED:
            row[F_LEAVES] = leaves
            reason = _ENGINE_TO_REASON.get(engine_reason, common.REJECT_REASON_UNSPECIFIED)
            if engine_reason == Reason.USER_CANCEL and cancel_reasons[ci]:
                reason = int(cancel_reasons[ci])
            status = row[F_STATUS] if leaves else CANCELED
            exec_type = api.EXEC_TYPE_CANCELED
        elif kind == EventType.EXPIRED:
            row[F_LEAVES] = 0
            reason = _ENGINE_TO_REASON.get(engine_reason, common.REJECT_REASON_UNSPECIFIED)
            if engine_reason == Reason.UNFILLED and row[F_TYPE] in MARKET_TYPES and not row[F_CUM]:
                reason = common.REJECT_REASON_NO_LIQUIDITY
            status = EXPIRED
            exec_type = api.EXEC_TYPE_EXPIRED
        else:
            raise ValueError(f"unknown engine event type {kind}")
        row[F_STATUS] = status
        if reason:
            row[F_REASON] = reason
        row[F_LAST] = seq
        report_rows.append(
            (
                seq, input_seq, order_id, row[F_ACCOUNT], row[F_PRICE], row[F_QUANTITY],
                0, 0, row[F_LEAVES], row[F_CUM], 0, 0, received, transact, symbol_id,
                reason, exec_type, row[F_SIDE], status, 0,
            )
        )  # fmt: skip
        seq += 1

    # Inputs the engine refused: their orders never existed for the client.
    status_out = np.zeros(count, np.uint8)
    reason_out = np.zeros(count, np.uint16)
    for ci, reason in rejected_inputs:
        status_out[ci] = REJECTED
        reason_out[ci] = reason
        if actions[ci] == _ACTION_NEW:
            index = slot_of(int(commands["order_id"][ci]))
            row = load(index)
            row[F_STATUS] = REJECTED
            row[F_REASON] = reason
            row[F_LEAVES] = 0
            self._forget_client_id(index)

    if 0 < len(live) <= _ROW_BY_ROW_MAX:
        for index, row in live.items():
            row[F_UPDATED] = transact
            orders[index] = tuple(row)
    elif live:
        touched = np.fromiter(live.keys(), np.int64, len(live))
        rows_back = np.array([tuple(row) for row in live.values()], ORDER_DTYPE)
        rows_back["updated_ns"] = transact
        orders[touched] = rows_back
    if working_before:
        _exposure_of(
            self,
            np.fromiter(working_before.keys(), np.int64, len(working_before)),
            np.fromiter(working_before.values(), np.int64, len(working_before)),
        )
    self.next_report_seq = seq
    self.next_trade_id = trade_id
    reports = np.array(report_rows, REPORT_DTYPE) if report_rows else np.zeros(0, REPORT_DTYPE)
    fills = np.array(fill_rows, FILL_DTYPE) if fill_rows else np.zeros(0, FILL_DTYPE)
    if len(fills):
        self.trades += len(fills)
        self.traded_lots += int(fills["quantity"].sum())
        self._update_positions(fills)
    self._retain(reports)
    outcome = _outcome(self, batch, status_out, reason_out, reports, fills)
    if self.retire:
        for index in survivor_rows:
            row = live[index]
            if row[F_STATUS] not in OPEN_STATUSES:  # a survivor finished
                heapq.heappush(self._finished_survivors, (row[F_LAST], self._slot_ids.item(index)))
        self.retire_finished()
    return outcome


def _add_rows(
    self: ExecutionState, commands: np.ndarray, meta: np.ndarray, first_new_id: int, received_ns: int
) -> None:
    """The batch's new orders' rows, as ExecutionState._add_orders wrote them before the fold did
    (the state has handed out their ids already)."""
    count = len(commands)
    slots = (np.arange(first_new_id - 1, first_new_id - 1 + count) & self._mask).astype(np.int64)
    rows = np.zeros(count, ORDER_DTYPE)
    rows["account_id"] = commands["account_id"]
    rows["price"] = meta["client_price"]
    rows["stop_price"] = commands["stop_price"]
    rows["quantity"] = commands["qty"]
    rows["display"] = commands["display_qty"]
    rows["protection"] = meta["protection"]
    rows["leaves"] = commands["qty"]
    rows["created_ns"] = received_ns
    rows["updated_ns"] = received_ns
    rows["priority"] = meta["priority"]
    rows["symbol_id"] = commands["symbol_id"]
    rows["side"] = commands["side"]
    rows["order_type"] = meta["client_type"]
    rows["tif"] = meta["client_tif"]
    rows["stp"] = meta["client_stp"]
    rows["post_only"] = meta["post_only"]
    rows["status"] = 0  # not working until the engine's ACK (so exposure counts it from there)
    self.table[slots] = rows
    self._slot_ids[slots] = np.arange(first_new_id, first_new_id + count)


def _outcome(
    self: ExecutionState,
    batch: Batch,
    status: np.ndarray,
    reason: np.ndarray,
    reports: np.ndarray,
    fills: np.ndarray,
) -> BatchOutcome:
    """Each input's outcome from the rows after the batch and its own last report, as
    ExecutionState._outcome did before the fold computed it."""
    commands = batch.commands
    target = commands["order_id"].astype(np.int64)
    rows = self.rows_by_id(target)
    refused = status == REJECTED
    # The status each input left its order in: the order's state after the input's last event.
    # Reports carry it per event; the last report of an input about its own order wins.
    final_status = rows["status"].copy()
    final_reason = rows["reason"].copy()
    leaves = rows["leaves"].copy()
    cum = rows["cum"].copy()
    price = rows["price"].copy()
    quantity = rows["quantity"].copy()
    if len(reports):
        own = reports["order_id"] == target[reports["input_sequence"] - batch.first_input_seq]
        mine = reports[own]
        ci = mine["input_sequence"] - batch.first_input_seq
        final_status[ci] = mine["status"]
        final_reason[ci] = mine["reason"]
        leaves[ci] = mine["leaves"]
        cum[ci] = mine["cum"]
        price[ci] = mine["price"]
        quantity[ci] = mine["quantity"]
    status_out = np.where(refused, REJECTED, final_status).astype(np.uint8)
    reason_out = np.where(refused, reason, final_reason).astype(np.uint16)
    new_inputs = commands["action"] == _ACTION_NEW
    order_ids = np.where(refused & new_inputs, 0, target)
    kept = (batch.meta["priority_kept"] != 0) & ~refused
    return BatchOutcome(
        first_input_seq=batch.first_input_seq,
        received_ns=batch.received_ns,
        transact_ns=batch.transact_ns,
        order_ids=order_ids,
        status=status_out,
        reason=reason_out,
        price=price,
        quantity=quantity,
        leaves=np.where(refused & new_inputs, 0, leaves),
        cum=cum,
        priority_kept=kept,
        reports=reports,
        fills=fills,
    )


def _exposure_of(self: ExecutionState, indices: np.ndarray, before: np.ndarray) -> None:
    """The accounts' open lots and orders after rows ``indices`` changed (``before``: each
    row's open lots before the change), as ExecutionState._update_exposure_of did in Python
    before native/src/exposure.c."""
    if not len(indices):
        return
    if len(indices) <= 16:  # numpy's per-call overhead dominates for a few orders
        orders = self.table
        for index, was in zip(indices.tolist(), before.tolist(), strict=True):
            row = orders[index]
            now = int(row["leaves"]) if row["status"] in OPEN_STATUSES else 0
            if now == was:
                continue
            account_row = self.account_row(int(row["account_id"]))
            symbol = int(row["symbol_id"])
            if row["side"] == 1:
                self.open_buy[account_row, symbol] += now - was
            else:
                self.open_sell[account_row, symbol] += now - was
            self.open_orders[account_row] += (now > 0) - (was > 0)
        return
    rows = self.table[indices]
    after = np.where(_IS_OPEN.take(rows["status"]), rows["leaves"], 0)
    delta = after - before
    changed = delta != 0
    if not changed.any():
        return
    rows, delta, before, after = rows[changed], delta[changed], before[changed], after[changed]
    # One account_row lookup per account rather than per order (a batch is mostly few accounts).
    accounts, inverse = np.unique(rows["account_id"], return_inverse=True)
    account_rows = np.array([self.account_row(a) for a in accounts.tolist()], np.int64)[inverse]
    symbols = rows["symbol_id"].astype(np.int64)
    buys = rows["side"] == 1
    np.add.at(self.open_buy, (account_rows[buys], symbols[buys]), delta[buys])
    np.add.at(self.open_sell, (account_rows[~buys], symbols[~buys]), delta[~buys])
    np.add.at(self.open_orders, account_rows, (after > 0).astype(np.int64) - (before > 0))
