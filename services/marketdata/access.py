"""Who may do what on the market data service (no gRPC here; the interceptor in auth.py asks).

* **Publishers** are service principals given venues by config (``publisher_venues``):
  by default ``execution`` publishes the suite's own venue ``hftgate`` and ``feed`` (market
  data feed handlers such as ``hftgate replay``) every other configured venue. Each also has
  a quota of new (venue, symbol) pairs (``publisher_symbol_quotas``). The engine checks every
  tick against its publisher (:class:`Publisher`).
* **Readers** are any service principal, or an account whose ``x-api-key`` resolves through
  the cache service's ``apikey:<keyed hash>`` rows (:class:`ApiKeyVerifier`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hftgate.security import SuiteSecret
from services.marketdata.config import MarketDataConfig

API_KEY_PREFIX = "apikey:"


@dataclass(frozen=True, slots=True)
class Publisher:
    """A principal allowed to publish: its venues and its quota of new symbols."""

    principal: str
    venues: frozenset[str]
    symbol_quota: int


def publishers(config: MarketDataConfig) -> dict[str, Publisher]:
    """Every publisher the config allows, by principal."""
    quotas = config.symbol_quota_by_publisher()
    return {
        principal: Publisher(principal, venues, quotas[principal])
        for principal, venues in config.venues_by_publisher().items()
    }


class ApiKeyVerifier:
    """Resolves an API key to its account through ``lookup`` (the cache client's ``get``).

    The key is hashed with the suite secret exactly as the execution service stores it. A key
    longer than ``max_key_chars`` is refused without a lookup (nothing of it is hashed or kept).
    ``lookup`` errors propagate: the caller answers UNAVAILABLE, never "invalid key".
    """

    def __init__(
        self, secret: SuiteSecret, lookup: Callable[[str], Awaitable[bytes | None]], max_key_chars: int = 256
    ) -> None:
        self._secret = secret
        self._lookup = lookup
        self._max_key_chars = max_key_chars
        self.lookups = 0

    async def account_of(self, api_key: str) -> str | None:
        """The account name the key belongs to, or None when it is unknown."""
        if not api_key or len(api_key) > self._max_key_chars:
            return None
        self.lookups += 1
        raw = await self._lookup(API_KEY_PREFIX + self._secret.api_key_hash(api_key))
        if not raw:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
