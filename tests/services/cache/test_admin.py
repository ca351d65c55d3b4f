"""The AdminService served by the cache: accounts, keys, instruments, audit; admin principal only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from hftgate.v1 import admin_pb2, admin_pb2_grpc, cache_pb2, cache_pb2_grpc
from services.cache.client import CacheClient
from services.cache.config import CacheConfig
from services.cache.server import CacheRunningServer

from .conftest import credentials_for, key_credentials

StartReplica = Callable[..., Awaitable[CacheRunningServer]]
Connect = Callable[..., Awaitable[CacheClient]]
ADMIN = credentials_for("admin").metadata


class Stubs:
    def __init__(self, replica: CacheRunningServer, channel: grpc.aio.Channel) -> None:
        self.replica = replica
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)
        self.cache = cache_pb2_grpc.CacheServiceStub(channel)

    async def call(self, method: str, request: Any, metadata: Any = ADMIN) -> Any:
        return await getattr(self.admin, method)(request, metadata=metadata)

    async def code(self, method: str, request: Any, metadata: Any = ADMIN) -> tuple[grpc.StatusCode, str]:
        try:
            await self.call(method, request, metadata)
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""

    async def works(self, api_key: str) -> bool:
        """True when the cache accepts ``api_key`` as an account's credential."""
        try:
            await self.cache.Get(
                cache_pb2.CacheGetRequest(key="k"), metadata=key_credentials(api_key).metadata
            )
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
            return False
        return True


@pytest.fixture
async def stubs(replica_config: CacheConfig, start_replica: StartReplica) -> AsyncIterator[Stubs]:
    replica = await start_replica(replica_config, api_key_cache_ms=100)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        yield Stubs(replica, channel)


async def test_only_the_admin_principal_may_call_it(stubs: Stubs) -> None:
    await stubs.call("AddAccount", admin_pb2.AddAccountRequest(name="alice"))
    issued = await stubs.call("IssueKey", admin_pb2.IssueKeyRequest(account="alice"))
    requests = {
        "AddAccount": admin_pb2.AddAccountRequest(name="mallory"),
        "ListAccounts": admin_pb2.ListAccountsRequest(),
        "SetKillSwitch": admin_pb2.SetKillSwitchRequest(name="alice", kill_switch=True),
        "SetAccountLimits": admin_pb2.SetAccountLimitsRequest(name="alice", max_open_orders=1),
        "IssueKey": admin_pb2.IssueKeyRequest(account="alice"),
        "ListKeys": admin_pb2.ListKeysRequest(account="alice"),
        "RevokeKey": admin_pb2.RevokeKeyRequest(key_id=issued.info.key_id),
        "RotateKey": admin_pb2.RotateKeyRequest(key_id=issued.info.key_id),
        "AddInstrument": admin_pb2.AddInstrumentRequest(
            instrument=admin_pb2.InstrumentDefinition(symbol="X")
        ),
        "SetTradingEnabled": admin_pb2.SetTradingEnabledRequest(symbol="X"),
        "ListAudit": admin_pb2.ListAuditRequest(),
    }
    callers = {
        "nobody": ((), grpc.StatusCode.UNAUTHENTICATED),
        "alice's key": (key_credentials(issued.api_key).metadata, grpc.StatusCode.UNAUTHENTICATED),
        "forged": ((("x-hftgate-service-token", "admin." + "1" * 64),), grpc.StatusCode.UNAUTHENTICATED),
        **{
            s: (credentials_for(s).metadata, grpc.StatusCode.PERMISSION_DENIED)
            for s in ("execution", "marketdata", "cache", "gateway", "scaler", "feed")
        },
    }
    for who, (metadata, expected) in callers.items():
        for method, request in requests.items():
            code, details = await stubs.code(method, request, metadata)
            assert code == expected, (who, method, code, details)
    accounts = await stubs.call("ListAccounts", admin_pb2.ListAccountsRequest())
    assert [(a.name, a.kill_switch, a.max_open_orders) for a in accounts.accounts] == [
        ("alice", False, 100_000)
    ]
    assert await stubs.works(issued.api_key)
    audit = await stubs.call("ListAudit", admin_pb2.ListAuditRequest())
    assert [r.action for r in audit.rows] == ["keys.issue", "accounts.add"]


