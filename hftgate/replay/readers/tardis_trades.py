"""Tardis.dev ``trades`` CSV: ``exchange,symbol,timestamp,local_timestamp,id,side,price,amount``.

Times are microseconds since the epoch; ``side`` is the aggressor's. Numeric trade ids
are kept (duplicates are then detectable); other ids (BitMEX uses UUIDs) become 0.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from hftgate.replay.readers import Reader, csv_header, open_text
from hftgate.replay.ticks import NS_PER_US, Aggressor, Tick, TradeTick

_COLUMNS = ["exchange", "symbol", "timestamp", "local_timestamp", "id", "side", "price", "amount"]
_SIDES = {"buy": Aggressor.BUY, "sell": Aggressor.SELL}


def matches(path: Path, first_line: str) -> bool:
    return csv_header(first_line) == _COLUMNS


def read(path: Path) -> Iterator[Tick]:
    with open_text(path) as f:
        rows = csv.reader(f)
        next(rows)
        for exchange, symbol, ts, local_ts, trade_id, side, price, amount in rows:
            yield TradeTick(
                exchange,
                symbol,
                int(ts) * NS_PER_US,
                int(local_ts) * NS_PER_US,
                int(trade_id) if trade_id.isdigit() else 0,
                float(price),
                float(amount),
                _SIDES.get(side, Aggressor.UNKNOWN),
            )


READER = Reader("tardis-trades-csv", matches, read)
