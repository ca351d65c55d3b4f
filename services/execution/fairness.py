"""Sharing the execution service between accounts: stream slots and fair admission of order batches.

:class:`StreamSlots` caps the concurrent StreamExecutions and OrderStream streams, per account and
for the whole service (counted by hftgate/streamslots.py). ``acquire`` refuses a stream beyond
either cap with :class:`StreamLimitExceeded` (the servicer answers RESOURCE_EXHAUSTED with a
google.rpc.QuotaFailure naming the limit); the stream ``release``s its slot in a ``finally``, so a
slot comes back however the stream ends: the client cancels or disconnects, the server stops, the
stream is cut off or fails. Releasing twice is harmless.

:class:`FairAdmission` decides which account's batch of inputs (a SubmitOrder, a SubmitOrders
call, one OrderStream message, ...) runs next when several accounts want the event loop at once.
Each batch runs synchronously on the loop (risk, journal append, match), so whoever runs more
batches per loop turn makes every other call wait longer. Admission is immediate while the loop
is not contended; an account that already ran ``slice_inputs`` inputs in the current turn while
others wait queues behind them, and queued accounts are served round-robin, one batch each per
turn. A flood of one account then costs the others at most one of its batches per loop turn
instead of all of them.

Single-threaded (the service's event loop): nothing here locks. No gRPC import.
"""

from __future__ import annotations

import asyncio
from collections import deque

from hftgate.streamslots import StreamLimitExceeded, StreamSlot
from hftgate.streamslots import StreamSlots as SharedStreamSlots

#: asyncio runs a timer up to its clock's resolution early; a grace that far from its end is over.
_CLOCK_SLACK_S = 1e-6


class StreamSlots(SharedStreamSlots[str]):
    """The open StreamExecutions and OrderStream streams by account, within ``per_account`` and ``total``."""

    HOLDER_SCOPE = "account"

    def __init__(self, *, per_account: int, total: int) -> None:
        if per_account <= 0:
            raise ValueError("stream limits must be positive")
        super().__init__(total=total)
        self.per_account = per_account

    def limit_of(self, holder: str) -> int:
        return self.per_account

    def holder_refusal(self, holder: str, held: int, limit: int) -> tuple[str, str]:
        return (
            f"account:{holder}",
            f"account {holder!r} already has {held} open streams (StreamExecutions and "
            f"OrderStream together), the most allowed (max_streams_per_account); close one first",
        )

    def service_refusal(self) -> tuple[str, str]:
        return (
            "service:execution",
            f"the execution service has its maximum of {self.total} open streams (max_streams); retry later",
        )


