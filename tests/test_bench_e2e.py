"""hftgate bench e2e: arguments, bars, and short real runs through each path to two durable shards."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hftgate.bench import e2e as bench_e2e
from hftgate.bench.e2e import HaproxyUnavailable, bars, check_arguments, e2e, figures, run_suite
from services.gateway.haproxy import haproxy_binary

REPORTED = (
    "rate", "duration_s", "sent", "acked", "errors", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "p999_ms",
    "jitter_ms", "max_ms", "grpc_echo_p50_ms", "tcp_floor_p50_ms",
)  # fmt: skip


@pytest.mark.parametrize(
    ("rate", "duration_s", "via", "message"),
    [
        (
            1000,
            60,
            "carrier-pigeon",
            "--via must be one of direct, client, gateway, haproxy, not 'carrier-pigeon'",
        ),
        (0, 60, "gateway", "--rate must be above 0 and at most 20000 orders/s, not 0"),
        (50_000, 1, "gateway", "not 50000"),
        (1000, 0, "gateway", "--duration must be above 0 and at most 600 s, not 0"),
        (1000, 3600, "direct", "not 3600"),
    ],
)
def test_bad_arguments_are_refused_saying_which(
    rate: float, duration_s: float, via: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_arguments(rate, duration_s, via)


def test_haproxy_missing_is_a_clear_not_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench_e2e, "haproxy_binary", lambda: None)

    with pytest.raises(HaproxyUnavailable, match="--via haproxy is not available: HAProxy is not installed"):
        e2e(100, 1, "haproxy")
    check_arguments(100, 1, "gateway")  # the other paths do not need it


def result(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "batch_per_ms": False, "sent": 1000, "acked": 1000, "errors": 0, "mean_ms": 5.0, "p95_ms": 10.0,
        "p99_ms": 20.0, "p999_ms": 40.0, "jitter_ms": 2.0,
    }  # fmt: skip
    return base | changes


def test_the_sustained_bars_each_hold_or_not() -> None:
    assert bars(result())["bars_hold"]
    for key, bad, bar in (
        ("mean_ms", 20.0, "mean_bar_holds"),
        ("p95_ms", 31.0, "p95_bar_holds"),
        ("p99_ms", 50.0, "p99_bar_holds"),
        ("p999_ms", 100.5, "p999_bar_holds"),
        ("jitter_ms", 5.1, "jitter_bar_holds"),
        ("errors", 1, "errors_bar_holds"),
        ("acked", 999, "acked_bar_holds"),
    ):
        held = bars(result(**{key: bad}))
        assert not held[bar] and not held["bars_hold"], key
        assert all(value for name, value in held.items() if name not in (bar, "bars_hold")), key


def test_a_burst_is_held_to_its_own_bars() -> None:
    burst = result(batch_per_ms=True, mean_ms=25.0, jitter_ms=9.0, p999_ms=150.0)
    held = bars(burst)
    assert held["bars_hold"] and set(held) == {"p99_bar_holds", "acked_bar_holds", "bars_hold"}
    assert not bars(burst | {"p99_ms": 60.0})["bars_hold"]
    assert not bars(burst | {"acked": 0})["bars_hold"]
    assert not bars(result(sent=0, acked=0))["acked_bar_holds"]  # nothing sent proves nothing


def _check_run(report: Any, rate: float, duration_s: float, via: str, batch: bool) -> dict[str, Any]:
    run = figures(report, rate, duration_s, via, batch)
    expected = int(rate * duration_s)
    assert run["scheduled"] == run["sent"] == expected, run
    assert run["errors"] == 0, run["failures_by_code"]
    assert run["rejected"] == 0, run["rejects_by_reason"]
    assert run["acked"] == run["sent"] and run["acked_ratio"] == 1.0
    assert 0 < run["p50_ms"] <= run["p95_ms"] <= run["p99_ms"] <= run["p999_ms"] <= run["max_ms"]
    assert run["jitter_ms"] >= 0 and run["mean_ms"] > 0
    return run


# (direct: the routing client sends to the owning shard too; the gateway path is the burst below.)
@pytest.mark.parametrize("via", ["client", "haproxy"])
def test_each_path_gets_every_order_to_its_shard_acknowledged(tmp_path: Path, via: str) -> None:
    if via == "haproxy" and haproxy_binary() is None:
        pytest.skip("HAProxy is not installed")
    report, problems = asyncio.run(run_suite(100, 1.0, via, False, tmp_path))

    assert problems == []
    run = _check_run(report, 100, 1.0, via, False)
    assert run["calls"] == run["sent"]  # one SubmitOrder per order


def test_a_burst_through_the_gateway_batches_per_wakeup_and_reports_floors() -> None:
    run = e2e(rate=1000, duration_s=1.0, via="gateway", batch_per_ms=True, floor_samples=300)

    for key in REPORTED:
        assert key in run, key
    assert run["scheduled"] == run["sent"] == 1000
    assert run["errors"] == 0, run["failures_by_code"]
    assert run["acked"] == run["sent"], run
    assert run["calls"] < run["sent"]  # batched: fewer calls than orders
    assert 0 < run["p50_ms"] <= run["p99_ms"] <= run["max_ms"]
    assert run["grpc_echo_p50_ms"] > run["tcp_floor_p50_ms"] > 0
    assert run["p50_over_echo"] == pytest.approx(run["p50_ms"] / run["grpc_echo_p50_ms"], rel=0.01)
    assert run["stop_problems"] == ""
    assert isinstance(run["bars_hold"], bool) and "p99_bar_holds" in run


def test_shards_neither_pin_nor_busy_poll_on_a_small_machine() -> None:
    from hftgate.bench.e2e import shard_settings

    small = shard_settings(2)
    assert small == {"loop_cpus": "off", "journal_writer_cpus": "off", "journal_ack_poll_us": "0"}
    assert shard_settings(16) == {}  # a big machine keeps the service's own placement
