"""The C engine against the pure-Python reference: identical events and identical books, on random flows
covering every rule and on a replayed slice of a real CME day."""

from __future__ import annotations

import numpy as np
import pytest

from hftgate.matching import EngineConfig, MatchingEngine, Side, StpMode
from hftgate.matching.flows import benchmark_flow, coverage_flow
from hftgate.matching.mbo import data_dir, load_mbo, mbo_files
from hftgate.matching.reference import ReferenceEngine
from hftgate.matching.types import EventType


def assert_same(engine: MatchingEngine, reference: ReferenceEngine, commands: np.ndarray) -> np.ndarray:
    events = engine.process(commands)
    expected = reference.process(commands)
    got = events.tolist()
    if got != expected:
        first = (
            next(i for i, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b)
            if got and expected
            else 0
        )
        shown = slice(first, first + 3)
        pytest.fail(f"events differ at {first}: engine {got[shown]} reference {expected[shown]}")
    for symbol in engine.symbols:
        for side in Side:
            for stops in (False, True):
                assert engine.orders(
                    side, symbol=symbol, pending_stops=stops
                ).tolist() == reference.orders_on(side, symbol=symbol, pending_stops=stops), (
                    symbol,
                    side,
                    stops,
                )
        assert engine.last_trade_price(symbol) == reference.last_trade_price(symbol)
        assert engine.depth(Side.BUY, 50, symbol=symbol).tolist() == [
            (*level, 0) for level in reference.depth(Side.BUY, 50, symbol=symbol)
        ]
    assert engine.live_orders == reference.live_orders
    return events


# Small capacities so that full books, full level arrays and their rejects are exercised too.
TIGHT = EngineConfig(max_symbols=4, max_levels_per_side=10, max_orders=250, market_protection_ticks=6)


@pytest.mark.parametrize("seed", range(12))
def test_random_flow_covering_every_rule(seed: int) -> None:
    symbols = range(1 + seed % 3)
    flow = coverage_flow(3000, seed=seed, symbols=len(symbols))
    engine, reference = MatchingEngine(TIGHT, symbols), ReferenceEngine(TIGHT, symbols)
    events = assert_same(engine, reference, flow)
    assert len(np.unique(events["type"])) == 7  # every kind of event happened


@pytest.mark.parametrize("stp", [StpMode.CANCEL_TAKER, StpMode.CANCEL_BOTH, StpMode.DECREMENT, StpMode.NONE])
def test_random_flow_under_each_default_stp_mode(stp: StpMode) -> None:
    config = EngineConfig(
        max_levels_per_side=64, max_orders=2000, market_protection_ticks=8, default_stp_mode=stp
    )
    assert_same(MatchingEngine(config), ReferenceEngine(config), coverage_flow(3000, seed=int(stp)))


def test_flow_in_many_small_batches() -> None:
    flow = coverage_flow(3000, seed=99, symbols=2)
    engine, reference = MatchingEngine(TIGHT, (0, 1)), ReferenceEngine(TIGHT, (0, 1))
    for start in range(0, len(flow), 250):
        assert_same(engine, reference, flow[start : start + 250])


def test_benchmark_flow() -> None:
    flow = benchmark_flow(30_000, seed=3)
    config = EngineConfig(max_orders=30_016)
    assert_same(MatchingEngine(config), ReferenceEngine(config), flow)


@pytest.mark.skipif(not mbo_files(data_dir()), reason="shared recorded data not available")
def test_replayed_slice_of_a_real_cme_day() -> None:
    path = next(p for p in mbo_files(data_dir()) if "2023-12-25" in p.name)
    replay = load_mbo(path, limit=25_000)  # snapshot, pre-open, the opening and the first trading minutes
    config = replay.engine_config()
    events = assert_same(
        MatchingEngine(config, replay.symbols), ReferenceEngine(config, replay.symbols), replay.commands
    )
    assert np.count_nonzero(events["type"] == 3) > 100


def test_replacing_pending_stops_agrees_with_the_reference() -> None:
    from hftgate.matching.engine import new_commands
    from hftgate.matching.types import Action, OrderType, TimeInForce

    config = EngineConfig(max_symbols=1, market_protection_ticks=5)
    engine, reference = MatchingEngine(config), ReferenceEngine(config)
    rows = [  # (action, id, side, type, tif, price, qty, stop)
        (Action.NEW, 1, Side.SELL, OrderType.LIMIT, TimeInForce.GTC, 100, 2, 0),
        (Action.NEW, 2, Side.BUY, OrderType.LIMIT, TimeInForce.IOC, 100, 1, 0),  # last trade 100
        (Action.NEW, 3, Side.BUY, OrderType.STOP_LIMIT, TimeInForce.GTC, 106, 4, 105),
        (Action.NEW, 4, Side.BUY, OrderType.STOP_LIMIT, TimeInForce.GTC, 106, 4, 105),
        (Action.NEW, 5, Side.SELL, OrderType.STOP_MARKET, TimeInForce.IOC, 0, 3, 95),
        (Action.REPLACE, 3, 0, 0, 0, 106, 2, 0),  # reduced in place
        (Action.REPLACE, 4, 0, 0, 0, 107, 4, 104),  # new trigger and limit: re-parked
        (Action.REPLACE, 5, 0, 0, 0, 0, 2, 101),  # stop-market, trigger now satisfied: fires
        (Action.REPLACE, 3, 0, 0, 0, 106, 0, 0),  # bad quantity
        (Action.REPLACE, 4, 0, 0, 0, 101, 3, 100),  # elected at once, rests at 101
    ]
    commands = new_commands(len(rows))
    for i, (action, order_id, side, kind, tif, price, qty, stop) in enumerate(rows):
        commands[i] = (order_id, 0, price, qty, stop, 0, 0, 0, action, side, kind, tif, 0, 0, 0)
    events = assert_same(engine, reference, commands)
    assert int(EventType.TRIGGERED) in events["type"].tolist()
