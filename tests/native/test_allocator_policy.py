"""hftgate.native.memory's top pad: a large batch's transient arrays, freed at the top of the heap,
stay resident for the next batch instead of being handed back and faulted in afresh (counted as
the process's minor page faults, in a fresh interpreter: the test process's heap history would
decide where blocks land)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hftgate.native import memory

_BATCHES_PROBE = """
import resource, sys
import numpy as np
from hftgate.native import memory

assert memory.pin_mmap_threshold(top_pad_bytes=int(sys.argv[1]))

def batch():
    # A 10,000-order batch's worth of transient arrays: each under the mmap threshold, so
    # they come from the heap, ~9 MB in all, written and freed in reverse order.
    arrays = [np.ones(100_000) for _ in range(12)]
    del arrays

batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(top_pad_bytes: int) -> int:
    probe = subprocess.run(
        [sys.executable, "-c", _BATCHES_PROBE, str(top_pad_bytes)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    return int(probe.stdout.strip())


@pytest.mark.skipif(memory._LIBC is None, reason="glibc malloc only")
def test_a_batchs_freed_arrays_are_reused_not_faulted_in_again() -> None:
    padded = _faults(memory.DEFAULT_TOP_PAD_BYTES)
    unpadded = _faults(0)
    # 20 batches of ~9 MB: ~2,300 pages each when the heap's top is handed back every time.
    assert unpadded > 20 * 1000, unpadded
    assert padded < 500, padded
    with pytest.raises(ValueError):
        memory.pin_mmap_threshold(top_pad_bytes=-1)
