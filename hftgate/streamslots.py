"""Slots for concurrent server streams, per holder (an account, a caller) and per service.

Every open stream holds one slot, counted against its holder and against the whole service.
``acquire`` refuses a stream beyond either limit with :class:`StreamLimitExceeded` (a servicer
answers RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure naming ``subject``); the stream
``release``s its slot in a ``finally``, so a slot comes back however the stream ends: the client
cancels or disconnects, the server stops, the stream is cut off or fails. Releasing twice is
harmless. A service says what a holder's limit is and how a refusal reads by subclassing
:class:`StreamSlots` (services/execution/fairness.py, services/marketdata/streams.py).

Single-threaded (the service's event loop): nothing here locks. No gRPC import.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

#: The scope of a refusal for the whole service (the holder's scope is the subclass's).
SERVICE_SCOPE = "service"


class StreamLimitExceeded(Exception):
    """A new stream would exceed a limit: ``scope`` is the holder's scope or "service"."""

    def __init__(self, scope: str, subject: str, limit: int, message: str) -> None:
        super().__init__(message)
        self.scope = scope
        self.subject = subject
        self.limit = limit
        self.message = message


class StreamSlot(Generic[K]):
    """One open stream's slot; ``release`` it when the stream ends (idempotent)."""

    __slots__ = ("_owner", "holder")

    def __init__(self, owner: StreamSlots[K], holder: K) -> None:
        self._owner: StreamSlots[K] | None = owner
        self.holder = holder

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release(self.holder)


class StreamSlots(Generic[K]):
    """The open streams by holder, within each holder's :meth:`limit_of` and ``total``."""

    #: The scope a refusal for one holder reports (``StreamLimitExceeded.scope``).
    HOLDER_SCOPE = "holder"

    def __init__(self, *, total: int) -> None:
        if total <= 0:
            raise ValueError("stream limits must be positive")
        self.total = total
        self._open: dict[K, int] = {}
        self._in_use = 0
        #: Streams refused since start, by scope.
        self.refused = {self.HOLDER_SCOPE: 0, SERVICE_SCOPE: 0}

    def limit_of(self, holder: K) -> int:
        raise NotImplementedError

    def holder_refusal(self, holder: K, held: int, limit: int) -> tuple[str, str]:
        """The (QuotaFailure subject, message) of refusing ``holder`` at ``limit``."""
        raise NotImplementedError

    def service_refusal(self) -> tuple[str, str]:
        """The (QuotaFailure subject, message) of refusing a stream because the service is full."""
        raise NotImplementedError

    def acquire(self, holder: K) -> StreamSlot[K]:
        """A slot for a new stream of ``holder``, or StreamLimitExceeded (nothing is taken)."""
        held = self._open.get(holder, 0)
        limit = self.limit_of(holder)
        if held >= limit:
            self.refused[self.HOLDER_SCOPE] += 1
            subject, message = self.holder_refusal(holder, held, limit)
            raise StreamLimitExceeded(self.HOLDER_SCOPE, subject, limit, message)
        if self._in_use >= self.total:
            self.refused[SERVICE_SCOPE] += 1
            subject, message = self.service_refusal()
            raise StreamLimitExceeded(SERVICE_SCOPE, subject, self.total, message)
        self._open[holder] = held + 1
        self._in_use += 1
        return StreamSlot(self, holder)

    def _release(self, holder: K) -> None:
        held = self._open.get(holder, 0)
        if held <= 1:
            self._open.pop(holder, None)
        else:
            self._open[holder] = held - 1
        self._in_use -= 1

    def open_streams(self, holder: K | None = None) -> int:
        """Streams open now, of ``holder`` or in all."""
        return self._in_use if holder is None else self._open.get(holder, 0)

    def holders(self) -> int:
        """Holders with at least one open stream (the table never holds more)."""
        return len(self._open)
