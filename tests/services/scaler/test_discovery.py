"""Real processes as ``hftgate up`` starts them: the scaler counts the replicas already running.

The supervisor starts the services first and the scaler last; each service reports to it. With a
policy of min_replicas 1 and a short evaluation interval, the scaler must not start a second
replica of a service that already runs (the bug: its first evaluation saw no reports yet and
started min_replicas).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import grpc
import pytest

from hftgate.security import SERVICE_TOKEN_METADATA, load_suite_secret
from hftgate.v1 import scaler_pb2 as pb
from hftgate.v1 import scaler_pb2_grpc


@pytest.mark.slow
def test_hftgate_up_replicas_are_counted_and_not_started_twice(tmp_path: Path) -> None:
    from hftgate.supervisor import ALL_SERVICES, start_services, stop_services

    specs = [s for s in ALL_SERVICES if s.name in ("cache", "marketdata", "scaler")]
    env = dict(os.environ)
    env["HFTGATE_STATE_DIR"] = str(tmp_path)
    for spec in specs:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            env[spec.port_variable] = str(probe.getsockname()[1])
    env["HFTGATE_SCALER_POLICIES"] = "cache:inflight_requests:100:1:2,marketdata:inflight_requests:100:1:2"
    env["HFTGATE_SCALER_EVALUATION_INTERVAL_MS"] = "300"
    running = start_services(specs, env=env, startup_timeout_s=60)
    try:
        scaler = next(s for s in running if s.spec.name == "scaler")
        metadata = ((SERVICE_TOKEN_METADATA, load_suite_secret(scaler.env).token_for("admin")),)
        with grpc.insecure_channel(scaler.address) as channel:
            stub = scaler_pb2_grpc.ScalerServiceStub(channel)
            deadline = time.monotonic() + 20
            decided: set[str] = set()
            while time.monotonic() < deadline and decided != {"cache", "marketdata"}:
                reply = stub.GetDecisions(pb.GetDecisionsRequest(), metadata=metadata, timeout=5)
                decided = {d.service for d in reply.decisions if d.current_replicas == 1}
                time.sleep(0.2)
            # Both services were counted with their one running replica ...
            assert decided == {"cache", "marketdata"}, [
                (d.service, d.current_replicas, d.reason) for d in reply.decisions[:6]
            ]
            replicas = stub.ListReplicas(pb.ListReplicasRequest(), metadata=metadata, timeout=5).replicas
            # ... and the scaler started none of its own.
            assert sorted(r.service for r in replicas) == ["cache", "marketdata"]
            assert all(r.backend == pb.SCALING_BACKEND_UNSPECIFIED for r in replicas)
            reply = stub.GetDecisions(pb.GetDecisionsRequest(), metadata=metadata, timeout=5)
            assert all(d.action == pb.SCALING_ACTION_HOLD for d in reply.decisions)
    finally:
        stop_services(running, grace_s=15)
