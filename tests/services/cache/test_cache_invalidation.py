"""Invalidations reach every L1: two service replicas, two near-cache clients, one Redis, one SQL.

Each round first makes sure all four near caches (each replica's L1 and each client's)
hold the key, then changes it through one replica, then waits until no near cache holds
the old version. Every round must end with all four clean: 100% reach.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from services.cache.client import CacheClient
from services.cache.config import CacheConfig
from services.cache.l1 import NearCache
from services.cache.server import CacheRunningServer

StartReplica = Callable[..., Awaitable[CacheRunningServer]]
Connect = Callable[..., Awaitable[CacheClient]]
ROUNDS = 30
WAIT_S = 5.0


def _near_caches(replicas: list[CacheRunningServer], clients: list[CacheClient]) -> dict[str, NearCache]:
    caches: dict[str, NearCache] = {}
    for i, replica in enumerate(replicas):
        assert replica.cache is not None and replica.cache.l1 is not None
        caches[f"replica{i}.L1"] = replica.cache.l1
    for i, client in enumerate(clients):
        caches[f"client{i}.near"] = client.near_cache
    return caches


async def _until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.005)
    return condition()


async def _warm(key: str, clients: list[CacheClient], caches: dict[str, NearCache]) -> None:
    """Read ``key`` until every near cache holds it (each replica's L1 fills from its client's reads)."""
    for _ in range(200):
        if all(key in cache for cache in caches.values()):
            return
        for client in clients:
            await client.get(key)
        await asyncio.sleep(0.005)
    missing = [name for name, cache in caches.items() if key not in cache]
    raise AssertionError(f"could not get {key!r} into {missing}")


async def _two_by_two(
    config: CacheConfig, start_replica: StartReplica, connect: Connect, **overrides: object
):  # type: ignore[no-untyped-def]
    replicas = [await start_replica(config, **overrides), await start_replica(config, **overrides)]
    clients = [await connect(replicas[0].port, "client0"), await connect(replicas[1].port, "client1")]
    return replicas, clients


async def _run_rounds(replicas: list[CacheRunningServer], clients: list[CacheClient]) -> tuple[int, int]:
    caches = _near_caches(replicas, clients)
    keys = [f"instrument:{i:03d}" for i in range(ROUNDS)]
    await clients[0].set_many([(key, b"v0") for key in keys])
    reached = total = 0
    for round_, key in enumerate(keys):
        await _warm(key, clients, caches)
        writer = clients[round_ % 2]
        kind = round_ % 3
        if kind == 0:  # a write through one replica
            result = await writer.set(key, b"v1")
            new_version = result.version

            def clean(cache: NearCache, key: str = key, version: int = new_version) -> bool:
                entry = cache.peek(key)
                return entry is None or entry.version >= version

        elif kind == 1:  # a delete
            await writer.delete(key)

            def clean(cache: NearCache, key: str = key) -> bool:
                entry = cache.peek(key)
                return entry is None or entry.negative

        else:  # a pattern that covers the key
            await writer.invalidate_pattern(key[:-1] + "?", keep_durable=True)

            def clean(cache: NearCache, key: str = key) -> bool:
                return cache.peek(key) is None  # nobody reads meanwhile, so nobody reloads it

        for name, cache in caches.items():
            total += 1
            if await _until(lambda cache=cache: clean(cache)):
                reached += 1
            else:
                print(f"round {round_}: {name} still holds {cache.peek(key)!r}")
    return reached, total


async def test_every_invalidation_reaches_every_near_cache(
    replica_config: CacheConfig, start_replica: StartReplica, connect: Connect
) -> None:
    replicas, clients = await _two_by_two(replica_config, start_replica, connect)
    reached, total = await _run_rounds(replicas, clients)
    assert total == ROUNDS * 4
    assert reached == total
    for replica in replicas:
        assert replica.cache is not None
        stats = replica.cache.stats()
        assert stats.invalidation_mode == "tracking" and stats.invalidations_received > 0


async def test_pubsub_fallback_also_reaches_every_near_cache(
    replica_config: CacheConfig, start_replica: StartReplica, connect: Connect
) -> None:
    replicas, clients = await _two_by_two(replica_config, start_replica, connect, invalidation_mode="pubsub")
    reached, total = await _run_rounds(replicas, clients)
    assert reached == total
    assert replicas[0].cache is not None and replicas[0].cache.stats().invalidation_mode == "pubsub"
