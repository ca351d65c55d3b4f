"""The degraded bound (issue #13 part 5): during a Redis outage no replica, and no near cache
behind one, serves a value more than ``degraded_near_ttl_ms`` after a change it missed.

Unit level (an injected clock, no timing): what the hub does to L1 and its watchers when the
listener loses Redis, and what the tiered cache answers while it is down. System level: two
replicas sharing one SQL store and a Redis server of our own, which the test stops (or
freezes with SIGSTOP: connections stay open, nothing answers) and brings back; a change
written through replica B during the outage must be seen through replica A, its L1 and its
client's near cache, within the bound, and never the old value after it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import replace

import pytest

from services.cache.client import CacheClient
from services.cache.config import CacheConfig
from services.cache.embedded_redis import EmbeddedRedis
from services.cache.invalidation import RESYNC, InvalidationHub
from services.cache.l1 import NearCache
from services.cache.l2_redis import RedisTier
from services.cache.l3_sql import SqlStore
from services.cache.model import StoredEntry
from services.cache.server import CacheRunningServer
from services.cache.tiered import Level, TieredCache, TieredSettings

StartReplica = Callable[..., Awaitable[CacheRunningServer]]
Connect = Callable[..., Awaitable[CacheClient]]

BOUND_MS = 1_000
# Scheduling noise on a shared CI machine, on top of the bound. The bug this guards against
# served the old value for the whole outage (seconds), far beyond bound + slack.
SLACK_S = 0.5


class FakeClock:
    def __init__(self) -> None:
        self.now_ns = 1_000_000_000

    def __call__(self) -> int:
        return self.now_ns

    def advance_ms(self, ms: int) -> None:
        self.now_ns += ms * 1_000_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def l1(clock: FakeClock) -> NearCache:
    return NearCache(1000, 1 << 20, clock_ns=clock)


@pytest.fixture
def hub(l1: NearCache, clock: FakeClock) -> InvalidationHub:
    hub = InvalidationHub(l1, degraded_ttl_ms=BOUND_MS, clock_ns=clock)
    hub.mark_live()
    return hub


# --- the hub and L1 ---------------------------------------------------------------------------
def test_losing_the_listener_cuts_every_l1_entry_to_the_bound_after_the_last_proof(
    hub: InvalidationHub, l1: NearCache, clock: FakeClock
) -> None:
    l1.put("forever", b"a")  # no TTL: held until invalidated, as while invalidations flow
    l1.put("long", b"b", ttl_ms=60_000)
    l1.put("short", b"c", ttl_ms=200)
    l1.put("gone", b"", negative=True)
    clock.advance_ms(100)
    hub.confirm(clock())  # a PONG proved every change before now has reached us
    clock.advance_ms(300)  # then Redis went away; the listener noticed 300 ms later
    hub.mark_down()
    assert not hub.live and hub.degradations == 1
    # Everything expires BOUND_MS after the last proven moment, not after the drop was noticed.
    clock.advance_ms(BOUND_MS - 300 - 1)
    assert all(key in l1 for key in ("forever", "long", "gone"))
    assert "short" not in l1  # its own, shorter TTL was kept
    clock.advance_ms(1)
    assert not any(key in l1 for key in ("forever", "long", "gone"))


def test_a_drop_noticed_after_the_bound_expires_everything_at_once(
    hub: InvalidationHub, l1: NearCache, clock: FakeClock
) -> None:
    l1.put("k", b"v")
    clock.advance_ms(BOUND_MS + 1)
    hub.mark_down()
    assert "k" not in l1


async def test_losing_the_listener_tells_every_watcher_to_flush_once(hub: InvalidationHub) -> None:
    watchers = [hub.watch("a"), hub.watch("b")]
    hub.mark_down()
    hub.mark_down()  # the reconnect loop calls it after every failed attempt
    hub.live = False
    assert hub.degradations == 1
    for watcher in watchers:
        first = await watcher.next()  # the flush every stream starts with
        flush = await watcher.next()
        assert first.flush_all and (flush.reason, flush.flush_all) == (RESYNC, True)
        assert not watcher._queue  # one flush per outage, not one per reconnect attempt


def test_a_load_begun_before_the_drop_is_not_cached(hub: InvalidationHub, l1: NearCache) -> None:
    token = l1.load_token()
    hub.mark_down()
    assert not l1.put("k", b"read before the drop", token=token)
    assert "k" not in l1
    assert l1.put("k", b"read after", ttl_ms=BOUND_MS, token=l1.load_token())


def test_confirmations_only_move_forward_and_only_while_live(hub: InvalidationHub, clock: FakeClock) -> None:
    clock.advance_ms(500)
    hub.confirm(clock())
    proven = hub.confirmed_ns
    hub.confirm(proven - 1)  # a late PONG of an earlier PING
    assert hub.confirmed_ns == proven
    hub.mark_down()
    hub.confirm(clock() + 10)  # a PONG racing the drop proves nothing about after it
    assert hub.confirmed_ns == proven
    clock.advance_ms(50)
    hub.mark_live()
    assert hub.live and hub.confirmed_ns == clock()


async def test_reconnecting_drops_what_was_read_during_the_outage(
    hub: InvalidationHub, l1: NearCache, clock: FakeClock
) -> None:
    hub.mark_down()
    l1.put("read during the outage", b"v", ttl_ms=BOUND_MS)
    watcher = hub.watch("client")
    hub.resync()  # what the listener does on subscribing again, before mark_live
    hub.mark_live()
    assert len(l1) == 0
    await watcher.next()
    assert (await watcher.next()).flush_all


# --- the tiered cache ---------------------------------------------------------------------------
class GatedSqlStore(SqlStore):
    """A SqlStore whose reads can be held until released (to stage a drop mid-load)."""

    def __init__(self, inner: SqlStore) -> None:
        self.__dict__.update(inner.__dict__)
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def get_many(self, keys: Sequence[str], now_ms: int) -> dict[str, StoredEntry]:
        rows = await super().get_many(keys, now_ms)
        self.reading.set()
        if self.gate is not None:
            await self.gate.wait()
        return rows


@pytest.fixture
async def tiered(sql_store: SqlStore, redis_url: str, key_prefix: str) -> AsyncIterator[TieredCache]:
    tier = RedisTier(redis_url, key_prefix=key_prefix)
    await tier.start()
    l1 = NearCache(1000, 1 << 20)
    hub = InvalidationHub(l1)
    hub.mark_live()
    yield TieredCache(
        l1=l1,
        l2=tier,
        l3=GatedSqlStore(sql_store),
        hub=hub,
        replica_id="test",
        settings=TieredSettings(degraded_near_ttl_ms=BOUND_MS),
    )
    await tier.close()


async def test_the_cache_hands_its_bound_to_the_hub(tiered: TieredCache) -> None:
    assert tiered.hub.degraded_ttl_ms == BOUND_MS


async def test_a_load_overtaken_by_the_drop_carries_the_bound_and_stays_out_of_l1(
    tiered: TieredCache,
) -> None:
    sql = tiered.l3
    assert isinstance(sql, GatedSqlStore) and tiered.l1 is not None
    await sql.put_many([("instrument:X", StoredEntry(b"old", 5))])
    sql.gate = asyncio.Event()
    load = asyncio.get_running_loop().create_task(tiered.get("instrument:X"))
    await sql.reading.wait()  # the load began while invalidations flowed (near TTL 0) ...
    tiered.hub.mark_down()  # ... and they stopped before it answered
    sql.gate.set()
    answer = await load
    assert answer.found and answer.level == Level.L3
    assert answer.near_cache_ttl_ms == BOUND_MS  # not 0: "keep until invalidated" would be forever
    assert "instrument:X" not in tiered.l1


async def test_l1_hits_while_degraded_never_outlive_the_entry(tiered: TieredCache) -> None:
    assert tiered.l1 is not None
    await tiered.set("instrument:Y", b"v")
    held = await tiered.get("instrument:Y")
    assert held.level == Level.L1 and held.near_cache_ttl_ms == 0  # keep until invalidated
    tiered.hub.mark_down()
    await asyncio.sleep(0.3)
    answer = await tiered.get("instrument:Y")
    assert answer.level == Level.L1
    # The entry leaves L1 at most BOUND_MS after the drop: a near cache may not keep it longer.
    assert 0 < answer.near_cache_ttl_ms <= BOUND_MS - 250
    assert 0 < answer.ttl_ms <= BOUND_MS - 250
    # A write during the outage is held no longer than the bound either.
    await tiered.set("instrument:Z", b"w")
    entry = tiered.l1.peek("instrument:Z")
    assert entry is not None and 0 < tiered.l1.ttl_left_ms(entry) <= BOUND_MS


# --- two replicas, a Redis that goes away ----------------------------------------------------------
@pytest.fixture
def outage_config(
    sql_url: str, sql_store: SqlStore, own_redis: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> CacheConfig:
    """Replicas on the test's own Redis (which it stops) and one shared SQL table."""
    return CacheConfig(
        host="127.0.0.1",
        port=0,
        redis_url=own_redis.url,
        database_url=sql_url,
        sql_table=sql_store.table.name,
        key_prefix="hftgate-outage:",
        state_dir=str(tmp_path_factory.mktemp("state")),
        degraded_near_ttl_ms=BOUND_MS,
        redis_timeout_ms=100,
        redis_backoff_initial_ms=20,
        redis_backoff_max_ms=200,
        sql_purge_interval_ms=3_600_000,
    )


