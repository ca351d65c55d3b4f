"""The ordering rule (services.marketdata.ordering, documented in marketdata.proto), in the engine
with an injected clock: one bad tick cannot lock a symbol, and a feed that really moved is followed."""

from __future__ import annotations

import pytest

from services.marketdata.config import MarketDataConfig
from services.marketdata.engine import MarketDataEngine, RejectReason
from services.marketdata.ordering import RESYNCED_BACK, OrderingRule, OrderKey

S = 1_000_000_000
MINUTE = 60 * S
NOW = 1_760_000_000 * S
PAST = 1_723_161_240 * S  # the recorded Binance window, 2024-08-08
J = RejectReason.JUMP


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


def engine(clock: Clock | None = None, **config: object) -> MarketDataEngine:
    return MarketDataEngine(MarketDataConfig(**config), wall_clock_ns=clock or Clock())  # type: ignore[arg-type]


def trade(
    e: MarketDataEngine, ts: int, trade_id: int = 0, price: float = 100.0, symbol: str = "BTCUSDT"
) -> int:
    return e.on_trade("binance-spot", symbol, ts, 0, trade_id, price, 1.0, 0)


def quote(e: MarketDataEngine, ts: int, sequence: int = 0, bid: float = 99.0) -> int:
    return e.on_quote("binance-spot", "BTCUSDT", ts, 0, sequence, bid, 1.0, 101.0, 1.0)


def depth(e: MarketDataEngine, ts: int, sequence: int = 0) -> int:
    return e.on_depth("bybit", "XRPUSDT", ts, 0, sequence, True, [(1.0, 1.0)], [(1.1, 1.0)])


def test_near_duplicates_and_reordering_keep_their_reasons() -> None:
    e = engine()
    assert trade(e, PAST, 10) == 0
    assert trade(e, PAST, 10) == RejectReason.DUPLICATE
    assert trade(e, PAST + S, 9) == RejectReason.DUPLICATE
    assert trade(e, PAST - S, 11) == RejectReason.OUT_OF_ORDER
    assert trade(e, PAST + 9 * MINUTE, 11) == 0  # within max_time_jump_ms (10 min)
    # Many near rejects in a row never move the symbol (resends are not a resync).
    assert [trade(e, PAST + 9 * MINUTE - i, 0) for i in range(1, 6)] == [RejectReason.OUT_OF_ORDER] * 5
    assert e.get("binance-spot", "BTCUSDT").trade_order.ts == PAST + 9 * MINUTE


@pytest.mark.parametrize(
    ("ts_delta", "id_delta"),
    [(11 * MINUTE, 1), (-11 * MINUTE, 1), (S, 2**32 + 1), (S, 2**64 - 1 - 2**33), (S, -(2**32) - 1)],
    ids=["time-ahead", "time-behind", "id-ahead", "id-2^64-1", "id-behind"],
)
def test_one_far_tick_is_a_jump_and_changes_nothing(ts_delta: int, id_delta: int) -> None:
    e = engine()
    assert trade(e, PAST, 2**33) == 0
    state = e.get("binance-spot", "BTCUSDT")
    bars_before = [series.bars(include_open=True) for series in state.bars]
    assert trade(e, PAST + ts_delta, 2**33 + id_delta, price=1.0) == J
    assert (state.trade_count, state.last_trade_price, state.trade_order.ts) == (1, 100.0, PAST)
    assert [series.bars(include_open=True) for series in state.bars] == bars_before
    assert trade(e, PAST + S, 2**33 + 1) == 0  # the real feed carries on
    assert e.stats().rejected_by_reason == {J: 1}


def test_quotes_and_depth_follow_the_same_rule_each_on_its_own() -> None:
    e = engine()
    assert quote(e, PAST, 100) == 0
    assert quote(e, NOW, 101, bid=1.0) == J
    assert quote(e, PAST + S, 2**40) == J
    assert quote(e, PAST + S, 101) == 0
    assert e.get("binance-spot", "BTCUSDT").bid_price == 99.0
    assert depth(e, PAST, 5) == 0
    assert depth(e, NOW, 6) == J
    assert depth(e, PAST + S, 6) == 0
    # Trades of the quoted symbol have a reference of their own.
    assert trade(e, NOW - S) == 0


