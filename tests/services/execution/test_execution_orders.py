"""Order entry through a real in-process server: acks, fills, cancels, replaces, streams, stats."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from hftgate.security import load_suite_secret
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api

ALICE = (("x-api-key", "hftgate-demo-alice"),)
# GetStats gives service-wide figures only to a service principal (an account sees its own).
ADMIN = (("x-hftgate-service-token", load_suite_secret().token_for("admin")),)
BOB = (("x-api-key", "hftgate-demo-bob"),)
BUY, SELL = common.SIDE_BUY, common.SIDE_SELL


def order(
    client_id: str, side: Any, price: int, qty: int, symbol: str = "BTCUSDT", **fields: Any
) -> api.NewOrder:
    fields.setdefault("order_type", api.ORDER_TYPE_LIMIT)
    return api.NewOrder(
        client_order_id=client_id, symbol=symbol, side=side, price_ticks=price, quantity_lots=qty, **fields
    )


async def test_single_order_is_acked_durable_with_order_id_and_sequence(harness: Any) -> None:
    response = await harness.stub.SubmitOrder(
        api.SubmitOrderRequest(order=order("a1", BUY, 100, 10)), metadata=ALICE
    )
    ack = response.ack
    assert ack.status == api.ORDER_STATUS_NEW
    assert ack.order_id > 0 and ack.sequence > 0 and ack.durable
    assert (ack.leaves_quantity_lots, ack.cum_quantity_lots, ack.price_ticks) == (10, 0, 100)
    assert ack.received_ns <= ack.ack_ns


async def test_a_response_built_while_the_fsync_runs_is_sent_durable_after_it(
    harness: Any, monkeypatch: Any
) -> None:
    """SubmitOrder builds an accepted order's response before its fsync ends (core.submit_order's
    ``matched``): what it sends must still say durable, with the time it was sent, after."""
    journal = harness.core.journal
    append = journal.append
    durable_at: list[int] = []

    def slow_append(payload: bytes, record_type: int = 0) -> asyncio.Future[int]:
        written = append(payload, record_type)
        slow: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def settle() -> None:
            durable_at.append(time.time_ns())
            slow.set_result(written.result())

        written.add_done_callback(lambda _: asyncio.get_running_loop().call_later(0.05, settle))
        return slow

    monkeypatch.setattr(journal, "append", slow_append)
    monkeypatch.setattr(harness.core, "ack_poll_ns", 0)  # (the poll would see the real fsync)
    response = await harness.stub.SubmitOrder(
        api.SubmitOrderRequest(order=order("slow1", BUY, 100, 10)), metadata=ALICE
    )
    ack = response.ack
    assert ack.status == api.ORDER_STATUS_NEW and ack.durable and ack.client_order_id == "slow1"
    assert (ack.leaves_quantity_lots, ack.price_ticks) == (10, 100)
    assert durable_at and ack.ack_ns >= max(durable_at)


async def test_batch_matches_in_one_pass_and_acks_in_request_order(harness: Any) -> None:
    await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=order("a1", BUY, 100, 10)), metadata=ALICE)
    orders = [order(f"b{i}", SELL, 100 + i % 3, 2) for i in range(300)]
    response = await harness.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=BOB)
    acks = response.acks
    assert [a.client_order_id for a in acks] == [o.client_order_id for o in orders]
    sequences = [a.sequence for a in acks]
    assert sequences == sorted(sequences) and len(set(sequences)) == 300
    # b0, b3, b6, b9, b12 at 100 fill alice's 10 lots; the rest rest.
    filled = [a.client_order_id for a in acks if a.status == api.ORDER_STATUS_FILLED]
    assert filled == ["b0", "b3", "b6", "b9", "b12"]
    got = await harness.stub.GetOrder(api.GetOrderRequest(client_order_id="a1"), metadata=ALICE)
    assert got.order.status == api.ORDER_STATUS_FILLED
    assert got.order.cum_quantity_lots == 10 and got.order.cum_notional == 1000
    stats = await harness.stub.GetStats(api.GetStatsRequest(), metadata=ADMIN)
    assert stats.trades == 5 and stats.traded_lots == 10
    assert stats.orders_accepted == 301 and stats.open_orders == 295
    assert stats.total_latency.count == 301 and stats.journal_latency.p50_ns > 0
    assert stats.journal_fsyncs >= 1
    assert 1 <= stats.journal_fsync_latency.count <= stats.journal_fsyncs
    assert 0 < stats.journal_fsync_latency.p50_ns <= stats.journal_fsync_latency.max_ns


async def test_priority_reorders_only_within_the_batch(harness: Any) -> None:
    await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=order("a1", BUY, 100, 2)), metadata=ALICE)
    orders = [order("low", SELL, 100, 2, priority=1), order("high", SELL, 100, 2, priority=9)]
    acks = (await harness.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=BOB)).acks
    assert [a.client_order_id for a in acks] == ["low", "high"]
    assert [a.status for a in acks] == [api.ORDER_STATUS_NEW, api.ORDER_STATUS_FILLED]


async def test_cancel_replace_and_cancel_all(harness: Any) -> None:
    stub = harness.stub
    for i in range(4):
        await stub.SubmitOrder(api.SubmitOrderRequest(order=order(f"o{i}", BUY, 90 + i, 5)), metadata=ALICE)
    await stub.SubmitOrder(
        api.SubmitOrderRequest(order=order("e1", SELL, 200, 5, symbol="ETHUSDT")), metadata=ALICE
    )
    replaced = (
        await stub.ReplaceOrder(
            api.ReplaceOrderRequest(client_order_id="o0", quantity_lots=3), metadata=ALICE
        )
    ).ack
    assert replaced.status == api.ORDER_STATUS_NEW and replaced.priority_kept and replaced.quantity_lots == 3
    moved = (
        await stub.ReplaceOrder(api.ReplaceOrderRequest(client_order_id="o1", price_ticks=95), metadata=ALICE)
    ).ack
    assert not moved.priority_kept and moved.price_ticks == 95
    canceled = (await stub.CancelOrder(api.CancelOrderRequest(client_order_id="o2"), metadata=ALICE)).ack
    assert canceled.status == api.ORDER_STATUS_CANCELED and canceled.sequence > moved.sequence
    again = (await stub.CancelOrder(api.CancelOrderRequest(client_order_id="o2"), metadata=ALICE)).ack
    assert again.status == api.ORDER_STATUS_REJECTED and again.reason == common.REJECT_REASON_UNKNOWN_ORDER
    result = await stub.CancelAll(api.CancelAllRequest(symbol="BTCUSDT"), metadata=ALICE)
    assert len(result.canceled_order_ids) == 3 and result.sequence > 0 and result.durable
    eth = await stub.GetOrder(api.GetOrderRequest(client_order_id="e1"), metadata=ALICE)
    assert eth.order.status == api.ORDER_STATUS_NEW
    assert (await stub.CancelAll(api.CancelAllRequest(), metadata=ALICE)).canceled_order_ids == [
        eth.order.order_id
    ]
    assert (await stub.CancelAll(api.CancelAllRequest(), metadata=ALICE)).sequence == 0


async def test_order_types_market_ioc_fok_stop_iceberg_post_only(harness: Any) -> None:
    stub = harness.stub

    async def submit(new: api.NewOrder, who: Any = ALICE) -> api.OrderAck:
        return (await stub.SubmitOrder(api.SubmitOrderRequest(order=new), metadata=who)).ack

    await submit(order("s1", SELL, 101, 5), BOB)
    await submit(order("s2", SELL, 102, 5), BOB)
    fok = await submit(order("fok", BUY, 101, 6, time_in_force=api.TIME_IN_FORCE_FOK))
    assert fok.status == api.ORDER_STATUS_EXPIRED and fok.reason == common.REJECT_REASON_FOK_UNFILLABLE
    post = await submit(order("post", BUY, 101, 1, post_only=True))
    assert (
        post.status == api.ORDER_STATUS_REJECTED and post.reason == common.REJECT_REASON_POST_ONLY_WOULD_TAKE
    )
    ioc = await submit(order("ioc", BUY, 101, 7, time_in_force=api.TIME_IN_FORCE_IOC))
    assert ioc.status == api.ORDER_STATUS_EXPIRED and ioc.cum_quantity_lots == 5
    stop = await submit(
        order(
            "stop",
            BUY,
            0,
            2,
            order_type=api.ORDER_TYPE_STOP_MARKET,
            stop_price_ticks=102,
            protection_price_ticks=103,
        )
    )
    assert stop.status == api.ORDER_STATUS_PENDING_TRIGGER
    trade = await submit(order("lift", BUY, 102, 1))
    assert trade.status == api.ORDER_STATUS_FILLED
    fired = await stub.GetOrder(api.GetOrderRequest(client_order_id="stop"), metadata=ALICE)
    assert fired.order.status == api.ORDER_STATUS_FILLED and fired.order.cum_quantity_lots == 2
    market = await submit(order("mkt", BUY, 0, 50, order_type=api.ORDER_TYPE_MARKET))
    assert market.status == api.ORDER_STATUS_EXPIRED and market.cum_quantity_lots == 2
    empty = await submit(order("mkt2", BUY, 0, 1, order_type=api.ORDER_TYPE_MARKET))
    assert empty.reason == common.REJECT_REASON_NO_LIQUIDITY
    ice = await submit(order("ice", SELL, 110, 10, display_quantity_lots=3), BOB)
    assert ice.status == api.ORDER_STATUS_NEW
    shown = await stub.GetOrder(api.GetOrderRequest(client_order_id="ice"), metadata=BOB)
    assert shown.order.displayed_quantity_lots == 3


async def test_self_trade_prevention_cancels_the_resting_order_by_default(harness: Any) -> None:
    stub = harness.stub
    await stub.SubmitOrder(api.SubmitOrderRequest(order=order("r", SELL, 100, 5)), metadata=ALICE)
    ack = (await stub.SubmitOrder(api.SubmitOrderRequest(order=order("t", BUY, 100, 5)), metadata=ALICE)).ack
    assert ack.status == api.ORDER_STATUS_NEW
    resting = await stub.GetOrder(api.GetOrderRequest(client_order_id="r"), metadata=ALICE)
    assert resting.order.status == api.ORDER_STATUS_CANCELED
    assert resting.order.reason == common.REJECT_REASON_SELF_TRADE


async def test_order_stream_pipelines_messages_and_reports_fills(harness: Any) -> None:
    stub = harness.stub
    await stub.SubmitOrder(api.SubmitOrderRequest(order=order("bid", BUY, 100, 4)), metadata=BOB)
    requests = [
        api.OrderStreamRequest(
            inputs=[api.OrderInput(new_order=order(f"s{i}", SELL, 100, 1)) for i in range(3)]
        ),
        api.OrderStreamRequest(
            inputs=[
                api.OrderInput(new_order=order("rest", SELL, 105, 1)),
                api.OrderInput(cancel=api.CancelOrderRequest(client_order_id="rest")),
                api.OrderInput(),
            ]
        ),
    ]
    acks: list[api.OrderAck] = []
    executions: list[api.ExecutionReport] = []
    async for response in stub.OrderStream(iter(requests), metadata=ALICE):
        acks.extend(response.acks)
        executions.extend(response.executions)
    assert [a.client_order_id for a in acks] == ["s0", "s1", "s2", "rest", "rest", ""]
    assert [a.status for a in acks[:5]] == [api.ORDER_STATUS_FILLED] * 3 + [
        api.ORDER_STATUS_NEW,
        api.ORDER_STATUS_CANCELED,
    ]
    assert (
        acks[5].status == api.ORDER_STATUS_REJECTED and acks[5].reason == common.REJECT_REASON_INVALID_ORDER
    )
    fills = [e for e in executions if e.exec_type == api.EXEC_TYPE_FILL]
    assert [e.client_order_id for e in fills] == ["s0", "s1", "s2"]
    assert all(e.liquidity == api.LIQUIDITY_TAKER and e.trade_id > 0 for e in fills)
    # NEW and CANCELED of 'rest' only restate acks this stream sent.
    assert not [e for e in executions if e.exec_type in (api.EXEC_TYPE_NEW, api.EXEC_TYPE_CANCELED)]


async def test_stream_executions_resumes_without_gaps_or_repeats(harness: Any) -> None:
    stub = harness.stub
    await stub.SubmitOrder(api.SubmitOrderRequest(order=order("bid", BUY, 100, 3)), metadata=BOB)
    for i in range(3):
        await stub.SubmitOrder(api.SubmitOrderRequest(order=order(f"s{i}", SELL, 100, 1)), metadata=ALICE)
    call = stub.StreamExecutions(api.StreamExecutionsRequest(), metadata=BOB)
    first = [await call.read() for _ in range(2)]  # NEW, then the first fill
    call.cancel()
    assert [r.exec_type for r in first] == [api.EXEC_TYPE_NEW, api.EXEC_TYPE_PARTIAL_FILL]
    resumed = stub.StreamExecutions(
        api.StreamExecutionsRequest(after_sequence=first[-1].sequence), metadata=BOB
    )
    rest = [await resumed.read() for _ in range(2)]
    assert [r.exec_type for r in rest] == [api.EXEC_TYPE_PARTIAL_FILL, api.EXEC_TYPE_FILL]
    assert rest[0].sequence > first[-1].sequence
    # Live: a new fill arrives on the open stream.
    await stub.SubmitOrder(api.SubmitOrderRequest(order=order("bid2", BUY, 100, 1)), metadata=BOB)
    await stub.SubmitOrder(api.SubmitOrderRequest(order=order("s9", SELL, 100, 1)), metadata=ALICE)
    live = [await asyncio.wait_for(resumed.read(), 5) for _ in range(2)]
    assert [r.client_order_id for r in live] == ["bid2", "bid2"]
    assert live[1].exec_type == api.EXEC_TYPE_FILL
    resumed.cancel()


async def test_a_stop_waiting_for_its_trigger_can_be_replaced(harness: Any) -> None:
    stub = harness.stub

    async def replace(who: Any = ALICE, **fields: Any) -> api.OrderAck:
        request = api.ReplaceOrderRequest(client_order_id="stop", **fields)
        return (await stub.ReplaceOrder(request, metadata=who)).ack

    await stub.SubmitOrder(api.SubmitOrderRequest(order=order("s1", SELL, 100, 1)), metadata=BOB)
    ioc = order("b1", BUY, 100, 1, time_in_force=api.TIME_IN_FORCE_IOC)
    await stub.SubmitOrder(api.SubmitOrderRequest(order=ioc), metadata=ALICE)  # last trade 100
    stop = order("stop", BUY, 106, 4, order_type=api.ORDER_TYPE_STOP_LIMIT, stop_price_ticks=105)
    placed = (await stub.SubmitOrder(api.SubmitOrderRequest(order=stop), metadata=ALICE)).ack
    assert placed.status == api.ORDER_STATUS_PENDING_TRIGGER

    reduced = await replace(quantity_lots=3)
    assert reduced.status == api.ORDER_STATUS_PENDING_TRIGGER and reduced.priority_kept
    moved = await replace(stop_price_ticks=104, price_ticks=107)
    assert moved.status == api.ORDER_STATUS_PENDING_TRIGGER and not moved.priority_kept
    assert (moved.price_ticks, moved.quantity_lots) == (107, 3)
    got = (await stub.GetOrder(api.GetOrderRequest(client_order_id="stop"), metadata=ALICE)).order
    assert (got.request.stop_price_ticks, got.request.price_ticks, got.leaves_quantity_lots) == (104, 107, 3)

    bad = await replace(stop_price_ticks=-5)
    assert bad.status == api.ORDER_STATUS_REJECTED and bad.reason == common.REJECT_REASON_INVALID_PRICE

    fired = await replace(stop_price_ticks=100)  # the last trade (100) already satisfies it
    assert fired.status == api.ORDER_STATUS_NEW and fired.leaves_quantity_lots == 3
    got = (await stub.GetOrder(api.GetOrderRequest(client_order_id="stop"), metadata=ALICE)).order
    assert got.status == api.ORDER_STATUS_NEW

    # A resting order has no trigger to move.
    no_trigger = await replace(stop_price_ticks=101)
    assert no_trigger.status == api.ORDER_STATUS_REJECTED
    assert no_trigger.reason == common.REJECT_REASON_INVALID_ORDER


async def test_replacing_a_banded_stop_market_keeps_its_band(harness: Any) -> None:
    stub = harness.stub

    async def submit(new: api.NewOrder, who: Any = ALICE) -> api.OrderAck:
        return (await stub.SubmitOrder(api.SubmitOrderRequest(order=new), metadata=who)).ack

    await submit(order("s1", SELL, 100, 1), BOB)
    await submit(order("b1", BUY, 100, 1, time_in_force=api.TIME_IN_FORCE_IOC))  # last trade 100
    banded = order(
        "stop",
        BUY,
        0,
        2,
        order_type=api.ORDER_TYPE_STOP_MARKET,
        stop_price_ticks=105,
        protection_price_ticks=110,
    )
    assert (await submit(banded)).status == api.ORDER_STATUS_PENDING_TRIGGER
    request = api.ReplaceOrderRequest(client_order_id="stop", stop_price_ticks=103)
    moved = (await stub.ReplaceOrder(request, metadata=ALICE)).ack
    assert moved.status == api.ORDER_STATUS_PENDING_TRIGGER
    await submit(order("ask", SELL, 108, 5), BOB)
    await submit(order("s2", SELL, 103, 1), BOB)
    await submit(order("b2", BUY, 103, 1, time_in_force=api.TIME_IN_FORCE_IOC))  # trades at 103: fires
    got = (await stub.GetOrder(api.GetOrderRequest(client_order_id="stop"), metadata=ALICE)).order
    # Filled at 108, inside its 110 band: the replace kept the band (not a limit of 0).
    assert got.status == api.ORDER_STATUS_FILLED and got.cum_notional == 2 * 108