class Outage:
    """Takes the test's Redis away and brings it back: ``stop`` kills it (connections close),
    ``freeze`` SIGSTOPs it (connections stay open and nothing answers, as in a hang)."""

    def __init__(self, redis: EmbeddedRedis, kind: str, invalidation_mode: str = "auto") -> None:
        self.redis = redis
        self.kind = kind
        self.invalidation_mode = invalidation_mode
        self.frozen_pid = 0

    def begin(self) -> None:
        if self.kind == "stop":
            self.redis.stop()
        else:
            process = self.redis._process
            assert process is not None
            self.frozen_pid = process.pid
            os.kill(self.frozen_pid, signal.SIGSTOP)

    def end(self) -> None:
        if self.kind == "stop":
            self.redis.start()  # same port, empty: as after a crash
        elif self.frozen_pid:
            os.kill(self.frozen_pid, signal.SIGCONT)
            self.frozen_pid = 0


@pytest.fixture(params=["stop", "freeze", "freeze-pubsub"])
def outage(request: pytest.FixtureRequest, own_redis: EmbeddedRedis) -> Iterator[Outage]:
    """How Redis goes away, and (after a dash) the invalidation mode the replicas use."""
    kind, _, mode = str(request.param).partition("-")
    outage = Outage(own_redis, kind, mode or "auto")
    yield outage
    outage.end()  # a frozen server must run again before the fixture can stop it


