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


def test_the_fsync_floor_writes_a_journal_record_into_reserved_space_as_the_journal_does(
    tmp_path: Path,
) -> None:
    """Issue #17's honest floor: an O_APPEND probe grows its file on every write (its fdatasync
    then writes the size too), which the journal, writing into fallocated space, never does."""
    from hftgate.bench.execution import FsyncProbe, single_order_record_bytes
    from services.execution.journal import DEFAULT_PREALLOCATE_BYTES
    from services.execution.records import Batch, encode_batch

    probe = FsyncProbe(tmp_path)
    try:
        assert len(probe.round_trips_ns(5)) == 5
        size = probe.path.stat().st_size
        assert size == DEFAULT_PREALLOCATE_BYTES  # reserved ahead, not grown by each write
        probe.round_trips_ns(5)
        assert probe.path.stat().st_size == size
        record = single_order_record_bytes()
        assert probe.path.read_bytes()[: 10 * record] == b"f" * (10 * record)
    finally:
        probe.close()
    # The record is the size of one SubmitOrder's in the journal (a 12-character client id).
    import numpy as np

    from hftgate.matching.types import COMMAND_DTYPE
    from services.execution.journal import RECORD_HEADER_BYTES
    from services.execution.records import META_DTYPE

    meta = np.zeros(1, META_DTYPE)
    meta["client_id_length"] = 12
    payload = encode_batch(Batch(1, 0, 0, np.zeros(1, COMMAND_DTYPE), meta, b"x" * 12))
    assert record == RECORD_HEADER_BYTES + len(payload)
