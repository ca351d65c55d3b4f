"""The execution service's edges, tried as an attacker would (issue 12, parts 1 and 4).

Each case is refused with a precise status and changes nothing: calls without credentials, with
a forged, oversized, revoked or old-style (plain SHA-256) key, with a service token but no account;
another account's order ids answer exactly what an id never used answers; demo keys are stored
only as keyed hashes, and only in the dev profile; TLS (the front door's own certificate with
required client certificates, or the suite's HFTGATE_TLS_DIR); the trade feed's identity.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from hftgate.config import repo_root
from hftgate.security import (
    SERVICE_TOKEN_METADATA,
    ServiceAuthInterceptor,
    certs_init,
    load_suite_secret,
    principal_of,
)
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc
from services.cache.model import StoredEntry, VersionClock
from services.execution.config import load_config
from services.execution.reference import (
    ACCOUNT_PREFIX,
    API_KEY_PREFIX,
    AccountSpec,
    api_key_row,
    demo_api_key,
    encode_spec,
)

from .conftest import key

ALICE, BOB = key("alice"), key("bob")


def new_order(client_id: str, side: Any = common.SIDE_BUY, price: int = 100) -> api.NewOrder:
    return api.NewOrder(
        client_order_id=client_id,
        symbol="BTCUSDT",
        side=side,
        order_type=api.ORDER_TYPE_LIMIT,
        time_in_force=api.TIME_IN_FORCE_GTC,
        price_ticks=price,
        quantity_lots=1,
    )


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def fingerprint(harness: Any) -> tuple[int, int, int]:
    state = harness.core.state
    return state.order_count, state.next_input_seq, state.trades


async def reference_rows(harness: Any, prefix: str) -> dict[str, bytes | None]:
    store = harness.core.reference.source.store
    rows = await store.get_prefixed(prefix, 0, 1_000)
    return {k: v.value for k, v in rows.items()}


# --- credentials ---------------------------------------------------------------------------------------


async def test_calls_without_any_credential_are_refused_before_the_servicer(harness: Any) -> None:
    before = fingerprint(harness)
    request = api.SubmitOrderRequest(order=new_order("anon"))
    for call in (
        harness.stub.SubmitOrder(request),
        harness.stub.GetStats(api.GetStatsRequest()),
        harness.stub.CancelAll(api.CancelAllRequest()),
    ):
        error = await refused(call)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "needs an API key (x-api-key) or a service token" in error.details()
    responses = harness.stub.OrderStream(
        iter([api.OrderStreamRequest(inputs=[api.OrderInput(new_order=new_order("s"))])])
    )
    error = await refused(responses.read())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert fingerprint(harness) == before
    # Health stays open: balancers probe it without credentials.
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(harness.channel)
    answer = await health.Check(health_pb2.HealthCheckRequest(service="hftgate.v1.ExecutionService"))
    assert answer.status == health_pb2.HealthCheckResponse.SERVING


async def test_forged_oversized_and_empty_keys_are_unauthenticated_and_counted(harness: Any) -> None:
    from prometheus_client import REGISTRY

    before = fingerprint(harness)
    servicer_refusals = REGISTRY.get_sample_value(
        "hftgate_execution_unauthenticated_calls_total", {"by": "servicer"}
    )
    request = api.SubmitOrderRequest(order=new_order("forged"))
    for forged in ("hftgate-demo-mallory", "hftgate-demo-alice ", "x" * 300, "k" * 4000):
        error = await refused(harness.stub.SubmitOrder(request, metadata=(("x-api-key", forged),)))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == "unknown API key"
    error = await refused(harness.stub.SubmitOrder(request, metadata=(("x-api-key", ""),)))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert fingerprint(harness) == before
    after = REGISTRY.get_sample_value("hftgate_execution_unauthenticated_calls_total", {"by": "servicer"})
    assert after is not None and after - (servicer_refusals or 0) == 5


async def test_a_forged_service_token_is_refused_even_beside_a_valid_key(harness: Any) -> None:
    secret = load_suite_secret()
    forged = "admin." + "0" * 64
    other_secret = "admin." + hashlib.sha256(b"guess").hexdigest()
    before = fingerprint(harness)
    for token in (forged, other_secret, "admin", secret.token_for("admin") + "0"):
        error = await refused(
            harness.stub.SubmitOrder(
                api.SubmitOrderRequest(order=new_order("tok")),
                metadata=((SERVICE_TOKEN_METADATA, token), *ALICE),
            )
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error.details() == "the service token is not valid"
    assert fingerprint(harness) == before


async def test_a_service_identity_is_no_account(harness: Any) -> None:
    """A valid service token (here even admin's) without an account's key places nothing."""
    token = ((SERVICE_TOKEN_METADATA, load_suite_secret().token_for("admin")),)
    error = await refused(
        harness.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("svc")), metadata=token)
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == "missing API key: send it in 'x-api-key'"
    # With the account's key forwarded (as the gateway does) it is that account's order.
    ack = (
        await harness.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("via-gateway")),
            metadata=((SERVICE_TOKEN_METADATA, load_suite_secret().token_for("gateway")), *ALICE),
        )
    ).ack
    assert ack.status == api.ORDER_STATUS_NEW
    assert harness.core.state.order_id_for(1, "via-gateway") == ack.order_id


async def test_a_revoked_key_is_refused_once_its_row_is_gone(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    harness = await launch(make_config(tmp_path, reference_local_ttl_ms=100))
    try:
        ack = (
            await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("pre")), metadata=ALICE)
        ).ack
        assert ack.status == api.ORDER_STATUS_NEW
        row = api_key_row(load_suite_secret(), "hftgate-demo-alice")
        store = harness.core.reference.source.store
        assert await store.tombstone_matching(row, VersionClock().next()) == [row]
        refusals: list[grpc.StatusCode] = []
        for attempt in range(60):  # the held row is re-read within one TTL (100 ms)
            try:
                await harness.stub.SubmitOrder(
                    api.SubmitOrderRequest(order=new_order(f"post{attempt}")), metadata=ALICE
                )
            except grpc.aio.AioRpcError as error:
                refusals.append(error.code())
                assert error.details() == "unknown API key"
                break
            await asyncio.sleep(0.025)
        assert refusals == [grpc.StatusCode.UNAUTHENTICATED]
        # Refused from then on; bob's key still works.
        error = await refused(harness.stub.GetStats(api.GetStatsRequest(), metadata=ALICE))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        ack = (
            await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("bob")), metadata=BOB)
        ).ack
        assert ack.status == api.ORDER_STATUS_NEW
    finally:
        await harness.close()


async def test_a_key_stored_the_old_way_plain_sha256_is_not_accepted(harness: Any) -> None:
    mallory_key = "mallory-chose-this-key"
    trent_key = "trent-was-issued-this-key"
    clock = VersionClock()
    rows = [
        (ACCOUNT_PREFIX + "mallory", encode_spec(AccountSpec(name="mallory", account_id=66))),
        (API_KEY_PREFIX + hashlib.sha256(mallory_key.encode()).hexdigest(), b"mallory"),
        (ACCOUNT_PREFIX + "trent", encode_spec(AccountSpec(name="trent", account_id=67))),
        (api_key_row(load_suite_secret(), trent_key), b"trent"),  # the control: the keyed form works
    ]
    await harness.core.reference.source.store.put_many([(k, StoredEntry(v, clock.next())) for k, v in rows])
    harness.core.reference.source._held.clear()
    before = fingerprint(harness)
    error = await refused(
        harness.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("m1")), metadata=(("x-api-key", mallory_key),)
        )
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and error.details() == "unknown API key"
    assert fingerprint(harness) == before
    ack = (
        await harness.stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("t1")), metadata=(("x-api-key", trent_key),)
        )
    ).ack
    assert ack.status == api.ORDER_STATUS_NEW


# --- the order-id oracle -----------------------------------------------------------------------------


async def test_another_accounts_order_ids_answer_exactly_like_missing_ones(harness: Any) -> None:
    """Bob walks the sequential order ids: alice's orders, rejected ones and ids never used must all
    give the same status and message (the id aside), for GetOrder, CancelOrder and ReplaceOrder."""
    stub = harness.stub
    alice_ids = []
    for n in range(3):
        ack = (
            await stub.SubmitOrder(
                api.SubmitOrderRequest(order=new_order(f"a{n}", price=100 + n)), metadata=ALICE
            )
        ).ack
        assert ack.status == api.ORDER_STATUS_NEW
        alice_ids.append(ack.order_id)
    own = (
        await stub.SubmitOrder(
            api.SubmitOrderRequest(order=new_order("b0", common.SIDE_SELL, 500)), metadata=BOB
        )
    ).ack
    last = max(*alice_ids, own.order_id)
    missing_ids = [last + 1, last + 2, last + 1_000]
    before = fingerprint(harness)

    async def answers(order_id: int) -> list[tuple[grpc.StatusCode, str]]:
        out = []
        for call in (
            stub.GetOrder(api.GetOrderRequest(order_id=order_id), metadata=BOB),
            stub.CancelOrder(api.CancelOrderRequest(order_id=order_id), metadata=BOB),
            stub.ReplaceOrder(api.ReplaceOrderRequest(order_id=order_id, quantity_lots=2), metadata=BOB),
        ):
            error = await refused(call)
            out.append((error.code(), error.details().replace(str(order_id), "<id>")))
        return out

    expected = [(grpc.StatusCode.NOT_FOUND, "no order with order_id <id>")] * 3
    for order_id in [*alice_ids, *missing_ids]:
        assert await answers(order_id) == expected, order_id
    assert fingerprint(harness) == before
    for order_id in alice_ids:  # untouched
        order = (await stub.GetOrder(api.GetOrderRequest(order_id=order_id), metadata=ALICE)).order
        assert order.status == api.ORDER_STATUS_NEW and order.leaves_quantity_lots == 1
    # Bob's own order still answers him.
    assert (
        await stub.GetOrder(api.GetOrderRequest(order_id=own.order_id), metadata=BOB)
    ).order.order_id == own.order_id


# --- demo data ---------------------------------------------------------------------------------------


async def test_demo_keys_are_stored_only_as_keyed_hashes(harness: Any) -> None:
    rows = await reference_rows(harness, API_KEY_PREFIX)
    secret = load_suite_secret()
    for name in harness.config.demo_accounts:
        demo_key = demo_api_key(harness.config.demo_key_secret, name)
        plain = API_KEY_PREFIX + hashlib.sha256(demo_key.encode()).hexdigest()
        assert plain not in rows
        assert rows[api_key_row(secret, demo_key)] == name.encode()
    assert len(rows) == len(harness.config.demo_accounts)
    for stored_key, value in rows.items():
        assert b"hftgate-demo" not in (value or b"") and "hftgate-demo" not in stored_key


async def test_production_profile_seeds_nothing(
    tmp_path: Path, make_config: Any, launch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HFTGATE_PROFILE", "production")
    harness = await launch(make_config(tmp_path))
    try:
        assert await reference_rows(harness, API_KEY_PREFIX) == {}
        assert await reference_rows(harness, ACCOUNT_PREFIX) == {}
        error = await refused(
            harness.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("p")), metadata=ALICE)
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED and error.details() == "unknown API key"
    finally:
        await harness.close()


async def test_production_profile_refuses_forced_seeding(
    tmp_path: Path, make_config: Any, launch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HFTGATE_PROFILE", "production")
    with pytest.raises(ValueError, match="SEED_DEMO_DATA is on in the 'production' profile"):
        await launch(make_config(tmp_path / "state", seed_demo_data=True))
    assert not (tmp_path / "state").exists()  # refused before any state was made
    environ = {"HFTGATE_PROFILE": "production", "HFTGATE_EXECUTION_SEED_DEMO_DATA": "true"}
    with pytest.raises(ValueError, match="published API keys"):
        load_config(environ)
    assert load_config({"HFTGATE_PROFILE": "production"}).seeds_demo_data("production") is False
    assert load_config({}).seeds_demo_data("dev") is True
    assert load_config({"HFTGATE_EXECUTION_SEED_DEMO_DATA": "false"}).seeds_demo_data("dev") is False


def test_the_service_process_refuses_to_start_with_demo_keys_in_production(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFTGATE_EXECUTION_")}
    env.update(
        HFTGATE_PROFILE="production",
        HFTGATE_EXECUTION_SEED_DEMO_DATA="on",
        HFTGATE_EXECUTION_PORT="0",
        HFTGATE_STATE_DIR=str(tmp_path),
    )
    done = subprocess.run(
        [sys.executable, "-m", "services.execution"],
        env=env,
        cwd=repo_root(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "cannot start: HFTGATE_EXECUTION_SEED_DEMO_DATA is on in the 'production' profile" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "execution").exists()


# --- TLS -------------------------------------------------------------------------------------------------


async def test_front_door_with_a_client_ca_requires_client_certificates(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    certs = tmp_path / "certs"
    certs_init(certs, names=("execution", "client"))
    config = make_config(
        tmp_path / "state",
        tls_cert_path=str(certs / "execution.pem"),
        tls_key_path=str(certs / "execution-key.pem"),
        tls_client_ca_path=str(certs / "ca.pem"),
    )
    harness = await launch(config)
    target = f"127.0.0.1:{harness.running.port}"
    ca = (certs / "ca.pem").read_bytes()
    request = api.SubmitOrderRequest(order=new_order("mtls"))
    try:
        anonymous = grpc.ssl_channel_credentials(root_certificates=ca)
        async with grpc.aio.secure_channel(target, anonymous) as channel:
            error = await refused(
                api_grpc.ExecutionServiceStub(channel).SubmitOrder(request, metadata=ALICE, timeout=5)
            )
            assert error.code() == grpc.StatusCode.UNAVAILABLE
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(certs / "client-key.pem").read_bytes(),
            certificate_chain=(certs / "client.pem").read_bytes(),
        )
        async with grpc.aio.secure_channel(target, with_cert) as channel:
            ack = (await api_grpc.ExecutionServiceStub(channel).SubmitOrder(request, metadata=ALICE)).ack
            assert ack.status == api.ORDER_STATUS_NEW
    finally:
        await harness.close()


def test_a_client_ca_without_a_certificate_or_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TLS_CLIENT_CA_PATH needs"):
        load_config({"HFTGATE_EXECUTION_TLS_CLIENT_CA_PATH": str(tmp_path / "ca.pem")})
    with pytest.raises(ValueError, match="no such file"):
        load_config(
            {
                "HFTGATE_EXECUTION_TLS_CERT_PATH": str(tmp_path / "cert.pem"),
                "HFTGATE_EXECUTION_TLS_KEY_PATH": str(tmp_path / "key.pem"),
            }
        )


async def test_suite_tls_dir_serves_tls_and_refuses_plaintext(
    tmp_path: Path, make_config: Any, launch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs = tmp_path / "certs"
    certs_init(certs, names=("execution", "gateway"))
    monkeypatch.setenv("HFTGATE_TLS_DIR", str(certs))
    harness = await launch(make_config(tmp_path / "state"))
    try:
        error = await refused(
            harness.stub.SubmitOrder(
                api.SubmitOrderRequest(order=new_order("plain")), metadata=ALICE, timeout=3
            )
        )
        assert error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        from hftgate.security import suite_client_tls

        credentials = load_suite_secret().service_credentials("gateway", suite_client_tls("gateway"))
        async with credentials.open_channel(f"127.0.0.1:{harness.running.port}") as channel:
            ack = (
                await api_grpc.ExecutionServiceStub(channel).SubmitOrder(
                    api.SubmitOrderRequest(order=new_order("tls")),
                    metadata=(*credentials.metadata, *ALICE),
                )
            ).ack
            assert ack.status == api.ORDER_STATUS_NEW
    finally:
        await harness.close()


# --- outbound identity ---------------------------------------------------------------------------------


async def test_trade_feed_publishes_as_the_execution_principal(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    """A market data stand-in behind the suite's interceptor records who publishes: "execution"."""
    from hftgate.grpcserver import ServiceBinding, create_server
    from hftgate.v1 import marketdata_pb2 as md
    from hftgate.v1 import marketdata_pb2_grpc as md_grpc

    secret = load_suite_secret()
    seen: list[tuple[str | None, list[str]]] = []

    class Recorder(md_grpc.MarketDataServiceServicer):
        async def PublishTrades(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
            async for message in request_iterator:
                seen.append((principal_of(context, secret), [t.venue for t in message.trades]))
            return md.PublishSummary()

    recorder = await create_server(
        "127.0.0.1:0",
        [
            ServiceBinding(
                "hftgate.v1.MarketDataService",
                lambda s: md_grpc.add_MarketDataServiceServicer_to_server(Recorder(), s),
            )
        ],
        auth=ServiceAuthInterceptor(secret),
    )
    try:
        harness = await launch(make_config(tmp_path, marketdata_address=f"127.0.0.1:{recorder.port}"))
        try:
            await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("bid")), metadata=ALICE)
            await harness.stub.SubmitOrder(
                api.SubmitOrderRequest(order=new_order("ask", common.SIDE_SELL)), metadata=BOB
            )
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.02)
            assert seen == [("execution", ["hftgate"])]
        finally:
            await harness.close()
    finally:
        await recorder.stop(0)


