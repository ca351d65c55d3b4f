"""Protocol buffers' wire format, the little the services write by hand: a varint and a
length-delimited field around bytes already encoded (by the C encoders), so that a message made
of such bytes is never parsed into a protobuf object only to be serialized again."""

from __future__ import annotations

#: Wire type of a length-delimited field (a message, a string, a packed repeated field).
LENGTH_DELIMITED = 2


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


def length_delimited(field: int, data: bytes) -> bytes:
    """Field number ``field`` holding ``data`` (a message's or a string's encoded bytes)."""
    return varint(field << 3 | LENGTH_DELIMITED) + varint(len(data)) + data
