"""The service's configuration as read from the environment."""

from __future__ import annotations

import pytest

from hftgate.config import from_env
from services.marketdata.config import MarketDataConfig


def test_lists_and_numbers_come_from_the_environment() -> None:
    config = from_env(
        MarketDataConfig,
        "HFTGATE_MARKETDATA_",
        {
            "HFTGATE_MARKETDATA_PORT": "6001",
            "HFTGATE_MARKETDATA_BAR_INTERVALS_MS": "1000, 5000, 60000",
            "HFTGATE_MARKETDATA_VENUE_TAKER_FEES_BPS": "binance-spot=7.5,hftgate=0",
            "HFTGATE_MARKETDATA_ARBITRAGE_VENUE_PAIR_MIN_EDGE_BPS": "binance-spot/hftgate=3",
        },
    )
    assert config.port == 6001
    assert config.bar_intervals_ms == (1000, 5000, 60000)
    assert config.taker_fee_bps_by_venue() == {"binance-spot": 7.5, "hftgate": 0.0}
    assert config.min_edge_bps_by_venue_pair() == {frozenset({"binance-spot", "hftgate"}): 3.0}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("venue_taker_fees_bps", ("binance-spot",), "not 'name=number'"),
        ("venue_taker_fees_bps", ("binance-spot=cheap",), "not 'name=number'"),
        ("arbitrage_venue_pair_min_edge_bps", ("a=3",), "not 'venue-a/venue-b'"),
        ("bar_intervals_ms", (0,), "must be positive"),
        ("subscriber_buffer_updates", 0, "must be positive"),
        ("vwap_last_trades", 10**6, "exceeds trade_ring_capacity"),
    ],
)
def test_bad_values_fail_at_start_up_naming_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MarketDataConfig(**{field: value})  # type: ignore[arg-type]


def test_publishers_and_their_venues_come_from_the_config() -> None:
    config = from_env(
        MarketDataConfig,
        "HFTGATE_MARKETDATA_",
        {
            "HFTGATE_MARKETDATA_VENUE_TAKER_FEES_BPS": "hftgate=0,bybit=5,cme=0",
            "HFTGATE_MARKETDATA_PUBLISHER_VENUES": "execution=hftgate,feed=*,cme-gateway=cme,feed=unlisted",
            "HFTGATE_MARKETDATA_PUBLISHER_SYMBOL_QUOTAS": "execution=100",
            "HFTGATE_MARKETDATA_MAX_SYMBOLS": "1000",
        },
    )
    assert config.venues_by_publisher() == {
        "execution": frozenset({"hftgate"}),
        "feed": frozenset({"bybit", "cme"}),  # "*" is every venue but hftgate; unlisted grants nothing
        "cme-gateway": frozenset({"cme"}),
    }
    # Unlisted publishers share what the listed ones leave.
    assert config.symbol_quota_by_publisher() == {"execution": 100, "feed": 450, "cme-gateway": 450}
    assert MarketDataConfig().symbol_quota_by_publisher() == {"execution": 2048, "feed": 2048}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"publisher_venues": ("feed=hftgate",)}, "published only by 'execution'"),
        ({"publisher_venues": ("feed",)}, "not 'principal=venue'"),
        ({"publisher_venues": ("=bybit",)}, "not 'principal=venue'"),
        ({"publisher_symbol_quotas": ("feed=5000",)}, "above max_symbols"),
        ({"publisher_symbol_quotas": ("feed=2000", "execution=2097")}, "above max_symbols"),
        ({"publisher_symbol_quotas": ("gateway=10",)}, "not a publisher"),
        ({"publisher_symbol_quotas": ("feed=-1",)}, "not a count"),
        ({"publisher_symbol_quotas": ("feed=1.5",)}, "not a count"),
        ({"max_symbol_chars": 0}, "must be positive"),
        ({"max_id_jump": 0}, "must be positive"),
        ({"resync_after_ticks": 1}, "at least 2"),
    ],
)
def test_bad_access_settings_fail_at_start_up(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MarketDataConfig(**overrides)  # type: ignore[arg-type]
