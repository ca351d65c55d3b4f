"""Binance historical depth CSV (``binance-futures_*_depth_snap.csv`` / ``_depth_update.csv``):
``symbol,timestamp,first_update_id,last_update_id,side,update_type,price,qty,pu``.

One row is one level; consecutive rows with the same ``last_update_id`` form one
update, a snapshot when ``update_type`` is ``snap``. Times are ms; the file has no
receive time, so exchange time stands in. The venue is ``binance-futures`` (USD-M).
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from pathlib import Path

from hftgate.replay.readers import Reader, csv_header, open_text
from hftgate.replay.ticks import NS_PER_MS, DepthTick, Tick

_COLUMNS = [
    "symbol",
    "timestamp",
    "first_update_id",
    "last_update_id",
    "side",
    "update_type",
    "price",
    "qty",
    "pu",
]


def matches(path: Path, first_line: str) -> bool:
    return csv_header(first_line) == _COLUMNS


def read(path: Path) -> Iterator[Tick]:
    with open_text(path) as f:
        rows = csv.reader(f)
        next(rows)
        for (symbol, ts, last_id, kind), group in itertools.groupby(
            rows, key=lambda r: (r[0], r[1], r[3], r[5])
        ):
            bids: list[tuple[float, float]] = []
            asks: list[tuple[float, float]] = []
            for row in group:
                (bids if row[4] == "b" else asks).append((float(row[6]), float(row[7])))
            ts_ns = int(ts) * NS_PER_MS
            yield DepthTick(
                "binance-futures",
                symbol,
                ts_ns,
                ts_ns,
                int(last_id),
                kind == "snap",
                tuple(bids),
                tuple(asks),
            )


READER = Reader("binance-depth-csv", matches, read)