async def _until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def _read_both(
    key: str, client: CacheClient, cache: TieredCache
) -> dict[str, tuple[float, bytes | None]]:
    """``key`` through A's client (near cache first) and A's tiered cache (L1 first), each with
    the moment its read began (a value is served at the latest when its read begins)."""
    began_client = time.monotonic()
    from_client = await client.get(key)
    began_replica = time.monotonic()
    from_replica = (await cache.get(key)).value
    return {"client": (began_client, from_client), "replica": (began_replica, from_replica)}


async def _watch_for(
    key: str, new: bytes, old: bytes, client: CacheClient, cache: TieredCache, changed: float
) -> dict[str, float]:
    """Read ``key`` through A until both its client and its tiered cache give ``new``; returns
    when each first did (and last gave ``old``), in seconds after ``changed``. Fails on any
    other value, and on ``old`` from a read that began later than the bound (plus scheduling
    slack) after the change."""
    seen: dict[str, float] = {}
    deadline = changed + BOUND_MS / 1000 + SLACK_S
    while not ("client" in seen and "replica" in seen):
        for where, (began, value) in (await _read_both(key, client, cache)).items():
            assert value in (new, old), f"{where} answered {value!r}"
            if value == new:
                seen.setdefault(where, round(began - changed, 3))
            else:
                seen[f"{where} last old"] = round(began - changed, 3)
                assert where not in seen, f"{where} went back to the old value"
                assert began <= deadline, (
                    f"{where} still served {old!r} {began - changed:.3f} s after the change"
                )
        await asyncio.sleep(0.01)
    return seen


