"""Subscribe's updates as protobuf bytes, encoded once and shared by every stream.

A MarketUpdate has two fields that differ between streams, ``stream_sequence`` (1) and
``conflated`` (3); everything else is the same for every stream that sends the update. In a
MarketUpdates message each update is a length-delimited field 1 (``framed_update``), and the
batch's own ``first_stream_sequence`` (field 2) replaces the per-update stream_sequence, so the
framed bytes of an update are the same for every stream (encoded once per update, for the first
stream that sends it) and a batch is a join of shared bytes plus a few bytes of its own
(``batch_message``). An update that carries its stream's conflation count
(``framed_conflated_update``) and Subscribe's one-update messages (``single_message``) are
encoded per stream.

Every encoding is one call into the C core (``hftgate.native.md_wire``), which writes the bytes
protobuf would write for the same message.

No gRPC import: the servicer sends these bytes through handlers that do not serialize.
"""

from __future__ import annotations

from hftgate.native.md_wire import MarketUpdateEncoder
from hftgate.protowire import varint
from services.marketdata.fanout import SymbolUpdate

_FIRST_STREAM_SEQUENCE_TAG = b"\x10"  # MarketUpdates.first_stream_sequence, varint
_STREAM_SEQUENCE_TAG = b"\x08"  # MarketUpdate.stream_sequence, varint

# The C encoder writes the bytes protobuf would (native/include/hft_md_wire.h) at a fraction
# of the cost of setting a message's fields and serializing it. It owns one buffer, and the
# event loop is single-threaded, so it is never shared.
_encode = MarketUpdateEncoder().encode


def update_bytes(update: SymbolUpdate, conflated: int = 0) -> bytes:
    """The MarketUpdate of ``update`` without stream_sequence."""
    return _encode(update, conflated)


def framed_update(update: SymbolUpdate) -> bytes:
    """``update`` as one entry of MarketUpdates.updates: the same bytes for every stream."""
    return _encode(update, 0, 0, True)


def framed_conflated_update(update: SymbolUpdate, conflated: int) -> bytes:
    """As ``framed_update``, for an update that carries its stream's conflation count."""
    return _encode(update, conflated, 0, True)


def batch_message(framed: list[bytes], first_stream_sequence: int) -> bytes:
    """A MarketUpdates message of already framed updates."""
    framed.append(_FIRST_STREAM_SEQUENCE_TAG + varint(first_stream_sequence))
    return b"".join(framed)


def single_message(update: SymbolUpdate, conflated: int, stream_sequence: int) -> bytes:
    """A whole MarketUpdate message (Subscribe's)."""
    return _encode(update, conflated, stream_sequence)


def single_message_of_frame(frame: bytes, stream_sequence: int) -> bytes:
    """Subscribe's whole MarketUpdate message from a ``framed_update`` (conflated 0).

    The entry is tag, length, then the update's fields 2 and up in order; protobuf writes
    stream_sequence (field 1) first, so the message is that field followed by the entry's body."""
    start = 1
    while frame[start] & 0x80:  # the length's varint
        start += 1
    body = frame[start + 1 :]
    if not stream_sequence:
        return body
    return _STREAM_SEQUENCE_TAG + varint(stream_sequence) + body
