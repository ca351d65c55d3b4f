"""Subscriber buffers: FIFO while the reader keeps up, conflation to the latest once it falls behind."""

from __future__ import annotations

from services.marketdata.arbitrage import ArbitrageEvent, ArbitrageKind, EventType
from services.marketdata.fanout import (
    ArbitrageSubscription,
    SubscriberBuffer,
    SymbolFilter,
    SymbolUpdate,
    UpdateKind,
)


def update(symbol: str, sequence: int) -> SymbolUpdate:
    return SymbolUpdate(UpdateKind.QUOTE, sequence, "v", symbol, 1.0, 1.0, 2.0, 1.0, 0, None, 0.0, 0)


def drain(buffer: SubscriberBuffer) -> list[tuple[str, int, int]]:
    taken = []
    while (entry := buffer.take()) is not None:
        taken.append((entry.update.symbol, entry.update.symbol_sequence, entry.conflated))
    return taken


def test_updates_pass_one_by_one_while_the_buffer_has_room() -> None:
    wakeups = []
    buffer = SubscriberBuffer(SymbolFilter(), capacity=4, notify=lambda: wakeups.append(1))
    for seq in (1, 2, 3):
        buffer.offer(("v", "A"), update("A", seq))
    assert drain(buffer) == [("A", 1, 0), ("A", 2, 0), ("A", 3, 0)]
    assert len(wakeups) == 3


def test_a_full_buffer_conflates_each_symbol_to_its_latest_update() -> None:
    buffer = SubscriberBuffer(SymbolFilter(), capacity=3, notify=lambda: None)
    for seq in range(1, 11):
        buffer.offer(("v", "A"), update("A", seq))
        buffer.offer(("v", "B"), update("B", seq))
    # A1, B1, A2 fill it. From then on each update replaces its symbol's newest queued entry:
    # B2..B10 land in B1's slot (9 merged), A3..A10 in A2's (8 merged); queue order is kept.
    assert drain(buffer) == [("A", 1, 0), ("B", 10, 9), ("A", 10, 8)]


def test_a_symbol_with_nothing_queued_still_gets_through_when_full() -> None:
    buffer = SubscriberBuffer(SymbolFilter(), capacity=2, notify=lambda: None)
    for seq in (1, 2, 3):
        buffer.offer(("v", "A"), update("A", seq))
    buffer.offer(("v", "B"), update("B", 1))
    # Bounded by capacity plus one entry per symbol.
    assert drain(buffer) == [("A", 1, 0), ("A", 3, 1), ("B", 1, 0)]


def test_symbol_filter_wildcards() -> None:
    f = SymbolFilter((("binance-spot", ""), ("", "ETHUSDT")))
    assert f.matches("binance-spot", "BTCUSDT")
    assert f.matches("binance-usdm", "ETHUSDT")
    assert not f.matches("binance-usdm", "BTCUSDT")
    assert SymbolFilter().matches("anything", "at all")


def event(opportunity_id: int, kind: ArbitrageKind = ArbitrageKind.CROSS_VENUE) -> ArbitrageEvent:
    return ArbitrageEvent(EventType.OPENED, kind, opportunity_id, (), 1.0, 1.0, 1.0, "USDT", 1, 0, 0, 1, 1.0)


def test_arbitrage_subscription_drops_the_oldest_and_says_how_many() -> None:
    subscription = ArbitrageSubscription([ArbitrageKind.CROSS_VENUE], capacity=2, notify=lambda: None)
    for i in range(1, 6):
        subscription.offer(event(i))
    subscription.offer(event(99, ArbitrageKind.TRIANGULAR))  # not wanted
    first = subscription.take()
    second = subscription.take()
    assert first is not None and second is not None
    assert (first[0].opportunity_id, first[1]) == (4, 3)
    assert (second[0].opportunity_id, second[1]) == (5, 0)
    assert subscription.take() is None


def test_filter_lookups_agree_with_the_pattern_rule_for_every_kind_of_pattern() -> None:
    import itertools
    import random

    venues, names = ["", "a", "b", "c"], ["", "X", "Y", "Z"]
    rng = random.Random(12)
    for _ in range(300):
        patterns = tuple(rng.sample(list(itertools.product(venues, names)), rng.randint(0, 4)))
        f = SymbolFilter(patterns)
        for venue, name in itertools.product([*venues[1:], "d"], [*names[1:], "W"]):
            naive = not patterns or any((not v or v == venue) and (not s or s == name) for v, s in patterns)
            assert f.matches(venue, name) == naive, (patterns, venue, name)


def test_a_filter_of_a_thousand_patterns_does_not_scan_them_per_symbol() -> None:
    import time

    f = SymbolFilter(tuple(("binance-spot", f"S{i}") for i in range(1_024)))
    started = time.perf_counter()
    hits = sum(f.matches("binance-spot", f"S{i}") for i in range(4_096))
    assert hits == 1_024
    # 4M pattern comparisons took ~0.5 s; set lookups take ~1 ms (generous bound for a shared CI box).
    assert time.perf_counter() - started < 0.1
