"""Streams that cannot grow the server (issue #13.2): paged history, stream caps, bounded buffers.

Each test fails on the code before the fix: StreamExecutions encoded the whole retained history
up front, per-subscriber report queues and OrderStream ack queues were unbounded, an OrderStream
read its client's messages however few acks the client took, and nothing capped open streams.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution import codec

from .conftest import key

ALICE, BOB = key("alice"), key("bob")
#: A small receive window and no BDP growth: the server's writes block after a few kilobytes.
TIGHT_CLIENT = [("grpc.http2.lookahead_bytes", 4096), ("grpc.http2.bdp_probe", 0)]


def _orders(prefix: str, count: int, *, side: int = common.SIDE_BUY, start: int = 0) -> list[api.NewOrder]:
    """Resting GTC limits that never cross (buys at 100..., far below any sell)."""
    return [
        api.NewOrder(
            client_order_id=f"{prefix}{n}",
            symbol="BTCUSDT",
            side=side,  # type: ignore[arg-type]
            order_type=api.ORDER_TYPE_LIMIT,
            time_in_force=api.TIME_IN_FORCE_GTC,
            price_ticks=100 + n % 50,
            quantity_lots=1,
        )
        for n in range(start, start + count)
    ]


async def _submit(stub: Any, prefix: str, count: int, metadata: Any = ALICE, start: int = 0) -> None:
    for first in range(start, start + count, 1000):
        size = min(1000, start + count - first)
        response = await stub.SubmitOrders(
            api.SubmitOrdersRequest(orders=_orders(prefix, size, start=first)), metadata=metadata
        )
        assert all(a.status == api.ORDER_STATUS_NEW for a in response.acks)


async def _until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def _quota(error: grpc.aio.AioRpcError) -> error_details_pb2.QuotaFailure:
    status = status_pb2.Status()
    for name, value in error.trailing_metadata() or ():
        if name == "grpc-status-details-bin":
            status.ParseFromString(value)
    for detail in status.details:
        quota = error_details_pb2.QuotaFailure()
        if detail.Unpack(quota):
            return quota
    raise AssertionError(f"no QuotaFailure detail in {error!r}")


@pytest.fixture
async def roomy(tmp_path: Path, make_config: Any, launch: Any) -> Any:
    harness = await launch(make_config(tmp_path, retained_reports=50_000, max_streams_per_account=16))
    try:
        yield harness
    finally:
        await harness.close()


async def test_history_is_encoded_a_page_at_a_time_as_the_client_reads(
    roomy: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _submit(roomy.stub, "h", 20_000)
    encoded = [0]
    real = codec.encode_reports

    def counting(reports: Any, state: Any, shard_base: int = 0, *make: Any) -> Any:
        encoded[0] += len(reports)
        return real(reports, state, shard_base, *make)

    monkeypatch.setattr(codec, "encode_reports", counting)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{roomy.running.port}", options=TIGHT_CLIENT) as channel:
        from hftgate.v1 import execution_pb2_grpc

        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        calls = [stub.StreamExecutions(api.StreamExecutionsRequest(), metadata=ALICE) for _ in range(5)]
        try:
            await asyncio.sleep(1.0)  # the clients read nothing
            # Before: each call built all 20,000 reports up front (100,000 in all).
            assert encoded[0] <= 5 * 4 * roomy.config.stream_page_reports, encoded[0]
            # Read one to the end of its history: every report once, in order, then live ones.
            seen: list[int] = []
            live_sent = False
            async for report in calls[0]:
                seen.append(report.sequence)
                if len(seen) == 20_000 and not live_sent:
                    live_sent = True
                    await _submit(roomy.stub, "live", 500)
                if len(seen) == 20_500:
                    break
            assert seen == sorted(set(seen)) and len(seen) == 20_500
            assert seen == list(range(1, 20_501))  # alice's reports are all the service's here
        finally:
            for call in calls:
                call.cancel()


async def test_history_then_live_has_no_gap_and_no_repeat_while_orders_flow(harness: Any) -> None:
    await _submit(harness.stub, "pre", 2_000)
    stop = asyncio.Event()

    async def trade() -> None:
        number = 0
        while not stop.is_set():
            await _submit(harness.stub, "flow", 50, start=number)
            await _submit(harness.stub, "other", 10, metadata=BOB, start=number)
            number += 50
            await asyncio.sleep(0.005)  # a pace a reader in this same process keeps up with

    flow = asyncio.create_task(trade())
    received: list[int] = []
    call = harness.stub.StreamExecutions(api.StreamExecutionsRequest(after_sequence=0), metadata=ALICE)
    try:
        async for report in call:
            received.append(report.sequence)
            if len(received) >= 4_000:
                break
    finally:
        stop.set()
        call.cancel()
        await flow
    state = harness.core.state
    alice_id = (await harness.core.reference.account_for_key("hftgate-demo-alice")).account_id
    retained = state.retained_reports_after(0)
    expected = retained[retained["account_id"] == alice_id]["sequence"].tolist()[: len(received)]
    assert received == expected  # no gap, no repeat, only alice's, across history and live


async def test_streams_are_capped_per_account_and_per_service_with_quota_failure(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    harness = await launch(make_config(tmp_path, max_streams_per_account=2, max_streams=3))
    slots = harness.running.server  # noqa: F841  (kept for readability of the failure output)
    streams = _servicer(harness).streams
    try:
        first = harness.stub.StreamExecutions(api.StreamExecutionsRequest(live_only=True), metadata=ALICE)
        second = harness.stub.OrderStream(metadata=ALICE)
        await _until(lambda: streams.open_streams() == 2)
        third = harness.stub.StreamExecutions(api.StreamExecutionsRequest(live_only=True), metadata=ALICE)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await third.read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "'alice' already has 2 open streams" in (refused.value.details() or "")
        assert _quota(refused.value).violations[0].subject == "account:alice"
        # The service cap: bob's first stream fits, his second does not.
        bob_one = harness.stub.StreamExecutions(api.StreamExecutionsRequest(live_only=True), metadata=BOB)
        await _until(lambda: streams.open_streams() == 3)
        bob_two = harness.stub.OrderStream(metadata=BOB)
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await bob_two.read()
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _quota(full.value).violations[0].subject == "service:execution"
        # A cancelled stream gives its slot back; so does a client that disconnects.
        first.cancel()
        await _until(lambda: streams.open_streams("alice") == 1)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{harness.running.port}")
        from hftgate.v1 import execution_pb2_grpc

        other = execution_pb2_grpc.ExecutionServiceStub(channel)
        again = other.StreamExecutions(api.StreamExecutionsRequest(live_only=True), metadata=ALICE)
        await _until(lambda: streams.open_streams("alice") == 2)
        await channel.close(None)
        await _until(lambda: streams.open_streams("alice") == 1)
        assert again.done()
        second.cancel()
        bob_one.cancel()
        await _until(lambda: streams.open_streams() == 0)
    finally:
        await harness.close()


def _servicer(harness: Any) -> Any:
    """The running ExecutionServicer (the metrics collector holds it)."""
    import gc

    from services.execution.server import ExecutionServicer

    found = [o for o in gc.get_objects() if isinstance(o, ExecutionServicer) and o.core is harness.core]
    assert len(found) == 1
    return found[0]


async def test_a_reader_too_far_behind_is_cut_off_with_where_to_resume(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    harness = await launch(make_config(tmp_path, retained_reports=4_000, stream_max_behind_reports=1_000))
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{harness.running.port}", options=TIGHT_CLIENT
        ) as channel:
            from hftgate.v1 import execution_pb2_grpc

            stub = execution_pb2_grpc.ExecutionServiceStub(channel)
            slow = stub.StreamExecutions(api.StreamExecutionsRequest(live_only=True), metadata=ALICE)
            await _until(lambda: harness.core.publisher.subscriber_count() == 1)
            await _submit(harness.stub, "s", 3_000)  # reports the slow reader does not take
            await _until(lambda: harness.core.publisher.streams_cut_off == 1)
            await _until(lambda: harness.core.publisher.subscriber_count() == 0)
            received: list[int] = []
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                async for report in slow:
                    received.append(report.sequence)
            assert cut.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = cut.value.details() or ""
            assert (
                details.startswith("reader too slow: ")
                and "reports behind; resume with after_sequence=" in details
            )
            resume = int(details.split("after_sequence=")[1].split(" ")[0])
            assert received and resume <= received[-1]
            # Resuming from the last report received gets the rest: nothing lost, nothing twice.
            rest = harness.stub.StreamExecutions(
                api.StreamExecutionsRequest(after_sequence=received[-1]), metadata=ALICE
            )
            more = []
            async for report in rest:
                more.append(report.sequence)
                if report.sequence == 3_000:
                    break
            rest.cancel()
            assert received + more == list(range(1, 3_001))
    finally:
        await harness.close()


async def test_live_readers_that_never_read_hold_no_per_reader_copy(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    harness = await launch(make_config(tmp_path, retained_reports=20_000))
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{harness.running.port}", options=TIGHT_CLIENT
        ) as channel:
            from hftgate.v1 import execution_pb2_grpc

            stub = execution_pb2_grpc.ExecutionServiceStub(channel)
            calls = [
                stub.StreamExecutions(api.StreamExecutionsRequest(live_only=True), metadata=ALICE)
                for _ in range(8)
            ]
            await _until(lambda: harness.core.publisher.subscriber_count() == 8)
            await _submit(harness.stub, "n", 6_000)
            await asyncio.sleep(0.3)
            for subscriber in harness.core.publisher._subscribers.values():
                for one in subscriber:
                    # A cursor and at most the acks deque (empty for StreamExecutions): no queue of
                    # reports (the old asyncio.Queue held every report of the account per reader).
                    assert not hasattr(one, "queue") and not one.acks
            for call in calls:
                call.cancel()
    finally:
        await harness.close()


async def test_order_stream_stops_reading_a_client_that_does_not_read_its_acks(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    harness = await launch(make_config(tmp_path, order_stream_max_unsent_inputs=500))
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{harness.running.port}", options=TIGHT_CLIENT
        ) as channel:
            from hftgate.v1 import execution_pb2_grpc

            stub = execution_pb2_grpc.ExecutionServiceStub(channel)
            call = stub.OrderStream(metadata=ALICE)
            messages = [
                api.OrderStreamRequest(
                    inputs=[api.OrderInput(new_order=o) for o in _orders("b", 100, start=100 * m)]
                )
                for m in range(200)
            ]

            async def send() -> None:
                for message in messages:
                    await call.write(message)
                await call.done_writing()

            sender = asyncio.create_task(send())
            await asyncio.sleep(1.5)  # the client reads no acks
            taken = harness.core.counters.orders_received
            # Before: all 20,000 were taken and their acks queued in the server. Now the server
            # took its window (and what gRPC's flow-control window lets it write) and stopped.
            assert taken < 8_000, taken
            await asyncio.sleep(0.5)
            assert harness.core.counters.orders_received == taken
            # Once the client reads, everything goes through, each input acked once.
            acks = []
            async for response in call:
                acks.extend(response.acks)
            await sender
            assert len(acks) == 20_000
            assert [a.client_order_id for a in acks] == [f"b{n}" for n in range(20_000)]
    finally:
        with contextlib.suppress(Exception):
            await harness.close()
