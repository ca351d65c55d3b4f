"""The C CRC-32 the journal writer frames records with equals zlib's (Python recovery checks with zlib)."""

from __future__ import annotations

import random
import zlib

from hftgate.native.journal_writer import crc32


def test_crc32_equals_zlib_on_random_data_and_chains() -> None:
    rng = random.Random(7)
    for size in [0, 1, 7, 8, 9, 63, 64, 65, 1000, 70_001]:
        data = rng.randbytes(size)
        assert crc32(data) == zlib.crc32(data)
        split = size // 3
        assert crc32(data[split:], crc32(data[:split])) == zlib.crc32(data)
    view = memoryview(bytearray(b"unaligned start")).cast("B")[1:]
    assert crc32(view) == zlib.crc32(bytes(view))
