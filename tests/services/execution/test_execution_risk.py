"""Pre-trade risk: the order-by-order and the numpy paths agree on every rule, in the same order."""

from __future__ import annotations

import random

import numpy as np

from services.execution.reference import AccountSpec, InstrumentSpec
from services.execution.risk import (
    NEW_ORDER_DTYPE,
    AccountExposure,
    TokenBucket,
    check_orders_one_by_one,
    check_orders_vectorized,
)

INSTRUMENTS: list[InstrumentSpec | None] = [
    InstrumentSpec(symbol="A"),
    InstrumentSpec(
        symbol="B",
        price_increment_ticks=5,
        quantity_increment_lots=2,
        max_order_lots=40,
        max_notional=2_000,
        price_band_ticks=30,
        reference_price_ticks=100,
    ),
    InstrumentSpec(symbol="H", trading_enabled=False),
    None,
]


def random_batch(rng: random.Random, count: int) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    rows = []
    ids = []
    for number in range(count):
        rows.append(
            (
                rng.choice((0, 1, 2, 3)),
                rng.choice((0, 1, 2, 3, 4, 7)),
                rng.choice((0, 1, 2, 3, 4)),
                rng.choice((0, -5, 80, 95, 100, 101, 135, 200)),
                rng.choice((0, 0, 90, 105, 300)),
                rng.choice((-1, 0, 1, 2, 7, 10, 20, 50)),
                rng.choice((0, 0, 0, 1, 2, 10)),
                rng.choice((0, 0, 1)),
                rng.choice((0, 1, 2, 5, 6)),
                rng.choice((0, 0, 0, 95, 120)),
                0,
            )
        )
        ids.append(rng.choice((f"id{number}", f"id{number}", "dup", "", "known")))
    instrument_rows = np.array([rng.randrange(len(INSTRUMENTS)) for _ in range(count)], np.int64)
    symbol_ids = np.where(instrument_rows == 3, -1, instrument_rows)
    return np.array(rows, NEW_ORDER_DTYPE), ids, instrument_rows, symbol_ids


def test_scalar_and_vectorized_checks_give_the_same_reasons() -> None:
    rng = random.Random(42)
    for _ in range(400):
        count = rng.randint(1, 12)
        orders, ids, instrument_rows, symbol_ids = random_batch(rng, count)
        account = AccountSpec(
            name="t",
            account_id=1,
            max_open_orders=rng.choice((1, 3, 100)),
            position_limit_lots=rng.choice((5, 30, 1000)),
            kill_switch=rng.random() < 0.05,
        )
        exposure = AccountExposure(
            position=np.array([rng.randint(-10, 10) for _ in range(4)], np.int64),
            open_buy=np.array([rng.randint(0, 10) for _ in range(4)], np.int64),
            open_sell=np.array([rng.randint(0, 10) for _ in range(4)], np.int64),
            open_orders=rng.randint(0, 2),
        )
        burst = rng.choice((2, 100))
        results = []
        for check in (check_orders_one_by_one, check_orders_vectorized):
            bucket = TokenBucket(0.0, burst)
            results.append(
                check(
                    orders,
                    ids,
                    instrument_rows,
                    INSTRUMENTS,
                    symbol_ids,
                    account,
                    {"known": 1},
                    exposure,
                    bucket,
                )
            )
        assert results[0].tolist() == results[1].tolist(), (orders, ids, instrument_rows)


def test_the_whole_batch_client_id_check_agrees_with_the_one_by_one_rules() -> None:
    """risk._all_valid_and_new (whole-list operations) says yes exactly when no client order id
    of the batch is invalid, repeated or already known, by the per-order rules."""
    import random

    from services.execution.risk import MAX_CLIENT_ID_LENGTH, _all_valid_and_new, _valid_client_id

    rng = random.Random(7)
    pool = ["a", "b1", "x" * MAX_CLIENT_ID_LENGTH, "x" * (MAX_CLIENT_ID_LENGTH + 1), "", "é", "tab\t", "ok-2"]
    for _ in range(2000):
        ids = [
            rng.choice(pool) if rng.random() < 0.2 else f"c{rng.randint(0, 50)}"
            for _ in range(rng.randint(0, 6))
        ]
        known = {f"c{rng.randint(0, 200)}": 1 for _ in range(rng.randint(0, 3))}
        by_rules = (
            all(_valid_client_id(c) for c in ids) and len(set(ids)) == len(ids) and not set(ids) & set(known)
        )
        assert _all_valid_and_new(ids, known) == by_rules, (ids, known)
