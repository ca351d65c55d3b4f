"""Python face of ``native/src/snapshot_writer.c``: fork a child that writes listed memory regions
to a file and exits, running no Python (services/execution/snapshot.py builds the list).

A *piece* is ``(kind, data, crc_slot)``: :data:`PIECE_BYTES` with ``data`` as ``bytes`` or a
C-contiguous numpy array (its memory is written where it lies: the child reads its copy-on-write
image of it), added to the running CRC-32 of ``crc_slot`` unless that is -1; or :data:`PIECE_CRC`
(``data`` None): the CRC-32 of ``crc_slot`` so far, 4 bytes little-endian.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from hftgate.native import ffi, lib

PIECE_BYTES: int = lib.HFT_SNAPSHOT_PIECE_BYTES
PIECE_CRC: int = lib.HFT_SNAPSHOT_PIECE_CRC

#: What a writer child's exit code means (native/include/hft_snapshot_writer.h).
EXIT_MEANINGS: dict[int, str] = {
    lib.HFT_SNAPSHOT_EXIT_ORPHANED: "the service had gone",
    lib.HFT_SNAPSHOT_EXIT_OPEN: "could not create the file",
    lib.HFT_SNAPSHOT_EXIT_WRITE: "write failed",
    lib.HFT_SNAPSHOT_EXIT_FSYNC: "fsync failed",
    lib.HFT_SNAPSHOT_EXIT_BAD_PIECES: "bad regions",
}

Piece = tuple[int, Any, int]


def fork_writer(path: bytes, pieces: Sequence[Piece]) -> tuple[int, float]:
    """Fork a child that writes ``pieces`` in order to ``path``, fsyncs and exits (0 on success,
    else a code of :data:`EXIT_MEANINGS`); returns its pid and how long the fork held the caller.
    Raises OSError when no child could be made (nothing was written)."""
    cpieces = ffi.new("hft_snapshot_piece[]", len(pieces))
    keep = []  # the bytes' buffers: alive until the fork is done
    for piece, (kind, data, slot) in zip(cpieces, pieces, strict=True):
        piece.kind, piece.crc_slot = kind, slot
        if isinstance(data, bytes):
            buffer = ffi.from_buffer(data)
            keep.append(buffer)
            piece.data, piece.length = buffer, len(data)
        elif data is not None:
            piece.data, piece.length = ffi.cast("const void *", data.ctypes.data), data.nbytes
    cpath = ffi.new("char[]", path)
    pid = ffi.new("int *")
    started = time.perf_counter()
    rc = lib.hft_snapshot_fork_writer(cpath, cpieces, len(pieces), pid)
    fork_s = time.perf_counter() - started
    if rc < 0:
        raise OSError(-rc, f"snapshot writer process not started: {os.strerror(-rc)}")
    return int(pid[0]), fork_s
