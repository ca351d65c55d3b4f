"""A market data MarketUpdate as protobuf wire bytes, written by the C core in one call.

The bytes are exactly the ones protobuf writes for the same message (see
``native/include/hft_md_wire.h``): default-valued scalars left out, ``symbol`` and ``top``
always present, ``last_trade`` present when the update has one. Building and serializing a
protobuf message in Python costs several times as much, and the market data service pays
it for every update it publishes.

``MarketUpdateEncoder.encode`` takes the update itself (anything with ``UpdateFields``'
attributes, such as the service's ``SymbolUpdate``) and reads it by attribute name: a call
of 20 keyword arguments costs CPython more than the encoding (it leaves its fast path above
~15), and 20 positional ones would have to follow a field order by hand.

An encoder writes into a buffer it owns and copies the result out as ``bytes``; it is not
safe to share between threads (the market data service uses one on its event loop).
"""

from __future__ import annotations

from typing import Final, Protocol

from hftgate.native import check, ffi, lib

# Most bytes an encoding takes besides its venue's and symbol's UTF-8 bytes.
FIXED_MAX_BYTES: Final[int] = lib.HFT_MD_WIRE_FIXED_MAX_BYTES


class UpdateFields(Protocol):
    """What ``encode`` reads of an update, by MarketUpdate field (proto type in brackets)."""

    @property
    def kind(self) -> int: ...  # kind [UpdateKind, int32]
    @property
    def symbol_sequence(self) -> int: ...  # symbol_sequence [uint64]
    @property
    def venue(self) -> str: ...  # symbol.venue
    @property
    def symbol(self) -> str: ...  # symbol.name
    @property
    def bid_price(self) -> float: ...  # top.bid_price
    @property
    def bid_size(self) -> float: ...  # top.bid_size
    @property
    def ask_price(self) -> float: ...  # top.ask_price
    @property
    def ask_size(self) -> float: ...  # top.ask_size
    @property
    def top_ts_ns(self) -> int: ...  # top.exchange_ts_ns [int64]

    # (price, size, aggressor_side [Side, int32], exchange_ts_ns [int64], trade_id [uint64]) of
    # last_trade, or None for no last_trade.
    @property
    def last_trade(self) -> tuple[float, float, int, int, int] | None: ...
    @property
    def vwap(self) -> float: ...  # vwap
    @property
    def receive_ts_ns(self) -> int: ...  # receive_ts_ns [int64]


class StateFields(Protocol):
    """What ``MarketUpdateEncoder.encode_state`` reads of a symbol's state (the market data service's
    ``SymbolState``): its names already UTF-8 encoded, its top of book, its last trade (read
    only when ``trade_count`` is not 0) and its rolling VWAP."""

    wire_names: tuple[bytes, int, bytes, int] | None  # (venue, its length, symbol, its length)
    symbol_sequence: int
    bid_price: float
    bid_size: float
    ask_price: float
    ask_size: float
    top_ts_ns: int
    trade_count: int
    last_trade_price: float
    last_trade_size: float
    last_trade_side: int
    last_trade_ts_ns: int
    last_trade_id: int
    vwap: float


