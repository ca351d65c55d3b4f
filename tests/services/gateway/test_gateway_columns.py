"""SubmitOrderColumns through the gateway: a batch of one shard's symbols goes there whole; one
that spans shards is split as SubmitOrders is, its acks answered as columns in the batch's order."""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status

from hftgate.columns import merged_ack_columns
from hftgate.shardmap import order_id_shard
from hftgate.v1 import execution_pb2 as api
from tests.services.execution.test_order_columns import ack_rows, as_columns
from tests.services.gateway.conftest import ALICE, Suite, new_order


async def test_a_batch_of_one_shards_symbols_goes_there_and_a_mixed_one_is_split(suite: Suite) -> None:
    one_shard = [new_order(f"b{i}", "BTCUSDT", 4_990_000 - i) for i in range(5)]
    reply = await suite.stub.SubmitOrderColumns(
        api.SubmitOrderColumnsRequest(orders=as_columns(one_shard)), metadata=ALICE
    )
    assert [order_id_shard(i) for i in reply.acks.order_id] == [0] * 5
    assert (suite.orders_on(0), suite.orders_on(1)) == (5, 0)

    mixed = [new_order(f"m{i}", ("BTCUSDT", "ETHUSDT")[i % 2], 4_990_000 - i) for i in range(6)]
    mixed.append(new_order("unknown", "NOPE", 1))
    split = await suite.stub.SubmitOrderColumns(
        api.SubmitOrderColumnsRequest(orders=as_columns(mixed)), metadata=ALICE
    )
    rows = ack_rows(split.acks)
    assert [order_id_shard(r[0]) for r in rows[:6]] == [0, 1, 0, 1, 0, 1]
    assert rows[6][2] == api.ORDER_STATUS_REJECTED and "NOPE" in rows[6][4]
    assert split.acks.durable
    # The same acks as the split SubmitOrders would give, in columns.
    got = [await suite.stub.GetOrder(api.GetOrderRequest(order_id=r[0]), metadata=ALICE) for r in rows[:6]]
    assert [g.order.request.client_order_id for g in got] == [f"m{i}" for i in range(6)]


async def test_columns_that_do_not_fit_are_refused_at_the_gateway(suite: Suite) -> None:
    bad = api.OrderColumns(symbols=["BTCUSDT", "ETHUSDT"], symbol_index=[0, 1], client_order_id=["a", "b"])
    bad.price_ticks.append(1)  # one entry for two orders
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await suite.stub.SubmitOrderColumns(api.SubmitOrderColumnsRequest(orders=bad), metadata=ALICE)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "price_ticks has 1 entries for 2 orders" in (refused.value.details() or "")
    past = api.OrderColumns(symbols=["BTCUSDT"], symbol_index=[0, 3], client_order_id=["a", "b"])
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await suite.stub.SubmitOrderColumns(api.SubmitOrderColumnsRequest(orders=past), metadata=ALICE)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (suite.orders_on(0), suite.orders_on(1)) == (0, 0)


def test_merged_acks_keep_the_batch_order_and_the_reasons_of_refused_ones() -> None:
    first = api.AckColumns(order_id=[1, 0], sequence=[3, 0], durable=True, received_ns=5, ack_ns=9)
    first.status.extend([api.ORDER_STATUS_NEW, api.ORDER_STATUS_REJECTED])
    first.reason.extend([0, 2])
    first.reason_text.append("no")
    second = api.AckColumns(order_id=[7], sequence=[4], durable=True, received_ns=4, ack_ns=8)
    second.status.append(api.ORDER_STATUS_NEW)
    merged = merged_ack_columns(4, [([2, 0], first), ([3], second)])  # position 1: no part answered
    assert list(merged.order_id) == [0, 0, 1, 7] and list(merged.status)[1] == 0
    assert list(merged.reason_text) == ["no"] and list(merged.reason) == [2, 0, 0, 0]
    assert (merged.durable, merged.received_ns, merged.ack_ns) == (True, 4, 9)


async def test_a_split_column_batch_with_a_down_shard_returns_what_the_other_accepted(suite: Suite) -> None:
    await suite.shards[1].stop(0)
    orders = [new_order(f"q{i}", s) for i, s in enumerate(["BTCUSDT", "ETHUSDT", "BTCUSDT"])]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await suite.stub.SubmitOrderColumns(
            api.SubmitOrderColumnsRequest(orders=as_columns(orders)), metadata=ALICE, timeout=3
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "1 of 3 orders got no answer" in (caught.value.details() or "")
    status = rpc_status.from_call(caught.value)
    partial = api.SubmitOrderColumnsResponse()
    assert status is not None and status.details[0].Unpack(partial)
    assert list(partial.acks.status) == [api.ORDER_STATUS_NEW, 0, api.ORDER_STATUS_NEW]
    assert suite.orders_on(0) == 2
