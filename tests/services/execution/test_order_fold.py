"""apply_batch's fold of the engine's events into the order table runs in C
(native/src/order_fold.c). It must leave exactly the state, reports, trades and outcomes of the
Python fold it replaced (tests/services/execution/reference_fold.py), which these tests run
beside it on the same random flows: resting, crossing, expiring, refused, cancelled (by the
client and by the service), replaced and triggered orders, market orders without liquidity,
single orders and large batches, with and without retirement."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from hftgate.matching import EngineConfig
from hftgate.matching.types import COMMAND_DTYPE, EVENT_DTYPE, Action, OrderType, StpMode, TimeInForce
from hftgate.native.order_fold import OrderFold
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from services.execution.records import META_DTYPE, Batch
from services.execution.recovery import comparable_books
from services.execution.state import (
    _ENGINE_TO_REASON,
    FILL_DTYPE,
    ORDER_DTYPE,
    REPORT_DTYPE,
    ExecutionState,
)

from .reference_fold import reference_fold

ENGINE = EngineConfig(max_symbols=2, max_levels_per_side=512, max_orders=1 << 14)
MID = 10_000
KILL = common.REJECT_REASON_KILL_SWITCH


def _state(retain_orders: int | None) -> ExecutionState:
    state = ExecutionState(ENGINE, 64, retain_orders=retain_orders, retire=retain_orders is not None)
    for symbol_id, name in enumerate(("X", "Y")):
        state.add_symbol(symbol_id, name)
    for account in (1, 2, 3):
        state.add_account(account, f"acct{account}")
    return state


def _batch(state: ExecutionState, inputs: list[dict[str, Any]]) -> Batch:
    """A journal-shaped batch: each input a dict of kind, account, symbol, side, price, qty, ..."""
    count = len(inputs)
    commands = np.zeros(count, COMMAND_DTYPE)
    meta = np.zeros(count, META_DTYPE)
    client_ids: list[str] = []
    next_id = state.order_count + 1
    for i, order in enumerate(inputs):
        command, row = commands[i], meta[i]
        kind = order["kind"]
        command["account_id"], command["symbol_id"] = order["account"], order["symbol"]
        if kind in ("cancel", "replace"):
            command["order_id"] = min(order["target"], state.order_count) or 1
            command["action"] = Action.CANCEL if kind == "cancel" else Action.REPLACE
            row["cancel_reason"] = order.get("cancel_reason", 0)
            if kind == "replace":
                command["price"], command["qty"] = order["price"], order["qty"]
                command["stop_price"] = order.get("stop", 0)
                row["replace_quantity"] = order["qty"]
                row["priority_kept"] = order.get("kept", 0)  # (refused replaces must not keep it)
            continue
        command["order_id"], command["action"], command["side"] = next_id, Action.NEW, order["side"]
        client_id = f"c{next_id}"
        next_id += 1
        command["price"], command["qty"] = order["price"], order["qty"]
        command["display_qty"], command["stop_price"] = order.get("display", 0), order.get("stop", 0)
        engine_type, client_type = {
            "gtc": (OrderType.LIMIT, api.ORDER_TYPE_LIMIT),
            "ioc": (OrderType.LIMIT, api.ORDER_TYPE_LIMIT),
            "post": (OrderType.LIMIT, api.ORDER_TYPE_LIMIT),
            "stop": (OrderType.STOP_LIMIT, api.ORDER_TYPE_STOP_LIMIT),
            # A market order with a protective bound: the engine's IOC limit at the bound.
            "market": (OrderType.LIMIT, api.ORDER_TYPE_MARKET),
        }[kind]
        command["order_type"] = engine_type
        command["tif"] = TimeInForce.IOC if kind in ("ioc", "market") else TimeInForce.GTC
        command["flags"] = 1 if kind == "post" else 0
        command["stp_mode"] = StpMode.NONE
        row["client_price"] = 0 if kind == "market" else order["price"]
        row["protection"] = order["price"] if kind == "market" else 0
        row["priority"] = command["priority"] = order.get("priority", 0)
        row["client_type"] = client_type
        row["client_tif"] = api.TIME_IN_FORCE_IOC if kind in ("ioc", "market") else api.TIME_IN_FORCE_GTC
        row["client_stp"] = api.SELF_TRADE_PREVENTION_ALLOW
        row["post_only"] = kind == "post"
        row["client_id_length"] = len(client_id)
        client_ids.append(client_id)
    return Batch(state.next_input_seq, 5, 7, commands, meta, "".join(client_ids).encode("ascii"))


def _input(
    rng: random.Random, passive: bool, issued: int, stops: list[tuple[int, int, int, int]]
) -> dict[str, Any]:
    order: dict[str, Any] = {
        "account": rng.randint(1, 3),
        "symbol": rng.randint(0, 1),
        "side": rng.randint(1, 2),
    }
    buy = order["side"] == 1
    away = rng.randint(1, 40)
    order["price"] = MID - away if buy else MID + away
    order["qty"] = rng.randint(1, 20)
    order["priority"] = rng.choice((0, 0, 1, -3))
    roll = rng.random()
    if passive or roll < 0.3:
        order["kind"] = "gtc"
        if rng.random() < 0.2:
            order["display"] = rng.randint(1, order["qty"])
    elif roll < 0.45:  # a stop near the market: some trigger as trades move the last price
        order["kind"], order["stop"] = "stop", MID + (3 if buy else -3)
        order["price"] = MID + (30 if buy else -30)
    elif roll < 0.55 and issued:
        order["kind"], order["target"] = "cancel", rng.randint(max(1, issued - 200), issued + 5)
        order["cancel_reason"] = KILL if rng.random() < 0.3 else 0
    elif roll < 0.65 and issued:
        order["kind"], order["target"] = "replace", rng.randint(max(1, issued - 200), issued + 5)
        order["kept"] = rng.randint(0, 1)
        if stops and rng.random() < 0.6:  # a stop, maybe still waiting: a new limit, maybe a new trigger
            order["target"], order["account"], order["symbol"], order["side"] = rng.choice(stops[-50:])
            buy = order["side"] == 1
            order["stop"] = rng.choice((0, MID + (4 if buy else -4)))
            order["price"] = MID + (rng.randint(20, 40) if buy else -rng.randint(20, 40))
    elif roll < 0.7:  # bounded short of the book: expires unfilled, for lack of liquidity
        order["kind"], order["price"] = "market", MID - (60 if buy else -60)
    elif roll < 0.75:  # post-only priced through the book: refused by the engine when it would take
        order["kind"], order["price"] = "post", MID + (35 if buy else -35)
    else:  # crosses: fills against the book or expires
        order["kind"], order["price"] = "ioc", MID + (45 if buy else -45)
    return order


def _flow(seed: int, batches: int) -> list[list[dict[str, Any]]]:
    rng = random.Random(seed)
    flow: list[list[dict[str, Any]]] = []
    issued = 0
    stops: list[tuple[int, int, int, int]] = []  # (id, account, symbol, side) of stop orders
    for _ in range(batches):
        size = rng.choice([1, 1, 2, 3, 17, 40, 300])
        passive = rng.random() < 0.3
        batch = []
        for _ in range(size):
            order = _input(rng, passive, issued, stops)
            if order["kind"] not in ("cancel", "replace"):
                issued += 1
                if order["kind"] == "stop":  # (ids go to new orders in turn, refused ones too)
                    stops.append((issued, order["account"], order["symbol"], order["side"]))
            batch.append(order)
        flow.append(batch)
    return flow


def _view(state: ExecutionState) -> tuple[Any, ...]:
    rows = len(state.open_orders)
    ids, orders, client_ids = state.retained_orders()
    return (
        comparable_books(state.engine, state.symbol_ids),
        ids.tobytes(),
        orders.tobytes(),
        client_ids,
        state.client_id_index.items(),
        state.order_base,
        state.next_input_seq,
        state.next_report_seq,
        state.next_trade_id,
        state.position[:rows].tobytes(),
        state.open_buy[:rows].tobytes(),
        state.open_sell[:rows].tobytes(),
        state.open_orders.tobytes(),
        state.retained_reports_after(0).tobytes(),
        state.trades,
        state.traded_lots,
    )


_OUTCOME_ARRAYS = ("order_ids", "status", "reason", "price", "quantity", "leaves", "cum", "priority_kept")


def _run(flow: list[list[dict[str, Any]]], retain_orders: int | None) -> tuple[list[Any], tuple[Any, ...]]:
    state = _state(retain_orders)
    outcomes = []
    for inputs in flow:
        outcome = state.apply_batch(_batch(state, inputs))
        outcomes.append(tuple(getattr(outcome, name).tobytes() for name in _OUTCOME_ARRAYS))
        outcomes.append((outcome.reports.tobytes(), outcome.fills.tobytes(), outcome.first_input_seq))
    return outcomes, _view(state)


@pytest.mark.parametrize("retain_orders", [None, 256])
@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_c_fold_leaves_what_the_python_fold_leaves(
    monkeypatch: pytest.MonkeyPatch, seed: int, retain_orders: int | None
) -> None:
    flow = _flow(seed, 80)
    c_outcomes, c_state = _run(flow, retain_orders)
    monkeypatch.setattr(ExecutionState, "_fold", reference_fold)
    py_outcomes, py_state = _run(flow, retain_orders)
    # The flows exercise what they say: fills, refusals, triggers, replaces, kill-switch cancels.
    reports = np.concatenate([np.frombuffer(o[0], REPORT_DTYPE) for o in py_outcomes[1::2]])
    exec_types = set(reports["exec_type"].tolist())
    assert {api.EXEC_TYPE_FILL, api.EXEC_TYPE_TRIGGERED, api.EXEC_TYPE_REPLACED} <= exec_types
    assert {api.EXEC_TYPE_CANCELED, api.EXEC_TYPE_EXPIRED, api.EXEC_TYPE_PARTIAL_FILL} <= exec_types
    assert {KILL, common.REJECT_REASON_NO_LIQUIDITY} <= set(reports["reason"].tolist())
    statuses = np.concatenate([np.frombuffer(o[1], np.uint8) for o in py_outcomes[0::2]])
    assert api.ORDER_STATUS_REJECTED in statuses
    for c_outcome, py_outcome in zip(c_outcomes, py_outcomes, strict=True):
        assert c_outcome == py_outcome
    assert c_state == py_state


def _fold_one(table: np.ndarray, events: np.ndarray, taker: list[int], maker: list[int]) -> Any:
    folder = OrderFold(ORDER_DTYPE, REPORT_DTYPE, FILL_DTYPE, META_DTYPE, _ENGINE_TO_REASON)
    taker_slots, maker_slots = folder.slot_buffers(len(events), 1)
    taker_slots[:], maker_slots[:] = taker, maker
    return folder.fold(
        table,
        np.zeros(len(table), np.int64),
        events,
        np.zeros(1, COMMAND_DTYPE),
        np.zeros(1, META_DTYPE),
        np.full(1, -1, np.int64),
        first_new_id=1,
        new_count=0,
        slot_mask=len(table) - 1,
        first_input_seq=1,
        received_ns=1,
        transact_ns=2,
        restore_id_base=1 << 62,
        next_seq=1,
        next_trade_id=1,
    )


def test_an_event_naming_an_order_not_held_changes_nothing() -> None:
    table = np.zeros(4, ORDER_DTYPE)
    table["status"] = api.ORDER_STATUS_NEW
    table["leaves"] = 10
    events = np.zeros(2, EVENT_DTYPE)
    events["type"] = [3, 3]  # two fills: the second's maker is not held
    events["qty"], events["price"] = 1, MID
    before = table.copy()
    with pytest.raises(LookupError, match="event 1"):
        _fold_one(table, events, [0, 1], [2, -1])
    assert table.tobytes() == before.tobytes()


def test_notional_saturates_instead_of_wrapping() -> None:
    table = np.zeros(2, ORDER_DTYPE)
    table["notional"] = [np.iinfo(np.int64).max - 5, np.iinfo(np.int64).min + 5]
    events = np.zeros(1, EVENT_DTYPE)
    events["type"], events["price"], events["qty"], events["side"] = 3, 1 << 61, 1 << 20, 1
    folded = _fold_one(table, events, [0], [1])
    assert table["notional"][0] == np.iinfo(np.int64).max
    assert table["notional"][1] == np.iinfo(np.int64).max  # min + 5 + 2^81: saturates upwards
    assert folded.fills["price"].tolist() == [1 << 61] and folded.touched.tolist() == [0, 1]
