"""Subscribe fan-out: every update in order while a reader keeps up with the shared log,
conflation to the latest per symbol once it falls behind; arbitrage queues drop the oldest."""

from __future__ import annotations

from hftgate.v1 import marketdata_pb2
from services.marketdata.arbitrage import ArbitrageEvent, ArbitrageKind, EventType
from services.marketdata.fanout import (
    ArbitrageSubscription,
    Subscriber,
    SymbolFilter,
    SymbolUpdate,
    UpdateKind,
    UpdateLog,
)


def update(symbol: str, sequence: int) -> SymbolUpdate:
    return SymbolUpdate(UpdateKind.QUOTE, sequence, "v", symbol, 1.0, 1.0, 2.0, 1.0, 0, None, 0.0, 0)


def drain(subscriber: Subscriber) -> list[tuple[str, int, int]]:
    taken = []
    while (entry := subscriber.take()) is not None:
        taken.append((entry.update.symbol, entry.update.symbol_sequence, entry.conflated))
    return taken


def test_updates_pass_one_by_one_while_the_reader_keeps_up() -> None:
    wakeups = []
    log = UpdateLog(capacity=4)
    subscriber = Subscriber(log, SymbolFilter(), notify=lambda: wakeups.append(1))
    assert subscriber.take() is None  # now waiting: the next append wakes it, once
    for seq in (1, 2, 3):
        log.append(("v", "A"), update("A", seq))
    assert len(subscriber) == 3
    assert drain(subscriber) == [("A", 1, 0), ("A", 2, 0), ("A", 3, 0)]
    assert len(wakeups) == 1


def test_a_reader_behind_the_log_gets_each_symbol_latest_update_with_the_merged_count() -> None:
    log = UpdateLog(capacity=3)
    subscriber = Subscriber(log, SymbolFilter(), notify=lambda: None)
    for seq in range(1, 11):
        log.append(("v", "A"), update("A", seq))
        log.append(("v", "B"), update("B", seq))
    # 20 updates, the log keeps 3: the reader cannot have them in order, so it gets each
    # symbol's latest, counting the 9 earlier updates of each merged into it.
    assert len(subscriber) <= 3 + 2  # the log's capacity plus one per symbol
    assert drain(subscriber) == [("A", 10, 9), ("B", 10, 9)]
    log.append(("v", "A"), update("A", 11))  # caught up: in order again
    assert drain(subscriber) == [("A", 11, 0)]


def test_conflation_counts_from_what_the_reader_already_got() -> None:
    log = UpdateLog(capacity=2)
    subscriber = Subscriber(log, SymbolFilter(), notify=lambda: None)
    log.append(("v", "A"), update("A", 1))
    assert drain(subscriber) == [("A", 1, 0)]
    for seq in (2, 3, 4):
        log.append(("v", "A"), update("A", seq))
    log.append(("v", "B"), update("B", 1))
    # A2 and A3 merged into A4; B1 has nothing merged.
    assert drain(subscriber) == [("A", 4, 2), ("B", 1, 0)]


def test_a_symbol_still_queued_when_the_reader_falls_behind_again_merges_instead_of_queueing() -> None:
    log = UpdateLog(capacity=2)
    subscriber = Subscriber(log, SymbolFilter(), notify=lambda: None)
    for seq in (1, 2, 3):
        log.append(("v", "A"), update("A", seq))
        log.append(("v", "B"), update("B", seq))
    assert drain_one(subscriber) == ("A", 3, 2)  # B3 (2 merged) stays queued
    for seq in (4, 5, 6):
        log.append(("v", "B"), update("B", seq))
    # Behind again: B6 merges into the queued B3, so B never has two queued updates.
    assert len(subscriber) <= 2 + 2
    assert drain(subscriber) == [("B", 6, 5)]


def drain_one(subscriber: Subscriber) -> tuple[str, int, int]:
    entry = subscriber.take()
    assert entry is not None
    return entry.update.symbol, entry.update.symbol_sequence, entry.conflated


