"""Price-level depth book of each (venue, symbol): the C book, the reading of depth updates' levels
from the bytes the server received, and the service's reasons for its checks.

The book itself is hftgate.native.depth_book's (levels in sorted arrays, updates applied in C,
top-N snapshots into numpy): each level set, or deleted when its size is 0. Incremental feeds
can leave stale levels behind (a level deleted in a message we never got, a diff stream started
without a snapshot), so newer information wins: setting a bid at a new price p deletes every ask
at or below p, and setting an ask deletes every bid at or above it, so the book is never
crossed. The farthest levels beyond ``max_levels_per_side`` are dropped.

The server reads each update's levels in C from the PublishQuotesRequest's own bytes
(:class:`RequestDepthLevels`) into C arrays, checked in the same call; the engine turns any other
(price, size) pairs into such arrays (``levels``) and checks them in C (``check_levels``); the
codes of the checks map to the RejectReason below. The engine applies the same arrays
(``DepthBook.apply_levels``).
"""

from __future__ import annotations

from hftgate.native import depth_book as native
from hftgate.native import ffi, lib
from hftgate.native.depth_book import DepthBook, Levels, check_levels, levels, levels_from_wire
from services.marketdata.reasons import RejectReason

#: The RejectReason of each code check_levels returns.
REJECT_REASON_OF_CHECK: dict[int, RejectReason] = {
    native.NOT_FINITE: RejectReason.NOT_FINITE,
    native.INVALID_PRICE: RejectReason.INVALID_PRICE,
    native.INVALID_SIZE: RejectReason.INVALID_SIZE,
    native.CROSSED: RejectReason.CROSSED,
}

# Every slot of a level array is written by the C read before anything reads it: clearing the
# memory first would only cost time.
_new_levels = ffi.new_allocator(should_clear_after_alloc=False)


class RequestDepthLevels:
    """The levels of each DepthUpdate of a PublishQuotesRequest, read in C from the request's
    bytes as received (native/include/hft_depth_wire.h), one update after the other in the
    order of ``request.depth_updates``: no second serialization, no Python object per level.

    One reader per request stream; :meth:`start` each message before its first update.
    """

    __slots__ = ("_ask_count", "_check", "_counts", "_cursor", "_data", "_length")

    def __init__(self) -> None:
        self._data = b""
        self._length = 0
        self._cursor = ffi.new("size_t[3]")  # the cursor, then the update's offset and length
        self._counts = ffi.new("size_t[2]")
        self._ask_count = self._counts + 1
        self._check = ffi.new("int *")

    def start(self, data: bytes) -> None:
        """Read the updates of the request encoded in ``data`` from its first on."""
        self._data = data
        self._length = len(data)
        self._cursor[0] = 0

    def next_levels(self, bid_count: int, ask_count: int) -> tuple[Levels, Levels, int]:
        """The next update's bids and asks as two C arrays, and what ``check_levels`` says of them
        (checked in the same C call, while they are in the cache); ``bid_count`` and
        ``ask_count`` are its decoded message's counts (``len`` of its repeated fields).
        ValueError when the bytes hold no such update (bytes protobuf decoded always do)."""
        bids = _new_levels("double[][2]", bid_count)
        asks = _new_levels("double[][2]", ask_count)
        counts = self._counts
        check = self._check
        code = lib.hft_depth_wire_next_levels(
            self._data,
            self._length,
            self._cursor,
            bids,
            bid_count,
            counts,
            asks,
            ask_count,
            self._ask_count,
            check,
        )
        if code != 0 or counts[0] != bid_count or counts[1] != ask_count:
            raise ValueError(
                f"no DepthUpdate of {bid_count} bid and {ask_count} ask levels next in the request "
                f"(read {counts[0]} and {counts[1]}, code {code})"
            )
        return bids, asks, check[0]

    def skip(self) -> None:
        """Go past the next update without reading its levels (one rejected on its count)."""
        cursor = self._cursor
        code = lib.hft_depth_wire_next_update(self._data, self._length, cursor, cursor + 1, cursor + 2)
        if code != 0:
            raise ValueError(f"no DepthUpdate next in the request (code {code})")


__all__ = [
    "REJECT_REASON_OF_CHECK",
    "DepthBook",
    "Levels",
    "RequestDepthLevels",
    "check_levels",
    "levels",
    "levels_from_wire",
]
