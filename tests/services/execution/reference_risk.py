"""The pre-trade rules in plain Python, order by order: the reference the C checks
(native/src/risk.c, through services.execution.risk.NewOrderRisk) are compared with.

This was the service's own scalar copy of the rules until they moved to C; it stays here, in the
tests only, so that every rule of the C code is held against an independent statement of it.
Python's integers do not overflow: where C's sums would, the reference compares exact values.
"""

from __future__ import annotations

import numpy as np

from hftgate.matching.types import MAX_PRICE, MAX_QTY
from hftgate.native.client_ids import valid_client_id as _valid_client_id
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.reference import AccountSpec, InstrumentSpec
from services.execution.risk import (
    AccountExposure,
    TokenBucket,
    instrument_limits,
    position_limit,
)

_LIMIT_TYPES = (api.ORDER_TYPE_LIMIT, api.ORDER_TYPE_STOP_LIMIT)
_MARKET_TYPES = (api.ORDER_TYPE_MARKET, api.ORDER_TYPE_STOP_MARKET)
_STOP_TYPES = (api.ORDER_TYPE_STOP_LIMIT, api.ORDER_TYPE_STOP_MARKET)


def _static_reason(
    side: int,
    otype: int,
    tif: int,
    price: int,
    stop: int,
    qty: int,
    display: int,
    post_only: int,
    stp: int,
    protection: int,
    spec: InstrumentSpec,
) -> int:
    """Rules 4 to 8 of hft_risk.h for one order."""
    if not spec.trading_enabled:
        return common.REJECT_REASON_TRADING_HALTED
    invalid = common.REJECT_REASON_INVALID_ORDER
    is_limit = otype in _LIMIT_TYPES
    is_market = otype in _MARKET_TYPES
    is_stop = otype in _STOP_TYPES
    if side not in (1, 2) or not (is_limit or is_market):
        return invalid
    if tif < 0 or tif > 3 or stp < 0 or stp > 5:
        return invalid
    if qty <= 0 or qty > MAX_QTY:
        return common.REJECT_REASON_INVALID_QUANTITY
    if is_limit and (price <= 0 or price > MAX_PRICE):
        return common.REJECT_REASON_INVALID_PRICE
    if is_market and price != 0:
        return common.REJECT_REASON_INVALID_PRICE
    if is_stop and (stop <= 0 or stop > MAX_PRICE):
        return common.REJECT_REASON_INVALID_PRICE
    if not is_stop and stop != 0:
        return invalid
    if protection < 0 or protection > MAX_PRICE:
        return common.REJECT_REASON_INVALID_PRICE
    if is_limit and protection != 0:
        return invalid
    gtc = tif == api.TIME_IN_FORCE_GTC or (tif == 0 and is_limit)
    if is_market and gtc:
        return invalid
    if display < 0 or (display != 0 and display >= qty):
        return invalid
    if display > 0 and not (is_limit and gtc):
        return invalid
    if post_only and not (otype == api.ORDER_TYPE_LIMIT and gtc):
        return invalid
    lim = instrument_limits(spec)
    price_step = lim.price_step
    lot_step = lim.lot_step
    if (is_limit and price % price_step) or (is_stop and stop % price_step) or protection % price_step:
        return common.REJECT_REASON_OFF_TICK
    if qty % lot_step or display % lot_step:
        return common.REJECT_REASON_OFF_LOT
    band, reference, ceiling = lim.band, lim.reference, lim.price_ceiling
    if band > 0 and (
        (is_limit and abs(price - reference) > band)
        or (is_stop and abs(stop - reference) > band)
        or (protection > 0 and abs(protection - reference) > band)
    ):
        return common.REJECT_REASON_PRICE_BAND
    if (is_limit and price > ceiling) or (is_stop and stop > ceiling) or protection > ceiling:
        return common.REJECT_REASON_PRICE_BAND
    if qty > lim.max_lots:
        return common.REJECT_REASON_MAX_QUANTITY
    worst = price if is_limit else (protection if protection > 0 else reference + band)
    if worst > 0 and qty > lim.max_notional // worst:
        return common.REJECT_REASON_MAX_NOTIONAL
    return 0


def reference_reasons(
    orders: np.ndarray,
    client_ids: list[str],
    instrument_rows: np.ndarray,
    instruments: list[InstrumentSpec | None],
    symbol_ids: np.ndarray,
    account: AccountSpec,
    known_client_ids: dict[str, int],
    exposure: AccountExposure,
    bucket: TokenBucket,
) -> np.ndarray:
    """The RejectReason of every order, order by order, as NewOrderRisk.check_new_orders gives them."""
    count = len(orders)
    reasons = [0] * count
    seen: set[str] = set()
    granted = bucket.take(count)
    open_room = account.max_open_orders - exposure.open_orders
    used: dict[tuple[int, int], int] = {}
    limit = position_limit(account)
    rows = instrument_rows.tolist()
    symbols = symbol_ids.tolist()
    for position, fields in enumerate(orders.tolist()):
        side, otype, tif, price, stop, qty, display, post_only, stp, protection, _ = fields
        client_id = client_ids[position]
        spec = instruments[rows[position]]
        duplicate = client_id in seen or client_id in known_client_ids
        seen.add(client_id)
        reason: int
        if not _valid_client_id(client_id):
            reason = common.REJECT_REASON_INVALID_ORDER
        elif account.kill_switch:
            reason = common.REJECT_REASON_KILL_SWITCH
        elif spec is None or symbols[position] < 0:
            reason = common.REJECT_REASON_UNKNOWN_SYMBOL
        else:
            reason = _static_reason(
                side, otype, tif, price, stop, qty, display, post_only, stp, protection, spec
            )
        if not reason and duplicate:
            reason = common.REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID
        if not reason and position >= granted:
            reason = common.REJECT_REASON_RATE_LIMIT
        if not reason and (tif == api.TIME_IN_FORCE_GTC or (tif == 0 and otype in _LIMIT_TYPES)
                           or otype in _STOP_TYPES):  # fmt: skip
            if open_room <= 0:
                reason = common.REJECT_REASON_OPEN_ORDER_LIMIT
            else:
                open_room -= 1
        if not reason:
            symbol = symbols[position]
            key = (symbol, side)
            if side == 1:
                start = int(exposure.position[symbol]) + int(exposure.open_buy[symbol])
            else:
                start = int(exposure.open_sell[symbol]) - int(exposure.position[symbol])
            if start + used.get(key, 0) + qty > limit:
                reason = common.REJECT_REASON_POSITION_LIMIT
            else:
                used[key] = used.get(key, 0) + qty
        reasons[position] = reason
    return np.array(reasons, np.int64)
