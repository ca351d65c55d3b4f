"""`hftgate accounts | keys | instruments | audit` end to end against a real cache service."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from typer.testing import CliRunner

from hftgate.cli import app
from hftgate.security import (
    API_KEY_METADATA,
    SuiteSecurity,
    certs_init,
    load_suite_secret,
    suite_server_tls,
)
from hftgate.v1 import cache_pb2, cache_pb2_grpc
from services.cache.config import CacheConfig
from services.cache.server import CacheRunningServer, start

runner = CliRunner()


async def _start(tmp_path: Path, tls_dir: Path | None = None) -> CacheRunningServer:
    """A cache replica of its own: embedded Redis, SQLite under ``tmp_path``."""
    env = {"HFTGATE_TLS_DIR": str(tls_dir)} if tls_dir else {}
    security = SuiteSecurity(
        secret=load_suite_secret(), principal="cache", server_tls=suite_server_tls("cache", env)
    )
    config = CacheConfig(port=0, state_dir=str(tmp_path / "cache"), sql_purge_interval_ms=3_600_000)
    return await start(config, security)


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[CacheRunningServer]:
    running = await _start(tmp_path)
    yield running
    await running.stop(0)


async def hftgate(*args: str, env: dict[str, str] | None = None) -> Any:
    """Run the CLI in a thread (the service runs on this loop)."""
    return await asyncio.to_thread(runner.invoke, app, list(args), env=env)


async def test_admin_commands_end_to_end(cache: CacheRunningServer) -> None:
    at = ["--cache", f"127.0.0.1:{cache.port}"]
    result = await hftgate("accounts", "add", "alice", "--max-open-orders", "7", *at, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["account"]["account_id"] == "1"  # int64 as JSON string
    assert (await hftgate("accounts", "add", "bob", *at)).exit_code == 0
    result = await hftgate("accounts", "add", "alice", *at)
    assert result.exit_code == 1 and "ALREADY_EXISTS" in result.output
    assert (await hftgate("accounts", "disable", "bob", *at)).exit_code == 0
    result = await hftgate("accounts", "set-limits", "alice", "--position-limit-lots", "9", *at, "--json")
    assert json.loads(result.stdout)["account"]["position_limit_lots"] == "9"
    result = await hftgate("accounts", "list", *at, "--json")
    accounts = {a["name"]: a for a in json.loads(result.stdout)["accounts"]}
    assert accounts["bob"]["kill_switch"] is True and accounts["alice"]["max_open_orders"] == "7"
    assert (await hftgate("accounts", "enable", "bob", *at)).exit_code == 0

    result = await hftgate("keys", "issue", "alice", *at)
    assert result.exit_code == 0, result.output
    api_key = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"hftgate-[A-Za-z0-9_-]{40,}", api_key)
    key_id = re.search(r"\b([0-9a-f]{16})\b", result.stdout).group(1)  # type: ignore[union-attr]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cache.port}") as channel:
        stub = cache_pb2_grpc.CacheServiceStub(channel)
        as_alice = ((API_KEY_METADATA, api_key),)
        await stub.Set(cache_pb2.CacheSetRequest(key="k", value=b"v"), metadata=as_alice)
        listed = await hftgate("keys", "list", "alice", *at, "--json")
        assert key_id in listed.stdout and api_key not in listed.stdout
        rotated = await hftgate("keys", "rotate", key_id, "--overlap-ms", "60000", *at, "--json")
        new_key = json.loads(rotated.stdout)["api_key"]
        assert new_key != api_key and json.loads(rotated.stdout)["previous"]["replaced_by"]
        await stub.Get(cache_pb2.CacheGetRequest(key="k"), metadata=as_alice)  # still in its overlap
        new_id = json.loads(rotated.stdout)["info"]["key_id"]
        assert (await hftgate("keys", "revoke", key_id, *at)).exit_code == 0
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Get(cache_pb2.CacheGetRequest(key="k"), metadata=as_alice)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = await stub.Get(cache_pb2.CacheGetRequest(key="k"), metadata=((API_KEY_METADATA, new_key),))
        assert reply.entry.value == b"v"  # the same account's namespace
    assert (await hftgate("keys", "revoke", new_id, *at)).exit_code == 0
    result = await hftgate("keys", "revoke", new_id, *at)
    assert result.exit_code == 1 and "NOT_FOUND" in result.output

    assert (await hftgate("instruments", "add", "BTCUSDT", "--base-asset", "BTC", *at)).exit_code == 0
    result = await hftgate("instruments", "halt", "BTCUSDT", *at)
    assert result.exit_code == 0 and "HALTED" in result.stdout
    result = await hftgate("instruments", "resume", "BTCUSDT", *at, "--json")
    assert json.loads(result.stdout)["instrument"]["trading_enabled"] is True
    result = await hftgate("instruments", "add", "bad symbol", *at)
    assert (
        result.exit_code == 1 and "INVALID_ARGUMENT" in result.output and "instrument.symbol" in result.output
    )

    result = await hftgate("audit", "--limit", "3", *at, "--json")
    rows = json.loads(result.stdout)["rows"]
    assert [r["action"] for r in rows] == ["instruments.resume", "instruments.halt", "instruments.add"]
    assert all(r["actor"] == "admin" for r in rows)
    result = await hftgate("audit", "--target", "account:bob", *at, "--json")
    actions = [r["action"] for r in json.loads(result.stdout)["rows"]]
    assert actions == ["accounts.enable", "accounts.disable", "accounts.add"]
    result = await hftgate("audit", *at)  # the table
    assert result.exit_code == 0 and "admin" in result.stdout


async def test_without_the_suite_secret_the_cli_is_refused(cache: CacheRunningServer) -> None:
    wrong = {"HFTGATE_SUITE_SECRET": "not the suite's secret, but long enough to be one"}
    result = await hftgate("accounts", "list", "--cache", f"127.0.0.1:{cache.port}", env=wrong)
    assert result.exit_code == 1 and "UNAUTHENTICATED" in result.output


async def test_the_cli_speaks_tls_from_the_tls_dir(tmp_path: Path) -> None:
    tls_dir = tmp_path / "tls"
    await asyncio.to_thread(certs_init, tls_dir)
    running = await _start(tmp_path, tls_dir)
    try:
        at = ["--cache", f"127.0.0.1:{running.port}"]
        result = await hftgate("accounts", "add", "alice", *at, env={"HFTGATE_TLS_DIR": str(tls_dir)})
        assert result.exit_code == 0, result.output
        plaintext = await hftgate("accounts", "list", *at, env={"HFTGATE_TLS_DIR": ""})
        assert plaintext.exit_code == 1 and "UNAVAILABLE" in plaintext.output
    finally:
        await running.stop(0)
