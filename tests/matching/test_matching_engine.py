"""Every order type and its edge cases, through the C engine's Python face."""

from __future__ import annotations

import numpy as np
import pytest

from hftgate.matching import (
    EngineConfig,
    EventType,
    MatchingEngine,
    OrderBook,
    OrderFlag,
    Reason,
    Side,
    StpMode,
    TimeInForce,
)
from hftgate.native.errors import AlreadyExists, InvalidArgument, NotFound

BUY, SELL = Side.BUY, Side.SELL


def make_engine(**overrides: int) -> MatchingEngine:
    config = EngineConfig(**{"max_symbols": 4, "market_protection_ticks": 5, **overrides})  # type: ignore[arg-type]
    return MatchingEngine(config)


def kinds(events: np.ndarray) -> list[EventType]:
    return [EventType(t) for t in events["type"]]


def fills(events: np.ndarray) -> list[tuple[int, int, int]]:
    """(maker id, price, qty) of each fill, in order."""
    chosen = events[events["type"] == EventType.FILL]
    return list(
        zip(chosen["maker_order_id"].tolist(), chosen["price"].tolist(), chosen["qty"].tolist(), strict=True)
    )


def ids(engine: MatchingEngine, side: Side, symbol: int = 0) -> list[int]:
    return engine.orders(side, symbol=symbol)["order_id"].tolist()


# --- limit orders, priority, queries ---------------------------------------------------------------


def test_limit_orders_rest_in_price_time_priority_and_show_in_depth() -> None:
    engine = make_engine()
    engine.submit_limit(1, BUY, 100, 5)
    engine.submit_limit(2, BUY, 101, 3)
    engine.submit_limit(3, BUY, 100, 4)
    engine.submit_limit(4, SELL, 105, 2)
    assert engine.best_bid() == (101, 3)
    assert engine.best_ask() == (105, 2)
    assert ids(engine, BUY) == [2, 1, 3]
    assert engine.depth(BUY).tolist() == [(101, 3, 1, 0), (100, 9, 2, 0)]
    assert len(engine.depth(BUY, levels=1)) == 1
    assert engine.last_trade_price() is None
    assert engine.live_orders == 4


def test_ack_comes_first_and_carries_the_order() -> None:
    events = make_engine().submit_limit(7, SELL, 120, 3, account=9)
    assert kinds(events) == [EventType.ACK]
    ack = events[0]
    assert (ack["order_id"], ack["account_id"], ack["price"], ack["qty"], ack["leaves_qty"]) == (
        7,
        9,
        120,
        3,
        3,
    )


def test_taker_fills_across_levels_at_maker_prices() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 101, 2)
    engine.submit_limit(2, SELL, 102, 3)
    engine.submit_limit(3, SELL, 101, 1)
    events = engine.submit_limit(4, BUY, 102, 5)
    assert fills(events) == [(1, 101, 2), (3, 101, 1), (2, 102, 2)]
    assert events[events["type"] == EventType.FILL]["leaves_qty"].tolist() == [3, 2, 0]
    assert events[-1]["maker_leaves_qty"] == 1
    assert engine.best_ask() == (102, 1)
    assert engine.best_bid() is None
    assert engine.last_trade_price() == 102


def test_gtc_remainder_rests_at_its_limit() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 2)
    engine.submit_limit(2, BUY, 101, 5)
    assert engine.best_bid() == (101, 3)
    assert engine.best_ask() is None


def test_ioc_remainder_expires() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 2)
    events = engine.submit_limit(2, BUY, 100, 5, tif=TimeInForce.IOC)
    assert kinds(events) == [EventType.ACK, EventType.FILL, EventType.EXPIRED]
    assert (events[-1]["qty"], events[-1]["reason"]) == (3, Reason.UNFILLED)
    assert engine.live_orders == 0


def test_fok_when_book_too_thin_expires_without_fills() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 2)
    engine.submit_limit(2, SELL, 101, 2)
    engine.submit_limit(3, SELL, 102, 9)
    events = engine.submit_limit(4, BUY, 101, 5, tif=TimeInForce.FOK)
    assert kinds(events) == [EventType.ACK, EventType.EXPIRED]
    assert events[-1]["reason"] == Reason.FOK_UNFILLABLE
    assert engine.live_orders == 3


