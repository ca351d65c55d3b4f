"""Moving a symbol between execution shards (issue #15): the book, its priority and its original
order ids reach the new owner; the old owner keeps its history and points at the new one; a
mover abandoned at any step, with both shards restarted, resumes to exactly one owner holding the
same book; inputs for a moving symbol are refused UNAVAILABLE with a retry delay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hftgate import security
from hftgate.matching.types import OrderType as EngineType
from hftgate.shardmap import Shard, ShardMap, ShardMapStore, order_id_shard
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import shard_admin_pb2 as admin
from hftgate.v1 import shard_admin_pb2_grpc as admin_grpc
from services.execution import handover
from services.execution.codec import shard_base_of
from services.execution.state import OPEN_STATUSES
from services.scaler.moves import STEPS, Move, MoveRefused, SymbolMover
from tests.services.execution.conftest import Harness, execution_config, key, start_harness
from tests.services.gateway.conftest import _NoRegistry, shards_follow

SYMBOL = "BTCUSDT"


@pytest.fixture(autouse=True)
def _shards_share_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.execution.metrics.REGISTRY", _NoRegistry())


class Pair:
    """Shards 0 and 1 on one shard map (BTCUSDT pinned to 0, ETHUSDT to 1) and a mover."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.url = f"sqlite+aiosqlite:///{tmp / 'shardmap.sqlite3'}"
        self.reference = f"sqlite+aiosqlite:///{tmp / 'reference.sqlite3'}"
        self.shards: list[Harness] = []
        self.store = ShardMapStore(self.url)

    def config(self, shard_id: int, **overrides: Any) -> Any:
        return execution_config(
            self.tmp / f"shard{shard_id}",
            reference_database_url=self.reference,
            shard_map_database_url=self.url,
            shard_id=shard_id,
            **overrides,
        )

    async def start(self) -> None:
        for shard_id in (0, 1):
            self.shards.append(await start_harness(self.config(shard_id)))
        await self.store.start()
        ports = [h.running.port for h in self.shards]
        await self.store.create(
            ShardMap(1, [Shard(0, f"127.0.0.1:{ports[0]}"), Shard(1, f"127.0.0.1:{ports[1]}")], {SYMBOL: 0})
        )
        await shards_follow([h.running for h in self.shards], 1)

    async def restart(self, shard_id: int) -> Harness:
        """Stop a shard and start it again on its port from its state directory."""
        old = self.shards[shard_id]
        port = old.running.port
        await old.close()
        self.shards[shard_id] = await start_harness(replace(old.config, port=port))
        return self.shards[shard_id]

    def mover(self) -> SymbolMover:
        credentials = security.load_suite_secret().service_credentials("scaler")
        return SymbolMover(self.store, credentials, retry_delay_s=0.05)

    async def close(self) -> None:
        for h in self.shards:
            await h.close()
        await self.store.close()


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    made = Pair(tmp_path)
    await made.start()
    try:
        yield made
    finally:
        await made.close()


def order(
    client_id: str,
    side: int,
    price: int,
    qty: int = 10,
    *,
    display: int = 0,
    stop: int = 0,
    tif: int = api.TIME_IN_FORCE_GTC,
) -> api.NewOrder:
    return api.NewOrder(
        client_order_id=client_id,
        symbol=SYMBOL,
        side=side,  # type: ignore[arg-type]
        order_type=api.ORDER_TYPE_STOP_LIMIT if stop else api.ORDER_TYPE_LIMIT,
        time_in_force=tif,  # type: ignore[arg-type]
        price_ticks=price,
        stop_price_ticks=stop,
        quantity_lots=qty,
        display_quantity_lots=display,
    )


async def submit(h: Harness, account: str, new: api.NewOrder) -> api.OrderAck:
    reply = await h.stub.SubmitOrder(api.SubmitOrderRequest(order=new), metadata=key(account))
    assert reply.ack.reason == 0, reply.ack.reason_text
    return reply.ack


BUY, SELL = common.SIDE_BUY, common.SIDE_SELL


