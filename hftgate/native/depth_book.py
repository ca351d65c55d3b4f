"""Price-level depth book of one (venue, symbol), kept by the C core (native/include/hft_depth_book.h).

Levels cross the boundary as one C array of (price, size) pairs per side, ``double[n][2]``
(``levels`` builds one from the pairs, cffi reading them straight from the Python tuples: no
object per level is made); ``check_levels`` says which of the service's rules an update breaks
first, ``DepthBook.apply_levels`` applies a checked one in C. Snapshots come back best first,
as pairs (``bids``/``asks``) or as numpy arrays (``top``).

Bounds: a side holds at most ``max_levels_per_side`` levels (the farthest are dropped), and an
update of more than ``max_update_levels`` levels on a side is refused whole (``OutOfRange``).
The C book is allocated here and freed when the Python object is collected. One writer per
book (the C contract); nothing here locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hftgate.native import check, ffi, lib

BID: int = lib.HFT_DEPTH_BID
ASK: int = lib.HFT_DEPTH_ASK
#: What ``check_levels`` returns (0 = acceptable), in the order the rules are checked.
NOT_FINITE: int = lib.HFT_DEPTH_NOT_FINITE
INVALID_PRICE: int = lib.HFT_DEPTH_INVALID_PRICE
INVALID_SIZE: int = lib.HFT_DEPTH_INVALID_SIZE
CROSSED: int = lib.HFT_DEPTH_CROSSED

#: A cffi ``double[n][2]`` array: n (price, size) pairs, owned by the Python object.
Levels = Any


def levels(pairs: Sequence[tuple[float, float]] | Levels) -> Levels:
    """(price, size) pairs as one C array of n pairs (an array :func:`levels_from_wire` made
    is returned as it is). Of the ways measured, cffi's conversion from the tuples is the
    fastest (~35 ns a pair, against ~47 for numpy's fromiter over a flattening chain and ~108
    for numpy.array). Each pair is a tuple or list of two numbers: cffi refuses a longer one
    (IndexError) and pads a shorter one with 0.0."""
    if isinstance(pairs, ffi.CData):
        return pairs
    if not isinstance(pairs, list | tuple):  # cffi reads only these in C
        pairs = list(pairs)
    return ffi.new("double[][2]", pairs)


def levels_from_wire(data: bytes, bid_count: int, ask_count: int) -> tuple[Levels, Levels]:
    """The bids and asks of a DepthUpdate's protobuf bytes (``data``: the message as received,
    or its ``SerializeToString()``) as two C arrays, read in C with no Python object per level
    (native/include/hft_depth_wire.h); ``bid_count`` and ``ask_count`` are the message's own
    counts (``len`` of its repeated fields). ValueError when the bytes are not such a message."""
    bids = ffi.new("double[][2]", bid_count)
    asks = ffi.new("double[][2]", ask_count)
    counts = ffi.new("size_t[2]")
    code = lib.hft_depth_wire_levels(data, len(data), bids, bid_count, counts, asks, ask_count, counts + 1)
    if code != 0 or counts[0] != bid_count or counts[1] != ask_count:
        raise ValueError(
            f"not a DepthUpdate of {bid_count} bid and {ask_count} ask levels "
            f"(read {counts[0]} and {counts[1]}, code {code})"
        )
    return bids, asks


def check_levels(bids: Levels, asks: Levels) -> int:
    """0 when the update is acceptable, else the first rule it breaks: NOT_FINITE (a NaN or
    infinite number), INVALID_PRICE (a price <= 0), INVALID_SIZE (a size < 0), CROSSED (the best
    bid of positive size at or above the best ask of positive size)."""
    code: int = lib.hft_depth_levels_check(bids, len(bids), asks, len(asks))
    if code < 0:
        check(code, "Cannot check depth levels")
    return code


class DepthBook:
    """Bid and ask levels of one (venue, symbol), in C. One writer."""

    __slots__ = ("_book", "_out", "max_levels_per_side", "max_update_levels")

    def __init__(self, max_levels_per_side: int, max_update_levels: int = 5_000) -> None:
        out = ffi.new("hft_depth_book **")
        check(
            lib.hft_depth_book_create(max_levels_per_side, max_update_levels, out),
            f"Cannot create a depth book of {max_levels_per_side} levels per side "
            f"and {max_update_levels} levels per update",
        )
        self._book = ffi.gc(out[0], lib.hft_depth_book_destroy)
        self._out = ffi.new("double[4]")
        self.max_levels_per_side = max_levels_per_side
        self.max_update_levels = max_update_levels

    def clear(self) -> None:
        lib.hft_depth_book_clear(self._book)

    def apply_levels(self, bids: Levels, asks: Levels) -> None:
        """Apply (price, size) arrays already accepted by ``check_levels``: each level set, or
        deleted when its size is 0; a new level deletes the other side's levels it crosses."""
        check(
            lib.hft_depth_book_apply(self._book, bids, len(bids), asks, len(asks)),
            "Cannot apply a depth update",
        )

    def apply(self, bids: Sequence[tuple[float, float]], asks: Sequence[tuple[float, float]]) -> None:
        """``apply_levels`` for (price, size) pairs."""
        self.apply_levels(levels(bids), levels(asks))

    def _best(self, side: int) -> tuple[float, float] | None:
        out = self._out
        if lib.hft_depth_book_best(self._book, side, out, out + 1) != 0:
            return None
        return out[0], out[1]

    def best_bid(self) -> tuple[float, float] | None:
        return self._best(BID)

    def best_ask(self) -> tuple[float, float] | None:
        return self._best(ASK)

    def top_of_book(self) -> tuple[float, float, float, float] | None:
        """(bid price, bid size, ask price, ask size) in one call; None while a side is empty."""
        out = self._out
        if lib.hft_depth_book_top(self._book, out) != 0:
            return None
        return out[0], out[1], out[2], out[3]

    def top(self, side: int, depth: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Up to ``depth`` levels of ``side`` (BID or ASK), best first: (prices, sizes)."""
        if side not in (BID, ASK):
            raise ValueError(f"side must be BID ({BID}) or ASK ({ASK}), got {side}")
        count = min(max(depth, 0), self.level_counts()[side])
        prices = np.empty(count, dtype=np.float64)
        sizes = np.empty(count, dtype=np.float64)
        written = ffi.new("size_t *")
        check(
            lib.hft_depth_book_levels(
                self._book,
                side,
                count,
                ffi.from_buffer("double[]", prices) if count else ffi.NULL,
                ffi.from_buffer("double[]", sizes) if count else ffi.NULL,
                written,
            ),
            "Cannot read depth levels",
        )
        return prices[: written[0]], sizes[: written[0]]

    def bids(self, depth: int) -> list[tuple[float, float]]:
        """Up to ``depth`` bid levels, best (highest) first."""
        prices, sizes = self.top(BID, depth)
        return list(zip(prices.tolist(), sizes.tolist(), strict=True))

    def asks(self, depth: int) -> list[tuple[float, float]]:
        """Up to ``depth`` ask levels, best (lowest) first."""
        prices, sizes = self.top(ASK, depth)
        return list(zip(prices.tolist(), sizes.tolist(), strict=True))

    def level_counts(self) -> tuple[int, int]:
        counts = ffi.new("size_t[2]")
        lib.hft_depth_book_counts(self._book, counts, counts + 1)
        return int(counts[0]), int(counts[1])
