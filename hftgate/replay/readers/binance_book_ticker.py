"""Binance ``@bookTicker`` streams as CSV (the ``quotes/binance-*_bookTicker_*.csv.gz`` files).

Columns: ``local_ts_ns,venue,u,s,b,B,a,A`` plus ``T,E`` (ms) for futures. Spot carries no
exchange time, so its recorder time stands in for it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from hftgate.replay.readers import Reader, csv_header, open_text
from hftgate.replay.ticks import NS_PER_MS, QuoteTick, Tick

_COLUMNS = ["local_ts_ns", "venue", "u", "s", "b", "B", "a", "A"]


def matches(path: Path, first_line: str) -> bool:
    return csv_header(first_line)[: len(_COLUMNS)] == _COLUMNS


def read(path: Path) -> Iterator[Tick]:
    with open_text(path) as f:
        rows = csv.reader(f)
        header = next(rows)
        event_column = header.index("E") if "E" in header else None
        for row in rows:
            receive_ts = int(row[0])
            exchange_ts = int(row[event_column]) * NS_PER_MS if event_column is not None else receive_ts
            yield QuoteTick(
                row[1],
                row[3],
                exchange_ts,
                receive_ts,
                int(row[2]),
                float(row[4]),
                float(row[5]),
                float(row[6]),
                float(row[7]),
            )


READER = Reader("binance-bookticker-csv", matches, read)
