"""Slots for concurrent server streams (Subscribe and StreamArbitrage), per caller and per service.

Every open stream holds one slot, counted against its caller (an account, or a service
principal, each with its own limit) and against the whole service. ``acquire`` refuses a
stream beyond any limit with :class:`StreamLimitExceeded` (the servicer answers
RESOURCE_EXHAUSTED with its message); the stream's writer ``release``s its slot in a
``finally``, so a slot comes back however the stream ends: the client cancels or disconnects,
the server stops, or the stream fails. Releasing twice is harmless.

The counting is hftgate/streamslots.py's; this module says who a caller is and its limit.
Single-threaded (the service's event loop): nothing here locks. No gRPC import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from hftgate.streamslots import StreamLimitExceeded, StreamSlot
from hftgate.streamslots import StreamSlots as SharedStreamSlots

CallerKind = Literal["account", "service"]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who opened a stream: an account (API-key caller) or a service principal (token)."""

    kind: CallerKind
    name: str

    def __str__(self) -> str:
        return f"{'account' if self.kind == 'account' else 'service principal'} {self.name!r}"


class StreamSlots(SharedStreamSlots[Caller]):
    """The open streams by caller, within ``per_account`` / ``per_service_principal`` / ``total``."""

    HOLDER_SCOPE = "caller"

    def __init__(self, *, per_account: int, per_service_principal: int, total: int) -> None:
        if min(per_account, per_service_principal) <= 0:
            raise ValueError("stream limits must be positive")
        super().__init__(total=total)
        self.per_account = per_account
        self.per_service_principal = per_service_principal

    def limit_of(self, holder: Caller) -> int:
        return self.per_account if holder.kind == "account" else self.per_service_principal

    def holder_refusal(self, holder: Caller, held: int, limit: int) -> tuple[str, str]:
        return (
            f"{holder.kind}:{holder.name}",
            f"{holder} already has {held} open streams (Subscribe and StreamArbitrage "
            f"together), the most allowed; close one first",
        )

    def service_refusal(self) -> tuple[str, str]:
        return (
            "marketdata",
            f"the market data service has its maximum of {self.total} open streams; retry later",
        )

    def callers(self) -> int:
        """Callers with at least one open stream (the table never holds more)."""
        return self.holders()


__all__ = ["Caller", "CallerKind", "StreamLimitExceeded", "StreamSlot", "StreamSlots"]
