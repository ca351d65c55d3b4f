"""The recent trades of one (venue, symbol) in preallocated numpy arrays, and VWAP over them.

The ring is "double-mapped": every trade is written at slot ``i`` and again at slot
``i + capacity`` of arrays twice the capacity long. Any run of up to ``capacity``
consecutive trades is then one contiguous slice, so the native VWAP kernel reads a
window zero-copy without ever splitting it at the wrap-around point. The price of it is
two stores per trade instead of one.

Trades are appended in non-decreasing exchange time (the ingest rule rejects the
others), which lets a time window be found by binary search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hftgate.native.vwap import vwap as native_vwap


@dataclass(frozen=True, slots=True)
class VwapResult:
    """VWAP over one window of trades (``vwap`` is 0.0 when the window is empty)."""

    vwap: float
    volume: float
    trades: int
    first_trade_ts_ns: int
    last_trade_ts_ns: int
    # The time window asked for (0 for a last-N window) and the trade count asked for.
    window_ns: int
    last_n: int
    # False when the ring no longer holds the whole window (older trades were overwritten).
    complete: bool


class TradeRing:
    """The last ``capacity`` trades: exchange time, price and size. One writer (the engine)."""

    __slots__ = ("_prices", "_sizes", "_timestamps", "capacity", "count")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # Total trades ever appended; the newest sits at slot (count - 1) % capacity.
        self.count = 0
        self._timestamps = np.zeros(2 * capacity, dtype=np.int64)
        self._prices = np.zeros(2 * capacity, dtype=np.float64)
        self._sizes = np.zeros(2 * capacity, dtype=np.float64)

    def append(self, ts_ns: int, price: float, size: float) -> None:
        slot = self.count % self.capacity
        mirror = slot + self.capacity
        self._timestamps[slot] = self._timestamps[mirror] = ts_ns
        self._prices[slot] = self._prices[mirror] = price
        self._sizes[slot] = self._sizes[mirror] = size
        self.count += 1

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    def _window(self, n: int) -> slice:
        """The contiguous slots of the newest ``n`` trades (n <= len(self))."""
        start = (self.count - n) % self.capacity
        return slice(start, start + n)

    def _result(self, n: int, window_ns: int, last_n: int, complete: bool) -> VwapResult:
        if n == 0:
            return VwapResult(0.0, 0.0, 0, 0, 0, window_ns, last_n, complete)
        window = self._window(n)
        prices, sizes = self._prices[window], self._sizes[window]
        timestamps = self._timestamps[window]
        return VwapResult(
            vwap=native_vwap(prices, sizes),
            volume=float(sizes.sum()),
            trades=n,
            first_trade_ts_ns=int(timestamps[0]),
            last_trade_ts_ns=int(timestamps[-1]),
            window_ns=window_ns,
            last_n=last_n,
            complete=complete,
        )

    def vwap_last_n(self, last_n: int) -> VwapResult:
        """VWAP of the newest ``last_n`` trades (fewer if fewer were ever seen)."""
        held = len(self)
        n = min(last_n, held)
        complete = n == last_n or self.count == held
        return self._result(n, 0, last_n, complete)

    def trades_within(self, window_ns: int) -> int:
        """How many of the held trades lie in ``(newest_ts - window_ns, newest_ts]``."""
        held = len(self)
        if held == 0:
            return 0
        window = self._window(held)
        timestamps = self._timestamps[window]
        first_inside = int(np.searchsorted(timestamps, timestamps[-1] - window_ns, side="right"))
        return held - first_inside

    def vwap_by_time(self, window_ns: int) -> VwapResult:
        """VWAP of the trades whose exchange time is in ``(newest_ts - window_ns, newest_ts]``.

        ``complete`` is False when the ring has overwritten trades that were inside the window.
        """
        n = self.trades_within(window_ns)
        overwritten = self.count > self.capacity
        complete = not (overwritten and n == self.capacity)
        return self._result(n, window_ns, 0, complete)

    def vwap_by_time_fast(self, window_ns: int, newest_ts_ns: int, first_inside: int) -> tuple[float, int]:
        """The rolling update used on every trade: advance the window's first trade (``first_inside``
        is the running count of trades that have left the window) and return (vwap, new first_inside).

        Amortised O(1) to find the window (each trade leaves it once), then one native VWAP pass.
        """
        oldest_held = self.count - len(self)
        first_inside = max(first_inside, oldest_held)
        cutoff = newest_ts_ns - window_ns
        timestamps = self._timestamps
        capacity = self.capacity
        while timestamps[first_inside % capacity] <= cutoff:
            first_inside += 1
        window = self._window(self.count - first_inside)
        return native_vwap(self._prices[window], self._sizes[window]), first_inside
