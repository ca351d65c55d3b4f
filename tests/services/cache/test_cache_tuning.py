"""The near cache resized live, and the cache's TuningService through which the scaler's optimiser
does it: control plane only, bounds checked, the new size in effect at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest

from hftgate.v1 import cache_pb2_grpc, scaler_pb2, scaler_pb2_grpc
from services.cache.__main__ import NearCacheHitRatio
from services.cache.config import CacheConfig
from services.cache.l1 import NearCache
from services.cache.server import L1_MAX_ENTRIES_TUNABLE, CacheRunningServer

from .conftest import credentials_for, key_credentials

StartReplica = Callable[..., Awaitable[CacheRunningServer]]
Tuning = tuple[CacheRunningServer, scaler_pb2_grpc.TuningServiceStub, cache_pb2_grpc.CacheServiceStub]
SCALER = credentials_for("scaler").metadata
ADMIN = credentials_for("admin").metadata


def filled(capacity: int, keys: int) -> NearCache:
    cache = NearCache(capacity, 1 << 30)
    for i in range(keys):
        cache.put(f"k{i}", b"v", version=1, ttl_ms=60_000, token=cache.load_token())
    return cache


def test_shrinking_evicts_down_to_the_new_bound_and_keeps_the_hot_keys() -> None:
    cache = filled(1000, 1000)
    hot = [f"k{i}" for i in range(0, 1000, 50)]
    for _ in range(3):
        for key in hot:
            assert cache.get(key) is not None
    evicted = cache.resize(100)
    assert len(cache) == 100 and cache.max_entries == 100
    assert evicted == 900 and cache.stats().evictions >= 900
    assert all(cache.peek(key) is not None for key in hot), "protected (hit) entries go last"
    # Still a working cache at the new size: puts beyond it evict, never grow it.
    for i in range(1000, 1500):
        cache.put(f"k{i}", b"v", version=1, ttl_ms=60_000, token=cache.load_token())
    assert len(cache) <= 100


def test_growing_lets_the_cache_hold_more_and_refuses_a_bound_below_one() -> None:
    cache = filled(64, 64)
    assert cache.resize(10_000) == 0 and len(cache) == 64
    for i in range(64, 5_000):
        cache.put(f"k{i}", b"v", version=1, ttl_ms=60_000, token=cache.load_token())
    assert 64 < len(cache) <= 10_000
    with pytest.raises(ValueError, match="must be positive"):
        cache.resize(0)


def test_the_reported_hit_ratio_is_the_last_intervals() -> None:
    cache = filled(100, 10)
    ratio = NearCacheHitRatio(cache)
    assert ratio().gauges == {}  # no lookups yet: nothing to judge
    for _ in range(9):
        cache.get("k1")
    cache.get("absent")
    assert ratio().gauges == {"near_cache_hit_ratio": 0.9}
    cache.get("absent")
    assert ratio().gauges == {"near_cache_hit_ratio": 0.0}


@pytest.fixture
async def tuning(
    replica_config: CacheConfig, start_replica: StartReplica
) -> AsyncIterator[
    tuple[CacheRunningServer, scaler_pb2_grpc.TuningServiceStub, cache_pb2_grpc.CacheServiceStub]
]:
    replica = await start_replica(replica_config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        yield replica, scaler_pb2_grpc.TuningServiceStub(channel), cache_pb2_grpc.CacheServiceStub(channel)


async def test_the_scaler_resizes_the_near_cache_live(
    tuning: Tuning,
) -> None:
    replica, stub, _ = tuning
    assert replica.cache is not None and replica.cache.l1 is not None
    got = await stub.GetTunable(scaler_pb2.GetTunableRequest(name="l1_max_entries"), metadata=SCALER)
    assert got.tunable.value == replica.cache.l1.max_entries
    assert (got.tunable.min_value, got.tunable.max_value) == L1_MAX_ENTRIES_TUNABLE
    changed = await stub.SetTunable(
        scaler_pb2.SetTunableRequest(name="l1_max_entries", value=2048.4), metadata=ADMIN
    )
    assert changed.tunable.value == 2048 == replica.cache.l1.max_entries


@pytest.mark.parametrize(
    ("metadata", "request_", "code", "message"),
    [
        (key_credentials("hftgate-demo-alice").metadata, ("l1_max_entries", 2048), "UNAUTHENTICATED", ""),
        (
            credentials_for("marketdata").metadata,
            ("l1_max_entries", 2048),
            "PERMISSION_DENIED",
            "'marketdata'",
        ),
        (SCALER, ("l1_max_entries", 10), "INVALID_ARGUMENT", "takes 1024 to 4.19"),
        (SCALER, ("l1_max_entries", float("nan")), "INVALID_ARGUMENT", "not nan"),
        (SCALER, ("journal_window", 5), "NOT_FOUND", "has no tunable setting 'journal_window'"),
        (SCALER, ("x" * 10_000, 5), "INVALID_ARGUMENT", "a setting name of 1 to 64"),
    ],
)
async def test_bad_or_unauthorised_changes_are_refused_and_change_nothing(
    tuning: Tuning,
    metadata: tuple[tuple[str, str], ...],
    request_: tuple[str, float],
    code: str,
    message: str,
) -> None:
    replica, stub, _ = tuning
    assert replica.cache is not None and replica.cache.l1 is not None
    before = replica.cache.l1.max_entries
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.SetTunable(
            scaler_pb2.SetTunableRequest(name=request_[0], value=request_[1]), metadata=metadata
        )
    assert refused.value.code() == getattr(grpc.StatusCode, code)
    assert message in (refused.value.details() or "")
    assert "Traceback" not in (refused.value.details() or "")
    assert replica.cache.l1.max_entries == before
