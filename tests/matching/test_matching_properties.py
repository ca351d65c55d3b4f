"""Properties that hold for any order flow: the book never rests crossed, every lot is accounted for, and the
C engine says exactly what the reference says."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hftgate.matching import (
    Action,
    EngineConfig,
    EventType,
    MatchingEngine,
    OrderType,
    Side,
    TimeInForce,
    new_commands,
)
from hftgate.matching.reference import ReferenceEngine

CONFIG = EngineConfig(max_symbols=1, max_levels_per_side=8, max_orders=40, market_protection_ticks=4)

new_order = st.fixed_dictionaries(
    {
        "action": st.just(int(Action.NEW)),
        "side": st.sampled_from([int(Side.BUY), int(Side.SELL)]),
        "order_type": st.sampled_from([int(t) for t in OrderType]),
        "tif": st.sampled_from([int(t) for t in TimeInForce]),
        "price": st.integers(95, 105),
        "stop_price": st.integers(95, 105),
        "qty": st.integers(1, 8),
        "display_qty": st.sampled_from([0, 0, 0, 1, 2]),
        "flags": st.sampled_from([0, 0, 0, 0, 1, 2]),
        "stp_mode": st.integers(0, 5),
        "account_id": st.integers(0, 2),
    }
)
cancel = st.fixed_dictionaries(
    {"action": st.just(int(Action.CANCEL)), "target": st.integers(1, 80), "account_id": st.integers(0, 2)}
)
replace = st.fixed_dictionaries(
    {
        "action": st.just(int(Action.REPLACE)),
        "target": st.integers(1, 80),
        "account_id": st.integers(0, 2),
        "price": st.integers(95, 105),
        "qty": st.integers(1, 8),
    }
)
cancel_all = st.fixed_dictionaries(
    {"action": st.just(int(Action.CANCEL_ALL)), "account_id": st.integers(0, 2)}
)
flows = st.lists(st.one_of(new_order, new_order, new_order, cancel, replace, cancel_all), max_size=80)


def to_commands(flow: list[dict[str, int]]) -> np.ndarray:
    commands = new_commands(len(flow))
    for i, fields in enumerate(flow):
        fields = dict(fields)
        commands[i]["order_id"] = fields.pop("target", i + 1)
        for name, value in fields.items():
            commands[i][name] = value
    return commands


def open_quantities(events: np.ndarray) -> tuple[dict[int, int], int, int, int]:
    """Per order, its open quantity as the events tell it; and the totals submitted, filled, removed.

    A replace that raises the quantity submits more; one that lowers it removes the difference.
    """
    open_qty: dict[int, int] = defaultdict(int)
    submitted = filled = removed = 0
    for event in events.tolist():
        order_id, _, maker, _, _, qty, leaves, maker_leaves, _, _, kind, _, _, _ = event
        if kind == EventType.ACK:
            submitted += qty
            open_qty[order_id] = qty
        elif kind == EventType.FILL:
            filled += 2 * qty
            open_qty[order_id] = leaves
            open_qty[maker] = maker_leaves
        elif kind in (EventType.CANCELED, EventType.EXPIRED):
            removed += qty
            open_qty[order_id] = leaves
        elif kind == EventType.REPLACED:
            change = qty - open_qty[order_id]
            submitted += max(change, 0)
            removed += max(-change, 0)
            open_qty[order_id] = qty
    return open_qty, submitted, filled, removed


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows)
def test_book_never_rests_crossed(flow: list[dict[str, int]]) -> None:
    engine = MatchingEngine(CONFIG)
    for command in to_commands(flow):
        engine.process(np.array([command]))
        top = engine.top()
        if top.bid_price is not None and top.ask_price is not None:
            assert top.bid_price < top.ask_price
        assert top.bid_qty >= 0 and top.ask_qty >= 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows)
def test_submitted_equals_filled_plus_resting_plus_cancelled(flow: list[dict[str, int]]) -> None:
    engine = MatchingEngine(CONFIG)
    events = engine.process(to_commands(flow))
    open_qty, submitted, filled, removed = open_quantities(events)
    live = {
        int(o["order_id"]): int(o["visible_qty"] + o["hidden_qty"])
        for side in Side
        for stops in (False, True)
        for o in engine.orders(side, pending_stops=stops)
    }
    assert submitted == filled + removed + sum(live.values())
    # And order by order: what the events say is open is exactly what the book holds.
    assert {k: v for k, v in open_qty.items() if v} == live
    assert all(v >= 0 for v in open_qty.values())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flows)
def test_engine_and_reference_agree(flow: list[dict[str, int]]) -> None:
    commands = to_commands(flow)
    engine, reference = MatchingEngine(CONFIG), ReferenceEngine(CONFIG)
    assert engine.process(commands).tolist() == reference.process(commands)
    for side in Side:
        assert engine.orders(side).tolist() == reference.orders_on(side)
        assert engine.orders(side, pending_stops=True).tolist() == reference.orders_on(
            side, pending_stops=True
        )
