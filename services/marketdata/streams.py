"""Slots for concurrent server streams (Subscribe and StreamArbitrage), per caller and per service.

Every open stream holds one slot, counted against its caller (an account, or a service
principal, each with its own limit) and against the whole service. ``acquire`` refuses a
stream beyond any limit with :class:`StreamLimitExceeded` (the servicer answers
RESOURCE_EXHAUSTED with its message); the stream's writer ``release``s its slot in a
``finally``, so a slot comes back however the stream ends: the client cancels or disconnects,
the server stops, or the stream fails. Releasing twice is harmless.

Single-threaded (the service's event loop): nothing here locks. No gRPC import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CallerKind = Literal["account", "service"]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who opened a stream: an account (API-key caller) or a service principal (token)."""

    kind: CallerKind
    name: str

    def __str__(self) -> str:
        return f"{'account' if self.kind == 'account' else 'service principal'} {self.name!r}"


class StreamLimitExceeded(Exception):
    """A new stream would exceed a limit: ``scope`` is "caller" or "service"."""

    def __init__(self, scope: Literal["caller", "service"], subject: str, limit: int, message: str) -> None:
        super().__init__(message)
        self.scope = scope
        self.subject = subject
        self.limit = limit
        self.message = message


class StreamSlot:
    """One open stream's slot; ``release`` it when the stream ends (idempotent)."""

    __slots__ = ("_owner", "caller")

    def __init__(self, owner: StreamSlots, caller: Caller) -> None:
        self._owner: StreamSlots | None = owner
        self.caller = caller

    def release(self) -> None:
        owner, self._owner = self._owner, None
        if owner is not None:
            owner._release(self.caller)


class StreamSlots:
    """The open streams by caller, within ``per_account`` / ``per_service_principal`` / ``total``."""

    def __init__(self, *, per_account: int, per_service_principal: int, total: int) -> None:
        if min(per_account, per_service_principal, total) <= 0:
            raise ValueError("stream limits must be positive")
        self.per_account = per_account
        self.per_service_principal = per_service_principal
        self.total = total
        self._open: dict[Caller, int] = {}
        self._in_use = 0
        #: Streams refused since start, by scope.
        self.refused = {"caller": 0, "service": 0}

    def limit_of(self, caller: Caller) -> int:
        return self.per_account if caller.kind == "account" else self.per_service_principal

    def acquire(self, caller: Caller) -> StreamSlot:
        """A slot for a new stream of ``caller``, or StreamLimitExceeded (nothing is taken)."""
        held = self._open.get(caller, 0)
        limit = self.limit_of(caller)
        if held >= limit:
            self.refused["caller"] += 1
            raise StreamLimitExceeded(
                "caller",
                f"{caller.kind}:{caller.name}",
                limit,
                f"{caller} already has {held} open streams (Subscribe and StreamArbitrage "
                f"together), the most allowed; close one first",
            )
        if self._in_use >= self.total:
            self.refused["service"] += 1
            raise StreamLimitExceeded(
                "service",
                "marketdata",
                self.total,
                f"the market data service has its maximum of {self.total} open streams; retry later",
            )
        self._open[caller] = held + 1
        self._in_use += 1
        return StreamSlot(self, caller)

    def _release(self, caller: Caller) -> None:
        held = self._open.get(caller, 0)
        if held <= 1:
            self._open.pop(caller, None)
        else:
            self._open[caller] = held - 1
        self._in_use -= 1

    def open_streams(self, caller: Caller | None = None) -> int:
        """Streams open now, of ``caller`` or in all."""
        return self._in_use if caller is None else self._open.get(caller, 0)

    def callers(self) -> int:
        """Callers with at least one open stream (the table never holds more)."""
        return len(self._open)