def test_fok_with_exactly_enough_fills_completely() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 2)
    engine.submit_limit(2, SELL, 101, 2)
    events = engine.submit_limit(3, BUY, 101, 4, tif=TimeInForce.FOK)
    assert fills(events) == [(1, 100, 2), (2, 101, 2)]


def test_fok_counts_iceberg_reserve() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 10, display_qty=2)
    events = engine.submit_limit(2, BUY, 100, 9, tif=TimeInForce.FOK)
    assert sum(qty for _, _, qty in fills(events)) == 9


def test_market_order_stops_at_the_protection_band() -> None:
    engine = make_engine()  # band: 5 ticks
    engine.submit_limit(1, SELL, 100, 2)
    engine.submit_limit(2, SELL, 105, 2)
    engine.submit_limit(3, SELL, 106, 2)
    events = engine.submit_market(4, BUY, 10)
    assert events[0]["price"] == 105  # the ACK shows the band edge
    assert fills(events) == [(1, 100, 2), (2, 105, 2)]
    assert (events[-1]["type"], events[-1]["qty"]) == (EventType.EXPIRED, 6)


def test_market_order_on_an_empty_side_is_rejected() -> None:
    events = make_engine().submit_market(1, SELL, 3)
    assert (events[0]["type"], events[0]["reason"]) == (EventType.REJECT, Reason.NO_LIQUIDITY)


def test_market_fok_is_all_or_nothing_inside_the_band() -> None:
    engine = make_engine()
    engine.submit_limit(1, BUY, 100, 2)
    engine.submit_limit(2, BUY, 90, 5)  # outside the 5-tick band
    events = engine.submit_market(3, SELL, 4, tif=TimeInForce.FOK)
    assert events[-1]["reason"] == Reason.FOK_UNFILLABLE
    assert engine.live_orders == 2


# --- post-only ------------------------------------------------------------------------------------


def test_post_only_that_would_take_is_rejected() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 101, 1)
    events = engine.submit_limit(2, BUY, 101, 1, flags=OrderFlag.POST_ONLY)
    assert (events[0]["type"], events[0]["reason"]) == (EventType.REJECT, Reason.POST_ONLY_WOULD_TAKE)
    assert engine.live_orders == 1


def test_post_only_slide_rests_one_tick_behind_the_best_opposite_price() -> None:
    engine = make_engine()
    engine.submit_limit(1, BUY, 99, 1)
    events = engine.submit_limit(2, SELL, 95, 1, flags=OrderFlag.POST_ONLY_SLIDE)
    assert kinds(events) == [EventType.ACK]
    assert (events[0]["price"], events[0]["reason"]) == (100, Reason.REPRICED)
    assert engine.best_ask() == (100, 1)


def test_post_only_that_does_not_cross_rests_normally() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 101, 1)
    events = engine.submit_limit(2, BUY, 100, 1, flags=OrderFlag.POST_ONLY)
    assert (kinds(events), events[0]["reason"]) == ([EventType.ACK], Reason.NONE)


# --- cancel, replace, cancel-all ------------------------------------------------------------------


def test_cancel_removes_the_order_and_reports_its_open_quantity() -> None:
    engine = make_engine()
    engine.submit_limit(1, BUY, 100, 5, account=7)
    events = engine.cancel(1, account=7)
    assert (events[0]["type"], events[0]["qty"], events[0]["reason"]) == (
        EventType.CANCELED,
        5,
        Reason.USER_CANCEL,
    )
    assert engine.best_bid() is None
    assert engine.order(1) is None


def test_cancel_of_unknown_or_foreign_order_is_rejected() -> None:
    engine = make_engine()
    engine.submit_limit(1, BUY, 100, 5, account=7)
    assert engine.cancel(1, account=8)[0]["reason"] == Reason.ACCOUNT_MISMATCH
    assert engine.cancel(2, account=7)[0]["reason"] == Reason.UNKNOWN_ORDER
    assert engine.live_orders == 1


