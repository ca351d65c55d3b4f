"""Pre-trade checks of new orders, in C (``native/include/hft_risk.h``).

:class:`RiskCheck` owns the C structs of one call and the scratch the position rule needs, so a
call allocates nothing but its result. Orders cross as the caller's numpy rows (a dtype checked
once against ``hft_new_order``, byte for byte); an instrument's limits as a :data:`RULES_DTYPE`
row; the account's exposure as its int64 arrays, indexed by engine symbol id. A batch of one has
its own entry (:meth:`RiskCheck.check_one`, ``hft_risk_check_one``), which takes the order's
fields as the C call's arguments: no numpy and no buffer on its way. Not thread-safe: one per service.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hftgate.matching.types import check_layout
from hftgate.native import check, ffi, lib

#: An instrument's limits as hft_instrument_rules holds them (its fields, in its order).
RULES_DTYPE = np.dtype(
    [
        (name, "<i8")
        for name in (
            "trading_enabled",
            "max_lots",
            "price_ceiling",
            "max_notional",
            "band",
            "reference",
            "price_step",
            "lot_step",
        )
    ]
)

#: client_id_state values (hft_risk.h).
ID_OK = lib.HFT_RISK_ID_OK
ID_INVALID = lib.HFT_RISK_ID_INVALID
ID_USED = lib.HFT_RISK_ID_USED

#: The RejectReason each HFT_RISK_* constant stands for, by its common.proto name.
REASON_NAMES = {
    "UNKNOWN_SYMBOL": lib.HFT_RISK_UNKNOWN_SYMBOL,
    "INVALID_QUANTITY": lib.HFT_RISK_INVALID_QUANTITY,
    "INVALID_PRICE": lib.HFT_RISK_INVALID_PRICE,
    "OFF_TICK": lib.HFT_RISK_OFF_TICK,
    "OFF_LOT": lib.HFT_RISK_OFF_LOT,
    "PRICE_BAND": lib.HFT_RISK_PRICE_BAND,
    "MAX_QUANTITY": lib.HFT_RISK_MAX_QUANTITY,
    "MAX_NOTIONAL": lib.HFT_RISK_MAX_NOTIONAL,
    "POSITION_LIMIT": lib.HFT_RISK_POSITION_LIMIT,
    "OPEN_ORDER_LIMIT": lib.HFT_RISK_OPEN_ORDER_LIMIT,
    "RATE_LIMIT": lib.HFT_RISK_RATE_LIMIT,
    "KILL_SWITCH": lib.HFT_RISK_KILL_SWITCH,
    "DUPLICATE_CLIENT_ORDER_ID": lib.HFT_RISK_DUPLICATE_CLIENT_ORDER_ID,
    "INVALID_ORDER": lib.HFT_RISK_INVALID_ORDER,
    "TRADING_HALTED": lib.HFT_RISK_TRADING_HALTED,
}


class InstrumentRules:
    """One instrument's limits as C reads them: a :data:`RULES_DTYPE` row and its address (kept
    together so the address stays valid as long as this object lives)."""

    __slots__ = ("pointer", "row", "values")

    def __init__(self, values: tuple[int, ...]) -> None:
        self.values = values
        self.row = np.array([values], RULES_DTYPE)
        self.pointer = ffi.from_buffer("hft_instrument_rules[]", self.row)


class RiskCheck:
    """Calls ``hft_risk_check`` (see the module docstring)."""

    def __init__(self, new_order_dtype: np.dtype) -> None:
        check_layout("hft_new_order", new_order_dtype)
        check_layout("hft_instrument_rules", RULES_DTYPE)
        self.new_order_dtype = new_order_dtype
        self._batch = ffi.new("hft_risk_batch *")
        self._account = ffi.new("hft_account_limits *")
        self._accepted = ffi.new("size_t *")
        self._used = np.zeros(0, np.int64)
        self._exposure: tuple[Any, ...] = (None, None, None)
        self._symbols = 0
        self._rows = 0
        self._bound = False
        self._exposure_views: tuple[Any, ...] = ()
        self._exposure_ptrs: tuple[Any, ...] = ()
        self._used_ptr: Any = ffi.NULL

    def bind_account(
        self,
        kill_switch: bool,
        position_limit: int,
        position: np.ndarray,
        open_buy: np.ndarray,
        open_sell: np.ndarray,
        row: int,
    ) -> None:
        """The account the next calls check for: its kill switch, position limit (lots) and
        exposure. ``position``, ``open_buy`` and ``open_sell`` are int64 arrays of one account
        (1-D) or of every account (2-D, the account's at ``row``); their addresses are taken when
        they change. The caller binds again whenever any of these may have changed."""
        if (
            position is not self._exposure[0]
            or open_buy is not self._exposure[1]
            or open_sell is not self._exposure[2]
        ):
            self._bind_exposure(position, open_buy, open_sell)
        if not 0 <= row < self._rows:
            raise IndexError(f"risk: no account row {row}")
        account = self._account
        offset = row * self._symbols
        account.position = self._exposure_ptrs[0] + offset
        account.open_buy = self._exposure_ptrs[1] + offset
        account.open_sell = self._exposure_ptrs[2] + offset
        account.kill_switch = 1 if kill_switch else 0
        account.position_limit = position_limit
        self._bound = True

    def _bind_exposure(self, position: np.ndarray, open_buy: np.ndarray, open_sell: np.ndarray) -> None:
        arrays = (position, open_buy, open_sell)
        for array in arrays:
            if array.dtype != np.int64 or not array.flags.c_contiguous or array.shape != position.shape:
                raise TypeError("risk: exposure arrays must be C-contiguous int64 of one shape")
            if array.ndim not in (1, 2):
                raise TypeError("risk: exposure arrays are 1-D (one account) or 2-D (every account)")
        self._exposure = arrays
        # (from_buffer's objects keep the arrays' buffers; the casts give pointer arithmetic)
        self._exposure_views = tuple(ffi.from_buffer("int64_t[]", a) for a in arrays)
        self._exposure_ptrs = tuple(ffi.cast("int64_t *", v) for v in self._exposure_views)
        self._symbols = position.shape[-1]
        self._rows = position.shape[0] if position.ndim == 2 else 1
        if len(self._used) < 2 * self._symbols:
            self._used = np.zeros(2 * self._symbols, np.int64)
            self._used_ptr = ffi.from_buffer("int64_t[]", self._used, require_writable=True)
        self._account.symbol_count = self._symbols
        self._account.used = self._used_ptr

    def one_account(self, open_room: int, granted: int) -> Any:
        """The bound account's C struct with this call's open room and granted tokens, for a C
        call that runs the one-order check itself (hft_admission_admit_one)."""
        self._set_room(open_room, granted)
        return self._account

    def _set_room(self, open_room: int, granted: int) -> None:
        if not self._bound:
            raise RuntimeError("risk: bind_account first")
        account = self._account
        account.open_room = open_room
        account.granted = granted

    def check(
        self,
        orders: np.ndarray,
        rules: np.ndarray,
        rule_rows: np.ndarray,
        symbol_ids: np.ndarray,
        client_id_state: np.ndarray | None,
        open_room: int,
        granted: int,
    ) -> np.ndarray:
        """RejectReason per order (int64, 0 = passes). ``rules`` is a :data:`RULES_DTYPE` array,
        ``rule_rows`` (int64, -1 = no instrument) indexes it per order, ``symbol_ids`` (int64, -1 =
        no book) are the orders' engine symbol ids, ``client_id_state`` (uint8 or None = all
        ID_OK); ``open_room`` the open orders the account may still add (may be <= 0) and
        ``granted`` the rate tokens this call has, for the account last bound."""
        count = len(orders)
        if orders.dtype != self.new_order_dtype or rules.dtype != RULES_DTYPE:
            raise TypeError("risk: orders or rules of the wrong dtype")
        if len(rule_rows) != count or len(symbol_ids) != count:
            raise ValueError("risk: one rule row and one symbol id per order")
        self._set_room(open_room, granted)
        # The from_buffer objects are held in locals until the call returns: the struct's
        # pointers do not keep the buffers alive.
        orders_c = ffi.from_buffer("hft_new_order[]", np.ascontiguousarray(orders))
        rules_c = ffi.from_buffer("hft_instrument_rules[]", np.ascontiguousarray(rules))
        rule_rows_c = ffi.from_buffer("int64_t[]", np.ascontiguousarray(rule_rows, np.int64))
        symbol_ids_c = ffi.from_buffer("int64_t[]", np.ascontiguousarray(symbol_ids, np.int64))
        state_c = ffi.NULL
        if client_id_state is not None:
            if len(client_id_state) != count:
                raise ValueError("risk: one client id state per order")
            state_c = ffi.from_buffer("uint8_t[]", np.ascontiguousarray(client_id_state, np.uint8))
        batch = self._batch
        batch.orders = orders_c
        batch.count = count
        batch.rules = rules_c
        batch.rule_count = len(rules)
        batch.rule_rows = rule_rows_c
        batch.symbol_ids = symbol_ids_c
        batch.client_id_state = state_c
        reasons = np.empty(count, np.int64)
        rc = lib.hft_risk_check(
            batch, self._account, ffi.from_buffer("int64_t[]", reasons, require_writable=True), self._accepted
        )
        if rc < 0:
            check(rc, f"hft_risk_check(orders={count})")
        return reasons
