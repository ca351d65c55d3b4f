"""The fill ledger: every fill is one row of a hash-chained SQL table.

Each row carries the SHA-256 of the row before it (``prev_hash``) and its own hash
(``hash``) over a canonical encoding of every other column, so editing, deleting,
inserting or reordering any row breaks the chain at that row or the next one, and
:meth:`Ledger.verify` (``hftgate ledger verify``) finds the first broken link.

Table (one per ledger, name configurable; SQLAlchemy 2 async, SQLite via aiosqlite
by default, PostgreSQL via asyncpg by URL):

==================  ============  ===================================================
column              type          meaning
==================  ============  ===================================================
position            BIGINT PK     1, 2, 3 ... the place in the chain, no gaps
transaction_id      VARCHAR UNIQ  ``"<symbol>:<trade_id>"``: deterministic from the
                                  fill, so re-recording a fill is a no-op; the public
                                  trade id, with the shard id in bits 48..62 (shards
                                  may share one table)
symbol              VARCHAR
price_ticks         BIGINT        trade price in the instrument's ticks
quantity_lots       BIGINT        traded quantity in the instrument's lots
buyer_account       VARCHAR
buyer_order_id      BIGINT        the exchange (public) order id of the buying order
seller_account      VARCHAR
seller_order_id     BIGINT
executed_at_ns      BIGINT        when the engine matched (ns since the epoch)
recorded_at_ns      BIGINT        when the ledger wrote the row (ns since the epoch)
prev_hash           CHAR(64)      hex hash of row ``position - 1``; 64 zeros for row 1
hash                CHAR(64)      hex SHA-256 of the canonical encoding below
==================  ============  ===================================================

Canonical encoding hashed for a row (all integers big-endian, strings UTF-8 with a
4-byte big-endian length in front, so no two different rows encode the same)::

    b"hftgate.ledger.v1\\n"
    position        int64
    prev_hash       32 raw bytes (the hex column decoded)
    transaction_id  len32 + utf-8
    symbol          len32 + utf-8
    price_ticks     int64
    quantity_lots   int64
    buyer_account   len32 + utf-8
    buyer_order_id  int64
    seller_account  len32 + utf-8
    seller_order_id int64
    executed_at_ns  int64
    recorded_at_ns  int64

Writing is off the order path: :meth:`Ledger.record` only puts the fill on a
bounded asyncio queue; one background task takes whatever has queued up (after
lingering ``batch_linger_ms`` for more to arrive) and writes it as one batch in
one SQL transaction. On a SQLite file the transaction runs on a thread of its own
with a blocking connection, handed over once per batch: through aiosqlite each of
its statements took several trips between the event loop and aiosqlite's thread
(about 14 a batch, ~2 ms of the loop's CPU; the shard's event loop is the order
path's), its statements as plain SQL, and the file in WAL mode with every commit
synced. PostgreSQL keeps the async driver. The chain head is read inside that
transaction and ``position`` is the primary key, so two writers (two tasks, or two
processes on the same table) can never fork the chain: the loser of a race gets a
unique-key conflict and retries on the new head. The ledger lags the order path, so
after a crash the service replays its journal and hands the regenerated fills to
:meth:`Ledger.catch_up`, which writes only those whose transaction id is missing.

High-water mark: the execution service records fills in ascending trade id order, and the
writer writes them in that order, so after each written batch every recorded fill up to the
batch's last trade id is in the table. :attr:`Ledger.written_through_trade_id` is that mark
(lowered below the first fill ``record`` had to turn away, which only a catch-up after a restart
can write), and :meth:`Ledger.wait_written_through` waits for it to reach a given trade id. A
snapshot waits for the mark of its own last trade, not for an empty queue, which under a
steady flow of fills may never come.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import operator
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from hftgate.sqltables import create_tables

log = logging.getLogger(__name__)

DEFAULT_TABLE_NAME = "ledger_transactions"

#: ``prev_hash`` of the first row.
GENESIS_HASH = "0" * 64

_HASH_DOMAIN = b"hftgate.ledger.v1\n"
_INT64 = struct.Struct(">q")
_LEN32 = struct.Struct(">I")

# A batch is one multi-row INSERT; 13 bound parameters a row keeps 500 rows well
# under the parameter limits of SQLite (32766) and PostgreSQL (32767).
_MAX_BATCH_FILLS = 500
_CONFLICT_RETRIES = 20
#: How long the writer waits after the first fill of a batch for more to join it.
DEFAULT_BATCH_LINGER_MS = 50.0
_RETRY_BACKOFF_MAX_S = 5.0


def default_database_url() -> str:
    """The execution service's ledger as it is configured (ExecutionConfig.ledger_url: the
    ``HFTGATE_EXECUTION_LEDGER_DATABASE_URL``, else ``ledger.sqlite3`` in its state directory)."""
    from services.execution.config import load_config

    return load_config().ledger_url()


@dataclass(frozen=True, slots=True)
class Fill:
    """One match between a buying and a selling order, as the engine reported it."""

    symbol: str
    #: The engine's trade id: with the symbol it names the fill, across restarts and replays.
    trade_id: int
    price_ticks: int
    quantity_lots: int
    buyer_account: str
    buyer_order_id: int
    seller_account: str
    seller_order_id: int
    executed_at_ns: int
    #: The execution shard that matched it (hftgate/shardmap.py). ``trade_id`` stays the shard's
    #: local id (the written-through mark follows it); the transaction id carries the public
    #: trade id, with the shard in bits 48..62, so shards sharing one ledger table never collide,
    #: not even on a symbol that moved between them. Shard 0's transaction ids are unchanged.
    shard_id: int = 0

    @property
    def public_trade_id(self) -> int:
        """The trade id clients see in ExecutionReport.trade_id."""
        return (self.shard_id << 48) | self.trade_id

    @property
    def transaction_id(self) -> str:
        return f"{self.symbol}:{self.public_trade_id}"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One stored row of the ledger."""

    position: int
    transaction_id: str
    symbol: str
    price_ticks: int
    quantity_lots: int
    buyer_account: str
    buyer_order_id: int
    seller_account: str
    seller_order_id: int
    executed_at_ns: int
    recorded_at_ns: int
    prev_hash: str
    hash: str