# (lowest, highest) value of each integer proto type.
_UINT64 = (0, 2**64 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_INT32 = (-(2**31), 2**31 - 1)


class MarketUpdateEncoder:
    """Encodes MarketUpdate messages into a reused buffer of ``capacity_bytes``.

    A message that does not fit (venue and symbol together longer than
    ``capacity_bytes - FIXED_MAX_BYTES`` bytes) is encoded into a buffer made for that call.
    """

    __slots__ = ("_buffer", "_buffer_chars", "_capacity", "_encode", "_string_room", "_written")

    def __init__(self, capacity_bytes: int = 4096) -> None:
        if capacity_bytes < FIXED_MAX_BYTES:
            raise ValueError(f"capacity_bytes must be at least {FIXED_MAX_BYTES}, got {capacity_bytes}")
        self._capacity = capacity_bytes
        self._string_room = capacity_bytes - FIXED_MAX_BYTES
        self._buffer = ffi.new("uint8_t[]", capacity_bytes)
        # ffi.unpack of a char pointer returns bytes in one copy (of uint8_t, a list of ints).
        self._buffer_chars = ffi.cast("char *", self._buffer)
        self._written = ffi.new("size_t *")
        self._encode = lib.hft_md_wire_market_update

    def encode(
        self, update: UpdateFields, conflated: int = 0, stream_sequence: int = 0, framed: bool = False
    ) -> bytes:
        """The MarketUpdate of ``update`` with these ``conflated`` and ``stream_sequence`` (0 leaves
        a field out); ``framed``: as one entry of MarketUpdates.updates (tag and length in front).

        Raises ``ValueError`` naming the field for an integer outside its proto type's range,
        ``TypeError`` naming it for a value of the wrong type, ``UnicodeEncodeError`` for a string
        that is not valid Unicode (a lone surrogate), as protobuf does.
        """
        venue_bytes = update.venue.encode()
        symbol_bytes = update.symbol.encode()
        string_bytes = len(venue_bytes) + len(symbol_bytes)
        if string_bytes <= self._string_room:
            buffer, buffer_chars, capacity = self._buffer, self._buffer_chars, self._capacity
        else:
            # Sized by the C side's bound, so this call cannot run out of room either.
            capacity = FIXED_MAX_BYTES + string_bytes
            buffer = ffi.new("uint8_t[]", capacity)
            buffer_chars = ffi.cast("char *", buffer)
        last_trade = update.last_trade
        if last_trade is None:
            has_last_trade = False
            trade_price = trade_size = 0.0
            side = trade_ts_ns = trade_id = 0
        else:
            has_last_trade = True
            trade_price, trade_size, side, trade_ts_ns, trade_id = last_trade
        written = self._written
        try:
            rc = self._encode(
                stream_sequence, update.symbol_sequence, conflated, update.kind,
                venue_bytes, len(venue_bytes), symbol_bytes, len(symbol_bytes),
                update.bid_price, update.bid_size, update.ask_price, update.ask_size, update.top_ts_ns,
                has_last_trade, trade_price, trade_size, side, trade_ts_ns, trade_id,
                update.vwap, update.receive_ts_ns, framed, buffer, capacity, written,
            )  # fmt: skip
        except (OverflowError, TypeError):
            _raise_for_bad_field(update, conflated, stream_sequence)
            raise
        if rc < 0:
            check(rc, f"encoding a MarketUpdate of {update.venue!r} {update.symbol!r}")
        return ffi.unpack(buffer_chars, written[0])  # type: ignore[no-any-return]

    def encode_state(self, state: StateFields, kind: int, receive_ts_ns: int) -> bytes | None:
        """A symbol's state as one framed MarketUpdates entry (conflated and stream_sequence 0),
        read straight from the state: the market data service encodes every update it logs for
        its subscribers as it logs it, and this skips the ``SymbolUpdate`` tuple and the name
        encoding of :meth:`encode` (about half its cost). None when it cannot encode the state
        (no ``wire_names``, names longer than the buffer's room, an integer out of its proto
        type's range): the caller then takes :meth:`encode`, which raises an error naming the
        field."""
        names = state.wire_names
        if names is None:
            return None
        venue, venue_len, symbol, symbol_len = names
        if venue_len + symbol_len > self._string_room:
            return None
        if state.trade_count:
            has_last_trade = True
            trade_price, trade_size = state.last_trade_price, state.last_trade_size
            side, trade_ts_ns, trade_id = state.last_trade_side, state.last_trade_ts_ns, state.last_trade_id
        else:
            has_last_trade = False
            trade_price = trade_size = 0.0
            side = trade_ts_ns = trade_id = 0
        try:
            rc = self._encode(
                0, state.symbol_sequence, 0, kind, venue, venue_len, symbol, symbol_len,
                state.bid_price, state.bid_size, state.ask_price, state.ask_size, state.top_ts_ns,
                has_last_trade, trade_price, trade_size, side, trade_ts_ns, trade_id,
                state.vwap, receive_ts_ns, True, self._buffer, self._capacity, self._written,
            )  # fmt: skip
        except (OverflowError, TypeError):
            return None
        if rc < 0:
            return None
        return ffi.unpack(self._buffer_chars, self._written[0])  # type: ignore[no-any-return]


def _raise_for_bad_field(update: UpdateFields, conflated: int, stream_sequence: int) -> None:
    """Raise the error that names the field C could not take (cffi's own message names none)."""
    trade = update.last_trade or (0.0, 0.0, 0, 0, 0)
    integers = (
        ("stream_sequence", stream_sequence, _UINT64),
        ("symbol_sequence", update.symbol_sequence, _UINT64),
        ("conflated", conflated, _UINT64),
        ("kind", update.kind, _INT32),
        ("top.exchange_ts_ns", update.top_ts_ns, _INT64),
        ("last_trade.aggressor_side", trade[2], _INT32),
        ("last_trade.exchange_ts_ns", trade[3], _INT64),
        ("last_trade.trade_id", trade[4], _UINT64),
        ("receive_ts_ns", update.receive_ts_ns, _INT64),
    )
    for name, value, (lowest, highest) in integers:
        if not isinstance(value, int):
            raise TypeError(f"MarketUpdate {name} must be an int, got {type(value).__name__}")
        if not lowest <= value <= highest:
            raise ValueError(f"MarketUpdate {name} must be between {lowest} and {highest}, got {value}")
    doubles = (
        ("top.bid_price", update.bid_price),
        ("top.bid_size", update.bid_size),
        ("top.ask_price", update.ask_price),
        ("top.ask_size", update.ask_size),
        ("last_trade.price", trade[0]),
        ("last_trade.size", trade[1]),
        ("vwap", update.vwap),
    )
    for name, number in doubles:
        if not isinstance(number, (int, float)):
            raise TypeError(f"MarketUpdate {name} must be a float, got {type(number).__name__}")
