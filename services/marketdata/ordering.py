"""The ordering rule of one tick stream of one (venue, symbol): one bad tick cannot lock it.

Each (venue, symbol) has an :class:`OrderKey` per kind of tick (quotes, depth updates,
trades): the exchange time and id (sequence or trade id) of the last accepted tick, and the
wall time it was accepted at. :meth:`OrderingRule.admit` decides a new tick (the rule as
documented in marketdata.proto):

* **in sequence**: time not before the last, and not more than ``max_time_jump_ns`` plus
  the wall time elapsed since the last was accepted after it (a live feed's quiet hours
  are elapsed wall time; a replay's gaps are short); id, when both have one, above the
  last by at most ``max_id_jump``. Accepted: the key moves to it.
* **near behind**: within those bounds but not in sequence: DUPLICATE (id not above the
  last) or OUT_OF_ORDER (time before the last), what resent or reordered ticks are.
* **far** (further in either direction): JUMP, and nothing moves. A tick stamped "now" on
  a feed replayed from the past, or a trade id of 2**64-1, lands here. The tick becomes the
  resync candidate; ``resync_ticks`` far ticks in a row, each in sequence with the one before,
  show the feed really moved (or that the symbol's first tick was the bad one): the last is
  accepted and the key moves to it. :data:`RESYNCED_BACK` tells the engine when that moved
  the symbol back in time, so that it restarts the symbol's trade history.

The first tick of a key is accepted as is (only the engine's future-time check bounds it).
"""

from __future__ import annotations

from services.marketdata.reasons import RejectReason

#: admit()'s answer for "accepted, after a resync that moved the symbol back in time".
RESYNCED_BACK = -1

_DUPLICATE = int(RejectReason.DUPLICATE)
_OUT_OF_ORDER = int(RejectReason.OUT_OF_ORDER)
_JUMP = int(RejectReason.JUMP)


class OrderKey:
    """The last accepted tick of one kind of one symbol, and the pending resync candidate."""

    __slots__ = ("candidate_id", "candidate_ts", "candidate_wall", "candidates", "id", "ts", "wall")

    def __init__(self) -> None:
        self.ts = 0  # exchange time of the last accepted tick, ns; 0 = no tick yet
        self.id = 0  # its id (sequence, trade id); 0 = none yet
        self.wall = 0  # wall time it was accepted at, ns
        self.candidate_ts = self.candidate_id = self.candidate_wall = 0
        self.candidates = 0  # far ticks in a row that agree, ending with the candidate


class OrderingRule:
    """The bounds of the rule, shared by every key of an engine."""

    __slots__ = ("max_id_jump", "max_time_jump_ns", "resync_ticks")

    def __init__(self, max_time_jump_ns: int, max_id_jump: int, resync_ticks: int) -> None:
        if max_time_jump_ns <= 0 or max_id_jump <= 0 or resync_ticks < 2:
            raise ValueError("the ordering rule needs positive bounds and resync_ticks >= 2")
        self.max_time_jump_ns = max_time_jump_ns
        self.max_id_jump = max_id_jump
        self.resync_ticks = resync_ticks

    def _follows(self, last_ts: int, last_id: int, last_wall: int, ts: int, ident: int, now: int) -> bool:
        return last_ts <= ts <= last_ts + self.max_time_jump_ns + max(0, now - last_wall) and (
            not ident or not last_id or last_id < ident <= last_id + self.max_id_jump
        )

    def admit(self, key: OrderKey, ts: int, ident: int, now: int) -> int:
        """0 (accepted; ``key`` moved to the tick), :data:`RESYNCED_BACK` (accepted, and the
        symbol moved back in time), or the RejectReason (nothing moved but the candidate)."""
        last_ts, last_id = key.ts, key.id
        elapsed = now - key.wall
        if elapsed < 0:  # the wall clock stepped back
            elapsed = 0
        if not last_ts or (
            last_ts <= ts <= last_ts + self.max_time_jump_ns + elapsed
            and (not ident or not last_id or last_id < ident <= last_id + self.max_id_jump)
        ):
            key.ts, key.wall, key.candidates = ts, now, 0
            if ident:
                key.id = ident
            return 0
        ahead = ts - last_ts
        far = (
            ahead > self.max_time_jump_ns + elapsed
            or -ahead > self.max_time_jump_ns
            or (ident and last_id and abs(ident - last_id) > self.max_id_jump)
        )
        if not far:
            # Near, and out of sequence only because it is behind in id or in time.
            return _DUPLICATE if ident and last_id and ident <= last_id else _OUT_OF_ORDER
        if key.candidates and self._follows(
            key.candidate_ts, key.candidate_id, key.candidate_wall, ts, ident, now
        ):
            key.candidates += 1
        else:
            key.candidates = 1
        key.candidate_ts, key.candidate_id, key.candidate_wall = ts, ident, now
        if key.candidates < self.resync_ticks:
            return _JUMP
        back = ts < key.ts
        key.ts, key.id, key.wall, key.candidates = ts, ident, now, 0
        return RESYNCED_BACK if back else 0
