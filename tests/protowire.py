"""Protobuf wire bytes written by hand, for tests that feed decoders what an encoder never writes
(hftgate.protowire's, with negative varints and every wire type besides)."""

from __future__ import annotations

from hftgate import protowire
from hftgate.protowire import length_delimited

__all__ = [
    "END_GROUP",
    "FIXED32",
    "FIXED64",
    "LEN",
    "START_GROUP",
    "VARINT",
    "corrupted",
    "key",
    "length_delimited",
    "varint",
]

VARINT, FIXED64, LEN, START_GROUP, END_GROUP, FIXED32 = 0, 1, protowire.LENGTH_DELIMITED, 3, 4, 5


def varint(value: int) -> bytes:
    """``value`` as a varint, shortest form; a negative value as its 64-bit two's complement (ten bytes)."""
    return protowire.varint(value & ((1 << 64) - 1))


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def corrupted(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """``data`` with each (position, value, action) edit applied in turn: action 0 sets the byte at
    the position, 1 inserts ``value`` there, 2 cuts everything from there on."""
    out = bytearray(data)
    for position, value, action in edits:
        at = position % (len(out) + 1)
        if action == 0 and at < len(out):
            out[at] = value
        elif action == 1:
            out.insert(at, value)
        elif action == 2:
            del out[at:]
    return bytes(out)
