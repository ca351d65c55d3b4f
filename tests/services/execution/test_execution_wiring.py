"""Service wiring: TLS by configuration, reference data through the cache service, graceful stop."""

from __future__ import annotations

import datetime
import os
import re
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from hftgate.security import SERVICE_TOKEN_METADATA, load_suite_secret
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc

ALICE = (("x-api-key", "hftgate-demo-alice"),)
# GetStats gives service-wide figures only to a service principal (an account sees its own).
ADMIN = (("x-hftgate-service-token", load_suite_secret().token_for("admin")),)
REDIS_URL = os.environ.get("HFTGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for localhost/127.0.0.1 and its key, made with `cryptography`."""
    import ipaddress

    pytest.importorskip("cryptography", reason="TLS test needs the cryptography package (a dev dependency)")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def new_order(client_id: str) -> api.NewOrder:
    return api.NewOrder(
        client_order_id=client_id,
        symbol="BTCUSDT",
        side=common.SIDE_BUY,
        order_type=api.ORDER_TYPE_LIMIT,
        price_ticks=100,
        quantity_lots=1,
    )


async def test_tls_serves_orders_and_refuses_plaintext(tmp_path: Path, make_config: Any, launch: Any) -> None:
    cert_path, key_path = self_signed(tmp_path)
    config = make_config(tmp_path, tls_cert_path=str(cert_path), tls_key_path=str(key_path))
    harness = await launch(config)
    try:
        port = harness.running.port
        credentials = grpc.ssl_channel_credentials(root_certificates=cert_path.read_bytes())
        async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
            stub = api_grpc.ExecutionServiceStub(channel)
            ack = (
                await stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("tls-1")), metadata=ALICE)
            ).ack
            assert ack.status == api.ORDER_STATUS_NEW and ack.durable
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await harness.stub.SubmitOrder(
                api.SubmitOrderRequest(order=new_order("plain")), metadata=ALICE, timeout=3
            )
        assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    finally:
        await harness.close()


async def _redis_problem(url: str) -> str | None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        await client.aclose()
    return None


async def test_reference_data_through_the_cache_service_keeps_sql_off_the_order_path(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    problem = await _redis_problem(REDIS_URL)
    if problem is not None:
        message = f"Redis at {REDIS_URL} unreachable ({problem}); set HFTGATE_TEST_REDIS_URL"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from services.cache.config import CacheConfig
    from services.cache.server import start as start_cache

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
    try:
        harness = await launch(make_config(tmp_path / "exec", cache_address=f"127.0.0.1:{cache.port}"))
        try:
            from services.execution.reference import NOT_HELD

            # Loaded into the near cache before SERVING, so the first order asks nobody.
            assert harness.core.reference.instrument_held("BTCUSDT") not in (None, NOT_HELD)
            assert harness.core.reference.account_for_key_held("hftgate-demo-alice") not in (None, NOT_HELD)
            for number in range(200):
                request = api.SubmitOrderRequest(order=new_order(f"c{number}"))
                ack = (await harness.stub.SubmitOrder(request, metadata=ALICE)).ack
                assert ack.status == api.ORDER_STATUS_NEW
            stats = await harness.stub.GetStats(api.GetStatsRequest(), metadata=ADMIN)
            assert stats.reference_lookups >= 400
            # The demo rows were read into the near cache before SERVING: no order waited for SQL.
            assert stats.reference_sql_lookups == 0 and stats.order_path_hit_ratio == 1.0, stats
        finally:
            await harness.close()
    finally:
        await cache.stop(1.0)
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(REDIS_URL)
        try:
            async for key in client.scan_iter(match=prefix + "*", count=1000):
                await client.unlink(key)
        finally:
            await client.aclose()


async def test_reference_rows_are_held_before_serving_and_later_ones_read_once_and_counted(
    harness: Any,
) -> None:
    # Instruments, accounts and API keys were loaded before SERVING: not even the first order reads SQL.
    for number in range(50):
        await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order(f"s{number}")), metadata=ALICE)
    stats = await harness.stub.GetStats(api.GetStatsRequest(), metadata=ADMIN)
    assert stats.reference_lookups >= 100 and stats.reference_sql_lookups == 0
    assert stats.order_path_hit_ratio == 1.0
    # A symbol with no row: read from SQL once, then held as a miss.
    for number in range(3):
        order = api.NewOrder(**{**_fields(new_order(f"u{number}")), "symbol": "NOSUCHSYMBOL"})
        ack = (await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=order), metadata=ALICE)).ack
        assert ack.reason == common.REJECT_REASON_UNKNOWN_SYMBOL
    stats = await harness.stub.GetStats(api.GetStatsRequest(), metadata=ADMIN)
    assert stats.reference_sql_lookups == 1 and 0.9 < stats.order_path_hit_ratio < 1.0


