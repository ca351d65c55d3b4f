"""Seeded synthetic order flows for the matching engine: the benchmark's realistic mix and a
rule-coverage mix for differential tests. Same seed, same commands, always.
"""

from __future__ import annotations

import random

import numpy as np

from hftgate.matching.types import (
    ALL_SYMBOLS,
    Action,
    OrderFlag,
    OrderType,
    Side,
    StpMode,
    TimeInForce,
    new_commands,
)

BENCHMARK_MID_PRICE = 1_000_000
ACCOUNTS = 1000


def account_of(order_id: np.ndarray | int) -> np.ndarray | int:
    """The account that owns ``order_id`` in these flows (so a cancel can name the owner)."""
    return (order_id * 2654435761) % ACCOUNTS + 1


def benchmark_flow(count: int, seed: int = 7) -> np.ndarray:
    """About 60% passive limit orders, 30% cancels, 10% market orders, around a slowly wandering mid.

    Limit prices sit a geometric number of ticks (mean ~7) behind the mid, so the book has the usual
    shape: dense near the top, thin further out. Half of the limit orders are cancelled, each once,
    after a geometric lifetime (mean ~100 orders); a cancel that arrives after its order was filled is
    rejected, as it would be on an exchange. When the mid moves, some new limit orders cross and trade.
    """
    rng = np.random.default_rng(seed)
    # Per base order: 6/7 limits, 1/7 market; half the limits get a cancel: 6 : 3 : 1 overall.
    base = int(count * 0.7) + 16
    is_market = rng.random(base) < 1 / 7
    side = rng.integers(int(Side.BUY), int(Side.SELL) + 1, size=base)
    mid = BENCHMARK_MID_PRICE + np.cumsum(rng.choice([-1, 0, 1], size=base, p=[0.001, 0.998, 0.001]))
    offset = rng.geometric(0.15, size=base)
    order_ids = np.arange(1, base + 1, dtype=np.uint64)

    orders = new_commands(base)
    orders["order_id"] = order_ids
    orders["account_id"] = account_of(order_ids)
    orders["side"] = side
    orders["qty"] = rng.integers(1, 11, size=base)
    orders["action"] = Action.NEW
    orders["order_type"] = np.where(is_market, OrderType.MARKET, OrderType.LIMIT)
    orders["tif"] = np.where(is_market, TimeInForce.IOC, TimeInForce.GTC)
    orders["price"] = np.where(is_market, 0, np.where(side == Side.BUY, mid - offset, mid + offset))

    cancelled = np.flatnonzero(~is_market & (rng.random(base) < 0.5))
    lifetime = rng.geometric(0.01, size=len(cancelled))
    cancels = new_commands(len(cancelled))
    cancels["action"] = Action.CANCEL
    cancels["order_id"] = order_ids[cancelled]
    cancels["account_id"] = account_of(order_ids[cancelled])

    # Interleave: order i at time 2i, its cancel at 2(i + lifetime) + 1, then keep the first `count`.
    times = np.concatenate([2 * np.arange(base), 2 * (cancelled + lifetime) + 1])
    merged = np.concatenate([orders, cancels])[np.argsort(times, kind="stable")]
    return np.ascontiguousarray(merged[:count])


