"""L1: the in-process near cache (W-TinyLFU), bounded by entries and bytes, with per-entry TTL.

Why W-TinyLFU and not LRU: trading reference data is read with a heavy skew (a few hundred
instruments and accounts take most lookups) while scans and one-off keys pass through. LRU
lets every one-off key push out a hot one; W-TinyLFU (Einziger, Friedman & Manes, 2017, the
policy of Caffeine) puts new keys in a small LRU *window* and lets a window victim into the
main area only if a frequency sketch says it is asked for more often than the main area's
own victim. The main area is a segmented LRU: *probation* for keys seen once in main,
*protected* for keys hit again there.

Why our own and not the ``theine`` library (whose core is the same policy, in Rust): on the
benchmark's Zipf trace this implementation is at least as good (``hftgate bench cache``
prints both, same trace, same run), and it has what theine lacks and the cache service
needs: a byte bound, key iteration for pattern invalidation, and load tokens (below).
Every operation is O(1): dict lookups and OrderedDict moves (C code) plus a four-row
count-min sketch.

Load tokens close the classic near-cache race: a load starts, an invalidation for the same
key arrives and is applied, then the load finishes and would put the old value back. A
loader takes :meth:`NearCache.load_token` before it asks the next level and passes it to
:meth:`NearCache.put`; the put is refused if an invalidation that covers the key (a delete,
a pattern, a flush) was applied since the token was taken.

Not thread-safe: one event loop owns a NearCache (the single-writer rule).
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from services.cache import globs

WINDOW = 0
PROBATION = 1
PROTECTED = 2

# Bookkeeping bytes charged per entry on top of key and value (dict slots, the entry object):
# an estimate, so that a cache of many tiny values is still bounded in memory.
ENTRY_OVERHEAD_BYTES = 160

_MASK64 = (1 << 64) - 1
# Caffeine's guard against hash flooding: a warm candidate may win a random admission.
_WARM_CANDIDATE_FREQUENCY = 6
_HALVE = bytes(i >> 1 for i in range(256))


class FrequencySketch:
    """Approximate access counts of every key seen recently, in O(1) memory per cache slot.

    A count-min sketch of saturating counters (0..15), four per key, updated conservatively
    (only the counters at the key's current minimum grow), so one-off keys barely disturb
    it. A key's four counters share one 64-byte block, one per 16-byte quarter, so an
    update touches one cache line. After ``sample_factor`` x capacity updates that changed
    a counter, every counter is halved: old popularity fades and the sketch follows a
    workload that shifts.
    """

    __slots__ = ("_block_mask", "_sample_size", "_samples", "_table", "epoch")

    def __init__(self, capacity: int, *, sample_factor: int = 10) -> None:
        # 32 one-byte counters per cached entry: on the benchmark's Zipf trace fewer cost hit
        # ratio (16: -0.4 points, 8: -0.8), and 32 bytes is small beside an entry.
        size = max(64, 1 << (max(1, capacity) * 32 - 1).bit_length())
        self._table = bytearray(size)
        self._block_mask = (size >> 6) - 1
        self._sample_size = max(16, sample_factor * max(1, capacity))
        self._samples = 0
        # Bumped by every halving: lets callers cache "this key is saturated" per epoch.
        self.epoch = 0

    def increment(self, key: str) -> bool:
        """Count one access to ``key``; returns True when all its counters are saturated."""
        h = hash(key) & _MASK64
        base = (h & self._block_mask) << 6
        i0 = base + ((h >> 40) & 15)
        i1 = base + 16 + ((h >> 44) & 15)
        i2 = base + 32 + ((h >> 48) & 15)
        i3 = base + 48 + ((h >> 52) & 15)
        t = self._table
        c0 = t[i0]
        c1 = t[i1]
        c2 = t[i2]
        c3 = t[i3]
        low = c0 if c0 < c1 else c1
        if c2 < low:
            low = c2
        if c3 < low:
            low = c3
        if low == 15:
            return True
        nxt = low + 1
        if c0 == low:
            t[i0] = nxt
        if c1 == low:
            t[i1] = nxt
        if c2 == low:
            t[i2] = nxt
        if c3 == low:
            t[i3] = nxt
        # Like Caffeine, count only updates that changed the sketch: the hottest keys,
        # saturated, do not hasten the aging of everything else.
        self._samples += 1
        if self._samples >= self._sample_size:
            self._age()
        return nxt == 15

    def frequency(self, key: str) -> int:
        """Estimated recent accesses to ``key`` (never below the truth before saturation)."""
        h = hash(key) & _MASK64
        base = (h & self._block_mask) << 6
        t = self._table
        return min(
            t[base + ((h >> 40) & 15)],
            t[base + 16 + ((h >> 44) & 15)],
            t[base + 32 + ((h >> 48) & 15)],
            t[base + 48 + ((h >> 52) & 15)],
        )

    def _age(self) -> None:
        self._table = self._table.translate(_HALVE)
        self._samples //= 2
        self.epoch += 1


class L1Entry:
    """One cached value, or a cached miss (``negative``), with its version and expiry.

    Entries are also the links of their segment's LRU list (``prev``/``next``): intrusive
    links make every move O(1) with no allocation and no table resize on the read path
    (an OrderedDict's occasional node-table rebuild cost tens of microseconds at p99.9).
    """

    __slots__ = (
        "expires_ns",
        "key",
        "negative",
        "next",
        "prev",
        "saturated_epoch",
        "segment",
        "size",
        "value",
        "version",
    )

    def __init__(
        self, key: str, value: bytes, version: int, expires_ns: int, negative: bool, size: int
    ) -> None:
        self.key = key
        self.value = value
        self.version = version
        # time.monotonic_ns() deadline; 0 = no expiry.
        self.expires_ns = expires_ns
        self.negative = negative
        self.size = size
        self.segment = WINDOW
        # The sketch epoch in which this key's counters were seen saturated (-1: never).
        self.saturated_epoch = -1
        self.prev: L1Entry = self
        self.next: L1Entry = self


class _LruList:
    """A circular doubly linked list of entries around a sentinel: head.next is the LRU end."""

    __slots__ = ("head", "size")

    def __init__(self) -> None:
        self.head = L1Entry("", b"", 0, 0, False, 0)
        self.size = 0

    def append(self, entry: L1Entry) -> None:
        """Insert ``entry`` at the most recently used end."""
        head = self.head
        last = head.prev
        entry.prev = last
        entry.next = head
        last.next = entry
        head.prev = entry
        self.size += 1

    def unlink(self, entry: L1Entry) -> None:
        entry.prev.next = entry.next
        entry.next.prev = entry.prev
        self.size -= 1

    def move_to_end(self, entry: L1Entry) -> None:
        head = self.head
        last = head.prev
        if last is entry:
            return
        entry.prev.next = entry.next
        entry.next.prev = entry.prev
        entry.prev = last
        entry.next = head
        last.next = entry
        head.prev = entry

    def oldest(self) -> L1Entry | None:
        first = self.head.next
        return None if first is self.head else first

    def clear(self) -> None:
        self.head.prev = self.head.next = self.head
        self.size = 0


@dataclass
class NearCacheStats:
    """Counters since construction."""

    hits: int
    misses: int
    negative_hits: int
    evictions: int
    expirations: int
    entries: int
    bytes: int
    refused_stale_puts: int

    @property
    def hit_ratio(self) -> float:
        looked_up = self.hits + self.misses
        return self.hits / looked_up if looked_up else 0.0


@dataclass(frozen=True)
class _Invalidation:
    sequence: int
    key: str | None  # one key, or
    pattern: str | None  # a glob, or neither: everything was flushed


class NearCache:
    """W-TinyLFU near cache of ``str`` keys to ``bytes`` values.

    ``max_entries`` and ``max_bytes`` bound it (bytes count key + value + a per-entry
    overhead); ``window_percent`` of the entries form the admission window, and
    ``protected_percent`` of the main area may be protected.
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        *,
        window_percent: float = 1.0,
        protected_percent: float = 80.0,
        sample_factor: int = 10,
        invalidation_history: int = 4096,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        seed: int = 0,
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"near cache bounds must be positive: {max_entries} entries, {max_bytes} bytes")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._window_percent = window_percent
        self._protected_percent = protected_percent
        self._sample_factor = sample_factor
        self._window_cap = self._main_cap = self._protected_cap = 1
        self._set_caps(max_entries)
        self._entries: dict[str, L1Entry] = {}
        self._window = _LruList()
        self._probation = _LruList()
        self._protected = _LruList()
        self._sketch = FrequencySketch(max_entries, sample_factor=sample_factor)
        self._clock_ns = clock_ns
        self._random = random.Random(seed)
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._negative_hits = 0
        self._evictions = 0
        self._expirations = 0
        self._refused = 0
        self._sequence = 0
        self._history: deque[_Invalidation] = deque(maxlen=invalidation_history)

    # --- lookups -----------------------------------------------------------------------
    def ttl_left_ms(self, entry: L1Entry) -> int:
        """How long ``entry`` stays held, in ms (at least 1 while held); 0 when it never expires."""
        if not entry.expires_ns:
            return 0
        return max(1, (entry.expires_ns - self._clock_ns()) // 1_000_000)

    def get(self, key: str) -> L1Entry | None:
        """The live entry for ``key`` (possibly a cached miss: check ``.negative``), or None."""
        entry = self._entries.get(key)
        if entry is None:
            self._misses += 1
            return None
        if entry.expires_ns and entry.expires_ns <= self._clock_ns():
            self._remove(entry)
            self._expirations += 1
            self._misses += 1
            return None
        sketch = self._sketch
        # A key whose counters are all saturated cannot count higher until the next aging:
        # skip the sketch for it (most hits, on a skewed workload).
        if entry.saturated_epoch != sketch.epoch and sketch.increment(key):
            entry.saturated_epoch = sketch.epoch
        segment = entry.segment
        if segment == PROTECTED:
            self._protected.move_to_end(entry)
        elif segment == WINDOW:
            self._window.move_to_end(entry)
        else:
            self._promote(entry)
        if entry.negative:
            self._negative_hits += 1
        else:
            self._hits += 1
        return entry

    def __contains__(self, key: str) -> bool:
        """True if ``key`` is cached and not expired (no effect on recency or counters)."""
        return self.peek(key) is not None

    def peek(self, key: str) -> L1Entry | None:
        """The entry for ``key`` if cached and not expired, with no effect on policy or counters."""
        entry = self._entries.get(key)
        if entry is None or (entry.expires_ns and entry.expires_ns <= self._clock_ns()):
            return None
        return entry

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> Iterator[str]:
        """A snapshot of the cached keys (expired ones included until they are touched)."""
        return iter(list(self._entries))

    # --- writes ------------------------------------------------------------------------
    def load_token(self) -> int:
        """A mark to pass to :meth:`put` for a value loaded from elsewhere (see module doc)."""
        return self._sequence

    def put(
        self,
        key: str,
        value: bytes,
        *,
        version: int = 0,
        ttl_ms: int = 0,
        negative: bool = False,
        token: int | None = None,
    ) -> bool:
        """Cache ``value`` (or a miss, ``negative=True``) for ``ttl_ms`` (0 = until evicted).

        Returns False, caching nothing, when ``token`` is given and an invalidation covering
        ``key`` was applied since it was taken, or when the entry alone exceeds ``max_bytes``.
        """
        if token is not None and token != self._sequence and self._invalidated_since(key, token):
            self._refused += 1
            return False
        size = len(key) + len(value) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            self.delete(key)
            return False
        expires_ns = self._clock_ns() + ttl_ms * 1_000_000 if ttl_ms > 0 else 0
        sketch = self._sketch
        entry = self._entries.get(key)
        if entry is not None:
            if entry.saturated_epoch != sketch.epoch and sketch.increment(key):
                entry.saturated_epoch = sketch.epoch
            self._bytes += size - entry.size
            entry.value = value
            entry.version = version
            entry.expires_ns = expires_ns
            entry.negative = negative
            entry.size = size
            segment = entry.segment
            if segment == PROTECTED:
                self._protected.move_to_end(entry)
            elif segment == WINDOW:
                self._window.move_to_end(entry)
            else:
                self._promote(entry)
        else:
            sketch.increment(key)
            entry = L1Entry(key, value, version, expires_ns, negative, size)
            self._entries[key] = entry
            self._window.append(entry)
            self._bytes += size
            if self._window.size > self._window_cap:
                self._evict_from_window()
        if self._bytes > self.max_bytes:
            self._evict_for_bytes()
        return True

    def delete(self, key: str) -> bool:
        """Drop ``key``; loads that started earlier will not put it back. True if it was cached."""
        self._record(_Invalidation(self._sequence + 1, key, None))
        entry = self._entries.get(key)
        if entry is None:
            return False
        self._remove(entry)
        return True

    def delete_matching(self, pattern: str) -> int:
        """Drop every key matching the Redis glob ``pattern``; returns how many were cached."""
        regex = globs.compile_glob(pattern)
        self._record(_Invalidation(self._sequence + 1, None, pattern))
        doomed = [entry for key, entry in self._entries.items() if regex.fullmatch(key)]
        for entry in doomed:
            self._remove(entry)
        return len(doomed)

    def expire_within(self, ttl_ms: int) -> int:
        """Let nothing held now outlive ``ttl_ms`` (0: expire it all at once); returns how many
        entries it shortened.

        For when invalidations may have stopped arriving: what is held stays usable for the
        bound, and is no longer trusted after it. Loads that began before are not put back
        (it counts as an invalidation of everything for load tokens), since their answers may
        predate the moment invalidations stopped. O(entries); rare by nature.
        """
        self._record(_Invalidation(self._sequence + 1, None, None))
        # 0 would mean "never expires": a deadline of "now" is at least 1.
        deadline_ns = max(1, self._clock_ns() + max(0, ttl_ms) * 1_000_000)
        shortened = 0
        for entry in self._entries.values():
            if not entry.expires_ns or entry.expires_ns > deadline_ns:
                entry.expires_ns = deadline_ns
                shortened += 1
        return shortened

    def clear(self) -> int:
        """Drop everything (e.g. after invalidations may have been missed); returns how many."""
        self._record(_Invalidation(self._sequence + 1, None, None))
        count = len(self._entries)
        self._entries.clear()
        self._window.clear()
        self._probation.clear()
        self._protected.clear()
        self._bytes = 0
        return count

    def resize(self, max_entries: int) -> int:
        """Changes the entry bound at once (the scaler's optimiser tunes it live); returns how many
        entries were evicted to fit.

        Shrinking evicts as a full cache would: probation's and the window's oldest first, the
        protected segment's last, then demotes protected entries beyond its new share. Growing
        more than twofold gives the frequency sketch a size for the new bound (frequencies start
        over: a sketch sized for far fewer keys would count every key as popular).
        """
        if max_entries < 1:
            raise ValueError(f"near cache bound must be positive: {max_entries} entries")
        before = self._evictions
        if max_entries > 2 * self.max_entries:
            self._sketch = FrequencySketch(max_entries, sample_factor=self._sample_factor)
        self.max_entries = max_entries
        self._set_caps(max_entries)
        while len(self._entries) > max_entries:
            victim = self._probation.oldest() or self._window.oldest() or self._protected.oldest()
            if victim is None:
                break
            self._discard(victim)
        while self._window.size > self._window_cap:
            self._evict_from_window()
        while self._protected.size > self._protected_cap:
            demoted = self._protected.head.next
            self._protected.unlink(demoted)
            demoted.segment = PROBATION
            self._probation.append(demoted)
        return self._evictions - before

    # --- statistics --------------------------------------------------------------------
    def stats(self) -> NearCacheStats:
        return NearCacheStats(
            hits=self._hits,
            misses=self._misses,
            negative_hits=self._negative_hits,
            evictions=self._evictions,
            expirations=self._expirations,
            entries=len(self._entries),
            bytes=self._bytes,
            refused_stale_puts=self._refused,
        )

    # --- policy internals --------------------------------------------------------------
    def _set_caps(self, max_entries: int) -> None:
        self._window_cap = max(1, round(max_entries * self._window_percent / 100.0))
        self._main_cap = max(1, max_entries - self._window_cap)
        self._protected_cap = max(1, int(self._main_cap * self._protected_percent / 100.0))

    def _promote(self, entry: L1Entry) -> None:
        """A probation entry was hit: it moves to protected, whose LRU end may drop back."""
        self._probation.unlink(entry)
        entry.segment = PROTECTED
        protected = self._protected
        protected.append(entry)
        if protected.size > self._protected_cap:
            demoted = protected.head.next
            protected.unlink(demoted)
            demoted.segment = PROBATION
            self._probation.append(demoted)

    def _evict_from_window(self) -> None:
        """The window overflowed: its LRU entry enters main, or loses to main's victim."""
        candidate = self._window.head.next
        self._window.unlink(candidate)
        candidate.segment = PROBATION
        if self._probation.size + self._protected.size < self._main_cap:
            self._probation.append(candidate)
            return
        victim = self._probation.oldest() or self._protected.oldest()
        if victim is None or self._admit(candidate.key, victim.key):
            if victim is not None:
                self._discard(victim)
            self._probation.append(candidate)
        else:
            del self._entries[candidate.key]
            self._bytes -= candidate.size
            self._evictions += 1

    def _admit(self, candidate: str, victim: str) -> bool:
        candidate_freq = self._sketch.frequency(candidate)
        victim_freq = self._sketch.frequency(victim)
        if candidate_freq > victim_freq:
            return True
        if candidate_freq < _WARM_CANDIDATE_FREQUENCY:
            return False
        return self._random.getrandbits(7) == 0

    def _evict_for_bytes(self) -> None:
        while self._bytes > self.max_bytes and self._entries:
            victim = self._probation.oldest() or self._window.oldest() or self._protected.oldest()
            if victim is None:
                return
            self._discard(victim)

    def _discard(self, entry: L1Entry) -> None:
        self._remove(entry)
        self._evictions += 1

    def _remove(self, entry: L1Entry) -> None:
        del self._entries[entry.key]
        segment = entry.segment
        if segment == WINDOW:
            self._window.unlink(entry)
        elif segment == PROBATION:
            self._probation.unlink(entry)
        else:
            self._protected.unlink(entry)
        self._bytes -= entry.size

    # --- load tokens -------------------------------------------------------------------
    def _record(self, invalidation: _Invalidation) -> None:
        self._sequence = invalidation.sequence
        self._history.append(invalidation)

    def _invalidated_since(self, key: str, token: int) -> bool:
        history = self._history
        if not history or history[0].sequence > token + 1:
            return True  # the record no longer reaches back to the token: assume the worst
        for inv in reversed(history):
            if inv.sequence <= token:
                return False
            if inv.key is None and inv.pattern is None:
                return True
            if inv.key == key or (inv.pattern is not None and globs.matches(inv.pattern, key)):
                return True
        return False
