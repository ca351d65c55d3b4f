"""L3: the SQL store, source of truth for durable entries (SQLAlchemy 2 async).

One table: ``key`` (primary key), ``value`` (NULL for a tombstone), ``version``,
``expires_at_ms`` (NULL = never). SQLite through aiosqlite by default, PostgreSQL
through asyncpg by URL; the statements are the same Core constructs for both, with
each dialect's ``INSERT .. ON CONFLICT DO UPDATE .. WHERE`` for versioned upserts.

Writes keep the newest version (last writer wins by version, not by arrival), and a
delete is an upsert of a tombstone, so a write that lost a race with a delete cannot
bring the key back. :meth:`SqlStore.purge` removes expired rows and tombstones old
enough that no racing write can still arrive.

Healing Redis after an outage (see tiered.py) asks :meth:`SqlStore.changed_since` for every
key whose row changed at or after a version: an index range scan on ``version``, capped at a
limit. It is complete as long as no row that new was purged: :meth:`SqlStore.purge` removes
expired rows and tombstones only once their version is older than its cutoff, so every row
changed at or after the cutoff (live, expired or deleted) is still there to be listed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    LargeBinary,
    MetaData,
    Table,
    Text,
    and_,
    delete,
    event,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hftgate.sqltables import create_tables
from services.cache import globs
from services.cache.model import StoredEntry, StoreUnavailable

log = logging.getLogger(__name__)

# Rows per statement: 4 parameters each keeps SQLite far below its 32,766-parameter cap.
CHUNK_ROWS = 500


# Identifiers longer than this are cut by PostgreSQL; the version index's name stays within it.
_MAX_IDENTIFIER_CHARS = 63


def _table(metadata: MetaData, name: str) -> Table:
    table = Table(
        name,
        metadata,
        Column("key", Text, primary_key=True),
        Column("value", LargeBinary, nullable=True),
        Column("version", BigInteger, nullable=False),
        Column("expires_at_ms", BigInteger, nullable=True),
    )
    # For changed_since: rows changed at or after a version, as an index range.
    Index(_version_index_name(name), table.c.version)
    return table


def _version_index_name(table_name: str) -> str:
    suffix = "_version_idx"
    return table_name[: _MAX_IDENTIFIER_CHARS - len(suffix)] + suffix


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _chunks(items: Sequence[Any], size: int = CHUNK_ROWS) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _unexpired(rows: Iterable[Any], now_ms: int) -> dict[str, StoredEntry]:
    """(key, value, version, expires_at_ms) rows as entries, those expired by ``now_ms`` left out."""
    found: dict[str, StoredEntry] = {}
    for key, value, version, expires in rows:
        entry = StoredEntry(value, int(version), int(expires or 0))
        if not entry.expired(now_ms):
            found[key] = entry
    return found


class SqlStore:
    """Versioned key/value rows in one SQL table."""

    def __init__(self, url: str, *, table_name: str = "cache_entries", pool_size: int = 5) -> None:
        self.url = url
        self._metadata = MetaData()
        self.table = _table(self._metadata, table_name)
        self._engine: AsyncEngine | None = None
        self._pool_size = pool_size
        self._dialect = ""

    async def start(self) -> None:
        """Connect and create the table if it does not exist."""
        if self.url.startswith("sqlite"):
            engine = create_async_engine(self.url)

            @event.listens_for(engine.sync_engine, "connect")
            def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
                # WAL lets readers go on during a write; busy_timeout lets two replicas
                # (or processes) share one file instead of failing on a lock.
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA busy_timeout=10000")
                cursor.close()

        else:
            engine = create_async_engine(self.url, pool_size=self._pool_size, pool_pre_ping=True)
        self._engine = engine
        self._dialect = engine.dialect.name
        try:
            await create_tables(engine, self._metadata)
            await self._ensure_version_index(engine)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(
                f"cannot create table {self.table.name} at {self.safe_url()}: {exc}"
            ) from exc

    async def _ensure_version_index(self, engine: AsyncEngine) -> None:
        """Give a table made before the version index existed its index (create_all checks
        for tables only). Both dialects know IF NOT EXISTS; PostgreSQL may still refuse the
        second of two replicas creating it at once, which is fine once it exists."""
        name = _version_index_name(self.table.name)
        quote = engine.dialect.identifier_preparer.quote
        statement = text(f"CREATE INDEX IF NOT EXISTS {quote(name)} ON {quote(self.table.name)} (version)")
        try:
            async with engine.begin() as conn:
                await conn.execute(statement)
        except SQLAlchemyError:
            async with engine.connect() as conn:
                indexes = await conn.run_sync(lambda sync: inspect(sync).get_indexes(self.table.name))
            if not any(index["name"] == name for index in indexes):
                raise

    async def close(self) -> None:
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def drop_table(self) -> None:
        """Drop the table (tests clean up after themselves with it)."""
        async with self._live_engine().begin() as conn:
            await conn.run_sync(self._metadata.drop_all, checkfirst=True)

    # --- reads -------------------------------------------------------------------------
    async def get_many(self, keys: Sequence[str], now_ms: int) -> dict[str, StoredEntry]:
        """Rows for ``keys`` that exist and have not expired (tombstones included)."""
        t = self.table
        found: dict[str, StoredEntry] = {}
        try:
            async with self._live_engine().connect() as conn:
                for chunk in _chunks(list(dict.fromkeys(keys))):
                    stmt = select(t.c.key, t.c.value, t.c.version, t.c.expires_at_ms).where(
                        t.c.key.in_(chunk)
                    )
                    found.update(_unexpired(await conn.execute(stmt), now_ms))
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"SQL read failed: {exc}") from exc
        return found

    async def get_prefixed(self, prefix: str, now_ms: int, limit: int) -> dict[str, StoredEntry]:
        """Up to ``limit`` live rows (not expired, not tombstones) whose key starts with ``prefix``,
        in key order: an index range scan, for warming a reader's cache at start."""
        t = self.table
        stmt = (
            select(t.c.key, t.c.value, t.c.version, t.c.expires_at_ms)
            .where(t.c.key.like(_like_prefix(prefix), escape="\\"), t.c.value.is_not(None))
            .order_by(t.c.key)
            .limit(limit)
        )
        try:
            async with self._live_engine().connect() as conn:
                return _unexpired(await conn.execute(stmt), now_ms)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"SQL read failed: {exc}") from exc

    async def changed_since(self, version: int, limit: int) -> list[str] | None:
        """Keys of every row whose version is ``version`` or newer: live rows, tombstones and
        expired rows alike (Redis may still hold an older value of each). None when there are
        more than ``limit`` (the caller then invalidates by broader means); the query reads at
        most ``limit + 1`` rows, through the version index.

        Complete only for versions at or after the cutoff of every purge that ran (see
        :meth:`purge`): older rows may be gone without a trace.
        """
        if limit < 0:
            raise ValueError(f"limit must not be negative, not {limit}")
        t = self.table
        stmt = select(t.c.key).where(t.c.version >= version).limit(limit + 1)
        try:
            async with self._live_engine().connect() as conn:
                keys = [key for (key,) in await conn.execute(stmt)]
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"SQL read failed: {exc}") from exc
        return keys if len(keys) <= limit else None

    # --- writes ------------------------------------------------------------------------
    async def put_many(self, entries: Sequence[tuple[str, StoredEntry]]) -> dict[str, int]:
        """Upsert each entry unless a row with the same or a newer version exists.

        Returns every key's stored version afterwards: the entry's own version where it
        was applied, the newer one that won where it was not.
        """
        t = self.table
        outcome: dict[str, int] = {}
        try:
            async with self._live_engine().begin() as conn:
                for chunk in _chunks(entries):
                    rows = [
                        {
                            "key": key,
                            "value": entry.value,
                            "version": entry.version,
                            "expires_at_ms": entry.expires_at_ms or None,
                        }
                        for key, entry in chunk
                    ]
                    insert = self._insert().values(rows)
                    stmt = insert.on_conflict_do_update(
                        index_elements=[t.c.key],
                        set_={
                            "value": insert.excluded.value,
                            "version": insert.excluded.version,
                            "expires_at_ms": insert.excluded.expires_at_ms,
                        },
                        where=t.c.version < insert.excluded.version,
                    ).returning(t.c.key, t.c.version)
                    applied = {key: int(version) for key, version in await conn.execute(stmt)}
                    outcome.update(applied)
                    lost = [key for key, _ in chunk if key not in applied]
                    if lost:
                        stmt = select(t.c.key, t.c.version).where(t.c.key.in_(lost))
                        outcome.update({key: int(version) for key, version in await conn.execute(stmt)})
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"SQL write failed: {exc}") from exc
        return outcome

    async def tombstone_matching(self, pattern: str, version: int) -> list[str]:
        """Turn every live row whose key matches the glob ``pattern`` into a tombstone.

        Returns the keys deleted. Rows are found by the pattern's literal prefix (an
        index range) and matched exactly here, with the same rules as L1 and Redis.
        """
        t = self.table
        regex = globs.compile_glob(pattern)
        prefix = globs.literal_prefix(pattern)
        stmt = select(t.c.key).where(t.c.value.is_not(None), t.c.version < version)
        if prefix:
            stmt = stmt.where(t.c.key.like(_like_prefix(prefix), escape="\\"))
        try:
            async with self._live_engine().connect() as conn:
                candidates = [key for (key,) in await conn.execute(stmt)]
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"SQL read failed: {exc}") from exc
        doomed = [key for key in candidates if regex.fullmatch(key)]
        if doomed:
            outcome = await self.put_many([(key, StoredEntry(None, version)) for key in doomed])
            doomed = [key for key in doomed if outcome.get(key) == version]
        return doomed

    async def purge(self, now_ms: int, tombstones_before_version: int) -> int:
        """Delete tombstones and rows expired by ``now_ms`` whose version is older than
        ``tombstones_before_version`` (the cutoff).

        Newer ones stay (reads skip expired rows), so :meth:`changed_since` can list every
        key changed at or after the cutoff: an expired row's key may still hold an older
        value in Redis that a heal must delete.
        """
        t = self.table
        stmt = delete(t).where(
            t.c.version < tombstones_before_version,
            or_(
                t.c.value.is_(None),
                and_(t.c.expires_at_ms.is_not(None), t.c.expires_at_ms <= now_ms),
            ),
        )
        try:
            async with self._live_engine().begin() as conn:
                result = await conn.execute(stmt)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreUnavailable(f"SQL purge failed: {exc}") from exc
        return int(result.rowcount or 0)

    # --- helpers -----------------------------------------------------------------------
    def _insert(self) -> Any:
        if self._dialect == "postgresql":
            return postgresql.insert(self.table)
        if self._dialect == "sqlite":
            return sqlite.insert(self.table)
        raise StoreUnavailable(f"unsupported SQL dialect {self._dialect!r}: use SQLite or PostgreSQL")

    @property
    def engine(self) -> AsyncEngine:
        """The connected engine, for tables that live beside the cache's (the admin audit log)."""
        return self._live_engine()

    def _live_engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreUnavailable("SQL store is not started")
        return self._engine

    def safe_url(self) -> str:
        """The URL with any password hidden, for logs."""
        engine = self._engine
        return engine.url.render_as_string(hide_password=True) if engine is not None else self.url
