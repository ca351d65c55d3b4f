"""The three kinds of tick every replay reader yields, independent of file format and of gRPC.

They are named tuples: cheap to create by the hundred thousand and immutable. Times are
int64 nanoseconds since the Unix epoch (UTC); prices and sizes are the venue's decimal
values as float, in the venue's units, exactly as the file states them.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple


class Aggressor(IntEnum):
    """Which side took liquidity in a trade; the values are common.proto's ``Side``."""

    UNKNOWN = 0
    BUY = 1
    SELL = 2


class QuoteTick(NamedTuple):
    """Best bid and offer of one symbol on one venue."""

    venue: str
    symbol: str
    # The venue's event time; the recorder's receive time when the venue gives none.
    exchange_ts_ns: int
    # When the recorder received it: the clock shared by every venue of one recording.
    receive_ts_ns: int
    # The venue's book update id, 0 when it has none.
    sequence: int
    bid_price: float
    bid_size: float
    ask_price: float
    ask_size: float


class TradeTick(NamedTuple):
    """One trade printed by a venue."""

    venue: str
    symbol: str
    exchange_ts_ns: int
    receive_ts_ns: int
    # The venue's trade id, 0 when it has none.
    trade_id: int
    price: float
    size: float
    aggressor: Aggressor


class DepthTick(NamedTuple):
    """A depth change (each level set, or deleted when its size is 0) or a full snapshot."""

    venue: str
    symbol: str
    exchange_ts_ns: int
    receive_ts_ns: int
    sequence: int
    is_snapshot: bool
    # (price, size) pairs, in the file's order.
    bids: tuple[tuple[float, float], ...]
    asks: tuple[tuple[float, float], ...]


Tick = QuoteTick | TradeTick | DepthTick

NS_PER_US = 1_000
NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
