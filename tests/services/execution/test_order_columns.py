"""SubmitOrderColumns (issue #17): a batch as columns is the same batch as SubmitOrders, answered
with the same acks as columns; malformed columns are refused whole."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from hftgate.bench.execution import OrderFlow
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api

from .conftest import execution_config, key, start_harness


@pytest.fixture(autouse=True)
def _two_services_share_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.services.gateway.conftest import _NoRegistry

    monkeypatch.setattr("services.execution.metrics.REGISTRY", _NoRegistry())


_COLUMNS = (
    ("side", "side"),
    ("order_type", "order_type"),
    ("time_in_force", "time_in_force"),
    ("price_ticks", "price_ticks"),
    ("stop_price_ticks", "stop_price_ticks"),
    ("quantity_lots", "quantity_lots"),
    ("display_quantity_lots", "display_quantity_lots"),
    ("post_only", "post_only"),
    ("self_trade_prevention", "self_trade_prevention"),
    ("protection_price_ticks", "protection_price_ticks"),
    ("priority", "priority"),
)


def as_columns(orders: list[api.NewOrder]) -> api.OrderColumns:
    columns = api.OrderColumns()
    symbols = sorted({o.symbol for o in orders})
    columns.symbols.extend(symbols)
    columns.symbol_index.extend(symbols.index(o.symbol) for o in orders)
    columns.client_order_id.extend(o.client_order_id for o in orders)
    for column, field in _COLUMNS:
        getattr(columns, column).extend(getattr(o, field) for o in orders)
    return columns


def ack_rows(acks: api.AckColumns) -> list[tuple[Any, ...]]:
    texts = iter(acks.reason_text)
    return [
        (order_id, seq, status, reason, next(texts) if reason else "", price, qty, leaves, cum)
        for order_id, seq, status, reason, price, qty, leaves, cum in zip(
            acks.order_id, acks.sequence, acks.status, acks.reason, acks.price_ticks,
            acks.quantity_lots, acks.leaves_quantity_lots, acks.cum_quantity_lots, strict=True,
        )
    ]  # fmt: skip


def orders_of_a_day(count: int, seed: int) -> list[api.NewOrder]:
    flow = OrderFlow("c", seed=seed)
    orders = [flow.next_order() for _ in range(count)]
    # Some the service refuses: an unknown symbol, no quantity, a client id used twice.
    orders[3].symbol = "NOPE"
    orders[7].quantity_lots = 0
    orders[11].client_order_id = orders[10].client_order_id
    # Some with every optional field: an iceberg, a post-only, a stop, a priority.
    orders[20].display_quantity_lots = 1
    orders[21].post_only = True
    orders[22].order_type, orders[22].stop_price_ticks = api.ORDER_TYPE_STOP_LIMIT, orders[22].price_ticks
    orders[23].priority = 5
    return orders


async def test_columns_give_the_acks_and_book_of_the_same_batch_as_submit_orders(tmp_path: Path) -> None:
    rows_side = await start_harness(execution_config(tmp_path / "rows"))
    columns_side = await start_harness(execution_config(tmp_path / "columns"))
    try:
        traded = 0
        for seed, account in ((1, "alice"), (2, "bob")):  # bob's takers trade with alice's book
            orders = orders_of_a_day(400, seed)
            as_rows = await rows_side.stub.SubmitOrders(
                api.SubmitOrdersRequest(orders=orders), metadata=key(account)
            )
            as_cols = await columns_side.stub.SubmitOrderColumns(
                api.SubmitOrderColumnsRequest(orders=as_columns(orders)), metadata=key(account)
            )
            expected = [
                (a.order_id, a.sequence, a.status, a.reason, a.reason_text, a.price_ticks, a.quantity_lots,
                 a.leaves_quantity_lots, a.cum_quantity_lots)
                for a in as_rows.acks
            ]  # fmt: skip
            assert ack_rows(as_cols.acks) == expected
            assert as_cols.acks.durable and all(a.durable for a in as_rows.acks if a.sequence)
            statuses = {a.status for a in as_rows.acks}
            assert {api.ORDER_STATUS_REJECTED, api.ORDER_STATUS_NEW, api.ORDER_STATUS_EXPIRED} <= statuses
            traded += sum(a.cum_quantity_lots for a in as_rows.acks)
        assert traded > 0  # bob's takers filled against alice's book, alike on both sides
    finally:
        await rows_side.close()
        await columns_side.close()


async def test_columns_left_out_take_the_defaults(tmp_path: Path) -> None:
    h = await start_harness(execution_config(tmp_path))
    try:
        columns = api.OrderColumns(symbols=["BTCUSDT"], symbol_index=[0, 0], client_order_id=["a", "b"])
        columns.side.extend([common.SIDE_BUY, common.SIDE_SELL])
        columns.order_type.extend([api.ORDER_TYPE_LIMIT] * 2)
        columns.price_ticks.extend([4_990_000, 5_010_000])
        columns.quantity_lots.extend([2, 3])
        reply = await h.stub.SubmitOrderColumns(
            api.SubmitOrderColumnsRequest(orders=columns), metadata=key("bob")
        )
        assert list(reply.acks.status) == [api.ORDER_STATUS_NEW, api.ORDER_STATUS_NEW]
        got = await h.stub.GetOrder(api.GetOrderRequest(order_id=reply.acks.order_id[1]), metadata=key("bob"))
        assert got.order.request.time_in_force == api.TIME_IN_FORCE_GTC  # the default, as for a NewOrder
        assert got.order.request.display_quantity_lots == 0 and not reply.acks.reason_text
    finally:
        await h.close()


@pytest.mark.parametrize(
    ("columns", "says"),
    [
        (api.OrderColumns(), "the batch is empty"),
        (
            api.OrderColumns(symbols=["BTCUSDT"], symbol_index=[0], client_order_id=["a", "b"]),
            "symbol_index has 1",
        ),
        (
            api.OrderColumns(symbols=["BTCUSDT"], symbol_index=[0, 1], client_order_id=["a", "b"]),
            "symbol_index 1",
        ),
        (
            api.OrderColumns(
                symbols=["BTCUSDT"], symbol_index=[0, 0], client_order_id=["a", "b"], price_ticks=[1]
            ),
            "price_ticks has 1 entries for 2 orders",
        ),
    ],
)
async def test_columns_that_do_not_fit_are_refused_whole(tmp_path: Path, columns: Any, says: str) -> None:
    h = await start_harness(execution_config(tmp_path, max_batch_orders=10))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await h.stub.SubmitOrderColumns(
                api.SubmitOrderColumnsRequest(orders=columns), metadata=key("bob")
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in (refused.value.details() or "")
        big = api.OrderColumns(
            symbols=["BTCUSDT"], symbol_index=[0] * 11, client_order_id=[f"x{i}" for i in range(11)]
        )
        with pytest.raises(grpc.aio.AioRpcError) as too_many:
            await h.stub.SubmitOrderColumns(api.SubmitOrderColumnsRequest(orders=big), metadata=key("bob"))
        assert "11 orders exceed max_batch_orders=10" in (too_many.value.details() or "")
        good = api.OrderColumns(symbols=["BTCUSDT"], symbol_index=[0], client_order_id=["a"])
        good.side.append(common.SIDE_BUY)
        good.order_type.append(api.ORDER_TYPE_LIMIT)
        good.price_ticks.append(4_990_000)
        good.quantity_lots.append(1)
        first = await h.stub.SubmitOrderColumns(
            api.SubmitOrderColumnsRequest(orders=good), metadata=key("bob")
        )
        assert list(first.acks.order_id) == [1]  # the first order the shard took: none of the above was
    finally:
        await h.close()