def test_replace_quantity_down_keeps_time_priority() -> None:
    engine = make_engine()
    engine.submit_limit(1, BUY, 100, 5)
    engine.submit_limit(2, BUY, 100, 5)
    events = engine.replace(1, 100, 3)
    assert (events[0]["type"], events[0]["qty"]) == (EventType.REPLACED, 3)
    assert ids(engine, BUY) == [1, 2]
    assert engine.best_bid() == (100, 8)


def test_replace_quantity_up_loses_time_priority() -> None:
    engine = make_engine()
    engine.submit_limit(1, BUY, 100, 5)
    engine.submit_limit(2, BUY, 100, 5)
    engine.replace(1, 100, 6)
    assert ids(engine, BUY) == [2, 1]


def test_replace_price_change_loses_time_priority_even_when_coming_back() -> None:
    engine = make_engine()
    engine.submit_limit(1, BUY, 100, 5)
    engine.submit_limit(2, BUY, 100, 5)
    engine.replace(1, 99, 5)
    engine.replace(1, 100, 5)
    assert ids(engine, BUY) == [2, 1]


def test_replace_to_a_crossing_price_trades_then_rests() -> None:
    engine = make_engine()
    engine.submit_limit(1, BUY, 100, 4)
    engine.submit_limit(2, SELL, 102, 1)
    events = engine.replace(1, 102, 4)
    assert kinds(events) == [EventType.REPLACED, EventType.FILL]
    assert engine.best_bid() == (102, 3)


def test_replace_of_an_iceberg_gives_up_reserve_first() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 10, display_qty=3)
    engine.replace(1, 100, 5)
    order = engine.order(1)
    assert order is not None
    assert (order["visible_qty"], order["hidden_qty"]) == (3, 2)


def test_a_pending_stop_can_be_replaced_and_keeps_its_place_only_when_reduced() -> None:
    engine = make_engine()
    engine.submit_stop(1, BUY, 110, 5, limit_price=111)
    engine.submit_stop(2, BUY, 110, 5, limit_price=111)
    assert kinds(engine.replace(1, 111, 3)) == [EventType.REPLACED]  # reduced: still first
    assert engine.orders(BUY, pending_stops=True)["order_id"].tolist() == [1, 2]
    assert kinds(engine.replace(2, 112, 5)) == [EventType.REPLACED]  # a new limit price: behind
    stops = engine.orders(BUY, pending_stops=True)
    assert stops["order_id"].tolist() == [1, 2] and stops["price"].tolist() == [111, 112]
    assert engine.replace(1, 111, 0)[0]["reason"] == Reason.INVALID_QTY


def test_replace_rejects_bad_quantity() -> None:
    engine = make_engine()
    engine.submit_limit(1, BUY, 100, 5)
    assert engine.replace(1, 100, 0)[0]["reason"] == Reason.INVALID_QTY


def test_cancel_all_removes_only_that_accounts_orders_in_book_order() -> None:
    engine = make_engine()
    engine.add_symbol(1)
    engine.submit_limit(1, BUY, 100, 5, account=7)
    engine.submit_limit(2, BUY, 101, 5, account=8)
    engine.submit_limit(3, SELL, 103, 5, account=7)
    engine.submit_limit(4, BUY, 102, 5, account=7)
    engine.submit_stop(5, SELL, 90, 1, account=7)
    engine.submit_limit(6, BUY, 50, 1, symbol=1, account=7)
    events = engine.cancel_all(7, symbol=0)
    assert events["order_id"].tolist() == [4, 1, 3, 5]
    assert set(events["reason"].tolist()) == {Reason.CANCEL_ALL}
    assert engine.live_orders == 2
    assert engine.cancel_all(7)["order_id"].tolist() == [6]  # every book
    assert engine.cancel_all(7, symbol=3)[0]["reason"] == Reason.UNKNOWN_SYMBOL


