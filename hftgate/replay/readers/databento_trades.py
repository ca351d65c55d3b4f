"""Databento ``trades`` as CSV, e.g. ``databento_glbx-mdp3_ESU4_trades_*.csv``.

Same columns and price scale as MBP-1 without the book; ``side`` is the aggressor
(``B`` bought, ``A`` sold, ``N`` unknown). Databento trades carry no trade id (``sequence``
is the packet's, shared by the trades of one packet), so trade ids are 0 (not checked).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from hftgate.replay.readers import Reader, csv_header, open_text
from hftgate.replay.readers.databento_mbp1 import PRICE_SCALE, symbol_from_name
from hftgate.replay.ticks import Aggressor, Tick, TradeTick

_SIDES = {"B": Aggressor.BUY, "A": Aggressor.SELL}


def matches(path: Path, first_line: str) -> bool:
    columns = set(csv_header(first_line))
    return (
        {"ts_recv", "ts_event", "action", "price", "size"} <= columns
        and "order_id" not in columns
        and ("bid_px_00" not in columns)
    )


def read(path: Path) -> Iterator[Tick]:
    venue, symbol = symbol_from_name(path, "trades")
    with open_text(path) as f:
        for row in csv.DictReader(f):
            if row["action"] != "T":
                continue
            yield TradeTick(
                venue,
                symbol,
                int(row["ts_event"]),
                int(row["ts_recv"]),
                0,
                int(row["price"]) * PRICE_SCALE,
                float(row["size"]),
                _SIDES.get(row["side"], Aggressor.UNKNOWN),
            )


READER = Reader("databento-trades-csv", matches, read)
