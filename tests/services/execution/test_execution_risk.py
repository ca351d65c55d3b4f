"""Pre-trade risk: the C checks (native/src/risk.c) give every order the reason the plain-Python
reference (reference_risk.py) gives it, rule for rule and in the same order, for batches of any
size, a batch of one through its own entry included, and for extreme values."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hftgate.native.client_ids import ClientIdIndex, joined
from services.execution.reference import AccountSpec, InstrumentSpec
from services.execution.risk import (
    NEW_ORDER_DTYPE,
    AccountExposure,
    NewOrderRisk,
    TokenBucket,
)
from tests.services.execution.reference_risk import reference_reasons


def known_ids(account_id: int, known: dict[str, int]) -> ClientIdIndex:
    """The C index holding ``known`` (client order id -> order id) for ``account_id``."""
    index = ClientIdIndex()
    if known:
        text, lengths = joined(list(known))
        index.add(np.full(len(known), account_id, np.uint64), text, lengths, np.array(list(known.values())))
    return index


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


#: Account 1's client order id "known" is in use (the random batches use it).
KNOWN = known_ids(1, {"known": 1})


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
                rng.choice((0, 0, 0, 95, 97, 120)),
                0,
            )
        )
        ids.append(rng.choice((f"id{number}", f"id{number}", "dup", "", "known")))
    instrument_rows = np.array([rng.randrange(len(INSTRUMENTS)) for _ in range(count)], np.int64)
    symbol_ids = np.where(instrument_rows == 3, -1, instrument_rows)
    return np.array(rows, NEW_ORDER_DTYPE), ids, instrument_rows, symbol_ids


def random_account(rng: random.Random) -> tuple[AccountSpec, AccountExposure]:
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
    return account, exposure


def test_the_c_checks_give_the_reference_reasons() -> None:
    rng = random.Random(42)
    risk = NewOrderRisk()
    for _ in range(600):
        count = rng.choice((1, 2, 5, 12, 40))
        orders, ids, instrument_rows, symbol_ids = random_batch(rng, count)
        account, exposure = random_account(rng)
        burst = rng.choice((2, 100))
        buckets = [TokenBucket(0.0, burst), TokenBucket(0.0, burst)]
        got = risk.check_new_orders(
            orders, ids, instrument_rows, INSTRUMENTS, symbol_ids, account, KNOWN, exposure, buckets[0]
        )
        want = reference_reasons(
            orders, ids, instrument_rows, INSTRUMENTS, symbol_ids, account, {"known": 1}, exposure, buckets[1]
        )
        assert got.tolist() == want.tolist(), (orders, ids, instrument_rows)
        assert buckets[0].tokens == buckets[1].tokens


def test_the_account_limits_at_their_edges_give_the_reference_reasons() -> None:
    """Valid orders only, so that batches reach the rate, open-order and position rules and meet
    each limit exactly."""
    rng = random.Random(11)
    risk = NewOrderRisk()
    for _ in range(600):
        count = rng.choice((1, 3, 12))
        orders = np.array(
            [
                (rng.choice((1, 2)), 1, rng.choice((1, 2)), 100, 0, rng.randint(1, 6), 0, 0, 0, 0, 0)
                for _ in range(count)
            ],
            NEW_ORDER_DTYPE,
        )
        ids = [f"c{i}" for i in range(count)]
        rows = np.array([rng.randrange(2) for _ in range(count)], np.int64)
        account, exposure = random_account(rng)
        exposure.open_orders = rng.randint(0, 4)
        args = (orders, ids, rows, INSTRUMENTS, rows.copy(), account)
        burst = rng.randint(1, 14)
        got = risk.check_new_orders(*args, ClientIdIndex(), exposure, TokenBucket(0.0, burst))
        assert got.tolist() == reference_reasons(*args, {}, exposure, TokenBucket(0.0, burst)).tolist()


def test_the_account_arrays_of_every_account_give_the_one_accounts_reasons() -> None:
    """The service passes its 2-D exposure arrays and the account's row; tests pass one row."""
    rng = random.Random(3)
    risk = NewOrderRisk()
    for _ in range(200):
        orders, ids, instrument_rows, symbol_ids = random_batch(rng, rng.choice((1, 9)))
        account, exposure = random_account(rng)
        row = rng.randrange(3)
        grid = [
            np.array([[rng.randint(-10, 10) for _ in range(4)] for _ in range(3)], np.int64) for _ in range(3)
        ]
        for array, mine in zip(grid, (exposure.position, exposure.open_buy, exposure.open_sell), strict=True):
            array[row] = mine
        wide = AccountExposure(grid[0], grid[1], grid[2], exposure.open_orders, row)
        args = (orders, ids, instrument_rows, INSTRUMENTS, symbol_ids, account, KNOWN)
        assert (
            risk.check_new_orders(*args, wide, TokenBucket(1e9, 10**9)).tolist()
            == risk.check_new_orders(*args, exposure, TokenBucket(1e9, 10**9)).tolist()
        )


