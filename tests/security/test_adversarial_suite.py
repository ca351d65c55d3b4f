"""The security model of issue #12 attacked as a hostile client would, across the real suite.

One suite (cache, market data, execution as processes, dev profile, see conftest.py) is
attacked from Python's gRPC and with raw bytes: no credentials, forged tokens, another
suite's tokens, revoked and rotated-out keys, other services' identities, every reference
write of issue #12 part 1 through the cache, cross-account reads, hostile market data
publishers, and the admin CLI with the wrong secret. Every attack must be refused with
UNAUTHENTICATED or PERMISSION_DENIED (NOT_FOUND where existence must not leak) and change
nothing: each test checks afterwards, through the admin API or as the legitimate owner, that
the rows, the orders and the market data are as they were, and that alice still trades.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hftgate.v1 import (
    admin_pb2,
    cache_pb2,
    common_pb2,
    execution_pb2,
    marketdata_pb2,
    marketdata_pb2_grpc,
)
from services.execution.reference import AccountSpec, InstrumentSpec, encode_spec
from tests.security.conftest import FEED_SYMBOL_QUOTA, Suite
from tests.security.helpers import (
    OTHER_SUITE,
    Metadata,
    api_key,
    demo_key,
    forged_tokens,
    limit_order,
    refused,
    token,
)

UNAUTHENTICATED = {grpc.StatusCode.UNAUTHENTICATED}
DENIED = {grpc.StatusCode.PERMISSION_DENIED}
REFUSED = UNAUTHENTICATED | DENIED
NOT_FOUND = {grpc.StatusCode.NOT_FOUND}
#: How long a revoked (or rotated-out) key may still be accepted by the execution service.
REVOCATION_BOUND_S = 3.0
HFTGATE_CLI = str(Path(sys.executable).with_name("hftgate"))
U64_MAX = 2**64 - 1
MiB = 1024 * 1024

ex = execution_pb2
md = marketdata_pb2


# --- small helpers ------------------------------------------------------------------------------
def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def submit(suite: Suite, key: str, order: ex.NewOrder) -> ex.OrderAck:
    reply = suite.execution.SubmitOrder(ex.SubmitOrderRequest(order=order), metadata=api_key(key), timeout=15)
    return reply.ack


def rest(suite: Suite, account: str, price_ticks: int = 1_000_000, quantity_lots: int = 7) -> ex.OrderAck:
    """A GTC buy of ``account`` far below the market that stays open (nobody sells that low)."""
    ack = submit(
        suite,
        demo_key(account),
        limit_order(unique(f"{account}-rest"), price_ticks=price_ticks, quantity_lots=quantity_lots),
    )
    assert ack.status == ex.ORDER_STATUS_NEW, ack
    return ack


def order_of(suite: Suite, account: str, order_id: int) -> ex.Order:
    reply = suite.execution.GetOrder(
        ex.GetOrderRequest(order_id=order_id), metadata=api_key(demo_key(account)), timeout=15
    )
    return reply.order


def assert_untouched(suite: Suite, account: str, ack: ex.OrderAck) -> None:
    """The owner still sees its order open, at its price and size."""
    order = order_of(suite, account, ack.order_id)
    assert order.status == ex.ORDER_STATUS_NEW, order
    assert order.leaves_quantity_lots == ack.quantity_lots
    assert order.request.price_ticks == ack.price_ticks
    assert order.request.client_order_id == ack.client_order_id


def assert_trades(suite: Suite, account: str) -> None:
    """``account`` can still place (and then cancels) an order with its own key."""
    ack = rest(suite, account, price_ticks=1_000_100)
    reply = suite.execution.CancelOrder(
        ex.CancelOrderRequest(order_id=ack.order_id), metadata=api_key(demo_key(account)), timeout=15
    )
    assert reply.ack.status == ex.ORDER_STATUS_CANCELED, reply


def reference_rows(suite: Suite) -> dict[str, bytes | None]:
    """The rows an attacker of part 1 goes after, as the operator reads them."""
    keys = [
        "account:alice",
        "account:bob",
        "instrument:BTCUSDT",
        "instrument:EVILUSDT",
        f"apikey:{suite.secret.api_key_hash(demo_key('alice'))}",
        f"apikey:{suite.secret.api_key_hash(demo_key('bob'))}",
    ]
    return {key: suite.raw_row(key) for key in keys}


def audit_ids(suite: Suite) -> set[int]:
    return {row.id for row in suite.audit()}


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout_s``."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"not within {timeout_s} s")
        time.sleep(interval_s)


def execution_refuses(suite: Suite, key: str) -> bool:
    """True when the execution service refuses ``key`` (UNAUTHENTICATED), False when it accepts it."""
    try:
        suite.execution.GetOrder(ex.GetOrderRequest(order_id=1), metadata=api_key(key), timeout=15)
    except grpc.RpcError as exc:
        assert isinstance(exc, grpc.Call)
        if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
            return True
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc  # the key worked; order 1 is not its own
        return False
    return False


def shape(message: str) -> str:
    """A status message with its numbers and quoted names masked: what may differ between two ids."""
    return re.sub(r"\d+", "N", re.sub(r"'[^']*'", "'X'", message))


def attackers(suite: Suite) -> dict[str, tuple[Metadata, set[grpc.StatusCode]]]:
    """Every kind of caller that must not write reference rows, with the refusal it must get."""
    out: dict[str, tuple[Metadata, set[grpc.StatusCode]]] = {
        "no credential": ((), UNAUTHENTICATED),
        "an unknown API key": (api_key("hftgate-made-up-by-mallory"), UNAUTHENTICATED),
        "bob's API key": (api_key(demo_key("bob")), DENIED),
        # The interceptor checks one token and the servicer reads another: neither may win.
        "a forged admin token before a real feed token": (
            (("x-hftgate-service-token", "admin." + "cd" * 32), *suite.token("feed")),
            REFUSED,
        ),
        "a real feed token before a forged admin token": (
            (*suite.token("feed"), ("x-hftgate-service-token", "admin." + "cd" * 32)),
            REFUSED,
        ),
    }
    for name, metadata in forged_tokens(suite.secret).items():
        out[f"forged token ({name})"] = (metadata, UNAUTHENTICATED)
    for principal in ("execution", "marketdata", "feed", "gateway", "scaler", "cache"):
        out[f"the {principal} service"] = (suite.token(principal), DENIED)
    return out


# --- credentials ----------------------------------------------------------------------------------
PROBES: dict[str, list[tuple[str, bytes]]] = {
    # (method, a valid serialized request) per service: what an attacker calls first.
    "cache": [
        ("/hftgate.v1.CacheService/Get", cache_pb2.CacheGetRequest(key="account:alice").SerializeToString()),
        (
            "/hftgate.v1.CacheService/Set",
            cache_pb2.CacheSetRequest(key="account:alice", value=b"{}").SerializeToString(),
        ),
        ("/hftgate.v1.CacheService/Stats", b""),
        ("/hftgate.v1.AdminService/ListAccounts", b""),
        (
            "/hftgate.v1.AdminService/AddAccount",
            admin_pb2.AddAccountRequest(name="mallory").SerializeToString(),
        ),
    ],
    "execution": [
        (
            "/hftgate.v1.ExecutionService/SubmitOrder",
            ex.SubmitOrderRequest(order=limit_order("x")).SerializeToString(),
        ),
        ("/hftgate.v1.ExecutionService/GetOrder", ex.GetOrderRequest(order_id=1).SerializeToString()),
        ("/hftgate.v1.ExecutionService/GetStats", b""),
    ],
    "marketdata": [
        ("/hftgate.v1.MarketDataService/GetSnapshot", b""),
        ("/hftgate.v1.MarketDataService/GetVwap", b""),
    ],
}


def test_calls_without_a_valid_credential_are_refused_before_decoding(suite: Suite) -> None:
    """No credential, forged tokens and another suite's tokens: UNAUTHENTICATED on every service,
    with valid requests and with raw bytes that are no request at all (refused before decoding,
    so not INVALID_ARGUMENT); a valid account key beside a forged token is refused too."""
    before_rows, before_audit = reference_rows(suite), audit_ids(suite)
    callers: dict[str, Metadata] = {"none": (), **forged_tokens(suite.secret)}
    callers["another suite's execution token"] = token(OTHER_SUITE, "execution")
    callers["forged token beside alice's valid key"] = (
        *forged_tokens(suite.secret)["made-up mac"],
        *api_key(demo_key("alice")),
    )
    for service, probes in PROBES.items():
        channel = suite.channel(service)
        for method, request in probes:
            call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            for who, metadata in callers.items():
                for body in (request, b"\xff\xfe garbage \x00" * 3):
                    error = refused(call, body, metadata, UNAUTHENTICATED)
                    assert error.code() != grpc.StatusCode.INVALID_ARGUMENT, (service, method, who)
    # Streams too: a forged publisher and a forged reader are refused before a message is read.
    refused(
        suite.marketdata.PublishTrades,
        iter([md.PublishTradesRequest()]),
        token(OTHER_SUITE, "feed"),
        UNAUTHENTICATED,
    )
    with pytest.raises(grpc.RpcError) as stream_error:
        next(iter(suite.execution.StreamExecutions(ex.StreamExecutionsRequest(), timeout=15)))
    assert stream_error.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    # Health stays open (balancers probe it) and says nothing else.
    for address in suite.addresses.values():
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=15)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert "mallory" not in suite.accounts()
    assert reference_rows(suite) == before_rows
    assert audit_ids(suite) == before_audit
    assert_trades(suite, "alice")


def test_unknown_oversized_and_other_suites_api_keys_are_unauthenticated(suite: Suite) -> None:
    """An API key the suite never issued (including a demo key's name with another suite's hash
    in mind, a 4 KiB key and an empty one) is refused by every service."""
    keys = ["hftgate-demo-mallory", "hftgate-demo-alice ", "HFTGATE-DEMO-ALICE", "k" * 4_096, ""]
    for key in keys:
        metadata = api_key(key)
        refused(
            suite.execution.SubmitOrder,
            ex.SubmitOrderRequest(order=limit_order("k")),
            metadata,
            UNAUTHENTICATED,
        )
        refused(suite.cache.Get, cache_pb2.CacheGetRequest(key="note"), metadata, UNAUTHENTICATED)
        refused(suite.marketdata.GetSnapshot, md.GetSnapshotRequest(), metadata, UNAUTHENTICATED)


def test_raw_junk_on_the_wire_leaves_every_service_serving(suite: Suite) -> None:
    """Not HTTP/2, an HTTP/1 request, and an HTTP/2 preface followed by garbage frames, on each
    port: the connection is dropped and the service keeps serving its real callers."""
    junk = [
        b"\x00\xff" * 512,
        b"GET /hftgate.v1.AdminService/ListAccounts HTTP/1.1\r\nHost: x\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x01\x05\x00\x00\x00\x01" + b"\xde\xad" * 64,
    ]
    for address in suite.addresses.values():
        host, port = address.rsplit(":", 1)
        for payload in junk:
            with socket.create_connection((host, int(port)), timeout=5) as conn:
                conn.sendall(payload)
                conn.settimeout(2)
                try:
                    while conn.recv(65_536):
                        pass
                except (TimeoutError, ConnectionError):
                    pass
    assert set(suite.accounts()) >= {"alice", "bob", "carol", "dave"}
    assert_trades(suite, "alice")
    suite.marketdata.GetSnapshot(md.GetSnapshotRequest(), metadata=suite.token("gateway"), timeout=15)


# --- keys: revoked and rotated ----------------------------------------------------------------------
def test_a_revoked_key_is_refused_by_every_service_within_the_bound(suite: Suite) -> None:
    issued = suite.admin.IssueKey(
        admin_pb2.IssueKeyRequest(account="alice"), metadata=suite.as_admin, timeout=15
    )
    key = issued.api_key
    # It works, as alice, everywhere an account key is accepted.
    ack = submit(suite, key, limit_order(unique("issued"), price_ticks=1_000_200))
    assert ack.status == ex.ORDER_STATUS_NEW, ack
    assert order_of(suite, "alice", ack.order_id).order_id == ack.order_id  # alice's own order
    suite.cache.Set(
        cache_pb2.CacheSetRequest(key="via-issued-key", value=b"1"), metadata=api_key(key), timeout=15
    )
    suite.marketdata.GetSnapshot(md.GetSnapshotRequest(), metadata=api_key(key), timeout=15)

    suite.admin.RevokeKey(
        admin_pb2.RevokeKeyRequest(key_id=issued.info.key_id), metadata=suite.as_admin, timeout=15
    )
    revoked_at = time.monotonic()
    took = wait_until(lambda: execution_refuses(suite, key), timeout_s=REVOCATION_BOUND_S + 10)
    assert took < REVOCATION_BOUND_S, f"execution accepted a revoked key for {took:.2f} s"
    for _ in range(5):  # and it stays refused
        refused(
            suite.execution.CancelOrder,
            ex.CancelOrderRequest(order_id=ack.order_id),
            api_key(key),
            UNAUTHENTICATED,
        )
    # The cache forgets it at once on the replica that revoked it; market data within its
    # documented key cache (5 s) at worst.
    refused(suite.cache.Get, cache_pb2.CacheGetRequest(key="via-issued-key"), api_key(key), UNAUTHENTICATED)

    def marketdata_refuses() -> bool:
        try:
            suite.marketdata.GetSnapshot(md.GetSnapshotRequest(), metadata=api_key(key), timeout=15)
        except grpc.RpcError as exc:
            return exc.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined, no-any-return]
        return False

    wait_until(marketdata_refuses, timeout_s=max(0.0, 5.0 + 5.0 - (time.monotonic() - revoked_at)))
    # Its registry entry is gone, revoking it again finds nothing, alice's own key still trades,
    # and the order placed with the revoked key is still alice's and still open.
    listed = suite.admin.ListKeys(
        admin_pb2.ListKeysRequest(account="alice"), metadata=suite.as_admin, timeout=15
    )
    assert issued.info.key_id not in {k.key_id for k in listed.keys}
    refused(
        suite.admin.RevokeKey,
        admin_pb2.RevokeKeyRequest(key_id=issued.info.key_id),
        suite.as_admin,
        NOT_FOUND,
    )
    assert_untouched(suite, "alice", ack)
    assert_trades(suite, "alice")
    actions = [(r.actor, r.action) for r in suite.audit(20) if r.target == f"keyinfo:{issued.info.key_id}"]
    assert sorted(actions) == [("admin", "keys.issue"), ("admin", "keys.revoke")]


def test_a_rotated_key_is_refused_after_its_overlap_window(suite: Suite) -> None:
    issued = suite.admin.IssueKey(
        admin_pb2.IssueKeyRequest(account="bob"), metadata=suite.as_admin, timeout=15
    )
    old = issued.api_key
    assert not execution_refuses(suite, old)
    overlap_s = 2.0
    rotated = suite.admin.RotateKey(
        admin_pb2.RotateKeyRequest(key_id=issued.info.key_id, overlap_ms=int(overlap_s * 1000)),
        metadata=suite.as_admin,
        timeout=15,
    )
    rotated_at = time.monotonic()
    new = rotated.api_key
    assert new != old and rotated.previous.replaced_by == rotated.info.key_id
    old_accepted_in_window = not execution_refuses(suite, old)
    if time.monotonic() - rotated_at < overlap_s - 0.5:  # (a slow machine may already be past it)
        assert old_accepted_in_window, "the old key must keep working during the overlap"
    assert not execution_refuses(suite, new)
    wait_until(lambda: execution_refuses(suite, old), timeout_s=overlap_s + REVOCATION_BOUND_S + 10)
    took = time.monotonic() - rotated_at
    assert took < overlap_s + REVOCATION_BOUND_S, f"the old key worked {took:.2f} s after its rotation"
    refused(
        suite.execution.SubmitOrder,
        ex.SubmitOrderRequest(order=limit_order("old")),
        api_key(old),
        UNAUTHENTICATED,
    )
    refused(suite.cache.Get, cache_pb2.CacheGetRequest(key="x"), api_key(old), UNAUTHENTICATED)
    # The successor is bob's and keeps working.
    ack = submit(suite, new, limit_order(unique("rotated"), price_ticks=1_000_300))
    assert ack.status == ex.ORDER_STATUS_NEW
    assert order_of(suite, "bob", ack.order_id).status == ex.ORDER_STATUS_NEW


# --- other services' identities ---------------------------------------------------------------------
def admin_calls() -> list[tuple[str, Any]]:
    """Every AdminService call, each one an attack if anyone but admin makes it."""
    return [
        ("AddAccount", admin_pb2.AddAccountRequest(name="mallory")),
        ("SetKillSwitch", admin_pb2.SetKillSwitchRequest(name="alice", kill_switch=True)),
        ("SetAccountLimits", admin_pb2.SetAccountLimitsRequest(name="alice", max_open_orders=1)),
        ("IssueKey", admin_pb2.IssueKeyRequest(account="alice")),
        ("RevokeKey", admin_pb2.RevokeKeyRequest(key_id="0123456789abcdef")),
        ("RotateKey", admin_pb2.RotateKeyRequest(key_id="0123456789abcdef")),
        (
            "AddInstrument",
            admin_pb2.AddInstrumentRequest(instrument=admin_pb2.InstrumentDefinition(symbol="EVILUSDT")),
        ),
        ("SetTradingEnabled", admin_pb2.SetTradingEnabledRequest(symbol="BTCUSDT", trading_enabled=False)),
        ("ListAccounts", admin_pb2.ListAccountsRequest()),
        ("ListKeys", admin_pb2.ListKeysRequest(account="alice")),
        ("ListAudit", admin_pb2.ListAuditRequest()),
    ]


def test_no_identity_but_admin_may_use_the_admin_api(suite: Suite) -> None:
    before_rows, before_audit, before_accounts = reference_rows(suite), audit_ids(suite), suite.accounts()
    for who, (metadata, codes) in attackers(suite).items():
        if who == "bob's API key":
            codes = UNAUTHENTICATED  # the admin API takes no API key at all
        for method, request in admin_calls():
            error = refused(getattr(suite.admin, method), request, metadata, codes)
            if error.code() == grpc.StatusCode.PERMISSION_DENIED:
                assert "admin" in (error.details() or ""), error.details()
    assert suite.accounts() == before_accounts
    assert reference_rows(suite) == before_rows
    assert audit_ids(suite) == before_audit
    assert_trades(suite, "alice")


def test_service_identities_are_not_accounts(suite: Suite) -> None:
    """A service token (even admin's) places no order: the order path needs an account's key."""
    for principal in ("admin", "execution", "marketdata", "feed", "gateway", "scaler", "cache"):
        metadata = suite.token(principal)
        refused(
            suite.execution.SubmitOrder,
            ex.SubmitOrderRequest(order=limit_order("svc")),
            metadata,
            UNAUTHENTICATED,
        )
        refused(suite.execution.CancelAll, ex.CancelAllRequest(), metadata, UNAUTHENTICATED)


def test_services_read_only_the_reference_rows_they_need(suite: Suite) -> None:
    """Key material (apikey:, keyinfo:) is readable only by the services that check keys."""
    key_row = f"apikey:{suite.secret.api_key_hash(demo_key('alice'))}"
    key_info = "keyinfo:0123456789abcdef"
    for principal in ("feed", "scaler", "cache"):
        metadata = suite.token(principal)
        for key in (key_row, key_info):
            refused(suite.cache.Get, cache_pb2.CacheGetRequest(key=key), metadata, DENIED)
        refused(suite.cache.GetMany, cache_pb2.CacheGetManyRequest(keys=["mine", key_row]), metadata, DENIED)
        # ... while the public reference rows are theirs to read.
        reply = suite.cache.Get(
            cache_pb2.CacheGetRequest(key="instrument:BTCUSDT"), metadata=metadata, timeout=15
        )
        assert reply.found
    for principal in ("execution", "marketdata", "gateway"):
        reply = suite.cache.Get(
            cache_pb2.CacheGetRequest(key=key_row), metadata=suite.token(principal), timeout=15
        )
        assert reply.found and reply.entry.value == b"alice"
    # Accounts read no reference rows at all, not even their own account's.
    for key in (key_row, "account:bob", "instrument:BTCUSDT", key_info):
        refused(suite.cache.Get, cache_pb2.CacheGetRequest(key=key), api_key(demo_key("bob")), DENIED)
    refused(suite.cache.Stats, cache_pb2.CacheStatsRequest(), api_key(demo_key("bob")), DENIED)


# --- issue #12 part 1: every reference write through the cache -------------------------------------
def part1_writes(suite: Suite, mallory_key: str) -> list[tuple[str, str, Any]]:
    """(description, CacheService method, request) for each write of issue #12 part 1."""
    alice = json.loads(suite.raw_row("account:alice") or b"{}")
    bob = json.loads(suite.raw_row("account:bob") or b"{}")
    alice_row = f"apikey:{suite.secret.api_key_hash(demo_key('alice'))}"
    hijacked = encode_spec(AccountSpec(**{**alice, "account_id": bob["account_id"]}))
    killed = encode_spec(AccountSpec(**{**alice, "kill_switch": True}))
    btc = json.loads(suite.raw_row("instrument:BTCUSDT") or b"{}")
    halted = encode_spec(InstrumentSpec(**{**btc, "trading_enabled": False}))
    evil = encode_spec(InstrumentSpec(symbol="EVILUSDT"))
    mallory_rows = [
        f"apikey:{suite.secret.api_key_hash(mallory_key)}",  # the keyed hash (as if it leaked)
        f"apikey:{hashlib.sha256(mallory_key.encode()).hexdigest()}",  # the old plain hash
    ]
    writes: list[tuple[str, str, Any]] = []
    for row in mallory_rows:
        writes.append(
            (
                "an apikey: row of mallory's choosing for alice",
                "Set",
                cache_pb2.CacheSetRequest(key=row, value=b"alice"),
            )
        )
        writes.append(
            (
                "the same, cache-only",
                "Set",
                cache_pb2.CacheSetRequest(key=row, value=b"alice", cache_only=True),
            )
        )
        writes.append(
            (
                "the same, hidden in a batch behind an own key",
                "SetMany",
                cache_pb2.CacheSetManyRequest(
                    entries=[
                        cache_pb2.CacheSetRequest(key="harmless", value=b"1"),
                        cache_pb2.CacheSetRequest(key=row, value=b"alice"),
                    ]
                ),
            )
        )
    writes += [
        (
            "account:alice with bob's account_id",
            "Set",
            cache_pb2.CacheSetRequest(key="account:alice", value=hijacked),
        ),
        ("alice's kill switch on", "Set", cache_pb2.CacheSetRequest(key="account:alice", value=killed)),
        ("BTCUSDT halted", "Set", cache_pb2.CacheSetRequest(key="instrument:BTCUSDT", value=halted)),
        ("EVILUSDT created", "Set", cache_pb2.CacheSetRequest(key="instrument:EVILUSDT", value=evil)),
        ("a keyinfo: row", "Set", cache_pb2.CacheSetRequest(key="keyinfo:0123456789abcdef", value=b"{}")),
        ("alice's key row deleted", "Delete", cache_pb2.CacheDeleteRequest(key=alice_row)),
        ("account:alice deleted", "Delete", cache_pb2.CacheDeleteRequest(key="account:alice")),
        ("instrument:BTCUSDT deleted", "Delete", cache_pb2.CacheDeleteRequest(key="instrument:BTCUSDT")),
        (
            "every key row invalidated",
            "InvalidatePattern",
            cache_pb2.CacheInvalidatePatternRequest(pattern="apikey:*"),
        ),
        (
            "every account invalidated",
            "InvalidatePattern",
            cache_pb2.CacheInvalidatePatternRequest(pattern="account:*"),
        ),
        (
            "instruments invalidated",
            "InvalidatePattern",
            cache_pb2.CacheInvalidatePatternRequest(pattern="instrument:B*"),
        ),
        (
            "key registry invalidated",
            "InvalidatePattern",
            cache_pb2.CacheInvalidatePatternRequest(pattern="keyinfo:*"),
        ),
    ]
    return writes


def test_every_part1_write_through_the_cache_is_refused_and_alice_still_trades(suite: Suite) -> None:
    victim = rest(suite, "alice")
    mallory_key = "mallory-" + uuid.uuid4().hex
    before_rows, before_audit, before_accounts = reference_rows(suite), audit_ids(suite), suite.accounts()
    writes = part1_writes(suite, mallory_key)
    for who, (metadata, codes) in attackers(suite).items():
        for what, method, request in writes:
            try:
                refused(getattr(suite.cache, method), request, metadata, codes)
            except AssertionError as exc:
                raise AssertionError(f"{who}: {what}: {exc}") from None
        # InvalidatePattern("*"): refused without a valid identity; with one, confined to the
        # caller's own namespace (it is not refused, and it must reach no reference row).
        star = cache_pb2.CacheInvalidatePatternRequest(pattern="*", keep_durable=False)
        if codes == UNAUTHENTICATED:
            refused(suite.cache.InvalidatePattern, star, metadata, UNAUTHENTICATED)
        elif codes == DENIED:  # a real identity (the two-token callers are refused above)
            suite.cache.InvalidatePattern(star, metadata=metadata, timeout=15)
    # Nothing changed: the rows, the accounts, the audit log; the batch wrote nothing either.
    assert reference_rows(suite) == before_rows
    assert suite.accounts() == before_accounts
    assert audit_ids(suite) == before_audit
    for principal in ("execution", "marketdata", "feed"):
        assert not suite.cache.Get(
            cache_pb2.CacheGetRequest(key="harmless"), metadata=suite.token(principal), timeout=15
        ).found
    for row in (
        f"apikey:{suite.secret.api_key_hash(mallory_key)}",
        f"apikey:{hashlib.sha256(mallory_key.encode()).hexdigest()}",
    ):
        assert suite.raw_row(row) is None
    # Mallory's key opens nothing, so alice's order cannot be canceled with it.
    for call, request in (
        (suite.execution.CancelOrder, ex.CancelOrderRequest(order_id=victim.order_id)),
        (suite.execution.CancelAll, ex.CancelAllRequest()),
        (suite.execution.GetOrder, ex.GetOrderRequest(order_id=victim.order_id)),
    ):
        refused(call, request, api_key(mallory_key), UNAUTHENTICATED)
    assert_untouched(suite, "alice", victim)
    # Alice still trades on BTCUSDT (not halted, not killed) and EVILUSDT does not exist.
    assert_trades(suite, "alice")
    evil = submit(suite, demo_key("alice"), limit_order(unique("evil"), symbol="EVILUSDT"))
    assert evil.status == ex.ORDER_STATUS_REJECTED and evil.reason == common_pb2.REJECT_REASON_UNKNOWN_SYMBOL
    accounts = suite.accounts()
    assert not accounts["alice"].kill_switch and accounts["alice"].account_id != accounts["bob"].account_id


# --- cross-account reads ----------------------------------------------------------------------------
def test_another_accounts_orders_answer_exactly_like_missing_ones(suite: Suite) -> None:
    victim = rest(suite, "alice", quantity_lots=11)
    missing_id = victim.order_id + 1_000_000
    missing_client_id = "x" * len(victim.client_order_id)
    bob = api_key(demo_key("bob"))
    mine = rest(suite, "bob", price_ticks=1_000_400)  # bob's own, so his streams have something
    calls: list[tuple[str, Callable[..., Any], Callable[..., Any]]] = [
        ("GetOrder", suite.execution.GetOrder, ex.GetOrderRequest),
        ("CancelOrder", suite.execution.CancelOrder, ex.CancelOrderRequest),
        (
            "ReplaceOrder",
            suite.execution.ReplaceOrder,
            lambda **kw: ex.ReplaceOrderRequest(price_ticks=1_000_001, quantity_lots=1, **kw),
        ),
    ]
    for name, call, make in calls:
        theirs = refused(call, make(order_id=victim.order_id), bob, NOT_FOUND)
        nobodys = refused(call, make(order_id=missing_id), bob, NOT_FOUND)
        assert shape(theirs.details() or "") == shape(nobodys.details() or ""), name
        assert str(victim.order_id) in (theirs.details() or "")  # it names the id asked about, no more
        theirs = refused(call, make(client_order_id=victim.client_order_id), bob, NOT_FOUND)
        nobodys = refused(call, make(client_order_id=missing_client_id), bob, NOT_FOUND)
        assert shape(theirs.details() or "") == shape(nobodys.details() or ""), name
    # CancelAll cancels bob's own order only.
    reply = suite.execution.CancelAll(ex.CancelAllRequest(), metadata=bob, timeout=15)
    assert victim.order_id not in reply.canceled_order_ids and mine.order_id in reply.canceled_order_ids

    # A cancel and a replace of alice's order on bob's OrderStream are rejected inputs.
    stream_request = ex.OrderStreamRequest(inputs=stream_inputs(victim.order_id))
    acks = [
        ack
        for response in suite.execution.OrderStream(iter([stream_request]), metadata=bob, timeout=15)
        for ack in response.acks
    ]
    assert [a.status for a in acks] == [ex.ORDER_STATUS_REJECTED] * 2, acks
    assert all(a.order_id in (0, victim.order_id) and a.price_ticks == 0 for a in acks), acks
    # Bob's execution history and live stream never show alice's order.
    seen = list(stream_reports(suite, bob, seconds=1.5))
    assert mine.order_id in {r.order_id for r in seen}
    assert victim.order_id not in {r.order_id for r in seen}
    assert victim.client_order_id not in {r.client_order_id for r in seen}
    assert_untouched(suite, "alice", victim)


def stream_inputs(order_id: int) -> list[ex.OrderInput]:
    """A cancel and a replace of ``order_id``, as OrderStream inputs."""
    return [
        ex.OrderInput(cancel=ex.CancelOrderRequest(order_id=order_id)),
        ex.OrderInput(
            replace=ex.ReplaceOrderRequest(order_id=order_id, price_ticks=1_000_002, quantity_lots=1)
        ),
    ]


def test_order_stream_rejects_another_accounts_order_exactly_like_a_missing_one(suite: Suite) -> None:
    """Issue #12 part 4 on the stream path: a cancel or replace of another account's order id
    gets the reject of an id never used (same reason, same text), so sequential ids tell bob
    nothing about which orders exist."""
    victim = rest(suite, "alice", quantity_lots=13)
    missing_id = victim.order_id + 1_000_000
    bob = api_key(demo_key("bob"))
    request = ex.OrderStreamRequest(inputs=stream_inputs(victim.order_id) + stream_inputs(missing_id))
    acks = [
        ack
        for response in suite.execution.OrderStream(iter([request]), metadata=bob, timeout=15)
        for ack in response.acks
    ]
    assert [a.status for a in acks] == [ex.ORDER_STATUS_REJECTED] * 4, acks
    for theirs, nobodys in zip(acks[:2], acks[2:], strict=True):
        assert theirs.reason == nobodys.reason == common_pb2.REJECT_REASON_UNKNOWN_ORDER, (theirs, nobodys)
        assert shape(theirs.reason_text) == shape(nobodys.reason_text), (theirs, nobodys)
        assert (theirs.price_ticks, theirs.quantity_lots, theirs.leaves_quantity_lots) == (0, 0, 0), theirs
    assert_untouched(suite, "alice", victim)


def stream_reports(suite: Suite, metadata: Metadata, seconds: float) -> Iterator[ex.ExecutionReport]:
    """The reports a StreamExecutions call (history, then live) delivers in ``seconds``."""
    call = suite.execution.StreamExecutions(ex.StreamExecutionsRequest(), metadata=metadata, timeout=seconds)
    try:
        yield from call
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED, exc  # type: ignore[attr-defined]


def test_an_accounts_cache_namespace_is_invisible_to_another(suite: Suite) -> None:
    alice, bob = api_key(demo_key("alice")), api_key(demo_key("bob"))
    note = unique("note")
    suite.cache.Set(cache_pb2.CacheSetRequest(key=note, value=b"alice's secret"), metadata=alice, timeout=15)
    # Bob names her key plainly, by its stored name, and with patterns: none of it reaches hers.
    for key in (note, f"acct:alice:{note}", f"../acct:alice:{note}"):
        assert not suite.cache.Get(cache_pb2.CacheGetRequest(key=key), metadata=bob, timeout=15).found
    got = suite.cache.GetMany(
        cache_pb2.CacheGetManyRequest(keys=[note, f"acct:alice:{note}"]), metadata=bob, timeout=15
    )
    assert not any(r.found for r in got.results)
    suite.cache.Delete(cache_pb2.CacheDeleteRequest(key=note), metadata=bob, timeout=15)
    for pattern in ("*", "acct:alice:*", "[a]*", "*alice*"):
        suite.cache.InvalidatePattern(
            cache_pb2.CacheInvalidatePatternRequest(pattern=pattern), metadata=bob, timeout=15
        )
    suite.cache.Set(
        cache_pb2.CacheSetRequest(key=f"acct:alice:{note}", value=b"bob's"), metadata=bob, timeout=15
    )
    # Alice's value is intact, for her and in the operator's raw view; bob's "escape" is his own.
    reply = suite.cache.Get(cache_pb2.CacheGetRequest(key=note), metadata=alice, timeout=15)
    assert reply.found and reply.entry.value == b"alice's secret" and reply.entry.key == note
    assert suite.raw_row(f"acct:alice:{note}") == b"alice's secret"
    assert suite.raw_row(f"acct:bob:acct:alice:{note}") == b"bob's"
    # Bob's near cache, once subscribed, hears nothing of alice's changes: his own marker,
    # written after hers, is the first thing it hears.
    watch = suite.cache.WatchInvalidations(
        cache_pb2.CacheWatchInvalidationsRequest(watcher_name="bob"), metadata=bob, timeout=30
    )
    try:
        assert next(watch).reason == cache_pb2.CACHE_INVALIDATION_REASON_SUBSCRIBED
        suite.cache.Set(cache_pb2.CacheSetRequest(key=note, value=b"v2"), metadata=alice, timeout=15)
        suite.cache.Delete(cache_pb2.CacheDeleteRequest(key=note), metadata=alice, timeout=15)
        suite.cache.InvalidatePattern(
            cache_pb2.CacheInvalidatePatternRequest(pattern="*"), metadata=alice, timeout=15
        )
        marker = unique("bob-marker")
        suite.cache.Set(cache_pb2.CacheSetRequest(key=marker, value=b"1"), metadata=bob, timeout=15)
        first = next(watch)
    finally:
        watch.cancel()
    assert not first.flush_all and not first.pattern and list(first.keys) == [marker], first
    assert suite.raw_row(f"acct:bob:acct:alice:{note}") == b"bob's"


# --- market data --------------------------------------------------------------------------------------
def trade(venue: str, symbol: str, trade_id: int, price: float = 100.0, ts_ns: int | None = None) -> md.Trade:
    return md.Trade(
        venue=venue,
        symbol=symbol,
        exchange_ts_ns=ts_ns or time.time_ns(),
        trade_id=trade_id,
        price=price,
        size=1.0,
        aggressor_side=common_pb2.SIDE_BUY,
    )


def publish(suite: Suite, metadata: Metadata, trades: list[md.Trade]) -> md.PublishSummary:
    return suite.marketdata.PublishTrades(
        iter([md.PublishTradesRequest(trades=trades)]), metadata=metadata, timeout=60
    )


def rejects(summary: md.PublishSummary) -> dict[int, int]:
    return {r.reason: r.count for r in summary.rejected_by_reason}


def snapshot(suite: Suite, venue: str = "", name: str = "") -> md.GetSnapshotResponse:
    request = md.GetSnapshotRequest()
    if venue or name:
        request.filter.symbols.add(venue=venue, name=name)
    return suite.marketdata.GetSnapshot(request, metadata=suite.token("gateway"), timeout=15)


def tracked(suite: Suite) -> dict[tuple[str, str], Any]:
    return {(s.symbol.venue, s.symbol.name): s for s in snapshot(suite).symbols}


def cross(suite: Suite, symbol: str, price_ticks: int, lots: int = 10) -> int:
    """Bob rests a sell, alice lifts it: one real fill of the suite's own venue; its trade id."""
    sell = submit(
        suite,
        demo_key("bob"),
        limit_order(
            unique("sell"),
            side=common_pb2.SIDE_SELL,
            symbol=symbol,
            price_ticks=price_ticks,
            quantity_lots=lots,
        ),
    )
    assert sell.status == ex.ORDER_STATUS_NEW, sell
    buy = submit(
        suite,
        demo_key("alice"),
        limit_order(
            unique("buy"),
            symbol=symbol,
            price_ticks=price_ticks,
            quantity_lots=lots,
            time_in_force=ex.TIME_IN_FORCE_IOC,
        ),
    )
    assert buy.status == ex.ORDER_STATUS_FILLED, buy
    return buy.order_id


def test_only_publishers_publish_and_hftgate_only_from_execution(suite: Suite) -> None:
    """An account key, a forged or foreign token, and services that are no publishers cannot
    publish at all; the feed cannot publish the suite's own venue (the issue's repro: trade id
    2^64-1 on hftgate BTCUSDT); execution's real fills still arrive afterwards."""
    before = tracked(suite)
    evil = [trade("hftgate", "BTCUSDT", U64_MAX, price=1.0), trade("hftgate", "NEWSYM", 1)]
    for metadata in (
        api_key(demo_key("alice")),
        (),
        token(OTHER_SUITE, "execution"),
        *forged_tokens(suite.secret).values(),
    ):
        refused(
            suite.marketdata.PublishTrades,
            iter([md.PublishTradesRequest(trades=evil)]),
            metadata,
            UNAUTHENTICATED,
        )
    for principal in ("admin", "marketdata", "cache", "gateway", "scaler"):
        refused(
            suite.marketdata.PublishTrades,
            iter([md.PublishTradesRequest(trades=evil)]),
            suite.token(principal),
            DENIED,
        )
        refused(
            suite.marketdata.PublishQuotes, iter([md.PublishQuotesRequest()]), suite.token(principal), DENIED
        )
    summary = publish(suite, suite.token("feed"), evil)
    assert summary.accepted == 0 and rejects(summary) == {md.TICK_REJECT_REASON_VENUE_NOT_ALLOWED: 2}
    assert tracked(suite).keys() == before.keys()
    # The suite's own fills still go through: a real cross shows up with its real trade id.
    trades_before = before[("hftgate", "ETHUSDT")].trades if ("hftgate", "ETHUSDT") in before else 0
    cross(suite, "ETHUSDT", price_ticks=900_000)

    def fill_arrived() -> bool:
        now = tracked(suite).get(("hftgate", "ETHUSDT"))
        return now is not None and now.trades == trades_before + 1

    wait_until(fill_arrived, timeout_s=20)
    last = tracked(suite)[("hftgate", "ETHUSDT")].last_trade
    assert last.trade_id != U64_MAX and last.price == pytest.approx(9_000.0)
    assert ("hftgate", "NEWSYM") not in tracked(suite)


def test_a_junk_symbol_flood_stops_at_the_feeds_quota(suite: Suite) -> None:
    before = tracked(suite)
    used = sum(1 for venue, _ in before if venue != "hftgate")  # every other venue is the feed's
    room = FEED_SYMBOL_QUOTA - used
    assert room > 0
    now = time.time_ns()
    flood = [trade("binance-spot", f"JUNK{i:05d}", 1, ts_ns=now) for i in range(room + 60)]
    summary = publish(suite, suite.token("feed"), flood)
    assert summary.accepted == room
    assert rejects(summary) == {md.TICK_REJECT_REASON_SYMBOL_QUOTA_EXCEEDED: 60}
    after = tracked(suite)
    assert sum(1 for venue, _ in after if venue != "hftgate") == FEED_SYMBOL_QUOTA
    assert ("binance-spot", f"JUNK{room:05d}") not in after
    # The feed's existing symbols still update, and execution can still add a symbol of its own.
    again = publish(suite, suite.token("feed"), [trade("binance-spot", "JUNK00000", 2)])
    assert again.accepted == 1, again
    assert ("hftgate", "ESZ4") not in after
    cross(suite, "ESZ4", price_ticks=24_000, lots=1)
    wait_until(lambda: ("hftgate", "ESZ4") in tracked(suite), timeout_s=20)


def test_a_10_mib_symbol_is_refused_and_snapshots_stay_small(suite: Suite) -> None:
    huge = "S" * (10 * MiB)
    before = tracked(suite)
    big_channel_options = [("grpc.max_send_message_length", 64 * MiB)]
    with grpc.insecure_channel(suite.addresses["marketdata"], options=big_channel_options) as channel:
        stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
        # Without a publisher's token the 10 MiB are not even read.
        refused(
            stub.PublishTrades,
            iter([md.PublishTradesRequest(trades=[trade("binance-spot", huge, 1)])]),
            api_key(demo_key("alice")),
            UNAUTHENTICATED,
        )
        summary = stub.PublishTrades(
            iter(
                [md.PublishTradesRequest(trades=[trade("binance-spot", huge, 1), trade(huge, "BTCUSDT", 1)])]
            ),
            metadata=suite.token("feed"),
            timeout=60,
        )
        assert summary.accepted == 0
        assert rejects(summary) == {
            md.TICK_REJECT_REASON_SYMBOL_TOO_LONG: 1,
            md.TICK_REJECT_REASON_VENUE_TOO_LONG: 1,
        }
        # Asking for it is a precise INVALID_ARGUMENT that does not echo it back.
        request = md.GetSnapshotRequest()
        request.filter.symbols.add(venue="binance-spot", name=huge)
        refused(stub.GetSnapshot, request, suite.token("gateway"), {grpc.StatusCode.INVALID_ARGUMENT})
    assert tracked(suite).keys() == before.keys()
    # A client with gRPC's default 4 MiB receive limit still reads the unfiltered snapshot.
    with grpc.insecure_channel(suite.addresses["marketdata"]) as default_channel:
        reply = marketdata_pb2_grpc.MarketDataServiceStub(default_channel).GetSnapshot(
            md.GetSnapshotRequest(), metadata=api_key(demo_key("alice")), timeout=15
        )
    assert reply.ByteSize() < MiB
    assert all(len(s.symbol.name) <= 64 and len(s.symbol.venue) <= 64 for s in reply.symbols)


# --- the admin CLI from the shell -----------------------------------------------------------------
def hftgate(suite: Suite, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [HFTGATE_CLI, *args, "--cache", suite.addresses["cache"]],
        env=env or suite.cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=60)
    return process.returncode, stdout, stderr


def test_the_admin_cli_works_from_the_shell_and_a_wrong_secret_is_refused(
    suite: Suite, tmp_path: Path
) -> None:
    wrong_secret = tmp_path / "wrong.secret"
    wrong_secret.write_text("f" * 64)
    wrong_secret.chmod(0o600)
    wrong = suite.cli_env(HFTGATE_SUITE_SECRET_FILE=str(wrong_secret))
    before_audit = audit_ids(suite)
    # The operator's commands and the intruder's run side by side.
    listing = hftgate(suite, "accounts", "list", "--json")
    issuing = hftgate(suite, "keys", "issue", "carol")
    intruders = [
        hftgate(suite, "accounts", "add", "mallory", env=wrong),
        hftgate(suite, "accounts", "disable", "alice", env=wrong),
        hftgate(suite, "keys", "issue", "alice", env=wrong),
    ]
    code, stdout, stderr = finished(listing)
    assert code == 0, stderr
    names = {a["name"] for a in json.loads(stdout)["accounts"]}
    assert names >= {"alice", "bob", "carol", "dave"} and "mallory" not in names
    code, stdout, stderr = finished(issuing)
    assert code == 0, stderr
    carol_key = stdout.strip().splitlines()[-1]
    assert carol_key.startswith("hftgate-") and len(carol_key) >= 40
    key_id = re.search(r"\b([0-9a-f]{16})\b", stdout)
    assert key_id is not None, stdout
    for intruder in intruders:
        code, stdout, stderr = finished(intruder)
        assert code == 1, (stdout, stderr)
        assert "UNAUTHENTICATED" in stderr and "hftgate-" not in stdout, (stdout, stderr)
        assert "Traceback" not in stderr
    # The CLI's key is carol's at execution; revoked from the shell, execution refuses it in time.
    ack = submit(suite, carol_key, limit_order(unique("carol"), price_ticks=1_000_500))
    assert (
        ack.status == ex.ORDER_STATUS_NEW and order_of(suite, "carol", ack.order_id).order_id == ack.order_id
    )
    code, _, stderr = finished(hftgate(suite, "keys", "revoke", key_id.group(1)))
    assert code == 0, stderr
    took = wait_until(lambda: execution_refuses(suite, carol_key), timeout_s=REVOCATION_BOUND_S + 10)
    assert took < REVOCATION_BOUND_S, f"execution accepted a revoked key for {took:.2f} s"
    # Nothing of the intruder's: no account, alice enabled, and the audit log shows only admin's
    # two changes, which it also shows from the shell.
    accounts = suite.accounts()
    assert "mallory" not in accounts and not accounts["alice"].kill_switch
    new_rows = [r for r in suite.audit() if r.id not in before_audit]
    assert sorted((r.actor, r.action, r.target) for r in new_rows) == [
        ("admin", "keys.issue", f"keyinfo:{key_id.group(1)}"),
        ("admin", "keys.revoke", f"keyinfo:{key_id.group(1)}"),
    ]
    code, stdout, stderr = finished(hftgate(suite, "audit", "--json", "--limit", "1000"))
    assert code == 0, stderr
    rows = json.loads(stdout).get("rows", [])
    assert rows and {row["actor"] for row in rows} == {"admin"}
    assert not any("mallory" in row["target"] for row in rows)
    assert_trades(suite, "alice")
