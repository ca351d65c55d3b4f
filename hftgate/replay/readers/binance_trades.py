"""Binance ``@trade`` streams as CSV (the ``trades/binance-*_trades_*.csv.gz`` files).

Columns: ``local_ts_ns,venue,E,T,s,t,p,q,m`` and ``M`` (spot) or ``X`` (futures).
``m`` true means the buyer was the maker, so the aggressor sold.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from hftgate.replay.readers import Reader, csv_header, open_text
from hftgate.replay.ticks import NS_PER_MS, Aggressor, Tick, TradeTick

_COLUMNS = ["local_ts_ns", "venue", "E", "T", "s", "t", "p", "q", "m"]


def matches(path: Path, first_line: str) -> bool:
    return csv_header(first_line)[: len(_COLUMNS)] == _COLUMNS


def read(path: Path) -> Iterator[Tick]:
    with open_text(path) as f:
        rows = csv.reader(f)
        next(rows)
        for row in rows:
            aggressor = Aggressor.SELL if row[8] == "True" else Aggressor.BUY
            yield TradeTick(
                row[1],
                row[4],
                int(row[3]) * NS_PER_MS,
                int(row[0]),
                int(row[5]),
                float(row[6]),
                float(row[7]),
                aggressor,
            )


READER = Reader("binance-trades-csv", matches, read)
