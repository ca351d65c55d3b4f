"""The thread loops of ``hftgate up`` drop gRPC's spurious multi-loop wake-up errors, and only those."""

from __future__ import annotations

from typing import Any

from hftgate.aioloops import new_thread_loop, spurious_grpc_wake_up


class _Handle:
    def __repr__(self) -> str:
        return "<Handle PollerCompletionQueue._handle_events(<_UnixSelectorEventLoop ...>)()>"


def test_only_grpcs_wake_up_errors_are_spurious() -> None:
    closed = {"exception": RuntimeError("Event loop is closed"), "handle": _Handle()}
    lost_race = {"exception": BlockingIOError(11, "Resource temporarily unavailable"), "handle": _Handle()}
    assert spurious_grpc_wake_up(closed) and spurious_grpc_wake_up(lost_race)
    # The same error from anything else, or another error from that callback, is real.
    assert not spurious_grpc_wake_up({"exception": RuntimeError("Event loop is closed"), "handle": object()})
    assert not spurious_grpc_wake_up({"exception": ValueError("boom"), "handle": _Handle()})
    assert not spurious_grpc_wake_up({"message": "Task was destroyed but it is pending!"})


def test_the_loop_logs_everything_else_as_asyncio_does(monkeypatch: Any) -> None:
    loop = new_thread_loop()
    logged: list[dict[str, Any]] = []
    monkeypatch.setattr(loop, "default_exception_handler", logged.append)
    try:
        loop.call_exception_handler({"exception": RuntimeError("Event loop is closed"), "handle": _Handle()})
        assert logged == []
        real = {"message": "something failed", "exception": ValueError("boom")}
        loop.call_exception_handler(real)
        assert logged == [real]
    finally:
        loop.close()
