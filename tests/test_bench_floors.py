"""The floor servers the benchmarks measure against do what their names say."""

from __future__ import annotations

from pathlib import Path

from hftgate.bench.floors import DURABLE_ECHO_RECORD_BYTES, GrpcEcho, TcpPingPong, floor_server
from services.execution.journal import Journal


async def test_durable_echo_answers_only_with_a_journaled_record(tmp_path: Path) -> None:
    with floor_server("grpc-journal", tmp_path) as target:
        echo = GrpcEcho(target)
        try:
            times = await echo.round_trips_ns(25)
        finally:
            await echo.close()
    assert len(times) == 25 and (times > 0).all()
    records = list(Journal.open(tmp_path).replay())  # the server has exited: its journal is closed
    assert [r.seq for r in records] == list(range(1, 26))
    assert {len(r.payload) for r in records} == {DURABLE_ECHO_RECORD_BYTES}


async def test_echo_and_tcp_floors_answer() -> None:
    with floor_server("grpc") as grpc_target, floor_server("tcp") as tcp_target:
        echo = GrpcEcho(grpc_target)
        try:
            assert len(await echo.round_trips_ns(10)) == 10
        finally:
            await echo.close()
        with TcpPingPong(tcp_target) as tcp:
            assert (tcp.round_trips_ns(10) > 0).all()
