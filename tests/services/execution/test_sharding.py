"""The execution service as a shard (issue #14): the gateway-only account header, shard bits in
order and trade ids, and fencing by the shard map (two real shards, a map moved underneath)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hftgate import security
from hftgate.shardmap import ORDER_ID_LOCAL_MASK, Shard, ShardMap, ShardMapStore, order_id_shard
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.fencing import ShardMapRefused
from tests.services.execution.conftest import Harness, execution_config, key, start_harness
from tests.services.gateway.conftest import _NoRegistry, new_order, shards_follow


@pytest.fixture(autouse=True)
def _two_shards_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.execution.metrics.REGISTRY", _NoRegistry())


def token(principal: str) -> tuple[str, str]:
    return (security.SERVICE_TOKEN_METADATA, security.load_suite_secret().token_for(principal))


def not_owner(err: grpc.aio.AioRpcError) -> dict[str, str]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            assert (info.reason, info.domain) == ("NOT_SHARD_OWNER", "hftgate.v1")
            return dict(info.metadata)
    raise AssertionError("no ErrorInfo detail")


# --- the account header ------------------------------------------------------------------------
async def test_forged_account_header_with_an_api_key_is_refused_and_nothing_done(harness: Harness) -> None:
    forged = (*key("alice"), (security.ACCOUNT_METADATA, "bob"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("f1", "BTCUSDT")), metadata=forged
        )
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == "x-hftgate-account may be set only by the gateway"
    assert harness.core.counters.orders_received == 0


async def test_account_header_from_another_service_principal_is_refused(harness: Harness) -> None:
    for principal in ("execution", "admin", "marketdata"):
        metadata = (token(principal), (security.ACCOUNT_METADATA, "alice"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await harness.stub.GetOrder(api.GetOrderRequest(order_id=1), metadata=metadata)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, principal


async def test_gateway_token_with_account_header_acts_as_that_account(harness: Harness) -> None:
    as_alice = (token("gateway"), (security.ACCOUNT_METADATA, "alice"))
    reply = await harness.stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("g1", "BTCUSDT")), metadata=as_alice
    )
    assert reply.ack.status == api.ORDER_STATUS_NEW
    got = await harness.stub.GetOrder(api.GetOrderRequest(client_order_id="g1"), metadata=key("alice"))
    assert got.order.order_id == reply.ack.order_id
    with pytest.raises(grpc.aio.AioRpcError) as other:  # bob does not see alice's order
        await harness.stub.GetOrder(api.GetOrderRequest(client_order_id="g1"), metadata=key("bob"))
    assert other.value.code() == grpc.StatusCode.NOT_FOUND
    unknown = (token("gateway"), (security.ACCOUNT_METADATA, "nobody"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await harness.stub.GetOrder(api.GetOrderRequest(order_id=1), metadata=unknown)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "nobody" in (err.value.details() or "")


# --- shard bits ----------------------------------------------------------------------------------
async def test_ids_carry_the_shard_and_round_trip(tmp_path: Path) -> None:
    store = ShardMapStore(f"sqlite+aiosqlite:///{tmp_path / 'shardmap.sqlite3'}")
    await store.start()
    await store.create(ShardMap(1, [Shard(3, "127.0.0.1:50071")]))  # shard 3 owns every symbol
    await store.close()
    h = await start_harness(execution_config(tmp_path, shard_id=3))
    try:
        base = 3 << 48
        buy = await h.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("b1", "BTCUSDT")), metadata=key("alice")
        )
        assert buy.ack.order_id == base | 1 and order_id_shard(buy.ack.order_id) == 3
        sell = await h.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("s1", "BTCUSDT", side=common.SIDE_SELL)),
            metadata=key("bob"),
        )
        assert order_id_shard(sell.ack.order_id) == 3 and sell.ack.cum_quantity_lots == 10
        got = await h.stub.GetOrder(api.GetOrderRequest(order_id=buy.ack.order_id), metadata=key("alice"))
        assert got.order.order_id == buy.ack.order_id and got.order.status == api.ORDER_STATUS_FILLED
        stream = h.stub.StreamExecutions(api.StreamExecutionsRequest(), metadata=key("alice"))
        reports = []
        async for report in stream:
            reports.append(report)
            if report.exec_type == api.EXEC_TYPE_FILL:
                break
        stream.cancel()
        fill = reports[-1]
        assert fill.order_id == buy.ack.order_id and fill.counterparty_order_id in (0, sell.ack.order_id)
        assert order_id_shard(fill.trade_id) == 3 and fill.trade_id & ORDER_ID_LOCAL_MASK == 1
        # Another shard's id, or the bare local id, answers exactly like an id never used.
        for foreign in (1, (4 << 48) | 1, 999):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await h.stub.CancelOrder(api.CancelOrderRequest(order_id=foreign), metadata=key("alice"))
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == f"no order with order_id {foreign}"
        resting = await h.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("r1", "ETHUSDT")), metadata=key("alice")
        )
        canceled = await h.stub.CancelAll(api.CancelAllRequest(), metadata=key("alice"))
        assert list(canceled.canceled_order_ids) == [resting.ack.order_id]
        # In a stream: a cancel of another shard's id is UNKNOWN_ORDER; its own id works.
        again = await h.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("r2", "ETHUSDT")), metadata=key("alice")
        )
        call = h.stub.OrderStream(metadata=key("alice"))
        await call.write(
            api.OrderStreamRequest(
                inputs=[
                    api.OrderInput(
                        cancel=api.CancelOrderRequest(order_id=again.ack.order_id & ORDER_ID_LOCAL_MASK)
                    ),
                    api.OrderInput(cancel=api.CancelOrderRequest(order_id=again.ack.order_id)),
                ]
            )
        )
        acks: list[Any] = []
        while len(acks) < 2:
            acks.extend((await call.read()).acks)
        await call.done_writing()
        assert acks[0].reason == common.REJECT_REASON_UNKNOWN_ORDER
        assert acks[1].status == api.ORDER_STATUS_CANCELED and acks[1].order_id == again.ack.order_id
        await h.core.ledger.flush()
        entries = await h.core.ledger.entries()
        assert [e.transaction_id for e in entries] == [f"BTCUSDT:{base | 1}"]
        assert (entries[0].buyer_order_id, entries[0].seller_order_id) == (
            buy.ack.order_id,
            sell.ack.order_id,
        )
    finally:
        await h.close()


# --- fencing -------------------------------------------------------------------------------------
class Shards:
    def __init__(self, tmp: Path, url: str) -> None:
        self.tmp, self.url = tmp, url
        self.reference = f"sqlite+aiosqlite:///{tmp / 'reference.sqlite3'}"
        self.harnesses: list[Harness] = []

    def config(self, shard_id: int, **overrides: Any) -> Any:
        return execution_config(
            self.tmp / f"shard{shard_id}",
            reference_database_url=self.reference,
            shard_map_database_url=self.url,
            shard_id=shard_id,
            **overrides,
        )


@pytest.fixture
async def two(tmp_path: Path) -> AsyncIterator[tuple[Shards, ShardMapStore]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shardmap.sqlite3'}"
    shards = Shards(tmp_path, url)
    for shard_id in (0, 1):
        shards.harnesses.append(await start_harness(shards.config(shard_id)))
    store = ShardMapStore(url)
    await store.start()
    ports = [h.running.port for h in shards.harnesses]
    await store.create(
        ShardMap(
            1,
            [Shard(0, f"127.0.0.1:{ports[0]}"), Shard(1, f"127.0.0.1:{ports[1]}")],
            {"BTCUSDT": 0, "ETHUSDT": 1},
        )
    )
    await shards_follow([h.running for h in shards.harnesses], 1)
    try:
        yield shards, store
    finally:
        for h in shards.harnesses:
            await h.close()
        await store.close()


async def test_order_for_a_symbol_another_shard_owns_is_refused_with_the_owner(two: Any) -> None:
    shards, _ = two
    zero, one = shards.harnesses
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await zero.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("e1", "ETHUSDT")), metadata=key("alice")
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not_owner(err.value) == {
        "symbol": "ETHUSDT",
        "owner_shard_id": "1",
        "owner_address": f"127.0.0.1:{one.running.port}",
        "epoch": "1",
    }
    batch = api.SubmitOrdersRequest(orders=[new_order("b1", "BTCUSDT"), new_order("b2", "ETHUSDT")])
    with pytest.raises(grpc.aio.AioRpcError) as whole:
        await zero.stub.SubmitOrders(batch, metadata=key("alice"))
    assert whole.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not_owner(whole.value)["symbol"] == "ETHUSDT"
    assert zero.core.state.order_count == 0, "nothing of the batch was accepted"
    call = zero.stub.OrderStream(metadata=key("alice"))
    await call.write(
        api.OrderStreamRequest(
            inputs=[
                api.OrderInput(new_order=new_order("s1", "ETHUSDT")),
                api.OrderInput(new_order=new_order("s2", "BTCUSDT")),
            ]
        )
    )
    acks: list[Any] = []
    while len(acks) < 2:
        acks.extend((await call.read()).acks)
    await call.done_writing()
    assert (
        acks[0].status == api.ORDER_STATUS_REJECTED and acks[0].reason == common.REJECT_REASON_NOT_SHARD_OWNER
    )
    assert "does not own" in acks[0].reason_text
    assert acks[1].status == api.ORDER_STATUS_NEW
    assert zero.core.state.order_count == 1


async def test_a_stale_gateway_cannot_get_an_order_accepted_by_the_former_owner(two: Any) -> None:
    shards, store = two
    zero, one = shards.harnesses
    resting = await one.stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("old", "ETHUSDT")), metadata=key("alice")
    )
    await store.update(lambda m: m.with_pin("ETHUSDT", 0))  # ETHUSDT moves to shard 0 at epoch 2
    await shards_follow([h.running for h in shards.harnesses], 2)
    stale = (token("gateway"), (security.ACCOUNT_METADATA, "alice"))  # a gateway still on epoch 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await one.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("late", "ETHUSDT")), metadata=stale)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not_owner(err.value)["owner_shard_id"] == "0" and not_owner(err.value)["epoch"] == "2"
    moved = await zero.stub.SubmitOrder(
        api.SubmitOrderRequest(order=new_order("new", "ETHUSDT")), metadata=stale
    )
    assert moved.ack.status == api.ORDER_STATUS_NEW
    # The order resting on the former owner can still be canceled there.
    canceled = await one.stub.CancelOrder(
        api.CancelOrderRequest(order_id=resting.ack.order_id), metadata=key("alice")
    )
    assert canceled.ack.status == api.ORDER_STATUS_CANCELED
    # A restart keeps fencing: shard 1 reads epoch 2 again and still refuses ETHUSDT.
    await one.close()
    again = await start_harness(shards.config(1))
    shards.harnesses[1] = again
    assert again.running.fence.epoch == 2
    with pytest.raises(grpc.aio.AioRpcError) as after:
        await again.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("late2", "ETHUSDT")), metadata=key("alice")
        )
    assert after.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_shard_the_stored_map_does_not_name_refuses_to_start(two: Any) -> None:
    shards, _ = two
    with pytest.raises(ShardMapRefused) as refused:
        await start_harness(shards.config(7))
    assert refused.value.code == 2 and "has no shard 7" in refused.value.reason
    assert not (shards.tmp / "shard7" / "journal").exists(), "refused before touching any state"


async def test_an_unreadable_shard_map_refuses_the_start(tmp_path: Path) -> None:
    (tmp_path / "not-a-dir").write_text("")
    bad = f"sqlite+aiosqlite:///{tmp_path / 'not-a-dir' / 'map.sqlite3'}"
    with pytest.raises(ShardMapRefused) as refused:
        await start_harness(execution_config(tmp_path / "s", shard_map_database_url=bad))
    assert refused.value.code == 2 and "cannot read the shard map" in refused.value.reason


def test_the_trade_feed_publishes_trade_ids_with_the_shards_bits() -> None:
    import numpy as np

    from hftgate.security import ClientCredentials
    from services.execution.state import FILL_DTYPE
    from services.execution.trade_feed import TradeFeed

    fills = np.zeros(2, FILL_DTYPE)
    fills["trade_id"] = [1, 2]
    fills["price"], fills["quantity"], fills["aggressor_side"] = 5_000_000, 100, 1
    feeds = {
        shard: TradeFeed(
            "127.0.0.1:1",
            lambda _id: "BTCUSDT",
            lambda _symbol: ("0.01", "0.00001"),
            credentials=ClientCredentials(),
            trade_id_base=shard << 48,
        )
        for shard in (0, 1)
    }
    ids = {shard: [t.trade_id for t in feed._trades(fills)] for shard, feed in feeds.items()}
    assert ids[0] == [1, 2]  # shard 0 keeps today's ids
    assert ids[1] == [(1 << 48) | 1, (1 << 48) | 2]  # two shards never publish the same id


async def test_shards_started_together_store_one_initial_map_and_agree(tmp_path: Path) -> None:
    """compose/Kubernetes: every shard names the same initial map; the first store wins, no shard
    waits for the gateway to store one, and none accepts a symbol it does not own."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'map.sqlite3'}"
    initial = ("0=127.0.0.1:1", "1=127.0.0.1:2")
    harnesses = [
        await start_harness(
            execution_config(
                tmp_path / f"s{shard}",
                shard_id=shard,
                shard_map_database_url=url,
                initial_shards=initial,
                seed_demo_data=True,  # each test shard has its own reference store here
            )
        )
        for shard in (0, 1)
    ]
    try:
        store = ShardMapStore(url)
        await store.start()
        stored = await store.load()
        await store.close()
        assert stored is not None and stored.epoch == 1 and stored.shard_ids == (0, 1)
        for harness in harnesses:
            assert harness.running.fence.epoch == 1
        owner = stored.owner("BTCUSDT").shard_id
        other = harnesses[1 - owner]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await other.stub.SubmitOrder(
                api.SubmitOrderRequest(order=new_order("x1", "BTCUSDT")), metadata=key("alice")
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert not_owner(refused.value)["owner_shard_id"] == str(owner)
    finally:
        for harness in harnesses:
            await harness.close()
