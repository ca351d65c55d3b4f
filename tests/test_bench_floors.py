"""The floor servers the benchmarks measure against do what their names say."""

from __future__ import annotations

from pathlib import Path

import pytest

from hftgate.bench.floors import DURABLE_ECHO_RECORD_BYTES, GrpcEcho, TcpPingPong, floor_server
from services.execution.journal import Journal


@pytest.mark.parametrize("placed", [False, True])
async def test_durable_echo_answers_only_with_a_journaled_record(tmp_path: Path, placed: bool) -> None:
    # placed: the execution service's CPU placement and fsync polling (the execution benchmark's floor)
    with floor_server("grpc-journal", tmp_path, placed=placed) as target:
        echo = GrpcEcho(target)
        try:
            times = await echo.round_trips_ns(25)
        finally:
            await echo.close()
    assert len(times) == 25 and (times > 0).all()
    records = list(Journal.open(tmp_path).replay())  # the server has exited: its journal is closed
    assert [r.seq for r in records] == list(range(1, 26))
    assert {len(r.payload) for r in records} == {DURABLE_ECHO_RECORD_BYTES}


@pytest.mark.parametrize("placed", [False, True])
async def test_echo_and_tcp_floors_answer(placed: bool) -> None:
    with floor_server("grpc", placed=placed) as grpc_target, floor_server("tcp", placed=placed) as tcp_target:
        echo = GrpcEcho(grpc_target)
        try:
            assert len(await echo.round_trips_ns(10)) == 10
        finally:
            await echo.close()
        with TcpPingPong(tcp_target) as tcp:
            assert (tcp.round_trips_ns(10) > 0).all()
