"""A full disk under the journal: refuse inputs (UNAVAILABLE, NOT_SERVING), resume by itself, lose nothing.

Each test mounts a small tmpfs of its own (root only, as in CI) and fills it with a filler file;
without root or mount(2) the tests skip and say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.journal import Journal, JournalUnwritable
from tests.services.execution.conftest import execution_config, key, start_harness

ALICE = key("alice")


@pytest.fixture
def small_fs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted for this test only."""
    directory = tmp_path_factory.mktemp("small_fs")
    if os.geteuid() != 0:
        pytest.skip("full-disk tests need root to mount an 8 MiB tmpfs (CI runs them as root)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(directory)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount an 8 MiB tmpfs on {directory}: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        if subprocess.run(["umount", str(directory)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def fill(directory: Path, leave_bytes: int = 0) -> Path:
    """Take all the free space of ``directory``'s filesystem but about ``leave_bytes`` in one file."""
    filler = directory / f"filler-{uuid.uuid4().hex[:8]}"
    fd = os.open(filler, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        size, step = 0, 1 << 20
        while step >= 4096:
            try:
                os.posix_fallocate(fd, size, step)
                size += step
            except OSError:
                step //= 2
        os.ftruncate(fd, max(0, size - leave_bytes))
    finally:
        os.close(fd)
    return filler


def record(seq: int) -> bytes:
    return seq.to_bytes(8, "little") * 500  # 4,000 bytes


async def until(condition: Any, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached in time")


async def test_journal_waits_for_space_refuses_inputs_and_resumes_losing_nothing(small_fs: Path) -> None:
    # Only ~200 KiB left before the first record: the 4 MiB chunk cannot be reserved, smaller steps can.
    filler = fill(small_fs, leave_bytes=200 * 1024)
    journal = Journal.open(small_fs / "journal", space_retry_max_ms=5)
    changes: list[bool] = []
    journal.on_writable_change(changes.append)
    journal.start()
    futures: dict[int, asyncio.Future[int]] = {}
    while journal.writable and len(futures) < 2_000:  # 2,000 * 4 KB would need 8 MB
        seq = journal.next_seq
        futures[seq] = journal.append(record(seq))
        await asyncio.sleep(0.0005)
    assert not journal.writable, "the journal never reported the full disk"
    assert changes == [False]
    durable_while_full = journal.durable_seq
    assert durable_while_full > 10  # it wrote on in smaller steps while any room was left
    with pytest.raises(JournalUnwritable, match=r"disk is full .* refused until space is freed"):
        journal.check_writable()
    await asyncio.sleep(0.1)
    # Nothing acknowledged that is not written: the records past the stall wait, neither acked nor failed.
    assert journal.durable_seq == durable_while_full
    waiting = [seq for seq, future in futures.items() if not future.done()]
    assert waiting and min(waiting) == durable_while_full + 1
    assert journal.writer_status().blocked and journal.writer_status().space_retries >= 2

    filler.unlink()  # space returns: the writer carries on by itself
    assert sorted(await asyncio.gather(*futures.values())) == sorted(futures)
    await until(lambda: journal.writable)
    assert changes == [False, True]
    journal.check_writable()
    assert await journal.append(record(journal.next_seq)) == len(futures) + 1
    await journal.close()

    reopened = Journal.open(small_fs / "journal")
    replayed = [(r.seq, r.payload) for r in reopened.replay()]
    assert replayed == [(seq, record(seq)) for seq in range(1, len(futures) + 2)]


async def _health(channel: grpc.aio.Channel) -> int:
    from services.execution.server import SERVICE_NAME

    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    return int(reply.status)


def _wire_health(running: Any) -> None:
    """server.py makes health follow the journal (checked, not patched in here)."""
    assert running.core.journal._writable_listeners, "the service does not report the journal's state"


def _batch(prefix: str, count: int, base_price: int) -> api.SubmitOrdersRequest:
    return api.SubmitOrdersRequest(
        orders=[
            api.NewOrder(
                client_order_id=f"{prefix}-{i}",
                symbol="BTCUSDT",
                side=common.SIDE_BUY,
                order_type=api.ORDER_TYPE_LIMIT,
                price_ticks=base_price + i % 50,
                quantity_lots=1,
            )
            for i in range(count)
        ]
    )


async def test_service_on_a_full_disk_answers_unavailable_not_serving_then_resumes_and_recovers_every_ack(
    small_fs: Path, tmp_path: Path
) -> None:
    from services.execution.recovery import load_state

    # The journal (and snapshots) on the small filesystem; ledger and reference rows elsewhere.
    config = execution_config(
        small_fs,
        ledger_database_url=f"sqlite+aiosqlite:///{tmp_path / 'ledger.sqlite3'}",
        reference_database_url=f"sqlite+aiosqlite:///{tmp_path / 'reference.sqlite3'}",
        journal_ack_poll_us=0,
    )
    harness = await start_harness(config)
    acked: set[str] = set()
    refused: list[str] = []
    try:
        _wire_health(harness.running)
        journal = harness.core.journal
        first = await harness.stub.SubmitOrders(_batch("warm", 10, 1_000), metadata=ALICE)
        acked.update(a.client_order_id for a in first.acks if a.sequence and a.durable)
        assert len(acked) == 10
        filler = fill(small_fs, leave_bytes=300 * 1024)

        # Batches until the disk is full; the one in flight then waits (accepted, not acknowledged).
        in_flight: list[asyncio.Task[Any]] = []
        for round_ in range(400):
            if not journal.writable:
                break
            task = asyncio.ensure_future(
                harness.stub.SubmitOrders(_batch(f"r{round_}", 200, 1_000), metadata=ALICE, timeout=60)
            )
            in_flight.append(task)
            done, _ = await asyncio.wait({task}, timeout=2)
            if done:
                acked.update(a.client_order_id for a in task.result().acks if a.sequence and a.durable)
        assert not journal.writable, "the service never filled its disk"
        assert await _health(harness.channel) == health_pb2.HealthCheckResponse.NOT_SERVING
        waiting = [t for t in in_flight if not t.done()]
        assert waiting  # the batch the writer holds: accepted, not acknowledged

        for attempt in range(3):  # new inputs are refused with UNAVAILABLE and a message that says why
            with pytest.raises(grpc.aio.AioRpcError) as refusal:
                await harness.stub.SubmitOrders(_batch(f"refused{attempt}", 5, 1_000), metadata=ALICE)
            assert refusal.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "disk is full" in (refusal.value.details() or "")
            assert "Traceback" not in (refusal.value.details() or "")
            refused.extend(f"refused{attempt}-{i}" for i in range(5))
        with pytest.raises(grpc.aio.AioRpcError) as single:
            await harness.stub.SubmitOrder(
                api.SubmitOrderRequest(order=_batch("refused-one", 1, 1_000).orders[0]), metadata=ALICE
            )
        assert single.value.code() == grpc.StatusCode.UNAVAILABLE
        refused.append("refused-one-0")
        assert all(not t.done() for t in waiting)  # still not acknowledged: not durable

        filler.unlink()  # space returns: nothing to do but wait
        for task in waiting:
            acked.update(a.client_order_id for a in (await task).acks if a.sequence and a.durable)
        await until(lambda: journal.writable)
        assert await _health(harness.channel) == health_pb2.HealthCheckResponse.SERVING
        after = await harness.stub.SubmitOrders(_batch("after", 20, 2_000), metadata=ALICE)
        assert all(a.sequence and a.durable for a in after.acks)
        acked.update(a.client_order_id for a in after.acks)
    finally:
        await harness.close()

    # Restart from the disk: every acknowledged order is there, no refused one is.
    recovered = load_state(small_fs, replace(config, state_dir=str(small_fs)))
    known = set(recovered.client_order_ids)
    assert acked <= known, f"{len(acked - known)} acknowledged order(s) lost"
    assert not known & set(refused)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(small_fs / "filler")
