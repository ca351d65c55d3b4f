"""Price-level depth book of each (venue, symbol): the C book, and the service's reasons for its checks.

The book itself is hftgate.native.depth_book's (levels in sorted arrays, updates applied in C,
top-N snapshots into numpy): each level set, or deleted when its size is 0. Incremental feeds
can leave stale levels behind (a level deleted in a message we never got, a diff stream started
without a snapshot), so newer information wins: setting a bid at a new price p deletes every ask
at or below p, and setting an ask deletes every bid at or above it, so the book is never
crossed. The farthest levels beyond ``max_levels_per_side`` are dropped.

The engine turns an update's (price, size) pairs into C arrays once (``levels``), checks them
in C (``check_levels``, whose codes map to the RejectReason below) and applies the same arrays
(``DepthBook.apply_levels``).
"""

from __future__ import annotations

from hftgate.native import depth_book as native
from hftgate.native.depth_book import DepthBook, Levels, check_levels, levels, levels_from_wire
from services.marketdata.reasons import RejectReason

#: The RejectReason of each code check_levels returns.
REJECT_REASON_OF_CHECK: dict[int, RejectReason] = {
    native.NOT_FINITE: RejectReason.NOT_FINITE,
    native.INVALID_PRICE: RejectReason.INVALID_PRICE,
    native.INVALID_SIZE: RejectReason.INVALID_SIZE,
    native.CROSSED: RejectReason.CROSSED,
}

__all__ = ["REJECT_REASON_OF_CHECK", "DepthBook", "Levels", "check_levels", "levels", "levels_from_wire"]
