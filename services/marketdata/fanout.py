"""Per-subscriber buffers that let ingest hand updates to streams without ever waiting.

``SubscriberBuffer`` (Subscribe): a FIFO of at most ``capacity`` updates while the
client keeps up. Once it is full the client is behind, and an update for a symbol that
already has an update queued replaces that queued update in place (conflation to the
latest, counted in ``conflated``) instead of queueing. An update for a symbol with
nothing queued is still appended, so the buffer holds at most ``capacity`` plus one
update per subscribed symbol, and the latest state of every symbol always gets through.

``ArbitrageSubscription`` (StreamArbitrage): open/close events cannot be merged, so a
full buffer drops its oldest event and the next event sent says how many were dropped.

Ingest calls ``offer``; the stream's writer drains with ``take``. Both run on the
service's one event loop thread, so nothing here locks. ``notify`` wakes the writer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

from services.marketdata.arbitrage import ArbitrageEvent, ArbitrageKind


class UpdateKind(IntEnum):
    """The proto's UpdateKind values."""

    QUOTE = 1
    TRADE = 2
    SNAPSHOT = 3


class SymbolUpdate(NamedTuple):
    """The state of one symbol right after one tick, as a subscriber sees it."""

    kind: UpdateKind
    symbol_sequence: int
    venue: str
    symbol: str
    bid_price: float
    bid_size: float
    ask_price: float
    ask_size: float
    top_ts_ns: int
    # (price, size, side, exchange_ts_ns, trade_id) of the last trade, or None before any.
    last_trade: tuple[float, float, int, int, int] | None
    vwap: float
    receive_ts_ns: int


class QueuedUpdate:
    """A queued update and how many older updates of its symbol were merged into it."""

    __slots__ = ("conflated", "update")

    def __init__(self, update: SymbolUpdate) -> None:
        self.update = update
        self.conflated = 0


@dataclass(frozen=True)
class SymbolFilter:
    """(venue, symbol) patterns; "" matches anything; no patterns matches everything.

    ``matches`` costs a few set lookups however many patterns there are, so that a filter of
    many patterns over many symbols (a snapshot, a new subscription) stays linear in the symbols.
    """

    patterns: tuple[tuple[str, str], ...] = ()
    _everything: bool = field(init=False, repr=False, compare=False)
    _pairs: frozenset[tuple[str, str]] = field(init=False, repr=False, compare=False)
    _venues: frozenset[str] = field(init=False, repr=False, compare=False)
    _names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        patterns = self.patterns
        set_ = object.__setattr__
        set_(self, "_everything", not patterns or any(not v and not s for v, s in patterns))
        set_(self, "_pairs", frozenset((v, s) for v, s in patterns if v and s))
        set_(self, "_venues", frozenset(v for v, s in patterns if v and not s))
        set_(self, "_names", frozenset(s for v, s in patterns if s and not v))

    def matches(self, venue: str, symbol: str) -> bool:
        return (
            self._everything
            or venue in self._venues
            or symbol in self._names
            or (venue, symbol) in self._pairs
        )


class SubscriberBuffer:
    """The bounded, conflating queue of one Subscribe stream."""

    __slots__ = ("_newest_by_symbol", "_queue", "capacity", "filter", "notify", "offered")

    def __init__(self, symbol_filter: SymbolFilter, capacity: int, notify: Callable[[], None]) -> None:
        self.filter = symbol_filter
        self.capacity = capacity
        self.notify = notify
        self._queue: deque[QueuedUpdate] = deque()
        # The newest queued entry per (venue, symbol): where a conflated update goes.
        self._newest_by_symbol: dict[tuple[str, str], QueuedUpdate] = {}
        self.offered = 0

    def offer(self, key: tuple[str, str], update: SymbolUpdate) -> None:
        self.offered += 1
        newest = self._newest_by_symbol.get(key)
        if newest is not None and len(self._queue) >= self.capacity:
            newest.update = update
            newest.conflated += 1
        else:
            entry = QueuedUpdate(update)
            self._queue.append(entry)
            self._newest_by_symbol[key] = entry
        self.notify()

    def take(self) -> QueuedUpdate | None:
        """The oldest queued update, or None when empty."""
        if not self._queue:
            return None
        entry = self._queue.popleft()
        key = (entry.update.venue, entry.update.symbol)
        if self._newest_by_symbol.get(key) is entry:
            del self._newest_by_symbol[key]
        return entry

    def __len__(self) -> int:
        return len(self._queue)

    def clear(self) -> None:
        self._queue.clear()
        self._newest_by_symbol.clear()


class ArbitrageSubscription:
    """The bounded queue of one StreamArbitrage stream."""

    __slots__ = ("_queue", "capacity", "dropped", "kinds", "notify")

    def __init__(self, kinds: Sequence[ArbitrageKind], capacity: int, notify: Callable[[], None]) -> None:
        self.kinds = frozenset(kinds)
        self.capacity = capacity
        self.notify = notify
        self._queue: deque[ArbitrageEvent] = deque()
        # Events dropped since the last one taken.
        self.dropped = 0

    def wants(self, event: ArbitrageEvent) -> bool:
        return not self.kinds or event.kind in self.kinds

    def offer(self, event: ArbitrageEvent) -> None:
        if not self.wants(event):
            return
        if len(self._queue) >= self.capacity:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(event)
        self.notify()

    def take(self) -> tuple[ArbitrageEvent, int] | None:
        """The oldest event and the number dropped before it, or None when empty."""
        if not self._queue:
            return None
        dropped, self.dropped = self.dropped, 0
        return self._queue.popleft(), dropped

    def __len__(self) -> int:
        return len(self._queue)

    def clear(self) -> None:
        self._queue.clear()