async def seed_book(h: Harness) -> dict[str, int]:
    """A traded history plus a book of several accounts: a level of three, a lower bid, an
    iceberg ask, a buy stop. Returns client order id -> order id."""
    ids = {}
    ids["hist_buy"] = (await submit(h, "alice", order("hist_buy", BUY, 5_000_000, 1))).order_id
    ids["hist_sell"] = (await submit(h, "bob", order("hist_sell", SELL, 5_000_000, 1))).order_id
    for client_id, account in (("a1", "alice"), ("b1", "bob"), ("c1", "carol")):
        ids[client_id] = (await submit(h, account, order(client_id, BUY, 4_990_000))).order_id
    ids["a2"] = (await submit(h, "alice", order("a2", BUY, 4_980_000))).order_id
    ids["ice"] = (await submit(h, "bob", order("ice", SELL, 5_010_000, 30, display=10))).order_id
    ids["stop"] = (await submit(h, "carol", order("stop", BUY, 5_031_000, 5, stop=5_030_000))).order_id
    return ids


def book_of(h: Harness) -> list[tuple[Any, ...]]:
    """The shard's book of SYMBOL as a move would carry it (original ids)."""
    core = h.core
    moved = handover.rows_of_book(
        handover.export_book(
            core.state, SYMBOL, core.publisher.original_ids, shard_base_of(h.config.shard_id)
        )
    )
    return [
        (o.original_order_id, o.account_id, o.client_order_id, o.side, o.engine_price_ticks,
         o.leaves_quantity_lots, o.display_quantity_lots, o.stop_price_ticks, o.pending_stop)
        for o in moved
    ]  # fmt: skip


def error_info(err: grpc.aio.AioRpcError) -> tuple[str, dict[str, str]]:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason, dict(info.metadata)
    raise AssertionError("no ErrorInfo detail")


