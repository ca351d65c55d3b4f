"""The fuzz harness (hftgate.fuzz) against the real suite, briefly: `hftgate fuzz --minutes N` runs long.

Every RPC of execution, market data and the cache gets hypothesis-generated messages and mutated
raw bytes with valid credentials (so the calls reach the handlers); the contract is that no
call answers UNKNOWN or INTERNAL or leaks Python internals, no unary call hangs past its
deadline, and afterwards each service still serves a normal request within a memory bound.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hftgate.fuzz import FuzzReport, fuzz_suite, message_strategy, mutate


def _describe(report: FuzzReport) -> str:
    lines = [f"{report.calls} calls, codes {dict(report.codes)}"]
    seen: set[tuple[str, str]] = set()
    for finding in report.findings:
        key = (finding.method, finding.detail[:80])
        if key not in seen:
            seen.add(key)
            lines.append(
                f"{finding.kind} {finding.method}: {finding.detail} (request {finding.request_hex[:80]})"
            )
    return "\n".join(lines[:30])


def test_mutations_damage_but_stay_bounded() -> None:
    rng = random.Random(7)
    base = b"\x0a\x07BTCUSDT\x10\x02"
    outputs = {mutate(base, rng) for _ in range(200)}
    assert len(outputs) > 100
    assert all(len(out) < 4 * len(base) + 80 for out in outputs)


def test_generated_messages_cover_edge_values() -> None:
    from hypothesis import HealthCheck, given, settings

    from hftgate.v1 import execution_pb2

    prices: set[int] = set()

    @settings(max_examples=300, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(message_strategy(execution_pb2.NewOrder.DESCRIPTOR))
    def collect(order: execution_pb2.NewOrder) -> None:
        prices.add(order.price_ticks)

    collect()
    assert {2**63 - 1, -(2**63), 2**61} & prices


@pytest.mark.timeout(300)
def test_every_rpc_of_every_service_survives_a_short_fuzz(tmp_path: Path) -> None:
    reports = fuzz_suite(tmp_path, seconds_per_service=4.0)
    assert set(reports) == {"execution", "marketdata", "cache", "gateway", "scaler"}
    for name, report in reports.items():
        assert report.calls > 60, (name, report.calls)
        assert report.codes.get("OK", 0) > 0, (name, dict(report.codes))
    problems = {name: _describe(r) for name, r in reports.items() if r.findings}
    assert not problems, "\n\n".join(f"== {name}\n{text}" for name, text in problems.items())
