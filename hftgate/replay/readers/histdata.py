"""HistData.com "generic ASCII" tick files: ``YYYYMMDD HHMMSSmmm,bid,ask,volume``, no header.

Times are in EST without daylight saving (UTC-5) all year, per HistData's convention.
Volume is always 0 (no sizes), so both quote sizes are 0 (the service's marker for "no
sizes"). The pair comes from the file name; the venue is ``histdata``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from hftgate.replay.readers import Reader, UnknownFormatError, open_text
from hftgate.replay.ticks import NS_PER_MS, QuoteTick, Tick

EST = timezone(timedelta(hours=-5))
_LINE = re.compile(r"^\d{8} \d{9},")


def matches(path: Path, first_line: str) -> bool:
    return bool(_LINE.match(first_line))


def to_ns(stamp: str) -> int:
    """``"20200101 170000065"`` (EST) to ns since the epoch (UTC)."""
    seconds = datetime.strptime(stamp[:15], "%Y%m%d %H%M%S").replace(tzinfo=EST).timestamp()
    return int(seconds) * 1_000_000_000 + int(stamp[15:18]) * NS_PER_MS


def read(path: Path) -> Iterator[Tick]:
    match = re.search(r"([A-Z]{6})", path.name)
    if match is None:
        raise UnknownFormatError(f"{path}: cannot tell the currency pair from the file name")
    symbol = match.group(1)
    with open_text(path) as f:
        for stamp, bid, ask, _volume in csv.reader(f):
            ts = to_ns(stamp)
            yield QuoteTick("histdata", symbol, ts, ts, 0, float(bid), 0.0, float(ask), 0.0)


READER = Reader("histdata-ticks-csv", matches, read)
