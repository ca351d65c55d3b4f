"""The shard map (hftgate/shardmap.py): rendezvous ownership, pins, what moves, and the durable
store's epoch compare-and-set on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import string
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hftgate.shardmap import (
    MAX_SHARD_ID,
    EpochConflict,
    Shard,
    ShardMap,
    ShardMapError,
    ShardMapStore,
    ShardMapUnavailable,
    default_url,
    make_order_id,
    order_id_shard,
    parse_shards,
)

POSTGRES_URL = os.environ.get(
    "HFTGATE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def symbols(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    made: set[str] = set()
    while len(made) < count:
        made.add("".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 8))) + "USDT")
    return sorted(made)


def shards(count: int) -> list[Shard]:
    return [Shard(i, f"10.0.0.{i}:50051") for i in range(count)]


def reference_owner(shard_ids: list[int], symbol: str) -> int:
    """The documented rule, written out independently of the module."""
    weights = {
        sid: int.from_bytes(
            hashlib.blake2b(sid.to_bytes(4, "big") + symbol.encode(), digest_size=8).digest(), "big"
        )
        for sid in shard_ids
    }
    return max(sorted(weights), key=lambda sid: weights[sid])


# --- ownership ------------------------------------------------------------------------------------
def test_default_map_has_one_shard_that_owns_everything() -> None:
    m = ShardMap.single()
    assert m.epoch == 1
    assert m.shards == (Shard(0, "127.0.0.1:50051"),)
    assert {m.owner(s).shard_id for s in symbols(500)} == {0}


def test_owner_follows_the_documented_rendezvous_rule() -> None:
    m = ShardMap(3, shards(5))
    for symbol in symbols(2_000):
        assert m.owner(symbol).shard_id == reference_owner([0, 1, 2, 3, 4], symbol), symbol


def test_owner_is_stable_across_processes_and_epochs() -> None:
    # Nothing process-local (PYTHONHASHSEED, insertion order) enters the weight.
    a = ShardMap(1, shards(4))
    b = ShardMap(9, list(reversed(shards(4))))
    assert [a.owner(s) for s in symbols(1_000)] == [b.owner(s) for s in symbols(1_000)]


def test_symbols_spread_evenly_over_shards() -> None:
    m = ShardMap(1, shards(4))
    counts = Counter(m.owner(s).shard_id for s in symbols(8_000))
    assert set(counts) == {0, 1, 2, 3}
    for count in counts.values():
        assert 0.2 < count / 8_000 < 0.3, counts


def test_pin_overrides_the_hash_and_unpin_restores_it() -> None:
    m = ShardMap(1, shards(3))
    symbol = "BTCUSDT"
    hashed = m.owner(symbol).shard_id
    target = (hashed + 1) % 3
    pinned = m.with_pin(symbol, target)
    assert pinned.epoch == 2
    assert pinned.owner(symbol).shard_id == target
    others = [s for s in symbols(300) if s != symbol]
    assert pinned.moves_to(m, others) == {}, "a pin moves only its own symbol"
    assert pinned.without_pin(symbol).owner(symbol).shard_id == hashed


def test_adding_a_shard_moves_about_one_in_n_plus_one_and_only_to_the_new_shard() -> None:
    names = symbols(10_000)
    m = ShardMap(1, shards(4))
    moved = m.moves_if_added(Shard(4, "10.0.0.4:50051"), names)
    assert 0.16 < len(moved) / len(names) < 0.24, len(moved)  # ~1/5
    assert {new for _, new in moved.values()} == {4}
    grown = m.with_shard(Shard(4, "10.0.0.4:50051"))
    assert grown.epoch == 2
    for symbol in names:
        if symbol not in moved:
            assert grown.owner(symbol) == m.owner(symbol)


def test_adding_to_the_single_default_moves_about_half() -> None:
    names = symbols(4_000)
    moved = ShardMap.single().moves_if_added(Shard(1, "127.0.0.1:50061"), names)
    assert 0.45 < len(moved) / len(names) < 0.55
    assert set(moved.values()) == {(0, 1)}


def test_removing_a_shard_moves_only_its_own_symbols() -> None:
    names = symbols(5_000)
    m = ShardMap(1, shards(5))
    less = m.without_shard(2)
    moved = m.moves_to(less, names)
    assert moved, "shard 2 owned something"
    assert {old for old, _ in moved.values()} == {2}
    assert all(m.owner(s).shard_id == 2 for s in moved)


def test_without_shard_refuses_a_shard_with_pins_and_the_last_shard() -> None:
    m = ShardMap(1, shards(2)).with_pin("ESZ4", 1)
    with pytest.raises(ShardMapError, match="shard 1 still has pinned symbols: ESZ4"):
        m.without_shard(1)
    with pytest.raises(ShardMapError, match="at least one shard"):
        ShardMap.single().without_shard(0)
    with pytest.raises(ShardMapError, match="shard 7 is not in the map"):
        m.without_shard(7)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ShardMap(0, shards(1)), "epoch must be a positive integer"),
        (lambda: ShardMap(1, []), "at least one shard"),
        (lambda: ShardMap(1, [Shard(1, "a:1"), Shard(1, "b:1")]), "shard id 1 appears twice"),
        (lambda: ShardMap(1, [Shard(0, "a:1"), Shard(1, "a:1")]), "address a:1 belongs to another shard"),
        (lambda: ShardMap(1, [Shard(MAX_SHARD_ID + 1, "a:1")]), "outside 0..32767"),
        (lambda: ShardMap(1, [Shard(-1, "a:1")]), "outside 0..32767"),
        (lambda: ShardMap(1, [Shard(0, "")]), "address must be"),
        (lambda: ShardMap(1, [Shard(0, "a b:1")]), "address must be"),
        (lambda: ShardMap(1, shards(2), {"BTCUSDT": 5}), "pinned to shard 5, which is not in the map"),
        (lambda: ShardMap(1, shards(2), {"BTC USDT": 0}), "printable ASCII"),
        (lambda: ShardMap(1, shards(2), {"X" * 65: 0}), "1..64 printable"),
        (lambda: ShardMap(1, [Shard(i, f"h:{i}") for i in range(257)]), "257 shards exceed the limit of 256"),
    ],
)
def test_bad_maps_are_refused_with_a_precise_message(build: object, message: str) -> None:
    with pytest.raises(ShardMapError, match=message):
        build()  # type: ignore[operator]


def test_json_round_trip_and_damaged_json() -> None:
    m = ShardMap(4, shards(3), {"ESZ4": 2, "BTCUSDT": 0})
    assert ShardMap.from_json(m.to_json()) == m
    with pytest.raises(ShardMapError, match="stored shard map cannot be read"):
        ShardMap.from_json('{"epoch": 1}')
    with pytest.raises(ShardMapError, match="stored shard map cannot be read"):
        ShardMap.from_json("not json")


def test_order_ids_carry_their_shard() -> None:
    assert order_id_shard(12345) == 0, "ids of an unsharded service belong to shard 0"
    oid = make_order_id(3, 12345)
    assert oid == (3 << 48) | 12345
    assert order_id_shard(oid) == 3
    top = make_order_id(MAX_SHARD_ID, (1 << 48) - 1)
    assert 0 < top < 1 << 63, "ids stay positive int64"
    m = ShardMap(1, shards(4))
    assert m.owner_of_order_id(oid) == Shard(3, "10.0.0.3:50051")
    assert m.owner_of_order_id(make_order_id(9, 1)) is None
    with pytest.raises(ShardMapError):
        make_order_id(0, 0)
    with pytest.raises(ShardMapError):
        make_order_id(MAX_SHARD_ID + 1, 1)


def test_parse_shards_forms() -> None:
    assert parse_shards(["127.0.0.1:50051", "127.0.0.1:50061"]) == [
        Shard(0, "127.0.0.1:50051"),
        Shard(1, "127.0.0.1:50061"),
    ]
    assert parse_shards(["4=h:1", " 9=h:2 "]) == [Shard(4, "h:1"), Shard(9, "h:2")]
    with pytest.raises(ShardMapError, match="numeric ID"):
        parse_shards(["x=h:1"])


def test_default_url_prefers_its_own_variable_then_database_url(tmp_path: Path) -> None:
    assert default_url({}, tmp_path) == f"sqlite+aiosqlite:///{tmp_path / 'shardmap' / 'shardmap.sqlite3'}"
    assert default_url({"DATABASE_URL": "postgresql+asyncpg://db/x"}, tmp_path) == "postgresql+asyncpg://db/x"
    env = {"DATABASE_URL": "postgresql+asyncpg://db/x", "HFTGATE_SHARD_MAP_DATABASE_URL": "sqlite:///y"}
    assert default_url(env, tmp_path) == "sqlite:///y"


# --- the durable store ------------------------------------------------------------------------------
async def _postgres_problem() -> str | None:
    import asyncpg  # type: ignore[import-untyped]

    try:
        conn = await asyncio.wait_for(
            asyncpg.connect(POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://", 1)), 3
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'state' / 'shardmap.sqlite3'}"
    problem = await _postgres_problem()
    if problem is not None:
        message = f"PostgreSQL at {POSTGRES_URL} unreachable ({problem}); set HFTGATE_TEST_POSTGRES_URL"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_URL


@pytest.fixture
async def stores(store_url: str) -> AsyncIterator[list[ShardMapStore]]:
    """Three stores on one table, each with its own engine (as three processes would have)."""
    table = f"shard_maps_test_{uuid.uuid4().hex[:10]}"
    opened = [ShardMapStore(store_url, table_name=table) for _ in range(3)]
    for store in opened:
        await store.start()
    yield opened
    await opened[0].drop_table()
    for store in opened:
        await store.close()


async def test_store_is_empty_until_created_and_the_first_creator_wins(stores: list[ShardMapStore]) -> None:
    a, b, _ = stores
    assert await a.load() is None
    assert await a.epoch() == 0
    first = ShardMap.single("127.0.0.1:50051")
    second = ShardMap(1, shards(2))
    created = await asyncio.gather(a.create(first), b.create(second))
    assert created[0] == created[1], "both creators end up with the one stored map"
    assert await a.load() == created[0]


async def test_store_survives_a_reopen(stores: list[ShardMapStore], store_url: str) -> None:
    a = stores[0]
    await a.create(ShardMap.single())
    published = await a.publish(ShardMap.single().with_shard(Shard(1, "127.0.0.1:50061")), 1)
    fresh = ShardMapStore(store_url, table_name=a.table.name)
    await fresh.start()
    try:
        assert await fresh.load() == published
        assert (await fresh.load()).epoch == 2  # type: ignore[union-attr]
    finally:
        await fresh.close()


async def test_two_writers_from_one_epoch_exactly_one_wins(stores: list[ShardMapStore]) -> None:
    a, b, c = stores
    base = await a.create(ShardMap(1, shards(2)))
    mine = base.with_pin("BTCUSDT", 0)
    theirs = base.with_pin("BTCUSDT", 1)
    outcomes = await asyncio.gather(a.publish(mine, 1), b.publish(theirs, 1), return_exceptions=True)
    wins = [o for o in outcomes if isinstance(o, ShardMap)]
    losses = [o for o in outcomes if isinstance(o, EpochConflict)]
    assert len(wins) == 1 and len(losses) == 1, outcomes
    assert losses[0].current == wins[0], "the loser learns the map that won"
    assert "expected epoch 1, the store has epoch 2" in str(losses[0])
    stored = await c.load()
    assert stored == wins[0]


async def test_a_stale_writer_cannot_overwrite_a_newer_map(stores: list[ShardMapStore]) -> None:
    a, b, _ = stores
    base = await a.create(ShardMap(1, shards(2)))
    await a.publish(base.with_pin("ESZ4", 1), 1)
    with pytest.raises(EpochConflict):
        await b.publish(base.with_pin("ESZ4", 0), 1)  # made from epoch 1, which is gone
    assert (await b.load()).pins == {"ESZ4": 1}  # type: ignore[union-attr]


async def test_epochs_only_grow(stores: list[ShardMapStore]) -> None:
    a = stores[0]
    await a.create(ShardMap(5, shards(1)))
    with pytest.raises(ShardMapError, match="epochs only grow"):
        await a.publish(ShardMap(5, shards(2)), 5)
    with pytest.raises(ShardMapError, match="epochs only grow"):
        await a.publish(ShardMap(3, shards(2)), 5)
    assert await a.epoch() == 5


async def test_concurrent_updates_all_apply_one_epoch_each(stores: list[ShardMapStore]) -> None:
    a = stores[0]
    await a.create(ShardMap(1, shards(3)))
    pins = [f"SYM{i}" for i in range(6)]

    async def pin(store: ShardMapStore, symbol: str) -> ShardMap:
        return await store.update(lambda m: m.with_pin(symbol, 2), attempts=20)

    await asyncio.gather(*(pin(stores[i % 3], s) for i, s in enumerate(pins)))
    final = await a.load()
    assert final is not None
    assert final.epoch == 1 + len(pins), "every change is one epoch; none was lost"
    assert dict(final.pins) == dict.fromkeys(pins, 2)


async def test_update_without_a_map_says_so(stores: list[ShardMapStore]) -> None:
    with pytest.raises(ShardMapError, match="no shard map is stored yet"):
        await stores[0].update(lambda m: m)


async def test_watch_yields_each_newer_map(stores: list[ShardMapStore]) -> None:
    a, b, _ = stores
    await a.create(ShardMap.single())
    seen: list[int] = []

    async def follow() -> None:
        async for found in b.watch(poll_ms=20):
            seen.append(found.epoch)
            if found.epoch == 3:
                return

    watcher = asyncio.create_task(follow())
    await asyncio.sleep(0.1)
    await a.update(lambda m: m.with_shard(Shard(1, "127.0.0.1:50061")))
    await asyncio.sleep(0.1)
    await a.update(lambda m: m.with_pin("BTCUSDT", 1))
    await asyncio.wait_for(watcher, 5)
    assert seen == [1, 2, 3]


async def test_unreachable_store_is_a_precise_error_without_the_password() -> None:
    store = ShardMapStore("postgresql+asyncpg://u:sekrit@127.0.0.1:1/none")
    with pytest.raises(ShardMapUnavailable) as caught:
        await store.start()
    assert "sekrit" not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)


async def test_damaged_stored_map_is_refused_on_load(tmp_path: Path) -> None:
    from sqlalchemy import update

    store = ShardMapStore(f"sqlite+aiosqlite:///{tmp_path / 'm.sqlite3'}")
    await store.start()
    try:
        await store.create(ShardMap.single())
        async with store._live().begin() as conn:
            await conn.execute(update(store.table).values(body='{"epoch": 1, "shards": []}'))
        with pytest.raises(ShardMapError, match="at least one shard"):
            await store.load()
    finally:
        await store.close()
