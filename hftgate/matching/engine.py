"""The C matching engine's Python face.

:class:`MatchingEngine` owns one C engine (``native/include/hft_engine.h``) holding one book per
symbol. Its fast path is :meth:`MatchingEngine.process`: a numpy array of commands in
(:data:`~hftgate.matching.types.COMMAND_DTYPE`), a numpy array of events out
(:data:`~hftgate.matching.types.EVENT_DTYPE`), one call into C per batch and no Python object per
fill. The ``submit_*``/``cancel``/``replace`` methods wrap single commands for tests and tools.
:class:`OrderBook` is the same for a single symbol.

Errors of the C engine itself (bad configuration, unknown symbol in a query) raise the exceptions of
:mod:`hftgate.native.errors`; a refused *order* is not an error but a ``REJECT`` event with a reason
code, because one bad order in a batch must not stop the others.

Ownership at the boundary: the caller's command array and the event arrays allocated here are only
borrowed by C for the duration of one call; the C engine is freed when this object is collected
(``ffi.gc``) or on :meth:`MatchingEngine.close`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hftgate import rows
from hftgate.matching.types import (
    ALL_SYMBOLS,
    COMMAND_DTYPE,
    DEPTH_DTYPE,
    EVENT_DTYPE,
    ORDER_INFO_DTYPE,
    Action,
    OrderFlag,
    OrderType,
    Side,
    StpMode,
    TimeInForce,
    new_commands,
    verify_layout,
)
from hftgate.native import ffi, lib
from hftgate.native.errors import InvalidArgument, check

verify_layout()


@dataclass(frozen=True)
class EngineConfig:
    """Sizes and policies of one engine; everything the order path needs is allocated up front."""

    max_symbols: int = 16
    """Books are symbol ids ``0 .. max_symbols-1``."""
    max_levels_per_side: int = 4096
    """Price levels per side of each book (and stop-price levels per side)."""
    max_orders: int = 1 << 20
    """Live orders (resting plus pending stops) across all books."""
    market_protection_ticks: int = 1000
    """A market order trades at most this many ticks away from the best opposite price at arrival."""
    default_stp_mode: StpMode = StpMode.CANCEL_RESTING
    """Self-trade prevention for orders that do not choose their own."""


@dataclass(frozen=True)
class TopOfBook:
    bid_price: int | None
    bid_qty: int
    ask_price: int | None
    ask_qty: int
    last_trade_price: int | None


def order_by_client_priority(commands: np.ndarray) -> np.ndarray:
    """Reorder each client's commands by their ``priority`` (highest first, ties in arrival order).

    Every client keeps exactly the batch positions it had: only the commands *within* one account
    trade places, never with another account's, because moving one client's order ahead of another's
    would break price-time fairness between them.
    """
    if len(commands) < 2:
        return commands
    arrival = np.arange(len(commands))
    accounts = commands["account_id"]
    slots = np.lexsort((arrival, accounts))  # each account's positions, in batch order
    ranked = np.lexsort((arrival, -commands["priority"].astype(np.int64), accounts))
    reordered = np.empty_like(commands)
    reordered[slots] = commands[ranked]
    return reordered


class MatchingEngine:
    """One C matching engine with a book per symbol. Single-threaded: one owner calls it."""

    def __init__(self, config: EngineConfig | None = None, symbols: Iterable[int] = (0,)) -> None:
        self.config = config or EngineConfig()
        c_config = ffi.new("hft_engine_config *")
        c_config.max_symbols = self.config.max_symbols
        c_config.max_levels_per_side = self.config.max_levels_per_side
        c_config.max_orders = self.config.max_orders
        c_config.market_protection_ticks = self.config.market_protection_ticks
        c_config.default_stp_mode = int(self.config.default_stp_mode)
        out = ffi.new("hft_engine **")
        check(lib.hft_engine_create(c_config, out), f"hft_engine_create({self.config})")
        self._handle: Any = ffi.gc(out[0], lib.hft_engine_destroy)
        self._consumed = ffi.new("size_t *")
        self._written = ffi.new("size_t *")
        self._count = ffi.new("size_t *")
        self._top = ffi.new("hft_top_of_book *")
        self._symbols: set[int] = set()
        for symbol_id in symbols:
            self.add_symbol(symbol_id)

    def close(self) -> None:
        """Free the C engine now rather than at garbage collection."""
        if self._handle is not None:
            ffi.release(self._handle)
            self._handle = None

    def __enter__(self) -> MatchingEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def _engine(self) -> Any:
        # C would dereference a NULL engine: refuse here instead.
        if self._handle is None:
            raise InvalidArgument("Cannot use the matching engine: it was closed")
        return self._handle

    @property
    def symbols(self) -> frozenset[int]:
        return frozenset(self._symbols)

    def add_symbol(self, symbol_id: int) -> None:
        """Open the book for ``symbol_id`` (raises if it exists or is out of range)."""
        check(lib.hft_engine_add_book(self._engine, symbol_id), f"hft_engine_add_book(symbol_id={symbol_id})")
        self._symbols.add(symbol_id)

    # --- the batch path -------------------------------------------------------------------------

    def process_into(self, commands: np.ndarray, events: np.ndarray) -> tuple[int, int]:
        """One raw call: apply commands until ``events`` is full; return (consumed, written).

        For callers that recycle their event buffers. ``command_index`` in the events is relative to
        ``commands``; events that did not fit stay in the engine and are written first by the next
        call (see ``hft_engine_process_batch``), so loop until everything is consumed and
        :attr:`pending_events` is 0.
        """
        _require(commands, COMMAND_DTYPE, "commands")
        _require(events, EVENT_DTYPE, "events")
        if len(events) == 0:
            raise InvalidArgument("Cannot process commands: the event buffer is empty")
        rc = lib.hft_engine_process_batch(
            self._engine,
            ffi.from_buffer("hft_order_command[]", commands),
            len(commands),
            ffi.from_buffer("hft_match_event[]", events, require_writable=True),
            len(events),
            self._consumed,
            self._written,
        )
        if rc < 0:
            check(rc, f"hft_engine_process_batch(count={len(commands)}, capacity={len(events)})")
        return int(self._consumed[0]), int(self._written[0])

    def process(self, commands: np.ndarray, *, prioritize: bool = False) -> np.ndarray:
        """Apply a batch of commands in order and return every event they caused, in order.

        ``command_index`` of each event is the position of its command in ``commands`` (after the
        optional per-client priority ordering, see :func:`order_by_client_priority`).
        """
        commands = np.ascontiguousarray(commands)
        _require(commands, COMMAND_DTYPE, "commands")
        engine = self._engine
        if lib.hft_engine_pending_events(engine):
            raise InvalidArgument(
                "Cannot process commands: events of an earlier process_into call are still pending; "
                "collect them with process_into first"
            )
        if prioritize:
            commands = order_by_client_priority(commands)
        total = len(commands)
        command_buffer = ffi.from_buffer("hft_order_command[]", commands)
        # Most commands cause one or two events: one call with room for twice as many usually does it.
        capacity = 2 * total + 64
        events = np.empty(capacity, dtype=EVENT_DTYPE)
        rc = lib.hft_engine_process_batch(
            engine,
            command_buffer,
            total,
            ffi.from_buffer("hft_match_event[]", events, require_writable=True),
            capacity,
            self._consumed,
            self._written,
        )
        if rc < 0:  # (the message's f-string only then: this runs for every batch and SubmitOrder)
            check(rc, f"hft_engine_process_batch(count={total}, capacity={capacity})")
        done = int(self._consumed[0])
        if done == total and not lib.hft_engine_pending_events(engine):
            return events[: int(self._written[0])]
        # More events than room: keep what came and carry on with a growing buffer.
        chunks: list[np.ndarray] = [events[: int(self._written[0])]]
        capacity = 2 * capacity
        while True:
            pending = lib.hft_engine_pending_events(self._engine)
            events = np.empty(max(capacity, pending + 64), dtype=EVENT_DTYPE)
            rc = lib.hft_engine_process_batch(
                self._engine,
                command_buffer + done,
                total - done,
                ffi.from_buffer("hft_match_event[]", events, require_writable=True),
                len(events),
                self._consumed,
                self._written,
            )
            if rc < 0:
                check(rc, f"hft_engine_process_batch(count={total - done}, capacity={len(events)})")
            written = int(self._written[0])
            chunk = events[:written]
            # Events left over from the previous call belong to its last command, done - 1.
            from_previous = min(pending, written)
            if from_previous:
                chunk["command_index"][:from_previous] = done - 1
            if done:
                chunk["command_index"][from_previous:] += done
            chunks.append(chunk)
            done += int(self._consumed[0])
            if done == total and lib.hft_engine_pending_events(self._engine) == 0:
                break
            capacity = 2 * capacity
        return chunks[0] if len(chunks) == 1 else rows.concat(chunks)

    @property
    def pending_events(self) -> int:
        return int(lib.hft_engine_pending_events(self._engine))

    # --- one command at a time (tests, tools) ----------------------------------------------------

    def submit(self, **fields: int) -> np.ndarray:
        """Apply one command given by its fields (see COMMAND_DTYPE); returns its events."""
        commands = new_commands(1)
        for name, value in fields.items():
            commands[name] = value
        return self.process(commands)

    def submit_limit(
        self,
        order_id: int,
        side: Side,
        price: int,
        qty: int,
        *,
        symbol: int = 0,
        account: int = 0,
        tif: TimeInForce = TimeInForce.GTC,
        display_qty: int = 0,
        flags: OrderFlag = OrderFlag.NONE,
        stp: StpMode = StpMode.DEFAULT,
    ) -> np.ndarray:
        return self.submit(
            action=Action.NEW,
            order_type=OrderType.LIMIT,
            order_id=order_id,
            side=side,
            price=price,
            qty=qty,
            symbol_id=symbol,
            account_id=account,
            tif=tif,
            display_qty=display_qty,
            flags=flags,
            stp_mode=stp,
        )

    def submit_market(
        self,
        order_id: int,
        side: Side,
        qty: int,
        *,
        symbol: int = 0,
        account: int = 0,
        tif: TimeInForce = TimeInForce.IOC,
        stp: StpMode = StpMode.DEFAULT,
    ) -> np.ndarray:
        return self.submit(
            action=Action.NEW,
            order_type=OrderType.MARKET,
            order_id=order_id,
            side=side,
            qty=qty,
            symbol_id=symbol,
            account_id=account,
            tif=tif,
            stp_mode=stp,
        )

    def submit_stop(
        self,
        order_id: int,
        side: Side,
        stop_price: int,
        qty: int,
        *,
        limit_price: int | None = None,
        symbol: int = 0,
        account: int = 0,
        tif: TimeInForce | None = None,
        display_qty: int = 0,
        stp: StpMode = StpMode.DEFAULT,
    ) -> np.ndarray:
        """A stop-limit order when ``limit_price`` is given, else a stop-market order."""
        is_market = limit_price is None
        return self.submit(
            action=Action.NEW,
            order_type=OrderType.STOP_MARKET if is_market else OrderType.STOP_LIMIT,
            order_id=order_id,
            side=side,
            stop_price=stop_price,
            price=0 if limit_price is None else limit_price,
            qty=qty,
            symbol_id=symbol,
            account_id=account,
            tif=tif or (TimeInForce.IOC if is_market else TimeInForce.GTC),
            display_qty=display_qty,
            stp_mode=stp,
        )

    def cancel(self, order_id: int, *, account: int = 0) -> np.ndarray:
        return self.submit(action=Action.CANCEL, order_id=order_id, account_id=account)

    def replace(self, order_id: int, price: int, qty: int, *, account: int = 0) -> np.ndarray:
        """New price and new open quantity for a resting order (see hft_engine.h for priority rules)."""
        return self.submit(action=Action.REPLACE, order_id=order_id, price=price, qty=qty, account_id=account)

    def cancel_all(self, account: int, *, symbol: int | None = None) -> np.ndarray:
        """Cancel every live order of ``account`` in one book, or in all books when ``symbol`` is None."""
        return self.submit(
            action=Action.CANCEL_ALL, account_id=account, symbol_id=ALL_SYMBOLS if symbol is None else symbol
        )

    # --- queries --------------------------------------------------------------------------------

    def top(self, symbol: int = 0) -> TopOfBook:
        check(lib.hft_engine_top_of_book(self._engine, symbol, self._top), f"top_of_book(symbol={symbol})")
        t = self._top
        return TopOfBook(
            bid_price=int(t.bid_price) if t.has_bid else None,
            bid_qty=int(t.bid_qty),
            ask_price=int(t.ask_price) if t.has_ask else None,
            ask_qty=int(t.ask_qty),
            last_trade_price=int(t.last_trade_price) if t.has_last_trade else None,
        )

    def best_bid(self, symbol: int = 0) -> tuple[int, int] | None:
        """(price, shown quantity) of the best bid, or None."""
        top = self.top(symbol)
        return None if top.bid_price is None else (top.bid_price, top.bid_qty)

    def best_ask(self, symbol: int = 0) -> tuple[int, int] | None:
        top = self.top(symbol)
        return None if top.ask_price is None else (top.ask_price, top.ask_qty)

    def last_trade_price(self, symbol: int = 0) -> int | None:
        return self.top(symbol).last_trade_price

    def depth(self, side: Side, levels: int = 10, *, symbol: int = 0) -> np.ndarray:
        """The best ``levels`` price levels of one side, best first (DEPTH_DTYPE: price, qty, order_count)."""
        out = np.zeros(levels, dtype=DEPTH_DTYPE)
        rc = lib.hft_engine_depth(
            self._engine,
            symbol,
            int(side),
            ffi.from_buffer("hft_depth_level[]", out, require_writable=True),
            levels,
            self._count,
        )
        check(rc, f"depth(side={side}, symbol={symbol})")
        return out[: min(levels, int(self._count[0]))]

    def orders(self, side: Side, *, symbol: int = 0, pending_stops: bool = False) -> np.ndarray:
        """Resting orders of one side in priority order, or its pending stops in trigger order.

        Records of ORDER_INFO_DTYPE.
        """
        what = f"book_orders(side={side}, symbol={symbol})"
        check(
            lib.hft_engine_book_orders(
                self._engine, symbol, int(side), pending_stops, ffi.NULL, 0, self._count
            ),
            what,
        )
        out = np.zeros(int(self._count[0]), dtype=ORDER_INFO_DTYPE)
        if len(out):
            buffer = ffi.from_buffer("hft_order_info[]", out, require_writable=True)
            check(
                lib.hft_engine_book_orders(
                    self._engine, symbol, int(side), pending_stops, buffer, len(out), self._count
                ),
                what,
            )
        return out

    def restore_resting(self, orders: np.ndarray) -> None:
        """Put resting orders back exactly as :meth:`orders` reported them (snapshot restore).

        ``orders`` are ORDER_INFO_DTYPE records of resting (not pending-stop) orders, in the
        order :meth:`orders` lists them, so time priority is kept. Each goes to the back of its
        level with its current shown slice and iceberg reserve, without matching or events: a
        partly filled iceberg slice comes back as it was, which re-entering it as a new order
        could not do. Raises InvalidArgument (bad field, unknown book, a crossing price),
        AlreadyExists (a live id) or PoolExhausted (pool or levels full); orders restored
        before the failing one stay.
        """
        command = ffi.new("hft_order_command *")
        for row in orders.tolist():
            order_id, account, price, _stop, visible, hidden, display, symbol, side, _t, _tif, flags, stp = (
                row[:13]
            )
            if row[13]:
                raise InvalidArgument(f"Cannot restore order {order_id} as resting: it is a pending stop")
            command.order_id, command.account_id, command.price = order_id, account, price
            command.display_qty, command.symbol_id, command.side = display, symbol, side
            command.flags, command.stp_mode = flags, stp
            check(
                lib.hft_engine_restore_resting(self._engine, command, visible, hidden),
                f"hft_engine_restore_resting(order_id={order_id}, symbol={symbol})",
            )

    def order(self, order_id: int) -> np.void | None:
        """The live order with this id (ORDER_INFO_DTYPE record), or None."""
        out = np.zeros(1, dtype=ORDER_INFO_DTYPE)
        rc = lib.hft_engine_order_info(
            self._engine, order_id, ffi.from_buffer("hft_order_info[]", out, require_writable=True)
        )
        if rc == lib.HFT_ENOENT:
            return None
        check(rc, f"order_info(order_id={order_id})")
        record: np.void = out[0]
        return record

    @property
    def live_orders(self) -> int:
        """Resting orders plus pending stops, across all books."""
        return int(lib.hft_engine_live_orders(self._engine))


class OrderBook:
    """A single-symbol engine: the same calls as :class:`MatchingEngine` without the symbol argument."""

    def __init__(self, config: EngineConfig | None = None, symbol: int = 0) -> None:
        base = config or EngineConfig()
        if symbol >= base.max_symbols:
            raise InvalidArgument(f"Cannot open book: symbol {symbol} >= max_symbols {base.max_symbols}")
        self.symbol = symbol
        self.engine = MatchingEngine(base, symbols=(symbol,))

    def process(self, commands: np.ndarray, *, prioritize: bool = False) -> np.ndarray:
        commands = np.array(commands, dtype=COMMAND_DTYPE, copy=True)
        commands["symbol_id"] = self.symbol
        return self.engine.process(commands, prioritize=prioritize)

    def submit_limit(self, order_id: int, side: Side, price: int, qty: int, **options: Any) -> np.ndarray:
        return self.engine.submit_limit(order_id, side, price, qty, symbol=self.symbol, **options)

    def submit_market(self, order_id: int, side: Side, qty: int, **options: Any) -> np.ndarray:
        return self.engine.submit_market(order_id, side, qty, symbol=self.symbol, **options)

    def submit_stop(self, order_id: int, side: Side, stop_price: int, qty: int, **options: Any) -> np.ndarray:
        return self.engine.submit_stop(order_id, side, stop_price, qty, symbol=self.symbol, **options)

    def cancel(self, order_id: int, *, account: int = 0) -> np.ndarray:
        return self.engine.cancel(order_id, account=account)

    def replace(self, order_id: int, price: int, qty: int, *, account: int = 0) -> np.ndarray:
        return self.engine.replace(order_id, price, qty, account=account)

    def cancel_all(self, account: int) -> np.ndarray:
        return self.engine.cancel_all(account, symbol=self.symbol)

    def top(self) -> TopOfBook:
        return self.engine.top(self.symbol)

    def best_bid(self) -> tuple[int, int] | None:
        return self.engine.best_bid(self.symbol)

    def best_ask(self) -> tuple[int, int] | None:
        return self.engine.best_ask(self.symbol)

    def last_trade_price(self) -> int | None:
        return self.engine.last_trade_price(self.symbol)

    def depth(self, side: Side, levels: int = 10) -> np.ndarray:
        return self.engine.depth(side, levels, symbol=self.symbol)

    def orders(self, side: Side, *, pending_stops: bool = False) -> np.ndarray:
        return self.engine.orders(side, symbol=self.symbol, pending_stops=pending_stops)

    def order(self, order_id: int) -> np.void | None:
        return self.engine.order(order_id)

    @property
    def live_orders(self) -> int:
        return self.engine.live_orders


def _require(array: np.ndarray, dtype: np.dtype, what: str) -> None:
    if array.dtype != dtype:
        raise InvalidArgument(f"Cannot process {what}: dtype {array.dtype} is not the engine's {dtype}")
    if not array.flags.c_contiguous:
        raise InvalidArgument(f"Cannot process {what}: the array is not contiguous")