# --- self-trade prevention --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected_kinds", "remaining_asks"),
    [
        (StpMode.CANCEL_RESTING, [EventType.ACK, EventType.CANCELED, EventType.FILL], [2]),
        (StpMode.CANCEL_TAKER, [EventType.ACK, EventType.CANCELED], [1, 2]),
        (StpMode.CANCEL_BOTH, [EventType.ACK, EventType.CANCELED, EventType.CANCELED], [2]),
        (StpMode.DECREMENT, [EventType.ACK, EventType.CANCELED, EventType.CANCELED, EventType.FILL], [2]),
        (StpMode.NONE, [EventType.ACK, EventType.FILL, EventType.FILL], [2]),
    ],
)
def test_self_trade_prevention_modes(
    mode: StpMode, expected_kinds: list[EventType], remaining_asks: list[int]
) -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 2, account=7)  # own order, first in the queue
    engine.submit_limit(2, SELL, 100, 4, account=8)
    events = engine.submit_limit(3, BUY, 100, 3, account=7, stp=mode)
    assert kinds(events) == expected_kinds
    assert ids(engine, SELL) == remaining_asks
    assert all(e["reason"] == Reason.SELF_TRADE for e in events if e["type"] == EventType.CANCELED)


def test_decrement_reduces_both_by_the_smaller_quantity() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 5, account=7)
    events = engine.submit_limit(2, BUY, 100, 3, account=7, stp=StpMode.DECREMENT)
    cancels = events[events["type"] == EventType.CANCELED]
    assert cancels[["order_id", "qty", "leaves_qty"]].tolist() == [(1, 3, 2), (2, 3, 0)]
    assert engine.best_ask() == (100, 2)


def test_engine_default_stp_applies_when_the_order_does_not_choose() -> None:
    engine = make_engine(default_stp_mode=StpMode.CANCEL_TAKER)
    engine.submit_limit(1, SELL, 100, 2, account=7)
    events = engine.submit_limit(2, BUY, 100, 2, account=7)
    assert events[-1]["order_id"] == 2 and events[-1]["reason"] == Reason.SELF_TRADE


def test_anonymous_account_is_never_self_trade_checked() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 2)
    assert fills(engine.submit_limit(2, BUY, 100, 2)) == [(1, 100, 2)]


def test_fok_fails_when_self_trade_prevention_would_cancel_the_taker() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 5, account=7)
    engine.submit_limit(2, SELL, 100, 5, account=8)
    events = engine.submit_limit(3, BUY, 100, 2, account=7, tif=TimeInForce.FOK, stp=StpMode.CANCEL_TAKER)
    assert events[-1]["reason"] == Reason.FOK_UNFILLABLE
    assert engine.live_orders == 2


# --- stops ------------------------------------------------------------------------------------------


def test_stop_waits_until_the_last_trade_reaches_it() -> None:
    engine = make_engine()
    assert kinds(engine.submit_stop(1, BUY, 102, 1, limit_price=103)) == [EventType.ACK]
    assert engine.orders(BUY, pending_stops=True)["order_id"].tolist() == [1]
    assert engine.best_bid() is None
    engine.submit_limit(2, SELL, 101, 1)
    engine.submit_limit(3, BUY, 101, 1)  # trades at 101: not yet
    assert engine.order(1)["is_pending_stop"] == 1  # type: ignore[index]


def test_stops_trigger_in_stop_price_order_and_cascade() -> None:
    engine = make_engine()
    for order_id, price in ((1, 101), (2, 102), (3, 103)):
        engine.submit_limit(order_id, SELL, price, 1)
    engine.submit_stop(10, BUY, 102, 1, limit_price=102)
    engine.submit_stop(11, BUY, 101, 1)  # stop-market
    events = engine.submit_limit(4, BUY, 101, 1)
    triggered = events[events["type"] == EventType.TRIGGERED]
    assert triggered["order_id"].tolist() == [11, 10]
    assert triggered["price"].tolist() == [101, 102]  # the last trade that elected each
    assert fills(events) == [(1, 101, 1), (2, 102, 1)]
    assert engine.best_bid() == (102, 1)  # stop 10's limit order rests
    assert engine.orders(BUY, pending_stops=True).size == 0


