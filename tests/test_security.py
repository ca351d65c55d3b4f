"""The suite secret, service tokens, API-key hashes, the auth interceptor and suite certificates."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hftgate.grpcserver import ServiceBinding, create_server
from hftgate.security import (
    SERVICE_TOKEN_METADATA,
    ClientCredentials,
    SecurityError,
    SuiteSecret,
    certs_init,
    load_suite_secret,
    profile,
    suite_client_tls,
    suite_server_tls,
)
from hftgate.v1 import cache_pb2, cache_pb2_grpc

SECRET = SuiteSecret(b"x" * 40)


def test_secret_file_is_created_once_private_and_shared(tmp_path: Path) -> None:
    first = load_suite_secret({}, state_dir=tmp_path)
    path = tmp_path / "secrets" / "suite.secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second = load_suite_secret({}, state_dir=tmp_path)
    assert first.token_for("execution") == second.token_for("execution")
    assert "x" * 8 not in repr(first) and path.read_bytes().decode() not in repr(first)


def test_secret_from_the_environment_and_too_short_refused(tmp_path: Path) -> None:
    env = {"HFTGATE_SUITE_SECRET": "s" * 32}
    assert load_suite_secret(env, state_dir=tmp_path).source == "HFTGATE_SUITE_SECRET"
    with pytest.raises(SecurityError):
        load_suite_secret({"HFTGATE_SUITE_SECRET": "short"}, state_dir=tmp_path)
    with pytest.raises(SecurityError):
        load_suite_secret({"HFTGATE_SUITE_SECRET_FILE": str(tmp_path / "missing")})


def test_production_never_invents_a_secret(tmp_path: Path) -> None:
    with pytest.raises(SecurityError, match="HFTGATE_SUITE_SECRET"):
        load_suite_secret({"HFTGATE_PROFILE": "production"}, state_dir=tmp_path)
    assert not (tmp_path / "secrets" / "suite.secret").exists()


def test_tokens_prove_one_principal_and_cannot_be_forged() -> None:
    token = SECRET.token_for("execution")
    assert SECRET.verify_token(token) == "execution"
    other = SuiteSecret(b"y" * 40)
    assert other.verify_token(token) is None
    forged = "admin." + token.split(".", 1)[1]  # execution's MAC under admin's name
    assert SECRET.verify_token(forged) is None
    assert SECRET.verify_token("admin") is None
    assert SECRET.verify_token("admin." + "0" * 64) is None
    assert SECRET.verify_token("a" * 10_000) is None


def test_api_key_hash_is_keyed() -> None:
    import hashlib

    key = "hftgate-demo-alice"
    assert SECRET.api_key_hash(key) != hashlib.sha256(key.encode()).hexdigest()
    assert SECRET.api_key_hash(key) != SuiteSecret(b"y" * 40).api_key_hash(key)
    assert SECRET.api_key_hash(key) == SECRET.api_key_hash(key)


def test_profile() -> None:
    assert profile({}) == "dev"
    assert profile({"HFTGATE_PROFILE": "production"}) == "production"
    with pytest.raises(SecurityError):
        profile({"HFTGATE_PROFILE": "prod-ish"})


class _Echo(cache_pb2_grpc.CacheServiceServicer):
    async def Stats(self, request: object, context: grpc.aio.ServicerContext) -> cache_pb2.CacheStatsResponse:
        return cache_pb2.CacheStatsResponse()


async def _serve(tmp_path: Path, tls: object = None, api_key_methods: object = ()) -> object:
    from hftgate.security import ServiceAuthInterceptor

    binding = ServiceBinding(
        "hftgate.v1.CacheService", lambda s: cache_pb2_grpc.add_CacheServiceServicer_to_server(_Echo(), s)
    )
    return await create_server(
        "127.0.0.1:0",
        [binding],
        tls=tls,  # type: ignore[arg-type]
        auth=ServiceAuthInterceptor(SECRET, api_key_methods=api_key_methods),  # type: ignore[arg-type]
    )


async def test_interceptor_refuses_missing_and_forged_credentials(tmp_path: Path) -> None:
    running = await _serve(tmp_path, api_key_methods={"/hftgate.v1.CacheService/Stats"})
    target = f"127.0.0.1:{running.port}"  # type: ignore[attr-defined]
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            stub = cache_pb2_grpc.CacheServiceStub(channel)
            for metadata in ((), ((SERVICE_TOKEN_METADATA, "admin." + "0" * 64),)):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Stats(cache_pb2.CacheStatsRequest(), metadata=metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # a forged token is refused even beside an API key
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Stats(
                    cache_pb2.CacheStatsRequest(),
                    metadata=((SERVICE_TOKEN_METADATA, "x.y"), ("x-api-key", "k")),
                )
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            await stub.Stats(
                cache_pb2.CacheStatsRequest(),
                metadata=((SERVICE_TOKEN_METADATA, SECRET.token_for("gateway")),),
            )
            await stub.Stats(
                cache_pb2.CacheStatsRequest(), metadata=(("x-api-key", "passed to the servicer"),)
            )
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await running.stop(0)  # type: ignore[attr-defined]


async def test_mutual_tls_with_suite_certificates(tmp_path: Path) -> None:
    certs_init(tmp_path / "tls", names=("cache", "execution"))
    env = {"HFTGATE_TLS_DIR": str(tmp_path / "tls"), "HFTGATE_TLS_REQUIRE_CLIENT_CERT": "1"}
    server_tls = suite_server_tls("cache", env)
    assert server_tls is not None and server_tls.require_client_cert
    running = await _serve(tmp_path, tls=server_tls)
    target = f"localhost:{running.port}"  # type: ignore[attr-defined]
    try:
        good = SECRET.service_credentials("execution", suite_client_tls("execution", env))
        async with good.open_channel(target) as channel:
            await cache_pb2_grpc.CacheServiceStub(channel).Stats(
                cache_pb2.CacheStatsRequest(), metadata=good.metadata
            )
        # no client certificate: the handshake fails
        assert server_tls.client_ca_path is not None
        from hftgate.security import ClientTls

        no_cert = ClientCredentials(metadata=good.metadata, tls=ClientTls(ca_path=server_tls.client_ca_path))
        async with no_cert.open_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await cache_pb2_grpc.CacheServiceStub(channel).Stats(
                    cache_pb2.CacheStatsRequest(), metadata=good.metadata, timeout=5
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        # plaintext to a TLS server fails too
        async with grpc.aio.insecure_channel(target) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await cache_pb2_grpc.CacheServiceStub(channel).Stats(
                    cache_pb2.CacheStatsRequest(), metadata=good.metadata, timeout=5
                )
    finally:
        await running.stop(0)  # type: ignore[attr-defined]
