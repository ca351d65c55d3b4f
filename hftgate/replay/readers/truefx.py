"""TrueFX tick CSV: ``timestamp,bid,ask`` with ISO-8601 UTC timestamps, e.g. ``truefx_USDJPY_ticks_*.csv``.

TrueFX publishes indicative prices without sizes, so both sizes are 0 (the service's
marker for "no sizes"). The pair comes from the file name; the venue is ``truefx``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from hftgate.replay.readers import Reader, UnknownFormatError, csv_header, open_text
from hftgate.replay.ticks import NS_PER_US, QuoteTick, Tick


def matches(path: Path, first_line: str) -> bool:
    return csv_header(first_line) == ["timestamp", "bid", "ask"]


def to_ns(iso: str) -> int:
    stamp = datetime.fromisoformat(iso)
    whole = int(stamp.timestamp())
    return whole * 1_000_000_000 + stamp.microsecond * NS_PER_US


def read(path: Path) -> Iterator[Tick]:
    match = re.search(r"([A-Z]{6})", path.name)
    if match is None:
        raise UnknownFormatError(f"{path}: cannot tell the currency pair from the file name")
    symbol = match.group(1)
    with open_text(path) as f:
        rows = csv.reader(f)
        next(rows)
        for timestamp, bid, ask in rows:
            ts = to_ns(timestamp)
            yield QuoteTick("truefx", symbol, ts, ts, 0, float(bid), 0.0, float(ask), 0.0)


READER = Reader("truefx-csv", matches, read)
