"""L1, the near cache: bounds, TTL, admission, invalidation, load tokens."""

from __future__ import annotations

import pytest

from services.cache import globs
from services.cache.l1 import ENTRY_OVERHEAD_BYTES, FrequencySketch, NearCache


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = 1_000_000_000

    def __call__(self) -> int:
        return self.now_ns


def test_get_returns_what_put_stored_with_its_version() -> None:
    cache = NearCache(100, 1 << 20)
    cache.put("instrument:BTCUSDT", b"btc", version=7)
    entry = cache.get("instrument:BTCUSDT")
    assert entry is not None and entry.value == b"btc" and entry.version == 7 and not entry.negative
    assert cache.get("missing") is None
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)


def test_entry_expires_after_its_ttl() -> None:
    clock = FakeClock()
    cache = NearCache(100, 1 << 20, clock_ns=clock)
    cache.put("k", b"v", ttl_ms=50)
    cache.put("forever", b"v")
    clock.now_ns += 49_000_000
    assert cache.get("k") is not None
    clock.now_ns += 1_000_000
    assert cache.get("k") is None
    assert cache.get("forever") is not None
    assert cache.stats().expirations == 1


def test_time_left_counts_down_and_never_reads_as_no_expiry_while_held() -> None:
    clock = FakeClock()
    cache = NearCache(100, 1 << 20, clock_ns=clock)
    cache.put("k", b"v", ttl_ms=50)
    cache.put("forever", b"v")
    entry = cache.get("k")
    assert entry is not None and cache.ttl_left_ms(entry) == 50
    clock.now_ns += 49_900_000
    assert cache.ttl_left_ms(entry) == 1  # under a millisecond left: 1, since 0 would mean "never"
    forever = cache.get("forever")
    assert forever is not None and cache.ttl_left_ms(forever) == 0


def test_negative_entry_is_a_cached_miss() -> None:
    cache = NearCache(100, 1 << 20)
    cache.put("ghost", b"", negative=True, ttl_ms=1000)
    entry = cache.get("ghost")
    assert entry is not None and entry.negative
    assert cache.stats().negative_hits == 1


def test_entry_count_never_exceeds_max_entries() -> None:
    cache = NearCache(64, 1 << 30)
    for i in range(10_000):
        cache.put(f"k{i}", b"v")
        assert len(cache) <= 64
    assert cache.stats().evictions == 10_000 - len(cache)


def test_bytes_never_exceed_max_bytes() -> None:
    limit = 20 * (ENTRY_OVERHEAD_BYTES + 1000)
    cache = NearCache(1000, limit)
    for i in range(500):
        cache.put(f"k{i:03d}", b"x" * 996)
        assert cache.stats().bytes <= limit
    assert not cache.put("huge", b"x" * limit)
    assert "huge" not in cache


def test_frequent_keys_survive_a_scan_of_one_off_keys() -> None:
    cache = NearCache(100, 1 << 30)
    hot = [f"hot{i}" for i in range(50)]
    for _ in range(5):
        for key in hot:
            if cache.get(key) is None:
                cache.put(key, b"v")
    for i in range(5000):  # a scan: every key once, 50 times the cache's size
        cache.put(f"scan{i}", b"v")
    # An LRU would keep none; the odd hot key last seen in the window may lose to aging.
    assert sum(key in cache for key in hot) >= 45


def test_sketch_counts_and_ages() -> None:
    sketch = FrequencySketch(100, sample_factor=10)
    for _ in range(12):
        sketch.increment("a")
    sketch.increment("b")
    assert sketch.frequency("a") >= 12 and sketch.frequency("a") <= 15
    assert 1 <= sketch.frequency("b") <= 2
    for i in range(2000):  # pushes past 10 x capacity updates: counters halve
        sketch.increment(f"noise{i}")
    assert sketch.epoch >= 1
    assert sketch.frequency("a") <= 7


def test_delete_matching_removes_exactly_the_glob_matches() -> None:
    cache = NearCache(100, 1 << 20)
    for key in ["instrument:BTC", "instrument:ETH", "instrumentX", "account:1"]:
        cache.put(key, b"v")
    assert cache.delete_matching("instrument:*") == 2
    assert sorted(cache.keys()) == ["account:1", "instrumentX"]


def test_load_token_refuses_a_put_after_a_racing_delete() -> None:
    cache = NearCache(100, 1 << 20)
    token = cache.load_token()
    cache.delete("k")  # the invalidation arrives while the load is in flight
    assert not cache.put("k", b"stale", token=token)
    assert "k" not in cache
    assert cache.put("other", b"fresh", token=token)  # other keys are unaffected
    assert cache.stats().refused_stale_puts == 1


def test_load_token_refuses_after_pattern_or_flush() -> None:
    cache = NearCache(100, 1 << 20)
    token = cache.load_token()
    cache.delete_matching("account:*")
    assert not cache.put("account:9", b"stale", token=token)
    assert cache.put("instrument:1", b"ok", token=token)
    token = cache.load_token()
    cache.clear()
    assert not cache.put("instrument:1", b"stale", token=token)


def test_load_token_older_than_the_history_is_refused() -> None:
    cache = NearCache(100, 1 << 20, invalidation_history=4)
    token = cache.load_token()
    for i in range(10):
        cache.delete(f"other{i}")
    assert not cache.put("k", b"v", token=token)


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("instrument:*", "instrument:BTC", True),
        ("instrument:*", "instrument", False),
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("[ab]x", "bx", True),
        ("[^ab]x", "bx", False),
        ("[a-c]x", "cx", True),
        ("\\*", "*", True),
        ("\\*", "x", False),
        ("*", "multi\nline", True),
        ("%_", "%_", True),
    ],
)
def test_glob_follows_redis_rules(pattern: str, key: str, expected: bool) -> None:
    assert globs.matches(pattern, key) is expected


def test_glob_literal_prefix_and_errors() -> None:
    assert globs.literal_prefix("instrument:*") == "instrument:"
    assert globs.literal_prefix("a\\*b*") == "a*b"
    assert globs.matches(globs.escape("we*rd[") + "*", "we*rd[x")
    with pytest.raises(globs.GlobError):
        globs.compile_glob("[abc")
