"""Everything the execution service knows, rebuilt exactly from its journal: books, orders, reports.

:class:`ExecutionState` has one writer (the event loop) and one way to change: :meth:`apply_batch`
with a journaled :class:`~services.execution.records.Batch`. The live order path calls it right
after risk; recovery calls it for every record of the journal tail. Because the engine is
deterministic and every input (with its timestamps) is in the record, both paths produce the same
orders, the same execution reports with the same sequence numbers, and the same trade ids.

Per-order state lives in one growable numpy structured array (:data:`ORDER_DTYPE`), indexed by
``order_id - 1`` (the service hands out order ids 1, 2, 3 ...); client order ids are the strings
the decoder produced, kept in a list and in a per-account dict for duplicate checks and lookups.
Execution reports are rows of :data:`REPORT_DTYPE`, kept in a ring for StreamExecutions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hftgate.matching import EngineConfig, MatchingEngine
from hftgate.matching.types import COMMAND_DTYPE, Action, EventType, Reason, StpMode
from hftgate.matching.types import OrderType as EngineType
from hftgate.native.errors import NativeError
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.records import Batch

log = logging.getLogger(__name__)

ORDER_DTYPE = np.dtype(
    [
        ("account_id", "<u8"),
        ("price", "<i8"),  # the client-visible limit price (0 for market types)
        ("stop_price", "<i8"),
        ("quantity", "<i8"),  # total, fills included
        ("display", "<i8"),
        ("protection", "<i8"),
        ("leaves", "<i8"),
        ("cum", "<i8"),
        ("notional", "<i8"),
        ("created_ns", "<i8"),
        ("updated_ns", "<i8"),
        ("last_exec_seq", "<i8"),
        ("priority", "<i4"),
        ("symbol_id", "<u4"),
        ("reason", "<u2"),  # common.proto RejectReason
        ("side", "u1"),
        ("order_type", "u1"),  # execution.proto OrderType
        ("tif", "u1"),
        ("stp", "u1"),
        ("post_only", "u1"),
        ("status", "u1"),  # execution.proto OrderStatus
    ]
)

REPORT_DTYPE = np.dtype(
    [
        ("sequence", "<i8"),
        ("input_sequence", "<i8"),
        ("order_id", "<i8"),
        ("account_id", "<u8"),
        ("price", "<i8"),
        ("quantity", "<i8"),
        ("last_price", "<i8"),
        ("last_quantity", "<i8"),
        ("leaves", "<i8"),
        ("cum", "<i8"),
        ("trade_id", "<i8"),
        ("counterparty_order_id", "<i8"),
        ("received_ns", "<i8"),
        ("transact_ns", "<i8"),
        ("symbol_id", "<u4"),
        ("reason", "<u2"),
        ("exec_type", "u1"),
        ("side", "u1"),
        ("status", "u1"),
        ("liquidity", "u1"),
    ]
)

#: One trade as the ledger and the market data feed need it.
FILL_DTYPE = np.dtype(
    [
        ("trade_id", "<i8"),
        ("price", "<i8"),
        ("quantity", "<i8"),
        ("buy_order_id", "<i8"),
        ("buy_account_id", "<u8"),
        ("sell_order_id", "<i8"),
        ("sell_account_id", "<u8"),
        ("transact_ns", "<i8"),
        ("symbol_id", "<u4"),
        ("aggressor_side", "u1"),
    ]
)

# execution.proto / common.proto values used on the hot path, as plain ints.
NEW: int = api.ORDER_STATUS_NEW
PENDING: int = api.ORDER_STATUS_PENDING_TRIGGER
PARTIAL: int = api.ORDER_STATUS_PARTIALLY_FILLED
FILLED: int = api.ORDER_STATUS_FILLED
CANCELED: int = api.ORDER_STATUS_CANCELED
EXPIRED: int = api.ORDER_STATUS_EXPIRED
REJECTED: int = api.ORDER_STATUS_REJECTED

# Positions of ORDER_DTYPE fields in a row tuple (``orders[i].item()``), for apply_batch's working copies.
_ORDER_FIELDS: tuple[str, ...] = tuple(ORDER_DTYPE.fields or ())
F_ACCOUNT, F_PRICE, F_QUANTITY = (_ORDER_FIELDS.index(n) for n in ("account_id", "price", "quantity"))
F_LEAVES, F_CUM, F_NOTIONAL = (_ORDER_FIELDS.index(n) for n in ("leaves", "cum", "notional"))
F_LAST, F_REASON, F_SIDE = (_ORDER_FIELDS.index(n) for n in ("last_exec_seq", "reason", "side"))
F_TYPE, F_STATUS = (_ORDER_FIELDS.index(n) for n in ("order_type", "status"))
F_UPDATED, F_STOP = _ORDER_FIELDS.index("updated_ns"), _ORDER_FIELDS.index("stop_price")
#: Up to this many touched orders (or fills, or reports) are written back one row at a time:
#: below it numpy's per-call set-up costs more than the per-row Python work.
_ROW_BY_ROW_MAX = 8
OPEN_STATUSES = (NEW, PENDING, PARTIAL)
# Plain ints for comparing with numpy values: ``numpy_scalar == Action.NEW`` makes numpy probe the
# IntEnum for the array protocol, ~4 µs a comparison (measured), against ~0.06 µs for an int.
_ACTION_NEW = int(Action.NEW)
MARKET_TYPES = (api.ORDER_TYPE_MARKET, api.ORDER_TYPE_STOP_MARKET)
STOP_TYPES = (api.ORDER_TYPE_STOP_LIMIT, api.ORDER_TYPE_STOP_MARKET)

_ENGINE_TO_REASON: dict[int, int] = {
    Reason.NONE: common.REJECT_REASON_UNSPECIFIED,
    Reason.INVALID_ACTION: common.REJECT_REASON_INVALID_ORDER,
    Reason.INVALID_SIDE: common.REJECT_REASON_INVALID_ORDER,
    Reason.INVALID_TYPE: common.REJECT_REASON_INVALID_ORDER,
    Reason.INVALID_TIF: common.REJECT_REASON_INVALID_ORDER,
    Reason.INVALID_QTY: common.REJECT_REASON_INVALID_QUANTITY,
    Reason.INVALID_PRICE: common.REJECT_REASON_INVALID_PRICE,
    Reason.INVALID_ORDER_ID: common.REJECT_REASON_INVALID_ORDER,
    Reason.INVALID_COMBINATION: common.REJECT_REASON_INVALID_ORDER,
    Reason.INVALID_STP_MODE: common.REJECT_REASON_INVALID_ORDER,
    Reason.UNKNOWN_SYMBOL: common.REJECT_REASON_UNKNOWN_SYMBOL,
    Reason.DUPLICATE_ORDER_ID: common.REJECT_REASON_INVALID_ORDER,
    Reason.UNKNOWN_ORDER: common.REJECT_REASON_UNKNOWN_ORDER,
    Reason.ACCOUNT_MISMATCH: common.REJECT_REASON_NOT_OWNER,
    Reason.BOOK_FULL: common.REJECT_REASON_UNAVAILABLE,
    Reason.POST_ONLY_WOULD_TAKE: common.REJECT_REASON_POST_ONLY_WOULD_TAKE,
    Reason.NO_LIQUIDITY: common.REJECT_REASON_NO_LIQUIDITY,
    Reason.NOT_REPLACEABLE: common.REJECT_REASON_INVALID_ORDER,
    Reason.USER_CANCEL: common.REJECT_REASON_UNSPECIFIED,
    Reason.CANCEL_ALL: common.REJECT_REASON_UNSPECIFIED,
    Reason.SELF_TRADE: common.REJECT_REASON_SELF_TRADE,
    Reason.UNFILLED: common.REJECT_REASON_UNSPECIFIED,
    Reason.FOK_UNFILLABLE: common.REJECT_REASON_FOK_UNFILLABLE,
    Reason.REPRICED: common.REJECT_REASON_UNSPECIFIED,
}
REASON_TEXT: dict[int, str] = {
    common.REJECT_REASON_UNKNOWN_SYMBOL: "unknown symbol",
    common.REJECT_REASON_INVALID_QUANTITY: "quantity must be a positive number of lots",
    common.REJECT_REASON_INVALID_PRICE: "price missing, zero, negative or not allowed for this order type",
    common.REJECT_REASON_OFF_TICK: "price is off the instrument's tick grid",
    common.REJECT_REASON_OFF_LOT: "quantity is off the instrument's lot grid",
    common.REJECT_REASON_PRICE_BAND: "price is outside the instrument's band around its reference price",
    common.REJECT_REASON_MAX_QUANTITY: "quantity exceeds the instrument's maximum order quantity",
    common.REJECT_REASON_MAX_NOTIONAL: "notional exceeds the instrument's maximum",
    common.REJECT_REASON_POSITION_LIMIT: "the order could take the account past its position limit",
    common.REJECT_REASON_OPEN_ORDER_LIMIT: "the account already has its maximum number of open orders",
    common.REJECT_REASON_RATE_LIMIT: "the account exceeded its order rate limit",
    common.REJECT_REASON_KILL_SWITCH: "the account's kill switch is on",
    common.REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID: "client order id already used by this account",
    common.REJECT_REASON_UNKNOWN_ORDER: "no such open order",
    common.REJECT_REASON_NOT_OWNER: "the order belongs to another account",
    common.REJECT_REASON_FOK_UNFILLABLE: "fill-or-kill order could not be filled completely",
    common.REJECT_REASON_POST_ONLY_WOULD_TAKE: "post-only order would have taken liquidity",
    common.REJECT_REASON_NO_LIQUIDITY: "no liquidity within the protective price bound",
    common.REJECT_REASON_SELF_TRADE: "self-trade prevention removed the order",
    common.REJECT_REASON_INVALID_ORDER: "invalid combination of order fields",
    common.REJECT_REASON_TRADING_HALTED: "trading in the instrument is halted",
    common.REJECT_REASON_UNAVAILABLE: "the service cannot take the input now",
    common.REJECT_REASON_INTERNAL: "the input could not be applied (an internal fault); nothing changed",
}

#: The reason of inputs refused after they were journaled, because their batch could not apply
#: (see ExecutionState.apply_batch): "the service cannot take the input now".
INTERNAL_REJECT_REASON: int = common.REJECT_REASON_INTERNAL
_INT64_MAX = (1 << 63) - 1
_INT64_MIN = -(1 << 63)
_ORDER_EVENTS = frozenset(
    int(k)
    for k in (EventType.ACK, EventType.TRIGGERED, EventType.REPLACED, EventType.CANCELED, EventType.EXPIRED)
)

# Ids of the orders recovery uses to set a book's last trade price; above any id the service hands out.
RESTORE_ORDER_ID_BASE = (1 << 63) - 16


@dataclass(slots=True)
class BatchOutcome:
    """What one applied batch produced (all arrays, index i answering the batch's input i)."""

    first_input_seq: int
    received_ns: int
    transact_ns: int
    order_ids: np.ndarray  # int64; 0 for a rejected NEW
    status: np.ndarray  # uint8 OrderStatus after the input (REJECTED when the engine refused it)
    reason: np.ndarray  # uint16 RejectReason
    price: np.ndarray
    quantity: np.ndarray
    leaves: np.ndarray
    cum: np.ndarray
    priority_kept: np.ndarray  # bool
    reports: np.ndarray  # REPORT_DTYPE
    fills: np.ndarray  # FILL_DTYPE


class ExecutionState:
    """Books, orders, positions and reports; changed only by :meth:`apply_batch`."""

    def __init__(self, engine_config: EngineConfig, retained_reports: int) -> None:
        self.engine_config = engine_config
        self.engine = MatchingEngine(engine_config, symbols=())
        self.symbol_ids: dict[str, int] = {}
        self.symbol_names: list[str] = []
        self.account_names: dict[int, str] = {}
        self._account_rows: dict[int, int] = {}
        self.orders = np.zeros(1024, ORDER_DTYPE)
        self.order_count = 0  # order ids 1 .. order_count exist
        self.client_ids: list[str] = []
        self.client_id_index: dict[int, dict[str, int]] = {}
        self.next_input_seq = 1
        self.next_report_seq = 1
        self.next_trade_id = 1
        # Per account row x symbol id: net position and lots working on each side; open orders per row.
        self.position = np.zeros((4, engine_config.max_symbols), np.int64)
        self.open_buy = np.zeros((4, engine_config.max_symbols), np.int64)
        self.open_sell = np.zeros((4, engine_config.max_symbols), np.int64)
        self.open_orders = np.zeros(4, np.int64)
        self.reports = np.zeros(max(1, retained_reports), REPORT_DTYPE)
        self.trades = 0
        self.traded_lots = 0
        #: Batches apply_batch refused as a whole because they did not fit the state (see _misfit).
        self.refused_batches = 0

    # --- names ---------------------------------------------------------------------------------

    def add_symbol(self, symbol_id: int, name: str) -> None:
        if symbol_id != len(self.symbol_names):
            raise ValueError(
                f"symbol id {symbol_id} for {name!r} where {len(self.symbol_names)} was expected"
            )
        self.engine.add_symbol(symbol_id)
        self.symbol_ids[name] = symbol_id
        self.symbol_names.append(name)

    def add_account(self, account_id: int, name: str) -> None:
        self.account_names[account_id] = name
        self.account_row(account_id)

    def account_row(self, account_id: int) -> int:
        row = self._account_rows.get(account_id)
        if row is None:
            row = len(self._account_rows)
            self._account_rows[account_id] = row
            if row >= len(self.open_orders):
                grow = len(self.open_orders)
                self.position = np.vstack((self.position, np.zeros_like(self.position[:grow])))
                self.open_buy = np.vstack((self.open_buy, np.zeros_like(self.open_buy[:grow])))
                self.open_sell = np.vstack((self.open_sell, np.zeros_like(self.open_sell[:grow])))
                self.open_orders = np.concatenate((self.open_orders, np.zeros(grow, np.int64)))
        return row

    # --- orders ----------------------------------------------------------------------------------

    def _reserve_orders(self, count: int) -> None:
        needed = self.order_count + count
        if needed > len(self.orders):
            grown = np.zeros(max(needed, 2 * len(self.orders)), ORDER_DTYPE)
            grown[: self.order_count] = self.orders[: self.order_count]
            self.orders = grown

    def order_id_for(self, account_id: int, client_order_id: str) -> int:
        """The order id of the account's order with this client order id, or 0."""
        return self.client_id_index.get(account_id, {}).get(client_order_id, 0)

    def order(self, order_id: int) -> np.void | None:
        if not 1 <= order_id <= self.order_count:
            return None
        record: np.void = self.orders[order_id - 1]
        return record

    def open_order_ids(self, account_id: int, symbol_id: int | None, side: int) -> np.ndarray:
        """Ids of the account's working orders (optionally one symbol/side), oldest first."""
        table = self.orders[: self.order_count]
        mask = (table["account_id"] == account_id) & np.isin(table["status"], OPEN_STATUSES)
        if symbol_id is not None:
            mask &= table["symbol_id"] == symbol_id
        if side:
            mask &= table["side"] == side
        return np.nonzero(mask)[0].astype(np.int64) + 1

    # --- the one way state changes -----------------------------------------------------------------

    def apply_batch(self, batch: Batch) -> BatchOutcome:
        """Run one journaled batch through the engine and fold its events into the orders.

        Never raises for a batch's content (issue #13: nothing journaled may fail to apply): a
        batch that does not fit the state (input or order ids out of turn, client ids that do not
        decode) changes nothing and comes back with every input REJECTED, reason
        :data:`INTERNAL_REJECT_REASON`, live and on replay alike; the arithmetic on prices,
        quantities and notionals is bounded at admission (risk.py) and the notional saturates
        at int64's maximum besides. An exception that still escapes is a bug: the caller
        contains it (core.py fails stop, recovery.py quarantines the record).
        """
        commands, meta = batch.commands, batch.meta
        count = len(commands)
        actions = commands["action"]
        first_new_id = self.order_count + 1
        if count == 1:  # SubmitOrder, CancelOrder, ReplaceOrder: no masks for one command
            new_count = 1 if actions[0] == _ACTION_NEW else 0
            new_mask = None
        else:
            new_mask = actions == _ACTION_NEW
            new_count = int(new_mask.sum())
        problem = self._misfit(batch, new_mask, new_count, first_new_id)
        if problem is not None:
            return self._refuse(batch, problem)
        self.next_input_seq += count
        received, transact = batch.received_ns, batch.transact_ns
        if new_count:
            if new_mask is None:
                self._add_one_order(commands[0].item(), meta[0].item(), batch.client_ids, received)
            else:
                self._add_orders(commands[new_mask], meta[new_mask], batch.client_ids, received)

        events = self.engine.process(commands)

        # Every order the events touch is copied once into a Python list (fast to update per event)
        # and written back to the numpy table in one pass at the end.
        orders = self.orders
        live: dict[int, list[Any]] = {}
        working_before: dict[int, int] = {}  # order index -> lots it had working before this batch

        def load(index: int) -> list[Any]:
            row = live.get(index)
            if row is None:
                row = live[index] = list(orders[index].item())
                working_before[index] = row[F_LEAVES] if row[F_STATUS] in OPEN_STATUSES else 0
            return row

        if new_count:  # the batch's new orders all get events: copy them in one call
            for offset, values in enumerate(orders[first_new_id - 1 : first_new_id - 1 + new_count].tolist()):
                live[first_new_id - 1 + offset] = list(values)
                working_before[first_new_id - 1 + offset] = 0
        cancel_reasons = meta["cancel_reason"]
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
                taker_row = load(order_id - 1)
                maker_row = load(maker_id - 1)
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
                        total
                        if _INT64_MIN <= total <= _INT64_MAX
                        else (_INT64_MAX if total > 0 else _INT64_MIN)
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
            row = load(order_id - 1)
            reason: int = common.REJECT_REASON_UNSPECIFIED
            exec_type: int
            if kind == EventType.ACK:
                status = PENDING if row[F_TYPE] in STOP_TYPES else NEW
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
                index = int(commands["order_id"][ci]) - 1
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
        self._update_exposure(working_before)
        self.next_report_seq = seq
        self.next_trade_id = trade_id
        reports = np.array(report_rows, REPORT_DTYPE) if report_rows else np.zeros(0, REPORT_DTYPE)
        fills = np.array(fill_rows, FILL_DTYPE) if fill_rows else np.zeros(0, FILL_DTYPE)
        if len(fills):
            self.trades += len(fills)
            self.traded_lots += int(fills["quantity"].sum())
            self._update_positions(fills)
        self._retain(reports)
        return self._outcome(batch, status_out, reason_out, reports, fills)

    def _misfit(
        self, batch: Batch, new_mask: np.ndarray | None, new_count: int, first_new_id: int
    ) -> str | None:
        """Why ``batch`` cannot apply to this state without failing part-way (None when it can).

        Checked before anything changes. The live path builds batches that always fit; a batch
        that does not comes from a journal that is not this state's history (or a bug)."""
        commands = batch.commands
        count = len(commands)
        if batch.first_input_seq != self.next_input_seq:
            return f"batch starts at input {batch.first_input_seq}, {self.next_input_seq} expected"
        if len(batch.meta) != count:
            return f"batch has {count} commands but {len(batch.meta)} meta rows"
        if not new_count:
            return None
        if new_mask is None:
            order_id = int(commands["order_id"][0])
            if order_id != first_new_id:
                return f"batch order id {order_id} where {first_new_id} was expected"
            lengths_total = int(batch.meta["client_id_length"][0])
        else:
            ids = commands["order_id"][new_mask]
            if int(ids[0]) != first_new_id or not (np.diff(ids) == 1).all():
                return f"batch order ids {ids[0]}..{ids[-1]} where {first_new_id}.. was expected"
            lengths_total = int(batch.meta["client_id_length"][new_mask].sum())
        if lengths_total != len(batch.client_ids) or not batch.client_ids.isascii():
            return "batch client order ids do not match their lengths or are not ASCII"
        return None

    def _refuse(self, batch: Batch, problem: str) -> BatchOutcome:
        """Every input of a batch that cannot apply: REJECTED with :data:`INTERNAL_REJECT_REASON`,
        nothing changed except that its input sequence numbers are used up (they are journaled)."""
        count = len(batch.commands)
        if batch.first_input_seq == self.next_input_seq:
            self.next_input_seq += count
        self.refused_batches += 1
        log.error("apply_batch: batch at input %d refused: %s", batch.first_input_seq, problem)
        is_new = batch.commands["action"] == _ACTION_NEW
        zeros = np.zeros(count, np.int64)
        return BatchOutcome(
            first_input_seq=batch.first_input_seq,
            received_ns=batch.received_ns,
            transact_ns=batch.transact_ns,
            order_ids=np.where(is_new, 0, batch.commands["order_id"]).astype(np.int64),
            status=np.full(count, REJECTED, np.uint8),
            reason=np.full(count, INTERNAL_REJECT_REASON, np.uint16),
            price=zeros,
            quantity=zeros.copy(),
            leaves=zeros.copy(),
            cum=zeros.copy(),
            priority_kept=np.zeros(count, bool),
            reports=np.zeros(0, REPORT_DTYPE),
            fills=np.zeros(0, FILL_DTYPE),
        )

    def _add_orders(
        self, commands: np.ndarray, meta: np.ndarray, client_ids: bytes, received_ns: int
    ) -> None:
        count = len(commands)
        self._reserve_orders(count)
        start = self.order_count
        rows = self.orders[start : start + count]
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
        self.order_count += count
        text = client_ids.decode("ascii")
        offset = 0
        index = self.client_id_index
        for position, (length, account) in enumerate(
            zip(meta["client_id_length"].tolist(), commands["account_id"].tolist(), strict=True)
        ):
            client_id = text[offset : offset + length]
            offset += length
            self.client_ids.append(client_id)
            per_account = index.get(account)
            if per_account is None:
                per_account = index[account] = {}
            per_account[client_id] = start + position + 1

    def _add_one_order(
        self, command: tuple[int, ...], meta: tuple[int, ...], client_ids: bytes, received_ns: int
    ) -> None:
        """:meth:`_add_orders` for one NEW command (its COMMAND_DTYPE and META_DTYPE rows as tuples)."""
        _, account, _, qty, stop, display, symbol_id, _, _, side = command[:10]
        client_price, protection, _, priority, client_type, client_tif, client_stp, post_only = meta[:8]
        self._reserve_orders(1)
        start = self.order_count
        self.orders[start] = (
            account, client_price, stop, qty, display, protection, qty, 0, 0, received_ns, received_ns, 0,
            priority, symbol_id, 0, side, client_type, client_tif, client_stp, post_only, 0,
        )  # fmt: skip
        self.order_count += 1
        client_id = client_ids[: meta[8]].decode("ascii")
        self.client_ids.append(client_id)
        per_account = self.client_id_index.get(account)
        if per_account is None:
            per_account = self.client_id_index[account] = {}
        per_account[client_id] = start + 1

    def _forget_client_id(self, index: int) -> None:
        """A refused order's client id may be used again."""
        account = int(self.orders["account_id"][index])
        per_account = self.client_id_index.get(account)
        if per_account is not None and per_account.get(self.client_ids[index]) == index + 1:
            del per_account[self.client_ids[index]]

    def _update_exposure(self, working_before: dict[int, int]) -> None:
        if not working_before:
            return
        if len(working_before) <= 16:  # numpy's per-call overhead dominates for a few orders
            orders = self.orders
            for index, was in working_before.items():
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
        indices = np.fromiter(working_before.keys(), np.int64, len(working_before))
        before = np.fromiter(working_before.values(), np.int64, len(working_before))
        rows = self.orders[indices]
        after = np.where(np.isin(rows["status"], OPEN_STATUSES), rows["leaves"], 0)
        delta = after - before
        changed = delta != 0
        if not changed.any():
            return
        rows, delta, before, after = rows[changed], delta[changed], before[changed], after[changed]
        account_rows = np.fromiter((self.account_row(a) for a in rows["account_id"].tolist()), np.int64)
        symbols = rows["symbol_id"].astype(np.int64)
        buys = rows["side"] == 1
        np.add.at(self.open_buy, (account_rows[buys], symbols[buys]), delta[buys])
        np.add.at(self.open_sell, (account_rows[~buys], symbols[~buys]), delta[~buys])
        np.add.at(self.open_orders, account_rows, (after > 0).astype(np.int64) - (before > 0))

    def _update_positions(self, fills: np.ndarray) -> None:
        if len(fills) <= _ROW_BY_ROW_MAX:
            for quantity, buyer, seller, symbol in zip(
                fills["quantity"].tolist(),
                fills["buy_account_id"].tolist(),
                fills["sell_account_id"].tolist(),
                fills["symbol_id"].tolist(),
                strict=True,
            ):
                # account_row may grow the tables: look them up after it.
                buyer_row, seller_row = self.account_row(buyer), self.account_row(seller)
                self.position[buyer_row, symbol] += quantity
                self.position[seller_row, symbol] -= quantity
            return
        symbols = fills["symbol_id"].astype(np.int64)
        buyers = np.fromiter((self.account_row(a) for a in fills["buy_account_id"].tolist()), np.int64)
        sellers = np.fromiter((self.account_row(a) for a in fills["sell_account_id"].tolist()), np.int64)
        np.add.at(self.position, (buyers, symbols), fills["quantity"])
        np.subtract.at(self.position, (sellers, symbols), fills["quantity"])

    def _retain(self, reports: np.ndarray) -> None:
        if not len(reports):
            return
        ring = self.reports
        capacity = len(ring)
        if len(reports) <= _ROW_BY_ROW_MAX:
            for row in reports.tolist():
                ring[(row[0] - 1) % capacity] = row
            return
        if len(reports) >= capacity:
            reports = reports[-capacity:]
        positions = (reports["sequence"] - 1) % capacity
        ring[positions] = reports

    def retained_reports_after(self, after_sequence: int) -> np.ndarray:
        """Retained reports with sequence > ``after_sequence``, in order."""
        ring = self.reports
        newest = self.next_report_seq - 1
        oldest = max(1, newest - len(ring) + 1)
        start = max(after_sequence + 1, oldest)
        if start > newest:
            return np.zeros(0, REPORT_DTYPE)
        positions = (np.arange(start, newest + 1) - 1) % len(ring)
        return ring[positions]

    @property
    def oldest_retained_report(self) -> int:
        return max(1, self.next_report_seq - len(self.reports))

    def _outcome(
        self, batch: Batch, status: np.ndarray, reason: np.ndarray, reports: np.ndarray, fills: np.ndarray
    ) -> BatchOutcome:
        if len(batch.commands) == 1:
            return self._outcome_of_one(batch, int(status[0]), int(reason[0]), reports, fills)
        commands = batch.commands
        target = commands["order_id"].astype(np.int64)
        indices = target - 1
        rows = self.orders[indices]
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

    def _outcome_of_one(
        self, batch: Batch, status: int, reason: int, reports: np.ndarray, fills: np.ndarray
    ) -> BatchOutcome:
        """:meth:`_outcome` for a batch of one input, from Python values instead of masks."""
        target = int(batch.commands["order_id"][0])
        refused = status == REJECTED
        is_new = batch.commands["action"][0] == _ACTION_NEW
        row = self.orders[target - 1].item()
        final = (row[F_STATUS], row[F_REASON], row[F_LEAVES], row[F_CUM], row[F_PRICE], row[F_QUANTITY])
        # The last report of the input about its own order wins (every report here is the input's).
        for sequence_row in reversed(reports.tolist()) if len(reports) else ():
            if sequence_row[2] == target:
                final = (
                    sequence_row[18], sequence_row[15], sequence_row[8], sequence_row[9],
                    sequence_row[4], sequence_row[5],
                )  # fmt: skip
                break
        final_status, final_reason, leaves, cum, price, quantity = final
        return BatchOutcome(
            first_input_seq=batch.first_input_seq,
            received_ns=batch.received_ns,
            transact_ns=batch.transact_ns,
            order_ids=np.array([0 if refused and is_new else target], np.int64),
            status=np.array([REJECTED if refused else final_status], np.uint8),
            reason=np.array([reason if refused else final_reason], np.uint16),
            price=np.array([price], np.int64),
            quantity=np.array([quantity], np.int64),
            leaves=np.array([0 if refused and is_new else leaves], np.int64),
            cum=np.array([cum], np.int64),
            priority_kept=np.array([bool(batch.meta["priority_kept"][0]) and not refused], bool),
            reports=reports,
            fills=fills,
        )

    # --- snapshots -----------------------------------------------------------------------------

    def engine_orders(self) -> list[np.ndarray]:
        """Per symbol id: its resting bids, asks, buy stops and sell stops (ORDER_INFO_DTYPE), concatenated
        in the order they must be re-entered."""
        books = []
        for symbol_id in range(len(self.symbol_names)):
            parts = [
                self.engine.orders(side, symbol=symbol_id, pending_stops=stops)  # type: ignore[arg-type]
                for stops in (False, True)
                for side in (1, 2)
            ]
            books.append(np.concatenate(parts))
        return books

    def last_trade_prices(self) -> list[int | None]:
        return [self.engine.last_trade_price(symbol_id) for symbol_id in range(len(self.symbol_names))]

    def restore_books(self, books: Iterable[np.ndarray], last_trades: Iterable[int | None]) -> None:
        """Rebuild the engine's books from :meth:`engine_orders` / :meth:`last_trade_prices` output.

        Per book: the last trade price first (an anonymous trade on the empty book sets what
        stops compare with), then every resting order put back exactly as it was (shown
        slice and iceberg reserve included) in priority order, then the pending stops
        re-entered in trigger order.
        """
        for symbol_id, (orders, last) in enumerate(zip(books, last_trades, strict=True)):
            if last is not None:
                self._process_restore_commands(
                    symbol_id,
                    [
                        (RESTORE_ORDER_ID_BASE + offset, 0, last, 1, 0, 0, symbol_id, 0, _ACTION_NEW, side,
                         int(EngineType.LIMIT), 1, 0, int(StpMode.NONE), 0)
                        for offset, side in ((0, 2), (1, 1))
                    ],
                )  # fmt: skip
            pending = orders["is_pending_stop"] != 0
            try:
                self.engine.restore_resting(orders[~pending])
            except NativeError as exc:
                raise ValueError(
                    f"snapshot of {self.symbol_names[symbol_id]} could not be restored: {exc}"
                ) from exc
            stops: list[tuple[int, ...]] = []
            for row in orders[pending].tolist():
                (
                    order_id,
                    account,
                    price,
                    stop,
                    _visible,
                    hidden,
                    display,
                    _sym,
                    side,
                    otype,
                    tif,
                    flags,
                    stp,
                ) = row[:13]
                stops.append(
                    (order_id, account, price, hidden, stop, display, symbol_id, 0, _ACTION_NEW, side, otype,
                     tif, flags, stp, 0)
                )  # fmt: skip
            self._process_restore_commands(symbol_id, stops)

    def _process_restore_commands(self, symbol_id: int, commands: list[tuple[int, ...]]) -> None:
        if not commands:
            return
        events = self.engine.process(np.array(commands, COMMAND_DTYPE))
        bad = events[(events["type"] == int(EventType.REJECT)) | (events["type"] == int(EventType.CANCELED))]
        if len(bad):
            raise ValueError(f"snapshot of {self.symbol_names[symbol_id]} could not be re-entered: {bad[:3]}")
