"""The cache benchmark's order-path run: the execution service reads its reference data through a
real cache service, both under one suite secret (with two, every lookup was refused and the run
failed UNAUTHENTICATED)."""

from __future__ import annotations

import pytest

from hftgate.bench.cache import run_order_path


@pytest.mark.timeout(120)
def test_the_order_path_run_reads_reference_data_through_the_cache_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Whatever suite the developer's shell points at, the run provisions its own.
    for name in ("HFTGATE_STATE_DIR", "HFTGATE_SUITE_SECRET", "HFTGATE_SUITE_SECRET_FILE"):
        monkeypatch.delenv(name, raising=False)
    figures = run_order_path()
    assert figures["order_path_inputs"] > 10_000
    assert figures["order_path_lookups"] > 0
    assert figures["order_path_hit_ratio"] > 0.95  # the suite's promise: the order path's lookups hit
