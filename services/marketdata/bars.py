"""OHLCV bars of one (venue, symbol) at one interval, rolled as trades arrive.

A trade belongs to the bar starting at ``ts - ts % interval`` (exchange time, UTC
epoch-aligned). Intervals without trades produce no bar.

Out-of-order and duplicate rule (enforced by the engine before a trade gets here):
trades are ordered by exchange timestamp, and by the venue's trade id when it gives
one. A trade whose id is not above the last accepted id of its (venue, symbol) is a
duplicate; a trade whose timestamp is earlier than the last accepted trade's is out of
order. Both are rejected and counted, and change nothing. Equal timestamps are fine.
So a bar closes for good when the first trade of a later bar arrives, and a closed bar
never changes.

Closed bars live in a preallocated numpy ring of ``history`` rows; the open bar is
plain attributes, updated in place on every trade.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class BarView:
    """One bar as read by a query."""

    interval_ms: int
    start_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    trades: int
    vwap: float
    closed: bool


# Columns of the closed-bar ring.
_START, _OPEN, _HIGH, _LOW, _CLOSE, _VOLUME, _NOTIONAL, _TRADES = range(8)


class BarSeries:
    """The open bar and the last ``history`` closed bars of one interval. One writer (the engine)."""

    __slots__ = (
        "_closed",
        "close",
        "closed_count",
        "high",
        "interval_ms",
        "interval_ns",
        "low",
        "notional",
        "open",
        "start_ns",
        "trades",
        "volume",
    )

    def __init__(self, interval_ms: int, history: int) -> None:
        self.interval_ms = interval_ms
        self.interval_ns = interval_ms * 1_000_000
        # Rows: start_ns, open, high, low, close, volume, notional, trades (start and count
        # as float64 are exact below 2**53, i.e. for any epoch-ns timestamp before 2255).
        self._closed = np.zeros((history, 8), dtype=np.float64)
        self.closed_count = 0
        self.start_ns = -1  # no open bar yet
        self.open = self.high = self.low = self.close = 0.0
        self.volume = self.notional = 0.0
        self.trades = 0

    def add_trade(self, ts_ns: int, price: float, size: float) -> None:
        """Apply one accepted trade (timestamps never decrease, see the module rule)."""
        start = ts_ns - ts_ns % self.interval_ns
        if start != self.start_ns:
            if self.start_ns >= 0:
                self._close_open_bar()
            self.start_ns = start
            self.open = self.high = self.low = self.close = price
            self.volume = size
            self.notional = price * size
            self.trades = 1
            return
        if price > self.high:
            self.high = price
        elif price < self.low:
            self.low = price
        self.close = price
        self.volume += size
        self.notional += price * size
        self.trades += 1

    def _close_open_bar(self) -> None:
        row = self._closed[self.closed_count % len(self._closed)]
        row[:] = (
            self.start_ns,
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.notional,
            self.trades,
        )
        self.closed_count += 1

    def open_bar(self) -> BarView | None:
        if self.start_ns < 0:
            return None
        return BarView(
            self.interval_ms,
            self.start_ns,
            self.open,
            self.high,
            self.low,
            self.close,
            self.volume,
            self.trades,
            self.notional / self.volume,
            False,
        )

    def bars(self, limit: int = 0, include_open: bool = False) -> list[BarView]:
        """Held bars oldest first, the newest ``limit`` of them (0 = all); the open bar last if asked."""
        history = len(self._closed)
        held = min(self.closed_count, history)
        views = []
        for seq in range(self.closed_count - held, self.closed_count):
            start, open_, high, low, close, volume, notional, trades = self._closed[seq % history].tolist()
            views.append(
                BarView(
                    self.interval_ms,
                    int(start),
                    open_,
                    high,
                    low,
                    close,
                    volume,
                    int(trades),
                    notional / volume,
                    True,
                )
            )
        current = self.open_bar() if include_open else None
        if current is not None:
            views.append(current)
        return views[-limit:] if limit > 0 else views
