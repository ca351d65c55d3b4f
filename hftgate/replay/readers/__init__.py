"""One reader per recorded data format; adding a format means adding one module here.

Every module in this package defines ``READER = Reader(...)``: a name, a test that
recognises its files from their first line (and name, when the content alone is
ambiguous), and a generator of ticks in file order. :func:`reader_for` picks the reader
of a file; nothing else needs to know which formats exist.
"""

from __future__ import annotations

import gzip
import importlib
import io
import pkgutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import IO

from hftgate.replay.ticks import Tick


@dataclass(frozen=True)
class Reader:
    """How to recognise and read one file format."""

    # Short format name shown to users, e.g. "binance-bookticker-csv".
    name: str
    # True when this reader reads the file whose path and first text line are given.
    matches: Callable[[Path, str], bool]
    # Yields the file's ticks in file order.
    read: Callable[[Path], Iterator[Tick]]


class UnknownFormatError(ValueError):
    """No reader recognises a file."""


def open_text(path: Path) -> IO[str]:
    """Open a data file as text: plain, gzip (``.gz``) or a zip holding one file (``.zip``)."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="")
    if path.suffix == ".zip":
        archive = zipfile.ZipFile(path)
        members = [m for m in archive.namelist() if not m.endswith("/")]
        if len(members) != 1:
            raise UnknownFormatError(f"{path}: expected one file in the zip archive, found {len(members)}")
        return io.TextIOWrapper(archive.open(members[0]), newline="")
    return open(path, newline="")


def first_line(path: Path) -> str:
    with open_text(path) as f:
        return f.readline().strip()


@cache
def all_readers() -> tuple[Reader, ...]:
    """Every reader defined in this package, in module name order."""
    readers = []
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        reader = getattr(module, "READER", None)
        if isinstance(reader, Reader):
            readers.append(reader)
    return tuple(readers)


def reader_for(path: Path) -> Reader:
    """The reader of ``path``; raises :class:`UnknownFormatError` when none recognises it."""
    try:
        line = first_line(path)
    except (OSError, UnicodeDecodeError, zipfile.BadZipFile, gzip.BadGzipFile) as exc:
        raise UnknownFormatError(f"{path}: cannot read it as text ({exc})") from exc
    for reader in all_readers():
        if reader.matches(path, line):
            return reader
    names = ", ".join(r.name for r in all_readers())
    raise UnknownFormatError(f"{path}: no reader recognises this file (known formats: {names})")


def read_ticks(path: Path) -> Iterator[Tick]:
    """The ticks of ``path``, read by whichever reader recognises it."""
    return reader_for(path).read(path)


def csv_header(line: str) -> list[str]:
    return [column.strip() for column in line.split(",")]