def test_stops_at_the_same_price_trigger_oldest_first() -> None:
    engine = make_engine()
    engine.submit_stop(1, SELL, 99, 1, limit_price=90)
    engine.submit_stop(2, SELL, 99, 1, limit_price=90)
    engine.submit_limit(3, BUY, 99, 1)
    events = engine.submit_limit(4, SELL, 99, 1)
    assert events[events["type"] == EventType.TRIGGERED]["order_id"].tolist() == [1, 2]


def test_stop_already_elected_triggers_on_arrival() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 1)
    engine.submit_limit(2, BUY, 100, 1)
    engine.submit_limit(3, BUY, 99, 1)
    events = engine.submit_stop(4, SELL, 100, 1)
    assert kinds(events) == [EventType.ACK, EventType.TRIGGERED, EventType.FILL]
    assert fills(events) == [(3, 99, 1)]


def test_stop_market_with_no_liquidity_at_trigger_expires() -> None:
    engine = make_engine()
    engine.submit_stop(1, BUY, 100, 1)
    engine.submit_limit(2, SELL, 100, 1)
    events = engine.submit_limit(3, BUY, 100, 1)
    assert (events[-1]["type"], events[-1]["order_id"], events[-1]["reason"]) == (
        EventType.EXPIRED,
        1,
        Reason.NO_LIQUIDITY,
    )


def test_pending_stop_can_be_cancelled() -> None:
    engine = make_engine()
    engine.submit_stop(1, SELL, 90, 3, limit_price=89)
    events = engine.cancel(1)
    assert (events[0]["type"], events[0]["qty"]) == (EventType.CANCELED, 3)
    assert engine.live_orders == 0


# --- icebergs ---------------------------------------------------------------------------------------


def test_iceberg_shows_only_its_display_quantity() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 10, display_qty=3)
    assert engine.best_ask() == (100, 3)
    order = engine.order(1)
    assert order is not None
    assert (order["visible_qty"], order["hidden_qty"], order["display_qty"]) == (3, 7, 3)


def test_iceberg_refill_goes_to_the_back_of_its_level() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 10, display_qty=3)
    engine.submit_limit(2, SELL, 100, 2)
    events = engine.submit_limit(3, BUY, 100, 4)
    assert fills(events) == [(1, 100, 3), (2, 100, 1)]
    assert ids(engine, SELL) == [2, 1]
    events = engine.submit_limit(4, BUY, 100, 50, tif=TimeInForce.IOC)
    assert fills(events) == [(2, 100, 1), (1, 100, 3), (1, 100, 3), (1, 100, 1)]
    assert events[-1]["qty"] == 42


def test_incoming_iceberg_takes_with_its_full_size_then_shows_its_display() -> None:
    engine = make_engine()
    engine.submit_limit(1, SELL, 100, 4)
    events = engine.submit_limit(2, BUY, 100, 10, display_qty=2)
    assert fills(events) == [(1, 100, 4)]
    assert engine.best_bid() == (100, 2)
    assert engine.order(2)["hidden_qty"] == 4  # type: ignore[index]


# --- validation and errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"order_id": 0}, Reason.INVALID_ORDER_ID),
        ({"side": 3}, Reason.INVALID_SIDE),
        ({"order_type": 9}, Reason.INVALID_TYPE),
        ({"tif": 0}, Reason.INVALID_TIF),
        ({"qty": 0}, Reason.INVALID_QTY),
        ({"qty": -5}, Reason.INVALID_QTY),
        ({"display_qty": 9}, Reason.INVALID_QTY),
        ({"price": 1 << 62}, Reason.INVALID_PRICE),
        ({"stp_mode": 6}, Reason.INVALID_STP_MODE),
        ({"symbol_id": 2}, Reason.UNKNOWN_SYMBOL),
        ({"flags": 3}, Reason.INVALID_COMBINATION),
        ({"flags": 1, "tif": 2}, Reason.INVALID_COMBINATION),
        ({"display_qty": 2, "tif": 2}, Reason.INVALID_COMBINATION),
        ({"order_type": 2, "tif": 1}, Reason.INVALID_COMBINATION),
        ({"action": 9}, Reason.INVALID_ACTION),
    ],
)
def test_invalid_orders_are_rejected_with_their_reason(fields: dict[str, int], reason: Reason) -> None:
    engine = make_engine()
    command = {"action": 1, "order_id": 5, "side": 1, "order_type": 1, "tif": 1, "qty": 4, "price": 100}
    events = engine.submit(**{**command, **fields})
    assert len(events) == 1
    assert (events[0]["type"], events[0]["reason"]) == (EventType.REJECT, reason)
    assert engine.live_orders == 0