async def test_accounts_get_unique_ids_and_every_change_is_audited(stubs: Stubs) -> None:
    a = (
        await stubs.call("AddAccount", admin_pb2.AddAccountRequest(name="alice", max_open_orders=10))
    ).account
    b = (await stubs.call("AddAccount", admin_pb2.AddAccountRequest(name="bob"))).account
    assert (a.account_id, b.account_id, a.max_open_orders) == (1, 2, 10)
    assert (await stubs.code("AddAccount", admin_pb2.AddAccountRequest(name="alice")))[0] == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    # Deleting bob's row (an operator mistake) must not free his id.
    await stubs.cache.Delete(cache_pb2.CacheDeleteRequest(key="account:bob"), metadata=ADMIN)
    c = (await stubs.call("AddAccount", admin_pb2.AddAccountRequest(name="carol"))).account
    assert c.account_id == 3
    off = await stubs.call("SetKillSwitch", admin_pb2.SetKillSwitchRequest(name="alice", kill_switch=True))
    assert off.account.kill_switch
    on = await stubs.call("SetKillSwitch", admin_pb2.SetKillSwitchRequest(name="alice", kill_switch=False))
    assert not on.account.kill_switch
    limits = await stubs.call(
        "SetAccountLimits",
        admin_pb2.SetAccountLimitsRequest(name="alice", position_limit_lots=5, rate_limit_orders_per_s=2.5),
    )
    assert (limits.account.position_limit_lots, limits.account.rate_limit_orders_per_s) == (5, 2.5)
    assert limits.account.max_open_orders == 10  # unset: unchanged
    row = await stubs.cache.Get(cache_pb2.CacheGetRequest(key="account:alice"), metadata=ADMIN)
    stored = json.loads(row.entry.value)
    assert stored["position_limit_lots"] == 5 and stored["account_id"] == 1 and not stored["kill_switch"]
    bad = [
        (admin_pb2.AddAccountRequest(name="a:b"), "name"),
        (admin_pb2.AddAccountRequest(name="x" * 65), "name"),
        (admin_pb2.AddAccountRequest(name="dave", max_open_orders=0), "max_open_orders"),
        (admin_pb2.AddAccountRequest(name="dave", rate_limit_orders_per_s=float("nan")), "rate_limit"),
    ]
    for request, field in bad:
        code, details = await stubs.code("AddAccount", request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details
    code, details = await stubs.code("SetKillSwitch", admin_pb2.SetKillSwitchRequest(name="nobody"))
    assert code == grpc.StatusCode.NOT_FOUND and "nobody" in details
    audit = await stubs.call("ListAudit", admin_pb2.ListAuditRequest(target="account:alice"))
    assert [r.action for r in audit.rows] == [
        "accounts.set-limits",
        "accounts.enable",
        "accounts.disable",
        "accounts.add",
    ]
    assert all(r.actor == "admin" and r.at_ns > 0 for r in audit.rows)
    assert json.loads(audit.rows[0].detail_json)["position_limit_lots"] == {"from": 10_000_000, "to": 5}
    assert (await stubs.code("ListAudit", admin_pb2.ListAuditRequest(limit=1001)))[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_keys_issue_list_revoke_and_rotate_with_overlap(stubs: Stubs) -> None:
    await stubs.call("AddAccount", admin_pb2.AddAccountRequest(name="alice"))
    first = await stubs.call("IssueKey", admin_pb2.IssueKeyRequest(account="alice"))
    second = await stubs.call("IssueKey", admin_pb2.IssueKeyRequest(account="alice", ttl_ms=600_000))
    assert first.api_key != second.api_key and await stubs.works(first.api_key)
    assert second.info.expires_ns > second.info.created_ns
    listed = await stubs.call("ListKeys", admin_pb2.ListKeysRequest(account="alice"))
    assert [k.key_id for k in listed.keys] == [first.info.key_id, second.info.key_id]
    assert first.api_key not in str(listed)  # never the key
    # The store holds only the keyed hash, nowhere the key itself.
    registry = await stubs.cache.Get(
        cache_pb2.CacheGetRequest(key=f"keyinfo:{first.info.key_id}"), metadata=ADMIN
    )
    assert first.api_key.encode() not in registry.entry.value
    assert json.loads(registry.entry.value)["account"] == "alice"

    await stubs.call("RevokeKey", admin_pb2.RevokeKeyRequest(key_id=second.info.key_id))
    assert not await stubs.works(second.api_key)  # at once, on this replica
    assert (await stubs.code("RevokeKey", admin_pb2.RevokeKeyRequest(key_id=second.info.key_id)))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    assert (await stubs.code("RevokeKey", admin_pb2.RevokeKeyRequest(key_id="../x")))[0] == (
        grpc.StatusCode.INVALID_ARGUMENT
    )

    rotated = await stubs.call(
        "RotateKey", admin_pb2.RotateKeyRequest(key_id=first.info.key_id, overlap_ms=800)
    )
    assert rotated.previous.replaced_by == rotated.info.key_id and rotated.previous.expires_ns > 0
    assert await stubs.works(first.api_key) and await stubs.works(rotated.api_key)  # the overlap
    again = await stubs.code("RotateKey", admin_pb2.RotateKeyRequest(key_id=first.info.key_id))
    assert again[0] == grpc.StatusCode.FAILED_PRECONDITION
    for _ in range(100):
        if not await stubs.works(first.api_key):
            break
        await asyncio.sleep(0.05)
    assert not await stubs.works(first.api_key)  # the overlap is over
    assert await stubs.works(rotated.api_key)
    listed = await stubs.call("ListKeys", admin_pb2.ListKeysRequest(account="alice"))
    assert [k.key_id for k in listed.keys] == [rotated.info.key_id]
    actions = [r.action for r in (await stubs.call("ListAudit", admin_pb2.ListAuditRequest())).rows]
    assert actions[:4] == ["keys.rotate", "keys.revoke", "keys.issue", "keys.issue"]
    code, _ = await stubs.code("IssueKey", admin_pb2.IssueKeyRequest(account="nobody"))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_instruments_and_changes_reach_the_execution_near_cache(stubs: Stubs, connect: Connect) -> None:
    execution = await connect(stubs.replica.port, "execution", credentials_for("execution"))
    added = await stubs.call(
        "AddInstrument",
        admin_pb2.AddInstrumentRequest(
            instrument=admin_pb2.InstrumentDefinition(symbol="BTCUSDT", base_asset="BTC", quote_asset="USDT")
        ),
    )
    assert added.instrument.trading_enabled and added.instrument.tick_size == "0.01"
    assert added.instrument.price_increment_ticks == 1
    raw = await execution.get("instrument:BTCUSDT")
    assert raw is not None and json.loads(raw)["trading_enabled"] is True
    await stubs.call("SetTradingEnabled", admin_pb2.SetTradingEnabledRequest(symbol="BTCUSDT"))
    for _ in range(200):  # the invalidation reaches the near cache, the next read the new row
        raw = await execution.get("instrument:BTCUSDT")
        if raw is not None and json.loads(raw)["trading_enabled"] is False:
            break
        await asyncio.sleep(0.01)
    assert raw is not None and json.loads(raw)["trading_enabled"] is False
    resumed = await stubs.call(
        "SetTradingEnabled", admin_pb2.SetTradingEnabledRequest(symbol="BTCUSDT", trading_enabled=True)
    )
    assert resumed.instrument.trading_enabled
    duplicate = admin_pb2.AddInstrumentRequest(instrument=admin_pb2.InstrumentDefinition(symbol="BTCUSDT"))
    assert (await stubs.code("AddInstrument", duplicate))[0] == grpc.StatusCode.ALREADY_EXISTS
    for definition, field in (
        (admin_pb2.InstrumentDefinition(symbol="btc usdt"), "instrument.symbol"),
        (admin_pb2.InstrumentDefinition(symbol="ETH", tick_size="-1"), "instrument.tick_size"),
        (admin_pb2.InstrumentDefinition(symbol="ETH", tick_size="NaN"), "instrument.tick_size"),
        (admin_pb2.InstrumentDefinition(symbol="ETH", max_order_lots=-1), "instrument.max_order_lots"),
        (
            admin_pb2.InstrumentDefinition(symbol="ETH", price_band_ticks=5),
            "instrument.reference_price_ticks",
        ),
    ):
        code, details = await stubs.code(
            "AddInstrument", admin_pb2.AddInstrumentRequest(instrument=definition)
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details
    code, _ = await stubs.code("SetTradingEnabled", admin_pb2.SetTradingEnabledRequest(symbol="NOPE"))
    assert code == grpc.StatusCode.NOT_FOUND
    actions = [r.action for r in (await stubs.call("ListAudit", admin_pb2.ListAuditRequest())).rows]
    assert actions == ["instruments.resume", "instruments.halt", "instruments.add"]
