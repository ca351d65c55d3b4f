"""``hftgate move``: the operator's command over the durable symbol mover (the move itself is
tested against real shards in tests/services/execution/test_symbol_move*.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hftgate.cli import app
from hftgate.shardmap import Shard, ShardMap, ShardMapStore


@pytest.fixture
def stored_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ShardMap:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shardmap.sqlite3'}"
    monkeypatch.setenv("HFTGATE_SHARD_MAP_DATABASE_URL", url)
    initial = ShardMap(1, [Shard(0, "127.0.0.1:1"), Shard(1, "127.0.0.1:2")], pins={"ETHUSDT": 1})

    async def store() -> None:
        shard_store = ShardMapStore(url)
        await shard_store.start()
        try:
            await shard_store.create(initial)
        finally:
            await shard_store.close()

    asyncio.run(store())
    return initial


def test_a_move_that_cannot_be_made_is_refused_saying_why_and_changes_nothing(stored_map: ShardMap) -> None:
    runner = CliRunner()
    already = runner.invoke(app, ["move", "ETHUSDT", "--to", "1"])
    assert already.exit_code == 1
    assert "move refused: ETHUSDT already belongs to shard 1" in already.output
    unknown = runner.invoke(app, ["move", "ETHUSDT", "--to", "7"])
    assert unknown.exit_code == 1
    assert "shard 7 is not in the shard map (epoch 1)" in unknown.output
    nothing = runner.invoke(app, ["move", "--resume", "--json"])
    assert nothing.exit_code == 0 and nothing.stdout.strip() == "[]"
    for args in (["move"], ["move", "ETHUSDT"], ["move", "ETHUSDT", "--to", "0", "--resume"]):
        bad = runner.invoke(app, args)
        assert bad.exit_code == 2, args
        assert "Traceback" not in bad.output


def test_a_move_without_a_stored_map_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HFTGATE_SHARD_MAP_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'empty.sqlite3'}")
    refused = CliRunner().invoke(app, ["move", "BTCUSDT", "--to", "1"])
    assert refused.exit_code == 1
    assert "no shard map is stored" in refused.output
