"""Splitting a venue symbol into base and quote currency, for the triangular-arbitrage graph."""

from __future__ import annotations

import re

_SEPARATED = re.compile(r"^([A-Z0-9]+)[/\-]([A-Z0-9]+)$")
_PLAIN = re.compile(r"^[A-Z0-9]+$")


def split_pair(symbol: str, quote_assets: tuple[str, ...]) -> tuple[str, str] | None:
    """(base, quote) of a spot pair symbol, or None when it is not one.

    ``"ETH/BTC"`` and ``"ETH-BTC"`` split at the separator. An unseparated symbol such as
    ``"ETHBTC"`` splits at the longest quote asset it ends with. Anything else
    (``"BTCUSD_PERP"``, ``"ESU4"``) is not a currency pair.
    """
    name = symbol.upper()
    separated = _SEPARATED.match(name)
    if separated is not None:
        return separated.group(1), separated.group(2)
    if not _PLAIN.match(name):
        return None
    for quote in sorted(quote_assets, key=len, reverse=True):
        if name.endswith(quote) and len(name) > len(quote):
            return name[: -len(quote)], quote
    return None
