"""The issue's "Bad input and access" cases: each its precise status or reject; nothing accepted moves."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.reference import (
    ACCOUNT_PREFIX,
    INSTRUMENT_PREFIX,
    AccountSpec,
    InstrumentSpec,
    encode_spec,
)

ALICE = (("x-api-key", "hftgate-demo-alice"),)
BOB = (("x-api-key", "hftgate-demo-bob"),)
BUY, SELL = common.SIDE_BUY, common.SIDE_SELL


def order(
    client_id: str, side: Any, price: int, qty: int, symbol: str = "BTCUSDT", **fields: Any
) -> api.NewOrder:
    fields.setdefault("order_type", api.ORDER_TYPE_LIMIT)
    return api.NewOrder(
        client_order_id=client_id, symbol=symbol, side=side, price_ticks=price, quantity_lots=qty, **fields
    )


async def put_rows(harness: Any, rows: list[tuple[str, bytes]]) -> None:
    """Write reference rows straight into the SQL store and drop what the server holds locally."""
    from services.cache.model import StoredEntry, VersionClock

    source = harness.core.reference.source
    clock = VersionClock()
    await source.store.put_many([(k, StoredEntry(v, clock.next())) for k, v in rows])
    source._held.clear()


async def book_fingerprint(harness: Any) -> tuple[Any, ...]:
    """What must not change when a bad input is refused: the resting orders and the counters."""
    state = harness.core.state
    books = []
    for symbol_id in range(len(state.symbol_names)):
        for side in (1, 2):
            books.append(state.engine.orders(side, symbol=symbol_id).tolist())
    return (tuple(map(tuple, books)), state.order_count, state.next_input_seq, state.trades)


def bad_request_field(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    return str(detail.field_violations[0].field)


@pytest.fixture
async def seeded(harness: Any) -> Any:
    """A harness with one resting order per side that no refused input may disturb."""
    await put_rows(
        harness,
        [
            (
                INSTRUMENT_PREFIX + "GRID",
                encode_spec(
                    InstrumentSpec(
                        symbol="GRID",
                        price_increment_ticks=5,
                        quantity_increment_lots=10,
                        max_order_lots=1000,
                        max_notional=50_000,
                        price_band_ticks=100,
                        reference_price_ticks=1000,
                    )
                ),
            ),
            (
                INSTRUMENT_PREFIX + "HALTED",
                encode_spec(InstrumentSpec(symbol="HALTED", trading_enabled=False)),
            ),
        ],
    )
    stub = harness.stub
    await stub.SubmitOrder(api.SubmitOrderRequest(order=order("keep-bid", BUY, 90, 5)), metadata=ALICE)
    await stub.SubmitOrder(api.SubmitOrderRequest(order=order("keep-ask", SELL, 110, 5)), metadata=BOB)
    return harness


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (order("x", BUY, 100, 1, symbol="NOPE"), common.REJECT_REASON_UNKNOWN_SYMBOL),
        (order("x", BUY, 100, 1, symbol=""), common.REJECT_REASON_UNKNOWN_SYMBOL),
        (order("x", BUY, 100, 1, symbol="S" * 600), common.REJECT_REASON_UNKNOWN_SYMBOL),
        (order("x", BUY, 100, 1, symbol="S" * 100_000), common.REJECT_REASON_UNKNOWN_SYMBOL),
        (order("x", BUY, 100, 0), common.REJECT_REASON_INVALID_QUANTITY),
        (order("x", BUY, 100, -3), common.REJECT_REASON_INVALID_QUANTITY),
        (order("x", BUY, 0, 1), common.REJECT_REASON_INVALID_PRICE),
        (order("x", BUY, -5, 1), common.REJECT_REASON_INVALID_PRICE),
        (order("x", BUY, 1002, 10, symbol="GRID"), common.REJECT_REASON_OFF_TICK),
        (order("x", BUY, 1000, 15, symbol="GRID"), common.REJECT_REASON_OFF_LOT),
        (order("x", BUY, 1200, 10, symbol="GRID"), common.REJECT_REASON_PRICE_BAND),
        (order("x", BUY, 1000, 2000, symbol="GRID"), common.REJECT_REASON_MAX_QUANTITY),
        (order("x", BUY, 1000, 60, symbol="GRID"), common.REJECT_REASON_MAX_NOTIONAL),
        (order("x", BUY, 100, 1, symbol="HALTED"), common.REJECT_REASON_TRADING_HALTED),
        (order("x", common.SIDE_UNSPECIFIED, 100, 1), common.REJECT_REASON_INVALID_ORDER),
        (order("x", BUY, 100, 1, order_type=api.ORDER_TYPE_UNSPECIFIED), common.REJECT_REASON_INVALID_ORDER),
        (order("", BUY, 100, 1), common.REJECT_REASON_INVALID_ORDER),
        (order("x" * 65, BUY, 100, 1), common.REJECT_REASON_INVALID_ORDER),
        (order("bad\nid", BUY, 100, 1), common.REJECT_REASON_INVALID_ORDER),
        (order("keep-bid", BUY, 100, 1), common.REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID),
        (order("x", BUY, 100, 5, display_quantity_lots=5), common.REJECT_REASON_INVALID_ORDER),
        (
            order("x", BUY, 0, 5, order_type=api.ORDER_TYPE_MARKET, time_in_force=api.TIME_IN_FORCE_GTC),
            common.REJECT_REASON_INVALID_ORDER,
        ),
        (
            order("x", BUY, 100, 5, post_only=True, time_in_force=api.TIME_IN_FORCE_IOC),
            common.REJECT_REASON_INVALID_ORDER,
        ),
        (order("x", BUY, 100, 5, order_type=api.ORDER_TYPE_STOP_LIMIT), common.REJECT_REASON_INVALID_PRICE),
    ],
)
@pytest.mark.parametrize("entry", ["SubmitOrder", "SubmitOrders", "OrderStream"])
async def test_bad_order_is_rejected_with_its_reason_and_disturbs_nothing(
    seeded: Any, bad: api.NewOrder, reason: int, entry: str
) -> None:
    before = await book_fingerprint(seeded)
    stub = seeded.stub
    if entry == "SubmitOrder":  # the single-order path
        ack = (await stub.SubmitOrder(api.SubmitOrderRequest(order=bad), metadata=ALICE)).ack
    elif entry == "SubmitOrders":
        (ack,) = (await stub.SubmitOrders(api.SubmitOrdersRequest(orders=[bad]), metadata=ALICE)).acks
    else:
        message = api.OrderStreamRequest(inputs=[api.OrderInput(new_order=bad)])
        (ack,) = [a async for r in stub.OrderStream(iter([message]), metadata=ALICE) for a in r.acks]
    assert ack.status == api.ORDER_STATUS_REJECTED
    assert ack.reason == reason, common.RejectReason.Name(ack.reason)
    assert ack.reason_text.startswith("Cannot submit order") and ack.order_id == 0 and ack.sequence == 0
    assert await book_fingerprint(seeded) == before


async def test_bad_orders_in_a_batch_leave_the_good_ones_accepted(seeded: Any) -> None:
    orders = [
        order("g1", BUY, 95, 1),
        order("b1", BUY, 95, 0),
        order("g2", BUY, 95, 1),
        order("g1", BUY, 95, 1),
    ]
    acks = (await seeded.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=ALICE)).acks
    assert [a.status for a in acks] == [
        api.ORDER_STATUS_NEW,
        api.ORDER_STATUS_REJECTED,
        api.ORDER_STATUS_NEW,
        api.ORDER_STATUS_REJECTED,
    ]
    assert acks[3].reason == common.REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID


@pytest.mark.parametrize("entry", ["SubmitOrders", "SubmitOrderColumns"])
async def test_client_ids_at_their_edges_in_one_batch_get_their_own_reasons(seeded: Any, entry: str) -> None:
    """The batch check of client order ids (in C): 64 printable ASCII characters pass, 65 do not,
    nor do non-ASCII ids (64 characters but more bytes), control characters, an id used earlier
    in the batch or already the account's; the valid ones around them are accepted."""
    from hftgate.bench.execution import order_columns

    ids = ["e" * 64, "e" * 65, "é" * 64, "ok-é", "tab\t", "dup", "dup", "keep-bid", " ~!", "last"]
    orders = [order(client_id, BUY, 95, 1) for client_id in ids]
    invalid, used = common.REJECT_REASON_INVALID_ORDER, common.REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID
    expected = [0, invalid, invalid, invalid, invalid, 0, used, used, 0, 0]
    before = await book_fingerprint(seeded)
    if entry == "SubmitOrders":
        acks = (await seeded.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=ALICE)).acks
        reasons = [a.reason for a in acks]
        statuses = [a.status for a in acks]
    else:
        request = api.SubmitOrderColumnsRequest(orders=order_columns(orders))
        columns = (await seeded.stub.SubmitOrderColumns(request, metadata=ALICE)).acks
        reasons, statuses = list(columns.reason), list(columns.status)
    assert reasons == expected
    assert statuses == [api.ORDER_STATUS_REJECTED if r else api.ORDER_STATUS_NEW for r in expected]
    assert (await book_fingerprint(seeded))[1] == before[1] + expected.count(0)
    for client_id, reason in zip(ids, expected, strict=True):
        if not reason:
            assert seeded.core.state.order_id_for(1, client_id) > 0


