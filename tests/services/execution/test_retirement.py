"""Issue #13 part 2: finished orders are retired, so memory does not grow with every order.

An order is held while it works, or while it is among the newest ``retain_orders`` ids, or while
any of its reports is still in the report ring; then its row, client id and index entry go
(services/execution/state.py). These tests drive apply_batch directly with journal-shaped batches
(as recovery does), then the real server for what clients see of a retired order.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from hftgate.matching import EngineConfig
from hftgate.matching.types import COMMAND_DTYPE, Action, OrderType, StpMode, TimeInForce
from hftgate.native.client_ids import joined
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution import snapshot
from services.execution.records import META_DTYPE, Batch
from services.execution.recovery import comparable_books
from services.execution.state import OPEN_STATUSES, ExecutionState

from .conftest import key

ENGINE = EngineConfig(max_symbols=2, max_levels_per_side=256, max_orders=1 << 14)
MID = 1_000
#: (account, side, tif, price, qty) of a new order, or ("cancel", account, order id).
Order = tuple[int, int, int, int, int]


def _state(retained_reports: int, retain_orders: int | None = None, retire: bool = True) -> ExecutionState:
    state = ExecutionState(ENGINE, retained_reports, retain_orders=retain_orders, retire=retire)
    state.add_symbol(0, "X")
    for account in (1, 2, 3):
        state.add_account(account, f"acct{account}")
    return state


def _batch(state: ExecutionState, inputs: list[Any], tag: str = "o") -> Batch:
    """One journal-shaped batch: NEW ``(account, side, tif, price, qty)`` or ``("cancel", account, id)``."""
    count = len(inputs)
    commands = np.zeros(count, COMMAND_DTYPE)
    meta = np.zeros(count, META_DTYPE)
    ids: list[str] = []
    next_id = state.order_count + 1
    for i, item in enumerate(inputs):
        if item[0] == "cancel":
            _, account, target = item
            commands[i]["order_id"], commands[i]["account_id"] = target, account
            commands[i]["action"] = Action.CANCEL
            continue
        account, side, tif, price, qty = item
        client_id = f"{tag}{next_id}"
        commands[i]["order_id"] = next_id
        next_id += 1
        commands[i]["account_id"] = account
        commands[i]["price"] = price
        commands[i]["qty"] = qty
        commands[i]["action"] = Action.NEW
        commands[i]["side"] = side
        commands[i]["order_type"] = OrderType.LIMIT
        commands[i]["tif"] = tif
        commands[i]["stp_mode"] = StpMode.NONE
        meta[i]["client_price"] = price
        meta[i]["client_type"] = api.ORDER_TYPE_LIMIT
        meta[i]["client_tif"] = api.TIME_IN_FORCE_GTC if tif == TimeInForce.GTC else api.TIME_IN_FORCE_IOC
        meta[i]["client_stp"] = api.SELF_TRADE_PREVENTION_ALLOW
        meta[i]["client_id_length"] = len(client_id)
        ids.append(client_id)
    return Batch(state.next_input_seq, 1, 2, commands, meta, "".join(ids).encode("ascii"))


def _ioc(account: int = 1) -> Order:
    """An IOC buy far below any ask: it expires at once (ACK then EXPIRED), so it finishes."""
    return (account, 1, int(TimeInForce.IOC), MID - 500, 1)


def _flow(seed: int, batches: int) -> list[list[Any]]:
    """Random batches: resting GTC orders, crossing IOCs that fill or expire, cancels of earlier ids."""
    rng = random.Random(seed)
    out: list[list[Any]] = []
    next_id = 1
    for _ in range(batches):
        size = rng.choice([1, 1, 1, 3, 40])
        batch: list[Any] = []
        for _ in range(size):
            account = rng.randint(1, 3)
            if next_id > 5 and rng.random() < 0.15:
                batch.append(("cancel", account, rng.randint(max(1, next_id - 300), next_id - 1)))
                continue
            side = rng.randint(1, 2)
            if rng.random() < 0.55:
                price = MID + (3 if side == 1 else -3)
                batch.append((account, side, int(TimeInForce.IOC), price, rng.randint(1, 5)))
            else:
                price = MID - rng.randint(1, 3) if side == 1 else MID + rng.randint(1, 3)
                batch.append((account, side, int(TimeInForce.GTC), price, rng.randint(1, 5)))
            next_id += 1
        out.append(batch)
    return out


def _apply_all(state: ExecutionState, flow: list[list[Any]]) -> list[Any]:
    outcomes = []
    for inputs in flow:
        outcome = state.apply_batch(_batch(state, _with_live_targets(state, inputs)))
        outcomes.append((outcome.order_ids.tobytes(), outcome.status.tobytes(), outcome.reports.tobytes()))
    return outcomes


def _with_live_targets(state: ExecutionState, inputs: list[Any]) -> list[Any]:
    """Cancels whose target is beyond what exists become cancels of order 1 (an unknown id is fine)."""
    return [
        ("cancel", item[1], item[2] if item[2] <= state.order_count else 1) if item[0] == "cancel" else item
        for item in inputs
    ]


def _retained(state: ExecutionState) -> tuple[Any, ...]:
    ids, rows, client_ids = state.retained_orders()
    index = state.client_id_index.items()
    return ids.tobytes(), rows.tobytes(), client_ids, index, state.order_base


# --- the rule ----------------------------------------------------------------------------------------


def test_finished_orders_are_retired_past_the_window_and_their_client_ids_freed() -> None:
    state = _state(retained_reports=8, retain_orders=4)
    for _ in range(50):
        state.apply_batch(_batch(state, [_ioc()]))
    assert state.order_count == 50
    # 4 newest ids in the window; an IOC has 2 reports, so the ring (8) keeps the 4 newest too.
    ids, rows, client_ids = state.retained_orders()
    assert ids.tolist() == [47, 48, 49, 50]
    assert client_ids == ["o47", "o48", "o49", "o50"]
    assert (rows["status"] == api.ORDER_STATUS_EXPIRED).all()
    assert state.order(46) is None and state.order(47) is not None
    assert state.slot_of(1) == -1 and state.client_id_of(1) is None
    assert state.order_id_for(1, "o1") == 0 and state.order_id_for(1, "o50") == 50
    assert state.retired_orders == 46
    # A retired order's client order id may be used again by its account.
    reuse = _batch(state, [_ioc()], tag="o")  # its client id is "o51"; make it "o1"
    again = Batch(reuse.first_input_seq, 1, 2, reuse.commands, reuse.meta.copy(), b"o1")
    again.meta["client_id_length"] = 2
    outcome = state.apply_batch(again)
    assert outcome.order_ids.tolist() == [51] and state.order_id_for(1, "o1") == 51


def test_a_working_order_survives_the_window_and_retires_once_finished_and_reported_out() -> None:
    state = _state(retained_reports=16, retain_orders=4)
    resting = (2, 1, int(TimeInForce.GTC), MID - 100, 7)
    state.apply_batch(_batch(state, [resting], tag="keep"))
    for _ in range(40):
        state.apply_batch(_batch(state, [_ioc()]))
    assert state.order_base == 37  # 41 ids, the newest 4 in the window
    row = state.order(1)
    assert row is not None and int(row["status"]) == api.ORDER_STATUS_NEW and int(row["leaves"]) == 7
    assert state.slot_of(1) >= state._ring  # moved aside
    assert state.order_id_for(2, "keep1") == 1
    assert state.open_order_ids(2, 0, 0).tolist() == [1]
    assert state.client_ids[0] == "keep1" and int(state.orders[0]["quantity"]) == 7
    # A page of reports' client ids as one text (survivor, retired, window, never handed out):
    # what client_ids_of gives, joined.
    ids = np.array([1, 2, 36, 38, 41, 0, 99, 1], np.int64)
    names = state.client_ids_of(ids)
    assert names[:2] == ["keep1", ""] and names[3:] == ["o38", "o41", "", "", "keep1"]
    text, lengths = state.client_id_text_of(ids)
    assert (text, lengths.tolist()) == (joined(names)[0], joined(names)[1].tolist())
    text, lengths = state.client_id_text_of(np.array([38, 39], np.int64))  # all held
    assert text == b"o38o39" and lengths.tolist() == [3, 3]
    # A sell fills it: it finishes, yet stays while its fill report is in the ring.
    state.apply_batch(_batch(state, [(3, 2, int(TimeInForce.IOC), MID - 100, 7)]))
    row = state.order(1)
    assert row is not None and int(row["status"]) == api.ORDER_STATUS_FILLED
    for _ in range(7):  # 14 more reports: the fill report is still among the newest 16
        state.apply_batch(_batch(state, [_ioc()]))
    assert state.order(1) is not None
    state.apply_batch(_batch(state, [_ioc()]))  # now it has left the ring
    assert state.order(1) is None and state.order_id_for(2, "keep1") == 0
    # What is still aside: finished orders whose reports are in the ring (window 4 < 8 orders' reports).
    for order_id in state._survivor_slots:
        row = state.order(order_id)
        assert row is not None and int(row["last_exec_seq"]) >= state.oldest_retained_report


def test_the_table_stops_growing_after_warm_up_and_nothing_per_order_stays() -> None:
    state = _state(retained_reports=600)
    resting = [(2, 1, int(TimeInForce.GTC), MID - 100 - i, 1) for i in range(30)]
    state.apply_batch(_batch(state, resting, tag="r"))
    sizes = []
    for step in range(300):
        state.apply_batch(_batch(state, [_ioc(1 + step % 3) for _ in range(1 if step % 2 else 97)]))
        sizes.append((len(state.table), id(state.table)))
    assert state.order_count > 14_000
    # After warm-up the table is never reallocated: no O(n) copy on the order path, ever.
    assert len(set(sizes[len(sizes) // 2 :])) == 1
    assert state.retained_order_count <= 600 + 30 + 1
    assert len(state.client_id_index) == state.retained_order_count
    assert int((state._slot_ids != 0).sum()) == state.retained_order_count
    assert sum(1 for c in state._slot_client_ids.tolist() if c) == state.retained_order_count
    assert state.open_order_ids(2, None, 0).tolist() == list(range(1, 31))


def test_a_batch_that_wraps_the_ring_writes_every_row_where_its_id_finds_it() -> None:
    keep_all, retiring = _state(10_000, retire=False), _state(retained_reports=8, retain_orders=900)
    for step in range(40):
        orders = [_ioc(1 + (step + i) % 3) for i in range(97)]
        for state in (keep_all, retiring):
            state.apply_batch(_batch(state, orders))
    assert retiring._ring == 1024 and retiring.order_count > 3 * 1024
    ids, rows, client_ids = retiring.retained_orders()
    assert ids.tolist() == list(range(retiring.order_count - 899, retiring.order_count + 1))
    assert rows.tobytes() == keep_all.rows_by_id(ids).tobytes()
    assert client_ids == [f"o{i}" for i in ids.tolist()]


def test_retirement_is_the_same_live_after_a_snapshot_and_on_replay(tmp_path: Path) -> None:
    flow = _flow(seed=7, batches=900)
    live = _state(retained_reports=64, retain_orders=32)
    first = _apply_all(live, flow[:450])
    data = snapshot.capture(live, journal_seq=450)
    assert len(data.arrays["orders"]) == live.retained_order_count < live.order_count
    path = snapshot.confirm(snapshot.write_pending(tmp_path, data))
    assert data.arrays == {}  # each captured copy freed once written
    restored, _ = snapshot.load(path, ENGINE, 64)
    restored.retain_orders = 32
    assert _retained(restored) == _retained(live)
    second = _apply_all(live, flow[450:])
    assert _apply_all(restored, flow[450:]) == second
    replayed = _state(retained_reports=64, retain_orders=32)
    assert _apply_all(replayed, flow) == first + second
    keep_all = _state(retained_reports=64, retire=False)
    assert _apply_all(keep_all, flow) == first + second  # retiring changes no outcome
    for state in (restored, replayed):
        assert _retained(state) == _retained(live)
        assert comparable_books(state.engine, state.symbol_ids) == comparable_books(
            live.engine, live.symbol_ids
        )
    ids, rows, _ = live.retained_orders()
    assert rows.tobytes() == keep_all.rows_by_id(ids).tobytes()
    assert live.retired_orders > 0 and live._survivor_slots
    # Everything working is held, whatever its age.
    working = keep_all.rows_by_id(np.arange(1, keep_all.order_count + 1))
    open_ids = (np.nonzero(np.isin(working["status"], OPEN_STATUSES))[0] + 1).tolist()
    assert all(live.order(i) is not None for i in open_ids)


def test_a_snapshot_from_before_retirement_is_cut_on_load(tmp_path: Path) -> None:
    old = _state(retained_reports=64, retire=False)
    _apply_all(old, _flow(seed=3, batches=400))
    data = snapshot.capture(old, journal_seq=400)
    del data.arrays["order_ids"]  # as written before retirement: every order, row i = id i + 1
    data.arrays["info"] = np.frombuffer(
        data.arrays["info"].tobytes().replace(b', "order_base": 0', b""), np.uint8
    ).copy()
    path = snapshot.confirm(snapshot.write_pending(tmp_path, data))
    loaded, _ = snapshot.load(path, ENGINE, 64)
    assert loaded.order_count == old.order_count
    assert loaded.order_base == old.order_count - 64 and loaded.retained_order_count < 200
    ids, rows, _ = loaded.retained_orders()
    assert rows.tobytes() == old.rows_by_id(ids).tobytes()


# --- through the service ---------------------------------------------------------------------------


def _limit(client_id: str, side: int, price: int, qty: int, tif: int = api.TIME_IN_FORCE_IOC) -> Any:
    return api.NewOrder(
        client_order_id=client_id,
        symbol="BTCUSDT",
        side=side,  # type: ignore[arg-type]
        order_type=api.ORDER_TYPE_LIMIT,
        time_in_force=tif,  # type: ignore[arg-type]
        price_ticks=price,
        quantity_lots=qty,
    )


async def test_clients_see_retired_orders_as_unknown_and_working_ones_whatever_their_age(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    config = make_config(tmp_path, retained_reports=40)
    alice = key("alice")
    harness = await launch(config)
    try:
        stub = harness.stub
        resting = await stub.SubmitOrder(
            api.SubmitOrderRequest(
                order=_limit("rest", common.SIDE_BUY, 4_000_000, 1, api.TIME_IN_FORCE_GTC)
            ),
            metadata=alice,
        )
        first = await stub.SubmitOrder(
            api.SubmitOrderRequest(order=_limit("gone", common.SIDE_BUY, 4_000_000, 1)), metadata=alice
        )
        assert first.ack.status == api.ORDER_STATUS_EXPIRED
        for i in range(3):
            batch = [_limit(f"b{i}-{n}", common.SIDE_BUY, 4_000_000, 1) for n in range(50)]
            await stub.SubmitOrders(api.SubmitOrdersRequest(orders=batch), metadata=alice)
        assert harness.core.state.retired_orders > 0
    finally:
        await harness.close()
    harness = await launch(config)  # the replay retires the same orders
    try:
        stub = harness.stub
        state = harness.core.state
        assert state.order(first.ack.order_id) is None
        for request in (
            api.GetOrderRequest(order_id=first.ack.order_id),
            api.GetOrderRequest(client_order_id="gone"),
        ):
            try:
                await stub.GetOrder(request, metadata=alice)
                raise AssertionError("a retired order was answered")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                assert "Traceback" not in (exc.details() or "")
        old = await stub.GetOrder(api.GetOrderRequest(client_order_id="rest"), metadata=alice)
        assert old.order.order_id == resting.ack.order_id and old.order.status == api.ORDER_STATUS_NEW
        assert old.order.request.client_order_id == "rest"
        again = await stub.SubmitOrder(
            api.SubmitOrderRequest(order=_limit("gone", common.SIDE_BUY, 4_000_000, 1)), metadata=alice
        )
        assert again.ack.status == api.ORDER_STATUS_EXPIRED and again.ack.order_id > first.ack.order_id
        canceled = await stub.CancelOrder(
            api.CancelOrderRequest(order_id=resting.ack.order_id), metadata=alice
        )
        assert canceled.ack.status == api.ORDER_STATUS_CANCELED
    finally:
        await harness.close()


def test_a_ring_that_has_wrapped_grows_with_every_row_where_its_id_finds_it() -> None:
    keep_all, retiring = _state(10_000, retire=False), _state(retained_reports=8, retain_orders=900)
    for step in range(40):  # past the first ring's 1024 rows: ids wrap round it
        orders = [_ioc(1 + (step + i) % 3) for i in range(97)]
        for state in (keep_all, retiring):
            state.apply_batch(_batch(state, orders))
    assert retiring._ring == 1024 and retiring.order_base % 1024 != 0
    big = [_ioc(1 + i % 3) for i in range(500)]  # 900 retained + 500 new: the ring must double
    for state in (keep_all, retiring):
        state.apply_batch(_batch(state, big))
    assert retiring._ring == 2048
    ids, rows, client_ids = retiring.retained_orders()
    assert ids.tolist() == list(range(retiring.order_count - 899, retiring.order_count + 1))
    assert rows.tobytes() == keep_all.rows_by_id(ids).tobytes()
    assert client_ids == [f"o{i}" for i in ids.tolist()]


def test_the_ring_holds_the_retained_window_from_the_start_and_is_never_reallocated() -> None:
    state = _state(retained_reports=8, retain_orders=5_000)
    table = state.table
    assert state._ring >= 5_000 + 1
    for step in range(80):  # 7,760 orders: past the window, with retirement from there on
        state.apply_batch(_batch(state, [_ioc(1 + (step + i) % 3) for i in range(97)]))
    assert state.order_count > 5_000 and state.retired_orders > 0
    assert state.table is table  # never copied into a bigger table while the window filled
    # Without retirement the table grows as the orders do, from the smallest ring.
    keep_all = _state(10_000, retire=False)
    assert keep_all._ring == 1024
