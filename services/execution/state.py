"""Everything the execution service knows, rebuilt exactly from its journal: books, orders, reports.

:class:`ExecutionState` has one writer (the event loop) and one way to change: :meth:`apply_batch`
with a journaled :class:`~services.execution.records.Batch`. The live order path calls it right
after risk; recovery calls it for every record of the journal tail. Because the engine is
deterministic and every input (with its timestamps) is in the record, both paths produce the same
orders, the same execution reports with the same sequence numbers, and the same trade ids.

Execution reports are rows of :data:`REPORT_DTYPE`, kept in a ring of ``retained_reports`` for
StreamExecutions.

Orders, and their retirement (issue #13: memory must not grow with every order)
---------------------------------------------------------------------------------
Per-order state is one row of :data:`ORDER_DTYPE` in :attr:`ExecutionState.table`, its client
order id in a parallel object array and its order id in another (0 = a free row). The service
hands out order ids 1, 2, 3 ...; a row is found with :meth:`ExecutionState.slot_of` (one id) or
:meth:`~ExecutionState.slots_of` (an array), never by ``order_id - 1``. The table has two parts:

* **the window**, a ring of ``2^k`` rows: order id ``i > order_base`` lives in row
  ``(i - 1) & (ring - 1)``. New orders go to the top; the ring grows (doubling) only while the
  window does, that is during warm-up, until it holds ``retain_orders`` ids.
* **the survivors**, rows after the ring: orders older than the window (id <= ``order_base``) that
  are still needed, found through a dict (id -> row), their rows reused through a free list.

At the end of every :meth:`~ExecutionState.apply_batch` (after its outcome is computed),
:meth:`~ExecutionState._retire` moves ``order_base`` up to ``order_count - retain_orders``. Each
order it passes is **retired** (its row, client id and index entry dropped: nothing of it stays in
memory) if it is finished (not NEW/PARTIALLY_FILLED/PENDING_TRIGGER) and its last report has left
the report ring; otherwise it moves to the survivors. A finished survivor is retired as soon as its
last report leaves the ring (a heap keyed by that report's sequence); a working one stays until it
finishes. So a finished order is retained while it is among the newest ``retain_orders`` order ids
**or** while any of its reports is still retained for StreamExecutions, whichever is longer; a
working order is always retained (the engine bounds those by ``max_live_orders``).

Why this layout (against the alternatives of the last session's analysis):

* *base offset plus survivors with compaction* copies the retained rows (~20 ms per 500 k) every
  retain/2 orders: a pause far above the unary p99. The ring is that design without the copy:
  advancing the base costs O(orders passed), i.e. O(1) per new order, paid inside the batch
  that made it (one step for a SubmitOrder), so there is no pause at all after warm-up.
* *an advancing numpy view* is blocked by one long-resting GTC order; here it just moves aside.
* *fixed-size chunks* would have needed every vectorized path rewritten for a chunk index; here
  every path keeps one flat array and only turns ids into rows through ``slots_of``.

Retirement is deterministic: it depends only on the state (order ids, statuses, report sequence
numbers), never on time or on the snapshot schedule, so a replay of the journal retires exactly
the orders the live service retired, and a snapshot holds only the retained rows (bounded too).

What retirement changes for clients (documented in the API): GetOrder, CancelOrder, ReplaceOrder
on a retired order answer as for an unknown id (NOT_FOUND / UNKNOWN_ORDER; a finished order cannot
be canceled or replaced anyway), and a retired order's client order id may be used again by its
account. Its fills stay in the ledger (SQL) forever. ``ExecutionState(..., retire=False)`` keeps
every order (the offline tools that replay a whole journal use it).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

# np.unique imports numpy.ma the first time it runs (~10 ms here, measured): imported with this
# module, at start-up, so that the first batch a shard takes does not pay for it.
import numpy.ma

from hftgate import rows
from hftgate.matching import EngineConfig, MatchingEngine
from hftgate.matching.types import COMMAND_DTYPE, Action, EventType, Reason, Side, StpMode
from hftgate.matching.types import OrderType as EngineType
from hftgate.native.client_ids import (
    ROW_DTYPE,
    ClientIdIndex,
    ids_from_rows,
    ids_to_rows,
    joined,
    valid_client_id,
)
from hftgate.native.errors import NativeError
from hftgate.native.exposure import ExposureUpdate, UnknownAccount
from hftgate.native.order_fold import OrderFold
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.records import META_DTYPE, Batch

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

#: Up to this many touched orders (or fills, or reports) are written back one row at a time:
#: below it numpy's per-call set-up costs more than the per-row Python work.
_ROW_BY_ROW_MAX = 8
OPEN_STATUSES = (NEW, PENDING, PARTIAL)
#: ``_IS_OPEN[status]``: whether an order status (u1) is open, for whole arrays at once
#: (``np.isin`` costs ~13 us for 100 statuses, a lookup ~0.5 us).
_IS_OPEN = np.zeros(256, bool)
_IS_OPEN[list(OPEN_STATUSES)] = True
# Plain ints for comparing with numpy values: ``numpy_scalar == Action.NEW`` makes numpy probe the
# IntEnum for the array protocol, ~4 µs a comparison (measured), against ~0.06 µs for an int.
_ACTION_NEW = int(Action.NEW)
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

#: The order table's smallest ring and survivor area (rows); both grow by doubling.
_INITIAL_RING = 1024
#: The largest ring made up front for the retained window (ExecutionState._first_ring): 2^20 rows,
#: ~117 MB of order rows and 64 MB of client ids of address space, resident only as used.
_PREALLOCATED_RING_MAX = 1 << 20
#: Each row's client order id, as fixed-width bytes ("" for a free row): valid ids are 1..64 bytes
#: of printable ASCII, and numpy's S dtype holds them without a Python object per order. A string
#: object per retained order kept ~1 M small objects alive at the defaults, and which pymalloc
#: arenas they pinned decided how much memory the service kept (README: rss_bytes_per_order).
CLIENT_ID_DTYPE = ROW_DTYPE
_INITIAL_SPARE = 1024


# Ids of the orders recovery uses to set a book's last trade price; above any id the service hands out.
RESTORE_ORDER_ID_BASE = (1 << 63) - 16
_EVENT_FILL = int(EventType.FILL)


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


def is_purged(row: np.void) -> bool:
    """Whether an order row is a frozen copy :meth:`ExecutionState.purge_symbol` dropped (the order
    ended, or lives on, on other shards: this one cannot say how)."""
    return int(row["status"]) == CANCELED and int(row["reason"]) == common.REJECT_REASON_NOT_SHARD_OWNER


class ExecutionState:
    """Books, orders, positions and reports; changed only by :meth:`apply_batch`."""

    def __init__(
        self,
        engine_config: EngineConfig,
        retained_reports: int,
        *,
        retain_orders: int | None = None,
        retire: bool = True,
    ) -> None:
        self.engine_config = engine_config
        self.engine = MatchingEngine(engine_config, symbols=())
        self._folder = OrderFold(ORDER_DTYPE, REPORT_DTYPE, FILL_DTYPE, META_DTYPE, _ENGINE_TO_REASON)
        self.symbol_ids: dict[str, int] = {}
        self.symbol_names: list[str] = []
        self.account_names: dict[int, str] = {}
        self._account_rows: dict[int, int] = {}
        self._exposure = ExposureUpdate()
        #: Finished orders stay at least until this many newer order ids exist (see module docstring).
        self.retain_orders = max(1, retained_reports if retain_orders is None else retain_orders)
        self.retire = retire
        #: Orders: the window ring then the survivors (see the module docstring).
        ring = self._first_ring()
        self.table = np.zeros(ring, ORDER_DTYPE)
        self._slot_ids = np.zeros(ring, np.int64)  # order id in each row, 0 = free
        self._slot_client_ids = np.zeros(ring, CLIENT_ID_DTYPE)  # client order id in each row
        self._ring = ring
        self._mask = ring - 1
        self._survivor_slots: dict[int, int] = {}  # order id <= order_base -> its row
        self._free_slots: list[int] = []  # survivor rows free for reuse
        self._finished_survivors: list[tuple[int, int]] = []  # heap of (last report seq, order id)
        self.order_count = 0  # order ids 1 .. order_count were handed out
        self.order_base = 0  # ids <= order_base are survivors or retired; the rest are in the ring
        self.retired_orders = 0
        #: (account, client order id) -> order id, for the orders held (hft_client_ids.h).
        self.client_id_index = ClientIdIndex()
        self._one_slot = np.zeros(1, np.int64)  # _forget_client_id's slot: no array per call
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

    @property
    def orders(self) -> OrdersById:
        """Read-only view of the retained order rows by ``order_id - 1`` (see :class:`OrdersById`)."""
        return OrdersById(self)

    @orders.setter
    def orders(self, rows: np.ndarray) -> None:
        """Make ``rows`` (row i = order id i + 1) the order table (client ids all empty)."""
        self.restore_orders(np.arange(1, len(rows) + 1), np.asarray(rows), [""] * len(rows), len(rows), 0)

    @property
    def client_ids(self) -> ClientIdsById:
        """Read-only view of the retained orders' client order ids by ``order_id - 1``."""
        return ClientIdsById(self)

    @property
    def retained_order_count(self) -> int:
        """Orders held in memory: the window plus the survivors."""
        return self.order_count - self.order_base + len(self._survivor_slots)

    def slot_of(self, order_id: int) -> int:
        """The table row of a retained order, or -1 (never handed out, or retired)."""
        if order_id > self.order_base:
            return (order_id - 1) & self._mask if order_id <= self.order_count else -1
        return self._survivor_slots.get(order_id, -1)

    def slots_of(self, order_ids: np.ndarray) -> np.ndarray:
        """:meth:`slot_of` of each id (int64 array, -1 where the order is not retained)."""
        ids = np.asarray(order_ids, np.int64)
        slots = (ids - 1) & self._mask
        outside = (ids <= self.order_base) | (ids > self.order_count)
        if outside.any():
            get, base = self._survivor_slots.get, self.order_base
            slots[outside] = [get(i, -1) if 0 < i <= base else -1 for i in ids[outside].tolist()]
        return slots

    def client_id_at(self, slot: int) -> str:
        """The client order id of the order in table row ``slot``."""
        client_id: bytes = self._slot_client_ids[slot]
        return client_id.decode("ascii")

    def client_ids_of(self, order_ids: np.ndarray) -> list[str]:
        """The client order id of each of ``order_ids`` ("" for an order not retained, as
        :class:`ClientIdsById` answers): one lookup for a whole page of reports."""
        return [text.decode("ascii") for text in self._client_id_rows(order_ids).tolist()]

    def client_id_text_of(self, order_ids: np.ndarray) -> tuple[bytes, np.ndarray]:
        """:meth:`client_ids_of` as one ASCII text and each id's byte length (int64; 0 for an
        order not retained), read from the rows in C: no ``str`` per order (a stream's page of
        reports goes to the wire encoder this way)."""
        return ids_from_rows(self._client_id_rows(order_ids))

    def _client_id_rows(self, order_ids: np.ndarray) -> np.ndarray:
        """The client id rows of ``order_ids`` (a copy; empty for an order not retained)."""
        slots = self.slots_of(order_ids)
        held = slots >= 0
        if held.all():
            return self._slot_client_ids[slots]
        texts = self._slot_client_ids[np.where(held, slots, 0)]
        texts[~held] = b""
        return texts

    def client_id_of(self, order_id: int) -> str | None:
        """The client order id of a retained order (None when not retained)."""
        slot = self.slot_of(order_id)
        return None if slot < 0 else self.client_id_at(slot)

    def rows_by_id(self, order_ids: np.ndarray) -> np.ndarray:
        """Copies of the rows of ``order_ids`` (ORDER_DTYPE; an all-zero row where not retained)."""
        slots = self.slots_of(order_ids)
        missing = slots < 0
        if not missing.any():
            return rows.take(self.table, slots)
        found = rows.take(self.table, np.maximum(slots, 0))
        found[missing] = np.zeros(1, ORDER_DTYPE)
        return found

    def retained_orders(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Every retained order, by ascending id: (ids, rows, client order ids)."""
        used = np.nonzero(self._slot_ids)[0]
        ids = self._slot_ids[used]
        order = np.argsort(ids, kind="stable")
        used, ids = used[order], ids[order]
        return (
            ids,
            rows.take(self.table, used),
            [text.decode("ascii") for text in self._slot_client_ids[used].tolist()],
        )

    def restore_orders(
        self,
        order_ids: np.ndarray,
        orders: np.ndarray,
        client_ids: list[str],
        order_count: int,
        order_base: int,
    ) -> None:
        """Replace the order table with retained orders as :meth:`retained_orders` gave them.

        ``order_count`` is the last order id handed out and ``order_base`` the window's base; the
        retirement rule then runs once, so that a table from before retirement existed (every order
        since the first) is cut here, in recovery, rather than on the first batch after it."""
        ids = np.asarray(order_ids, np.int64)
        self.order_count, self.order_base = int(order_count), int(order_base)
        window = max(1, self.order_count - self.order_base)
        ring = self._first_ring()
        while ring < window:
            ring *= 2
        older = ids <= self.order_base
        spare = max(_INITIAL_SPARE, int(older.sum()))
        self.table = np.zeros(ring + spare, ORDER_DTYPE)
        self._slot_ids = np.zeros(ring + spare, np.int64)
        self._slot_client_ids = np.zeros(ring + spare, CLIENT_ID_DTYPE)
        self._ring, self._mask = ring, ring - 1
        slots = (ids - 1) & self._mask
        survivors = np.nonzero(older)[0]
        slots[survivors] = ring + np.arange(len(survivors))
        self._survivor_slots = dict(zip(ids[survivors].tolist(), slots[survivors].tolist(), strict=True))
        self._free_slots = list(range(ring + spare - 1, ring + len(survivors) - 1, -1))
        rows.put(self.table, slots, orders.astype(ORDER_DTYPE, copy=False), slice(None))  # (as whole records)
        self._slot_ids[slots] = ids
        self._slot_client_ids[slots] = ids_to_rows(*joined(client_ids))
        self._finished_survivors = []
        # A rejected order's client id is free again; an empty one (a table set directly) is none.
        statuses, accounts, lasts = orders["status"], orders["account_id"], orders["last_exec_seq"]
        indexed = [
            position
            for position, (client_id, status) in enumerate(zip(client_ids, statuses.tolist(), strict=True))
            if client_id and status != REJECTED and valid_client_id(client_id)
        ]
        text, lengths = joined([client_ids[p] for p in indexed])
        self.client_id_index.clear()
        self.client_id_index.add(accounts[indexed], text, lengths, ids[indexed])
        for position, (order_id, status) in enumerate(zip(ids.tolist(), statuses.tolist(), strict=True)):
            if order_id <= self.order_base and status not in OPEN_STATUSES:
                self._finished_survivors.append((int(lasts[position]), order_id))
        heapq.heapify(self._finished_survivors)

    def _first_ring(self) -> int:
        """The ring's rows to start with: room for the whole retained window (up to
        :data:`_PREALLOCATED_RING_MAX` rows), so that it does not grow while the service warms up.

        Each doubling copied every retained row into a new table while the loop waited (~10-30 ms
        for 131,072 rows, most of it faulting in the new pages). Zeroed rows not yet written cost
        no resident memory: the pages come in as order ids reach them, as they did when it grew.
        """
        ring = _INITIAL_RING
        if self.retire:
            while ring <= self.retain_orders and ring < _PREALLOCATED_RING_MAX:
                ring *= 2
        return ring

    def _reserve_orders(self, count: int) -> None:
        """Room in the ring for ``count`` more order ids."""
        needed = self.order_count + count - self.order_base
        if needed > self._ring:
            ring = self._ring
            while ring < needed:
                ring *= 2
            self._resize(ring, len(self.table) - self._ring)

    def _resize(self, ring: int, spare: int) -> None:
        """Reallocate the table with a ring of ``ring`` rows and ``spare`` survivor rows."""
        old_ring, old_mask, old_spare = self._ring, self._mask, len(self.table) - self._ring
        table = np.zeros(ring + spare, ORDER_DTYPE)
        slot_ids = np.zeros(ring + spare, np.int64)
        client_ids = np.zeros(ring + spare, CLIENT_ID_DTYPE)
        ids = np.arange(self.order_base + 1, self.order_count + 1, dtype=np.int64)
        old_slots, new_slots = (ids - 1) & old_mask, (ids - 1) & (ring - 1)
        # As whole records (hftgate.rows): numpy's field-by-field copy of ORDER_DTYPE's 21 fields
        # took ~32 ms for 131,072 rows against ~1.6, a stall of the loop each time the ring doubles.
        rows.put(table, new_slots, self.table, old_slots)
        slot_ids[new_slots] = self._slot_ids[old_slots]
        client_ids[new_slots] = self._slot_client_ids[old_slots]
        rows.put(table, slice(ring, ring + old_spare), self.table, slice(old_ring, None))
        slot_ids[ring : ring + old_spare] = self._slot_ids[old_ring:]
        client_ids[ring : ring + old_spare] = self._slot_client_ids[old_ring:]
        shift = ring - old_ring
        if shift:
            self._survivor_slots = {i: s + shift for i, s in self._survivor_slots.items()}
            self._free_slots = [s + shift for s in self._free_slots]
        self._free_slots.extend(range(ring + spare - 1, ring + old_spare - 1, -1))
        self.table, self._slot_ids, self._slot_client_ids = table, slot_ids, client_ids
        self._ring, self._mask = ring, ring - 1

    def order_id_for(self, account_id: int, client_order_id: str) -> int:
        """The order id of the account's order with this client order id, or 0."""
        return self.client_id_index.get(account_id, client_order_id)

    def order(self, order_id: int) -> np.void | None:
        """The row of a retained order (a view: do not write), or None."""
        slot = self.slot_of(order_id) if order_id > 0 else -1
        if slot < 0:
            return None
        record: np.void = self.table[slot]
        return record

    def open_order_ids(self, account_id: int, symbol_id: int | None, side: int) -> np.ndarray:
        """Ids of the account's working orders (optionally one symbol/side), oldest first."""
        table = self.table
        mask = (table["account_id"] == account_id) & np.isin(table["status"], OPEN_STATUSES)
        mask &= self._slot_ids != 0
        if symbol_id is not None:
            mask &= table["symbol_id"] == symbol_id
        if side:
            mask &= table["side"] == side
        return np.sort(self._slot_ids[mask])

    def handed_over_orders(self, symbol_id: int) -> np.ndarray:
        """The engine's working orders of ``symbol_id`` (ORDER_INFO_DTYPE): resting bids, resting
        asks, then pending stops of each side."""
        return np.concatenate(
            [
                self.engine.orders(side, symbol=symbol_id, pending_stops=stops)
                for stops in (False, True)
                for side in (Side.BUY, Side.SELL)
            ]
        )

    def purge_symbol(self, symbol_id: int, up_to_order_id: int) -> int:
        """Drop the working orders of a symbol whose book this shard handed over (those with ids
        up to ``up_to_order_id``: the copies it held when it handed the book over), with no report
        (journal record ``RECORD_PURGE``; issue #15's way back). Returns how many it dropped.

        They are frozen copies: the orders live on the shard the book went to, which reported
        every change of theirs since, so a report here (a CANCELED) would tell their owners a lie.
        The copies leave the engine, their rows close (status CANCELED, reason NOT_SHARD_OWNER,
        never shown: the order's id now names the copy that comes back with the book), their
        working lots leave the account's exposure and their client order ids are free again.
        Nothing else changes: no input or report sequence number is used, so a replay of the
        journal does exactly this again (a function of the state alone)."""
        if symbol_id >= len(self.symbol_names):
            return 0
        infos = self.handed_over_orders(symbol_id)
        infos = infos[infos["order_id"] <= up_to_order_id]
        count = len(infos)
        if not count:
            return 0
        order_ids = infos["order_id"].astype(np.int64)
        slots = self.slots_of(order_ids)
        commands = np.zeros(count, COMMAND_DTYPE)
        commands["order_id"] = order_ids
        commands["account_id"] = infos["account_id"]
        commands["symbol_id"] = symbol_id
        commands["action"] = int(Action.CANCEL)
        events = self.engine.process(commands)
        canceled = int((events["type"] == int(EventType.CANCELED)).sum())
        if canceled != count:  # a bug: say so, the rows are closed all the same
            log.error("purge of symbol %d: %d of %d orders left the engine", symbol_id, canceled, count)
        held = slots >= 0
        slots = slots[held]
        table = self.table
        working_before = dict(zip(slots.tolist(), table["leaves"][slots].tolist(), strict=True))
        table["status"][slots] = CANCELED
        table["leaves"][slots] = 0
        table["reason"][slots] = common.REJECT_REASON_NOT_SHARD_OWNER
        self._update_exposure(working_before)
        self._forget_client_ids(slots)
        ring = self._ring
        for slot in slots.tolist():
            if slot >= ring and self.retire:  # a survivor: retired once its last report has gone
                heapq.heappush(
                    self._finished_survivors,
                    (int(table["last_exec_seq"][slot]), int(self._slot_ids[slot])),
                )
        if self.retire:
            self.retire_finished()
        return count

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
        commands = batch.commands
        count = len(commands)
        actions = commands["action"]
        first_new_id = self.order_count + 1
        new_mask: np.ndarray | None
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
        if new_count:
            self._index_new_orders(batch, new_mask, new_count)
        events = self.engine.process(commands)
        return self._fold(batch, events, first_new_id, new_count)

    def _fold(self, batch: Batch, events: np.ndarray, first_new_id: int, new_count: int) -> BatchOutcome:
        """apply_batch after the engine ran: its events folded into the order rows, in C
        (hft_order_fold.h), with the batch's reports and trades; then what depends on them."""
        commands, meta = batch.commands, batch.meta
        count = len(commands)
        folder = self._folder
        taker, maker = folder.slot_buffers(len(events), count)
        if len(events) <= _ROW_BY_ROW_MAX:  # numpy's per-call set-up costs more than a few lookups
            slot_of = self.slot_of
            for i, event in enumerate(events.tolist()):
                taker[i] = slot_of(event[0])
                maker[i] = slot_of(event[2]) if event[10] == _EVENT_FILL else -1
        else:
            taker[:] = self.slots_of(events["order_id"].astype(np.int64))
            fills = events["type"] == _EVENT_FILL
            maker[:] = -1
            if fills.any():
                maker[fills] = self.slots_of(events["maker_order_id"][fills].astype(np.int64))
        command_slots: np.ndarray | None = None
        if new_count != count:  # cancels or replaces: the rows of the orders they name
            if count == 1:
                command_slots = np.array([self.slot_of(int(commands["order_id"][0]))], np.int64)
            else:
                command_slots = self.slots_of(commands["order_id"].astype(np.int64))
        folded = folder.fold(
            self.table,
            self._slot_ids,
            events,
            commands,
            meta,
            command_slots,
            first_new_id=first_new_id,
            new_count=new_count,
            slot_mask=self._mask,
            first_input_seq=batch.first_input_seq,
            received_ns=batch.received_ns,
            transact_ns=batch.transact_ns,
            restore_id_base=RESTORE_ORDER_ID_BASE,
            next_seq=self.next_report_seq,
            next_trade_id=self.next_trade_id,
        )
        if folded.unknown:
            log.error(
                "apply_batch: %d engine event(s) of unknown types ignored (batch at input %d)",
                folded.unknown,
                batch.first_input_seq,
            )
        table = self.table
        # Inputs the engine refused: their orders never existed for the client.
        if len(folded.rejected_index):
            actions = commands["action"]
            for ci, reason in zip(
                folded.rejected_index.tolist(), folded.rejected_reason.tolist(), strict=True
            ):
                if int(actions[ci]) == _ACTION_NEW:
                    index = self.slot_of(int(commands["order_id"][ci]))  # a new order: always held
                    table["status"][index] = REJECTED
                    table["reason"][index] = reason
                    table["leaves"][index] = 0
                    self._forget_client_id(index)
        self._update_exposure_of(folded.touched, folded.before)
        self.next_report_seq = folded.next_seq
        self.next_trade_id = folded.next_trade_id
        reports, fills = folded.reports, folded.fills
        if len(fills):
            self.trades += len(fills)
            self.traded_lots += int(fills["quantity"].sum())
            self._update_positions(fills)
        self._retain(reports)
        outcomes = folded.outcomes
        outcome = BatchOutcome(
            first_input_seq=batch.first_input_seq,
            received_ns=batch.received_ns,
            transact_ns=batch.transact_ns,
            order_ids=outcomes["order_id"],
            status=outcomes["status"],
            reason=outcomes["reason"],
            price=outcomes["price"],
            quantity=outcomes["quantity"],
            leaves=outcomes["leaves"],
            cum=outcomes["cum"],
            priority_kept=outcomes["priority_kept"].view(bool),
            reports=reports,
            fills=fills,
        )
        if self.retire:
            ring = self._ring
            for slot in folded.touched.tolist():
                if slot >= ring and table["status"].item(slot) not in OPEN_STATUSES:  # a survivor finished
                    last = table["last_exec_seq"].item(slot)
                    heapq.heappush(self._finished_survivors, (last, self._slot_ids.item(slot)))
            self.retire_finished()
        return outcome

    def _misfit(
        self,
        batch: Batch,
        new_mask: np.ndarray | None,
        new_count: int,
        first_new_id: int,
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
            lengths_total = int(batch.meta["client_id_length"][0])
            if order_id != first_new_id:
                return f"batch order id {order_id} where {first_new_id} was expected"
        else:
            if new_count == count:  # all new (a stream message, SubmitOrders): no mask to apply
                ids, lengths = commands["order_id"], batch.meta["client_id_length"]
            else:
                ids, lengths = commands["order_id"][new_mask], batch.meta["client_id_length"][new_mask]
            # (np.diff is a Python-level wrapper: the slices' difference costs a third)
            if int(ids[0]) != first_new_id or (ids[1:] - ids[:-1] != 1).any():
                return f"batch order ids {ids[0]}..{ids[-1]} where {first_new_id}.. was expected"
            lengths_total = int(lengths.sum())
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

    def _index_new_orders(self, batch: Batch, new_mask: np.ndarray | None, count: int) -> None:
        """Hand out the batch's new orders' ids (their rows are written by the fold, in C), index
        their client order ids (in C: hft_client_ids.h) and keep each one's text by its row."""
        self._reserve_orders(count)
        start = self.order_count
        self.order_count += count
        commands, meta = batch.commands, batch.meta
        if count == 1:  # (_misfit checked that the one order's id is the whole text)
            position = 0 if new_mask is None else int(np.argmax(new_mask))
            self.client_id_index.add_one(int(commands["account_id"][position]), batch.client_ids, start + 1)
            self._slot_client_ids[start & self._mask] = batch.client_ids
            return
        if new_mask is not None and count != len(commands):
            commands, meta = rows.select(commands, new_mask), rows.select(meta, new_mask)
        lengths = meta["client_id_length"].astype(np.int64)
        self.client_id_index.add(
            commands["account_id"],
            batch.client_ids,
            lengths,
            np.arange(start + 1, start + count + 1, dtype=np.int64),
        )
        first_slot = start & self._mask
        slots: slice | np.ndarray
        if first_slot + count <= self._ring:
            slots = slice(first_slot, first_slot + count)
        else:  # the ring wraps inside this batch
            slots = np.arange(start, start + count) & self._mask
        self._slot_client_ids[slots] = ids_to_rows(batch.client_ids, lengths)

    def _forget_client_id(self, slot: int, *, free: bool = False) -> None:
        """A refused (or retired) order's client id may be used again (:meth:`_forget_client_ids`)."""
        one = self._one_slot
        one[0] = slot
        self._forget_client_ids(one, free=free)

    def _forget_client_ids(self, slots: np.ndarray, *, free: bool = False) -> None:
        """Free the client ids of the orders in rows ``slots`` (each only while it still names its
        order: a refused order's id may have been taken again since), read from the rows in place,
        in one C call (hft_order_retire.h); ``free``: the rows' order ids and ids go too."""
        self.client_id_index.forget_rows(self.table, self._slot_ids, self._slot_client_ids, slots, free=free)

    # --- retirement (see the module docstring) -------------------------------------------------------

    def retire_finished(self) -> None:
        """Retire what the rule allows and move the window's base up to ``order_count - retain_orders``.

        Deterministic (a function of the state alone); O(orders passed) plus O(log n) per finished
        survivor. apply_batch calls it after every batch; recovery once after a snapshot load."""
        if not self.retire:
            return
        oldest = self.oldest_retained_report
        heap = self._finished_survivors
        while heap and heap[0][0] < oldest:
            _, order_id = heapq.heappop(heap)
            slot = self._survivor_slots.pop(order_id, -1)
            if slot >= 0:  # (an id may be pushed twice; the second pop finds it gone)
                self._drop(slot)
                self._free_slots.append(slot)
        limit = self.order_count - self.retain_orders
        base = self.order_base
        if limit <= base:
            return
        table = self.table
        if limit - base == 1:  # one order passed (a SubmitOrder): no arrays
            slot = base & self._mask
            status = table["status"].item(slot)
            last = table["last_exec_seq"].item(slot)
            if status not in OPEN_STATUSES and last < oldest:
                self._drop(slot)
            else:
                self._to_survivor(slot, status, last)
            self.order_base = limit
            return
        first = base & self._mask
        slots: slice | np.ndarray
        if first + (limit - base) <= self._ring:  # no wrap: views, no copy
            slots = slice(first, first + (limit - base))
            slot_numbers = np.arange(slots.start, slots.stop, dtype=np.int64)
        else:
            slots = slot_numbers = (np.arange(base, limit, dtype=np.int64)) & self._mask
        statuses = table["status"][slots]
        lasts = table["last_exec_seq"][slots]
        gone = ~_IS_OPEN.take(statuses) & (lasts < oldest)
        dropped = slot_numbers[gone]
        if len(dropped):
            self._forget_client_ids(dropped, free=True)
            self.retired_orders += len(dropped)
        if len(dropped) < len(slot_numbers):
            kept = ~gone
            self._to_survivors(slot_numbers[kept], statuses[kept], lasts[kept])
        self.order_base = limit

    def _drop(self, slot: int) -> None:
        """Retire the order in ``slot``: nothing of it stays."""
        self._forget_client_id(slot, free=True)
        self.retired_orders += 1

    def _to_survivor(self, slot: int, status: int, last_exec_seq: int) -> None:
        """Move the order in ring row ``slot`` (about to leave the window) to a survivor row."""
        if not self._free_slots:
            spare = len(self.table) - self._ring
            self._resize(self._ring, max(_INITIAL_SPARE, 2 * spare))
        target = self._free_slots.pop()
        order_id = int(self._slot_ids[slot])
        rows.move(self.table, target, slot)
        self._slot_ids[target] = order_id
        self._slot_client_ids[target] = self._slot_client_ids[slot]
        self._slot_ids[slot] = 0
        self._slot_client_ids[slot] = b""
        self._survivor_slots[order_id] = target
        if status not in OPEN_STATUSES:
            heapq.heappush(self._finished_survivors, (last_exec_seq, order_id))

    def _to_survivors(self, slots: np.ndarray, statuses: np.ndarray, lasts: np.ndarray) -> None:
        """:meth:`_to_survivor` of many ring rows at once (in ascending order id, as one by one)."""
        count = len(slots)
        if count <= _ROW_BY_ROW_MAX:
            for slot, status, last in zip(slots.tolist(), statuses.tolist(), lasts.tolist(), strict=True):
                self._to_survivor(slot, status, last)
            return
        while len(self._free_slots) < count:
            spare = len(self.table) - self._ring
            self._resize(self._ring, max(_INITIAL_SPARE, 2 * spare))
        free = self._free_slots
        # The same rows, in the same order, as count pops of the free list would give.
        targets_list = free[: len(free) - count - 1 : -1] if len(free) > count else free[::-1]
        del free[len(free) - count :]
        targets = np.array(targets_list, np.int64)
        order_ids = self._slot_ids[slots]
        rows.move(self.table, targets, slots)
        self._slot_ids[targets] = order_ids
        self._slot_client_ids[targets] = self._slot_client_ids[slots]
        self._slot_ids[slots] = 0
        self._slot_client_ids[slots] = b""
        ids = order_ids.tolist()
        self._survivor_slots.update(zip(ids, targets_list, strict=True))
        finished = ~_IS_OPEN.take(statuses)
        if finished.any():
            heap = self._finished_survivors
            for last, order_id in zip(lasts[finished].tolist(), order_ids[finished].tolist(), strict=True):
                heapq.heappush(heap, (last, order_id))

    def _update_exposure(self, working_before: dict[int, int]) -> None:
        """:meth:`_update_exposure_of` for rows given as {row: open lots before}."""
        if working_before:
            self._update_exposure_of(
                np.fromiter(working_before.keys(), np.int64, len(working_before)),
                np.fromiter(working_before.values(), np.int64, len(working_before)),
            )

    def _update_exposure_of(self, indices: np.ndarray, before: np.ndarray) -> None:
        """The accounts' open lots and orders after rows ``indices`` changed (``before``: each
        row's open lots before the change), in C (hft_exposure.h)."""
        if not len(indices):
            return
        try:
            self._apply_exposure(indices, before)
        except UnknownAccount:  # an account's first order: give it its rows (they may grow), again
            for account in np.unique(self.table["account_id"][indices]).tolist():
                self.account_row(account)
            self._apply_exposure(indices, before)

    def _apply_exposure(self, indices: np.ndarray, before: np.ndarray) -> None:
        self._exposure.apply(
            self.table, self.open_buy, self.open_sell, self.open_orders, self._account_rows, indices, before
        )

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
        if len(reports) >= capacity:
            reports = reports[-capacity:]
        count = len(reports)
        first_seq = int(reports["sequence"][0])
        if int(reports["sequence"][-1]) - first_seq != count - 1:  # (a batch's are consecutive)
            ring[(reports["sequence"] - 1) % capacity] = reports
            return
        # At most two slices of the ring, copied as bytes: ~100x faster than scattering the rows.
        start = (first_seq - 1) % capacity
        head = min(count, capacity - start)
        size = REPORT_DTYPE.itemsize
        ring_bytes, report_bytes = ring.view(np.uint8), np.ascontiguousarray(reports).view(np.uint8)
        ring_bytes[start * size : (start + head) * size] = report_bytes[: head * size]
        if head < count:
            ring_bytes[: (count - head) * size] = report_bytes[head * size :]

    def retained_reports_after(self, after_sequence: int) -> np.ndarray:
        """Retained reports with sequence > ``after_sequence``, in order."""
        ring = self.reports
        newest = self.next_report_seq - 1
        oldest = max(1, newest - len(ring) + 1)
        start = max(after_sequence + 1, oldest)
        if start > newest:
            return np.zeros(0, REPORT_DTYPE)
        positions = (np.arange(start, newest + 1) - 1) % len(ring)
        return rows.take(ring, positions)

    @property
    def oldest_retained_report(self) -> int:
        return max(1, self.next_report_seq - len(self.reports))

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


class OrdersById:
    """The retained orders' rows by ``order_id - 1``, read-only, for readers outside this module.

    ``view[order_id - 1]`` is the row (a view into the table: do not write) or IndexError when the
    order is not retained; a slice, an int array or :meth:`copy` gives copies, with an all-zero row
    for an order not retained. New code should use :meth:`ExecutionState.order` or ``slot_of``.
    """

    __slots__ = ("_state",)

    def __init__(self, state: ExecutionState) -> None:
        self._state = state

    def __len__(self) -> int:
        return self._state.order_count

    def __getitem__(self, key: int | slice | np.ndarray) -> Any:
        state = self._state
        if isinstance(key, slice):
            return state.rows_by_id(np.arange(1, state.order_count + 1)[key])
        if isinstance(key, np.ndarray):
            return state.rows_by_id(key.astype(np.int64) + 1)
        index = int(key)
        slot = state.slot_of(index + 1) if index >= 0 else -1
        if slot < 0:
            raise IndexError(f"order id {index + 1} is not retained")
        return state.table[slot]

    def copy(self) -> np.ndarray:
        return self[:]  # type: ignore[no-any-return]


class ClientIdsById:
    """The retained orders' client order ids by ``order_id - 1``, read-only (see :class:`OrdersById`).

    ``""`` for an order not retained (indexing and iterating alike): a report row can outlive its
    order's retirement in a slow reader's buffer, and encoding it must not fail for that."""

    __slots__ = ("_state",)

    def __init__(self, state: ExecutionState) -> None:
        self._state = state

    def __len__(self) -> int:
        return self._state.order_count

    def __getitem__(self, index: int) -> str:
        # slot_of and client_id_at inlined: encoding a stream's reports asks once per report.
        state = self._state
        if index >= state.order_base:
            if index >= state.order_count:
                return ""
            slot = index & state._mask
        elif index < 0:
            return ""
        else:
            slot = state._survivor_slots.get(index + 1, -1)
            if slot < 0:
                return ""
        client_id: bytes = state._slot_client_ids[slot]
        return client_id.decode("ascii")

    def __iter__(self) -> Iterator[str]:
        state = self._state
        for order_id in range(1, state.order_count + 1):
            client_id = state.client_id_of(order_id)
            yield "" if client_id is None else client_id
