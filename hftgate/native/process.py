"""Process-level helpers from the C library for a helper child made with ``fork``."""

from __future__ import annotations

import ctypes
import os
import signal

#: ``prctl`` option number (linux/prctl.h).
_PR_SET_PDEATHSIG = 1


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        libc.prctl.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _libc()


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """In a forked child: be sent ``sig`` (SIGKILL) when the parent dies, and exit now if it already has.

    A child that outlived a killed service would keep its listening sockets and files open while
    the service restarts. (Linux sends the signal when the *thread* that forked ends: fork from the
    thread that lives as long as the service, its event loop's.) Linux only (``prctl``); elsewhere
    only the check that the parent lives."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        os._exit(1)
