"""Event loops of their own in threads of a process that uses ``grpc.aio`` on several loops.

``hftgate up`` runs the demo order flow and the dashboard's poller each on a loop in its own
thread. gRPC's asyncio stack has one completion queue per process and wakes *every* loop bound to
it when Core has events (grpc/grpc#23377); each woken loop's reader hands each event to the loop
its call belongs to. So once one of those threads has closed its loop (at Ctrl-C), a late event of
one of its calls, read by another loop, fails with "Event loop is closed" (and a loop that lost
the race for the wake-up byte with ``BlockingIOError``: grpc/grpc#25364); that loop's default
handler then logs a traceback, though nothing is wrong. :func:`new_thread_loop` gives a loop whose
handler drops exactly those two, from that one gRPC callback, and logs everything else as asyncio
does.
"""

from __future__ import annotations

import asyncio
from typing import Any

_GRPC_WAKE_UP = "PollerCompletionQueue._handle_events"


def spurious_grpc_wake_up(context: dict[str, Any]) -> bool:
    """True for the errors of gRPC's shared completion queue described in the module docstring."""
    error = context.get("exception")
    if not (
        isinstance(error, BlockingIOError)
        or (isinstance(error, RuntimeError) and str(error) == "Event loop is closed")
    ):
        return False
    return _GRPC_WAKE_UP in repr(context.get("handle")) or _GRPC_WAKE_UP in str(context.get("message", ""))


def _handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    if not spurious_grpc_wake_up(context):
        loop.default_exception_handler(context)


def new_thread_loop() -> asyncio.AbstractEventLoop:
    """A new event loop for a thread of its own, quiet about gRPC's spurious wake-up errors."""
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(_handler)
    return loop
