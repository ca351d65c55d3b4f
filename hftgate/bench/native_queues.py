"""Benchmark: throughput of the C core's SPSC ring and MPSC queue, thread to thread.

Both figures come from C (``hft_spsc_bench``, ``hft_mpsc_bench``): the threads are
pthreads started inside C, timed with CLOCK_MONOTONIC from the moment all are running
until the last record is taken, so Python adds nothing. Producers push one record at a
time (``push_wait``); the consumer takes batches of up to 256 (``pop_many_wait``) and
checks every record's producer id, sequence number and a hash of both, so a lost,
duplicated, reordered or torn record fails the run instead of flattering it.

* ``spsc_ops_per_s`` / ``spsc_64b_ops_per_s``: 1 producer + 1 consumer, 16- / 64-byte records.
* ``mpsc_ops_per_s`` / ``mpsc_64b_ops_per_s``: 2 producers + 1 consumer (three threads on
  however many cores there are), 16- / 64-byte records.

Figures are records per second, medians over ``repeats`` interleaved runs.
"""

from __future__ import annotations

import statistics

from hftgate.native import ffi, lib
from hftgate.native.errors import check

RECORDS_PER_RUN = 2_000_000
MPSC_PRODUCERS = 2


def spsc_ops_per_s(n_records: int, record_size: int) -> float:
    """One run of the C SPSC benchmark: records per second."""
    ops = ffi.new("double *")
    check(lib.hft_spsc_bench(n_records, record_size, ops), f"spsc_bench({n_records}, {record_size})")
    return float(ops[0])


def mpsc_ops_per_s(n_records_per_producer: int, producers: int, record_size: int) -> float:
    """One run of the C MPSC benchmark: records per second, all producers together."""
    ops = ffi.new("double *")
    check(
        lib.hft_mpsc_bench(n_records_per_producer, producers, record_size, ops),
        f"mpsc_bench({n_records_per_producer}, {producers}, {record_size})",
    )
    return float(ops[0])


def run(repeats: int = 5) -> dict[str, float]:
    per_producer = RECORDS_PER_RUN // MPSC_PRODUCERS
    contenders = {
        "spsc_ops_per_s": lambda: spsc_ops_per_s(RECORDS_PER_RUN, 16),
        "spsc_64b_ops_per_s": lambda: spsc_ops_per_s(RECORDS_PER_RUN, 64),
        "mpsc_ops_per_s": lambda: mpsc_ops_per_s(per_producer, MPSC_PRODUCERS, 16),
        "mpsc_64b_ops_per_s": lambda: mpsc_ops_per_s(per_producer, MPSC_PRODUCERS, 64),
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(max(repeats, 1)):
        for name, measure in contenders.items():
            samples[name].append(measure())
    return {name: statistics.median(values) for name, values in samples.items()}


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:24s} {value / 1e6:10.2f} M")