def test_a_filtered_reader_sees_only_its_symbols_and_encodings_are_made_once() -> None:
    log = UpdateLog(capacity=8)
    everything = Subscriber(log, SymbolFilter(), notify=lambda: None)
    only_b = Subscriber(log, SymbolFilter((("", "B"),)), notify=lambda: None)
    encoded: list[int] = []

    def encode(u: SymbolUpdate) -> bytes:
        encoded.append(u.symbol_sequence)
        return f"{u.symbol}{u.symbol_sequence}".encode()

    def conflated(u: SymbolUpdate, merged: int) -> bytes:
        return f"{u.symbol}{u.symbol_sequence}+{merged}".encode()

    for seq in (1, 2):
        log.append(("v", "A"), update("A", seq))
        log.append(("v", "B"), update("B", seq))
    assert joined(everything.take_encoded(3, encode, conflated)) == (b"A1B1A2", 3)
    assert joined(only_b.take_encoded(10, encode, conflated)) == (b"B1B2", 2)
    assert joined(everything.take_encoded(10, encode, conflated)) == (b"B2", 1)
    assert sorted(encoded) == [1, 1, 2, 2]  # each update encoded once for both readers
    assert everything.take_encoded(10, encode, conflated) is None
    assert only_b.last_sequence == {("v", "B"): 2}
    assert everything.last_sequence == {("v", "A"): 2, ("v", "B"): 2}


def joined(taken: tuple[list[bytes], int] | None) -> tuple[bytes, int]:
    assert taken is not None
    parts, count = taken
    return b"".join(parts), count


def test_readers_of_everything_at_the_same_place_share_one_run() -> None:
    log = UpdateLog(capacity=8)
    first = Subscriber(log, SymbolFilter(), notify=lambda: None)
    second = Subscriber(log, SymbolFilter(), notify=lambda: None)
    encoded: list[int] = []

    def encode(u: SymbolUpdate) -> bytes:
        encoded.append(u.symbol_sequence)
        return f"{u.symbol}{u.symbol_sequence}".encode()

    def conflated(u: SymbolUpdate, merged: int) -> bytes:
        return f"{u.symbol}{u.symbol_sequence}+{merged}".encode()

    for seq in (1, 2, 3):
        log.append(("v", "A"), update("A", seq))
    log.append(("v", "B"), update("B", 1))
    first_taken = first.take_encoded(10, encode, conflated)
    second_taken = second.take_encoded(10, encode, conflated)
    assert first_taken is not None and second_taken is not None
    assert first_taken == second_taken
    assert joined(first_taken) == (b"A1A2A3B1", 4)
    assert first_taken[0][0] is second_taken[0][0]  # one join for both
    assert encoded == [1, 2, 3, 1]
    assert first.last_sequence == second.last_sequence == {("v", "A"): 3, ("v", "B"): 1}


def test_a_shared_run_leaves_conflation_counts_exact() -> None:
    log = UpdateLog(capacity=4)
    reader = Subscriber(log, SymbolFilter(), notify=lambda: None)

    def encode(u: SymbolUpdate) -> bytes:
        return f"{u.symbol}{u.symbol_sequence}".encode()

    def conflated(u: SymbolUpdate, merged: int) -> bytes:
        return f"{u.symbol}{u.symbol_sequence}+{merged}".encode()

    for seq in (1, 2):
        log.append(("v", "A"), update("A", seq))
    assert joined(reader.take_encoded(10, encode, conflated)) == (b"A1A2", 2)
    for seq in range(3, 10):  # 7 updates into a ring of 4: the reader falls behind
        log.append(("v", "A"), update("A", seq))
    # A2 was the last sent, so A9 stands for A3..A9: 6 merged into it.
    assert joined(reader.take_encoded(10, encode, conflated)) == (b"A9+6", 1)


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


def test_arbitrage_subscription_wakes_its_writer_only_when_its_queue_was_empty() -> None:
    """The writer waits only on an empty queue, so one wake-up per empty-to-not-empty is enough;
    a stream that stopped reading costs ingest no wake-up per event."""
    wakeups: list[int] = []
    subscription = ArbitrageSubscription([], capacity=3, notify=lambda: wakeups.append(1))
    for i in range(1, 8):
        subscription.offer(event(i))
    assert len(wakeups) == 1 and len(subscription) == 3
    taken = [subscription.take() for _ in range(3)]
    assert [(t[0].opportunity_id, t[1]) for t in taken if t] == [(5, 4), (6, 0), (7, 0)]
    assert subscription.take() is None
    subscription.offer(event(8))
    assert len(wakeups) == 2


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


