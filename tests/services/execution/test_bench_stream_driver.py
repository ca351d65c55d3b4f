"""The OrderStream driver of ``hftgate bench execution`` (and ``bench cache``) against a real
in-process server: every input is answered, the window holds, and the responses it keeps during
the run give the same acks and executions as reading them as they come."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hftgate.bench.execution import acks_and_executions, drive_stream, drive_stream_responses
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api

from .conftest import key, limit_order


def _messages(
    prefix: str, count: int, per_message: int, side: int, price: int
) -> list[api.OrderStreamRequest]:
    return [
        api.OrderStreamRequest(
            inputs=[
                api.OrderInput(new_order=limit_order(f"{prefix}{m}-{i}", side, price))
                for i in range(per_message)
            ]
        )
        for m in range(count)
    ]


async def test_every_input_is_answered_and_the_kept_responses_read_as_the_live_ones(harness: Any) -> None:
    alice = SimpleNamespace(metadata=key("alice"))
    bob = SimpleNamespace(metadata=key("bob"))
    resting = _messages("rest", 4, 50, common.SIDE_SELL, 101)
    responses = await drive_stream_responses(harness.stub, bob, resting, window_inputs=60)
    acks, executions = acks_and_executions(responses)
    assert [a.client_order_id for a in acks] == [
        i.new_order.client_order_id for m in resting for i in m.inputs
    ]
    assert all(a.status == api.ORDER_STATUS_NEW for a in acks), {a.status for a in acks}
    assert not executions

    taking = _messages("take", 3, 40, common.SIDE_BUY, 101)
    acks, executions = await drive_stream(harness.stub, alice, taking, window_inputs=50)
    assert [a.client_order_id for a in acks] == [
        i.new_order.client_order_id for m in taking for i in m.inputs
    ]
    assert all(a.status == api.ORDER_STATUS_FILLED for a in acks), {a.status for a in acks}
    # Each taker filled one resting lot: alice sees her 120 fills on her own stream.
    assert sum(1 for e in executions if e.last_quantity_lots == 1) == 120, len(executions)
