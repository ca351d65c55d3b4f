"""Healing Redis after an outage (issue #13 part 5, the last gap): a change written to SQL only,
while a replica could not reach Redis, must not be served from Redis by any replica once Redis
is reachable again.

Unit level: SQL's "changed since" query and the purge that keeps it complete, the tiered
cache's heal (targeted, capped, beyond the purge horizon), the tier and the hub keeping Redis
out of use until the heal is done. System level: two replicas sharing one SQL store (SQLite and
PostgreSQL) and a Redis server of our own that the test freezes (SIGSTOP: it keeps its data, so
the old values are still there when it comes back), or a proxy that cuts one replica off from
Redis while the other keeps it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace

import pytest
import redis.asyncio as aioredis
from sqlalchemy import inspect, text

from services.cache.client import CacheClient
from services.cache.config import CacheConfig
from services.cache.embedded_redis import EmbeddedRedis
from services.cache.invalidation import KEYS, RESYNC, InvalidationHub
from services.cache.l1 import NearCache
from services.cache.l2_redis import L2Unavailable, RedisTier, decode
from services.cache.l3_sql import SqlStore
from services.cache.model import StoredEntry, StoreUnavailable, wall_ms
from services.cache.server import CacheRunningServer
from services.cache.tiered import Level, TieredCache, TieredSettings

StartReplica = Callable[..., Awaitable[CacheRunningServer]]
Connect = Callable[..., Awaitable[CacheClient]]

BOUND_MS = 1_000
# Scheduling noise on a shared CI machine.
SLACK_S = 1.0
CHANNEL_SUFFIX = "invalidations"


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


# --- SQL: what changed since a version ----------------------------------------------------------
async def test_changed_since_lists_live_deleted_and_expired_rows_from_the_version_on(
    sql_store: SqlStore,
) -> None:
    await sql_store.put_many(
        [
            ("before", StoredEntry(b"old", 9)),
            ("live", StoredEntry(b"v", 10)),
            ("deleted", StoredEntry(None, 11)),
            ("expired", StoredEntry(b"gone", 12, expires_at_ms=1)),
        ]
    )
    assert sorted(await sql_store.changed_since(10, limit=3) or []) == ["deleted", "expired", "live"]
    assert await sql_store.changed_since(13, limit=3) == []
    # More than the limit: the caller must fall back to something broader.
    assert await sql_store.changed_since(9, limit=3) is None
    assert await sql_store.changed_since(10, limit=2) is None
    with pytest.raises(ValueError, match="limit must not be negative"):
        await sql_store.changed_since(0, limit=-1)


async def test_purge_keeps_expired_rows_and_tombstones_newer_than_its_cutoff(sql_store: SqlStore) -> None:
    now_ms = 1_000_000
    await sql_store.put_many(
        [
            ("expired-old", StoredEntry(b"a", 5, expires_at_ms=now_ms - 1)),
            ("expired-new", StoredEntry(b"b", 50, expires_at_ms=now_ms - 1)),
            ("deleted-new", StoredEntry(None, 60)),
        ]
    )
    assert await sql_store.purge(now_ms, tombstones_before_version=10) == 1
    # What a heal from the cutoff on must see is still there (reads skip it as before).
    assert sorted(await sql_store.changed_since(10, limit=10) or []) == ["deleted-new", "expired-new"]
    assert await sql_store.get_many(["expired-new"], now_ms) == {}
    assert await sql_store.purge(now_ms, tombstones_before_version=61) == 2


async def test_a_table_made_before_the_version_index_gets_it_on_start(sql_url: str, sql_table: str) -> None:
    legacy = SqlStore(sql_url, table_name=sql_table)
    await legacy.start()
    try:
        async with legacy.engine.begin() as conn:
            await conn.execute(text(f"DROP INDEX {sql_table}_version_idx"))
        upgraded = SqlStore(sql_url, table_name=sql_table)
        await upgraded.start()  # twice on one table (two replicas) is fine too
        await upgraded.start()
        try:
            async with upgraded.engine.connect() as conn:
                indexes = await conn.run_sync(lambda sync: inspect(sync).get_indexes(sql_table))
            assert [(index["name"], index["column_names"]) for index in indexes] == [
                (f"{sql_table}_version_idx", ["version"])
            ]
        finally:
            await upgraded.close()
    finally:
        await legacy.drop_table()
        await legacy.close()


# --- the tiered cache's heal ----------------------------------------------------------------------
@pytest.fixture
async def tier(redis_url: str, key_prefix: str) -> AsyncIterator[RedisTier]:
    tier = RedisTier(redis_url, key_prefix=key_prefix)
    await tier.start()
    yield tier
    await tier.close()


def _tiered(sql_store: SqlStore, tier: RedisTier, **settings: int) -> TieredCache:
    hub = InvalidationHub(NearCache(1000, 1 << 20))
    hub.mark_live()
    return TieredCache(
        l1=hub._l1,
        l2=tier,
        l3=sql_store,
        hub=hub,
        replica_id="healer",
        invalidation_channel=tier.meta_prefix + CHANNEL_SUFFIX,
        settings=TieredSettings(degraded_near_ttl_ms=BOUND_MS, **settings),
    )


async def _raw(tier: RedisTier, key: str) -> StoredEntry | None:
    blob = await tier.client.get(tier.prefix + key)
    return decode(blob) if blob else None


class ChannelReader:
    """A plain subscriber of the invalidation channel (what another replica's listener hears)."""

    def __init__(self, url: str, channel: str) -> None:
        self.client = aioredis.Redis.from_url(url)
        self.pubsub = self.client.pubsub()
        self.channel = channel

    async def __aenter__(self) -> ChannelReader:
        await self.pubsub.subscribe(self.channel)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.pubsub.aclose()
        await self.client.aclose()

    async def messages(self, timeout_s: float = 0.5) -> list[dict[str, object]]:
        found = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is not None:
                found.append(json.loads(message["data"]))
        return found


async def test_heal_deletes_what_sql_changed_since_and_tells_everyone_who_may_hold_it(
    sql_store: SqlStore, tier: RedisTier, redis_url: str
) -> None:
    cache = _tiered(sql_store, tier)
    assert cache.l1 is not None
    since = wall_ms() * 1000
    # Redis and L1 hold what was there before the outage...
    for key in ("changed", "deleted", "untouched"):
        await tier.put_many([(key, StoredEntry(b"before", since - 5_000_000))])
        cache.l1.put(key, b"before")
    await sql_store.put_many([("untouched", StoredEntry(b"before", since - 5_000_000))])
    # ... then, Redis being out of reach, changes went to SQL only: one from a replica whose
    # clock lags ours by half a second (within the skew allowance).
    await sql_store.put_many([("changed", StoredEntry(b"after", since - 500_000))])
    await sql_store.put_many([("deleted", StoredEntry(None, since + 10))])
    watcher = cache.hub.watch("near cache")
    epoch = await tier.client.get(tier.epoch_key)
    async with ChannelReader(redis_url, tier.meta_prefix + CHANNEL_SUFFIX) as channel:
        outcome = await cache.heal_redis(since)
        heard = await channel.messages()

    assert outcome.keys is not None and sorted(outcome.keys) == ["changed", "deleted"]
    assert outcome.removed == 2 and outcome.broad_reason == ""
    assert await _raw(tier, "changed") is None and await _raw(tier, "deleted") is None
    assert (await _raw(tier, "untouched")) == StoredEntry(b"before", since - 5_000_000)
    assert await tier.client.get(tier.epoch_key) != epoch  # loads that missed before cannot promote
    assert set(cache.l1.keys()) == {"untouched"}
    await watcher.next()  # the flush every stream starts with
    told = await watcher.next()
    assert told.reason == KEYS and sorted(told.keys) == ["changed", "deleted"]
    assert [(m["origin"], sorted(m["keys"])) for m in heard] == [("healer", ["changed", "deleted"])]  # type: ignore[arg-type]
    assert cache.stats().redis_heals == 1 and cache.stats().redis_heals_broad == 0
    # Read again, SQL's values come back (and fill Redis).
    assert (await cache.get("changed")).value == b"after"
    assert not (await cache.get("deleted")).found


async def test_heal_with_more_changes_than_the_cap_deletes_everything_under_the_prefix(
    sql_store: SqlStore, tier: RedisTier, redis_url: str
) -> None:
    cache = _tiered(sql_store, tier, heal_max_keys=2)
    assert cache.l1 is not None
    since = wall_ms() * 1000
    await tier.put_many([(key, StoredEntry(b"before", 1)) for key in ("a", "b", "c", "untouched")])
    cache.l1.put("untouched", b"before")
    await sql_store.put_many([(key, StoredEntry(b"after", since + 1)) for key in ("a", "b", "c")])
    watcher = cache.hub.watch("near cache")
    async with ChannelReader(redis_url, tier.meta_prefix + CHANNEL_SUFFIX) as channel:
        outcome = await cache.heal_redis(since)
        heard = await channel.messages()
    assert outcome.keys is None and "heal_max_keys (2)" in outcome.broad_reason
    assert outcome.removed == 4
    assert [key async for key in tier.client.scan_iter(match=tier.prefix + "*")] == []
    assert len(cache.l1) == 0
    await watcher.next()
    assert (await watcher.next()).reason == RESYNC
    assert heard == [{"origin": "healer", "pattern": "*"}]
    assert cache.stats().redis_heals_broad == 1


async def test_an_outage_older_than_the_purge_horizon_is_healed_broadly_without_asking_sql(
    sql_store: SqlStore, tier: RedisTier
) -> None:
    cache = _tiered(sql_store, tier, tombstone_ttl_ms=60_000)
    await tier.put_many([("k", StoredEntry(b"before", 1))])

    async def refuse(version: int, limit: int) -> list[str] | None:
        raise AssertionError("a purge may have removed what changed: SQL cannot list it")

    sql_store.changed_since = refuse  # type: ignore[method-assign]
    outcome = await cache.heal_redis((wall_ms() - 61_000) * 1000)
    assert outcome.keys is None and "purge horizon" in outcome.broad_reason
    assert await _raw(tier, "k") is None


async def test_heal_fails_without_forgetting_when_sql_cannot_say_what_changed(
    sql_store: SqlStore, tier: RedisTier
) -> None:
    cache = _tiered(sql_store, tier)
    await tier.put_many([("k", StoredEntry(b"before", 1))])
    await sql_store.close()
    with pytest.raises(StoreUnavailable):
        await cache.heal_redis(wall_ms() * 1000)
    assert await _raw(tier, "k") == StoredEntry(b"before", 1)  # nothing claimed healed
    await sql_store.start()


async def test_while_invalidations_are_down_reads_go_to_sql_not_redis(
    sql_store: SqlStore, tier: RedisTier
) -> None:
    cache = _tiered(sql_store, tier)
    await sql_store.put_many([("k", StoredEntry(b"sql", 20))])
    await tier.put_many([("k", StoredEntry(b"stale in redis", 10))])  # as after a SQL-only write
    cache.hub.mark_down()
    answer = await cache.get("k")
    assert (answer.value, answer.level, answer.near_cache_ttl_ms) == (b"sql", Level.L3, BOUND_MS)
    assert await _raw(tier, "k") == StoredEntry(b"stale in redis", 10)  # no promotion either


# --- the tier and the hub do not serve before the heal ------------------------------------------------
async def test_the_tier_serves_again_only_after_its_heal_and_retries_a_failed_one(
    own_redis: EmbeddedRedis,
) -> None:
    tier = RedisTier(
        own_redis.url, key_prefix="heal:", timeout_ms=200, backoff_initial_ms=20, backoff_max_ms=50
    )
    calls: list[int] = []
    gate = asyncio.Event()
    outcomes: list[BaseException | None] = [StoreUnavailable("SQL read failed: gone"), None]

    async def healer(since: int) -> None:
        calls.append(since)
        await gate.wait()
        failure = outcomes.pop(0) if outcomes else None
        if failure is not None:
            raise failure

    tier.heal_with(healer)
    await tier.start()
    try:
        await tier.get_many(["k"])
        last_ok_us = wall_ms() * 1000
        own_redis.stop()
        with pytest.raises(L2Unavailable):
            await tier.get_many(["k"])
        # A write skipped while down, with a version older than the last good call, moves
        # the heal's start back to it.
        with pytest.raises(L2Unavailable):
            await tier.put_many([("k", StoredEntry(b"v", 7))])
        assert tier.heal_pending_since == 7
        own_redis.start()
        assert await _until(lambda: len(calls) == 1, 5)
        assert calls == [7] and not tier.available  # Redis answers, but is not healed yet
        # Meanwhile writes go to Redis again (a steady stream of them cannot starve the heal);
        # reads wait for the heal.
        assert await tier.put_many([("during", StoredEntry(b"w", 8))]) == [8]
        with pytest.raises(L2Unavailable):
            await tier.get_many(["during"])
        gate.set()
        # The first heal failed (SQL away): still down, tried again, nothing forgotten.
        assert await _until(lambda: tier.available, 5)
        assert calls == [7, 7] and tier.heals == 1 and tier.heal_pending_since is None
        assert await tier.get_many(["k"]) == ([None], b"1")  # the skipped key too; the epoch moved

        # An outage with no skipped write heals from the last call that succeeded.
        own_redis.stop()
        with pytest.raises(L2Unavailable):
            await tier.get_many(["k"])
        pending = tier.heal_pending_since
        assert pending is not None and last_ok_us - 1_000_000 <= pending <= wall_ms() * 1000
        own_redis.start()
        assert await _until(lambda: tier.available, 5)
        assert calls[-1] == pending
    finally:
        await tier.close()


async def test_the_hub_heals_from_its_last_proven_moment_before_it_goes_live() -> None:
    now = {"ns": 10_000_000_000, "wall": 1_700_000_000_000}
    hub = InvalidationHub(None, clock_ns=lambda: now["ns"], wall_ms=lambda: now["wall"])
    asked: list[int] = []

    async def heal(since: int) -> None:
        asked.append(since)

    hub.heal = heal
    assert not await hub.heal_before_live()  # never live: nothing held, nothing to heal
    hub.mark_live()
    assert not await hub.heal_before_live()  # live: nothing missed
    now["ns"] += 300_000_000
    now["wall"] += 300
    hub.confirm(now["ns"] - 100_000_000)  # a PONG for a PING sent 100 ms ago
    now["ns"] += 2_000_000_000
    now["wall"] += 2_000
    hub.mark_down()
    hub.confirm(now["ns"])  # proves nothing once down
    assert await hub.heal_before_live()
    assert asked == [(1_700_000_000_000 + 200) * 1000]


# --- two replicas, one SQL store, a Redis that goes away and comes back ------------------------------
@pytest.fixture
def heal_config(
    sql_url: str, sql_store: SqlStore, own_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> CacheConfig:
    return CacheConfig(
        host="127.0.0.1",
        port=0,
        redis_url=own_redis.url,
        database_url=sql_url,
        sql_table=sql_store.table.name,
        admin_audit_table=f"{sql_store.table.name}_audit",
        key_prefix="hftgate-heal:",
        state_dir=str(tmp_path_factory.mktemp("state")),
        degraded_near_ttl_ms=BOUND_MS,
        redis_timeout_ms=100,
        redis_backoff_initial_ms=20,
        redis_backoff_max_ms=200,
        sql_purge_interval_ms=3_600_000,
    )


@pytest.fixture
def frozen(own_redis: EmbeddedRedis) -> Iterator[Callable[[bool], None]]:
    """``frozen(True)`` SIGSTOPs the test's Redis (it keeps its data and its connections, and
    answers nothing), ``frozen(False)`` lets it go on."""
    process = own_redis._process
    assert process is not None
    state = {"stopped": False}

    def freeze(stop: bool) -> None:
        os.kill(process.pid, signal.SIGSTOP if stop else signal.SIGCONT)
        state["stopped"] = stop

    yield freeze
    if state["stopped"]:
        os.kill(process.pid, signal.SIGCONT)


async def _raw_value(redis: aioredis.Redis, prefix: str, key: str) -> bytes | None:
    blob = await redis.get(prefix + key)
    return decode(blob).value if blob else None


async def test_after_a_redis_hang_no_replica_reads_what_another_changed_in_sql_meanwhile(
    heal_config: CacheConfig,
    own_redis: EmbeddedRedis,
    frozen: Callable[[bool], None],
    start_replica: StartReplica,
    connect: Connect,
) -> None:
    a = await start_replica(heal_config)
    # B tries Redis again only 6 s after its first failure: the heal must not wait for it.
    b = await start_replica(
        replace(heal_config, replica_id="b", redis_backoff_initial_ms=6_000, redis_backoff_max_ms=6_000)
    )
    assert a.cache is not None and b.cache is not None
    # One machine, one clock: a small skew allowance, so that what was written before the
    # hang (and is checked to stay in Redis) is older than the heal's start.
    a.cache.settings = replace(a.cache.settings, heal_clock_skew_ms=100)
    client_a = await connect(a.port, "execution-a")
    client_b = await connect(b.port, "admin-b")
    raw = aioredis.Redis.from_url(own_redis.url)
    prefix = heal_config.key_prefix
    try:
        assert (await client_b.set("instrument:ETHUSDT", b"before")).applied
        assert await client_a.get("instrument:ETHUSDT") == b"before"
        await asyncio.sleep(0.2)
        for key in ("instrument:BTCUSDT", "account:alice"):
            assert (await client_b.set(key, b"before")).applied
            assert await client_a.get(key) == b"before"
        assert await _raw_value(raw, prefix, "instrument:BTCUSDT") == b"before"

        frozen(True)
        # B's first write finds Redis gone (it times out; Redis may still run it when thawed) ...
        assert (await client_b.set("session:b", b"1")).applied
        assert not b.cache.stats().redis_available
        # ... the next ones go to SQL only: Redis (frozen, still holding "before") is not told.
        assert (await client_b.set("instrument:BTCUSDT", b"halted")).applied
        assert await client_b.delete("account:alice") > 0
        assert not b.cache.stats().redis_available
        # A does nothing meanwhile (its Redis tier never notices); its listener does.
        assert await _until(lambda: a.cache is not None and not a.cache.hub.live, 5)
        await asyncio.sleep(BOUND_MS / 1000 + 0.2)  # what A held has expired by the bound
        frozen(False)
        thawed = time.monotonic()

        # From the moment Redis answers again, A never serves the old values, from any level.
        a_live_at = None
        while time.monotonic() < thawed + 2.0:
            if a_live_at is None and a.cache.hub.live:
                a_live_at = time.monotonic()
                # A healed Redis on B's behalf, before reading it again, while B is still cut off.
                assert not b.cache.stats().redis_available and not b.cache.hub.live
                assert await _raw_value(raw, prefix, "instrument:BTCUSDT") != b"before"
                assert await _raw_value(raw, prefix, "account:alice") != b"before"
            assert (await a.cache.get("instrument:BTCUSDT")).value == b"halted"
            assert not (await a.cache.get("account:alice")).found
            assert await client_a.get("instrument:BTCUSDT") == b"halted"
            assert await client_a.get("account:alice") is None
            await asyncio.sleep(0.01)
        assert a_live_at is not None, "A did not go live again within 2 s of Redis answering"
        print(f"A live {a_live_at - thawed:.3f} s after Redis answered")
        stats = a.cache.stats()
        assert stats.redis_heals >= 1 and stats.redis_heals_broad == 0
        # The heal was targeted: what did not change is still in Redis.
        assert await _raw_value(raw, prefix, "instrument:ETHUSDT") == b"before"
        # Once A is live, it serves from Redis again (refilled from SQL).
        a.cache.l1.clear()  # type: ignore[union-attr]
        assert (await a.cache.get("instrument:BTCUSDT")).value == b"halted"
        assert (await a.cache.get("instrument:BTCUSDT")).level == Level.L1
        a.cache.l1.clear()  # type: ignore[union-attr]
        answer = await a.cache.get("instrument:BTCUSDT")
        assert (answer.value, answer.level) == (b"halted", Level.L2)
        # B comes back later and agrees.
        assert await _until(lambda: b.cache is not None and b.cache.stats().redis_available, 8)
        assert await client_b.get("instrument:BTCUSDT") == b"halted"
    finally:
        await raw.aclose()


class CuttableProxy:
    """A TCP proxy to Redis for one replica, which the test can cut off: ``reset`` closes every
    connection and refuses new ones; ``blackhole`` keeps them open and drops all bytes (a hung
    network). ``restore`` aborts whatever was held open and forwards again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.mode = ""
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self, mode: str) -> None:
        self.mode = mode
        if mode == "reset":
            self._abort_all()

    def restore(self) -> None:
        self.mode = ""
        self._abort_all()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._abort_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _abort_all(self) -> None:
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "reset":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._transports.update((writer.transport, up_writer.transport))
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                if self.mode == "blackhole":
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()


@pytest.fixture
async def proxy(own_redis: EmbeddedRedis) -> AsyncIterator[CuttableProxy]:
    proxy = CuttableProxy(own_redis.port)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.mark.parametrize(("cut", "mode"), [("reset", "auto"), ("blackhole", "pubsub")])
async def test_a_partitioned_replicas_sql_only_writes_are_healed_when_it_reaches_redis_again(
    heal_config: CacheConfig,
    own_redis: EmbeddedRedis,
    proxy: CuttableProxy,
    start_replica: StartReplica,
    connect: Connect,
    cut: str,
    mode: str,
) -> None:
    config = replace(heal_config, invalidation_mode=mode)
    a = await start_replica(config)
    b = await start_replica(replace(config, replica_id="b", redis_url=proxy.url()))
    assert a.cache is not None and b.cache is not None and a.cache.l1 is not None
    client_a = await connect(a.port, "execution-a")
    client_b = await connect(b.port, "admin-b")
    raw = aioredis.Redis.from_url(own_redis.url)
    prefix = heal_config.key_prefix
    key = "instrument:BTCUSDT"
    try:
        assert (await client_b.set(key, b"trading=on")).applied
        assert await _until(lambda: b.cache is not None and b.cache.hub.live, 5)
        # A and its client hold it until invalidated: Redis stays up for A throughout.
        for _ in range(100):
            assert await client_a.get(key) == b"trading=on"
            if client_a.near_cache.peek(key) is not None and a.cache.l1.peek(key) is not None:
                break
            await asyncio.sleep(0.01)

        proxy.cut(cut)
        assert (await client_b.set(key, b"trading=off")).applied  # to SQL only
        assert not b.cache.stats().redis_available
        assert await _until(lambda: b.cache is not None and not b.cache.hub.live, 5)
        # The remaining bound: A's Redis never went away, so until B reaches Redis again, A may
        # still serve the old value (what this test does not assert either way).
        await asyncio.sleep(0.3)
        assert a.cache.hub.live and a.cache.stats().redis_available
        assert await _raw_value(raw, prefix, key) == b"trading=on"

        proxy.restore()
        restored = time.monotonic()
        # B heals before it serves from Redis again: the moment it says Redis is available,
        # Redis no longer holds the old value.
        assert await _until(lambda: b.cache is not None and b.cache.stats().redis_available, 5)
        assert await _raw_value(raw, prefix, key) != b"trading=on"
        assert b.cache.stats().redis_heals >= 1
        # Within B's reconnect bound (redis_backoff_max_ms) plus slack, A, its L1 and its
        # client's near cache have all dropped the old value, and never go back to it.
        deadline = restored + config.redis_backoff_max_ms / 1000 + SLACK_S
        seen_new = None
        while time.monotonic() < deadline + 0.5:
            began = time.monotonic()
            values = {await client_a.get(key), (await a.cache.get(key)).value}
            if values == {b"trading=off"}:
                seen_new = seen_new or began - restored
            else:
                assert seen_new is None, f"A went back to {values} after serving the new value"
                assert began <= deadline, f"A still served {values} {began - restored:.3f} s after the heal"
            await asyncio.sleep(0.02)
        assert seen_new is not None
        print(f"{cut}/{mode}: A served the new value {seen_new:.3f} s after B could reach Redis")
        assert await client_b.get(key) == b"trading=off"
    finally:
        await raw.aclose()
