"""hftgate.native.depth_book: checks and updates agree with today's Python rules; bounds; errors."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable

import numpy as np
import pytest

from hftgate.native.depth_book import (
    ASK,
    BID,
    CROSSED,
    INVALID_PRICE,
    INVALID_SIZE,
    NOT_FINITE,
    DepthBook,
    check_levels,
    levels,
)
from hftgate.native.errors import InvalidArgument, OutOfRange
from services.marketdata.depth_book import REJECT_REASON_OF_CHECK
from tests.services.marketdata.reference_depth_book import ReferenceDepthBook, depth_reject_reason

SPECIAL = [math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e-300]


def _random_levels(rng: random.Random, bad: bool) -> list[tuple[float, float]]:
    pairs = []
    for _ in range(rng.randint(0, 6)):
        price = rng.choice(SPECIAL) if bad and rng.random() < 0.2 else 100.0 + rng.randint(-20, 20) * 0.5
        size = rng.choice(SPECIAL) if bad and rng.random() < 0.2 else rng.choice([0.0, 1.0, 2.5])
        pairs.append((price, size))
    return pairs


def test_checks_give_the_reason_the_python_rules_gave_on_random_updates() -> None:
    rng = random.Random(18)
    seen = set()
    for _ in range(20_000):
        bids, asks = _random_levels(rng, bad=True), _random_levels(rng, bad=True)
        code = check_levels(levels(bids), levels(asks))
        reason = REJECT_REASON_OF_CHECK[code] if code else 0
        assert reason == depth_reject_reason(bids, asks), (bids, asks)
        seen.add(code)
    assert seen == {0, NOT_FINITE, INVALID_PRICE, INVALID_SIZE, CROSSED}


def _same_book_as_the_python_book(
    rng: random.Random,
    max_levels: int,
    steps: int,
    side: Callable[[random.Random], list[tuple[float, float]]],
    *,
    tops: bool = True,
) -> None:
    """``steps`` updates of two ``side(rng)`` lists each (a clear now and then) leave both books alike
    (with ``tops``, their best bid and ask are checked too)."""
    native, reference = DepthBook(max_levels), ReferenceDepthBook(max_levels)
    for step in range(steps):
        bids, asks = side(rng), side(rng)
        if rng.random() < 0.01:
            native.clear()
            reference.clear()
        native.apply(bids, asks)
        reference.apply(bids, asks)
        assert native.bids(max_levels) == reference.bids(max_levels), step
        assert native.asks(max_levels) == reference.asks(max_levels), step
        if tops:
            assert native.best_bid() == reference.best_bid() and native.best_ask() == reference.best_ask()


@pytest.mark.parametrize("max_levels", [3, 1_000])
def test_random_updates_leave_the_same_book_as_the_python_book(max_levels: int) -> None:
    _same_book_as_the_python_book(
        random.Random(max_levels), max_levels, 5_000, lambda rng: _random_levels(rng, bad=False)
    )


def _ordered_levels(rng: random.Random) -> list[tuple[float, float]]:
    """Distinct prices listed rising or falling, as venues send them: long ones are merged."""
    prices = sorted(rng.sample(range(-60, 60), rng.randint(0, 40)), reverse=rng.random() < 0.5)
    return [(100.0 + p * 0.5, rng.choice([0.0, 1.0, 2.5, 4.0])) for p in prices]


@pytest.mark.parametrize("max_levels", [5, 40, 1_000])
def test_ordered_updates_merged_in_one_pass_leave_the_same_book_as_the_python_book(max_levels: int) -> None:
    _same_book_as_the_python_book(
        random.Random(max_levels + 18), max_levels, 3_000, _ordered_levels, tops=False
    )


def test_top_of_book_gives_both_touches_once_both_sides_have_levels() -> None:
    book = DepthBook(10)
    assert book.top_of_book() is None
    book.apply([(99.0, 1.0), (100.0, 2.0)], [])
    assert book.top_of_book() is None
    book.apply([], [(102.0, 4.0), (101.0, 3.0)])
    assert book.top_of_book() == (100.0, 2.0, 101.0, 3.0)
    assert book.top_of_book() == (*book.best_bid(), *book.best_ask())  # type: ignore[misc]


def test_levels_are_read_from_any_sequence_of_pairs() -> None:
    pairs = [(99.0, 1.0), (98.5, 0.0)]
    for given in (pairs, tuple(pairs), deque(pairs), [[99.0, 1.0], [98.5, 0]]):
        assert [tuple(level) for level in levels(given)] == pairs  # type: ignore[arg-type]
    assert len(levels([])) == 0
    with pytest.raises(IndexError):
        levels([(99.0, 1.0, 5.0)])  # type: ignore[list-item]


def test_top_levels_come_back_as_numpy_arrays_best_first() -> None:
    book = DepthBook(10)
    book.apply([(99.0, 1.0), (100.0, 2.0), (98.0, 3.0)], [(101.0, 4.0), (102.0, 5.0)])
    prices, sizes = book.top(BID, 2)
    assert prices.dtype == np.float64 and prices.tolist() == [100.0, 99.0] and sizes.tolist() == [2.0, 1.0]
    prices, sizes = book.top(ASK, 50)
    assert prices.tolist() == [101.0, 102.0] and sizes.tolist() == [4.0, 5.0]
    assert book.top(ASK, 0)[0].size == 0 and book.bids(0) == [] and book.bids(-1) == []
    with pytest.raises(ValueError, match="side must be BID"):
        book.top(7, 1)


def test_an_update_larger_than_the_bound_is_refused_whole() -> None:
    book = DepthBook(max_levels_per_side=5, max_update_levels=3)
    book.apply([(1.0, 1.0)], [])
    with pytest.raises(OutOfRange):
        book.apply([(2.0, 1.0), (3.0, 1.0), (4.0, 1.0), (5.0, 1.0)], [])
    assert book.bids(10) == [(1.0, 1.0)]


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(InvalidArgument):
        DepthBook(0)
    with pytest.raises(InvalidArgument):
        DepthBook(10, max_update_levels=0)
