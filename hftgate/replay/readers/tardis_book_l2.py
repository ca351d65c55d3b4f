"""Tardis.dev ``incremental_book_L2`` CSV:
``exchange,symbol,timestamp,local_timestamp,is_snapshot,side,price,amount``.

One row is one level; consecutive rows with the same timestamp and snapshot flag form
one depth update (``amount`` 0 deletes the level).
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterator
from pathlib import Path

from hftgate.replay.readers import Reader, csv_header, open_text
from hftgate.replay.ticks import NS_PER_US, DepthTick, Tick

_COLUMNS = ["exchange", "symbol", "timestamp", "local_timestamp", "is_snapshot", "side", "price", "amount"]


def matches(path: Path, first_line: str) -> bool:
    return csv_header(first_line) == _COLUMNS


def read(path: Path) -> Iterator[Tick]:
    with open_text(path) as f:
        rows = csv.reader(f)
        next(rows)
        for (exchange, symbol, ts, local_ts, snapshot), group in itertools.groupby(
            rows, key=lambda r: tuple(r[:5])
        ):
            bids: list[tuple[float, float]] = []
            asks: list[tuple[float, float]] = []
            for row in group:
                (bids if row[5] == "bid" else asks).append((float(row[6]), float(row[7])))
            yield DepthTick(
                exchange,
                symbol,
                int(ts) * NS_PER_US,
                int(local_ts) * NS_PER_US,
                0,
                snapshot == "true",
                tuple(bids),
                tuple(asks),
            )


READER = Reader("tardis-book-l2-csv", matches, read)
