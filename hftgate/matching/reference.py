"""A plain pure-Python matching engine with exactly the rules of the C engine (native/include/hft_engine.h).

It is the oracle of the differential tests and the baseline of ``hftgate bench matching``; services use
the C engine (:mod:`hftgate.matching.engine`). It is written to be read, not to be slow: a side is a dict
of price levels plus a sorted list of prices (best last), and a level is an insertion-ordered dict of
orders, so every operation is what a careful Python programmer would write.

It consumes the same command records (COMMAND_DTYPE rows) and produces the same event records
(EVENT_DTYPE tuples), so its output can be compared with the C engine's field by field.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable, Sequence

import numpy as np

from hftgate.matching.engine import EngineConfig
from hftgate.matching.types import (
    ALL_SYMBOLS,
    EVENT_DTYPE,
    MAX_PRICE,
    MAX_QTY,
    Action,
    EventType,
    OrderFlag,
    OrderType,
    Reason,
    Side,
    StpMode,
    TimeInForce,
)

BUY, SELL = int(Side.BUY), int(Side.SELL)
GTC, IOC, FOK = int(TimeInForce.GTC), int(TimeInForce.IOC), int(TimeInForce.FOK)
LIMIT, MARKET = int(OrderType.LIMIT), int(OrderType.MARKET)
STOP_LIMIT, STOP_MARKET = int(OrderType.STOP_LIMIT), int(OrderType.STOP_MARKET)
POST_ONLY, POST_ONLY_SLIDE = int(OrderFlag.POST_ONLY), int(OrderFlag.POST_ONLY_SLIDE)
ACK, REJECT, FILL = int(EventType.ACK), int(EventType.REJECT), int(EventType.FILL)
CANCELED, EXPIRED = int(EventType.CANCELED), int(EventType.EXPIRED)
REPLACED, TRIGGERED = int(EventType.REPLACED), int(EventType.TRIGGERED)

Event = tuple[int, ...]  # the fields of EVENT_DTYPE, in order


class _Order:
    __slots__ = (
        "account_id",
        "display",
        "flags",
        "hidden",
        "level",
        "order_id",
        "order_type",
        "pending_stop",
        "price",
        "side",
        "stop_price",
        "stp",
        "symbol",
        "tif",
        "visible",
    )

    def __init__(
        self,
        *,
        order_id: int,
        account_id: int,
        price: int,
        stop_price: int,
        visible: int,
        display: int,
        symbol: int,
        side: int,
        order_type: int,
        tif: int,
        flags: int,
        stp: int,
    ) -> None:
        self.order_id = order_id
        self.account_id = account_id
        self.price = price  # limit price (the band edge for a market order)
        self.stop_price = stop_price
        self.visible = visible  # shown; for an incoming order, what is left to trade
        self.hidden = 0  # iceberg reserve; a pending stop keeps its whole quantity here
        self.display = display  # iceberg slice size, 0 when not an iceberg
        self.symbol = symbol
        self.side = side
        self.order_type = order_type
        self.tif = tif
        self.flags = flags
        self.stp = stp  # resolved: never StpMode.DEFAULT
        self.pending_stop = False
        self.level: _Level | None = None

    def copy(self) -> _Order:
        twin = _Order.__new__(_Order)
        for name in _Order.__slots__:
            setattr(twin, name, getattr(self, name))
        twin.level = None
        return twin

    def open_qty(self) -> int:
        return self.visible + self.hidden


class _Level:
    __slots__ = ("orders", "price")

    def __init__(self, price: int) -> None:
        self.price = price
        self.orders: dict[int, _Order] = {}  # insertion order is time priority

    def push_back(self, order: _Order) -> None:
        order.level = self
        self.orders[order.order_id] = order

    def unlink(self, order: _Order) -> None:
        del self.orders[order.order_id]
        order.level = None

    def head(self) -> _Order | None:
        return next(iter(self.orders.values()), None)


class _Side:
    """Price levels of one side: a dict by price, and the sort keys ascending with the best last."""

    def __init__(self, best_is_highest: bool, capacity: int) -> None:
        self.sign = 1 if best_is_highest else -1
        self.capacity = capacity
        self.levels: dict[int, _Level] = {}
        self.keys: list[int] = []

    def best(self) -> _Level | None:
        return self.levels[self.keys[-1] * self.sign] if self.keys else None

    def best_first(self) -> list[_Level]:
        return [self.levels[key * self.sign] for key in reversed(self.keys)]

    def get_or_add(self, price: int) -> _Level | None:
        level = self.levels.get(price)
        if level is None:
            if len(self.keys) == self.capacity:
                return None
            level = self.levels[price] = _Level(price)
            insort(self.keys, price * self.sign)
        return level

    def remove(self, level: _Level) -> None:
        del self.levels[level.price]
        del self.keys[bisect_left(self.keys, level.price * self.sign)]


class _Book:
    def __init__(self, symbol: int, levels_per_side: int) -> None:
        self.symbol = symbol
        self.bids = _Side(True, levels_per_side)
        self.asks = _Side(False, levels_per_side)
        self.buy_stops = _Side(False, levels_per_side)  # lowest stop price triggers first
        self.sell_stops = _Side(True, levels_per_side)
        self.last_trade_price: int | None = None

    def own(self, side: int) -> _Side:
        return self.bids if side == BUY else self.asks

    def opposite(self, side: int) -> _Side:
        return self.asks if side == BUY else self.bids

    def stops(self, side: int) -> _Side:
        return self.buy_stops if side == BUY else self.sell_stops

    def crosses(self, side: int, price: int) -> bool:
        best = self.opposite(side).best()
        return best is not None and _within(side, best.price, price)


def _within(side: int, level_price: int, limit: int) -> bool:
    return level_price <= limit if side == BUY else level_price >= limit


def _in_range(price: int) -> bool:
    return -MAX_PRICE <= price <= MAX_PRICE


class ReferenceEngine:
    """The reference matching engine: same commands in, same events out, as :class:`MatchingEngine`."""

    def __init__(self, config: EngineConfig | None = None, symbols: Iterable[int] = (0,)) -> None:
        self.config = config or EngineConfig()
        self.books: dict[int, _Book] = {}
        self.orders: dict[int, _Order] = {}
        self.events: list[Event] = []
        self.command_index = 0
        for symbol in symbols:
            self.add_symbol(symbol)

    def add_symbol(self, symbol: int) -> None:
        if not 0 <= symbol < self.config.max_symbols or symbol in self.books:
            raise ValueError(f"Cannot open book for symbol {symbol}")
        self.books[symbol] = _Book(symbol, self.config.max_levels_per_side)

    # --- batch entry ------------------------------------------------------------------------------

    def process(self, commands: np.ndarray | Sequence[Sequence[int]]) -> list[Event]:
        """Apply commands (COMMAND_DTYPE rows, or their ``tolist()`` tuples); return the events."""
        rows = commands.tolist() if isinstance(commands, np.ndarray) else commands
        self.events = []
        for index, row in enumerate(rows):
            self.command_index = index
            action = row[8]
            if action == Action.NEW:
                self._new(row)
            elif action == Action.CANCEL:
                self._cancel(row)
            elif action == Action.REPLACE:
                self._replace(row)
            elif action == Action.CANCEL_ALL:
                self._cancel_all(row)
            else:
                self._reject(row, Reason.INVALID_ACTION)
        return self.events

    def process_array(self, commands: np.ndarray | Sequence[Sequence[int]]) -> np.ndarray:
        return np.array(self.process(commands), dtype=EVENT_DTYPE)

    # --- events -----------------------------------------------------------------------------------

    def _emit(self, kind: int, reason: int, order: _Order, price: int, qty: int, leaves: int) -> None:
        self.events.append(
            (
                order.order_id,
                order.account_id,
                0,
                0,
                price,
                qty,
                leaves,
                0,
                order.symbol,
                self.command_index,
                kind,
                order.side,
                reason,
                0,
            )
        )

    def _reject(self, row: Sequence[int], reason: int) -> None:
        order_id, account_id, price, qty = row[0], row[1], row[2], row[3]
        self.events.append(
            (
                order_id,
                account_id,
                0,
                0,
                price,
                qty,
                0,
                0,
                row[6],
                self.command_index,
                REJECT,
                row[9],
                int(reason),
                0,
            )
        )

    # --- NEW --------------------------------------------------------------------------------------

    def _validate_new(self, row: Sequence[int]) -> Reason:
        order_id, _, price, qty, stop_price, display, symbol, _, _, side, kind, tif, flags, stp, _ = row
        if order_id == 0:
            return Reason.INVALID_ORDER_ID
        if symbol not in self.books:
            return Reason.UNKNOWN_SYMBOL
        if side not in (BUY, SELL):
            return Reason.INVALID_SIDE
        if not LIMIT <= kind <= STOP_MARKET:
            return Reason.INVALID_TYPE
        if not GTC <= tif <= FOK:
            return Reason.INVALID_TIF
        if qty <= 0 or qty > MAX_QTY or display < 0 or display > qty:
            return Reason.INVALID_QTY
        has_limit = kind in (LIMIT, STOP_LIMIT)
        is_stop = kind in (STOP_LIMIT, STOP_MARKET)
        is_market = kind in (MARKET, STOP_MARKET)
        if (has_limit and not _in_range(price)) or (is_stop and not _in_range(stop_price)):
            return Reason.INVALID_PRICE
        if stp > StpMode.NONE:
            return Reason.INVALID_STP_MODE
        is_iceberg = 0 < display < qty
        if (
            flags & ~(POST_ONLY | POST_ONLY_SLIDE)
            or (is_market and tif == GTC)
            or (is_iceberg and (not has_limit or tif != GTC))
        ):
            return Reason.INVALID_COMBINATION
        if flags and (flags == POST_ONLY | POST_ONLY_SLIDE or kind != LIMIT or tif != GTC):
            return Reason.INVALID_COMBINATION
        return Reason.NONE

    def _new(self, row: Sequence[int]) -> None:
        reason = self._validate_new(row)
        if reason:
            self._reject(row, reason)
            return
        (
            order_id,
            account_id,
            price,
            qty,
            stop_price,
            display,
            symbol,
            _,
            _,
            side,
            kind,
            tif,
            flags,
            stp,
            _,
        ) = row
        if order_id in self.orders:
            self._reject(row, Reason.DUPLICATE_ORDER_ID)
            return
        book = self.books[symbol]
        is_stop = kind in (STOP_LIMIT, STOP_MARKET)
        if (tif == GTC or is_stop) and len(self.orders) == self.config.max_orders:
            self._reject(row, Reason.BOOK_FULL)
            return
        taker = _Order(
            order_id=order_id,
            account_id=account_id,
            price=0 if kind == STOP_MARKET else price,
            stop_price=stop_price if is_stop else 0,
            visible=qty,
            display=display if display < qty else 0,
            symbol=symbol,
            side=side,
            order_type=kind,
            tif=tif,
            flags=flags,
            stp=stp or int(self.config.default_stp_mode),
        )
        if is_stop:
            ack_price = stop_price if kind == STOP_MARKET else price
            if self._stop_elected(book, side, stop_price):
                self._emit(ACK, 0, taker, ack_price, qty, qty)
                self._fire_stop(book, taker)
                self._run_stops(book)
                return
            if not self._park_stop(book, taker):
                self._reject(row, Reason.BOOK_FULL)
                return
            self._emit(ACK, 0, taker, ack_price, qty, qty)
            return
        if kind == MARKET:
            limit = self._market_limit(book, side)
            if limit is None:
                self._reject(row, Reason.NO_LIQUIDITY)
                return
            taker.price = limit
        ack_reason = 0
        if flags and book.crosses(side, price):
            if flags == POST_ONLY:
                self._reject(row, Reason.POST_ONLY_WOULD_TAKE)
                return
            taker.price = self._slide_price(book, side)
            ack_reason = int(Reason.REPRICED)
        self._emit(ACK, ack_reason, taker, taker.price, qty, qty)
        self._execute(book, taker)
        self._run_stops(book)

    def _market_limit(self, book: _Book, side: int) -> int | None:
        best = book.opposite(side).best()
        if best is None:
            return None
        band = self.config.market_protection_ticks
        return min(best.price + band, MAX_PRICE) if side == BUY else max(best.price - band, -MAX_PRICE)

    @staticmethod
    def _slide_price(book: _Book, side: int) -> int:
        best = book.opposite(side).best()
        assert best is not None
        return best.price - 1 if side == BUY else best.price + 1

    # --- matching ---------------------------------------------------------------------------------

    @staticmethod
    def _is_self_trade(taker: _Order, maker: _Order) -> bool:
        return taker.account_id != 0 and taker.account_id == maker.account_id and taker.stp != StpMode.NONE

    def _fok_fillable(self, book: _Book, taker: _Order) -> bool:
        needed = taker.visible
        for level in book.opposite(taker.side).best_first():
            if not _within(taker.side, level.price, taker.price):
                return False
            for maker in level.orders.values():
                if self._is_self_trade(taker, maker):
                    if taker.stp == StpMode.CANCEL_RESTING:
                        continue
                    return False
                needed -= maker.visible
                if needed <= 0:
                    return True
            for maker in level.orders.values():
                if not self._is_self_trade(taker, maker):
                    needed -= maker.hidden
                    if needed <= 0:
                        return True
        return False

    def _drop_maker(self, level: _Level, maker: _Order) -> None:
        level.unlink(maker)
        del self.orders[maker.order_id]

    def _prevent_self_trade(self, level: _Level, taker: _Order, maker: _Order) -> bool:
        """Apply the taker's STP mode to ``maker``; True when the taker has nothing left to trade."""
        stp = taker.stp
        self_trade = int(Reason.SELF_TRADE)
        if stp in (StpMode.CANCEL_RESTING, StpMode.CANCEL_BOTH):
            self._emit(CANCELED, self_trade, maker, maker.price, maker.open_qty(), 0)
            self._drop_maker(level, maker)
            if stp == StpMode.CANCEL_RESTING:
                return False
        if stp in (StpMode.CANCEL_TAKER, StpMode.CANCEL_BOTH):
            self._emit(CANCELED, self_trade, taker, taker.price, taker.visible, 0)
            taker.visible = 0
            return True
        cut = min(taker.visible, maker.open_qty())  # DECREMENT
        if cut <= maker.hidden:
            maker.hidden -= cut
        else:
            maker.visible -= cut - maker.hidden
            maker.hidden = 0
        taker.visible -= cut
        self._emit(CANCELED, self_trade, maker, maker.price, cut, maker.open_qty())
        self._emit(CANCELED, self_trade, taker, taker.price, cut, taker.visible)
        if maker.open_qty() == 0:
            self._drop_maker(level, maker)
        return taker.visible == 0

    def _execute(self, book: _Book, taker: _Order) -> None:
        if taker.tif == FOK and not self._fok_fillable(book, taker):
            self._emit(EXPIRED, Reason.FOK_UNFILLABLE, taker, taker.price, taker.visible, 0)
            return
        opposite = book.opposite(taker.side)
        taker_done = False
        while not taker_done and taker.visible > 0:
            level = opposite.best()
            if level is None or not _within(taker.side, level.price, taker.price):
                break
            while taker.visible > 0 and level.orders:
                maker = next(iter(level.orders.values()))
                if self._is_self_trade(taker, maker):
                    if self._prevent_self_trade(level, taker, maker):
                        taker_done = True
                        break
                    continue
                qty = min(taker.visible, maker.visible)
                taker.visible -= qty
                maker.visible -= qty
                book.last_trade_price = level.price
                self.events.append(
                    (
                        taker.order_id,
                        taker.account_id,
                        maker.order_id,
                        maker.account_id,
                        level.price,
                        qty,
                        taker.visible,
                        maker.visible + maker.hidden,
                        taker.symbol,
                        self.command_index,
                        FILL,
                        taker.side,
                        0,
                        0,
                    )
                )
                if maker.visible == 0:
                    if maker.hidden > 0:  # iceberg refill: a new slice at the back of the queue
                        level.unlink(maker)
                        maker.visible = min(maker.hidden, maker.display)
                        maker.hidden -= maker.visible
                        level.push_back(maker)
                    else:
                        self._drop_maker(level, maker)
            if not level.orders:
                opposite.remove(level)
        if taker.visible == 0:
            return
        if taker.tif != GTC:
            self._emit(EXPIRED, Reason.UNFILLED, taker, taker.price, taker.visible, 0)
            return
        self._rest(book, taker)

    def _rest(self, book: _Book, taker: _Order) -> None:
        level = book.own(taker.side).get_or_add(taker.price)
        if level is None:
            self._emit(CANCELED, Reason.BOOK_FULL, taker, taker.price, taker.visible, 0)
            return
        order = taker.copy()
        open_qty = taker.visible
        if 0 < order.display < open_qty:
            order.visible, order.hidden = order.display, open_qty - order.display
        else:
            order.visible, order.hidden = open_qty, 0
        level.push_back(order)
        self.orders[order.order_id] = order

    def _remove_resting(self, book: _Book, order: _Order) -> None:
        level = order.level
        assert level is not None
        level.unlink(order)
        if not level.orders:
            book.own(order.side).remove(level)
        del self.orders[order.order_id]

    # --- stops ------------------------------------------------------------------------------------

    @staticmethod
    def _stop_elected(book: _Book, side: int, stop_price: int) -> bool:
        last = book.last_trade_price
        if last is None:
            return False
        return last >= stop_price if side == BUY else last <= stop_price

    def _park_stop(self, book: _Book, stop: _Order) -> bool:
        level = book.stops(stop.side).get_or_add(stop.stop_price)
        if level is None:
            return False
        order = stop.copy()
        order.hidden, order.visible = stop.visible, 0
        order.pending_stop = True
        level.push_back(order)
        self.orders[order.order_id] = order
        return True

    def _remove_stop(self, book: _Book, order: _Order) -> None:
        level = order.level
        assert level is not None
        level.unlink(order)
        if not level.orders:
            book.stops(order.side).remove(level)
        del self.orders[order.order_id]

    def _fire_stop(self, book: _Book, stop: _Order) -> None:
        qty = stop.visible
        assert book.last_trade_price is not None
        self._emit(TRIGGERED, 0, stop, book.last_trade_price, qty, qty)
        taker = stop.copy()
        taker.pending_stop = False
        if stop.order_type == STOP_MARKET:
            taker.order_type = MARKET
            limit = self._market_limit(book, taker.side)
            if limit is None:
                self._emit(EXPIRED, Reason.NO_LIQUIDITY, taker, taker.price, qty, 0)
                return
            taker.price = limit
        else:
            taker.order_type = LIMIT
        self._execute(book, taker)

    def _run_stops(self, book: _Book) -> None:
        while book.last_trade_price is not None:
            last = book.last_trade_price
            buy = book.buy_stops.best()
            sell = book.sell_stops.best()
            if buy is not None and last >= buy.price:
                elected = buy.head()
            elif sell is not None and last <= sell.price:
                elected = sell.head()
            else:
                return
            assert elected is not None
            stop = elected.copy()
            stop.visible, stop.hidden = elected.open_qty(), 0
            self._remove_stop(book, elected)
            self._fire_stop(book, stop)

    # --- CANCEL, REPLACE, CANCEL_ALL --------------------------------------------------------------

    def _owned_order(self, row: Sequence[int]) -> _Order | None:
        order = self.orders.get(row[0]) if row[0] else None
        if order is None:
            self._reject(row, Reason.UNKNOWN_ORDER)
            return None
        if order.account_id != row[1]:
            self._reject(row, Reason.ACCOUNT_MISMATCH)
            return None
        return order

    def _cancel_order(self, book: _Book, order: _Order, reason: int) -> None:
        self._emit(CANCELED, reason, order, order.price, order.open_qty(), 0)
        if order.pending_stop:
            self._remove_stop(book, order)
        else:
            self._remove_resting(book, order)

    def _cancel(self, row: Sequence[int]) -> None:
        order = self._owned_order(row)
        if order is not None:
            self._cancel_order(self.books[order.symbol], order, Reason.USER_CANCEL)

    def _replace(self, row: Sequence[int]) -> None:
        order = self._owned_order(row)
        if order is None:
            return
        if order.pending_stop:
            self._replace_pending_stop(row, order)
            return
        new_price, new_qty = row[2], row[3]
        if new_qty <= 0 or new_qty > MAX_QTY:
            self._reject(row, Reason.INVALID_QTY)
            return
        if not _in_range(new_price):
            self._reject(row, Reason.INVALID_PRICE)
            return
        book = self.books[order.symbol]
        if new_price == order.price and new_qty <= order.open_qty():
            cut = order.open_qty() - new_qty
            from_hidden = min(cut, order.hidden)
            order.hidden -= from_hidden
            order.visible -= cut - from_hidden
            self._emit(REPLACED, 0, order, order.price, new_qty, new_qty)
            return
        reason = 0
        if order.flags and book.crosses(order.side, new_price):
            if order.flags == POST_ONLY:
                self._reject(row, Reason.POST_ONLY_WOULD_TAKE)
                return
            new_price = self._slide_price(book, order.side)
            reason = int(Reason.REPRICED)
        taker = order.copy()
        taker.price, taker.visible, taker.hidden = new_price, new_qty, 0
        self._remove_resting(book, order)
        self._emit(REPLACED, reason, taker, new_price, new_qty, new_qty)
        self._execute(book, taker)
        self._run_stops(book)

    def _replace_pending_stop(self, row: Sequence[int], order: _Order) -> None:
        new_qty = row[3]
        if new_qty <= 0 or new_qty > MAX_QTY:
            self._reject(row, Reason.INVALID_QTY)
            return
        is_market = order.order_type == STOP_MARKET
        new_stop = row[4] or order.stop_price
        new_price = 0 if is_market else (row[2] or order.price)
        if not _in_range(new_stop) or not _in_range(new_price):
            self._reject(row, Reason.INVALID_PRICE)
            return
        if new_stop == order.stop_price and new_price == order.price and new_qty <= order.hidden:
            order.hidden = new_qty
            self._emit(REPLACED, 0, order, new_price, new_qty, new_qty)
            return
        book = self.books[order.symbol]
        stop = order.copy()
        stop.pending_stop = False
        stop.stop_price, stop.price = new_stop, new_price
        stop.visible, stop.hidden = new_qty, 0
        self._remove_stop(book, order)
        self._emit(REPLACED, 0, stop, new_price, new_qty, new_qty)
        if self._stop_elected(book, stop.side, new_stop):
            self._fire_stop(book, stop)
            self._run_stops(book)
            return
        if not self._park_stop(book, stop):
            self._emit(CANCELED, Reason.BOOK_FULL, stop, new_price, new_qty, 0)

    def _cancel_all_in_book(self, book: _Book, account_id: int) -> None:
        for side in (book.bids, book.asks, book.buy_stops, book.sell_stops):
            for level in side.best_first():
                for order in list(level.orders.values()):
                    if order.account_id == account_id:
                        self._cancel_order(book, order, Reason.CANCEL_ALL)

    def _cancel_all(self, row: Sequence[int]) -> None:
        account_id, symbol = row[1], row[6]
        if symbol == ALL_SYMBOLS:
            for book_symbol in sorted(self.books):
                self._cancel_all_in_book(self.books[book_symbol], account_id)
            return
        if symbol not in self.books:
            self._reject(row, Reason.UNKNOWN_SYMBOL)
            return
        self._cancel_all_in_book(self.books[symbol], account_id)

    # --- queries (same shapes as MatchingEngine's) --------------------------------------------------

    def depth(self, side: Side, levels: int = 10, *, symbol: int = 0) -> list[tuple[int, int, int]]:
        """(price, shown qty, order count) of the best ``levels`` levels, best first."""
        book_side = self.books[symbol].own(int(side))
        return [
            (level.price, sum(o.visible for o in level.orders.values()), len(level.orders))
            for level in book_side.best_first()[:levels]
        ]

    def orders_on(self, side: Side, *, symbol: int = 0, pending_stops: bool = False) -> list[tuple[int, ...]]:
        """ORDER_INFO_DTYPE tuples of one side in priority (or trigger) order."""
        book = self.books[symbol]
        book_side = book.stops(int(side)) if pending_stops else book.own(int(side))
        return [_describe(order) for level in book_side.best_first() for order in level.orders.values()]

    def last_trade_price(self, symbol: int = 0) -> int | None:
        return self.books[symbol].last_trade_price

    @property
    def live_orders(self) -> int:
        return len(self.orders)


def _describe(order: _Order) -> tuple[int, ...]:
    return (
        order.order_id,
        order.account_id,
        order.price,
        order.stop_price,
        order.visible,
        order.hidden,
        order.display,
        order.symbol,
        order.side,
        order.order_type,
        order.tif,
        order.flags,
        order.stp,
        int(order.pending_stop),
        0,
        0,
    )
