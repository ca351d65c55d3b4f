"""Today's Python depth book and depth checks, kept as the oracle the C book is compared with.

Copied from services/marketdata/depth_book.py and engine.py as they were before the book moved
to C (hftgate.native.depth_book): a dict per side plus sorted price lists, and the engine's
validation of an update (numbers, then crossing). Only tests import this module.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence

from services.marketdata.reasons import RejectReason


class ReferenceDepthBook:
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


INF = math.inf


def _classify_numbers(prices: Iterable[float], sizes: Iterable[float], zero_size_ok: bool) -> int:
    prices, sizes = list(prices), list(sizes)
    if not all(math.isfinite(x) for x in (*prices, *sizes)):
        return RejectReason.NOT_FINITE
    if any(p <= 0.0 for p in prices):
        return RejectReason.INVALID_PRICE
    if any(s < 0.0 or (s == 0.0 and not zero_size_ok) for s in sizes):
        return RejectReason.INVALID_SIZE
    return 0


def _best_bid(levels: Sequence[tuple[float, float]]) -> float | None:
    best = 0.0
    for price, size in levels:
        if not (0.0 < price < INF and 0.0 <= size < INF):
            return None
        if size > 0.0 and price > best:
            best = price
    return best


def _best_ask(levels: Sequence[tuple[float, float]]) -> float | None:
    best = INF
    for price, size in levels:
        if not (0.0 < price < INF and 0.0 <= size < INF):
            return None
        if size > 0.0 and price < best:
            best = price
    return best


def depth_reject_reason(bids: Sequence[tuple[float, float]], asks: Sequence[tuple[float, float]]) -> int:
    """0, or the RejectReason the engine gave an update's levels before the C checks."""
    best_bid = _best_bid(bids)
    best_ask = _best_ask(asks)
    if best_bid is None or best_ask is None:
        return _classify_numbers(
            [p for p, _ in bids] + [p for p, _ in asks],
            [s for _, s in bids] + [s for _, s in asks],
            zero_size_ok=True,
        )
    if best_bid >= best_ask:
        return RejectReason.CROSSED
    return 0