# --- the benchmark's floors ------------------------------------------------------------------------------


async def test_the_bench_echo_floor_runs_behind_the_same_interceptor() -> None:
    """``bench execution`` compares the service with an echo behind the same authentication, and
    measures the interceptor against an echo without it (auth_overhead_us)."""
    from hftgate.bench.floors import FLOOR_METADATA, GrpcEcho, floor_server

    with floor_server("grpc") as guarded, floor_server("grpc", auth=False) as plain:
        async with GrpcEcho(guarded, metadata=()) as anonymous:
            error = await refused(anonymous.round_trips_ns(1))
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        for target in (guarded, plain):
            async with GrpcEcho(target) as echo:
                assert len(await echo.round_trips_ns(3)) == 3
        async with GrpcEcho(plain, metadata=()) as anonymous:
            assert len(await anonymous.round_trips_ns(1)) == 1
    assert FLOOR_METADATA[0][0] == "x-api-key"


# --- through the cache service ---------------------------------------------------------------------------


async def test_through_the_cache_demo_rows_are_seeded_as_admin_and_a_deleted_key_is_refused(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    """The execution principal may only read reference rows (so the dev seeding writes as admin);
    an operator deleting a key row through the cache locks that key out once the invalidation
    reaches the execution service's near cache."""
    import uuid

    from services.cache.client import CacheClient
    from services.cache.config import CacheConfig
    from services.cache.server import start as start_cache

    from .test_execution_wiring import REDIS_URL, _redis_problem

    problem = await _redis_problem(REDIS_URL)
    if problem is not None:
        message = f"Redis at {REDIS_URL} unreachable ({problem}); set HFTGATE_TEST_REDIS_URL"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    secret = load_suite_secret()
    prefix = f"hftgate-test:{uuid.uuid4().hex[:12]}:"
    cache = await start_cache(
        CacheConfig(
            port=0,
            redis_url=REDIS_URL,
            database_url=f"sqlite+aiosqlite:///{tmp_path / 'cache.sqlite3'}",
            key_prefix=prefix,
            state_dir=str(tmp_path / "cache"),
        )
    )
    target = f"127.0.0.1:{cache.port}"
    try:
        harness = await launch(make_config(tmp_path / "exec", cache_address=target))
        try:
            row = api_key_row(secret, "hftgate-demo-alice")
            async with (
                CacheClient(target, credentials=secret.service_credentials("execution")) as as_execution,
                CacheClient(target, credentials=secret.service_credentials("admin")) as as_admin,
            ):
                assert await as_admin.get(row) == b"alice"  # seeded (by admin: see below)
                error = await refused(as_execution.set(row, b"bob"))
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED
                ack = (
                    await harness.stub.SubmitOrder(
                        api.SubmitOrderRequest(order=new_order("c-pre")), metadata=ALICE
                    )
                ).ack
                assert ack.status == api.ORDER_STATUS_NEW
                await as_admin.delete(row)
                assert await as_admin.get(row) is None
                outcome = []
                for attempt in range(100):
                    try:
                        await harness.stub.SubmitOrder(
                            api.SubmitOrderRequest(order=new_order(f"c-post{attempt}")), metadata=ALICE
                        )
                    except grpc.aio.AioRpcError as caught:
                        outcome = [caught.code(), caught.details()]
                        break
                    await asyncio.sleep(0.02)
                assert outcome == [grpc.StatusCode.UNAUTHENTICATED, "unknown API key"]
                ack = (
                    await harness.stub.SubmitOrder(
                        api.SubmitOrderRequest(order=new_order("c-bob", common.SIDE_SELL, 900)), metadata=BOB
                    )
                ).ack
                assert ack.status == api.ORDER_STATUS_NEW
        finally:
            await harness.close()
    finally:
        await cache.stop(1.0)
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            async for stored in client.scan_iter(match=prefix + "*", count=1000):
                await client.unlink(stored)
        finally:
            await client.aclose()