def _fields(order: api.NewOrder) -> dict[str, Any]:
    return {field.name: value for field, value in order.ListFields()}


async def test_own_trades_reach_the_market_data_service_as_venue_hftgate(
    tmp_path: Path, make_config: Any, launch: Any
) -> None:
    import asyncio

    from hftgate.v1 import marketdata_pb2 as md
    from hftgate.v1 import marketdata_pb2_grpc as md_grpc
    from services.marketdata.config import MarketDataConfig
    from services.marketdata.server import start as start_marketdata

    marketdata = await start_marketdata(MarketDataConfig(port=0))
    try:
        harness = await launch(make_config(tmp_path, marketdata_address=f"127.0.0.1:{marketdata.port}"))
        try:
            bob = (("x-api-key", "hftgate-demo-bob"),)
            await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("bid")), metadata=ALICE)
            sell = api.NewOrder(
                client_order_id="ask",
                symbol="BTCUSDT",
                side=common.SIDE_SELL,
                order_type=api.ORDER_TYPE_LIMIT,
                price_ticks=100,
                quantity_lots=1,
            )
            await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=sell), metadata=bob)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{marketdata.port}") as channel:
                stub = md_grpc.MarketDataServiceStub(channel)
                request = md.GetSnapshotRequest(
                    filter=md.SymbolFilter(symbols=[common.Symbol(venue="hftgate", name="BTCUSDT")])
                )
                # A service's token: market data may serve snapshots only to authenticated callers.
                token = ((SERVICE_TOKEN_METADATA, load_suite_secret().token_for("gateway")),)
                for _ in range(100):
                    snapshot = await stub.GetSnapshot(request, metadata=token)
                    if snapshot.symbols and snapshot.symbols[0].trades:
                        break
                    await asyncio.sleep(0.05)
            assert snapshot.symbols[0].trades == 1
            assert snapshot.symbols[0].last_trade.price == pytest.approx(1.00)  # 100 ticks of 0.01
        finally:
            await harness.close()
    finally:
        await marketdata.stop(1.0)


async def test_stage_latencies_are_exported_to_prometheus(harness: Any) -> None:
    from prometheus_client import REGISTRY, generate_latest

    await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order("m1")), metadata=ALICE)
    text = generate_latest(REGISTRY).decode()
    assert 'hftgate_execution_stage_latency_seconds{quantile="0.99",stage="journal"}' in text
    assert "hftgate_execution_orders_accepted_total 1.0" in text
    # The journal's own fdatasync latency beside the stages: a quantile of every fsync since start.
    median = re.search(
        r'^hftgate_execution_journal_fsync_latency_seconds\{quantile="0.5"\} (\S+)$', text, re.M
    )
    assert median is not None and 0 < float(median.group(1)) < 10


async def test_the_journal_keeper_counts_are_exported_to_prometheus(harness: Any) -> None:
    import os

    from prometheus_client import REGISTRY, generate_latest

    journal = harness.core.journal
    journal.place_writer([max(os.sched_getaffinity(0))])
    assert journal.keep_writer_cpu(50_000)
    for n in range(20):
        await harness.stub.SubmitOrder(api.SubmitOrderRequest(order=new_order(f"k{n}")), metadata=ALICE)
    stats = journal.keeper_stats()
    # Sequential SubmitOrders: their records reached the writer through the keeper, woken at the
    # touch ahead of the record or when it came (or, when this process's other threads held the
    # keeper off its CPU, through the loop's kick).
    assert stats.wakes + stats.kicks + stats.prewakes > 0
    text = generate_latest(REGISTRY).decode()
    assert f'hftgate_execution_journal_keeper_events_total{{event="wakes"}} {float(stats.wakes)}' in text
    assert 'hftgate_execution_journal_keeper_events_total{event="kicks"}' in text
    assert 'hftgate_execution_journal_keeper_events_total{event="prewakes"}' in text
