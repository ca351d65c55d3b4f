"""The batch entry point: one call per batch, event buffers that fill up, per-client priority ordering."""

from __future__ import annotations

import numpy as np
import pytest

from hftgate.matching import (
    COMMAND_DTYPE,
    EVENT_DTYPE,
    Action,
    EngineConfig,
    EventType,
    MatchingEngine,
    OrderType,
    Side,
    TimeInForce,
    new_commands,
    order_by_client_priority,
)
from hftgate.matching.flows import benchmark_flow, coverage_flow
from hftgate.native.errors import InvalidArgument


def limit_orders(count: int, side: Side, first_price: int, first_id: int = 1) -> np.ndarray:
    commands = new_commands(count)
    commands["action"] = Action.NEW
    commands["order_type"] = OrderType.LIMIT
    commands["tif"] = TimeInForce.GTC
    commands["side"] = side
    commands["order_id"] = np.arange(first_id, first_id + count)
    commands["price"] = first_price + np.arange(count)
    commands["qty"] = 1
    return commands


def sweep(order_id: int, qty: int) -> np.ndarray:
    command = new_commands(1)
    command[0] = (
        order_id,
        0,
        10**6,
        qty,
        0,
        0,
        0,
        0,
        Action.NEW,
        Side.BUY,
        OrderType.LIMIT,
        TimeInForce.IOC,
        0,
        0,
        0,
    )
    return command


def test_one_call_returns_every_event_with_its_command_index() -> None:
    engine = MatchingEngine()
    commands = np.concatenate([limit_orders(3, Side.SELL, 100), sweep(50, 2)])
    events = engine.process(commands)
    assert events.dtype == EVENT_DTYPE
    assert events["command_index"].tolist() == [0, 1, 2, 3, 3, 3]
    assert events["type"].tolist() == [EventType.ACK] * 4 + [EventType.FILL] * 2


def test_a_command_with_more_events_than_the_buffer_grows_it() -> None:
    engine = MatchingEngine()
    engine.process(limit_orders(500, Side.SELL, 100))
    events = engine.process(sweep(900, 1000))  # 1 ACK + 500 fills + 1 expiry from one command
    assert len(events) == 502
    assert set(events["command_index"].tolist()) == {0}
    assert events[-1]["qty"] == 500
    assert engine.pending_events == 0


def test_process_into_with_a_tiny_buffer_resumes_where_it_stopped() -> None:
    flow = coverage_flow(600, seed=3)
    config = EngineConfig(max_orders=200, max_levels_per_side=16)
    expected = MatchingEngine(config).process(flow)

    engine = MatchingEngine(config)
    buffer = np.empty(5, dtype=EVENT_DTYPE)
    collected: list[np.ndarray] = []
    done = 0
    while done < len(flow) or engine.pending_events:
        consumed, written = engine.process_into(flow[done:], buffer)
        collected.append(buffer[:written].copy())
        done += consumed
    got = np.concatenate(collected)
    assert len(got) == len(expected)
    for field in EVENT_DTYPE.names or ():
        if field != "command_index":  # relative to each call's slice in process_into
            assert np.array_equal(got[field], expected[field]), field


def test_process_refuses_while_raw_events_are_pending() -> None:
    engine = MatchingEngine()
    engine.process(limit_orders(10, Side.SELL, 100))
    engine.process_into(sweep(99, 20), np.empty(2, dtype=EVENT_DTYPE))
    assert engine.pending_events == 10
    with pytest.raises(InvalidArgument):
        engine.process(new_commands(0))


def test_wrong_arrays_are_refused_at_the_boundary() -> None:
    engine = MatchingEngine()
    with pytest.raises(InvalidArgument):
        engine.process(np.zeros(3, dtype=np.int64))
    with pytest.raises(InvalidArgument):
        engine.process_into(new_commands(1), np.empty(0, dtype=EVENT_DTYPE))
    with pytest.raises(InvalidArgument):
        engine.process_into(new_commands(4)[::2], np.empty(4, dtype=EVENT_DTYPE))


def test_non_contiguous_commands_are_accepted_by_process() -> None:
    commands = limit_orders(6, Side.BUY, 100)[::2]
    assert len(MatchingEngine().process(commands)) == 3


def test_empty_batch_gives_no_events() -> None:
    assert len(MatchingEngine().process(new_commands(0))) == 0


def test_same_input_always_gives_the_same_events_and_books() -> None:
    flow = benchmark_flow(20_000, seed=5)
    first, second = MatchingEngine(), MatchingEngine()
    assert np.array_equal(first.process(flow), second.process(flow))
    for side in Side:
        assert np.array_equal(first.orders(side), second.orders(side))


def test_splitting_a_batch_does_not_change_the_outcome() -> None:
    flow = coverage_flow(1500, seed=11)
    config = EngineConfig(max_orders=300, max_levels_per_side=16)
    whole = MatchingEngine(config).process(flow)
    engine = MatchingEngine(config)
    parts = [engine.process(flow[i : i + 97]) for i in range(0, len(flow), 97)]
    joined = np.concatenate(parts)
    assert np.array_equal(
        joined[["order_id", "type", "qty", "price", "reason"]],
        whole[["order_id", "type", "qty", "price", "reason"]],
    )


def client_batch() -> np.ndarray:
    commands = limit_orders(6, Side.BUY, 100)
    commands["account_id"] = [1, 2, 1, 2, 1, 3]
    commands["priority"] = [0, 5, 9, 1, 9, 7]
    return commands


def test_priority_ordering_stays_inside_each_client() -> None:
    ordered = order_by_client_priority(client_batch())
    # account 1 held slots 0, 2, 4 and account 2 slots 1, 3: each client's orders move only among its slots
    assert ordered["account_id"].tolist() == [1, 2, 1, 2, 1, 3]
    assert ordered["order_id"].tolist() == [3, 2, 5, 4, 1, 6]


def test_equal_priorities_keep_arrival_order() -> None:
    commands = client_batch()
    commands["priority"] = 0
    assert np.array_equal(order_by_client_priority(commands), commands)


def test_prioritized_batch_matches_in_the_reordered_sequence() -> None:
    engine = MatchingEngine()
    events = engine.process(client_batch(), prioritize=True)
    assert events["order_id"].tolist() == [3, 2, 5, 4, 1, 6]
    assert events["command_index"].tolist() == list(range(6))


def test_command_dtype_is_one_cache_line() -> None:
    assert COMMAND_DTYPE.itemsize == 64
    assert EVENT_DTYPE.itemsize == 80
