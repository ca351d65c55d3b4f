"""``hftgate bench gateway`` end to end with tiny sample counts: two real shards, the Python gateway
and HAProxy as processes, every key of issue 14 present and related sanely (no timing bars); and
``hftgate bench crash`` on the same two-shard suite (kill -9 of either shard while both trade)."""

from __future__ import annotations

import os

import pytest

from hftgate.bench.gateway import PATHS, THROUGHPUT_PATHS, OrderPathSettings, run
from services.gateway.haproxy import haproxy_binary


def test_every_plane_is_measured_on_real_processes_and_every_bar_is_reported() -> None:
    if haproxy_binary() is None:
        message = "haproxy is not installed (apt-get install -y haproxy): bench gateway cannot run"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    tiny = OrderPathSettings(samples=60, block=20, throughput_calls=128, throughput_rounds=1, warmup=10)
    out = run(settings=tiny, balancing_calls=80)

    for plane in PATHS:
        # Every order of every plane reached a shard that owned its symbol and was accepted.
        assert int(out[f"{plane}_accepted"]) > 0 and out[f"{plane}_rejected"] == 0, plane
        assert float(out[f"{plane}_p99_ms"]) >= float(out[f"{plane}_p50_ms"]) > 0
    # The routing client sent every order straight to a shard, none through the gateway.
    assert int(out["routing_client_direct_calls"]) > 0 and out["routing_client_gateway_calls"] == 0
    for plane in ("routing_client", "gateway", "haproxy", "python_proxy_floor"):
        # Paired per turn against the direct block: a difference of latencies, less than either.
        assert abs(float(out[f"{plane}_added_p50_ms"])) < float(out[f"{plane}_p99_ms"])
    for plane in THROUGHPUT_PATHS:
        assert float(out[f"{plane}_rps"]) > 0
    assert float(out["grpc_echo_p50_ms"]) > float(out["tcp_floor_p50_ms"]) > 0
    # The do-nothing proxy floor forwards to the owning shard: a hop, so slower than direct.
    assert float(out["python_proxy_floor_p50_ms"]) > float(out["direct_p50_ms"])
    own = float(out["gateway_added_p50_ms"]) - float(out["python_proxy_floor_added_p50_ms"])
    assert float(out["gateway_own_added_p50_ms"]) == pytest.approx(own)
    ratio = float(out["gateway_rps"]) / float(out["direct_rps"])
    assert float(out["gateway_rps_ratio"]) == pytest.approx(ratio)
    for key in ("no_fault_p99_ms", "round_robin_p99_ms", "p2c_inflight_p99_ms", "p2c_peak_ewma_p99_ms"):
        assert float(out[key]) > 0
    bars = [k for k in out if k.endswith("_bar_holds")]
    assert set(bars) == {
        "routing_client_bar_holds",
        "gateway_bar_holds",
        "haproxy_bar_holds",
        "gateway_rps_bar_holds",
        "balancing_bar_holds",
    }
    assert out["bars_hold"] == all(bool(out[k]) for k in bars)
