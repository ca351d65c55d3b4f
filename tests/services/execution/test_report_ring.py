"""The retained-reports ring: a batch's reports are copied in as (at most two) byte slices; the
ring must hold exactly what scattering each report to (sequence - 1) % capacity gives."""

from __future__ import annotations

import random

import numpy as np

from hftgate.matching import EngineConfig
from services.execution.state import REPORT_DTYPE, ExecutionState


def test_the_ring_holds_what_scattering_each_report_gives() -> None:
    rng = random.Random(5)
    for capacity in (1, 7, 64):
        state = ExecutionState(EngineConfig(max_symbols=1, max_levels_per_side=8, max_orders=64), capacity)
        expected = np.zeros(capacity, REPORT_DTYPE)
        sequence = 1
        for _ in range(200):
            count = rng.choice((1, 2, capacity - 1 or 1, capacity, capacity + 3, 9, 30))
            reports = np.zeros(count, REPORT_DTYPE)
            reports["sequence"] = np.arange(sequence, sequence + count)
            reports["order_id"] = [rng.randrange(1 << 40) for _ in range(count)]
            reports["status"] = [rng.randrange(8) for _ in range(count)]
            sequence += count
            state._retain(reports)
            for row in reports:
                expected[(int(row["sequence"]) - 1) % capacity] = row
            assert state.reports.tobytes() == expected.tobytes()
