"""The shard map's move marks (issue #15): a symbol marked moving keeps its owner until the move
ends, the end pins it to the target in one epoch, and the mark survives the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from hftgate.shardmap import MAX_MOVING, Shard, ShardMap, ShardMapError, ShardMapStore

TWO = [Shard(0, "127.0.0.1:50051"), Shard(1, "127.0.0.1:50061")]


def test_a_move_marks_then_pins_in_one_epoch_each() -> None:
    start = ShardMap(1, TWO, {"BTCUSDT": 0})
    marked = start.with_move_started("BTCUSDT", 1)
    assert (marked.epoch, dict(marked.moving), marked.owner("BTCUSDT").shard_id) == (2, {"BTCUSDT": 1}, 0)
    done = marked.with_move_done("BTCUSDT")
    assert (done.epoch, dict(done.moving), done.owner("BTCUSDT").shard_id) == (3, {}, 1)
    assert dict(done.pins) == {"BTCUSDT": 1}
    abandoned = marked.without_move("BTCUSDT")
    assert (abandoned.epoch, dict(abandoned.moving), abandoned.owner("BTCUSDT").shard_id) == (3, {}, 0)


def test_other_changes_keep_the_mark_and_json_round_trips_it() -> None:
    marked = ShardMap(1, TWO).with_move_started("ESZ4", 1 - ShardMap(1, TWO).owner("ESZ4").shard_id)
    pinned = marked.with_pin("ETHUSDT", 0)
    assert pinned.moving == marked.moving
    assert ShardMap.from_json(pinned.to_json()) == pinned
    plain = ShardMap(1, TWO)
    assert "moving" not in plain.to_json()  # maps without moves read as before


def test_bad_moves_are_refused_with_the_reason() -> None:
    start = ShardMap(1, TWO, {"BTCUSDT": 0})
    with pytest.raises(ShardMapError, match="already belongs to shard 0"):
        start.with_move_started("BTCUSDT", 0)
    with pytest.raises(ShardMapError, match="not in the map"):
        start.with_move_started("BTCUSDT", 7)
    with pytest.raises(ShardMapError, match="is not moving"):
        start.with_move_done("BTCUSDT")
    with pytest.raises(ShardMapError, match="is not moving"):
        start.without_move("BTCUSDT")
    with pytest.raises(ShardMapError, match="moving to shard 5, which is not in the map"):
        ShardMap(1, TWO, {}, {"BTCUSDT": 5})
    too_many = {f"S{i}": 1 for i in range(MAX_MOVING + 1)}
    with pytest.raises(ShardMapError, match="exceed the limit"):
        ShardMap(1, TWO, {}, too_many)
    marked = start.with_move_started("BTCUSDT", 1)
    with pytest.raises(ShardMapError, match="moving to shard 1, which is not in the map"):
        marked.without_shard(1)


async def test_the_mark_is_durable_in_the_store(tmp_path: Path) -> None:
    store = ShardMapStore(f"sqlite+aiosqlite:///{tmp_path / 'map.sqlite3'}")
    await store.start()
    try:
        await store.create(ShardMap(1, TWO, {"BTCUSDT": 0}))
        await store.update(lambda m: m.with_move_started("BTCUSDT", 1))
        loaded = await store.load()
        assert loaded is not None and dict(loaded.moving) == {"BTCUSDT": 1} and loaded.epoch == 2
    finally:
        await store.close()
