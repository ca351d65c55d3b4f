"""Databento MBP-1 as CSV (top of book after each CME event), e.g. ``databento_glbx-mdp3_ESU4_mbp-1_*.csv``.

Prices are int64 fixed point in 1e-9 units; ``ts_event`` is the exchange time and
``ts_recv`` Databento's receive time, both in ns. The CSV has no symbol column, so the
symbol comes from the file name (``..._<SYMBOL>_mbp-1_...``); the venue is ``cme`` for
GLBX.MDP3. Rows where a side of the book is empty are skipped. Databento's ``sequence``
is the venue's packet sequence, shared by every event of one packet, so it is no
per-event id and the quotes carry sequence 0 (not checked).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

from hftgate.replay.readers import Reader, UnknownFormatError, csv_header, open_text
from hftgate.replay.ticks import QuoteTick, Tick

PRICE_SCALE = 1e-9
# Databento's "no price" sentinel (INT64_MAX) on an empty side.
UNDEF_PRICE = 2**63 - 1
_REQUIRED = {"ts_recv", "ts_event", "bid_px_00", "ask_px_00", "bid_sz_00", "ask_sz_00"}


def symbol_from_name(path: Path, schema: str) -> tuple[str, str]:
    """(venue, symbol) from ``databento_<dataset>_<SYMBOL>_<schema>...``."""
    match = re.match(rf"databento_([a-z0-9]+)-[a-z0-9-]*?_([A-Z0-9.]+)_{schema}", path.name)
    if match is None:
        raise UnknownFormatError(
            f"{path}: cannot tell the symbol from the file name (databento_<dataset>_<SYMBOL>_...)"
        )
    venue = "cme" if match.group(1) == "glbx" else match.group(1)
    return venue, match.group(2)


def matches(path: Path, first_line: str) -> bool:
    return set(csv_header(first_line)) >= _REQUIRED


def read(path: Path) -> Iterator[Tick]:
    venue, symbol = symbol_from_name(path, "mbp-1")
    with open_text(path) as f:
        for row in csv.DictReader(f):
            bid_px, ask_px = int(row["bid_px_00"]), int(row["ask_px_00"])
            if bid_px == UNDEF_PRICE or ask_px == UNDEF_PRICE:
                continue
            yield QuoteTick(
                venue,
                symbol,
                int(row["ts_event"]),
                int(row["ts_recv"]),
                0,
                bid_px * PRICE_SCALE,
                float(row["bid_sz_00"]),
                ask_px * PRICE_SCALE,
                float(row["ask_sz_00"]),
            )


READER = Reader("databento-mbp1-csv", matches, read)
