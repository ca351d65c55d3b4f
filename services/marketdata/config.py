"""Configuration of the market data service, read from ``HFTGATE_MARKETDATA_*`` variables.

Lists are comma-separated in the environment, e.g.
``HFTGATE_MARKETDATA_VENUE_TAKER_FEES_BPS="binance-spot=10,binance-usdm=5"``.
"""

from __future__ import annotations

from dataclasses import dataclass

# Published base-tier taker fees (basis points) of the venues the recorded data and the
# execution service come from; a deployment overrides them with its own fee tier.
DEFAULT_VENUE_TAKER_FEES_BPS: tuple[str, ...] = (
    "hftgate=0",
    "binance-spot=10",
    "binance-usdm=5",
    "binance-coinm=5",
    "binance-futures=5",
    "huobi-dm-swap=5",
    "bitmex=7.5",
    "bybit=5.5",
    "deribit=5",
    "bitfinex=20",
    "cme=0",
    "truefx=0",
    "histdata=0",
)

# Quote currencies tried, longest first, to split an unseparated symbol such as
# "ETHBTC" into base and quote for the triangular-arbitrage currency graph.
DEFAULT_QUOTE_ASSETS: tuple[str, ...] = (
    "USDT",
    "USDC",
    "FDUSD",
    "BUSD",
    "TUSD",
    "USD",
    "EUR",
    "GBP",
    "JPY",
    "CHF",
    "BTC",
    "ETH",
    "BNB",
)


@dataclass(frozen=True)
class MarketDataConfig:
    """Every tunable of the market data service, with its unit in its name."""

    # Interface and port to listen on.
    host: str = "127.0.0.1"
    port: int = 50052
    # How long a stopping server lets in-flight calls finish.
    shutdown_grace_s: float = 5.0

    # Venues accepted on ingest, each with its taker fee: "venue=bps". A tick from a
    # venue not listed here is rejected (unknown venue).
    venue_taker_fees_bps: tuple[str, ...] = DEFAULT_VENUE_TAKER_FEES_BPS
    # An opportunity opens when its edge after fees exceeds this many basis points.
    arbitrage_min_edge_bps: float = 0.0
    # Per venue-pair overrides of the threshold, "venue-a/venue-b=bps" (either order).
    arbitrage_venue_pair_min_edge_bps: tuple[str, ...] = ()
    # Venues whose symbols are spot currency pairs, searched for triangular cycles.
    triangular_venues: tuple[str, ...] = ("hftgate", "binance-spot", "bitfinex", "truefx", "histdata")
    # Quote currencies used to split symbols into base and quote (see above).
    quote_assets: tuple[str, ...] = DEFAULT_QUOTE_ASSETS

    # Trades kept per (venue, symbol) for VWAP windows (preallocated ring).
    trade_ring_capacity: int = 16_384
    # Default rolling VWAP windows: by time, and by number of trades.
    vwap_window_ms: int = 60_000
    vwap_last_trades: int = 1_000
    # OHLCV bar intervals, and closed bars kept per interval and symbol.
    bar_intervals_ms: tuple[int, ...] = (1_000, 60_000)
    bar_history: int = 1_440

    # Depth levels kept per side; the farthest from the touch are dropped beyond it.
    depth_max_levels_per_side: int = 1_000
    # A depth update with more levels than this (both sides) is rejected as oversized.
    depth_max_levels_per_update: int = 5_000
    # Ticks whose exchange time is further than this ahead of the service's clock are rejected.
    max_future_ms: int = 5_000
    # Distinct (venue, symbol) pairs tracked; ticks for more are rejected.
    max_symbols: int = 4_096

    # Updates a Subscribe stream may queue before it conflates per symbol.
    subscriber_buffer_updates: int = 1_024
    # Events a StreamArbitrage stream may queue before it drops the oldest.
    arbitrage_buffer_events: int = 4_096

    def __post_init__(self) -> None:
        # The environment delivers list items as strings; normalise to the declared type.
        object.__setattr__(self, "bar_intervals_ms", tuple(int(x) for x in self.bar_intervals_ms))
        if not self.bar_intervals_ms or min(self.bar_intervals_ms) <= 0:
            raise ValueError(f"bar_intervals_ms must be positive, got {self.bar_intervals_ms}")
        for name in (
            "trade_ring_capacity",
            "vwap_window_ms",
            "vwap_last_trades",
            "bar_history",
            "depth_max_levels_per_side",
            "depth_max_levels_per_update",
            "max_symbols",
            "subscriber_buffer_updates",
            "arbitrage_buffer_events",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        self.taker_fee_bps_by_venue()
        self.min_edge_bps_by_venue_pair()
        if self.vwap_last_trades > self.trade_ring_capacity:
            raise ValueError(
                f"vwap_last_trades ({self.vwap_last_trades}) exceeds trade_ring_capacity "
                f"({self.trade_ring_capacity})"
            )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def taker_fee_bps_by_venue(self) -> dict[str, float]:
        """``venue_taker_fees_bps`` as a mapping; raises ValueError on a malformed entry."""
        return {
            venue: fee for venue, fee in _named_numbers(self.venue_taker_fees_bps, "venue_taker_fees_bps")
        }

    def min_edge_bps_by_venue_pair(self) -> dict[frozenset[str], float]:
        """``arbitrage_venue_pair_min_edge_bps`` keyed by the unordered venue pair."""
        pairs: dict[frozenset[str], float] = {}
        for name, bps in _named_numbers(
            self.arbitrage_venue_pair_min_edge_bps, "arbitrage_venue_pair_min_edge_bps"
        ):
            venues = [v.strip() for v in name.split("/")]
            if len(venues) != 2 or not all(venues):
                raise ValueError(f"arbitrage_venue_pair_min_edge_bps: {name!r} is not 'venue-a/venue-b'")
            pairs[frozenset(venues)] = bps
        return pairs


def _named_numbers(entries: tuple[str, ...], field: str) -> list[tuple[str, float]]:
    parsed = []
    for entry in entries:
        name, sep, number = entry.partition("=")
        try:
            value = float(number)
        except ValueError:
            value = float("nan")
        if not sep or not name.strip() or value != value:
            raise ValueError(f"{field}: {entry!r} is not 'name=number'")
        parsed.append((name.strip(), value))
    return parsed
