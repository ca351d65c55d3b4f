"""The C allocator's policy for large blocks: what makes freed memory leave the process.

glibc's malloc serves a block of at least its *mmap threshold* with a mapping of its own, which
``free`` unmaps at once; a smaller block comes from the heap, whose freed pages stay resident
until they happen to be at its top. The threshold starts at 128 KiB but is *dynamic*: each time a
mapped block is freed, the threshold rises to that block's size (up to 32 MiB). A service that
now and then builds a large transient array (a snapshot's copy of the order table, ~20 MB) thus
moves every later array of that size onto the heap, where it fragments the heap and keeps its
pages: the resident size ratchets up by tens of MB with each such episode and never comes back.

:func:`pin_mmap_threshold` fixes the threshold (setting it turns the dynamic adjustment off), so
every block from that size up is a mapping again and is returned when freed; blocks on the order
path stay below it and keep coming from the heap, so the order path takes no extra system calls.
The threshold is :data:`DEFAULT_MMAP_THRESHOLD_BYTES`: a 10,000-order batch (SubmitOrderColumns'
size) has arrays over 1 MiB, which at a 1 MiB threshold were mapped and unmapped in every call
(~540 pages faulted in per batch, ~20,000 page faults in all over the bench's first 160,000 such
orders, against ~9,700 at 4 MiB).

It also fixes the heap's *top pad*: how much free space at the heap's top a trim leaves in place.
glibc's default (128 KiB) returns the top as soon as it passes the trim threshold, so each large
batch's arrays, freed at the top of the heap, were handed back and faulted in afresh by the next
batch: ~25,000 page faults per 160,000 orders in 10,000-order batches, a quarter of the service's
CPU time on that path. A top pad of :data:`DEFAULT_TOP_PAD_BYTES` keeps that much resident (a
fixed amount, not a growth) and the next batch reuses the same pages.

:func:`release_free_memory` (``malloc_trim``) hands the heap's free pages back after an episode
that freed much (a snapshot written).

Both are no-ops where the C library is not glibc (musl, macOS): they report False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

#: ``mallopt`` parameter numbers (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

#: Blocks from this size up are mappings of their own (returned to the system when freed): above
#: a 10,000-order batch's largest array, below a snapshot capture's (tens of MB).
DEFAULT_MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
#: Free space at the top of the heap beyond this is returned at once (glibc's own default, kept
#: fixed: pinning the mmap threshold pins this one too, at whatever it had reached).
DEFAULT_TRIM_THRESHOLD_BYTES = 2 * DEFAULT_MMAP_THRESHOLD_BYTES
#: Free space a trim leaves at the top of the heap: room for a 10,000-order batch's transient
#: arrays (~10 MB) with a margin.
DEFAULT_TOP_PAD_BYTES = 16 * 1024 * 1024


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc


_LIBC = _glibc()


def pin_mmap_threshold(
    mmap_threshold_bytes: int = DEFAULT_MMAP_THRESHOLD_BYTES,
    trim_threshold_bytes: int = DEFAULT_TRIM_THRESHOLD_BYTES,
    top_pad_bytes: int = DEFAULT_TOP_PAD_BYTES,
) -> bool:
    """Fix the allocator's mmap and trim thresholds and its top pad (process-wide); True when the
    C library took them."""
    if _LIBC is None:
        return False
    if mmap_threshold_bytes <= 0 or trim_threshold_bytes <= 0 or top_pad_bytes < 0:
        raise ValueError("the mmap and trim thresholds must be positive byte counts, the top pad >= 0")
    pinned = (
        bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold_bytes))
        and bool(_LIBC.mallopt(_M_TRIM_THRESHOLD, trim_threshold_bytes))
        and bool(_LIBC.mallopt(_M_TOP_PAD, top_pad_bytes))
    )
    if not pinned:
        log.warning("the C allocator refused mmap threshold %d bytes", mmap_threshold_bytes)
    return pinned


def release_free_memory() -> bool:
    """Return the free pages of every malloc arena to the system (``malloc_trim(0)``).

    Walks every arena's free lists under that arena's lock, so a thread allocating meanwhile
    waits: call it off the order path. True when the C library has it and released something."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))
