"""Tardis.dev ``quotes`` CSV.

Columns: ``exchange,symbol,timestamp,local_timestamp,ask_amount,ask_price,bid_price,bid_amount``.

Times are microseconds since the epoch. A row with an empty side (no bid or no ask on
the book at that moment) is not a two-sided quote and is skipped.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from hftgate.replay.readers import Reader, csv_header, open_text
from hftgate.replay.ticks import NS_PER_US, QuoteTick, Tick

_COLUMNS = [
    "exchange",
    "symbol",
    "timestamp",
    "local_timestamp",
    "ask_amount",
    "ask_price",
    "bid_price",
    "bid_amount",
]


def matches(path: Path, first_line: str) -> bool:
    return csv_header(first_line) == _COLUMNS


def read(path: Path) -> Iterator[Tick]:
    with open_text(path) as f:
        rows = csv.reader(f)
        next(rows)
        for exchange, symbol, ts, local_ts, ask_amount, ask_price, bid_price, bid_amount in rows:
            if not (ask_amount and ask_price and bid_price and bid_amount):
                continue
            yield QuoteTick(
                exchange,
                symbol,
                int(ts) * NS_PER_US,
                int(local_ts) * NS_PER_US,
                0,
                float(bid_price),
                float(bid_amount),
                float(ask_price),
                float(ask_amount),
            )


READER = Reader("tardis-quotes-csv", matches, read)
