"""The matching engine's vocabulary in Python: numpy dtypes that mirror the C structs byte for byte
(native/include/hft_book.h), and the C constants as enums.

The dtypes are what the batch entry point reads and writes without copying, so a field added on one
side must be added on the other; :func:`verify_layout` (run when ``hftgate.matching.engine`` is
imported) fails fast if they ever disagree.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

import numpy as np

from hftgate.native import ffi, lib

COMMAND_DTYPE = np.dtype(
    [
        ("order_id", "<u8"),
        ("account_id", "<u8"),
        ("price", "<i8"),
        ("qty", "<i8"),
        ("stop_price", "<i8"),
        ("display_qty", "<i8"),
        ("symbol_id", "<u4"),
        ("priority", "<i4"),
        ("action", "u1"),
        ("side", "u1"),
        ("order_type", "u1"),
        ("tif", "u1"),
        ("flags", "u1"),
        ("stp_mode", "u1"),
        ("reserved", "<u2"),
    ]
)

EVENT_DTYPE = np.dtype(
    [
        ("order_id", "<u8"),
        ("account_id", "<u8"),
        ("maker_order_id", "<u8"),
        ("maker_account_id", "<u8"),
        ("price", "<i8"),
        ("qty", "<i8"),
        ("leaves_qty", "<i8"),
        ("maker_leaves_qty", "<i8"),
        ("symbol_id", "<u4"),
        ("command_index", "<u4"),
        ("type", "u1"),
        ("side", "u1"),
        ("reason", "<u2"),
        ("reserved", "<u4"),
    ]
)

DEPTH_DTYPE = np.dtype([("price", "<i8"), ("qty", "<i8"), ("order_count", "<u4"), ("reserved", "<u4")])

ORDER_INFO_DTYPE = np.dtype(
    [
        ("order_id", "<u8"),
        ("account_id", "<u8"),
        ("price", "<i8"),
        ("stop_price", "<i8"),
        ("visible_qty", "<i8"),
        ("hidden_qty", "<i8"),
        ("display_qty", "<i8"),
        ("symbol_id", "<u4"),
        ("side", "u1"),
        ("order_type", "u1"),
        ("tif", "u1"),
        ("flags", "u1"),
        ("stp_mode", "u1"),
        ("is_pending_stop", "u1"),
        ("reserved", "<u2"),
        ("reserved2", "<u4"),
    ]
)

MAX_PRICE: int = lib.HFT_MAX_PRICE
MAX_QTY: int = lib.HFT_MAX_QTY
MAX_ORDERS: int = lib.HFT_MAX_ORDERS
ALL_SYMBOLS: int = lib.HFT_ALL_SYMBOLS


class Side(IntEnum):
    BUY = lib.HFT_SIDE_BUY
    SELL = lib.HFT_SIDE_SELL


class Action(IntEnum):
    NEW = lib.HFT_ACTION_NEW
    CANCEL = lib.HFT_ACTION_CANCEL
    REPLACE = lib.HFT_ACTION_REPLACE
    CANCEL_ALL = lib.HFT_ACTION_CANCEL_ALL


class OrderType(IntEnum):
    LIMIT = lib.HFT_TYPE_LIMIT
    MARKET = lib.HFT_TYPE_MARKET
    STOP_LIMIT = lib.HFT_TYPE_STOP_LIMIT
    STOP_MARKET = lib.HFT_TYPE_STOP_MARKET


class TimeInForce(IntEnum):
    GTC = lib.HFT_TIF_GTC
    IOC = lib.HFT_TIF_IOC
    FOK = lib.HFT_TIF_FOK


class OrderFlag(IntFlag):
    NONE = 0
    POST_ONLY = lib.HFT_FLAG_POST_ONLY
    POST_ONLY_SLIDE = lib.HFT_FLAG_POST_ONLY_SLIDE


class StpMode(IntEnum):
    DEFAULT = lib.HFT_STP_DEFAULT
    CANCEL_RESTING = lib.HFT_STP_CANCEL_RESTING
    CANCEL_TAKER = lib.HFT_STP_CANCEL_TAKER
    CANCEL_BOTH = lib.HFT_STP_CANCEL_BOTH
    DECREMENT = lib.HFT_STP_DECREMENT
    NONE = lib.HFT_STP_NONE


class EventType(IntEnum):
    ACK = lib.HFT_EVENT_ACK
    REJECT = lib.HFT_EVENT_REJECT
    FILL = lib.HFT_EVENT_FILL
    CANCELED = lib.HFT_EVENT_CANCELED
    EXPIRED = lib.HFT_EVENT_EXPIRED
    REPLACED = lib.HFT_EVENT_REPLACED
    TRIGGERED = lib.HFT_EVENT_TRIGGERED


class Reason(IntEnum):
    NONE = lib.HFT_REASON_NONE
    INVALID_ACTION = lib.HFT_REASON_INVALID_ACTION
    INVALID_SIDE = lib.HFT_REASON_INVALID_SIDE
    INVALID_TYPE = lib.HFT_REASON_INVALID_TYPE
    INVALID_TIF = lib.HFT_REASON_INVALID_TIF
    INVALID_QTY = lib.HFT_REASON_INVALID_QTY
    INVALID_PRICE = lib.HFT_REASON_INVALID_PRICE
    INVALID_ORDER_ID = lib.HFT_REASON_INVALID_ORDER_ID
    INVALID_COMBINATION = lib.HFT_REASON_INVALID_COMBINATION
    INVALID_STP_MODE = lib.HFT_REASON_INVALID_STP_MODE
    UNKNOWN_SYMBOL = lib.HFT_REASON_UNKNOWN_SYMBOL
    DUPLICATE_ORDER_ID = lib.HFT_REASON_DUPLICATE_ORDER_ID
    UNKNOWN_ORDER = lib.HFT_REASON_UNKNOWN_ORDER
    ACCOUNT_MISMATCH = lib.HFT_REASON_ACCOUNT_MISMATCH
    BOOK_FULL = lib.HFT_REASON_BOOK_FULL
    POST_ONLY_WOULD_TAKE = lib.HFT_REASON_POST_ONLY_WOULD_TAKE
    NO_LIQUIDITY = lib.HFT_REASON_NO_LIQUIDITY
    NOT_REPLACEABLE = lib.HFT_REASON_NOT_REPLACEABLE
    USER_CANCEL = lib.HFT_REASON_USER_CANCEL
    CANCEL_ALL = lib.HFT_REASON_CANCEL_ALL
    SELF_TRADE = lib.HFT_REASON_SELF_TRADE
    UNFILLED = lib.HFT_REASON_UNFILLED
    FOK_UNFILLABLE = lib.HFT_REASON_FOK_UNFILLABLE
    REPRICED = lib.HFT_REASON_REPRICED


_LAYOUTS = {
    "hft_order_command": COMMAND_DTYPE,
    "hft_match_event": EVENT_DTYPE,
    "hft_depth_level": DEPTH_DTYPE,
    "hft_order_info": ORDER_INFO_DTYPE,
}


def verify_layout() -> None:
    """Raise ``TypeError`` if a dtype's size or field offsets differ from its C struct."""
    for c_name, dtype in _LAYOUTS.items():
        check_layout(c_name, dtype)


def check_layout(c_name: str, dtype: np.dtype) -> None:
    """Raise ``TypeError`` if ``dtype``'s size or field offsets differ from C struct ``c_name``
    (fields named ``reserved*`` aside), so that its arrays can be passed to C as they are."""
    if ffi.sizeof(c_name) != dtype.itemsize:
        raise TypeError(f"{c_name} is {ffi.sizeof(c_name)} bytes in C but {dtype.itemsize} in numpy")
    fields = dtype.fields
    assert fields is not None
    for name, (_, offset, *_rest) in fields.items():
        if name.startswith("reserved"):
            continue
        c_offset = ffi.offsetof(c_name, name)
        if c_offset != offset:
            raise TypeError(f"{c_name}.{name} is at offset {c_offset} in C but {offset} in numpy")


def new_commands(count: int) -> np.ndarray:
    """A zeroed command array (zero is 'unused' for every optional field)."""
    return np.zeros(count, dtype=COMMAND_DTYPE)
