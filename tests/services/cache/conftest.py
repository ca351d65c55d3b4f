"""Fixtures for the cache tests: SQL stores on SQLite and PostgreSQL, Redis (the machine's and our own).

Every service call needs credentials now: ``connect`` gives clients the admin principal's
(the raw keyspace, as before the cache had namespaces) unless a test passes others, built
with ``credentials_for`` (a service principal) or ``key_credentials`` (an account's API key).

PostgreSQL and the machine's Redis come from HFTGATE_TEST_POSTGRES_URL / HFTGATE_TEST_REDIS_URL
(defaults: the local servers). When one is unreachable its tests skip, except under CI=true,
where they fail. Every test gets its own table and its own Redis key prefix and drops them after.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace

import pytest

from hftgate.security import API_KEY_METADATA, ClientCredentials, load_suite_secret
from services.cache.client import CacheClient
from services.cache.config import CacheConfig
from services.cache.embedded_redis import EmbeddedRedis
from services.cache.l3_sql import SqlStore
from services.cache.server import CacheRunningServer, start

POSTGRES_URL = os.environ.get(
    "HFTGATE_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("HFTGATE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _unavailable(message: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


async def _postgres_problem(url: str) -> str | None:
    import asyncpg  # type: ignore[import-untyped]

    try:
        conn = await asyncio.wait_for(
            asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1)), 3
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def sql_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQL URL per back end: a fresh SQLite file, or the test PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('cache') / 'cache.sqlite3'}"
    problem = await _postgres_problem(POSTGRES_URL)
    if problem is not None:
        _unavailable(f"PostgreSQL at {POSTGRES_URL} unreachable ({problem}); set HFTGATE_TEST_POSTGRES_URL")
    return POSTGRES_URL


@pytest.fixture
def sql_table() -> str:
    """A table name no other test run uses."""
    return f"cache_test_{uuid.uuid4().hex[:12]}"


def credentials_for(principal: str) -> ClientCredentials:
    """A service principal's credentials (its token from the test session's suite secret)."""
    return load_suite_secret().service_credentials(principal)


def key_credentials(api_key: str) -> ClientCredentials:
    """An account's credentials: its API key."""
    return ClientCredentials(metadata=((API_KEY_METADATA, api_key),))


@pytest.fixture
def admin_metadata() -> tuple[tuple[str, str], ...]:
    """Metadata of the admin principal, for raw stubs."""
    return credentials_for("admin").metadata


@pytest.fixture
async def sql_store(sql_url: str, sql_table: str) -> AsyncIterator[SqlStore]:
    store = SqlStore(sql_url, table_name=sql_table)
    await store.start()
    yield store
    # The admin audit table a replica on this store made (replica_config names it).
    from sqlalchemy import text

    async with store.engine.begin() as conn:
        await conn.execute(text(f"DROP TABLE IF EXISTS {sql_table}_audit"))
    await store.drop_table()
    await store.close()


@pytest.fixture
async def redis_url() -> str:
    """The machine's Redis (HFTGATE_TEST_REDIS_URL)."""
    problem = await _redis_problem(REDIS_URL)
    if problem is not None:
        _unavailable(f"Redis at {REDIS_URL} unreachable ({problem}); set HFTGATE_TEST_REDIS_URL")
    return REDIS_URL


@pytest.fixture
async def key_prefix(redis_url: str) -> AsyncIterator[str]:
    """A Redis key prefix no other test run uses; its keys are deleted after the test."""
    import redis.asyncio as aioredis

    prefix = f"hftgate-test:{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = aioredis.Redis.from_url(redis_url)
    try:
        async for key in client.scan_iter(match=prefix.rstrip(":") + "*", count=1000):
            await client.unlink(key)
    finally:
        await client.aclose()


@pytest.fixture
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A redis-server of our own on a free port, which a test may stop and restart."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def replica_config(
    redis_url: str,
    key_prefix: str,
    sql_url: str,
    sql_store: SqlStore,
    tmp_path_factory: pytest.TempPathFactory,
) -> CacheConfig:
    """Config of a replica on the test Redis (own prefix) and SQL (own table), on a free port."""
    return CacheConfig(
        host="127.0.0.1",
        port=0,
        redis_url=redis_url,
        database_url=sql_url,
        sql_table=sql_store.table.name,
        admin_audit_table=f"{sql_store.table.name}_audit",
        key_prefix=key_prefix,
        state_dir=str(tmp_path_factory.mktemp("state")),
        max_key_bytes=128,
        max_value_bytes=4096,
        max_batch_keys=100,
        sql_purge_interval_ms=3_600_000,
    )


@pytest.fixture
async def start_replica() -> AsyncIterator[Callable[..., Awaitable[CacheRunningServer]]]:
    """Starts replicas (stopped after the test): ``await start_replica(config, **overrides)``."""
    started: list[CacheRunningServer] = []

    async def start_one(config: CacheConfig, **overrides: object) -> CacheRunningServer:
        running = await start(replace(config, **overrides))
        started.append(running)
        return running

    yield start_one
    for running in started:
        await running.stop(0)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., Awaitable[CacheClient]]]:
    """Connects CacheClients (closed after the test): ``await connect(port, name)``."""
    clients: list[CacheClient] = []

    async def connect_one(
        port: int, name: str = "test", credentials: ClientCredentials | None = None
    ) -> CacheClient:
        client = CacheClient(
            f"127.0.0.1:{port}",
            watcher_name=name,
            reconnect_backoff_initial_ms=20,
            credentials=credentials or credentials_for("admin"),
        )
        await client.start()
        assert client.live, "the invalidation stream did not come up"
        clients.append(client)
        return client

    yield connect_one
    for client in clients:
        await client.close()
