"""Recovery: snapshot + journal tail rebuild the same state; torn or corrupt journals; a level ledger."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from hftgate.matching.reference import ReferenceEngine
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.journal import JournalCorruption
from services.execution.ledger import Ledger
from services.execution.recovery import comparable_books, engine_config_of, load_state

ACCOUNTS = ("alice", "bob", "carol")


def key(name: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", f"hftgate-demo-{name}"),)


def random_order(rng: random.Random, client_id: str) -> api.NewOrder:
    side = rng.choice((common.SIDE_BUY, common.SIDE_SELL))
    price = rng.randint(95, 105)
    qty = rng.randint(1, 20)
    roll = rng.random()
    fields: dict[str, Any] = {}
    if roll < 0.08:
        fields = {"order_type": api.ORDER_TYPE_MARKET, "time_in_force": api.TIME_IN_FORCE_IOC}
        price = 0
    elif roll < 0.14:
        fields = {"order_type": api.ORDER_TYPE_STOP_LIMIT, "stop_price_ticks": price}
    elif roll < 0.22 and qty > 2:
        fields = {"order_type": api.ORDER_TYPE_LIMIT, "display_quantity_lots": qty // 2}
    elif roll < 0.3:
        fields = {"order_type": api.ORDER_TYPE_LIMIT, "time_in_force": api.TIME_IN_FORCE_IOC}
    else:
        fields = {"order_type": api.ORDER_TYPE_LIMIT}
    symbol = rng.choice(("BTCUSDT", "ETHUSDT"))
    return api.NewOrder(
        client_order_id=client_id, symbol=symbol, side=side, price_ticks=price, quantity_lots=qty, **fields
    )


async def drive(harness: Any, rng: random.Random, batches: int, prefix: str) -> list[api.OrderAck]:
    """A mixed flow: batches of new orders, cancels and replaces of earlier ones, from three accounts."""
    acks: list[api.OrderAck] = []
    for number in range(batches):
        who = rng.choice(ACCOUNTS)
        orders = [random_order(rng, f"{prefix}-{number}-{i}") for i in range(rng.randint(1, 40))]
        response = await harness.stub.SubmitOrders(api.SubmitOrdersRequest(orders=orders), metadata=key(who))
        acks.extend(response.acks)
        live = [
            a for a in response.acks if a.status in (api.ORDER_STATUS_NEW, api.ORDER_STATUS_PARTIALLY_FILLED)
        ]
        for ack in live[: rng.randint(0, 3)]:
            if rng.random() < 0.5:
                await harness.stub.CancelOrder(
                    api.CancelOrderRequest(order_id=ack.order_id), metadata=key(who)
                )
            else:
                request = api.ReplaceOrderRequest(order_id=ack.order_id, quantity_lots=ack.quantity_lots + 1)
                await harness.stub.ReplaceOrder(request, metadata=key(who))
    return acks


def state_view(harness: Any) -> tuple[Any, ...]:
    state = harness.core.state
    books = comparable_books(state.engine, state.symbol_ids)
    return (
        books,
        state.orders[: state.order_count].tobytes(),
        state.next_input_seq,
        state.next_report_seq,
        state.next_trade_id,
        state.position.tobytes(),
        state.open_buy[: len(state.open_orders)].tobytes(),
        state.open_orders.tobytes(),
        state.retained_reports_after(0).tobytes(),
    )


@pytest.mark.parametrize("snapshot_every_inputs", [0, 150])
async def test_restart_rebuilds_identical_state(
    tmp_path: Path, make_config: Any, launch: Any, snapshot_every_inputs: int
) -> None:
    config = make_config(tmp_path, snapshot_every_inputs=snapshot_every_inputs, snapshot_every_s=0)
    rng = random.Random(7)
    harness = await launch(config)
    try:
        await drive(harness, rng, 40, "a")
        before = state_view(harness)
        await harness.running.snapshotter.close()
        snapshots = harness.running.snapshotter.taken
    finally:
        await harness.close()
    if snapshot_every_inputs:
        assert snapshots >= 1
        assert list((tmp_path / "snapshots").glob("snapshot-*.npz"))
    harness = await launch(config)
    try:
        assert state_view(harness) == before
        # And it goes on from there: new orders continue ids and sequences.
        more = await drive(harness, rng, 5, "b")
        assert min(a.sequence for a in more if a.sequence) >= before[2]
    finally:
        await harness.close()


async def test_load_state_matches_a_reference_replay_of_the_journal(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    config = make_config(tmp_path, snapshot_every_inputs=0, snapshot_every_s=0)
    harness = await launch(config)
    try:
        acks = await drive(harness, random.Random(3), 30, "r")
        live_books = comparable_books(harness.core.state.engine, harness.core.state.symbol_ids)
    finally:
        await harness.close()
    recovered = load_state(tmp_path, config)
    assert recovered.books == live_books
    assert recovered.first_input_seq == 1 and recovered.snapshot_seq == 0
    acked = {a.sequence for a in acks if a.sequence}
    assert acked <= set(recovered.input_sequences.tolist())
    reference = ReferenceEngine(engine_config_of(config), symbols=recovered.symbols.values())
    reference.process(recovered.inputs)
    assert comparable_books(reference, recovered.symbols) == recovered.books
    assert len(recovered.fills) == len(set(recovered.fills["trade_id"].tolist())) > 0


async def test_ledger_is_level_after_restart_with_every_fill_once(
    tmp_path: Path, make_config: Any, launch: Any, database_url: str, table_name: str
) -> None:
    config = make_config(tmp_path, ledger_database_url=database_url, ledger_table=table_name)
    harness = await launch(config)
    try:
        await drive(harness, random.Random(11), 25, "l")
        trades = harness.core.state.trades
    finally:
        await harness.close()
    ledger = await Ledger.open(database_url, table_name)
    try:
        entries = await ledger.entries()
        assert len(entries) == trades > 0
        # Lose the last rows, as if the process died before the ledger writer got to them.
        import sqlalchemy as sa

        async with ledger.engine.begin() as conn:
            await conn.execute(sa.delete(ledger.table).where(ledger.table.c.position > trades - 5))
    finally:
        await ledger.close()
    harness = await launch(config)  # recovery's catch-up writes the missing fills
    await harness.close()
    ledger = await Ledger.open(database_url, table_name)
    try:
        entries = await ledger.entries()
        ids = [e.transaction_id for e in entries]
        assert len(ids) == len(set(ids)) == trades
        assert await ledger.verify() is None
    finally:
        await ledger.close()


async def test_torn_tail_is_cut_and_mid_journal_corruption_refuses_to_start(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    config = make_config(tmp_path, snapshot_every_inputs=0, snapshot_every_s=0)
    harness = await launch(config)
    try:
        await drive(harness, random.Random(5), 10, "t")
        before = state_view(harness)
    finally:
        await harness.close()
    segment = sorted((tmp_path / "journal").glob("*.journal"))[-1]
    data = segment.read_bytes()
    segment.write_bytes(data + b"HJ\x01\x01" + b"\x00" * 9)  # a half-written record
    harness = await launch(config)
    try:
        assert state_view(harness) == before
    finally:
        await harness.close()
    damaged = bytearray(segment.read_bytes())
    damaged[len(damaged) // 3] ^= 0x40  # a flipped bit with valid records after it
    segment.write_bytes(bytes(damaged))
    with pytest.raises(JournalCorruption):
        await launch(config)
    harness = await launch(make_config(tmp_path, snapshot_every_inputs=0, journal_allow_mid_corruption=True))
    try:
        assert harness.core.state.next_input_seq < before[2]
        assert list((tmp_path / "journal").glob("*.corrupt-*"))
    finally:
        await harness.close()


def test_books_compare_the_same_for_engine_and_reference() -> None:
    from hftgate.matching import MatchingEngine
    from hftgate.matching.types import Side, new_commands

    engine = MatchingEngine(symbols=(0,))
    reference = ReferenceEngine(symbols=(0,))
    engine.submit_limit(1, Side.BUY, 100, 10, account=1, display_qty=4)
    engine.submit_limit(2, Side.SELL, 101, 3, account=2)
    commands = new_commands(2)
    commands[0] = (1, 1, 100, 10, 0, 4, 0, 0, 1, 1, 1, 1, 0, 0, 0)
    commands[1] = (2, 2, 101, 3, 0, 0, 0, 0, 1, 2, 1, 1, 0, 0, 0)
    reference.process(commands)
    assert comparable_books(engine, {"X": 0}) == comparable_books(reference, {"X": 0})


async def test_journal_that_ends_before_the_snapshot_refuses_or_continues_after_it(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    """A journal that lost records a snapshot was built from: refuse to start, or (when told) start
    from the snapshot and number new records after it, so no later recovery skips them."""
    config = make_config(tmp_path, snapshot_every_inputs=150, snapshot_every_s=0)
    harness = await launch(config)
    try:
        await drive(harness, random.Random(9), 40, "s")
        await harness.running.snapshotter.close()
        assert harness.running.snapshotter.taken >= 1
    finally:
        await harness.close()
    for segment in (tmp_path / "journal").glob("*.journal"):
        segment.unlink()  # the disk lost every journal record; the snapshot survived
    with pytest.raises(JournalCorruption, match="snapshot"):
        await launch(config)
    allowed = make_config(
        tmp_path, snapshot_every_inputs=150, snapshot_every_s=0, journal_allow_mid_corruption=True
    )
    harness = await launch(allowed)
    try:
        from_snapshot = harness.core.state.next_input_seq
        assert from_snapshot > 1
        more = await drive(harness, random.Random(10), 5, "after")
        assert min(a.sequence for a in more if a.sequence) >= from_snapshot
        after = state_view(harness)
    finally:
        await harness.close()
    # Numbering went on after the snapshot; what was there before is kept aside, not deleted.
    first_segment = sorted((tmp_path / "journal").glob("*.journal"))[0]
    assert int(first_segment.name.split(".")[0]) > 1
    assert list((tmp_path / "journal").glob("*.behind-snapshot-*"))
    harness = await launch(config)  # consistent again: no flag needed, nothing skipped
    try:
        assert state_view(harness) == after
    finally:
        await harness.close()


async def test_a_partly_filled_iceberg_is_snapshotted_and_restored_exactly(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    config = make_config(tmp_path, snapshot_every_inputs=1, snapshot_every_s=0)
    harness = await launch(config)
    try:
        iceberg = api.NewOrder(
            client_order_id="ice", symbol="BTCUSDT", side=common.SIDE_SELL, price_ticks=100,
            quantity_lots=10, display_quantity_lots=3, order_type=api.ORDER_TYPE_LIMIT,
        )  # fmt: skip
        taker = api.NewOrder(
            client_order_id="take", symbol="BTCUSDT", side=common.SIDE_BUY, price_ticks=100,
            quantity_lots=2, order_type=api.ORDER_TYPE_LIMIT, time_in_force=api.TIME_IN_FORCE_IOC,
        )  # fmt: skip
        snapshotter = harness.running.snapshotter
        placed = await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=iceberg), metadata=key("alice"))
        await snapshotter.settled()  # so the next input starts a snapshot of its own
        taken_before = snapshotter.taken
        await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=taker), metadata=key("bob"))
        await snapshotter.settled()
        taken = snapshotter.taken - taken_before
        shown = harness.core.state.engine.order(placed.ack.order_id)
        before = state_view(harness)
    finally:
        await harness.close()
    assert (int(shown["visible_qty"]), int(shown["hidden_qty"])) == (1, 7)  # a slice partly filled
    assert taken == 1  # taken with the partly filled slice resting, not postponed
    harness = await launch(config)
    try:
        restored = harness.core.state.engine.order(placed.ack.order_id)
        assert (int(restored["visible_qty"]), int(restored["hidden_qty"])) == (1, 7)
        assert state_view(harness) == before
    finally:
        await harness.close()


def _limit_buy(client_id: str) -> api.NewOrder:
    return api.NewOrder(
        client_order_id=client_id,
        symbol="BTCUSDT",
        side=common.SIDE_BUY,
        order_type=api.ORDER_TYPE_LIMIT,
        price_ticks=100,
        quantity_lots=3,
    )


async def test_an_input_journaled_but_not_applied_stops_intake_and_is_replayed_on_restart(
    tmp_path: Path, make_config: Any, launch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal append comes before matching (the fsync overlaps the engine). Should applying a
    journaled input fail, the service must stop taking inputs rather than serve a state that a
    recovery would not rebuild; the restart replays the input like any other."""
    import grpc

    config = make_config(tmp_path, snapshot_every_inputs=0, snapshot_every_s=0)
    harness = await launch(config)
    try:
        first = await harness.stub.SubmitOrder(
            api.SubmitOrderRequest(order=_limit_buy("ok-1")), metadata=key("alice")
        )
        assert first.ack.status == api.ORDER_STATUS_NEW

        def broken(batch: Any) -> Any:
            raise RuntimeError("engine fault")

        monkeypatch.setattr(harness.core.state, "apply_batch", broken)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await harness.stub.SubmitOrder(
                api.SubmitOrderRequest(order=_limit_buy("journaled-1")), metadata=key("alice")
            )
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        monkeypatch.undo()
        # Even with a working engine again, nothing more is taken until a restart.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await harness.stub.SubmitOrders(
                api.SubmitOrdersRequest(orders=[_limit_buy("after-1")]), metadata=key("alice")
            )
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await harness.close()
    harness = await launch(config)
    try:
        replayed = await harness.stub.GetOrder(
            api.GetOrderRequest(client_order_id="journaled-1"), metadata=key("alice")
        )
        assert replayed.order.order_id == first.ack.order_id + 1
        assert replayed.order.leaves_quantity_lots == 3
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await harness.stub.GetOrder(api.GetOrderRequest(client_order_id="after-1"), metadata=key("alice"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await harness.close()
