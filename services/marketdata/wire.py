"""Subscribe's updates as protobuf bytes, encoded once and shared by every stream.

A MarketUpdate has two fields that differ between streams, ``stream_sequence`` (1) and
``conflated`` (3); everything else is the same for every stream that sends the update.
Protobuf fields may come in any order and a message is the concatenation of its fields, so
the shared part is encoded once per update (``update_bytes``) and a stream adds its own fields
in front (``single_message``). In a MarketUpdates message each update is a length-delimited
field 1 (``framed_update``), and the batch's own ``first_stream_sequence`` (field 2) replaces the
per-update stream_sequence, so the framed bytes of an update are the same for every stream and
a batch is a join of shared bytes plus a few bytes of its own (``batch_message``).

No gRPC import: the servicer sends these bytes through handlers that do not serialize.
"""

from __future__ import annotations

from hftgate.v1 import marketdata_pb2
from services.marketdata.fanout import SymbolUpdate

# Tags (field number << 3 | wire type) of the fields added per stream.
_STREAM_SEQUENCE_TAG = b"\x08"  # MarketUpdate.stream_sequence, varint
_CONFLATED_TAG = b"\x18"  # MarketUpdate.conflated, varint
_UPDATES_TAG = b"\x0a"  # MarketUpdates.updates, length-delimited
_FIRST_STREAM_SEQUENCE_TAG = b"\x10"  # MarketUpdates.first_stream_sequence, varint

# One message reused for every encoding: setting fields of a live message and serializing it
# costs half of building a new one (the event loop is single-threaded, so it is never shared).
_scratch = marketdata_pb2.MarketUpdate()


def varint(value: int) -> bytes:
    """``value`` (0 <= value < 2**64) as a protobuf varint."""
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def update_bytes(update: SymbolUpdate, conflated: int = 0) -> bytes:
    """The MarketUpdate of ``update`` without stream_sequence."""
    m = _scratch
    m.symbol_sequence = update.symbol_sequence
    m.conflated = conflated
    m.kind = int(update.kind)  # type: ignore[assignment]
    symbol = m.symbol
    symbol.venue = update.venue
    symbol.name = update.symbol
    top = m.top
    top.bid_price = update.bid_price
    top.bid_size = update.bid_size
    top.ask_price = update.ask_price
    top.ask_size = update.ask_size
    top.exchange_ts_ns = update.top_ts_ns
    last_trade = update.last_trade
    if last_trade is None:
        m.ClearField("last_trade")
    else:
        trade = m.last_trade
        trade.price, trade.size, side, trade.exchange_ts_ns, trade.trade_id = last_trade
        trade.aggressor_side = side  # type: ignore[assignment]
    m.vwap = update.vwap
    m.receive_ts_ns = update.receive_ts_ns
    return m.SerializeToString()


# The tag and length of a MarketUpdates entry, by length (an update is ~150 bytes).
_ENTRY_PREFIX = [_UPDATES_TAG + varint(n) for n in range(16_384)]


def framed_update(update: SymbolUpdate) -> bytes:
    """``update`` as one entry of MarketUpdates.updates: the same bytes for every stream."""
    body = update_bytes(update)
    size = len(body)
    return (_ENTRY_PREFIX[size] if size < 16_384 else _UPDATES_TAG + varint(size)) + body


def framed_conflated_update(update: SymbolUpdate, conflated: int) -> bytes:
    """As ``framed_update``, for an update that carries its stream's conflation count."""
    body = update_bytes(update, conflated)
    return _UPDATES_TAG + varint(len(body)) + body


def batch_message(framed: list[bytes], first_stream_sequence: int) -> bytes:
    """A MarketUpdates message of already framed updates."""
    framed.append(_FIRST_STREAM_SEQUENCE_TAG + varint(first_stream_sequence))
    return b"".join(framed)


def single_message(update: SymbolUpdate, conflated: int, stream_sequence: int) -> bytes:
    """A whole MarketUpdate message (Subscribe's)."""
    return _STREAM_SEQUENCE_TAG + varint(stream_sequence) + update_bytes(update, conflated)
