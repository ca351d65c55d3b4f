"""Benchmark: throughput of the C core's SPSC ring and MPSC queue, thread to thread.

Both figures come from C (``hft_spsc_bench``, ``hft_mpsc_bench``): the threads are
pthreads started inside C, timed with CLOCK_MONOTONIC from the moment all are running
until the last record is taken, so Python adds nothing. Producers push one record at a
time (``push_wait``); the consumer takes batches of up to 256 (``pop_many_wait``) and
checks every record's producer id, sequence number and a hash of both, so a lost,
duplicated, reordered or torn record fails the run instead of flattering it.

* ``spsc_ops_per_s``: 1 producer + 1 consumer, 64-byte records (one cache line: the size
  of an order command); ``spsc_16b_ops_per_s`` the same with 16-byte records, four to a
  cache line, which the two cores then hand back and forth several times per line.
* ``mpsc_ops_per_s``: 2 producers + 1 consumer, 64-byte records; ``mpsc_16b_ops_per_s``
  with 16-byte records.

The C benchmark pins the consumer to one CPU and the producers to another, so every
figure is a cross-core hand-off: left unpinned, both threads sometimes share one core
and batch through the ring several times faster than any cross-core transfer allows.

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
        "spsc_ops_per_s": lambda: spsc_ops_per_s(RECORDS_PER_RUN, 64),
        "spsc_16b_ops_per_s": lambda: spsc_ops_per_s(RECORDS_PER_RUN, 16),
        "mpsc_ops_per_s": lambda: mpsc_ops_per_s(per_producer, MPSC_PRODUCERS, 64),
        "mpsc_16b_ops_per_s": lambda: mpsc_ops_per_s(per_producer, MPSC_PRODUCERS, 16),
    }
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(max(repeats, 1)):
        for name, measure in contenders.items():
            samples[name].append(measure())
    return {name: statistics.median(values) for name, values in samples.items()}


if __name__ == "__main__":
    for key, value in run().items():
        print(f"{key:24s} {value / 1e6:10.2f} M")
