"""Turning paths into one time-ordered tick stream.

Files of one recording share the recorder's clock, so ticks from several files are
merged by receive time; ticks with equal receive times keep the order of the paths
given, then their order in the file (a stable merge).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path

from hftgate.replay.readers import UnknownFormatError, read_ticks, reader_for
from hftgate.replay.ticks import Tick


def expand(paths: Iterable[Path]) -> tuple[list[Path], list[str]]:
    """The data files behind ``paths`` and the reasons any were skipped.

    A file named explicitly must be readable (else UnknownFormatError); inside a directory,
    files no reader recognises (READMEs, order-level data) are skipped with a reason.
    """
    files: list[Path] = []
    skipped: list[str] = []
    for path in paths:
        if path.is_dir():
            for candidate in sorted(p for p in path.rglob("*") if p.is_file()):
                try:
                    reader_for(candidate)
                except UnknownFormatError as exc:
                    skipped.append(str(exc))
                    continue
                files.append(candidate)
        elif path.is_file():
            reader_for(path)
            files.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return files, skipped


def load(files: Sequence[Path], limit_per_file: int = 0) -> list[Tick]:
    """Every tick of ``files`` (at most ``limit_per_file`` each when > 0), merged by receive time."""
    per_file = []
    for path in files:
        ticks = read_ticks(path)
        per_file.append(list(itertools.islice(ticks, limit_per_file) if limit_per_file > 0 else ticks))
    return list(heapq.merge(*per_file, key=lambda tick: tick.receive_ts_ns))
