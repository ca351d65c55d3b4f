"""Protobuf wire bytes written by hand, for tests that feed decoders what an encoder never writes."""

from __future__ import annotations

VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5


def varint(value: int) -> bytes:
    """``value`` as a varint, shortest form; a negative value as its 64-bit two's complement (ten bytes)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def length_delimited(field: int, payload: bytes) -> bytes:
    return key(field, LEN) + varint(len(payload)) + payload
