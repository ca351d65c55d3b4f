"""Price-level depth book of one (venue, symbol): total size per price, both sides.

Each side is a dict (price -> size) plus a sorted list of its prices, so a level is
found in O(1), the touch is the end of a list, and an insert is one C-level memmove.

Incremental feeds can leave stale levels behind (a level deleted in a message we never
got, a diff stream started without a snapshot). Newer information wins: setting a bid
at price p deletes every ask at or below p, and setting an ask deletes every bid at or
above it, so the book is never crossed. The farthest levels beyond
``max_levels_per_side`` are dropped.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable


class DepthBook:
    """Bid and ask levels. One writer (the engine)."""

    __slots__ = ("_ask_prices", "_asks", "_bid_prices", "_bids", "max_levels_per_side")

    def __init__(self, max_levels_per_side: int) -> None:
        self.max_levels_per_side = max_levels_per_side
        self._bids: dict[float, float] = {}
        self._asks: dict[float, float] = {}
        # Both ascending: the best bid is the last bid price, the best ask the first ask price.
        self._bid_prices: list[float] = []
        self._ask_prices: list[float] = []

    def clear(self) -> None:
        self._bids.clear()
        self._asks.clear()
        self._bid_prices.clear()
        self._ask_prices.clear()

    def apply(self, bids: Iterable[tuple[float, float]], asks: Iterable[tuple[float, float]]) -> None:
        """Set each (price, size) level, or delete it when size is 0. Inputs are validated already."""
        bid_sizes, bid_prices = self._bids, self._bid_prices
        ask_sizes, ask_prices = self._asks, self._ask_prices
        insort, bisect_left = bisect.insort, bisect.bisect_left
        for price, size in bids:
            if size == 0.0:
                if bid_sizes.pop(price, None) is not None:
                    del bid_prices[bisect_left(bid_prices, price)]
                continue
            if price not in bid_sizes:
                insort(bid_prices, price)
                while ask_prices and ask_prices[0] <= price:
                    del ask_sizes[ask_prices.pop(0)]
            bid_sizes[price] = size
        for price, size in asks:
            if size == 0.0:
                if ask_sizes.pop(price, None) is not None:
                    del ask_prices[bisect_left(ask_prices, price)]
                continue
            if price not in ask_sizes:
                insort(ask_prices, price)
                while bid_prices and bid_prices[-1] >= price:
                    del bid_sizes[bid_prices.pop()]
            ask_sizes[price] = size
        self._trim()

    def _trim(self) -> None:
        excess = len(self._bid_prices) - self.max_levels_per_side
        if excess > 0:
            for price in self._bid_prices[:excess]:
                del self._bids[price]
            del self._bid_prices[:excess]
        excess = len(self._ask_prices) - self.max_levels_per_side
        if excess > 0:
            for price in self._ask_prices[-excess:]:
                del self._asks[price]
            del self._ask_prices[-excess:]

    def best_bid(self) -> tuple[float, float] | None:
        if not self._bid_prices:
            return None
        price = self._bid_prices[-1]
        return price, self._bids[price]

    def best_ask(self) -> tuple[float, float] | None:
        if not self._ask_prices:
            return None
        price = self._ask_prices[0]
        return price, self._asks[price]

    def bids(self, levels: int) -> list[tuple[float, float]]:
        """Up to ``levels`` bid levels, best (highest) first."""
        prices = self._bid_prices[: -levels - 1 : -1] if levels > 0 else []
        return [(p, self._bids[p]) for p in prices]

    def asks(self, levels: int) -> list[tuple[float, float]]:
        """Up to ``levels`` ask levels, best (lowest) first."""
        return [(p, self._asks[p]) for p in self._ask_prices[:levels]]

    def level_counts(self) -> tuple[int, int]:
        return len(self._bid_prices), len(self._ask_prices)
