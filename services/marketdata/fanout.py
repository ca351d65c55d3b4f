"""Subscribe fan-out through one shared log, and the bounded queues of StreamArbitrage.

``UpdateLog`` (Subscribe, SubscribeBatched): every update of a subscribed symbol is appended
once to one ring of the last ``capacity`` updates, whoever subscribes; ingest never touches a
stream, so its cost per tick is the same with 1 or 256 subscribers, and a stream that never
reads costs nothing per tick. Each stream is a ``Subscriber``: a cursor into the log. While it
is at most ``capacity`` updates behind it gets every update of its symbols, in order. Once it
falls further behind (the log overwrote updates it had not read), it conflates: for each of
its symbols that changed meanwhile it gets one update, the symbol's latest, whose
``conflated`` counts the updates merged into it (the jump of ``symbol_sequence`` minus one,
so the count is exact per symbol), then it continues from the newest update. A stream so
holds at most ``capacity`` unread updates plus one queued update per subscribed symbol.

Encoding is shared the same way: each update of the log is encoded once, and every stream
reuses the bytes. The service's engine logs its updates encoded already (``append_encoded``,
one C call from the symbol's state, without a ``SymbolUpdate``: ingest pays ~1 us less per
tick with subscribers than encoding the tuple later); an update logged as a ``SymbolUpdate``
(``append``) is encoded by ``frames`` for the first stream that reads it. Streams that match
everything and keep up read the same runs of the log (one append wakes them all, and each reads
to the head), so ``run`` also shares the join of a run's bytes and its last sequence per symbol:
such a stream then costs a few Python operations per batch, not per update.

``ArbitrageSubscription`` (StreamArbitrage): open/close events cannot be merged, so a
full buffer drops its oldest event and the next event sent says how many were dropped.

Ingest appends; the streams' writers read. Both run on the service's one event loop thread,
so nothing here locks. A writer that found nothing ``wait``s: the next append calls its
``notify`` once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar

from services.marketdata.arbitrage import ArbitrageEvent, ArbitrageKind

_T = TypeVar("_T")


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
    """An update for one stream and how many older updates of its symbol were merged into it.

    An update read from the log as it was logged encoded has ``frame`` (its framed bytes) and
    no ``update``; every other has ``update`` and no ``frame``."""

    __slots__ = ("conflated", "frame", "update")

    def __init__(self, update: SymbolUpdate | None, conflated: int = 0, frame: bytes | None = None) -> None:
        self.update = update
        self.conflated = conflated
        self.frame = frame


Key = tuple[str, str]
_KEY = itemgetter(0)


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

    @property
    def matches_everything(self) -> bool:
        return self._everything

    def matches(self, venue: str, symbol: str) -> bool:
        return (
            self._everything
            or venue in self._venues
            or symbol in self._names
            or (venue, symbol) in self._pairs
        )


class UpdateLog:
    """The last ``capacity`` updates of the subscribed symbols, shared by every Subscribe stream."""

    __slots__ = (
        "_frames",
        "_last_run",
        "_pairs",
        "_update_of",
        "_updates",
        "_waiting",
        "capacity",
        "head",
        "latest",
        "read_head",
    )

    def __init__(self, capacity: int, update_of: Callable[[Any], SymbolUpdate] | None = None) -> None:
        """``update_of``: the update a ``latest`` source given to ``append_encoded`` stands for
        (the engine's: the symbol's state, as its last logged update)."""
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._update_of = update_of
        #: ``head`` when a stream last read the log: while it is less than ``capacity`` behind,
        #: some stream reads what is logged (``readers_keep_up``).
        self.read_head = 0
        #: Updates ever appended; update number g lives in slot g % capacity until overwritten.
        self.head = 0
        # Each slot's update as logged by ``append`` (None for one logged encoded).
        self._updates: list[SymbolUpdate | None] = [None] * capacity
        # ((venue, symbol), symbol_sequence) of each slot: a stream folds a run of them into its
        # last-sent sequences with one dict.update.
        self._pairs: list[tuple[Key, int] | None] = [None] * capacity
        # Each slot's encoding: as logged by ``append_encoded``, else made by the first stream
        # that sends it (None until then).
        self._frames: list[bytes | None] = [None] * capacity
        #: The newest update of every symbol ever appended (at most one per tracked symbol),
        #: or for one logged encoded what stands for it (``latest_update``): what a stream
        #: that fell behind gets.
        self.latest: dict[Key, Any] = {}
        self._waiting: list[Subscriber] = []
        # (start, end, joined frames, last symbol_sequence per key) of the run last asked for
        # by ``run``. Updates never change once appended, so it stays right after the ring
        # overwrites their slots.
        self._last_run: tuple[int, int, bytes, dict[Key, int]] | None = None

    def append(self, key: Key, update: SymbolUpdate) -> None:
        slot = self.head % self.capacity
        self._updates[slot] = update
        self._pairs[slot] = (key, update.symbol_sequence)
        self._frames[slot] = None
        self.head += 1
        self.latest[key] = update
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            for subscriber in waiting:
                subscriber.notify()

    def append_encoded(self, key: Key, symbol_sequence: int, frame: bytes, latest: Any) -> None:
        """Log an update already encoded as a MarketUpdates entry (``framed_update``'s bytes);
        ``latest`` gives it back as a ``SymbolUpdate`` through ``update_of`` should a stream
        that fell behind need it (the engine passes the symbol's state, which the next change
        of the symbol logs again)."""
        slot = self.head % self.capacity
        self._updates[slot] = None
        self._pairs[slot] = (key, symbol_sequence)
        self._frames[slot] = frame
        self.head += 1
        self.latest[key] = latest
        if self._waiting:
            waiting, self._waiting = self._waiting, []
            for subscriber in waiting:
                subscriber.notify()

    def append_unread(self, key: Key, latest: Any) -> None:
        """Count an update that no stream can read from the ring, keeping it only as the
        symbol's latest (``latest`` as for ``append_encoded``). Only while no reader keeps up
        (``readers_keep_up`` is False): every stream is then ``capacity`` or more updates
        behind, so after this one more it conflates from ``latest`` at its next read and never
        reads this slot, and a new stream starts after it. A stream that stopped reading so
        costs ingest one dict store per tick, not an update built and logged."""
        self.head += 1
        self.latest[key] = latest
        if self._waiting:  # (none wait while none keeps up; cheap to be sure)
            waiting, self._waiting = self._waiting, []
            for subscriber in waiting:
                subscriber.notify()

    @property
    def readers_keep_up(self) -> bool:
        """A stream read the log within its last ``capacity`` updates: what is logged now will
        be read, so it is worth encoding as it is logged. When none did (only streams that
        stopped reading), no stream can read what is logged now (``append_unread``)."""
        return self.head - self.read_head < self.capacity

    def latest_update(self, source: Any) -> SymbolUpdate:
        """The update a value of ``latest`` stands for."""
        if type(source) is SymbolUpdate or self._update_of is None:
            return source  # type: ignore[no-any-return]
        return self._update_of(source)

    def _slice(self, items: list[_T], start: int, end: int) -> list[_T]:
        """Items of updates start..end-1, all still in the ring."""
        first = start % self.capacity
        last = first + (end - start)
        if last <= self.capacity:
            return items[first:last]
        return items[first:] + items[: last - self.capacity]

    def logged(self, index: int) -> QueuedUpdate:
        """Update ``index`` (still in the ring) for one stream: its frame when it was logged
        encoded, else the update."""
        slot = index % self.capacity
        frame = self._frames[slot]
        update = self._updates[slot]
        return QueuedUpdate(update, 0, frame if update is None else None)

    def pairs(self, start: int, end: int) -> list[tuple[Key, int]]:
        return self._slice(self._pairs, start, end)  # type: ignore[arg-type]

    def frames(self, start: int, end: int, encode: Callable[[SymbolUpdate], bytes]) -> list[bytes]:
        """The encodings of updates start..end-1, each made at most once for all streams."""
        capacity, stored = self.capacity, self._frames
        first = start % capacity
        last = first + (end - start)
        runs = ((first, last),) if last <= capacity else ((first, capacity), (0, last - capacity))
        frames: list[bytes] = []
        for lo, hi in runs:
            run = stored[lo:hi]
            if None in run:
                updates = self._updates[lo:hi]
                if run.count(None) == len(run):  # the usual case: the first stream to read these
                    run = list(map(encode, updates))  # type: ignore[arg-type]
                else:
                    run = [
                        frame if frame is not None else encode(update)  # type: ignore[arg-type]
                        for frame, update in zip(run, updates, strict=True)
                    ]
                stored[lo:hi] = run
            frames += run  # type: ignore[arg-type]
        return frames

    def run(
        self, start: int, end: int, encode: Callable[[SymbolUpdate], bytes]
    ) -> tuple[bytes, dict[Key, int]]:
        """Updates start..end-1 encoded and joined, and the last symbol_sequence of each key
        among them; made once for every stream that reads the same run."""
        last_run = self._last_run
        if last_run is not None and last_run[0] == start and last_run[1] == end:
            return last_run[2], last_run[3]
        joined = b"".join(self.frames(start, end, encode))
        last_sequences = dict(self.pairs(start, end))
        self._last_run = (start, end, joined, last_sequences)
        return joined, last_sequences

    def wait(self, subscriber: Subscriber) -> None:
        """Call ``subscriber.notify`` once, at the next append."""
        if subscriber not in self._waiting:
            self._waiting.append(subscriber)

    def forget(self, subscriber: Subscriber) -> None:
        if subscriber in self._waiting:
            self._waiting.remove(subscriber)


class Subscriber:
    """One Subscribe stream: its filter and where it is in the shared log."""

    __slots__ = (
        "_everything",
        "_log",
        "_pending",
        "_pending_by_key",
        "cursor",
        "filter",
        "last_sequence",
        "notify",
    )

    def __init__(self, log: UpdateLog, symbol_filter: SymbolFilter, notify: Callable[[], None]) -> None:
        self._log = log
        self.filter = symbol_filter
        self.notify = notify
        self._everything = symbol_filter.matches_everything
        #: The next log update this stream reads.
        self.cursor = log.head
        #: symbol_sequence of the last update sent (or skipped as known) per symbol; a symbol
        #: missing here has sent nothing since it appeared (sequence 0). At most one entry per
        #: subscribed symbol.
        self.last_sequence: dict[Key, int] = {}
        # Updates to send before the log: the initial snapshot, and the conflated latest
        # states after falling behind; at most one per symbol (a newer one merges into it).
        self._pending: deque[QueuedUpdate] = deque()
        self._pending_by_key: dict[Key, QueuedUpdate] = {}

    def queue(self, key: Key, update: SymbolUpdate) -> None:
        """Send ``update`` (a snapshot) before anything from the log; notifies the writer."""
        entry = self._pending_by_key[key] = QueuedUpdate(update)
        self._pending.append(entry)
        self.last_sequence[key] = update.symbol_sequence
        self.notify()

    def skip_to(self, key: Key, symbol_sequence: int) -> None:
        """The stream starts after ``symbol_sequence`` for ``key``: nothing before it is owed."""
        self.last_sequence[key] = symbol_sequence

    def behind(self) -> int:
        """Log updates this stream has not read yet (those it may lose to conflation)."""
        return self._log.head - self.cursor

    def _catch_up(self) -> None:
        """After falling more than the log behind: the latest state of each changed symbol."""
        log = self._log
        if log.head - self.cursor <= log.capacity:
            return
        self.cursor = log.head
        last_sequence, matches, everything = self.last_sequence, self.filter.matches, self._everything
        latest_update = log.latest_update
        for key, source in log.latest.items():
            last = last_sequence.get(key)
            if last is None:
                if not (everything or matches(*key)):
                    continue
                last = 0
            update = latest_update(source)
            if update.symbol_sequence > last:
                queued = self._pending_by_key.get(key)
                if queued is None:
                    queued = self._pending_by_key[key] = QueuedUpdate(
                        update, update.symbol_sequence - last - 1
                    )
                    self._pending.append(queued)
                else:  # still queued from the last time: this one merges into it
                    queued.conflated += update.symbol_sequence - last
                    queued.update = update
                last_sequence[key] = update.symbol_sequence

    def _next_pending(self) -> QueuedUpdate:
        entry = self._pending.popleft()
        update = entry.update
        assert update is not None  # (queued updates are never frames)
        key = (update.venue, update.symbol)
        if self._pending_by_key.get(key) is entry:
            del self._pending_by_key[key]
        return entry

    def take(self) -> QueuedUpdate | None:
        """The next update of this stream, or None (and ``notify`` at the next append)."""
        self._log.read_head = self._log.head
        self._catch_up()
        if self._pending:
            return self._next_pending()
        log = self._log
        everything, matches = self._everything, self.filter.matches
        while self.cursor < log.head:
            index = self.cursor
            self.cursor += 1
            ((key, sequence),) = log.pairs(index, index + 1)
            if everything or matches(*key):
                self.last_sequence[key] = sequence
                return log.logged(index)
        log.wait(self)
        return None

    def take_encoded(
        self,
        max_updates: int,
        encode: Callable[[SymbolUpdate], bytes],
        encode_conflated: Callable[[SymbolUpdate, int], bytes],
    ) -> tuple[list[bytes], int] | None:
        """Up to ``max_updates`` next updates, encoded, and how many; None when there are none
        (then ``notify`` at the next append). The bytes are in order but one part may hold many
        updates (a run shared with other streams), so only their join is a batch. Updates read
        from the log use ``encode`` (shared by every stream); queued ones ``encode_conflated``
        with their conflation count."""
        self._log.read_head = self._log.head
        self._catch_up()
        parts: list[bytes] = []
        pending = self._pending
        while pending and len(parts) < max_updates:
            entry = self._next_pending()
            parts.append(encode_conflated(entry.update, entry.conflated))  # type: ignore[arg-type]
        count = len(parts)
        log = self._log
        while count < max_updates and self.cursor < log.head:
            start = self.cursor
            end = min(log.head, start + max_updates - count)
            self.cursor = end
            if self._everything:
                joined, last_sequences = log.run(start, end, encode)
                parts.append(joined)
                count += end - start
                self.last_sequence.update(last_sequences)
                continue
            pairs = log.pairs(start, end)
            matches = self.filter.matches
            wanted = [i for i, key in enumerate(map(_KEY, pairs)) if matches(*key)]
            for i in wanted:  # only what this stream sends gets encoded
                parts += log.frames(start + i, start + i + 1, encode)
            count += len(wanted)
            self.last_sequence.update(pairs[i] for i in wanted)
        if not count:
            log.wait(self)
            return None
        return parts, count

    def __len__(self) -> int:
        """Updates this stream holds: queued ones, plus unread ones still in the log."""
        return len(self._pending) + min(self.behind(), self._log.capacity)

    def clear(self) -> None:
        self._pending.clear()
        self._pending_by_key.clear()
        self.cursor = self._log.head
        self._log.forget(self)


class ArbitrageSubscription:
    """The bounded queue of one StreamArbitrage stream."""

    __slots__ = ("_queue", "capacity", "dropped", "kinds", "notify")

    def __init__(self, kinds: Sequence[ArbitrageKind], capacity: int, notify: Callable[[], None]) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.kinds = frozenset(kinds)
        self.capacity = capacity
        self.notify = notify
        # A full deque of maxlen drops its oldest event as a new one is appended.
        self._queue: deque[ArbitrageEvent] = deque(maxlen=capacity)
        # Events dropped since the last one taken.
        self.dropped = 0

    def wants(self, event: ArbitrageEvent) -> bool:
        return not self.kinds or event.kind in self.kinds

    def offer(self, event: ArbitrageEvent) -> None:
        """Queue ``event``; ``notify`` only when the queue was empty, since the stream's writer
        waits only then (a stream that stopped reading so costs ingest an append per event)."""
        if self.kinds and event.kind not in self.kinds:
            return
        queue = self._queue
        if not queue:
            queue.append(event)
            self.notify()
            return
        if len(queue) == self.capacity:
            self.dropped += 1
        queue.append(event)

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
