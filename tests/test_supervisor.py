"""`hftgate up` / `make run`: every built service starts as a plain process and reports SERVING."""

from __future__ import annotations

import os
import socket

import pytest

from hftgate.supervisor import available_services, start_services, stop_services


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_built_service_starts_serves_health_and_stops_cleanly(tmp_path: object) -> None:
    specs = available_services()
    if not specs:
        pytest.skip("no service is built yet")
    env = dict(os.environ)
    env["HFTGATE_STATE_DIR"] = str(tmp_path)
    for spec in specs:
        env[spec.port_variable] = str(free_port())
    running = start_services(specs, env=env, startup_timeout_s=60)
    try:
        assert [s.spec.name for s in running] == [s.name for s in specs]
        assert all(s.process.poll() is None for s in running)
    finally:
        stop_services(running, grace_s=15)
    # SIGTERM is a graceful stop: every service drains and exits 0.
    assert [s.process.returncode for s in running] == [0] * len(running)