INT64_MAX = (1 << 63) - 1
EDGES = [0, 1, 2, 3, (1 << 20), (1 << 40), (1 << 40) + 1, (1 << 60), (1 << 61) - 1, 1 << 61, (1 << 61) + 1,
         1 << 62, INT64_MAX - 1, INT64_MAX]  # fmt: skip
edge_ints = st.one_of(st.sampled_from(EDGES), st.integers(0, INT64_MAX))
signed_edges = st.one_of(edge_ints, edge_ints.map(lambda v: -v), st.just(-INT64_MAX - 1))
extreme_orders = st.tuples(
    st.sampled_from([0, 1, 2, 3]),
    st.sampled_from([0, 1, 2, 3, 4, 5]),
    st.sampled_from([-1, 0, 1, 2, 3, 4]),
    signed_edges,  # price
    signed_edges,  # stop
    signed_edges,  # quantity
    st.one_of(st.just(0), signed_edges),  # display
    st.sampled_from([0, 1, -1, INT64_MAX]),  # post only
    st.sampled_from([-1, 0, 1, 5, 6]),  # stp
    signed_edges,  # protection
    signed_edges,  # priority
)
extreme_instruments = st.builds(
    InstrumentSpec,
    symbol=st.just("X"),
    price_increment_ticks=st.one_of(st.just(1), signed_edges),
    quantity_increment_lots=st.one_of(st.just(1), signed_edges),
    max_order_lots=signed_edges,
    max_notional=signed_edges,
    price_band_ticks=signed_edges,
    reference_price_ticks=signed_edges,
)


@settings(max_examples=300, deadline=None)
@given(
    specs=st.lists(extreme_instruments, min_size=1, max_size=2),
    fields=st.lists(extreme_orders, min_size=1, max_size=6),
    position=signed_edges,
    open_lots=edge_ints,
    limit=signed_edges,
    max_open=signed_edges,
    open_orders=edge_ints,
)
def test_extreme_values_never_fail_the_call_and_agree_with_the_reference(
    specs: list[InstrumentSpec],
    fields: list[tuple[int, ...]],
    position: int,
    open_lots: int,
    limit: int,
    max_open: int,
    open_orders: int,
) -> None:
    """int64 edges everywhere: prices and quantities at 2^61, 2^62 and int64's bounds, position
    limits and positions that would overflow the sums (each one fails its rule instead), open-order
    counts beyond any limit."""
    count = len(fields)
    orders = np.array(fields, NEW_ORDER_DTYPE)
    rows = np.array([i % len(specs) for i in range(count)], np.int64)
    account = AccountSpec(name="a", account_id=1, position_limit_lots=limit, max_open_orders=max_open)
    exposure = AccountExposure(
        np.array([position, 0], np.int64),
        np.array([open_lots, 0], np.int64),
        np.array([open_lots, 0], np.int64),
        open_orders,
    )
    ids = [f"c{i}" for i in range(count)]
    args = (orders, ids, rows, list(specs), rows.copy(), account)
    got = NewOrderRisk().check_new_orders(*args, ClientIdIndex(), exposure, TokenBucket(1e9, 10**9))
    assert got.tolist() == reference_reasons(*args, {}, exposure, TokenBucket(1e9, 10**9)).tolist()
    one = NewOrderRisk().check_one_new_order(
        fields[0], "c0", specs[0], 0, account, ClientIdIndex(), exposure, TokenBucket(1e9, 10**9)
    )
    assert one == int(got[0])
