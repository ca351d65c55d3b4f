"""Bybit ``orderbook.<depth>.<SYMBOL>`` recordings: JSON lines, often zipped (``bybit_*_ob500.data.zip``).

Each line is ``{"topic", "type": "snapshot"|"delta", "ts" (ms), "data": {"s", "b", "a", "u"}}``
with ``[price, size]`` strings; size 0 deletes a level. There is no receive time, so
the message time stands in. The venue is ``bybit``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from hftgate.replay.readers import Reader, open_text
from hftgate.replay.ticks import NS_PER_MS, DepthTick, Tick


def matches(path: Path, first_line: str) -> bool:
    return first_line.startswith('{"topic":"orderbook.')


def _levels(raw: list[list[str]]) -> tuple[tuple[float, float], ...]:
    return tuple((float(price), float(size)) for price, size in raw)


def read(path: Path) -> Iterator[Tick]:
    with open_text(path) as f:
        for line in f:
            if not line.strip():
                continue
            message = json.loads(line)
            data = message["data"]
            ts = int(message["ts"]) * NS_PER_MS
            yield DepthTick(
                "bybit",
                data["s"],
                ts,
                ts,
                int(data.get("u", 0)),
                message["type"] == "snapshot",
                _levels(data["b"]),
                _levels(data["a"]),
            )


READER = Reader("bybit-orderbook-jsonl", matches, read)