async def test_missing_or_unknown_api_key_is_unauthenticated(seeded: Any) -> None:
    for metadata in ((), (("x-api-key", "not-a-key"),)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await seeded.stub.SubmitOrder(
                api.SubmitOrderRequest(order=order("z", BUY, 100, 1)), metadata=metadata
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_other_accounts_orders_cannot_be_seen_or_canceled(seeded: Any) -> None:
    stub = seeded.stub
    bid = (await stub.GetOrder(api.GetOrderRequest(client_order_id="keep-bid"), metadata=ALICE)).order
    before = await book_fingerprint(seeded)
    for call in (
        stub.CancelOrder(api.CancelOrderRequest(order_id=bid.order_id), metadata=BOB),
        stub.GetOrder(api.GetOrderRequest(order_id=bid.order_id), metadata=BOB),
        stub.ReplaceOrder(api.ReplaceOrderRequest(order_id=bid.order_id, quantity_lots=1), metadata=BOB),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        # Exactly what an order id never used answers: existence does not leak across accounts.
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert caught.value.details() == f"no order with order_id {bid.order_id}"
    # By client order id, bob's namespace has no such order at all.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CancelOrder(api.CancelOrderRequest(client_order_id="keep-bid"), metadata=BOB)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # On a stream, the same cancel is a per-input reject and the stream goes on.
    requests = [
        api.OrderStreamRequest(inputs=[api.OrderInput(cancel=api.CancelOrderRequest(order_id=bid.order_id))]),
        api.OrderStreamRequest(inputs=[api.OrderInput(new_order=order("bob-ok", SELL, 120, 1))]),
    ]
    acks = [a async for r in stub.OrderStream(iter(requests), metadata=BOB) for a in r.acks]
    # ... and the reject is a missing order's, showing nothing of alice's order.
    assert acks[0].reason == common.REJECT_REASON_UNKNOWN_ORDER and acks[1].status == api.ORDER_STATUS_NEW
    assert acks[0].order_id == 0 and acks[0].price_ticks == 0 and acks[0].leaves_quantity_lots == 0
    assert (await book_fingerprint(seeded))[0][0] == before[0][0]  # alice's bids untouched


async def test_unknown_or_ambiguous_order_names(seeded: Any) -> None:
    stub = seeded.stub
    cases = [
        (api.CancelOrderRequest(order_id=999_999), grpc.StatusCode.NOT_FOUND),
        (api.CancelOrderRequest(), grpc.StatusCode.INVALID_ARGUMENT),
        (api.CancelOrderRequest(order_id=2, client_order_id="keep-bid"), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CancelOrder(request, metadata=ALICE)
        assert caught.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CancelAll(api.CancelAllRequest(symbol="NOPE"), metadata=ALICE)
    assert (
        caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and bad_request_field(caught.value) == "symbol"
    )


async def test_empty_and_oversize_batches_are_invalid_argument_and_accept_nothing(seeded: Any) -> None:
    before = await book_fingerprint(seeded)
    too_many = [order(f"o{i}", BUY, 95, 1) for i in range(seeded.config.max_batch_orders + 1)]
    for orders in ([], too_many):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await seeded.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=ALICE)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert bad_request_field(caught.value) == "orders"
    assert await book_fingerprint(seeded) == before


async def test_malformed_stream_messages_end_the_stream_and_keep_earlier_inputs(seeded: Any) -> None:
    stub = seeded.stub
    requests = [
        api.OrderStreamRequest(inputs=[api.OrderInput(new_order=order("kept", BUY, 95, 1))]),
        api.OrderStreamRequest(inputs=[]),
    ]
    call = stub.OrderStream(iter(requests), metadata=ALICE)
    acks = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for response in call:
            acks.extend(response.acks)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [a.client_order_id for a in acks] == ["kept"]
    kept = await stub.GetOrder(api.GetOrderRequest(client_order_id="kept"), metadata=ALICE)
    assert kept.order.status == api.ORDER_STATUS_NEW
    # Bytes that do not decode as OrderStreamRequest: the request decoder (hftgate.telemetry)
    # ends the call with INVALID_ARGUMENT saying what is wrong, and the service adds nothing.
    raw = seeded.channel.stream_stream(
        "/hftgate.v1.ExecutionService/OrderStream",
        request_serializer=lambda b: b,
        response_deserializer=api.OrderStreamResponse.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in raw(iter([b"\x0a\xff\xff\xff\xff\x0f"]), metadata=ALICE):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("request is not a valid hftgate.v1.OrderStreamRequest: ")
    kept = await stub.GetOrder(api.GetOrderRequest(client_order_id="kept"), metadata=ALICE)
    assert kept.order.status == api.ORDER_STATUS_NEW


async def test_stream_inputs_that_say_nothing_are_rejected_with_their_reason_alone_or_among_others(
    seeded: Any,
) -> None:
    """An OrderInput with none of its oneof set is INVALID_ORDER, a cancel or replace naming no
    order is UNKNOWN_ORDER: as the only input of a message (the single-order path) and among
    valid inputs (the batch path), and the valid ones around them are accepted."""
    empty = api.OrderInput()
    cancel = api.OrderInput(cancel=api.CancelOrderRequest())
    replace = api.OrderInput(replace=api.ReplaceOrderRequest(price_ticks=96))
    expected = {
        "": (api.ORDER_STATUS_REJECTED, common.REJECT_REASON_INVALID_ORDER),
        "cancel": (api.ORDER_STATUS_REJECTED, common.REJECT_REASON_UNKNOWN_ORDER),
        "replace": (api.ORDER_STATUS_REJECTED, common.REJECT_REASON_UNKNOWN_ORDER),
    }
    mixed = [api.OrderInput(new_order=order("nothing-a", BUY, 95, 1)), empty, cancel, replace]
    mixed.append(api.OrderInput(new_order=order("nothing-b", BUY, 95, 1)))
    requests = [api.OrderStreamRequest(inputs=[one]) for one in (empty, cancel, replace)]
    requests.append(api.OrderStreamRequest(inputs=mixed))
    acks = []
    async for response in seeded.stub.OrderStream(iter(requests), metadata=ALICE):
        acks.extend(response.acks)
    kinds = ["", "cancel", "replace", "new", "", "cancel", "replace", "new"]
    assert len(acks) == len(kinds)
    for kind, ack in zip(kinds, acks, strict=True):
        if kind == "new":
            assert ack.status == api.ORDER_STATUS_NEW, ack
        else:
            assert (ack.status, ack.reason) == expected[kind], (kind, ack)
            assert ack.reason_text, ack


async def test_rate_limit_is_resource_exhausted_with_quota_and_retry_details(seeded: Any) -> None:
    await put_rows(
        seeded,
        [
            (
                ACCOUNT_PREFIX + "carol",
                encode_spec(
                    AccountSpec(name="carol", account_id=3, rate_limit_orders_per_s=0.001, rate_limit_burst=3)
                ),
            )
        ],
    )
    carol = (("x-api-key", "hftgate-demo-carol"),)
    orders = [order(f"c{i}", BUY, 95, 1) for i in range(5)]
    acks = (await seeded.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=carol)).acks
    assert [a.reason for a in acks] == [
        0,
        0,
        0,
        common.REJECT_REASON_RATE_LIMIT,
        common.REJECT_REASON_RATE_LIMIT,
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await seeded.stub.SubmitOrder(api.SubmitOrderRequest(order=order("c9", BUY, 95, 1)), metadata=carol)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(caught.value)  # type: ignore[arg-type]
    assert status is not None
    kinds = {detail.type_url.rsplit("/", 1)[1] for detail in status.details}
    assert kinds == {"google.rpc.QuotaFailure", "google.rpc.RetryInfo"}


async def test_account_limits_kill_switch_open_orders_and_position(seeded: Any) -> None:
    dave = (("x-api-key", "hftgate-demo-dave"),)
    spec = AccountSpec(name="dave", account_id=4, max_open_orders=2, position_limit_lots=10)
    await put_rows(seeded, [(ACCOUNT_PREFIX + "dave", encode_spec(spec))])
    orders = [order("d1", BUY, 95, 4), order("d2", BUY, 95, 4), order("d3", BUY, 95, 1)]
    acks = (await seeded.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=dave)).acks
    assert [a.reason for a in acks] == [0, 0, common.REJECT_REASON_OPEN_ORDER_LIMIT]
    ioc = order("d4", BUY, 95, 3, time_in_force=api.TIME_IN_FORCE_IOC)
    ack = (await seeded.stub.SubmitOrder(api.SubmitOrderRequest(order=ioc), metadata=dave)).ack
    assert ack.reason == common.REJECT_REASON_POSITION_LIMIT  # 4 + 4 working + 3 > 10
    halted = AccountSpec(name="dave", account_id=4, kill_switch=True)
    await put_rows(seeded, [(ACCOUNT_PREFIX + "dave", encode_spec(halted))])
    ack = (
        await seeded.stub.SubmitOrder(api.SubmitOrderRequest(order=order("d5", SELL, 200, 1)), metadata=dave)
    ).ack
    assert ack.reason == common.REJECT_REASON_KILL_SWITCH
    # The kill switch also took dave's working orders off the book.
    for client_id in ("d1", "d2"):
        got = (
            await seeded.stub.GetOrder(api.GetOrderRequest(client_order_id=client_id), metadata=dave)
        ).order
        assert got.status == api.ORDER_STATUS_CANCELED and got.reason == common.REJECT_REASON_KILL_SWITCH


async def test_an_oversize_symbol_is_an_unknown_symbol_everywhere_and_never_echoed_whole(seeded: Any) -> None:
    huge = "S" * 100_000
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await seeded.stub.CancelAll(api.CancelAllRequest(symbol=huge), metadata=ALICE)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_field(caught.value) == "symbol"
    assert len(caught.value.details() or "") < 200
    call = seeded.stub.StreamExecutions(api.StreamExecutionsRequest(symbol=huge), metadata=ALICE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(caught.value.details() or "") < 200
    batch = await seeded.stub.SubmitOrders(
        api.SubmitOrdersRequest(
            orders=[order("long-1", BUY, 100, 1, symbol=huge), order("ok-1", BUY, 100, 1)]
        ),
        metadata=ALICE,
    )
    assert [a.status for a in batch.acks] == [api.ORDER_STATUS_REJECTED, api.ORDER_STATUS_NEW]
    assert batch.acks[0].reason == common.REJECT_REASON_UNKNOWN_SYMBOL


async def test_a_negative_after_sequence_is_invalid_argument_naming_the_field(seeded: Any) -> None:
    call = seeded.stub.StreamExecutions(api.StreamExecutionsRequest(after_sequence=-1), metadata=ALICE)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_field(caught.value) == "after_sequence"
