"""Raw Binance combined-stream recordings (``raw/hftbacktest_binance/*.jsonl.gz``).

Each line is ``<local_ts_ns> <JSON>``; the JSON is ``{"stream": ..., "data": ...}`` for
``@depth``, ``@bookTicker`` and ``@trade`` streams, or a REST depth snapshot
(``{"lastUpdateId", "bids", "asks"}``) taken by the recorder. Venue and symbol of the
snapshot are not in the messages: they come from the file name
(``binance_<spot|usdm|cm>_<symbol>_<date>``). Depth messages are diffs (``b``/``a``
levels, size 0 deletes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

from hftgate.replay.readers import Reader, UnknownFormatError, open_text
from hftgate.replay.ticks import NS_PER_MS, Aggressor, DepthTick, QuoteTick, Tick, TradeTick

_VENUES = {"spot": "binance-spot", "usdm": "binance-usdm", "cm": "binance-coinm", "coinm": "binance-coinm"}
_LINE = re.compile(r"^\d{18,20} \{")


def _venue_and_symbol(path: Path) -> tuple[str, str]:
    match = re.match(r"binance_([a-z]+)_([a-z0-9_]+?)_\d{8}", path.name)
    if match is None or match.group(1) not in _VENUES:
        raise UnknownFormatError(
            f"{path}: cannot tell market and symbol from the name (binance_<market>_<symbol>_<date>)"
        )
    return _VENUES[match.group(1)], match.group(2).upper()


def matches(path: Path, first_line: str) -> bool:
    return bool(_LINE.match(first_line)) and path.name.startswith("binance_")


def _levels(raw: list[list[str]]) -> tuple[tuple[float, float], ...]:
    return tuple((float(price), float(size)) for price, size in raw)


def read(path: Path) -> Iterator[Tick]:
    venue, file_symbol = _venue_and_symbol(path)
    with open_text(path) as f:
        for line in f:
            stamp, _, payload = line.partition(" ")
            receive_ts = int(stamp)
            message = json.loads(payload)
            if "lastUpdateId" in message:
                exchange_ts = message["E"] * NS_PER_MS if "E" in message else receive_ts
                yield DepthTick(
                    venue,
                    file_symbol,
                    exchange_ts,
                    receive_ts,
                    message["lastUpdateId"],
                    True,
                    _levels(message["bids"]),
                    _levels(message["asks"]),
                )
                continue
            stream: str = message["stream"]
            data = message["data"]
            if "@bookTicker" in stream:
                exchange_ts = data["E"] * NS_PER_MS if "E" in data else receive_ts
                yield QuoteTick(
                    venue,
                    data["s"],
                    exchange_ts,
                    receive_ts,
                    data["u"],
                    float(data["b"]),
                    float(data["B"]),
                    float(data["a"]),
                    float(data["A"]),
                )
            elif "@trade" in stream:
                aggressor = Aggressor.SELL if data["m"] else Aggressor.BUY
                yield TradeTick(
                    venue,
                    data["s"],
                    data["T"] * NS_PER_MS,
                    receive_ts,
                    data["t"],
                    float(data["p"]),
                    float(data["q"]),
                    aggressor,
                )
            elif "@depth" in stream:
                yield DepthTick(
                    venue,
                    data["s"],
                    data["E"] * NS_PER_MS,
                    receive_ts,
                    data["u"],
                    False,
                    _levels(data["b"]),
                    _levels(data["a"]),
                )


READER = Reader("binance-raw-jsonl", matches, read)
