"""Per-account order rate limits at the gateway: a token bucket per account, no gRPC import.

Each account's bucket holds up to ``burst_orders`` tokens and refills at ``orders_per_s``; an order
costs one token (a batch of N costs N, a replace costs one like an order). Cancels cost nothing,
so an account over its limit can always take its risk off the book.

Unary calls ask :meth:`TokenBuckets.take`: the call is refused (RESOURCE_EXHAUSTED with the
returned delay as its RetryInfo) unless the whole cost is there. Streams are paced instead of
refused (:meth:`TokenBuckets.take` with ``debt_ok``): the gateway stops reading the stream until
the tokens are there, so a stream over its rate slows down rather than ending.

Bounded: at most ``max_accounts`` buckets, least recently used first out. A bucket idle for
``burst_orders / orders_per_s`` seconds is full again, which is what a forgotten one starts as;
the LRU bucket is almost always such an idle one, so forgetting it lets nobody past their rate.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated_s: float


class TokenBuckets:
    """The token buckets of every account seen recently (single-threaded: the gateway's loop)."""

    def __init__(
        self,
        orders_per_s: float,
        burst_orders: int,
        max_accounts: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if orders_per_s <= 0 or burst_orders < 1 or max_accounts < 1:
            raise ValueError(
                f"a rate limit needs orders_per_s > 0, burst_orders >= 1 and max_accounts >= 1, got "
                f"{orders_per_s}, {burst_orders}, {max_accounts}"
            )
        self.orders_per_s = float(orders_per_s)
        self.burst_orders = burst_orders
        self.max_accounts = max_accounts
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _bucket(self, account: str) -> _Bucket:
        now = self._clock()
        bucket = self._buckets.get(account)
        if bucket is None:
            bucket = self._buckets[account] = _Bucket(float(self.burst_orders), now)
            if len(self._buckets) > self.max_accounts:
                self._buckets.popitem(last=False)
            return bucket
        self._buckets.move_to_end(account)
        elapsed = now - bucket.updated_s
        if elapsed > 0:
            bucket.tokens = min(float(self.burst_orders), bucket.tokens + elapsed * self.orders_per_s)
            bucket.updated_s = now
        return bucket

    def take(self, account: str, cost: int, *, debt_ok: bool = False) -> float:
        """Take ``cost`` tokens from ``account``'s bucket: 0.0 when taken, else the seconds until
        they will be there (nothing taken). ``math.inf`` when ``cost`` exceeds the burst and
        ``debt_ok`` is off (it can never be served whole). With ``debt_ok``, a cost above the burst
        is taken once the bucket is full, leaving it in debt (the next orders wait it out)."""
        if cost <= 0:
            return 0.0
        bucket = self._bucket(account)
        needed = float(cost)
        if cost > self.burst_orders:
            if not debt_ok:
                return math.inf
            needed = float(self.burst_orders)
        if bucket.tokens >= needed:
            bucket.tokens -= cost
            return 0.0
        return (needed - bucket.tokens) / self.orders_per_s

    def tokens(self, account: str) -> float:
        """Tokens in ``account``'s bucket now (a new account's bucket is full)."""
        return self._bucket(account).tokens

    def __len__(self) -> int:
        return len(self._buckets)
