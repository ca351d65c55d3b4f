"""Everything the service holds about one (venue, symbol), written only by the engine.

Top of book and the last trade are plain attributes (read on every tick by the
arbitrage detector, so they must be cheap to read); trade history and closed bars are
preallocated numpy rings, allocated when the symbol's first trade arrives so that
quote-only symbols cost no trade memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from services.marketdata.bars import BarSeries
from services.marketdata.depth_book import DepthBook
from services.marketdata.ordering import OrderKey
from services.marketdata.trade_ring import TradeRing

if TYPE_CHECKING:
    from services.marketdata.fanout import Subscriber


class SymbolState:
    """State of one symbol on one venue."""

    __slots__ = (
        "arbitrage_checks",
        "ask_price",
        "ask_size",
        "bars",
        "bid_price",
        "bid_size",
        "depth",
        "depth_order",
        "depth_updates",
        "fanout_kind",
        "fanout_receive_ts_ns",
        "has_quote_feed",
        "key",
        "last_trade_id",
        "last_trade_price",
        "last_trade_side",
        "last_trade_size",
        "last_trade_ts_ns",
        "quote_order",
        "quotes",
        "subscribers",
        "symbol",
        "symbol_sequence",
        "taker_fee_bps",
        "top_ts_ns",
        "trade_count",
        "trade_order",
        "trades",
        "venue",
        "vwap",
        "vwap_first_inside",
        "wire_names",
    )

    def __init__(
        self,
        venue: str,
        symbol: str,
        taker_fee_bps: float,
        max_depth_levels_per_side: int,
        max_depth_levels_per_update: int = 5_000,
    ) -> None:
        self.venue = venue
        self.symbol = symbol
        self.key = (venue, symbol)
        # The names as a MarketUpdate carries them, encoded once (hftgate.native.md_wire's
        # MarketUpdateEncoder.encode_state); None for a name that is not valid Unicode (the general path,
        # which names the error, then encodes its updates).
        try:
            venue_bytes, symbol_bytes = venue.encode(), symbol.encode()
        except UnicodeEncodeError:
            self.wire_names: tuple[bytes, int, bytes, int] | None = None
        else:
            self.wire_names = (venue_bytes, len(venue_bytes), symbol_bytes, len(symbol_bytes))
        # The kind and receive time of the symbol's last update logged for subscribers: with the
        # state itself, the update a stream that fell behind gets (fanout.UpdateLog.latest).
        self.fanout_kind = 0
        self.fanout_receive_ts_ns = 0
        self.taker_fee_bps = taker_fee_bps
        # Top of book; 0.0 prices until the first quote (or depth) sets them.
        self.bid_price = self.bid_size = self.ask_price = self.ask_size = 0.0
        self.top_ts_ns = 0
        # True once a top-of-book Quote arrived: from then on depth no longer sets the top.
        self.has_quote_feed = False
        # The ordering rule's reference per kind of tick (services.marketdata.ordering).
        self.quote_order = OrderKey()
        self.depth_order = OrderKey()
        self.trade_order = OrderKey()
        self.depth = DepthBook(max_depth_levels_per_side, max_depth_levels_per_update)
        # Trade side: allocated by allocate_trade_history() on the first trade.
        self.trades: TradeRing | None = None
        self.bars: tuple[BarSeries, ...] = ()
        self.last_trade_price = self.last_trade_size = 0.0
        self.last_trade_side = 0
        self.last_trade_ts_ns = 0
        self.last_trade_id = 0
        # Rolling VWAP over the default time window, updated on every trade, and the
        # running count of trades that have left that window.
        self.vwap = 0.0
        self.vwap_first_inside = 0
        # Counters: accepted quotes + depth updates, accepted trades, and their sum as
        # the symbol's update sequence (what Subscribe's symbol_sequence reports).
        self.quotes = 0
        self.depth_updates = 0
        self.trade_count = 0
        self.symbol_sequence = 0
        # Subscribe streams whose filter matches this symbol.
        self.subscribers: list[Subscriber] = []
        # Arbitrage checks (cross-venue directions, triangular cycles) this symbol is a leg of.
        self.arbitrage_checks: list[Any] = []

    def allocate_trade_history(
        self, ring_capacity: int, bar_intervals_ms: tuple[int, ...], bar_history: int
    ) -> None:
        self.trades = TradeRing(ring_capacity)
        self.bars = tuple(BarSeries(interval, bar_history) for interval in sorted(bar_intervals_ms))

    def restart_trade_history(self) -> None:
        """Forget the trade ring, bars and rolling VWAP (the next trade allocates them afresh):
        the trade feed resynced back in time. The last trade and the counters stay."""
        self.trades = None
        self.bars = ()
        self.vwap = 0.0
        self.vwap_first_inside = 0

    @property
    def has_top(self) -> bool:
        return self.bid_price > 0.0 and self.ask_price > 0.0