def test_a_bad_first_tick_gives_way_after_resync_after_ticks_agreeing_ticks() -> None:
    e = engine(resync_after_ticks=3)
    assert trade(e, NOW, 2**64 - 1, price=1.0) == 0  # nothing to compare a first tick with
    results = [trade(e, PAST + i * S, 1_000 + i) for i in range(5)]
    assert results == [J, J, 0, 0, 0]
    state = e.get("binance-spot", "BTCUSDT")
    # Moved back in time: the trade history restarted, so the bad tick left no trace in it.
    assert state.trades is not None and len(state.trades) == 3
    assert state.vwap == 100.0
    assert [b.low for b in state.bars[1].bars(include_open=True)] == [100.0]
    assert (state.last_trade_id, state.trade_count) == (1_004, 4)


def test_far_ticks_that_do_not_agree_never_move_the_symbol() -> None:
    e = engine(resync_after_ticks=3)
    assert trade(e, PAST, 1) == 0
    # An attacker's ticks scattered far away, interleaved with the real feed.
    for i in range(10):
        assert trade(e, NOW - i * MINUTE * 20, 0, price=1.0) == J
    for i in range(3):
        assert trade(e, NOW + i, 0, price=1.0) == J
        assert trade(e, PAST + (i + 1) * S, 2 + i) == 0  # each real tick resets the candidates
    assert e.get("binance-spot", "BTCUSDT").last_trade_price == 100.0


def test_a_feed_that_really_jumped_ahead_is_followed_after_resync_after_ticks() -> None:
    e = engine(resync_after_ticks=2)
    assert trade(e, PAST, 1) == 0
    later = PAST + 3 * 3600 * S  # a replay restarted three hours later
    assert [trade(e, later + i * S, 50_000 + i) for i in range(4)] == [J, 0, 0, 0]
    state = e.get("binance-spot", "BTCUSDT")
    assert state.trades is not None and len(state.trades) == 4  # forward: the history is kept


def test_a_live_feed_quiet_for_hours_is_in_sequence_by_the_wall_time_elapsed() -> None:
    clock = Clock()
    e = engine(clock)
    assert trade(e, NOW - S, 1) == 0
    clock.now += 5 * 3600 * S
    assert trade(e, clock.now - S, 2) == 0  # five hours later, five hours of wall time
    # The same gap without the wall time (a replay at full speed) is a jump.
    assert trade(e, clock.now - S + 5 * 3600 * S, 3) == RejectReason.BAD_TIMESTAMP
    replay = engine(clock)
    assert trade(replay, PAST, 1) == 0
    assert trade(replay, PAST + 5 * 3600 * S, 2) == J


def test_a_wall_clock_stepping_back_leaves_the_fixed_bound() -> None:
    rule = OrderingRule(10, 5, 2)
    key = OrderKey()
    assert rule.admit(key, 100, 0, 1_000) == 0
    assert rule.admit(key, 110, 0, 500) == 0  # elapsed wall time counts as 0, not -500
    assert rule.admit(key, 121, 0, 400) == J


def test_the_rule_checks_its_bounds() -> None:
    with pytest.raises(ValueError):
        OrderingRule(0, 1, 3)
    with pytest.raises(ValueError, match="resync_after_ticks"):
        MarketDataConfig(resync_after_ticks=1)
    rule = OrderingRule(10, 5, 2)
    key = OrderKey()
    assert rule.admit(key, 100, 0, 0) == 0
    assert rule.admit(key, 50, 0, 0) == J
    assert rule.admit(key, 51, 0, 0) == RESYNCED_BACK
    assert (key.ts, key.candidates) == (51, 0)
