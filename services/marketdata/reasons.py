"""Why a tick is rejected: the proto's TickRejectReason values, shared by the engine and its rules."""

from __future__ import annotations

from enum import IntEnum


class RejectReason(IntEnum):
    """Why a tick was rejected; the values are the proto's TickRejectReason."""

    UNKNOWN_VENUE = 1
    MISSING_SYMBOL = 2
    NOT_FINITE = 3
    INVALID_PRICE = 4
    INVALID_SIZE = 5
    CROSSED = 6
    BAD_TIMESTAMP = 7
    DEPTH_TOO_LARGE = 8
    DUPLICATE = 9
    OUT_OF_ORDER = 10
    TOO_MANY_SYMBOLS = 11
    VENUE_TOO_LONG = 12
    SYMBOL_TOO_LONG = 13
    VENUE_NOT_ALLOWED = 14
    SYMBOL_QUOTA_EXCEEDED = 15
    JUMP = 16
