"""The gateway in front of two real execution shards: orders by symbol, batches split and merged
back in request order, cancels and gets by client order id, CancelAll across shards, the shard map
served and followed, auth at the door, bad input."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hftgate.shardmap import ORDER_ID_LOCAL_MASK, Shard, order_id_shard
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import gateway_pb2 as gw
from tests.services.gateway.conftest import ALICE, BOB, Suite, new_order, shards_follow


async def test_submit_order_goes_to_the_shard_owning_its_symbol(suite: Suite) -> None:
    btc = await suite.stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("b1", "BTCUSDT")), metadata=ALICE
    )
    assert btc.ack.status == api.ORDER_STATUS_NEW and btc.ack.durable
    assert (suite.orders_on(0), suite.orders_on(1)) == (1, 0)
    eth = await suite.stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("e1", "ETHUSDT")), metadata=ALICE
    )
    assert eth.ack.status == api.ORDER_STATUS_NEW
    assert (suite.orders_on(0), suite.orders_on(1)) == (1, 1)
    forwarder = suite.gateway.forwarder
    assert forwarder is not None and forwarder.sent == {0: 1, 1: 1}


async def test_unknown_symbol_is_the_shards_per_order_reject(suite: Suite) -> None:
    for symbol in ("NOPE", "", "X" * 5_000):
        reply = await suite.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order(f"u{len(symbol)}", symbol)), metadata=ALICE
        )
        assert reply.ack.status == api.ORDER_STATUS_REJECTED
        assert reply.ack.reason == 1  # REJECT_REASON_UNKNOWN_SYMBOL


async def test_batch_is_split_across_shards_and_merged_in_request_order(suite: Suite) -> None:
    symbols = ["BTCUSDT", "ETHUSDT", "ETHUSDT", "BTCUSDT", "NOPE", "ETHUSDT", "BTCUSDT"]
    orders = [new_order(f"m{i}", s) for i, s in enumerate(symbols)]
    reply = await suite.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=ALICE)
    assert [a.client_order_id for a in reply.acks] == [f"m{i}" for i in range(len(symbols))]
    expected = [api.ORDER_STATUS_REJECTED if s == "NOPE" else api.ORDER_STATUS_NEW for s in symbols]
    assert [a.status for a in reply.acks] == expected
    # Each order is on its owner: shard 0 got BTCUSDT and the unknown symbol (lowest id or hash owner).
    owner_of_nope = suite.gateway.app.router.shard_for_symbol("NOPE").shard_id  # type: ignore[union-attr]
    on0 = symbols.count("BTCUSDT") + (owner_of_nope == 0)
    assert (suite.orders_on(0), suite.orders_on(1)) == (on0, len(symbols) - on0)
    for i, ack in enumerate(reply.acks):
        if ack.status == api.ORDER_STATUS_NEW:
            shard = 0 if symbols[i] == "BTCUSDT" else 1
            core = suite.shards[shard].core
            assert core is not None
            assert order_id_shard(ack.order_id) == shard, f"m{i} carries shard {shard}"
            assert core.state.order(ack.order_id & ORDER_ID_LOCAL_MASK) is not None, (
                f"m{i} is on shard {shard}"
            )


async def test_batch_on_one_shard_is_forwarded_whole(suite: Suite) -> None:
    orders = [new_order(f"w{i}", "ETHUSDT") for i in range(5)]
    reply = await suite.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=ALICE)
    assert [a.client_order_id for a in reply.acks] == [f"w{i}" for i in range(5)]
    assert suite.gateway.forwarder.sent == {1: 1}  # type: ignore[union-attr]


async def test_empty_and_oversized_batches_are_refused_at_the_door(suite: Suite) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await suite.stub.SubmitOrders(api.SubmitOrdersRequest(), metadata=ALICE)
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the batch is empty" in (empty.value.details() or "")
    big = [new_order(f"x{i}", "BTCUSDT") for i in range(10_001)]
    with pytest.raises(grpc.aio.AioRpcError) as over:
        await suite.stub.SubmitOrders(api.SubmitOrdersRequest(orders=big), metadata=ALICE)
    assert over.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "10001 orders exceed the gateway's max_batch_orders=10000" in (over.value.details() or "")
    status = rpc_status.from_call(over.value)
    assert status is not None
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail) and detail.field_violations[0].field == "orders"
    assert (suite.orders_on(0), suite.orders_on(1)) == (0, 0)


async def test_cancel_replace_and_get_by_client_order_id_find_the_shard(suite: Suite) -> None:
    await suite.stub.SubmitOrders(
        api.SubmitOrdersRequest(orders=[new_order("c-btc", "BTCUSDT"), new_order("c-eth", "ETHUSDT")]),
        metadata=ALICE,
    )
    got = await suite.stub.GetOrder(api.GetOrderRequest(client_order_id="c-eth"), metadata=ALICE)
    assert got.order.request.symbol == "ETHUSDT"
    replaced = await suite.stub.ReplaceOrder(
        api.ReplaceOrderRequest(client_order_id="c-eth", quantity_lots=5), metadata=ALICE
    )
    assert replaced.ack.quantity_lots == 5
    canceled = await suite.stub.CancelOrder(api.CancelOrderRequest(client_order_id="c-btc"), metadata=ALICE)
    assert canceled.ack.status == api.ORDER_STATUS_CANCELED
    # Another account's client order id is not found, as on a shard.
    with pytest.raises(grpc.aio.AioRpcError) as other:
        await suite.stub.CancelOrder(api.CancelOrderRequest(client_order_id="c-eth"), metadata=BOB)
    assert other.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no order with client_order_id 'c-eth'" in (other.value.details() or "")


async def test_a_forgotten_route_is_found_by_asking_every_shard(suite: Suite) -> None:
    await suite.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("f1", "ETHUSDT")), metadata=ALICE)
    suite.gateway.app.router.routes._routes.clear()  # type: ignore[union-attr]  # as a restarted gateway
    got = await suite.stub.GetOrder(api.GetOrderRequest(client_order_id="f1"), metadata=ALICE)
    assert got.order.request.client_order_id == "f1"
    canceled = await suite.stub.CancelOrder(api.CancelOrderRequest(client_order_id="f1"), metadata=ALICE)
    assert canceled.ack.status == api.ORDER_STATUS_CANCELED
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await suite.stub.GetOrder(api.GetOrderRequest(client_order_id="never"), metadata=ALICE)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_client_order_id_on_two_shards_must_be_named_by_order_id(suite: Suite) -> None:
    # Each shard checks client order ids only among its own orders.
    await suite.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("dup", "BTCUSDT")), metadata=ALICE)
    await suite.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("dup", "ETHUSDT")), metadata=ALICE)
    suite.gateway.app.router.routes._routes.clear()  # type: ignore[union-attr]
    with pytest.raises(grpc.aio.AioRpcError) as ambiguous:
        await suite.stub.CancelOrder(api.CancelOrderRequest(client_order_id="dup"), metadata=ALICE)
    assert ambiguous.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "names orders on shards 0, 1: name the order by order_id" in (ambiguous.value.details() or "")


async def test_order_ids_carry_their_shard_and_go_straight_there(suite: Suite) -> None:
    # Shards put their id in bits 48..62 of every order id: ids never collide across shards, and a
    # cancel or get by order id goes to the one shard, never to every shard.
    btc = await suite.stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("i1", "BTCUSDT")), metadata=ALICE
    )
    eth = await suite.stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("i2", "ETHUSDT")), metadata=ALICE
    )
    assert order_id_shard(btc.ack.order_id) == 0 and order_id_shard(eth.ack.order_id) == 1
    assert eth.ack.order_id != btc.ack.order_id
    sent_before = dict(suite.gateway.forwarder.sent)  # type: ignore[union-attr]
    canceled = await suite.stub.CancelOrder(api.CancelOrderRequest(order_id=eth.ack.order_id), metadata=ALICE)
    assert canceled.ack.status == api.ORDER_STATUS_CANCELED and canceled.ack.order_id == eth.ack.order_id
    sent_after = suite.gateway.forwarder.sent  # type: ignore[union-attr]
    assert sent_after.get(1, 0) == sent_before.get(1, 0) + 1 and sent_after.get(0, 0) == sent_before.get(0, 0)
    core0 = suite.shards[0].core
    assert core0 is not None
    assert int(core0.state.order(btc.ack.order_id)["status"]) == api.ORDER_STATUS_NEW, "BTC order untouched"
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await suite.stub.GetOrder(api.GetOrderRequest(order_id=999), metadata=ALICE)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing.value.details() == "no order with order_id 999"


async def test_cancel_all_reaches_every_shard_or_the_symbols_owner(suite: Suite) -> None:
    orders = [new_order(f"a{i}", s) for i, s in enumerate(["BTCUSDT", "ETHUSDT", "ETHUSDT"])]
    await suite.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=ALICE)
    only_eth = await suite.stub.CancelAll(api.CancelAllRequest(symbol="ETHUSDT"), metadata=ALICE)
    assert len(only_eth.canceled_order_ids) == 2 and only_eth.durable
    await suite.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("a9", "ETHUSDT")), metadata=ALICE)
    everything = await suite.stub.CancelAll(api.CancelAllRequest(), metadata=ALICE)
    assert len(everything.canceled_order_ids) == 2, "one BTCUSDT on shard 0, one ETHUSDT on shard 1"
    assert everything.durable and everything.sequence > 0
    nothing = await suite.stub.CancelAll(api.CancelAllRequest(), metadata=ALICE)
    assert list(nothing.canceled_order_ids) == [] and not nothing.durable


async def test_the_door_checks_the_api_key_once_before_any_shard(suite: Suite) -> None:
    request = api.SubmitOrderRequest(order=new_order("k1", "BTCUSDT"))
    with pytest.raises(grpc.aio.AioRpcError) as none:
        await suite.stub.SubmitOrder(request)
    assert none.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await suite.stub.SubmitOrder(request, metadata=(("x-api-key", "hftgate-demo-mallory"),))
    assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert unknown.value.details() == "unknown API key"
    from hftgate.security import load_suite_secret

    token = (("x-hftgate-service-token", load_suite_secret().token_for("scaler")),)
    with pytest.raises(grpc.aio.AioRpcError) as service:
        await suite.stub.SubmitOrder(request, metadata=token)
    assert service.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "missing API key" in (service.value.details() or "")
    forged = (("x-hftgate-service-token", "gateway.00"), *ALICE)
    with pytest.raises(grpc.aio.AioRpcError) as bad_token:
        await suite.stub.SubmitOrder(request, metadata=forged)
    assert bad_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert suite.gateway.forwarder.sent == {}  # type: ignore[union-attr]


async def test_bytes_that_are_no_request_are_invalid_argument(suite: Suite) -> None:
    raw = suite.channel.unary_unary("/hftgate.v1.ExecutionService/SubmitOrder")
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await raw(b"\x0a\x05\x12\x03\xff\xfe\xfd", metadata=ALICE)
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request is not a valid hftgate.v1.SubmitOrderRequest" in (bad.value.details() or "")
    assert "Traceback" not in (bad.value.details() or "")


async def test_shard_map_is_served_and_followed(suite: Suite) -> None:
    got = await suite.gateway_stub.GetShardMap(gw.GetShardMapRequest(), metadata=ALICE)
    assert got.map.epoch == 1
    assert [s.shard_id for s in got.map.shards] == [0, 1]
    assert {p.symbol: p.shard_id for p in got.map.pins} == {"BTCUSDT": 0, "ETHUSDT": 1}
    assert got.map.hash_algorithm == "rendezvous-blake2b64-v1" and got.map.order_id_shard_shift == 48
    watch = suite.gateway_stub.WatchShardMap(gw.WatchShardMapRequest(known_epoch=0), metadata=ALICE)
    first = await asyncio.wait_for(watch.read(), 5)
    assert first.epoch == 1
    # An operator moves ETHUSDT to shard 0: the gateway follows, the watcher hears of it.
    await suite.store.update(lambda m: m.with_pin("ETHUSDT", 0))
    second = await asyncio.wait_for(watch.read(), 5)
    assert second.epoch == 2
    assert {p.symbol: p.shard_id for p in second.pins} == {"BTCUSDT": 0, "ETHUSDT": 0}
    watch.cancel()
    await shards_follow(suite.shards, 2)  # the gateway may hear of epoch 2 before shard 0 does
    await suite.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("moved", "ETHUSDT")), metadata=ALICE)
    assert (suite.orders_on(0), suite.orders_on(1)) == (1, 0)


async def test_shard_map_needs_a_credential(suite: Suite) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as none:
        await suite.gateway_stub.GetShardMap(gw.GetShardMapRequest())
    assert none.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await suite.gateway_stub.GetShardMap(gw.GetShardMapRequest(), metadata=(("x-api-key", "nope"),))
    assert unknown.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as negative:
        await suite.gateway_stub.WatchShardMap(gw.WatchShardMapRequest(known_epoch=-1), metadata=ALICE).read()
    assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_older_map_never_replaces_a_newer_one(suite: Suite) -> None:
    app = suite.gateway.app
    assert app is not None
    newer = app.shard_map.with_shard(Shard(2, "127.0.0.1:1"))
    assert await app.install(newer)
    assert not await app.install(app.shard_map.__class__(1, [Shard(0, "127.0.0.1:2")]))
    assert app.shard_map.epoch == 2


async def test_concurrent_split_batches_each_come_back_in_their_own_order(suite: Suite) -> None:
    async def one(batch: int) -> None:
        symbols = ["BTCUSDT" if (batch + i) % 3 else "ETHUSDT" for i in range(12)]
        orders = [new_order(f"cc{batch}-{i}", s) for i, s in enumerate(symbols)]
        reply = await suite.stub.SubmitOrders(
            api.SubmitOrdersRequest(orders=orders), metadata=ALICE, timeout=10
        )
        assert [a.client_order_id for a in reply.acks] == [o.client_order_id for o in orders]
        assert all(a.status == api.ORDER_STATUS_NEW for a in reply.acks)

    await asyncio.gather(*(one(b) for b in range(20)))
    assert suite.orders_on(0) + suite.orders_on(1) == 240
    assert suite.orders_on(1) == sum(1 for b in range(20) for i in range(12) if not (b + i) % 3)


async def test_a_symbols_stream_goes_to_its_shard_and_needs_a_key(suite: Suite) -> None:
    # (A shard's StreamExecutions for a symbol it has had no order in yet never reports that symbol:
    # an execution service issue, reported; so the shard sees one ETHUSDT order first.)
    await suite.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("se0", "ETHUSDT")), metadata=ALICE)
    reports = suite.stub.StreamExecutions(
        api.StreamExecutionsRequest(symbol="ETHUSDT", live_only=True), metadata=ALICE
    )
    await asyncio.sleep(0.1)
    await suite.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("se1", "ETHUSDT")), metadata=ALICE)
    report = await asyncio.wait_for(reports.read(), 5)
    assert report.client_order_id == "se1" and report.symbol == "ETHUSDT"
    reports.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as keyless:
        await suite.stub.StreamExecutions(api.StreamExecutionsRequest(symbol="ETHUSDT")).read()
    assert keyless.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_split_keeps_request_order_per_shard_and_sends_odd_symbols_to_the_lowest_id() -> None:
    from hftgate.shardmap import ShardMap
    from services.gateway.routing import Router, merge

    shard_map = ShardMap(1, [Shard(3, "h:3"), Shard(1, "h:1")], {"A": 3, "B": 1})
    router = Router(shard_map)
    parts = router.split(["A", "B", "", "A", "X" * 100, "B"])
    assert parts == {Shard(3, "h:3"): [0, 3], Shard(1, "h:1"): [1, 2, 4, 5]}
    answers = [(indices, [f"{shard.shard_id}:{i}" for i in indices]) for shard, indices in parts.items()]
    assert merge(6, answers) == ["3:0", "1:1", "1:2", "3:3", "1:4", "1:5"]
    assert merge(3, [([0, 2], ["a", "c"])]) == ["a", None, "c"]
    with pytest.raises(ValueError, match="1 answers for 2 orders"):
        merge(2, [([0, 1], ["only one"])])


def test_route_memory_is_a_bounded_lru() -> None:
    from services.gateway.routing import RouteMemory

    routes = RouteMemory(max_routes=2)
    routes.remember("alice", "c1", 0)
    routes.remember("alice", "c2", 1)
    assert routes.recall("alice", "c1") == 0  # c1 is now the most recent
    routes.remember("bob", "c1", 1)
    assert len(routes) == 2
    assert routes.recall("alice", "c2") is None, "the least recently used went"
    assert routes.recall("bob", "c1") == 1 and routes.recall("alice", "c1") == 0
    routes.remember("alice", "x" * 65, 0)  # no shard accepts such an id: not worth a slot
    assert routes.recall("alice", "x" * 65) is None