async def test_change_through_another_replica_during_a_redis_outage_is_seen_within_the_bound(
    outage_config: CacheConfig, outage: Outage, start_replica: StartReplica, connect: Connect
) -> None:
    config = replace(outage_config, invalidation_mode=outage.invalidation_mode)
    a = await start_replica(config)
    b = await start_replica(replace(config, replica_id="b"))
    assert a.cache is not None and b.cache is not None and a.cache.l1 is not None
    assert a.cache.stats().invalidation_mode == (
        "tracking" if outage.invalidation_mode == "auto" else "pubsub"
    )
    client_a = await connect(a.port, "execution-a")
    client_b = await connect(b.port, "admin-b")
    key = "instrument:BTCUSDT"

    await client_b.set(key, b"trading=on")
    for _ in range(100):  # A's L1 and A's client hold it, with no expiry: invalidations flow
        await client_a.get(key)
        held = [client_a.near_cache.peek(key), a.cache.l1.peek(key)]
        if all(entry is not None and entry.value == b"trading=on" for entry in held):
            break
        await asyncio.sleep(0.01)
    # Held "until invalidated" (capped only by the 300 s insurance TTL), far past the bound.
    caches = (client_a.near_cache, a.cache.l1)
    assert all(
        e is not None and c.ttl_left_ms(e) > 100 * BOUND_MS for c, e in zip(caches, held, strict=True)
    ), held
    # The listener's keep-alive PONGs keep proving that invalidations flow.
    proven = a.cache.hub.confirmed_ns
    assert await _until(lambda: a.cache is not None and a.cache.hub.confirmed_ns > proven, 2)

    # Redis goes away; the kill switch is flipped through B (to SQL: Redis cannot tell A).
    outage.begin()
    began = time.monotonic()
    assert (await client_b.set(key, b"trading=off")).applied
    seen = await _watch_for(key, b"trading=off", b"trading=on", client_a, a.cache, began)
    print(f"{outage.kind}/{outage.invalidation_mode}: first change seen after {seen}")
    assert not a.cache.hub.live and a.cache.hub.degradations == 1

    # What A read during the outage is held no longer than the bound either.
    entry = client_a.near_cache.peek(key)
    assert entry is not None and 0 < client_a.near_cache.ttl_left_ms(entry) <= BOUND_MS
    began = time.monotonic()
    assert (await client_b.set(key, b"trading=on;limit=5")).applied
    seen = await _watch_for(key, b"trading=on;limit=5", b"trading=off", client_a, a.cache, began)
    print(f"{outage.kind}/{outage.invalidation_mode}: second change seen after {seen}")

    # Nobody serves the old value however long the outage lasts.
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        assert await client_a.get(key) == b"trading=on;limit=5"
        assert (await a.cache.get(key)).value == b"trading=on;limit=5"
        await asyncio.sleep(0.05)

    # Redis comes back: both replicas resync (drop what they read meanwhile) and go live.
    outage.end()
    assert await _until(lambda: all(r.cache is not None and r.cache.hub.live for r in (a, b)))
    assert len(a.cache.l1) == 0
    assert await _until(lambda: len(client_a.near_cache) == 0, 2)
    assert await _until(lambda: a.cache is not None and a.cache.stats().redis_available)
    assert await _until(lambda: b.cache is not None and b.cache.stats().redis_available)
    assert await client_b.wait_live(5) and await client_a.wait_live(5)

    # Invalidations flow again: A's client caches without expiry and sees B's next change at once.
    assert await client_a.get(key) == b"trading=on;limit=5"
    for _ in range(100):
        entry = client_a.near_cache.peek(key)
        if entry is not None and client_a.near_cache.ttl_left_ms(entry) > 100 * BOUND_MS:
            break
        await client_a.get(key)
        await asyncio.sleep(0.02)
    assert entry is not None and client_a.near_cache.ttl_left_ms(entry) > 100 * BOUND_MS
    began = time.monotonic()
    assert (await client_b.set(key, b"trading=off")).applied
    assert await _until(lambda: client_a.near_cache.peek(key) is None, BOUND_MS / 1000)
    assert await client_a.get(key) == b"trading=off"


async def test_a_clients_own_write_during_an_outage_does_not_hide_a_later_change(
    outage_config: CacheConfig, own_redis: EmbeddedRedis, start_replica: StartReplica, connect: Connect
) -> None:
    a = await start_replica(outage_config)
    b = await start_replica(replace(outage_config, replica_id="b"))
    assert a.cache is not None
    client_a = await connect(a.port, "execution-a")
    client_b = await connect(b.port, "admin-b")
    key = "account:alice"
    # The client keeps its own write (with no near-cache TTL: a Set answer carries none); what
    # keeps it honest is the service's own invalidation of the key, which reaches the client
    # right after (or refuses the keep, if it comes first).
    own_redis.stop()
    assert await _until(lambda: a.cache is not None and not a.cache.hub.live, 5)
    assert (await client_a.set(key, b"limit=10")).applied
    changed = time.monotonic()
    assert (await client_b.set(key, b"limit=0")).applied
    while (value := await client_a.get(key)) != b"limit=0":
        assert value == b"limit=10"
        assert time.monotonic() <= changed + BOUND_MS / 1000 + SLACK_S, (
            "the client's own write hid B's change"
        )
        await asyncio.sleep(0.02)
