"""Benchmark: the C CRC-32 that frames journal records and snapshots, against zlib's.

``crc32_mb_gb_per_s``: 1 MiB buffers (a 10,000-order batch record is ~1 MB; a snapshot is
checksummed in pieces of that order); ``crc32_record_ns``: one 128-byte buffer, about one
SubmitOrder's journal record, through the Python binding (the journal writer calls the C function
directly, so this is an upper bound on what a record costs it). ``zlib_*`` are the same through
Python's ``zlib.crc32``, measured interleaved in the same run: the floor a C checksum must not lose
to. ``crc32_kernel`` says which kernel ran (``HFT_NATIVE_FORCE_SCALAR=1`` forces the table
kernel, for the comparison between the two). Medians over ``repeats`` samples.
"""

from __future__ import annotations

import os
import statistics
import time
import zlib
from collections.abc import Callable

from hftgate.native.journal_writer import crc32, crc32_kernel

BIG_BYTES = 1 << 20
BIG_CALLS = 64
RECORD_BYTES = 128
RECORD_CALLS = 100_000


def _seconds(checksum: Callable[[bytes], int], data: bytes, calls: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(calls):
        checksum(data)
    return (time.perf_counter_ns() - start) / 1e9


def run(repeats: int = 5) -> dict[str, float | str]:
    big = os.urandom(BIG_BYTES)
    record = os.urandom(RECORD_BYTES)
    assert crc32(big) == zlib.crc32(big)
    contenders: dict[str, Callable[[bytes], int]] = {"crc32": crc32, "zlib": zlib.crc32}
    gb_per_s: dict[str, list[float]] = {name: [] for name in contenders}
    record_ns: dict[str, list[float]] = {name: [] for name in contenders}
    for checksum in contenders.values():  # warm up
        _seconds(checksum, big, 4)
    for _ in range(max(repeats, 1)):
        for name, checksum in contenders.items():
            gb_per_s[name].append(BIG_BYTES * BIG_CALLS / _seconds(checksum, big, BIG_CALLS) / 1e9)
            record_ns[name].append(_seconds(checksum, record, RECORD_CALLS) * 1e9 / RECORD_CALLS)
    result: dict[str, float | str] = {}
    for name in contenders:
        result[f"{name}_mb_gb_per_s"] = statistics.median(gb_per_s[name])
        result[f"{name}_record_ns"] = statistics.median(record_ns[name])
    result["crc32_over_zlib_throughput"] = statistics.median(gb_per_s["crc32"]) / statistics.median(
        gb_per_s["zlib"]
    )
    result["crc32_kernel"] = crc32_kernel()
    return result


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:28s} {value}")
