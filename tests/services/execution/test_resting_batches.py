"""apply_batch's array path: a batch of new orders that all rest or wait as stops (a book imported
by a symbol move, a batch of passive quotes) is applied over arrays instead of event by event
(services/execution/state.py ``_apply_resting``). It must leave exactly the state, reports and
outcome of the event loop, which these tests run beside it on the same random flows."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from hftgate.matching import EngineConfig
from hftgate.matching.types import COMMAND_DTYPE, Action, OrderType, StpMode, TimeInForce
from hftgate.v1 import execution_pb2 as api
from services.execution import state as state_module
from services.execution.records import META_DTYPE, Batch
from services.execution.recovery import comparable_books
from services.execution.state import ExecutionState

ENGINE = EngineConfig(max_symbols=2, max_levels_per_side=512, max_orders=1 << 14)
MID = 10_000
#: (account, symbol, side, kind, price, qty, display, stop): kind "gtc", "ioc", "stop" or "cancel".
Input = tuple[Any, ...]


def _state(retain_orders: int | None) -> ExecutionState:
    state = ExecutionState(ENGINE, 64, retain_orders=retain_orders, retire=retain_orders is not None)
    for symbol_id, name in enumerate(("X", "Y")):
        state.add_symbol(symbol_id, name)
    for account in (1, 2, 3):
        state.add_account(account, f"acct{account}")
    return state


def _batch(state: ExecutionState, inputs: list[Input]) -> Batch:
    count = len(inputs)
    commands = np.zeros(count, COMMAND_DTYPE)
    meta = np.zeros(count, META_DTYPE)
    client_ids: list[str] = []
    next_id = state.order_count + 1
    for i, (account, symbol, side, kind, price, qty, display, stop) in enumerate(inputs):
        command = commands[i]
        command["account_id"], command["symbol_id"] = account, symbol
        if kind == "cancel":
            command["action"], command["order_id"] = Action.CANCEL, min(price, state.order_count) or 1
            continue
        command["order_id"], command["action"], command["side"] = next_id, Action.NEW, side
        client_id = f"c{next_id}"
        next_id += 1
        command["price"], command["qty"], command["display_qty"] = price, qty, display
        command["stop_price"] = stop
        command["order_type"] = OrderType.STOP_LIMIT if kind == "stop" else OrderType.LIMIT
        command["tif"] = TimeInForce.IOC if kind == "ioc" else TimeInForce.GTC
        command["stp_mode"] = StpMode.NONE
        meta[i]["client_price"] = price
        meta[i]["client_type"] = api.ORDER_TYPE_STOP_LIMIT if kind == "stop" else api.ORDER_TYPE_LIMIT
        meta[i]["client_tif"] = api.TIME_IN_FORCE_IOC if kind == "ioc" else api.TIME_IN_FORCE_GTC
        meta[i]["client_stp"] = api.SELF_TRADE_PREVENTION_ALLOW
        meta[i]["client_id_length"] = len(client_id)
        client_ids.append(client_id)
    return Batch(state.next_input_seq, 5, 7, commands, meta, "".join(client_ids).encode("ascii"))


def _flow(seed: int, batches: int) -> list[list[Input]]:
    """Batches that only rest (bids below, asks above the mid, icebergs, stops far off), and
    batches that trade, cancel or expire between them."""
    rng = random.Random(seed)
    flow: list[list[Input]] = []
    for _ in range(batches):
        size = rng.choice([2, 3, 17, 40, 300])
        resting = rng.random() < 0.6
        batch: list[Input] = []
        for _ in range(size):
            account, symbol, side = rng.randint(1, 3), rng.randint(0, 1), rng.randint(1, 2)
            away = rng.randint(1, 50)
            price = MID - away if side == 1 else MID + away
            qty = rng.randint(1, 20)
            if resting:
                if rng.random() < 0.15:  # a stop far beyond the market: it waits
                    trigger = MID + 5_000 if side == 1 else MID - 5_000
                    batch.append((account, symbol, side, "stop", trigger, qty, 0, trigger))
                else:
                    display = rng.randint(1, qty) if rng.random() < 0.2 else 0
                    batch.append((account, symbol, side, "gtc", price, qty, display, 0))
            elif rng.random() < 0.3:
                batch.append((account, symbol, side, "cancel", rng.randint(1, 5_000), 0, 0, 0))
            else:  # crosses: fills against the book or expires
                cross = MID + 60 if side == 1 else MID - 60
                batch.append((account, symbol, side, "ioc", cross, qty, 0, 0))
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
        state.order_base,
        state.next_input_seq,
        state.next_report_seq,
        state.next_trade_id,
        state.position[:rows].tobytes(),
        state.open_buy[:rows].tobytes(),
        state.open_sell[:rows].tobytes(),
        state.open_orders.tobytes(),
        state.retained_reports_after(0).tobytes(),
    )


def _run(flow: list[list[Input]], retain_orders: int | None) -> tuple[list[Any], tuple[Any, ...]]:
    state = _state(retain_orders)
    outcomes = []
    for inputs in flow:
        outcome = state.apply_batch(_batch(state, inputs))
        outcomes.append(tuple(getattr(outcome, f).tobytes() for f in ("order_ids", "status", "reason")))
        outcomes.append(
            tuple(getattr(outcome, f).tobytes() for f in ("price", "quantity", "leaves", "cum", "reports"))
        )
        outcomes.append((outcome.priority_kept.tobytes(), outcome.fills.tobytes(), outcome.first_input_seq))
    return outcomes, _view(state)


@pytest.mark.parametrize("retain_orders", [None, 256])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_resting_batches_leave_what_the_event_loop_leaves(
    monkeypatch: pytest.MonkeyPatch, seed: int, retain_orders: int | None
) -> None:
    flow = _flow(seed, 60)
    taken = []
    all_rest = state_module._all_rest

    def counted(events: np.ndarray, commands: np.ndarray) -> bool:
        rests = all_rest(events, commands)
        taken.append(rests)
        return rests

    monkeypatch.setattr(state_module, "_all_rest", counted)
    arrays = _run(flow, retain_orders)
    monkeypatch.setattr(state_module, "_all_rest", lambda events, commands: False)
    loop = _run(flow, retain_orders)
    assert sum(taken) >= 20 and not all(taken)  # both paths ran, on many batches
    assert arrays[0] == loop[0]
    assert arrays[1] == loop[1]


def test_a_batch_with_one_order_that_trades_takes_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    state = _state(None)
    state.apply_batch(_batch(state, [(1, 0, 2, "gtc", MID + 1, 5, 0, 0)]))
    called = []
    monkeypatch.setattr(state.__class__, "_apply_resting", lambda *args: called.append(args))
    rest_then_cross = [(2, 0, 1, "gtc", MID - 1, 5, 0, 0), (3, 0, 1, "gtc", MID + 1, 2, 0, 0)]
    outcome = state.apply_batch(_batch(state, rest_then_cross))
    assert not called and len(outcome.fills) == 1
