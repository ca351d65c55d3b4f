"""Configuration of the market data service, read from ``HFTGATE_MARKETDATA_*`` variables.

Lists are comma-separated in the environment, e.g.
``HFTGATE_MARKETDATA_VENUE_TAKER_FEES_BPS="binance-spot=10,binance-usdm=5"``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: The venue of the suite's own fills: only the execution service publishes it.
OWN_VENUE = "hftgate"
OWN_VENUE_PUBLISHER = "execution"
#: In ``publisher_venues``, every configured venue except :data:`OWN_VENUE`.
ALL_EXTERNAL_VENUES = "*"

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

#: Upper limits of the GetSnapshot bounds, so that no configuration can make a reply exceed
#: gRPC's 64 MiB message limit: a reply's symbols take at most MAX_SNAPSHOT_REPLY_BYTES, except
#: that a page always holds its first symbol, and one symbol at MAX_SNAPSHOT_DEPTH_LEVELS per side
#: encodes in under 5 MB (20 bytes a level, names of 64 characters).
MAX_SNAPSHOT_DEPTH_LEVELS = 100_000
MAX_SNAPSHOT_REPLY_BYTES = 48 * 1024 * 1024

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

    # Who may publish which venues: "principal=venue", one venue per entry (a principal may
    # have several entries); "principal=*" is every configured venue except "hftgate",
    # which only "execution" may be given; a venue that is not configured grants nothing.
    # Any other caller of the Publish RPCs is refused.
    publisher_venues: tuple[str, ...] = ("execution=hftgate", "feed=*")
    # New (venue, symbol) pairs each publisher may create: "principal=count". Publishers not
    # listed share what the listed ones leave of max_symbols equally; the quotas may not sum
    # above max_symbols, so one publisher cannot take another's room.
    publisher_symbol_quotas: tuple[str, ...] = ()
    # Longest venue and symbol accepted in a tick, a query or a filter (characters).
    max_venue_chars: int = 64
    max_symbol_chars: int = 64
    # Most (venue, symbol) patterns in one SymbolFilter (GetSnapshot, Subscribe).
    max_filter_symbols: int = 1_024
    # Ordering rule (see marketdata.proto): a tick more than this after the last accepted
    # one of its symbol (plus the wall time elapsed since), or this far before it, is a JUMP;
    max_time_jump_ms: int = 600_000
    # ... as is an id (sequence, trade id) more than this above or below the last one;
    max_id_jump: int = 1 << 32
    # ... and this many JUMP ticks in a row that agree with each other move the symbol to them.
    resync_after_ticks: int = 3

    # The cache service that resolves account API keys (apikey:<hash> rows) for the read
    # RPCs; empty = API keys are refused (service tokens only).
    cache_address: str = ""
    # How long a resolved key (or a miss) may be held in the near cache, and how many.
    api_key_cache_ttl_ms: int = 5_000
    api_key_cache_max_entries: int = 4_096
    # Longest API key looked up (characters); longer ones are refused unlooked.
    max_api_key_chars: int = 256

    # Updates of subscribed symbols kept in the one log every Subscribe stream reads from: a
    # stream that falls further behind than this conflates (the latest state per symbol).
    # Shared by all streams, so it costs the same with 1 or 256 subscribers; it must cover
    # the ticks ingested between two turns of a fast writer (a few 1,000-tick publish messages).
    subscriber_buffer_updates: int = 16_384
    # Most updates in one SubscribeBatched message (a MarketUpdate is ~150 bytes, so ~150 KiB).
    subscriber_batch_max_updates: int = 1_024
    # Events a StreamArbitrage stream may queue before it drops the oldest.
    arbitrage_buffer_events: int = 4_096

    # Concurrent server streams (Subscribe and StreamArbitrage counted together) one account
    # (an API-key caller) may hold, one service principal may hold, and the whole service
    # holds; a stream beyond any of them is refused with RESOURCE_EXHAUSTED. A stream's slot
    # is freed as soon as it ends, however it ends (cancelled, disconnected, refused later).
    max_streams_per_account: int = 8
    max_streams_per_service_principal: int = 64
    max_streams: int = 256

    # GetSnapshot: most depth levels per side a request may ask for (more is INVALID_ARGUMENT
    # naming depth_levels); at most MAX_SNAPSHOT_DEPTH_LEVELS.
    snapshot_max_depth_levels: int = 1_000
    # Most symbols in one GetSnapshot reply, and the most bytes its symbols may take (an upper
    # bound of their encoded size, at most MAX_SNAPSHOT_REPLY_BYTES, well under gRPC's 64 MiB
    # message limit); a reply that reaches either stops there, says it is truncated and where
    # the next page starts.
    snapshot_max_symbols: int = 1_024
    snapshot_max_reply_bytes: int = 16 * 1024 * 1024

    # Prometheus /metrics on 127.0.0.1 at this port (hftgate/prometheus.py); 0 = no metrics endpoint.
    metrics_port: int = 0
    # The scaler's "host:port": report this replica's load there every second (hftgate/loadreport.py);
    # empty = no reports.
    scaler_address: str = ""

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
            "subscriber_batch_max_updates",
            "arbitrage_buffer_events",
            "max_venue_chars",
            "max_symbol_chars",
            "max_filter_symbols",
            "max_time_jump_ms",
            "max_id_jump",
            "api_key_cache_ttl_ms",
            "api_key_cache_max_entries",
            "max_api_key_chars",
            "max_streams_per_account",
            "max_streams_per_service_principal",
            "max_streams",
            "snapshot_max_depth_levels",
            "snapshot_max_symbols",
            "snapshot_max_reply_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.snapshot_max_depth_levels > MAX_SNAPSHOT_DEPTH_LEVELS:
            raise ValueError(
                f"snapshot_max_depth_levels ({self.snapshot_max_depth_levels}) exceeds "
                f"{MAX_SNAPSHOT_DEPTH_LEVELS}"
            )
        if self.snapshot_max_reply_bytes > MAX_SNAPSHOT_REPLY_BYTES:
            raise ValueError(
                f"snapshot_max_reply_bytes ({self.snapshot_max_reply_bytes}) exceeds "
                f"{MAX_SNAPSHOT_REPLY_BYTES} (gRPC's message limit is 64 MiB)"
            )
        if self.resync_after_ticks < 2:
            raise ValueError(
                f"resync_after_ticks must be at least 2 (1 would let any one tick move a symbol), "
                f"got {self.resync_after_ticks}"
            )
        self.taker_fee_bps_by_venue()
        self.min_edge_bps_by_venue_pair()
        self.symbol_quota_by_publisher()
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

    def venues_by_publisher(self) -> dict[str, frozenset[str]]:
        """``publisher_venues`` resolved against the configured venues; ValueError when malformed."""
        venues = set(self.taker_fee_bps_by_venue())
        rights: dict[str, set[str]] = {}
        for entry in self.publisher_venues:
            principal, sep, venue = (part.strip() for part in entry.partition("="))
            if not sep or not principal or not venue:
                raise ValueError(f"publisher_venues: {entry!r} is not 'principal=venue'")
            granted = rights.setdefault(principal, set())
            if venue == ALL_EXTERNAL_VENUES:
                granted.update(venues - {OWN_VENUE})
            elif venue == OWN_VENUE and principal != OWN_VENUE_PUBLISHER:
                raise ValueError(
                    f"publisher_venues: {entry!r}: venue {OWN_VENUE!r} is published only by "
                    f"{OWN_VENUE_PUBLISHER!r}"
                )
            elif venue in venues:  # a venue not configured grants nothing: its ticks are unknown
                granted.add(venue)
        return {principal: frozenset(granted) for principal, granted in rights.items()}

    def symbol_quota_by_publisher(self) -> dict[str, int]:
        """New symbols each publisher may create (see ``publisher_symbol_quotas``)."""
        publishers = self.venues_by_publisher()
        quotas: dict[str, int] = {}
        for name, count in _named_numbers(self.publisher_symbol_quotas, "publisher_symbol_quotas"):
            if name not in publishers:
                raise ValueError(f"publisher_symbol_quotas: {name!r} is not a publisher (publisher_venues)")
            if count < 0 or count != int(count):
                raise ValueError(f"publisher_symbol_quotas: {name}={count:g} is not a count")
            quotas[name] = int(count)
        if sum(quotas.values()) > self.max_symbols:
            raise ValueError(
                f"publisher_symbol_quotas sum to {sum(quotas.values())}, "
                f"above max_symbols ({self.max_symbols})"
            )
        rest = [name for name in sorted(publishers) if name not in quotas]
        if rest:
            share = (self.max_symbols - sum(quotas.values())) // len(rest)
            quotas.update(dict.fromkeys(rest, share))
        return quotas

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
