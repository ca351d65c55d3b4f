"""The price-level book: set, delete, snapshot, stale-level removal, trimming."""

from __future__ import annotations

from services.marketdata.depth_book import DepthBook


def test_levels_are_set_deleted_and_returned_best_first() -> None:
    book = DepthBook(max_levels_per_side=10)
    book.apply([(99.0, 1.0), (100.0, 2.0), (98.0, 3.0)], [(101.0, 1.0), (103.0, 2.0), (102.0, 5.0)])
    assert book.bids(2) == [(100.0, 2.0), (99.0, 1.0)]
    assert book.asks(5) == [(101.0, 1.0), (102.0, 5.0), (103.0, 2.0)]
    book.apply([(100.0, 0.0), (99.0, 4.0)], [(101.0, 0.0), (250.0, 0.0)])  # deleting an absent level is fine
    assert book.best_bid() == (99.0, 4.0)
    assert book.best_ask() == (102.0, 5.0)
    assert book.level_counts() == (2, 2)


def test_a_new_level_through_the_other_side_removes_the_stale_levels() -> None:
    book = DepthBook(max_levels_per_side=10)
    book.apply([(99.0, 1.0)], [(100.0, 1.0), (101.0, 1.0), (102.0, 1.0)])
    book.apply([(101.0, 7.0)], [])  # asks at 100 and 101 cannot still be there
    assert book.best_bid() == (101.0, 7.0)
    assert book.asks(5) == [(102.0, 1.0)]
    book.apply([], [(98.5, 2.0)])
    assert book.bids(5) == []
    assert book.best_ask() == (98.5, 2.0)


def test_levels_beyond_the_limit_are_dropped_far_from_the_touch() -> None:
    book = DepthBook(max_levels_per_side=3)
    book.apply([(float(p), 1.0) for p in range(90, 100)], [(float(p), 1.0) for p in range(101, 111)])
    assert [p for p, _ in book.bids(10)] == [99.0, 98.0, 97.0]
    assert [p for p, _ in book.asks(10)] == [101.0, 102.0, 103.0]
