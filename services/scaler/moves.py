"""Moving a symbol between execution shards without losing anything (issue #15).

A move is a small state machine whose steps are recorded in a SQL table (``symbol_moves``, in
the shard map's database, through SQLAlchemy async) and whose every step is idempotent, so that a
mover killed at any point resumes with :meth:`SymbolMover.run` (or :meth:`SymbolMover.resume_all`)
and ends with exactly one owner holding the same book:

=========  ==============================================================================
step       what it does (and why sending it again is harmless)
=========  ==============================================================================
mark       publishes the shard map with the symbol marked ``moving`` (compare-and-set; skipped
           when the stored map already marks it). From this epoch no shard takes input for the
           symbol: UNAVAILABLE with a google.rpc.RetryInfo of a few ms (fencing.py), re-checked
           right before each journal append, so nothing slips in behind the export.
export     asks the old owner for the book (shard_admin.proto ExportSymbol): once the shard
           follows the marking epoch and its journal made every accepted input durable, the
           resting orders in time priority, iceberg reserves, pending stops, each with its
           original order id (the same book every time: nothing can change it while the symbol
           is marked).
import     gives the book to the new owner (ImportSymbol), which journals it as one record and
           keeps the original ids; a repeat finds it already imported.
release    tells the old owner the book left (ReleaseSymbol, durable there): cancels, replaces
           and gets of the moved working orders it still holds answer NOT_SHARD_OWNER naming
           the new owner. Done before the map changes, so no cancel ever lands on the old copy.
publish    publishes the pin to the new owner and drops the mark in one epoch, then asks both
           shards to read the map at once (SyncShardMap) rather than at their next poll.
done       nothing left.
=========  ==============================================================================

``mark`` is recorded before it is acted on, and ``export`` once the mark is published. The steps
inside the symbol's pause (export, import, release) are not recorded one by one: each record is a
SQL commit of a few ms while every order of the symbol waits. A mover killed among them resumes
at ``export``, which gives the same book again (the old owner is frozen, even once it released
it), and the import and release that were done find themselves done; one killed after
``publish`` finds the move's end in the map and records ``done``.

A kill -9 of either shard during a step is a failed call: the mover retries the step (after the
shard restarts; its journal, snapshots and ``moves/`` files rebuild what it had). A move can be
abandoned only at ``mark`` (:meth:`SymbolMover.abort`: the mark is dropped and the old owner
takes input again; a move recorded at ``export`` may have been imported already), or by the mover
itself when the new owner refuses the import
(FAILED_PRECONDITION: it changed nothing, e.g. it still holds a frozen copy of the symbol from an
earlier move away); once imported, only forward. No gRPC server here; the mover is a client of the
shards, called by the scaler or an operator command.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    event,
    select,
    update,
)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hftgate import security
from hftgate.shardmap import (
    EpochConflict,
    ShardMap,
    ShardMapError,
    ShardMapStore,
    ShardMapUnavailable,
    check_symbol,
)
from hftgate.sqltables import create_tables
from hftgate.v1 import shard_admin_pb2 as admin
from hftgate.v1 import shard_admin_pb2_grpc as admin_grpc

log = logging.getLogger(__name__)

STEPS = ("mark", "export", "import", "release", "publish", "done")
ABORTED = "aborted"
DEFAULT_MOVES_TABLE = "symbol_moves"
#: Step changes inside the symbol's pause, made in memory only (see the module docstring).
_UNRECORDED = frozenset({("export", "import"), ("import", "release"), ("release", "publish")})
#: Finished moves kept in the table (older ones are deleted when a move is recorded).
MAX_KEPT_MOVES = 10_000
#: Deadline of one shard call; a step that fails is retried up to ``attempts`` times.
CALL_TIMEOUT_S = 10.0


class MoveRefused(RuntimeError):
    """A move that cannot start or go on (the message says why)."""


@dataclass(frozen=True, slots=True)
class Move:
    """One row of the moves table."""

    move_id: str
    symbol: str
    from_shard_id: int
    to_shard_id: int
    step: str
    marked_epoch: int
    book: bytes
    started_ns: int
    updated_ns: int
    error: str


def _table(metadata: MetaData, name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("move_id", String(64), primary_key=True),
        Column("symbol", String(64), nullable=False, index=True),
        Column("from_shard_id", Integer, nullable=False),
        Column("to_shard_id", Integer, nullable=False),
        Column("step", String(16), nullable=False),
        Column("marked_epoch", BigInteger, nullable=False, default=0),
        Column("book", LargeBinary, nullable=False, default=b""),
        Column("started_ns", BigInteger, nullable=False),
        Column("updated_ns", BigInteger, nullable=False),
        Column("error", Text, nullable=False, default=""),
    )


class SymbolMover:
    """Drives symbol moves (see the module docstring). ``store`` is the shard map store (started);
    the moves table lives in the same database. ``credentials`` are the caller's (the ``scaler``
    or ``admin`` principal's service token)."""

    def __init__(
        self,
        store: ShardMapStore,
        credentials: security.ClientCredentials,
        *,
        table_name: str = DEFAULT_MOVES_TABLE,
        attempts: int = 20,
        retry_delay_s: float = 0.2,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.store = store
        self.credentials = credentials
        self._metadata = MetaData()
        self.table = _table(self._metadata, table_name)
        self.attempts = max(1, attempts)
        self.retry_delay_s = retry_delay_s
        self.clock_ns = clock_ns
        self._engine: AsyncEngine | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        #: The map last read, for the shards' addresses: read once per step rather than once per
        #: call (each read is a SQL round trip inside the symbol's pause); dropped when a step
        #: fails, so a retry reads where a restarted shard listens now.
        self._addresses: ShardMap | None = None
        #: Test hook: called with the step about to be acted on; raising from it abandons the
        #: mover there, as a kill would.
        self.before_step: Callable[[Move], None] | None = None
        #: The step each move's row holds, where it differs from the move's (_UNRECORDED).
        self._stored_steps: dict[str, str] = {}

    async def start(self) -> None:
        if self.store.url.startswith("sqlite"):
            # As the shard map store does: WAL, and wait for a lock instead of failing at once
            # (shards poll the same file).
            self._engine = create_async_engine(self.store.url, connect_args={"timeout": 30})

            @event.listens_for(self._engine.sync_engine, "connect")
            def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA busy_timeout=10000")
                cursor.close()

        else:
            self._engine = create_async_engine(self.store.url, pool_size=2, pool_pre_ping=True)
        await create_tables(self._engine, self._metadata)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def __aenter__(self) -> SymbolMover:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def _live(self) -> AsyncEngine:
        if self._engine is None:
            raise MoveRefused("the mover is not started")
        return self._engine

    # --- the table -----------------------------------------------------------------------------
    async def get(self, move_id: str) -> Move | None:
        t = self.table
        async with self._live().connect() as conn:
            row = (await conn.execute(select(t).where(t.c.move_id == move_id))).first()
        return None if row is None else Move(**row._mapping)

    async def unfinished(self) -> list[Move]:
        t = self.table
        async with self._live().connect() as conn:
            rows = (
                await conn.execute(
                    select(t).where(t.c.step.not_in(("done", ABORTED))).order_by(t.c.started_ns)
                )
            ).all()
        return [Move(**row._mapping) for row in rows]

    async def _record(self, move: Move, **changes: Any) -> Move:
        """The move with ``changes``, written to its row unless it is a step change inside the
        symbol's pause (``_UNRECORDED``)."""
        values = {**changes, "updated_ns": self.clock_ns()}
        fields = {f: getattr(move, f) for f in Move.__dataclass_fields__}
        fields.update(values)
        changed = Move(**fields)
        if (move.step, changes.get("step")) in _UNRECORDED and set(changes) <= {"step", "book"}:
            self._stored_steps.setdefault(move.move_id, move.step)
            return changed
        t = self.table
        stored = self._stored_steps.get(move.move_id, move.step)
        values.pop("book", None)  # (the book is not kept: an export gives it again)
        async with self._live().begin() as conn:
            result = await conn.execute(
                update(t).where(t.c.move_id == move.move_id, t.c.step == stored).values(**values)
            )
            if result.rowcount != 1:
                raise MoveRefused(f"move {move.move_id} changed underneath (another mover runs it?)")
        if "step" in changes:
            self._stored_steps.pop(move.move_id, None)
        return changed

    async def start_move(self, symbol: str, to_shard_id: int, move_id: str | None = None) -> Move:
        """Record a new move of ``symbol`` to ``to_shard_id`` (nothing acted on yet)."""
        check_symbol(symbol)
        current = await self.store.load()
        if current is None:
            raise MoveRefused("no shard map is stored")
        if current.shard(to_shard_id) is None:
            raise MoveRefused(f"shard {to_shard_id} is not in the shard map (epoch {current.epoch})")
        owner = current.owner(symbol).shard_id
        if owner == to_shard_id:
            raise MoveRefused(f"{symbol} already belongs to shard {to_shard_id}")
        if any(m.symbol == symbol for m in await self.unfinished()):
            raise MoveRefused(f"{symbol} is already being moved")
        now = self.clock_ns()
        move = Move(
            move_id or uuid.uuid4().hex,
            symbol,
            owner,
            to_shard_id,
            STEPS[0],
            0,
            b"",
            now,
            now,
            "",
        )
        async with self._live().begin() as conn:
            await conn.execute(
                self.table.insert().values(**{f: getattr(move, f) for f in Move.__dataclass_fields__})
            )
        await self._trim()
        log.info("move %s: %s from shard %d to shard %d recorded", move.move_id, symbol, owner, to_shard_id)
        return move

    async def _trim(self) -> None:
        t = self.table
        async with self._live().begin() as conn:
            finished = (
                await conn.execute(
                    select(t.c.move_id)
                    .where(t.c.step.in_(("done", ABORTED)))
                    .order_by(t.c.started_ns.desc())
                    .offset(MAX_KEPT_MOVES)
                )
            ).all()
            if finished:
                await conn.execute(t.delete().where(t.c.move_id.in_([r[0] for r in finished])))

    # --- driving ------------------------------------------------------------------------------
    async def move(self, symbol: str, to_shard_id: int) -> Move:
        """Start a move and drive it to the end."""
        return await self.run((await self.start_move(symbol, to_shard_id)).move_id)

    async def resume_all(self) -> list[Move]:
        """Drive every unfinished move to its end (after a mover restart)."""
        return [await self.run(m.move_id) for m in await self.unfinished()]

    async def run(self, move_id: str) -> Move:
        """Drive a recorded move from the step it is at to ``done``."""
        move = await self.get(move_id)
        if move is None:
            raise MoveRefused(f"no move {move_id}")
        self._addresses = None
        if move.step in ("export", "import", "release", "publish") and await self._published_already(move):
            # Killed after it published (the row says an earlier step): its end is in the map.
            move = await self._record(move, step="done")
        while move.step not in ("done", ABORTED):
            if self.before_step is not None:
                self.before_step(move)
            move = await self._attempt(move)
        return move

    async def _attempt(self, move: Move) -> Move:
        last: Exception | None = None
        for attempt in range(self.attempts):
            try:
                return await self._do(move)
            except (MoveRefused, ShardMapError) as exc:
                raise MoveRefused(f"move {move.move_id} ({move.symbol}): step {move.step}: {exc}") from exc
            except (
                TimeoutError,
                grpc.aio.AioRpcError,
                SQLAlchemyError,
                OSError,
                ShardMapUnavailable,
                EpochConflict,
            ) as exc:
                last = exc
                self._addresses = None
                if isinstance(exc, grpc.aio.AioRpcError) and exc.code() in (
                    grpc.StatusCode.PERMISSION_DENIED,
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.INVALID_ARGUMENT,
                    grpc.StatusCode.FAILED_PRECONDITION,
                ):
                    if exc.code() == grpc.StatusCode.FAILED_PRECONDITION and move.step in (
                        "export",
                        "import",
                    ):
                        # The shard refused before changing anything (an import already done
                        # answers OK): give the symbol back to its owner rather than leave it
                        # refusing input.
                        await self._abandon(move)
                        raise MoveRefused(
                            f"move {move.move_id} ({move.symbol}) abandoned at step {move.step}: "
                            f"{exc.details()}"
                        ) from exc
                    break
                log.warning(
                    "move %s: step %s failed (attempt %d): %s", move.move_id, move.step, attempt + 1, exc
                )
                await asyncio.sleep(self.retry_delay_s)
        detail = last.details() if isinstance(last, grpc.aio.AioRpcError) else str(last)
        with _suppress():
            await self._record(move, error=f"step {move.step}: {detail}"[:2000])
        raise MoveRefused(f"move {move.move_id} ({move.symbol}): step {move.step} failed: {detail}")

    async def _do(self, move: Move) -> Move:
        step = move.step
        if step == "mark":
            epoch = await self._mark(move)
            return await self._record(move, step="export", marked_epoch=epoch)
        if step == "export":
            reply = await (await self._stub(move.from_shard_id)).ExportSymbol(
                admin.ExportSymbolRequest(
                    move_id=move.move_id, symbol=move.symbol, min_epoch=move.marked_epoch, columns=True
                ),
                timeout=CALL_TIMEOUT_S,
                metadata=self.credentials.metadata,
            )
            return await self._record(move, step="import", book=reply.SerializeToString())
        if step == "import":
            book = admin.ExportSymbolResponse.FromString(move.book)
            await (await self._stub(move.to_shard_id)).ImportSymbol(
                admin.ImportSymbolRequest(
                    move_id=move.move_id,
                    symbol=move.symbol,
                    from_shard_id=move.from_shard_id,
                    min_epoch=move.marked_epoch,
                    # (Rows when the old owner predates MovedBook: the new owner reads either.)
                    orders=book.orders,
                    book=book.book,
                ),
                timeout=CALL_TIMEOUT_S,
                metadata=self.credentials.metadata,
            )
            return await self._record(move, step="release")
        if step == "release":
            await (await self._stub(move.from_shard_id)).ReleaseSymbol(
                admin.ReleaseSymbolRequest(
                    move_id=move.move_id, symbol=move.symbol, to_shard_id=move.to_shard_id
                ),
                timeout=CALL_TIMEOUT_S,
                metadata=self.credentials.metadata,
            )
            return await self._record(move, step="publish")
        if step == "publish":
            epoch = await self._publish(move)
            # All at once: the pause lasts until both shards follow the new epoch, and recording
            # the end need not wait for them (the syncs are best effort; a mover killed before
            # the record publishes nothing new when it resumes, and syncs again).
            syncing = asyncio.gather(
                *(self._sync(shard_id, epoch) for shard_id in (move.to_shard_id, move.from_shard_id))
            )
            try:
                return await self._record(move, step="done")
            finally:
                await syncing
        raise MoveRefused(f"move {move.move_id} is at unknown step {step!r}")

    async def _sync(self, shard_id: int, epoch: int) -> None:
        """Ask a shard to read the map now (best effort: its own poll catches up otherwise)."""
        with _suppress():
            await (await self._stub(shard_id)).SyncShardMap(
                admin.SyncShardMapRequest(min_epoch=epoch),
                timeout=CALL_TIMEOUT_S,
                metadata=self.credentials.metadata,
            )

    async def _mark(self, move: Move) -> int:
        """Publish the moving mark (or find it published); returns the epoch that holds it."""

        def marked(current: ShardMap) -> bool:
            return current.moving.get(move.symbol) == move.to_shard_id

        current = await self._map()
        if marked(current):
            return current.epoch
        if current.owner(move.symbol).shard_id != move.from_shard_id:
            raise MoveRefused(
                f"{move.symbol} belongs to shard {current.owner(move.symbol).shard_id} at epoch "
                f"{current.epoch}, not to shard {move.from_shard_id} as when the move was recorded"
            )
        try:
            published = await self.store.update(lambda m: m.with_move_started(move.symbol, move.to_shard_id))
        except ShardMapError:  # another mover of this same move marked it meanwhile, or the map changed
            current = await self._map()
            if marked(current):
                return current.epoch
            raise
        self._addresses = published
        return published.epoch

    async def _published_already(self, move: Move) -> bool:
        current = await self._map()
        return move.symbol not in current.moving and current.pins.get(move.symbol) == move.to_shard_id

    async def _publish(self, move: Move) -> int:
        def published_already(current: ShardMap) -> bool:
            return move.symbol not in current.moving and current.pins.get(move.symbol) == move.to_shard_id

        def done(current: ShardMap) -> ShardMap:
            if published_already(current):  # a resumed move: its end is in the map
                raise _Published(current)
            return current.with_move_done(move.symbol)

        # One read and one compare-and-set (the check rides in the change), inside the pause.
        try:
            published = await self.store.update(done)
        except _Published as already:
            self._addresses = already.current
            return already.current.epoch
        self._addresses = published
        log.info(
            "move %s: %s now on shard %d (epoch %d)",
            move.move_id,
            move.symbol,
            move.to_shard_id,
            published.epoch,
        )
        return published.epoch

    async def abort(self, move_id: str) -> Move:
        """Abandon a move that has not reached ``import``: drop the mark; the old owner takes input again."""
        move = await self.get(move_id)
        if move is None:
            raise MoveRefused(f"no move {move_id}")
        if move.step != "mark":
            raise MoveRefused(
                f"move {move_id} is at step {move.step}: once marked it may have been imported, so it "
                "can only go forward"
            )
        return await self._abandon(move)

    async def _abandon(self, move: Move) -> Move:
        current = await self._map()
        if current.moving.get(move.symbol) == move.to_shard_id:
            await self.store.update(lambda m: m.without_move(move.symbol))
        return await self._record(move, step=ABORTED)

    async def _map(self) -> ShardMap:
        current = await self.store.load()
        if current is None:
            raise MoveRefused("no shard map is stored")
        self._addresses = current
        return current

    async def _stub(self, shard_id: int) -> admin_grpc.ShardAdminServiceStub:
        """A stub for the shard's address in the stored map (a shard may have moved address: a
        failed step drops the map read, so its retry reads it again)."""
        known = self._addresses if self._addresses is not None else await self._map()
        shard = known.shard(shard_id)
        if shard is None:
            raise MoveRefused(f"shard {shard_id} is no longer in the shard map")
        channel = self._channels.get(shard.address)
        if channel is None:
            channel = self._channels[shard.address] = self.credentials.open_channel(shard.address)
        return admin_grpc.ShardAdminServiceStub(channel)


class _Published(Exception):
    """The map already holds the move's end (raised from inside a map update to skip it)."""

    def __init__(self, current: ShardMap) -> None:
        super().__init__(f"epoch {current.epoch} already holds the move's end")
        self.current = current


class _suppress:
    """Swallow a failure of a best-effort call (logged)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, exc: BaseException | None, _tb: object) -> bool:
        if exc is not None and isinstance(exc, Exception):
            log.warning("best-effort call failed: %s", exc)
            return True
        return False


__all__ = ["STEPS", "Move", "MoveRefused", "ShardMapError", "SymbolMover"]