class FairAdmission:
    """Round-robin admission of batches between accounts (see the module docstring).

    ``admit(account_id, inputs)`` returns None when the batch may run now, else a future to await;
    the caller then runs the batch without awaiting in between (the order path is synchronous up
    to its journal append), so "admitted" and "ran" are the same loop step. Per loop turn, batches
    run while the turn's inputs stay within ``slice_inputs`` (the first batch of a turn always
    runs, whatever its size); the rest queue per account and are served round-robin, one batch
    per account per turn, least recently served account first. A batch of at most
    ``light_inputs`` inputs from an account with nothing queued always runs at once: a
    well-behaved account's SubmitOrder never waits behind another account's flood for a turn.
    Heavy steps (stream messages and writes, large batches) defer to light calls in flight (and
    for ``light_grace_s`` after each), and run one per loop turn for ``light_recent_s`` after a
    light call (:meth:`heavy_step`). A light call with no flood costs two counters and a clock
    read: no timer, no callback, no allocation.
    Bounded by construction: at most one waiter per concurrent call (calls are bounded by the
    server's stream caps and gRPC's concurrency).
    """

    def __init__(
        self,
        slice_inputs: int,
        light_inputs: int = 8,
        max_defer_s: float = 0.005,
        light_grace_s: float = 0.002,
        light_recent_s: float = 0.25,
    ) -> None:
        if slice_inputs <= 0:
            raise ValueError("slice_inputs must be positive")
        self.slice_inputs = slice_inputs
        self.light_inputs = light_inputs
        #: Accounts with queued batches; each with its waiters (future, inputs), oldest first.
        self._queued: dict[int, deque[tuple[asyncio.Future[None], int]]] = {}
        #: The turn number each account was last served in (round-robin order among the queued).
        self._served: dict[int, int] = {}
        self._turn = 0
        self._turn_inputs = 0
        self._turn_scheduled = False
        #: Batches that had to queue since start (a measure of contention).
        self.queued_batches = 0
        self.max_defer_s = max_defer_s
        self.light_grace_s = light_grace_s
        self._light = 0
        self._heavy: deque[asyncio.Future[None]] = deque()
        self._release_timer: asyncio.TimerHandle | None = None
        #: Loop time until which heavy steps still defer after the last light call ended (0: none).
        self._light_until = 0.0
        #: Releases the deferred heavy steps when the light calls' grace ends (armed only while some wait).
        self._grace_timer: asyncio.TimerHandle | None = None
        #: Loop time until which light calls count as recent (heavy steps paced, see heavy_step).
        self.light_recent_s = light_recent_s
        self._recent_until = 0.0
        self._paced_used = False  # a heavy step started in this loop turn (paced mode)
        self._pace_scheduled = False
        #: Heavy steps that waited for light calls since start.
        self.deferred_steps = 0
        #: Heavy steps that waited for the next loop turn while light calls were recent.
        self.paced_steps = 0

    def admit(self, account_id: int, inputs: int) -> asyncio.Future[None] | None:
        """None when the batch may run now (the common case: no await, no allocation); else a
        future to await, resolved in round-robin order."""
        queued = self._queued
        if account_id not in queued:
            if inputs <= self.light_inputs:
                # The unary fast path: no bookkeeping at all (a light batch is never queued, so it
                # needs no turn of its own; its few inputs are left out of the turn's slice).
                return None
            if not queued and (self._turn_inputs == 0 or self._turn_inputs + inputs <= self.slice_inputs):
                self._run(account_id, inputs)
                return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = queued.get(account_id)
        if waiters is None:
            waiters = queued[account_id] = deque()
        waiters.append((future, inputs))
        self.queued_batches += 1
        self._schedule_turn()
        return future

    def _run(self, account_id: int, inputs: int) -> None:
        self._turn_inputs += inputs
        self._served[account_id] = self._turn
        self._schedule_turn()

    def _schedule_turn(self) -> None:
        if not self._turn_scheduled:
            self._turn_scheduled = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        """A loop turn ended: start the next, and let queued accounts run within its slice."""
        self._turn_scheduled = False
        self._turn += 1
        self._turn_inputs = 0
        served = self._served
        for account_id in sorted(self._queued, key=lambda a: served.get(a, -1)):
            if self._turn_inputs and self._turn_inputs >= self.slice_inputs:
                break
            waiters = self._queued[account_id]
            while waiters:
                future, inputs = waiters.popleft()
                if not future.done():  # a cancelled call gives its turn away
                    future.set_result(None)
                    self._run(account_id, inputs)
                    break
            if not waiters:
                del self._queued[account_id]
        if len(served) > 4 * (len(self._queued) + 64):  # forget accounts idle for long
            horizon = self._turn - 1
            self._served = {a: t for a, t in served.items() if t >= horizon or a in self._queued}
        if self._queued:
            self._schedule_turn()

    # --- light calls first ------------------------------------------------------------------------

    def light_enter(self) -> None:
        """A light call (a SubmitOrder, cancel or replace, a small batch) started: heavy steps
        (stream messages, stream writes, large batches) defer to it."""
        self._light += 1

    def light_exit(self) -> None:
        """The light call's handler returned. Its response still has to be sent (gRPC needs a
        few loop turns for that), and a sequential client's next call follows at once: heavy
        steps keep deferring for ``light_grace_s`` more.

        Without deferred heavy steps (no flood) this is two assignments: the grace is a deadline
        that :meth:`heavy_step` compares with the loop's clock, not a timer per call."""
        self._light -= 1
        loop = asyncio.get_running_loop()
        self._light_until = now = loop.time() + self.light_grace_s
        self._recent_until = now + self.light_recent_s
        if self._heavy and not self._light:
            self._arm_grace(loop)

    def _arm_grace(self, loop: asyncio.AbstractEventLoop) -> None:
        """Release the deferred heavy steps when the grace ends (one timer, only while some wait)."""
        if self._grace_timer is None:
            self._grace_timer = loop.call_at(self._light_until, self._grace_over)

    def _grace_over(self) -> None:
        self._grace_timer = None
        if self._light:
            return  # a light call is in flight again: its light_exit re-arms
        loop = asyncio.get_running_loop()
        if loop.time() < self._light_until - _CLOCK_SLACK_S:  # a later light call extended the grace
            self._arm_grace(loop)
            return
        self._light_until = 0.0
        self._pace_tick()

    def _schedule_pace(self) -> None:
        if not self._pace_scheduled:
            self._pace_scheduled = True
            asyncio.get_running_loop().call_soon(self._pace_tick)

    def _pace_tick(self) -> None:
        """A loop turn began: release one waiting heavy step (if no light call needs the loop).

        Heavy steps released together would run back to back in one loop turn (a few ms each),
        and a light call arriving meanwhile would wait for all of them; one a turn, the loop
        polls for it in between."""
        self._pace_scheduled = False
        self._paced_used = False
        if not self._heavy:
            return
        if self._deferring():
            # A light call came in: the waiting steps go when its grace ends (light_exit arms
            # that), and one per max_defer_s meanwhile, as any deferred step.
            if self._release_timer is None:
                self._release_timer = asyncio.get_running_loop().call_later(self.max_defer_s, self._timer)
            return
        self._release_heavy(all_of_them=False)
        self._paced_used = True
        self._schedule_pace()  # the next turn: release another, or just end this one's pacing

    def _deferring(self) -> bool:
        """A light call is in flight, or one ended less than ``light_grace_s`` ago."""
        if self._light:
            return True
        until = self._light_until
        if not until:
            return False
        if asyncio.get_running_loop().time() < until - _CLOCK_SLACK_S:
            return True
        self._light_until = 0.0
        return False

    def heavy_step(self) -> asyncio.Future[None] | None:
        """None when a heavy step (one stream message, one stream response, one large batch) may
        run now; else a future, resolved once no light call is in flight (nor in its grace), or
        after at most ``max_defer_s`` (one heavy step per period then: floods slow down, never
        stop). For ``light_recent_s`` after a light call, heavy steps are paced besides: one per
        loop turn (the others wait a turn), so a light call arriving after its predecessor's
        grace waits for one heavy step, not for a burst of every stream's."""
        if not self._deferring():
            if not self._recent_until:
                return None  # no light call lately: floods run as fast as they can
            loop = asyncio.get_running_loop()
            if loop.time() >= self._recent_until:
                self._recent_until = 0.0
                return None
            # Light calls were recent: one heavy step per loop turn, so that the next light call
            # waits for one of them at most, not for every stream's step at once.
            if not self._paced_used and not self._heavy:
                self._paced_used = True
                self._schedule_pace()
                return None
            future = loop.create_future()
            self._heavy.append(future)
            self._schedule_pace()
            self.paced_steps += 1
            return future
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._heavy.append(future)
        if self._release_timer is None:
            self._release_timer = loop.call_later(self.max_defer_s, self._timer)
        if not self._light:
            self._arm_grace(loop)
        self.deferred_steps += 1
        return future

    def _timer(self) -> None:
        self._release_timer = None
        self._release_heavy(all_of_them=False)
        if self._heavy:
            self._release_timer = asyncio.get_running_loop().call_later(self.max_defer_s, self._timer)

    def _release_heavy(self, *, all_of_them: bool) -> None:
        heavy = self._heavy
        while heavy:
            future = heavy.popleft()
            if not future.done():
                future.set_result(None)
                if not all_of_them:
                    break
        if not heavy:
            if self._release_timer is not None:
                self._release_timer.cancel()
                self._release_timer = None
            if self._grace_timer is not None:
                self._grace_timer.cancel()
                self._grace_timer = None

    def waiting(self) -> int:
        """Batches queued now."""
        return sum(len(w) for w in self._queued.values())


__all__ = ["FairAdmission", "StreamLimitExceeded", "StreamSlot", "StreamSlots"]