def test_duplicate_live_order_id_is_rejected_but_a_dead_id_may_return() -> None:
    engine = make_engine()
    engine.submit_limit(1, BUY, 100, 1)
    assert engine.submit_limit(1, BUY, 99, 1)[0]["reason"] == Reason.DUPLICATE_ORDER_ID
    engine.cancel(1)
    assert kinds(engine.submit_limit(1, BUY, 99, 1)) == [EventType.ACK]


def test_full_order_pool_rejects_resting_orders_but_takes_ioc() -> None:
    engine = make_engine(max_orders=2)
    engine.submit_limit(1, BUY, 100, 1)
    engine.submit_limit(2, BUY, 99, 1)
    assert engine.submit_limit(3, SELL, 101, 1)[0]["reason"] == Reason.BOOK_FULL
    assert fills(engine.submit_limit(4, SELL, 100, 1, tif=TimeInForce.IOC)) == [(1, 100, 1)]


def test_full_level_array_cancels_the_remainder() -> None:
    engine = make_engine(max_levels_per_side=2)
    engine.submit_limit(1, BUY, 100, 1)
    engine.submit_limit(2, BUY, 99, 1)
    events = engine.submit_limit(3, BUY, 98, 1)
    assert kinds(events) == [EventType.ACK, EventType.CANCELED]
    assert events[-1]["reason"] == Reason.BOOK_FULL


def test_c_errors_surface_as_python_exceptions() -> None:
    engine = make_engine()
    with pytest.raises(NotFound):
        engine.top(symbol=3)
    with pytest.raises(AlreadyExists):
        engine.add_symbol(0)
    with pytest.raises(InvalidArgument):
        engine.add_symbol(99)
    with pytest.raises(InvalidArgument):
        MatchingEngine(EngineConfig(max_orders=0))
    with pytest.raises(InvalidArgument):
        engine.orders(7)  # type: ignore[arg-type]


def test_books_of_different_symbols_are_independent() -> None:
    engine = make_engine()
    engine.add_symbol(2)
    engine.submit_limit(1, SELL, 100, 1, symbol=0)
    events = engine.submit_limit(2, BUY, 100, 1, symbol=2)
    assert kinds(events) == [EventType.ACK]
    assert engine.best_bid(2) == (100, 1)
    assert engine.best_ask(0) == (100, 1)
    assert engine.cancel(2)[0]["symbol_id"] == 2  # cancels find the order by id alone
    assert engine.symbols == frozenset({0, 2})


def test_order_book_is_a_single_symbol_face() -> None:
    book = OrderBook(symbol=3)
    book.submit_limit(1, SELL, 100, 5)
    events = book.submit_market(2, BUY, 2)
    assert fills(events) == [(1, 100, 2)]
    assert events[0]["symbol_id"] == 3
    assert book.top().ask_qty == 3
    assert book.best_bid() is None
    assert book.last_trade_price() == 100
    assert book.depth(SELL).tolist() == [(100, 3, 1, 0)]
    book.submit_stop(3, SELL, 90, 1)
    assert book.orders(SELL, pending_stops=True)["order_id"].tolist() == [3]
    assert book.cancel_all(0)["order_id"].tolist() == [1, 3]
    assert book.live_orders == 0
    with pytest.raises(InvalidArgument):
        OrderBook(symbol=99)


def test_a_closed_engine_refuses_calls() -> None:
    with make_engine() as engine:
        engine.submit_limit(1, BUY, 100, 1)
    with pytest.raises(InvalidArgument):
        engine.best_bid()
    with pytest.raises(InvalidArgument):
        engine.submit_limit(2, BUY, 100, 1)
    engine.close()  # twice is fine