def retry_delay_ms(err: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToNanoseconds() / 1e6
    raise AssertionError("no RetryInfo detail")


async def assert_one_owner(pair: Pair, book: list[tuple[Any, ...]]) -> None:
    stored = await pair.store.load()
    assert stored is not None
    assert stored.owner(SYMBOL).shard_id == 1 and SYMBOL not in stored.moving
    zero, one = pair.shards
    await shards_follow([zero.running, one.running], stored.epoch)
    assert book_of(one) == book
    assert zero.running.fence.handed_over == {SYMBOL: 1}
    with pytest.raises(grpc.aio.AioRpcError) as err:  # the old owner takes nothing new
        await zero.stub.SubmitOrder(
            api.SubmitOrderRequest(order=order("late", BUY, 4_000_000)), metadata=key("dave")
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err.value)[1]["owner_shard_id"] == "1"


def assert_exposure_is_the_working_orders(h: Harness) -> None:
    """The shard's per-account working lots and open-order counts are those of its open rows (a
    dropped frozen copy counts no more)."""
    state = h.core.state
    rows = state.table[state._slot_ids != 0]
    rows = rows[np.isin(rows["status"], OPEN_STATUSES)]
    for account_id in state.account_names:
        account_row = state.account_row(account_id)
        mine = rows[rows["account_id"] == account_id]
        for side, exposure in ((BUY, state.open_buy), (SELL, state.open_sell)):
            for symbol_id in range(len(state.symbol_names)):
                held = mine[(mine["side"] == side) & (mine["symbol_id"] == symbol_id)]
                assert exposure[account_row, symbol_id] == int(held["leaves"].sum())
        assert state.open_orders[account_row] == len(mine)


# --- a whole move ------------------------------------------------------------------------------------
async def test_move_keeps_priority_original_ids_and_history(pair: Pair) -> None:
    zero, one = pair.shards
    ids = await seed_book(zero)
    before = book_of(zero)
    async with pair.mover() as mover:
        done = await mover.move(SYMBOL, 1)
    assert done.step == "done"
    await assert_one_owner(pair, before)

    # An incoming sell crossing the level fills alice, bob, carol in the order they came, by the
    # ids they were given on shard 0.
    taker = await submit(one, "dave", order("taker", SELL, 4_990_000, 25))
    assert order_id_shard(taker.order_id) == 1 and taker.status == api.ORDER_STATUS_FILLED
    await one.core.ledger.flush()
    fills = [e.buyer_order_id for e in await one.core.ledger.entries()]
    assert fills == [ids["a1"], ids["b1"], ids["c1"]]
    c1 = await one.stub.GetOrder(api.GetOrderRequest(order_id=ids["c1"]), metadata=key("carol"))
    assert (c1.order.order_id, c1.order.status, c1.order.leaves_quantity_lots) == (
        ids["c1"],
        api.ORDER_STATUS_PARTIALLY_FILLED,
        5,
    )

    # A cancel by the original id (shard 0's bits) works on the new owner; the old owner points there.
    with pytest.raises(grpc.aio.AioRpcError) as old:
        await zero.stub.CancelOrder(api.CancelOrderRequest(order_id=ids["a2"]), metadata=key("alice"))
    assert old.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    reason, where = error_info(old.value)
    assert reason == "NOT_SHARD_OWNER"
    assert (where["owner_shard_id"], where["owner_address"]) == ("1", f"127.0.0.1:{one.running.port}")
    canceled = await one.stub.CancelOrder(api.CancelOrderRequest(order_id=ids["a2"]), metadata=key("alice"))
    assert (canceled.ack.order_id, canceled.ack.status) == (ids["a2"], api.ORDER_STATUS_CANCELED)
    by_client_id = await one.stub.CancelOrder(
        api.CancelOrderRequest(client_order_id="stop"), metadata=key("carol")
    )
    assert (by_client_id.ack.order_id, by_client_id.ack.status) == (ids["stop"], api.ORDER_STATUS_CANCELED)

    # History stays with the old owner: a finished pre-move order is answered there.
    hist = await zero.stub.GetOrder(api.GetOrderRequest(order_id=ids["hist_buy"]), metadata=key("alice"))
    assert hist.order.status == api.ORDER_STATUS_FILLED
    with pytest.raises(grpc.aio.AioRpcError) as moved:  # a working one is the new owner's
        await zero.stub.GetOrder(api.GetOrderRequest(order_id=ids["ice"]), metadata=key("bob"))
    assert error_info(moved.value)[1]["owner_shard_id"] == "1"
    ice = await one.stub.GetOrder(api.GetOrderRequest(order_id=ids["ice"]), metadata=key("bob"))
    assert (ice.order.leaves_quantity_lots, ice.order.request.display_quantity_lots) == (30, 10)

    # CancelAll on the old owner leaves the handed-over orders alone.
    left = await zero.stub.CancelAll(api.CancelAllRequest(), metadata=key("bob"))
    assert list(left.canceled_order_ids) == []

    # A restart of the new owner rebuilds the book and the id translation from its own state.
    after = book_of(one)
    one = await pair.restart(1)
    assert book_of(one) == after
    again = await one.stub.GetOrder(api.GetOrderRequest(order_id=ids["ice"]), metadata=key("bob"))
    assert again.order.order_id == ids["ice"]


# --- inputs during a move --------------------------------------------------------------------------
async def test_inputs_for_a_moving_symbol_are_refused_unavailable_then_go_to_the_new_owner(
    pair: Pair,
) -> None:
    zero, one = pair.shards
    ids = await seed_book(zero)

    await mark_moving(pair)
    for call in (
        zero.stub.SubmitOrder(
            api.SubmitOrderRequest(order=order("m1", BUY, 4_000_000)), metadata=key("dave")
        ),
        zero.stub.CancelOrder(api.CancelOrderRequest(order_id=ids["a1"]), metadata=key("alice")),
        one.stub.SubmitOrder(api.SubmitOrderRequest(order=order("m2", BUY, 4_000_000)), metadata=key("dave")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert 0 < retry_delay_ms(err.value) <= 100
        assert "moving" in (err.value.details() or "")
    # The other symbols go on.
    eth = await submit(
        one, "dave", api.NewOrder(**{**_fields(order("e1", BUY, 300_000)), "symbol": "ETHUSDT"})
    )
    assert eth.status == api.ORDER_STATUS_NEW

    async with pair.mover() as mover:
        resumed = await mover.resume_all()
    assert [m.step for m in resumed] == ["done"]
    retried = await submit(one, "dave", order("m1", BUY, 4_000_000))
    assert retried.status == api.ORDER_STATUS_NEW


def _fields(message: api.NewOrder) -> dict[str, Any]:
    return {f.name: v for f, v in message.ListFields()}


class _Abandoned(Exception):
    """The mover stops here, as if killed."""


async def mark_moving(pair: Pair) -> None:
    """Start moving SYMBOL to shard 1 and abandon the mover before its export, as if killed: the
    map marks the symbol moving and both shards follow it."""

    def stop_at_export(move: Move) -> None:
        if move.step == "export":
            raise _Abandoned(move.step)

    async with pair.mover() as mover:
        mover.before_step = stop_at_export
        move = await mover.start_move(SYMBOL, 1)
        with pytest.raises(_Abandoned):
            await mover.run(move.move_id)
    marked = await pair.store.load()
    assert marked is not None and marked.moving == {SYMBOL: 1}
    zero, one = pair.shards
    await shards_follow([zero.running, one.running], marked.epoch)


# --- a kill at each step -----------------------------------------------------------------------------
@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", STEPS[:-1])
async def test_mover_and_shards_killed_at_each_step_recover_to_one_owner_with_the_same_book(
    pair: Pair, step: str, when: str
) -> None:
    """``before``: the step is recorded, not acted on. ``after``: acted on, the next step not
    recorded. Then both shards restart and a new mover resumes the move."""
    zero, _ = pair.shards
    ids = await seed_book(zero)
    before = book_of(zero)
    mover = pair.mover()
    await mover.start()
    try:
        move = await mover.start_move(SYMBOL, 1)
        if when == "before":

            def kill(current: Move) -> None:
                if current.step == step:
                    raise _Abandoned(step)

            mover.before_step = kill
        else:
            record = mover._record

            async def kill_after(current: Move, **changes: Any) -> Move:
                if current.step == step and "step" in changes:
                    raise _Abandoned(step)
                return await record(current, **changes)

            mover._record = kill_after  # type: ignore[method-assign,assignment]
        with pytest.raises(_Abandoned):
            await mover.run(move.move_id)
    finally:
        await mover.close()
    await pair.restart(0)
    await pair.restart(1)
    async with pair.mover() as mover:
        resumed = await mover.resume_all()
        assert [m.step for m in resumed] == ["done"]
        with pytest.raises(MoveRefused):  # done: nothing left to run twice
            await mover.start_move(SYMBOL, 1)
    await assert_one_owner(pair, before)
    one = pair.shards[1]
    canceled = await one.stub.CancelOrder(api.CancelOrderRequest(order_id=ids["b1"]), metadata=key("bob"))
    assert (canceled.ack.order_id, canceled.ack.status) == (ids["b1"], api.ORDER_STATUS_CANCELED)


async def test_inside_the_pause_nothing_is_written_and_a_mover_killed_there_starts_again_at_export(
    pair: Pair,
) -> None:
    """Export, import and release are not recorded one by one (each record is a SQL commit while
    the symbol's orders wait): the row says ``export`` until ``done``, a mover killed before the
    publish resumes from the export (same book, import and release found done), and a move that
    may have been imported can no longer be aborted."""
    zero, _ = pair.shards
    await seed_book(zero)
    before = book_of(zero)
    mover = pair.mover()
    await mover.start()
    try:
        move = await mover.start_move(SYMBOL, 1)
        seen: list[str] = []

        def kill_at_publish(current: Move) -> None:
            seen.append(current.step)
            if current.step == "publish":
                raise _Abandoned("publish")

        mover.before_step = kill_at_publish
        with pytest.raises(_Abandoned):
            await mover.run(move.move_id)
        assert seen == ["mark", "export", "import", "release", "publish"]
        stored = await mover.get(move.move_id)
        assert stored is not None and (stored.step, stored.book) == ("export", b"")
        with pytest.raises(MoveRefused, match="can only go forward"):
            await mover.abort(move.move_id)
    finally:
        await mover.close()
    async with pair.mover() as resuming:
        assert [m.step for m in await resuming.resume_all()] == ["done"]
    await assert_one_owner(pair, before)


# --- the shard side ----------------------------------------------------------------------------------
async def test_import_sent_again_is_not_imported_twice_even_without_its_id_table(pair: Pair) -> None:
    zero, one = pair.shards
    ids = await seed_book(zero)
    await pair.store.update(lambda m: m.with_move_started(SYMBOL, 1))
    metadata = ((security.SERVICE_TOKEN_METADATA, security.load_suite_secret().token_for("admin")),)
    old = admin_grpc.ShardAdminServiceStub(zero.channel)
    new = admin_grpc.ShardAdminServiceStub(one.channel)
    book = await old.ExportSymbol(admin.ExportSymbolRequest(move_id="m1", symbol=SYMBOL), metadata=metadata)
    assert [o.original_order_id for o in book.orders] == [
        ids["a1"], ids["b1"], ids["c1"], ids["a2"], ids["ice"], ids["stop"]
    ]  # fmt: skip
    request = admin.ImportSymbolRequest(move_id="m1", symbol=SYMBOL, from_shard_id=0, orders=book.orders)
    first = await new.ImportSymbol(request, metadata=metadata)
    assert (first.orders, first.already_imported) == (6, False)
    table = pair.tmp / "shard1" / handover.MOVES_DIR / "import-m1.json"
    table.unlink()  # as if the shard died between the durable record and the id table
    one = await pair.restart(1)
    new = admin_grpc.ShardAdminServiceStub(one.channel)
    again = await new.ImportSymbol(request, metadata=metadata)
    assert (again.orders, again.already_imported) == (6, True)
    assert table.exists() and len(book_of(one)) == 6
    got = await one.stub.GetOrder(api.GetOrderRequest(order_id=ids["a1"]), metadata=key("alice"))
    assert got.order.order_id == ids["a1"]


def test_a_book_has_a_column_for_each_field_of_a_moved_order() -> None:
    columns = [(f.name, f.number, f.type) for f in admin.MovedBook.DESCRIPTOR.fields]
    assert columns == [(f.name, f.number, f.type) for f in admin.MovedOrder.DESCRIPTOR.fields]
    assert all(f.is_repeated for f in admin.MovedBook.DESCRIPTOR.fields)


async def test_the_book_moves_as_columns_and_a_caller_without_them_gets_and_gives_rows(pair: Pair) -> None:
    """A mover asks for columns; an older caller (no ``columns``) gets the same orders as rows,
    and an import takes either form, but not both at once, nor columns of unequal length."""
    zero, one = pair.shards
    await seed_book(zero)
    before = book_of(zero)
    await pair.store.update(lambda m: m.with_move_started(SYMBOL, 1))
    metadata = ((security.SERVICE_TOKEN_METADATA, security.load_suite_secret().token_for("admin")),)
    old = admin_grpc.ShardAdminServiceStub(zero.channel)
    new = admin_grpc.ShardAdminServiceStub(one.channel)
    columns = await old.ExportSymbol(
        admin.ExportSymbolRequest(move_id="m1", symbol=SYMBOL, columns=True), metadata=metadata
    )
    rows = await old.ExportSymbol(admin.ExportSymbolRequest(move_id="m1", symbol=SYMBOL), metadata=metadata)
    assert not columns.orders and not rows.book.original_order_id
    assert handover.rows_of_book(columns.book) == list(rows.orders) and len(rows.orders) == len(before) == 6
    assert handover.book_of_rows(list(rows.orders)) == columns.book

    uneven = admin.MovedBook()
    uneven.CopyFrom(columns.book)
    del uneven.client_order_id[-1]
    both = admin.ImportSymbolRequest(move_id="m1", symbol=SYMBOL, orders=rows.orders, book=columns.book)
    for bad, says in (
        (both, "not both"),
        (admin.ImportSymbolRequest(move_id="m1", symbol=SYMBOL, book=uneven), "client_order_id has 5"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await new.ImportSymbol(bad, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in (refused.value.details() or "")
    assert book_of(one) == []  # nothing of either was imported

    imported = await new.ImportSymbol(
        admin.ImportSymbolRequest(move_id="m1", symbol=SYMBOL, book=columns.book), metadata=metadata
    )
    assert (imported.orders, imported.already_imported) == (6, False)
    again = await new.ImportSymbol(  # the same import as rows: found done
        admin.ImportSymbolRequest(move_id="m1", symbol=SYMBOL, orders=rows.orders), metadata=metadata
    )
    assert (again.orders, again.already_imported) == (6, True)
    assert book_of(one) == before


async def test_shard_admin_refuses_accounts_and_other_services(pair: Pair) -> None:
    zero, _ = pair.shards
    stub = admin_grpc.ShardAdminServiceStub(zero.channel)
    request = admin.ExportSymbolRequest(move_id="m1", symbol=SYMBOL)
    for metadata, code in (
        (key("alice"), grpc.StatusCode.PERMISSION_DENIED),
        (
            ((security.SERVICE_TOKEN_METADATA, security.load_suite_secret().token_for("gateway")),),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        ((), grpc.StatusCode.UNAUTHENTICATED),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ExportSymbol(request, metadata=metadata)
        assert err.value.code() == code
    admin_token = ((security.SERVICE_TOKEN_METADATA, security.load_suite_secret().token_for("admin")),)
    with pytest.raises(grpc.aio.AioRpcError) as unmarked:  # no move published: nothing exported
        await stub.ExportSymbol(request, metadata=admin_token)
    assert unmarked.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not mark BTCUSDT moving" in (unmarked.value.details() or "")


# The way back differs from the way out at the import (the old owner purges its frozen copies)
# and at the release; a kill at the other steps is the way out's, tested above.
@pytest.mark.parametrize(
    ("step", "when"), [("", ""), ("import", "before"), ("import", "after"), ("release", "after")]
)
async def test_a_symbol_moves_back_to_the_shard_that_handed_it_over(pair: Pair, step: str, when: str) -> None:
    """The way back (scaling down): shard 0 drops its frozen copies and takes the book as shard 1
    left it; with a kill at each step of that move (both shards restarted, a new mover resumes),
    and then the book moves out again."""
    zero, one = pair.shards
    ids = await seed_book(zero)
    async with pair.mover() as mover:
        await mover.move(SYMBOL, 1)
    await shards_follow([zero.running, one.running], (await pair.store.load()).epoch)  # type: ignore[union-attr]
    # On shard 1: a1 fills, b1 is cancelled, dave's d1 rests (born on shard 1).
    await one.stub.CancelOrder(api.CancelOrderRequest(order_id=ids["b1"]), metadata=key("bob"))
    sold = await submit(one, "dave", order("e1", SELL, 4_990_000, 10))
    assert sold.status == api.ORDER_STATUS_FILLED
    ids["d1"] = (await submit(one, "dave", order("d1", BUY, 4_985_000))).order_id
    assert order_id_shard(ids["d1"]) == 1
    left = book_of(one)

    mover = pair.mover()
    await mover.start()
    try:
        move = await mover.start_move(SYMBOL, 0)
        if step:
            record = mover._record

            def kill(current: Move) -> None:
                if current.step == step:
                    raise _Abandoned(step)

            async def kill_after(current: Move, **changes: Any) -> Move:
                if current.step == step and "step" in changes:
                    raise _Abandoned(step)
                return await record(current, **changes)

            if when == "before":
                mover.before_step = kill
            else:
                mover._record = kill_after  # type: ignore[method-assign,assignment]
            with pytest.raises(_Abandoned):
                await mover.run(move.move_id)
        else:
            await mover.run(move.move_id)
    finally:
        await mover.close()
    if step:
        zero, one = await pair.restart(0), await pair.restart(1)
        async with pair.mover() as resuming:
            assert [m.step for m in await resuming.resume_all()] == ["done"]

    stored = await pair.store.load()
    assert stored is not None and stored.owner(SYMBOL).shard_id == 0 and SYMBOL not in stored.moving
    await shards_follow([zero.running, one.running], stored.epoch)
    assert book_of(zero) == left
    assert zero.running.fence.handed_over == {} and one.running.fence.handed_over == {SYMBOL: 0}
    assert_exposure_is_the_working_orders(zero)
    # Shard 0's copies of a1 (filled on shard 1) and b1 (cancelled there) are gone, not stale.
    for gone, account in (("a1", "alice"), ("b1", "bob")):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await zero.stub.GetOrder(api.GetOrderRequest(order_id=ids[gone]), metadata=key(account))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for kept, account in (("c1", "carol"), ("d1", "dave"), ("stop", "carol")):
        got = await zero.stub.GetOrder(api.GetOrderRequest(order_id=ids[kept]), metadata=key(account))
        assert got.order.order_id == ids[kept]
    with pytest.raises(grpc.aio.AioRpcError) as err:  # and so are their client order ids
        await zero.stub.GetOrder(api.GetOrderRequest(client_order_id="a1"), metadata=key("alice"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # The book trades on shard 0 in the priority shard 1 left.
    hit = await submit(zero, "dave", order("e2", SELL, 4_990_000, 10))
    assert hit.status == api.ORDER_STATUS_FILLED
    got = await zero.stub.GetOrder(api.GetOrderRequest(order_id=ids["c1"]), metadata=key("carol"))
    assert got.order.status == api.ORDER_STATUS_FILLED

    # And out again: shard 1 drops its own frozen copies the same way.
    out = book_of(zero)
    async with pair.mover() as mover:
        await mover.move(SYMBOL, 1)
    assert book_of(one) == out and one.running.fence.handed_over == {}


async def test_an_order_partly_filled_before_the_move_shows_and_replaces_as_its_client_knows_it(
    pair: Pair,
) -> None:
    zero, one = pair.shards
    resting = await submit(zero, "alice", order("p1", BUY, 4_990_000, 10))
    await submit(zero, "bob", order("p2", SELL, 4_990_000, 4))  # 4 of alice's 10 fill on shard 0
    async with pair.mover() as mover:
        await mover.move(SYMBOL, 1)
    got = await one.stub.GetOrder(api.GetOrderRequest(order_id=resting.order_id), metadata=key("alice"))
    assert (
        got.order.status,
        got.order.request.quantity_lots,
        got.order.cum_quantity_lots,
        got.order.leaves_quantity_lots,
        got.order.cum_notional,
    ) == (api.ORDER_STATUS_PARTIALLY_FILLED, 10, 4, 6, 4 * 4_990_000)
    # A replace's quantity counts the fills, as for any order: 8 in all leaves 4 open.
    replaced = await one.stub.ReplaceOrder(
        api.ReplaceOrderRequest(order_id=resting.order_id, quantity_lots=8), metadata=key("alice")
    )
    assert (replaced.ack.order_id, replaced.ack.reason) == (resting.order_id, 0)
    assert (
        replaced.ack.quantity_lots,
        replaced.ack.cum_quantity_lots,
        replaced.ack.leaves_quantity_lots,
    ) == (
        8,
        4,
        4,
    )
    too_small = await one.stub.ReplaceOrder(  # 3 in all is less than the 4 filled
        api.ReplaceOrderRequest(order_id=resting.order_id, quantity_lots=3), metadata=key("alice")
    )
    assert too_small.ack.reason == common.REJECT_REASON_INVALID_QUANTITY
    # The same on a stream, naming the order by its original id and by its client order id.
    stream = one.stub.OrderStream(metadata=key("alice"))
    for named in (
        api.ReplaceOrderRequest(order_id=resting.order_id, quantity_lots=9),
        api.ReplaceOrderRequest(client_order_id="p1", quantity_lots=7),
    ):
        await stream.write(api.OrderStreamRequest(inputs=[api.OrderInput(replace=named)]))
        response = await stream.read()
        while not response.acks:
            response = await stream.read()
        ack = response.acks[0]
        assert (ack.order_id, ack.reason, ack.quantity_lots, ack.leaves_quantity_lots) == (
            resting.order_id,
            0,
            named.quantity_lots,
            named.quantity_lots - 4,
        )
    await stream.done_writing()


async def test_a_triggered_stop_limit_moves_resting_as_the_limit_it_became(pair: Pair) -> None:
    zero, one = pair.shards
    stop = await submit(zero, "carol", order("sl", BUY, 5_025_000, 5, stop=5_030_000))
    await submit(zero, "bob", order("s1", SELL, 5_030_000, 1))
    await submit(zero, "alice", order("b1", BUY, 5_030_000, 1))  # trades at the stop: it triggers
    (moved,) = handover.rows_of_book(handover.export_book(zero.core.state, SYMBOL, {}, shard_base_of(0)))
    carried = (moved.original_order_id, moved.pending_stop, moved.engine_order_type, moved.engine_price_ticks)
    assert carried == (stop.order_id, False, EngineType.LIMIT, 5_025_000)
    async with pair.mover() as mover:
        assert (await mover.move(SYMBOL, 1)).step == "done"
    got = await one.stub.GetOrder(api.GetOrderRequest(order_id=stop.order_id), metadata=key("carol"))
    assert (got.order.request.order_type, got.order.leaves_quantity_lots) == (api.ORDER_TYPE_STOP_LIMIT, 5)
    # Live, as it was on the old owner (it triggered there), not waiting for a trigger again.
    assert got.order.status == api.ORDER_STATUS_NEW
    # It rests in the new owner's book at its limit: a sell there fills it.
    taker = await submit(one, "dave", order("t1", SELL, 5_025_000, 5))
    assert taker.status == api.ORDER_STATUS_FILLED
    done = await one.stub.GetOrder(api.GetOrderRequest(order_id=stop.order_id), metadata=key("carol"))
    assert (done.order.status, done.order.cum_quantity_lots) == (api.ORDER_STATUS_FILLED, 5)
