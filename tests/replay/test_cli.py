"""``python -m services.marketdata`` as a real process, fed by the ``replay`` command."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from typer.testing import CliRunner

from hftgate.config import repo_root
from hftgate.replay.cli import app
from hftgate.v1 import common_pb2, marketdata_pb2, marketdata_pb2_grpc
from tests.services.marketdata.helpers import token_metadata


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def service_process(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[str], Path]]:
    port = free_port()
    log_path = tmp_path / "marketdata.log"
    env = {**os.environ, "HFTGATE_MARKETDATA_PORT": str(port), "HFTGATE_MARKETDATA_MAX_FUTURE_MS": "1000"}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.marketdata"], cwd=repo_root(), env=env, stderr=log, text=True
        )
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        yield port, process, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_replay_command_publishes_files_to_the_running_service(
    data_dir: Path, service_process: tuple[int, subprocess.Popen[str], Path]
) -> None:
    port, process, log_path = service_process
    assert "HFTGATE_MARKETDATA_PORT" not in log_path.read_text()  # the effective config, not the variables
    assert f"port={port}" in log_path.read_text()
    result = CliRunner().invoke(
        app,
        [
            str(data_dir / "quotes" / "binance-spot_ETHUSDT_bookTicker_20240808.csv.gz"),
            str(data_dir / "trades" / "binance-spot_ETHUSDT_trades_20240808.csv.gz"),
            "--target",
            f"127.0.0.1:{port}",
            "--speed",
            "0",
            "--limit-per-file",
            "1000",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "replayed 2,000 ticks" in result.output
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
        eth = common_pb2.Symbol(venue="binance-spot", name="ETHUSDT")
        snapshot = stub.GetSnapshot(
            marketdata_pb2.GetSnapshotRequest(filter=marketdata_pb2.SymbolFilter(symbols=[eth])),
            metadata=token_metadata("gateway"),
        )
    (state,) = snapshot.symbols
    assert (state.quotes, state.trades) == (1000, 1000)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert "draining" in log_path.read_text()


def test_replay_command_refuses_a_file_it_cannot_read(tmp_path: Path) -> None:
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello\n")
    result = CliRunner().invoke(app, [str(unknown)], env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"})
    assert result.exit_code != 0
    assert "no reader recognises" in result.output


def test_replay_command_reports_a_refusal_without_a_traceback(data_dir: Path, tmp_path: Path) -> None:
    """A service of another suite (another secret) refuses the feed: the command says so."""
    port = free_port()
    log_path = tmp_path / "other.log"
    env = {
        **os.environ,
        "HFTGATE_MARKETDATA_PORT": str(port),
        "HFTGATE_SUITE_SECRET": "another-suite-" + "z" * 32,
    }
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.marketdata"], cwd=repo_root(), env=env, stderr=log, text=True
        )
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)
        result = CliRunner().invoke(
            app,
            [
                str(data_dir / "trades" / "binance-spot_ETHUSDT_trades_20240808.csv.gz"),
                "--target",
                f"127.0.0.1:{port}",
                "--speed",
                "0",
                "--limit-per-file",
                "10",
            ],
            env={"COLUMNS": "400", "TERMINAL_WIDTH": "400"},
        )
        assert result.exit_code == 1
        assert "refused: UNAUTHENTICATED" in result.output
        assert "Traceback" not in result.output
    finally:
        process.kill()
        process.wait()