@dataclass(frozen=True, slots=True)
class BrokenLink:
    """The first row where the chain does not hold, and why."""

    position: int
    transaction_id: str
    reason: str

    def __str__(self) -> str:
        return f"position {self.position} (transaction {self.transaction_id}): {self.reason}"


class LedgerBacklogFull(Exception):
    """``record`` found the write queue full: the database is not keeping up or is unreachable.

    Nothing is lost as long as the fills are in the journal: :meth:`Ledger.catch_up`
    with the recovered fills brings the ledger level again.
    """


class LedgerClosed(Exception):
    """The ledger was closed; it accepts no more fills."""


class LedgerGap(Exception):
    """A fill up to the awaited trade id was turned away (backlog full): only a catch-up from the
    journal after a restart can write it, so the wait would never end."""


def ledger_table(name: str = DEFAULT_TABLE_NAME, metadata: sa.MetaData | None = None) -> sa.Table:
    """The ledger's table definition under ``name`` (a fresh MetaData unless one is given)."""
    return sa.Table(
        name,
        metadata if metadata is not None else sa.MetaData(),
        sa.Column("position", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("transaction_id", sa.String(128), nullable=False, unique=True),
        sa.Column("symbol", sa.String(64), nullable=False),
        sa.Column("price_ticks", sa.BigInteger, nullable=False),
        sa.Column("quantity_lots", sa.BigInteger, nullable=False),
        sa.Column("buyer_account", sa.String(128), nullable=False),
        sa.Column("buyer_order_id", sa.BigInteger, nullable=False),
        sa.Column("seller_account", sa.String(128), nullable=False),
        sa.Column("seller_order_id", sa.BigInteger, nullable=False),
        sa.Column("executed_at_ns", sa.BigInteger, nullable=False),
        sa.Column("recorded_at_ns", sa.BigInteger, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )


_TEXT_LIMITS = {"symbol": 64, "buyer_account": 128, "seller_account": 128}
_INT_FIELDS = (
    "trade_id",
    "price_ticks",
    "quantity_lots",
    "buyer_order_id",
    "seller_order_id",
    "executed_at_ns",
)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def validate_fill(fill: Fill) -> None:
    """Raise ValueError for a fill the table cannot store, before it reaches the writer.

    A fill the database would refuse would otherwise stall the background writer on
    retries, so it is turned away at the door instead.
    """
    for name, limit in _TEXT_LIMITS.items():
        value = getattr(fill, name)
        if not isinstance(value, str) or not value or len(value) > limit:
            raise ValueError(
                f"Cannot record fill {fill.transaction_id!r}: {name} must be 1..{limit} characters"
            )
    for name in _INT_FIELDS:
        value = getattr(fill, name)
        if not isinstance(value, int) or not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"Cannot record fill {fill.transaction_id!r}: {name}={value!r} is not an int64")


def _put_text(out: list[bytes], text: str) -> None:
    raw = text.encode("utf-8")
    out.append(_LEN32.pack(len(raw)))
    out.append(raw)


def entry_hash(
    *,
    position: int,
    prev_hash: str,
    transaction_id: str,
    symbol: str,
    price_ticks: int,
    quantity_lots: int,
    buyer_account: str,
    buyer_order_id: int,
    seller_account: str,
    seller_order_id: int,
    executed_at_ns: int,
    recorded_at_ns: int,
) -> str:
    """Hex SHA-256 of a row's canonical encoding (see the module docstring)."""
    parts: list[bytes] = [_HASH_DOMAIN, _INT64.pack(position), bytes.fromhex(prev_hash)]
    _put_text(parts, transaction_id)
    _put_text(parts, symbol)
    parts.append(_INT64.pack(price_ticks))
    parts.append(_INT64.pack(quantity_lots))
    _put_text(parts, buyer_account)
    parts.append(_INT64.pack(buyer_order_id))
    _put_text(parts, seller_account)
    parts.append(_INT64.pack(seller_order_id))
    parts.append(_INT64.pack(executed_at_ns))
    parts.append(_INT64.pack(recorded_at_ns))
    return hashlib.sha256(b"".join(parts)).hexdigest()


def _entry_from_fill(fill: Fill, position: int, prev_hash: str, recorded_at_ns: int) -> LedgerEntry:
    fields: dict[str, Any] = {
        "position": position,
        "prev_hash": prev_hash,
        "transaction_id": fill.transaction_id,
        "symbol": fill.symbol,
        "price_ticks": fill.price_ticks,
        "quantity_lots": fill.quantity_lots,
        "buyer_account": fill.buyer_account,
        "buyer_order_id": fill.buyer_order_id,
        "seller_account": fill.seller_account,
        "seller_order_id": fill.seller_order_id,
        "executed_at_ns": fill.executed_at_ns,
        "recorded_at_ns": recorded_at_ns,
    }
    return LedgerEntry(hash=entry_hash(**fields), **fields)


#: The table's columns in LedgerEntry order (a row as a tuple).
_COLUMNS: tuple[str, ...] = LedgerEntry.__slots__
_row_as_tuple = operator.attrgetter(*_COLUMNS)


@dataclass(frozen=True, slots=True)
class _PlainSql:
    """The writer's statements as SQL text with ``?`` parameters (SQLite's paramstyle)."""

    present_prefix: str  # + "?,?,...)" for the transaction ids looked for
    head: str
    insert: str

    @classmethod
    def of(cls, table: sa.Table, dialect: sa.Dialect) -> _PlainSql:
        quote = dialect.identifier_preparer
        name = quote.format_table(table)
        columns = ", ".join(quote.quote(column) for column in _COLUMNS)
        return cls(
            present_prefix=f"SELECT transaction_id FROM {name} WHERE transaction_id IN (",
            head=f"SELECT position, hash FROM {name} ORDER BY position DESC LIMIT 1",
            insert=f"INSERT INTO {name} ({columns}) VALUES ({', '.join('?' * len(_COLUMNS))})",
        )

    def present(self, count: int) -> str:
        return self.present_prefix + ",".join("?" * count) + ")"


def _check_link(row: Any, expected_position: int, expected_prev_hash: str) -> str | None:
    """Why ``row`` does not continue the chain, or None when it does."""
    if row.position != expected_position:
        return f"position {row.position} where {expected_position} was expected (a row is missing)"
    if row.prev_hash != expected_prev_hash:
        return f"prev_hash {row.prev_hash} does not match the previous row's hash {expected_prev_hash}"
    try:
        recomputed = entry_hash(
            position=row.position,
            prev_hash=row.prev_hash,
            transaction_id=row.transaction_id,
            symbol=row.symbol,
            price_ticks=row.price_ticks,
            quantity_lots=row.quantity_lots,
            buyer_account=row.buyer_account,
            buyer_order_id=row.buyer_order_id,
            seller_account=row.seller_account,
            seller_order_id=row.seller_order_id,
            executed_at_ns=row.executed_at_ns,
            recorded_at_ns=row.recorded_at_ns,
        )
    except (ValueError, struct.error) as exc:
        return f"row cannot be encoded for hashing: {exc}"
    if recomputed != row.hash:
        return f"stored hash {row.hash} does not match the row's content (recomputed {recomputed})"
    return None


async def table_exists(engine: AsyncEngine, table_name: str) -> bool:
    async with engine.connect() as conn:
        return bool(await conn.run_sync(lambda sync_conn: sa.inspect(sync_conn).has_table(table_name)))


async def count_entries(engine: AsyncEngine, table: sa.Table) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def verify_chain(
    engine: AsyncEngine,
    table: sa.Table,
    on_progress: Callable[[int], None] | None = None,
    page_rows: int = 5000,
) -> BrokenLink | None:
    """Walk the chain from position 1 and return the first broken link, or None when it holds.

    ``on_progress(rows_checked)`` is called after each page of ``page_rows`` rows.
    Reads page by page (keyset on position), so memory stays flat on any size.
    """
    expected_position = 1
    expected_prev_hash = GENESIS_HASH
    checked = 0
    async with engine.connect() as conn:
        while True:
            query = sa.select(table).order_by(table.c.position).limit(page_rows)
            if checked:
                query = query.where(table.c.position >= expected_position)
            page = (await conn.execute(query)).all()
            if not page:
                return None
            for row in page:
                reason = _check_link(row, expected_position, expected_prev_hash)
                if reason is not None:
                    return BrokenLink(row.position, row.transaction_id, reason)
                expected_position += 1
                expected_prev_hash = row.hash
            checked += len(page)
            if on_progress is not None:
                on_progress(checked)


def create_engine_for(database_url: str) -> AsyncEngine:
    """An async engine for ``database_url``; SQLite waits up to 30 s for a lock instead of failing."""
    connect_args: dict[str, Any] = {}
    if database_url.startswith("sqlite"):
        connect_args["timeout"] = 30
    return create_async_engine(database_url, connect_args=connect_args)


def _write_ahead_log(dbapi_connection: Any, _record: Any) -> None:
    """SQLite in WAL mode, every commit still synced: a commit appends to one file and syncs it,
    where the rollback journal made, synced and deleted a file per transaction (~1 ms of CPU
    a batch here). The suite's other SQLite stores (shard map, cache, moves) use WAL too."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def blocking_engine_for(database_url: str) -> sa.Engine | None:
    """A blocking engine on the same SQLite file as ``database_url`` (for the writer thread), or
    None when the database is not a SQLite file: an in-memory database exists once per connection,
    and other databases keep their async driver."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    if url.query.get("uri") or url.database.startswith("file:"):
        return None  # a URI may name a shared in-memory database: leave it to the async driver
    # One thread uses the connection, but not the thread that made the pool: allow it.
    engine = sa.create_engine(
        url.set(drivername="sqlite+pysqlite"), connect_args={"timeout": 30, "check_same_thread": False}
    )
    sa.event.listen(engine, "connect", _write_ahead_log)
    return engine


class Ledger:
    """The hash-chained fill ledger of one table, with a background batch writer.

    Build it with :meth:`open` inside a running event loop. ``record`` and
    ``catch_up`` must be called from that loop.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        table: sa.Table,
        *,
        queue_max_fills: int = 100_000,
        batch_max_fills: int = _MAX_BATCH_FILLS,
        batch_linger_ms: float = DEFAULT_BATCH_LINGER_MS,
        clock_ns: Callable[[], int] = time.time_ns,
        blocking_engine: sa.Engine | None = None,
    ) -> None:
        if not 1 <= batch_max_fills <= _MAX_BATCH_FILLS:
            raise ValueError(f"batch_max_fills must be 1..{_MAX_BATCH_FILLS}, got {batch_max_fills}")
        self._engine = engine
        self._table = table
        #: Set for a SQLite file: batches are written through it on ``_write_thread``.
        self._blocking_engine = blocking_engine
        self._write_thread: concurrent.futures.ThreadPoolExecutor | None = None
        if blocking_engine is not None:
            self._write_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ledger-write")
        self._head_query = (
            sa.select(table.c.position, table.c.hash).order_by(table.c.position.desc()).limit(1)
        )
        self._plain_sql: _PlainSql | None = None
        self._batch_max_fills = batch_max_fills
        self._batch_linger_s = max(batch_linger_ms, 0.0) / 1000
        self._clock_ns = clock_ns
        self._queue: asyncio.Queue[Fill] = asyncio.Queue(maxsize=queue_max_fills)
        # Serialises this process's writers (the background task and catch_up), so
        # they never race each other for the chain head; other processes are kept
        # out of the chain by the primary key (see _write_batch).
        self._write_lock = asyncio.Lock()
        self._writer_task: asyncio.Task[None] | None = None
        self._closed = False
        # Every fill recorded with a trade id up to this one is written (see the module docstring).
        self._written_through_trade_id = 0
        self._first_dropped_trade_id: int | None = None
        self._progress = asyncio.Event()
        self.batches_written = 0
        self.entries_written = 0
        self.duplicates_skipped = 0

    @classmethod
    async def open(
        cls,
        database_url: str | None = None,
        table_name: str = DEFAULT_TABLE_NAME,
        *,
        queue_max_fills: int = 100_000,
        batch_max_fills: int = _MAX_BATCH_FILLS,
        batch_linger_ms: float = DEFAULT_BATCH_LINGER_MS,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> Ledger:
        """Connect, create the table if it does not exist, and start the background writer."""
        url = database_url or default_database_url()
        engine = create_engine_for(url)
        blocking_engine = blocking_engine_for(url)
        if blocking_engine is not None:
            sa.event.listen(engine.sync_engine, "connect", _write_ahead_log)
        table = ledger_table(table_name)
        try:
            await create_tables(engine, table.metadata)
        except BaseException:
            await engine.dispose()
            raise
        ledger = cls(
            engine,
            table,
            queue_max_fills=queue_max_fills,
            batch_max_fills=batch_max_fills,
            batch_linger_ms=batch_linger_ms,
            clock_ns=clock_ns,
            blocking_engine=blocking_engine,
        )
        ledger._writer_task = asyncio.create_task(ledger._run_writer(), name=f"ledger-writer[{table_name}]")
        return ledger

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def table(self) -> sa.Table:
        return self._table

    @property
    def backlog_fills(self) -> int:
        """Fills recorded and not yet written."""
        return self._queue.qsize()

    @property
    def written_through_trade_id(self) -> int:
        """Every fill recorded with a trade id up to this one is written (0 = none known).

        Meaningful when fills are recorded in ascending trade id order, as the service does.
        """
        if self._first_dropped_trade_id is not None:
            return min(self._written_through_trade_id, self._first_dropped_trade_id - 1)
        return self._written_through_trade_id

    def mark_written_through(self, trade_id: int) -> None:
        """Declare every fill up to ``trade_id`` written (after a catch-up brought the table level)."""
        if trade_id > self._written_through_trade_id:
            self._written_through_trade_id = trade_id
            self._progress.set()

    async def wait_written_through(self, trade_id: int) -> None:
        """Wait until :attr:`written_through_trade_id` reaches ``trade_id``.

        Raises :class:`LedgerGap` when a fill at or below ``trade_id`` was turned away by ``record``.
        """
        while self.written_through_trade_id < trade_id:
            dropped = self._first_dropped_trade_id
            if dropped is not None and dropped <= trade_id:
                raise LedgerGap(f"fill with trade id {dropped} was not queued (backlog full)")
            self._progress.clear()
            await self._progress.wait()

    def record(self, fill: Fill) -> None:
        """Queue ``fill`` for the background writer; never waits.

        Raises :class:`LedgerBacklogFull` when the queue is full and :class:`LedgerClosed` after close.
        """
        if self._closed:
            raise LedgerClosed("the ledger is closed")
        validate_fill(fill)
        try:
            self._queue.put_nowait(fill)
        except asyncio.QueueFull:
            if self._first_dropped_trade_id is None or fill.trade_id < self._first_dropped_trade_id:
                self._first_dropped_trade_id = fill.trade_id
                self._progress.set()  # a waiter past it must learn that its wait is over
            raise LedgerBacklogFull(
                f"ledger write queue full ({self._queue.maxsize} fills): database not keeping up"
            ) from None

    async def flush(self) -> None:
        """Wait until every fill recorded so far is written."""
        await self._queue.join()

    async def catch_up(self, fills: Iterable[Fill]) -> int:
        """Write every fill of ``fills`` whose transaction id is not in the ledger yet, in the given order.

        Waits for the background queue first, so fills recorded before the call keep
        their place. Returns how many rows were added.
        """
        await self.flush()
        added = 0
        batch: list[Fill] = []
        for fill in fills:
            validate_fill(fill)
            batch.append(fill)
            if len(batch) == self._batch_max_fills:
                added += await self._write_batch(batch)
                batch = []
        if batch:
            added += await self._write_batch(batch)
        return added

    async def verify(self, on_progress: Callable[[int], None] | None = None) -> BrokenLink | None:
        """Walk the chain; the first broken link, or None when the chain holds."""
        return await verify_chain(self._engine, self._table, on_progress)

    async def entries(self) -> list[LedgerEntry]:
        """Every row in chain order (for tests and tools; loads the whole table)."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sa.select(self._table).order_by(self._table.c.position))).all()
        return [LedgerEntry(**row._asdict()) for row in rows]

    async def head(self) -> tuple[int, str]:
        """(position, hash) of the last row; (0, GENESIS_HASH) when empty."""
        async with self._engine.connect() as conn:
            return await self._read_head(conn)

    async def close(self) -> None:
        """Write what is queued, stop the writer and release the connections."""
        if self._closed:
            return
        self._closed = True
        try:
            await self.flush()
        finally:
            if self._writer_task is not None:
                self._writer_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer_task
            if self._write_thread is not None:
                # A batch cancelled above may still be finishing on the thread: let it end first.
                await asyncio.to_thread(self._write_thread.shutdown, wait=True)
            if self._blocking_engine is not None:
                self._blocking_engine.dispose()
            await self._engine.dispose()

    async def drop_table(self) -> None:
        """Drop the ledger's table (tests and tools)."""
        async with self._engine.begin() as conn:
            await conn.run_sync(self._table.metadata.drop_all, checkfirst=True)

    # --- writing ---------------------------------------------------------------

    async def _run_writer(self) -> None:
        while True:
            batch = [await self._queue.get()]
            if self._batch_linger_s and self._queue.qsize() < self._batch_max_fills - 1 and not self._closed:
                # Let the fills of the next few order-path calls join this batch: a transaction
                # costs the event loop far more than a row, so fewer, larger ones leave it freer.
                await asyncio.sleep(self._batch_linger_s)
            while len(batch) < self._batch_max_fills and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            backoff_s = 0.05
            while True:
                try:
                    await self._write_batch(batch)
                    break
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # A database that is down or refusing must not lose fills or stop
                    # the writer: keep the batch and try again, slower each time.
                    log.warning(
                        "ledger batch of %d fills failed (%s: %s); retrying in %.2f s",
                        len(batch),
                        type(exc).__name__,
                        exc,
                        backoff_s,
                    )
                    await asyncio.sleep(backoff_s)
                    backoff_s = min(backoff_s * 2, _RETRY_BACKOFF_MAX_S)
            self.mark_written_through(max(fill.trade_id for fill in batch))
            for _ in batch:
                self._queue.task_done()

    async def _write_batch(self, fills: Sequence[Fill]) -> int:
        """Append the fills not already present; returns how many rows were added."""
        async with self._write_lock:
            attempt = 1
            while True:
                try:
                    return await self._append_once(fills)
                except (IntegrityError, OperationalError) as exc:
                    if attempt == _CONFLICT_RETRIES or not _is_retryable(exc):
                        raise
                    # Another writer moved the head (or held the SQLite lock) between
                    # our read and our insert: read the new head and try again.
                    log.debug("ledger write conflict (attempt %d): %s", attempt, exc)
                    await asyncio.sleep(0.001 * attempt)
                    attempt += 1

    async def _append_once(self, fills: Sequence[Fill]) -> int:
        if self._blocking_engine is not None:
            assert self._write_thread is not None
            added, skipped = await asyncio.get_running_loop().run_in_executor(
                self._write_thread, self._append_blocking, fills
            )
        else:
            async with self._engine.begin() as conn:
                added, skipped = await conn.run_sync(self._append_rows, fills)
        if added:
            self.batches_written += 1
            self.entries_written += added
        self.duplicates_skipped += skipped
        return added

    def _append_blocking(self, fills: Sequence[Fill]) -> tuple[int, int]:
        assert self._blocking_engine is not None
        with self._blocking_engine.begin() as conn:
            return self._append_rows(conn, fills)

    def _append_rows(self, conn: sa.Connection, fills: Sequence[Fill]) -> tuple[int, int]:
        """In one transaction: append the fills not already present; (rows added, fills skipped).

        Where the driver takes ``?`` parameters (SQLite) the statements go as plain SQL and the
        rows as tuples: SQLAlchemy's handling of a Core insert's parameters, row by row, cost
        more CPU than SQLite's own work (~30% of a batch of 25)."""
        table = self._table
        wanted: dict[str, Fill] = {}
        for fill in fills:
            wanted.setdefault(fill.transaction_id, fill)
        ids = list(wanted)
        plain = None
        if conn.dialect.paramstyle == "qmark":
            plain = self._plain_sql
            if plain is None:
                plain = self._plain_sql = _PlainSql.of(table, conn.dialect)
            found = conn.exec_driver_sql(plain.present(len(ids)), tuple(ids))
        else:
            found = conn.execute(sa.select(table.c.transaction_id).where(table.c.transaction_id.in_(ids)))
        present = {row[0] for row in found}
        new_fills = [fill for tid, fill in wanted.items() if tid not in present]
        skipped = len(fills) - len(new_fills)
        if not new_fills:
            return 0, skipped
        head = (conn.exec_driver_sql(plain.head) if plain else conn.execute(self._head_query)).first()
        position, prev_hash = (0, GENESIS_HASH) if head is None else (int(head[0]), str(head[1]))
        recorded_at_ns = self._clock_ns()
        rows = []
        for fill in new_fills:
            position += 1
            entry = _entry_from_fill(fill, position, prev_hash, recorded_at_ns)
            rows.append(_row_as_tuple(entry))
            prev_hash = entry.hash
        if plain:
            conn.exec_driver_sql(plain.insert, rows)
        else:
            conn.execute(table.insert(), [dict(zip(_COLUMNS, row, strict=True)) for row in rows])
        return len(rows), skipped

    async def _read_head(self, conn: AsyncConnection) -> tuple[int, str]:
        row = (await conn.execute(self._head_query)).first()
        if row is None:
            return 0, GENESIS_HASH
        return int(row.position), str(row.hash)


def _is_retryable(exc: DBAPIError) -> bool:
    if isinstance(exc, IntegrityError):
        return True
    message = str(exc.orig).lower()
    return "locked" in message or "busy" in message or "serializ" in message or "deadlock" in message