def coverage_flow(count: int, seed: int = 1, symbols: int = 1) -> np.ndarray:
    """Every command kind the engine knows, crowded around one price so that they interact:
    limits (GTC/IOC/FOK, icebergs, post-only), market orders, stops, cancels, replaces, cancel-alls,
    a few accounts with every self-trade prevention mode, and some invalid commands.
    """
    rnd = random.Random(seed)
    commands = new_commands(count)
    mid = 1000
    issued: list[int] = []  # order ids handed out so far, for cancels and replaces
    for i in range(count):
        row = commands[i]
        order_id = i + 1
        roll = rnd.random()
        mid = max(20, mid + rnd.choice((-1, 0, 0, 0, 0, 1)))
        side = rnd.choice((Side.BUY, Side.SELL))
        account = rnd.choice((0, 1, 2, 3))
        symbol = rnd.randrange(symbols)
        if roll < 0.62 or not issued:
            row["action"] = Action.NEW
            row["order_id"] = order_id
            row["account_id"] = account
            row["symbol_id"] = symbol
            row["side"] = side
            row["qty"] = rnd.randint(1, 12)
            row["stp_mode"] = rnd.choice((0, 0, 0, 1, 2, 3, 4, 5))
            passive = -1 if side == Side.BUY else 1
            row["price"] = mid + passive * rnd.randint(-3, 8)
            _shape_new_order(rnd, row, mid)
            issued.append(order_id)
        elif roll < 0.80:
            target = rnd.choice(issued[-60:])
            row["action"] = Action.CANCEL
            row["order_id"] = target
            row["account_id"] = commands[target - 1]["account_id"] if rnd.random() < 0.9 else 9
        elif roll < 0.96:
            target = rnd.choice(issued[-60:])
            original = commands[target - 1]
            row["action"] = Action.REPLACE
            row["order_id"] = target
            row["account_id"] = original["account_id"]
            row["price"] = original["price"] + rnd.choice((0, 0, 0, -2, -1, 1, 2))
            row["qty"] = max(1, int(original["qty"]) + rnd.choice((-3, -1, 0, 1, 3)))
        elif roll < 0.98:
            row["action"] = Action.CANCEL_ALL
            row["account_id"] = rnd.choice((1, 2, 3))
            row["symbol_id"] = ALL_SYMBOLS if rnd.random() < 0.3 else symbol
        else:
            _garble(rnd, row, order_id, rnd.choice(issued))
    return commands


def _shape_new_order(rnd: random.Random, row: np.void, mid: int) -> None:
    roll = rnd.random()
    if roll < 0.40:
        row["order_type"], row["tif"] = OrderType.LIMIT, TimeInForce.GTC
        extra = rnd.random()
        if extra < 0.15:
            row["display_qty"] = rnd.randint(1, 4)
        elif extra < 0.22:
            row["flags"] = rnd.choice((OrderFlag.POST_ONLY, OrderFlag.POST_ONLY_SLIDE))
    elif roll < 0.55:
        row["order_type"], row["tif"] = OrderType.LIMIT, rnd.choice((TimeInForce.IOC, TimeInForce.FOK))
    elif roll < 0.70:
        row["order_type"], row["tif"] = OrderType.MARKET, rnd.choice((TimeInForce.IOC, TimeInForce.FOK))
        row["price"] = 0
    elif roll < 0.85:
        row["order_type"], row["tif"] = OrderType.STOP_LIMIT, TimeInForce.GTC
        above = 1 if row["side"] == Side.BUY else -1
        row["stop_price"] = mid + above * rnd.randint(-1, 4)
        if rnd.random() < 0.1:
            row["display_qty"] = 1
    else:
        row["order_type"], row["tif"] = OrderType.STOP_MARKET, rnd.choice((TimeInForce.IOC, TimeInForce.FOK))
        above = 1 if row["side"] == Side.BUY else -1
        row["stop_price"] = mid + above * rnd.randint(-1, 4)
        row["price"] = 0


def _garble(rnd: random.Random, row: np.void, order_id: int, old_id: int) -> None:
    """A command some rule must refuse."""
    row["action"] = Action.NEW
    row["order_id"] = order_id
    row["side"], row["order_type"], row["tif"], row["qty"], row["price"] = (
        Side.BUY,
        OrderType.LIMIT,
        1,
        1,
        1000,
    )
    broken = rnd.randrange(9)
    if broken == 0:
        row["order_id"] = old_id  # maybe still live: duplicate
    elif broken == 1:
        row["side"] = 7
    elif broken == 2:
        row["qty"] = -rnd.randint(0, 3)
    elif broken == 3:
        row["order_type"] = OrderType.MARKET  # GTC market
    elif broken == 4:
        row["flags"] = OrderFlag.POST_ONLY | OrderFlag.POST_ONLY_SLIDE
    elif broken == 5:
        row["stp_mode"] = 11
    elif broken == 6:
        row["action"] = 0
    elif broken == 7:
        row["display_qty"], row["tif"] = 1, TimeInForce.IOC
        row["qty"] = 3
    else:
        row["symbol_id"] = 99
    if rnd.random() < 0.5 and broken != 0:
        row["stp_mode"] = StpMode.DEFAULT
