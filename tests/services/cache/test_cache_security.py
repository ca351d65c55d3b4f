"""The cache service as an attacker meets it (issue #12 part 1): authentication, namespaces, key material.

Every attacker (no credentials, forged tokens, a revoked key, a valid account key, each
non-admin service) tries every write of reference data and every cross-account read; each
must be refused with UNAUTHENTICATED or PERMISSION_DENIED, and an admin read afterwards
must find every reference row exactly as before.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from hftgate.security import SERVICE_TOKEN_METADATA, ClientCredentials, SuiteSecret, load_suite_secret
from hftgate.v1 import cache_pb2, cache_pb2_grpc
from services.cache import globs
from services.cache.authz import FLUSH, AccountResolver, Denied, Namespace, Unauthenticated
from services.cache.client import CacheClient
from services.cache.config import CacheConfig
from services.cache.server import CacheRunningServer
from services.execution.reference import AccountSpec, InstrumentSpec, encode_spec

from .conftest import credentials_for, key_credentials

StartReplica = Callable[..., Awaitable[CacheRunningServer]]
Connect = Callable[..., Awaitable[CacheClient]]
Metadata = tuple[tuple[str, str], ...]
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
NON_ADMIN_SERVICES = ("execution", "marketdata", "cache", "gateway", "scaler", "feed")


class World:
    """A replica with alice and bob, their keys, one instrument, and raw stubs per caller."""

    def __init__(self, replica: CacheRunningServer, channel: grpc.aio.Channel) -> None:
        self.replica = replica
        self.stub = cache_pb2_grpc.CacheServiceStub(channel)
        self.admin = credentials_for("admin").metadata
        self.keys: dict[str, str] = {}
        self.key_ids: dict[str, str] = {}
        self.revoked_key = ""

    async def seed(self) -> None:
        admin = self.replica.admin
        assert admin is not None
        for name in ("alice", "bob"):
            await admin.add_account("admin", name, {})
            issued = await admin.issue_key("admin", name)
            self.keys[name] = issued.api_key
            self.key_ids[name] = issued.info.key_id
        revoked = await admin.issue_key("admin", "alice")
        await admin.revoke_key("admin", revoked.info.key_id)
        self.revoked_key = revoked.api_key
        await admin.add_instrument("admin", InstrumentSpec(symbol="BTCUSDT"))
        await self.stub.Set(
            cache_pb2.CacheSetRequest(key="acct:bob:secret", value=b"bob's"), metadata=self.admin
        )

    async def raw(self, key: str) -> bytes | None:
        reply = await self.stub.Get(cache_pb2.CacheGetRequest(key=key), metadata=self.admin)
        return reply.entry.value if reply.found else None

    async def snapshot(self) -> dict[str, bytes | None]:
        """Every reference row (and bob's private key) as admin reads it."""
        secret = load_suite_secret()
        keys = [
            "account:alice",
            "account:bob",
            "instrument:BTCUSDT",
            "instrument:NEWCOIN",
            "acct:bob:secret",
            *(f"apikey:{secret.api_key_hash(k)}" for k in (*self.keys.values(), self.revoked_key)),
            *(f"keyinfo:{i}" for i in self.key_ids.values()),
            "apikey:" + secret.api_key_hash("attacker-chosen-key"),
        ]
        return {key: await self.raw(key) for key in keys}


@pytest.fixture
async def world(replica_config: CacheConfig, start_replica: StartReplica) -> Any:
    replica = await start_replica(replica_config)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as channel:
        w = World(replica, channel)
        await w.seed()
        yield w


def attackers(w: World) -> dict[str, Metadata]:
    forged_mac = "admin." + "0" * 64
    other_suite = SuiteSecret(b"another suite's secret, 32 bytes or more").token_for("admin")
    found: dict[str, Metadata] = {
        "no credentials": (),
        "forged admin token": ((SERVICE_TOKEN_METADATA, forged_mac),),
        "admin token of another suite": ((SERVICE_TOKEN_METADATA, other_suite),),
        "forged token plus a valid key": (
            (SERVICE_TOKEN_METADATA, forged_mac),
            ("x-api-key", w.keys["alice"]),
        ),
        "revoked key": key_credentials(w.revoked_key).metadata,
        "made-up key": key_credentials("hftgate-made-up").metadata,
        "alice's key": key_credentials(w.keys["alice"]).metadata,
    }
    for service in NON_ADMIN_SERVICES:
        found[f"service {service}"] = credentials_for(service).metadata
    return found


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_every_attacker_is_refused_every_reference_write_and_nothing_changes(world: World) -> None:
    w = world
    before = await w.snapshot()
    secret = load_suite_secret()
    alice = AccountSpec(name="alice", account_id=2)  # bob's id
    halted = InstrumentSpec(symbol="BTCUSDT", trading_enabled=False)
    writes: dict[str, Callable[[Metadata], Awaitable[Any]]] = {
        "apikey row for a chosen key": lambda md: w.stub.Set(
            cache_pb2.CacheSetRequest(
                key="apikey:" + secret.api_key_hash("attacker-chosen-key"), value=b"alice"
            ),
            metadata=md,
        ),
        "apikey row, old plain SHA-256 form": lambda md: w.stub.Set(
            cache_pb2.CacheSetRequest(key="apikey:" + "a" * 64, value=b"alice"), metadata=md
        ),
        "account:alice with bob's id": lambda md: w.stub.Set(
            cache_pb2.CacheSetRequest(key="account:alice", value=encode_spec(alice)), metadata=md
        ),
        "bob's kill switch": lambda md: w.stub.Set(
            cache_pb2.CacheSetRequest(
                key="account:bob", value=encode_spec(AccountSpec("bob", 2, kill_switch=True))
            ),
            metadata=md,
        ),
        "halt an instrument": lambda md: w.stub.Set(
            cache_pb2.CacheSetRequest(key="instrument:BTCUSDT", value=encode_spec(halted)), metadata=md
        ),
        "create an instrument, inside a batch": lambda md: w.stub.SetMany(
            cache_pb2.CacheSetManyRequest(
                entries=[
                    cache_pb2.CacheSetRequest(key="harmless", value=b"x"),
                    cache_pb2.CacheSetRequest(
                        key="instrument:NEWCOIN", value=encode_spec(InstrumentSpec("NEWCOIN"))
                    ),
                ]
            ),
            metadata=md,
        ),
        "rewrite a key's registry row": lambda md: w.stub.Set(
            cache_pb2.CacheSetRequest(key=f"keyinfo:{w.key_ids['bob']}", value=b"{}"), metadata=md
        ),
        "delete alice's key row": lambda md: w.stub.Delete(
            cache_pb2.CacheDeleteRequest(key="apikey:" + secret.api_key_hash(w.keys["alice"])), metadata=md
        ),
        "delete an account": lambda md: w.stub.Delete(
            cache_pb2.CacheDeleteRequest(key="account:alice"), metadata=md
        ),
        "invalidate every key row": lambda md: w.stub.InvalidatePattern(
            cache_pb2.CacheInvalidatePatternRequest(pattern="apikey:*"), metadata=md
        ),
        "invalidate every account, escaped": lambda md: w.stub.InvalidatePattern(
            cache_pb2.CacheInvalidatePatternRequest(pattern="acc\\ount:*"), metadata=md
        ),
    }
    failures = []
    for attacker, metadata in attackers(w).items():
        for what, write in writes.items():
            code = await code_of(write(metadata))
            if code not in REFUSED:
                failures.append(f"{attacker}: {what}: {code}")
        # InvalidatePattern("*") by a caller that may use the cache is confined to its own
        # namespace (it succeeds, touching nothing else); by anyone else it is refused.
        code = await code_of(
            w.stub.InvalidatePattern(cache_pb2.CacheInvalidatePatternRequest(pattern="*"), metadata=metadata)
        )
        valid = attacker == "alice's key" or attacker.startswith("service ")
        if code != (grpc.StatusCode.OK if valid else grpc.StatusCode.UNAUTHENTICATED):
            failures.append(f"{attacker}: InvalidatePattern('*'): {code}")
    assert not failures, "\n".join(failures)
    assert await w.snapshot() == before
    assert await w.raw("harmless") is None  # the refused batch wrote none of its entries
    # ... and the accounts still work: alice's key still resolves to alice.
    reply = await w.stub.Set(
        cache_pb2.CacheSetRequest(key="mine", value=b"1"), metadata=key_credentials(w.keys["alice"]).metadata
    )
    assert reply.applied and await w.raw("acct:alice:mine") == b"1"


async def test_reads_of_key_material_and_other_accounts_are_refused(world: World) -> None:
    w = world
    secret = load_suite_secret()
    alice_row = "apikey:" + secret.api_key_hash(w.keys["alice"])
    keyinfo = f"keyinfo:{w.key_ids['bob']}"
    alice_md = key_credentials(w.keys["alice"]).metadata
    refused: dict[str, list[str]] = {
        "alice's key": [alice_row, keyinfo, "account:bob", "account:alice", "instrument:BTCUSDT"],
        "service scaler": [alice_row, keyinfo],
        "service cache": [alice_row, keyinfo],
        "service feed": [alice_row, keyinfo],
    }
    md = {
        "alice's key": alice_md,
        **{f"service {s}": credentials_for(s).metadata for s in ("scaler", "cache", "feed")},
    }
    for who, keys in refused.items():
        for key in keys:
            for call in (
                w.stub.Get(cache_pb2.CacheGetRequest(key=key), metadata=md[who]),
                w.stub.GetMany(cache_pb2.CacheGetManyRequest(keys=["fine", key]), metadata=md[who]),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, (who, key)
                assert "may not read" in (info.value.details() or "")
    # Key readers read key rows; every service reads accounts and instruments.
    for service in ("execution", "marketdata", "gateway"):
        reply = await w.stub.Get(
            cache_pb2.CacheGetRequest(key=alice_row), metadata=credentials_for(service).metadata
        )
        assert reply.found and reply.entry.value == b"alice" and reply.entry.key == alice_row
    for service in NON_ADMIN_SERVICES:
        reply = await w.stub.GetMany(
            cache_pb2.CacheGetManyRequest(keys=["account:bob", "instrument:BTCUSDT"]),
            metadata=credentials_for(service).metadata,
        )
        assert all(r.found for r in reply.results), service
    # Alice "reading bob's namespace" reads her own: bob's value never comes back.
    for key in ("acct:bob:secret", "../acct:bob:secret", "svc:execution:secret"):
        reply = await w.stub.Get(cache_pb2.CacheGetRequest(key=key), metadata=alice_md)
        assert not reply.found, key
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await w.stub.Stats(cache_pb2.CacheStatsRequest(), metadata=alice_md)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_namespaces_are_transparent_and_an_escape_lands_in_ones_own(world: World) -> None:
    w = world
    alice = key_credentials(w.keys["alice"]).metadata
    bob = key_credentials(w.keys["bob"]).metadata
    execution = credentials_for("execution").metadata
    await w.stub.Set(cache_pb2.CacheSetRequest(key="orders", value=b"a"), metadata=alice)
    await w.stub.Set(cache_pb2.CacheSetRequest(key="orders", value=b"b"), metadata=bob)
    await w.stub.Set(cache_pb2.CacheSetRequest(key="orders", value=b"e"), metadata=execution)
    # The "escape": alice writes bob's stored name; it lands under hers.
    await w.stub.Set(cache_pb2.CacheSetRequest(key="acct:bob:secret", value=b"evil"), metadata=alice)
    assert await w.raw("acct:alice:orders") == b"a"
    assert await w.raw("acct:bob:orders") == b"b"
    assert await w.raw("svc:execution:orders") == b"e"
    assert await w.raw("acct:alice:acct:bob:secret") == b"evil"
    assert await w.raw("acct:bob:secret") == b"bob's"
    reply = await w.stub.Get(cache_pb2.CacheGetRequest(key="orders"), metadata=alice)
    assert reply.entry.value == b"a" and reply.entry.key == "orders"  # answers use the caller's names
    many = await w.stub.GetMany(cache_pb2.CacheGetManyRequest(keys=["orders", "nope"]), metadata=bob)
    assert [r.entry.key for r in many.results if r.found] == ["orders"] and many.results[
        0
    ].entry.value == b"b"
    # alice's "*" removes her keys only.
    outcome = await w.stub.InvalidatePattern(
        cache_pb2.CacheInvalidatePatternRequest(pattern="*"), metadata=alice
    )
    assert outcome.l3_removed == 2
    assert await w.raw("acct:alice:orders") is None
    assert await w.raw("acct:bob:orders") == b"b" and await w.raw("svc:execution:orders") == b"e"
    assert await w.raw("acct:bob:secret") == b"bob's" and await w.raw("account:alice") is not None
    # Delete is namespaced too.
    await w.stub.Delete(cache_pb2.CacheDeleteRequest(key="orders"), metadata=execution)
    assert await w.raw("svc:execution:orders") is None and await w.raw("acct:bob:orders") == b"b"


async def test_a_namespace_prefix_never_pushes_a_key_past_the_limit(world: World) -> None:
    w = world
    limit = 128  # replica_config's max_key_bytes
    alice = key_credentials(w.keys["alice"]).metadata
    for md in (alice, credentials_for("execution").metadata):
        reply = await w.stub.Set(cache_pb2.CacheSetRequest(key="k" * limit, value=b"v"), metadata=md)
        assert reply.applied
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await w.stub.Set(cache_pb2.CacheSetRequest(key="k" * (limit + 1), value=b"v"), metadata=md)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == f"key: is {limit + 1} bytes, more than the limit of {limit}"
    assert await w.raw("acct:alice:" + "k" * limit) == b"v"  # admin names stored keys: its limit is larger
    assert await w.raw("svc:execution:" + "k" * limit) == b"v"


async def test_watchers_hear_only_what_they_may_hold(world: World) -> None:
    w = world
    alice = key_credentials(w.keys["alice"]).metadata
    bob = key_credentials(w.keys["bob"]).metadata
    streams = {
        "alice": w.stub.WatchInvalidations(
            cache_pb2.CacheWatchInvalidationsRequest(watcher_name="a"), metadata=alice
        ),
        "execution": w.stub.WatchInvalidations(
            cache_pb2.CacheWatchInvalidationsRequest(watcher_name="e"),
            metadata=credentials_for("execution").metadata,
        ),
        "scaler": w.stub.WatchInvalidations(
            cache_pb2.CacheWatchInvalidationsRequest(watcher_name="s"),
            metadata=credentials_for("scaler").metadata,
        ),
    }
    for stream in streams.values():
        first = await asyncio.wait_for(stream.read(), 5)
        assert first.flush_all and first.sequence == 1
    await w.stub.Set(cache_pb2.CacheSetRequest(key="orders", value=b"b"), metadata=bob)  # bob's: nobody here
    await w.stub.Set(cache_pb2.CacheSetRequest(key="apikey:" + "f" * 64, value=b"bob"), metadata=w.admin)
    await w.stub.Set(cache_pb2.CacheSetRequest(key="instrument:ETHUSDT", value=b"{}"), metadata=w.admin)
    await w.stub.Set(cache_pb2.CacheSetRequest(key="orders", value=b"a"), metadata=alice)
    await w.stub.InvalidatePattern(cache_pb2.CacheInvalidatePatternRequest(pattern="x*"), metadata=alice)
    await w.stub.InvalidatePattern(
        cache_pb2.CacheInvalidatePatternRequest(pattern="acct:*"), metadata=w.admin
    )

    # Sentinels: each watcher reads until its own; Redis's tracking may repeat a key meanwhile.
    await w.stub.Set(cache_pb2.CacheSetRequest(key="zz-end", value=b"1"), metadata=alice)
    await w.stub.Set(cache_pb2.CacheSetRequest(key="instrument:ZZEND", value=b"{}"), metadata=w.admin)

    async def heard(name: str, sentinel: str) -> tuple[set[str], list[str], int]:
        keys: set[str] = set()
        patterns: list[str] = []
        flushes = 0
        expected = 2
        while sentinel not in keys:
            message = await asyncio.wait_for(streams[name].read(), 5)
            assert message.sequence == expected  # what it may not see leaves no gap
            expected += 1
            keys.update(message.keys)
            patterns += [message.pattern] if message.pattern else []
            flushes += message.flush_all
        return keys, patterns, flushes

    keys, patterns, flushes = await heard("alice", "zz-end")
    assert keys == {"orders", "zz-end"} and patterns == ["x*"]  # in her terms
    assert flushes == 1  # admin's "acct:*" may cover her keys: she flushes
    keys, patterns, flushes = await heard("execution", "instrument:ZZEND")
    assert keys == {"apikey:" + "f" * 64, "instrument:ETHUSDT", "instrument:ZZEND"}
    assert (patterns, flushes) == ([], 0)
    keys, patterns, flushes = await heard("scaler", "instrument:ZZEND")
    assert keys == {"instrument:ETHUSDT", "instrument:ZZEND"}  # key rows are not its business
    for stream in streams.values():
        stream.cancel()


async def test_watcher_name_is_bounded(world: World) -> None:
    stream = world.stub.WatchInvalidations(
        cache_pb2.CacheWatchInvalidationsRequest(watcher_name="n" * 129),
        metadata=credentials_for("execution").metadata,
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream.read()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "watcher_name" in (info.value.details() or "")


async def test_the_client_with_credentials_works_and_without_is_refused(
    world: World, connect: Connect
) -> None:
    alice = await connect(world.replica.port, "alice", key_credentials(world.keys["alice"]))
    assert (await alice.set("orders", b"1")).applied
    assert await alice.get("orders") == b"1"
    assert await world.raw("acct:alice:orders") == b"1"
    stranger = CacheClient(f"127.0.0.1:{world.replica.port}", reconnect_backoff_initial_ms=20)
    await stranger.start(wait_s=0.3)
    try:
        assert not stranger.live  # its invalidation stream is refused too
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stranger.get("orders")
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await stranger.close()


async def test_the_embedded_redis_requires_its_password(
    replica_config: CacheConfig, start_replica: StartReplica
) -> None:
    import redis.asyncio as aioredis
    from redis.exceptions import AuthenticationError, ResponseError

    replica = await start_replica(replica_config, redis_url="")
    assert replica.cache is not None and replica.cache.l2 is not None
    url = replica.cache.l2.url
    password = load_suite_secret().redis_password()
    assert f":{password}@" in url
    bare = aioredis.Redis.from_url(url.replace(f":{password}@", ""))
    try:
        with pytest.raises((AuthenticationError, ResponseError)):
            await bare.ping()
    finally:
        await bare.aclose()
    conf = os.path.join(replica_config.state_dir, "redis", "redis.conf")
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600


# --- the policy itself ---------------------------------------------------------------------
def test_namespace_patterns_are_confined_and_translated_back() -> None:
    alice = Namespace.account("alice")
    assert alice.write_pattern("*") == "acct:alice:*"
    assert globs.matches(alice.write_pattern("*"), "acct:alice:x")
    assert not globs.matches(alice.write_pattern("*"), "acct:bob:x")
    with pytest.raises(Denied):
        alice.write_pattern("account:*")
    assert alice.view_pattern("acct:alice:x*") == "x*"
    assert alice.view_pattern("acct:*") is FLUSH
    assert alice.view_pattern("*") is FLUSH
    assert alice.view_pattern("acct:bob:*") is None
    assert alice.view_pattern("instrument:*") is None
    execution = Namespace.service("execution")
    assert execution.view_pattern("instrument:*") == "instrument:*"
    assert execution.view_pattern("i*") is FLUSH
    assert execution.view_keys(("svc:execution:a", "svc:marketdata:b", "apikey:x", "acct:a:b")) == (
        "a",
        "apikey:x",
    )
    assert Namespace.service("scaler").view_keys(("apikey:x", "keyinfo:y", "account:z")) == ("account:z",)
    for bad in ("a:b", "a*", "", "x" * 65):
        with pytest.raises(Denied):
            Namespace.account(bad)


async def test_account_resolver_keeps_answers_briefly_and_boundedly() -> None:
    now = [0.0]
    rows = {"h1": "alice", "h2": "bob", "h3": "carol"}
    reads: list[str] = []

    async def lookup(key_hash: str) -> str | None:
        reads.append(key_hash)
        return rows.get(key_hash)

    resolver = AccountResolver(lookup, ttl_ms=1_000, max_entries=2, now_s=lambda: now[0])
    assert await resolver.account_of("h1") == "alice"
    assert await resolver.account_of("h1") == "alice" and reads == ["h1"]
    del rows["h1"]  # revoked elsewhere: still known until the TTL passes
    now[0] = 1.5
    with pytest.raises(Unauthenticated):
        await resolver.account_of("h1")
    for h in ("h2", "h3", "h2"):
        await resolver.account_of(h)
    assert len(resolver) == 2
    resolver.forget("h2")
    with pytest.raises(Unauthenticated):
        await resolver.account_of("nope")
    assert len(resolver) == 1


def test_credentials_in_tests_come_from_the_session_secret() -> None:
    creds: ClientCredentials = credentials_for("execution")
    assert load_suite_secret().verify_token(creds.metadata[0][1]) == "execution"