def test_the_engine_logs_updates_encoded_and_a_reader_behind_gets_each_symbols_state() -> None:
    """The engine logs encoded bytes (no tuple); a reader that keeps up gets them as Subscribe's
    messages, one that fell behind gets each symbol's latest update from its state, counted."""
    from dataclasses import replace

    from hftgate.v1 import marketdata_pb2 as pb
    from services.marketdata import wire
    from services.marketdata.config import MarketDataConfig
    from services.marketdata.engine import MarketDataEngine

    engine = MarketDataEngine(
        replace(MarketDataConfig(), subscriber_buffer_updates=4), wall_clock_ns=lambda: 2 * 10**18
    )
    keeping_up = engine.subscribe(SymbolFilter(), notify=lambda: None)
    behind = engine.subscribe(SymbolFilter(), notify=lambda: None)

    def quote(symbol: str, n: int) -> None:
        reason = engine.on_quote(
            "binance-spot", symbol, 10**18 + n, 10**18 + n, n, 100.0 + n, 1.0, 101.0 + n, 2.0
        )
        assert reason == 0

    quote("BTCUSDT", 1)
    entry = keeping_up.take()
    assert entry is not None and entry.update is None and entry.frame is not None
    message = pb.MarketUpdate.FromString(wire.single_message_of_frame(entry.frame, 7))
    assert (message.stream_sequence, message.symbol.name, message.symbol_sequence) == (7, "BTCUSDT", 1)
    assert (message.top.bid_price, message.receive_ts_ns, message.conflated) == (101.0, 10**18 + 1, 0)
    assert keeping_up.take() is None
    for n in range(2, 12):  # 10 more updates of each symbol: the reader behind loses the order
        quote("BTCUSDT", n)
        quote("ETHUSDT", n)
    drained = []
    while (entry := behind.take()) is not None:
        assert entry.update is not None  # the latest of each symbol, built from its state
        drained.append((entry.update.symbol, entry.update.symbol_sequence, entry.conflated))
        first_n = 1 if entry.update.symbol == "BTCUSDT" else 2  # (ETHUSDT's first quote is n=2)
        assert entry.update.bid_price == 100.0 + entry.update.symbol_sequence + first_n - 1
        assert entry.update.receive_ts_ns == 10**18 + 11
    assert drained == [("BTCUSDT", 11, 10), ("ETHUSDT", 10, 9)]


def test_with_no_reader_keeping_up_the_engine_builds_nothing_per_update_and_readers_conflate() -> None:
    """Streams that stopped reading cost ingest no update built or encoded (no stream can read
    it from the ring: each conflates from the symbol's latest); a stream that reads again gets
    the latest state with the merged count, and the engine logs encoded bytes again."""
    from dataclasses import replace

    from services.marketdata import wire
    from services.marketdata.config import MarketDataConfig
    from services.marketdata.engine import MarketDataEngine

    engine = MarketDataEngine(
        replace(MarketDataConfig(), subscriber_buffer_updates=8), wall_clock_ns=lambda: 2 * 10**18
    )
    reader = engine.subscribe(SymbolFilter(), notify=lambda: None)
    log = engine.updates

    def quote(n: int) -> None:
        assert (
            engine.on_quote("binance-spot", "BTCUSDT", 10**18 + n, 10**18 + n, n, 100.0, 1.0, 101.0, 2.0) == 0
        )

    def encoded(index: int) -> bool:
        return log.logged(index).frame is not None

    for n in range(1, 9):  # a reader within the log's capacity (it has not read yet)
        quote(n)
    assert all(encoded(i) for i in range(8)) and not log.readers_keep_up
    built: list[str] = []
    encode_state, update_of = engine._encode_state, engine._update_of
    engine._encode_state = lambda *a: built.append("frame") or encode_state(*a)  # type: ignore[method-assign]
    engine._update_of = lambda *a: built.append("tuple") or update_of(*a)  # type: ignore[method-assign]
    for n in range(9, 13):  # nobody read the last 8: counted, nothing built
        quote(n)
    assert built == [] and log.head == 12
    engine._encode_state, engine._update_of = encode_state, update_of  # type: ignore[method-assign]
    taken = reader.take_encoded(100, wire.framed_update, wire.framed_conflated_update)
    assert taken is not None and taken[1] == 1  # it fell behind: BTCUSDT's latest, conflated
    sent = marketdata_pb2.MarketUpdates.FromString(b"".join(taken[0])).updates[0]
    assert (sent.symbol_sequence, sent.conflated, sent.top.bid_price) == (12, 11, 100.0)
    assert log.readers_keep_up
    for n in range(13, 17):
        quote(n)
    assert all(encoded(i) for i in range(12, 16))
    # Tuples and frames read alike: protobuf's entries for the symbol's sequences 12 and 13.
    log.append(("binance-spot", "BTCUSDT"), log.latest_update(log.latest[("binance-spot", "BTCUSDT")]))
    frames = log.frames(14, 17, wire.framed_update)
    assert frames[-1] == frames[-2]  # the tuple of sequence 16 is encoded as its frame was
