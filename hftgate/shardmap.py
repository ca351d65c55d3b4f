"""The shard map: which execution shard owns which symbol, versioned by an epoch that only grows.

A map is a set of shards (a small integer id and the address clients reach it at), explicit
symbol *pins* (symbol -> shard id) and an *epoch*. Every other symbol belongs to the shard of
highest random weight (rendezvous hashing) for it::

    weight(shard_id, symbol) = the first 8 bytes, big-endian, of
                               BLAKE2b(digest_size=8, data=uint32_be(shard_id) || UTF-8(symbol))
    owner(symbol)            = pins[symbol] if pinned, else the shard of highest weight
                               (equal weights: the lower shard id)

Why rendezvous hashing: every process (the gateway, a routing client in any language, a shard
fencing its inputs) computes the same owner from the map alone, with no table of every symbol to
keep in step; adding a shard moves only the symbols whose new highest weight is the new shard,
about 1/(N+1) of them, and each moves *to* the new shard (nothing is shuffled between old
shards); removing one moves only its own symbols. A pin overrides the hash for a symbol that
must live somewhere in particular (a hot instrument on a shard of its own, a moved symbol).

Moves (issue #15, services/scaler/moves.py): ``moving`` marks a symbol whose book is being handed
from its owner to another shard (symbol -> the target shard id). While marked, the owner is
unchanged but no shard takes new inputs for the symbol (UNAVAILABLE with a retry delay of a few
ms: services/execution/fencing.py); the move ends by publishing the pin to the target and
dropping the mark in one epoch (:meth:`ShardMap.with_move_done`).

The default, for a single process, is one shard (id 0) that owns everything: the map of today's
single execution service, so nothing changes for its users.

Durability: the map lives in one row of a SQL table (SQLAlchemy async: SQLite by default, under
the state directory; PostgreSQL by URL), readable by every process of the suite. A new map is
published by compare-and-set on the epoch: ``UPDATE ... WHERE epoch = <the epoch it was made
from>``; of two writers that start from the same epoch, exactly one wins and the other gets
:class:`EpochConflict` naming the epoch now stored, re-reads and decides again
(:meth:`ShardMapStore.update` does the loop). This module has no gRPC import.

Order ids: a shard allocates order ids with its shard id in bits 48..62
(:func:`order_id_shard`), so a cancel, replace or get by order id finds its shard without asking
every shard; ids with those bits 0 belong to shard 0 (the default single shard), so ids issued
before sharding keep working.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Column, Engine, MetaData, Table, Text, create_engine, event, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hftgate.config import default_state_dir
from hftgate.sqltables import create_tables

log = logging.getLogger(__name__)

#: Shard ids are 0..MAX_SHARD_ID: 15 bits, so an order id with the shard in bits 48..62 stays a
#: positive int64.
MAX_SHARD_ID = (1 << 15) - 1
#: Order ids carry their shard's id above this many bits of shard-local sequence (2**48 orders
#: per shard).
ORDER_ID_SHARD_SHIFT = 48
ORDER_ID_LOCAL_MASK = (1 << ORDER_ID_SHARD_SHIFT) - 1
#: Limits of one map (what happens past them: :class:`ShardMapError` naming the limit).
MAX_SHARDS = 256
MAX_PINS = 100_000
#: Symbols being moved at the same time (each one is refused new inputs until its move ends).
MAX_MOVING = 1_024
MAX_ADDRESS_CHARS = 256
MAX_SYMBOL_CHARS = 64
#: Owners computed per map are kept for up to this many symbols, then forgotten all at once.
MAX_CACHED_OWNERS = 65_536
#: The name of the execution service's map in the table (one table can hold several maps).
DEFAULT_MAP_NAME = "execution"
DEFAULT_TABLE = "shard_maps"
DEFAULT_SHARD_ADDRESS = "127.0.0.1:50051"
HASH_ALGORITHM = "rendezvous-blake2b64-v1"

_SYMBOL = re.compile(r"[!-~]{1,64}")  # printable ASCII, no spaces
_ADDRESS = re.compile(r"[!-~]{1,256}")


class ShardMapError(ValueError):
    """A map, or a change to one, that cannot be: the message says what is wrong."""


class EpochConflict(RuntimeError):
    """Another writer published first: the stored map is no longer the one a change was made from."""

    def __init__(self, expected_epoch: int, current: ShardMap | None) -> None:
        self.expected_epoch = expected_epoch
        self.current = current
        now = "no map" if current is None else f"epoch {current.epoch}"
        super().__init__(
            f"shard map changed underneath: expected epoch {expected_epoch}, the store has {now}"
        )


class ShardMapUnavailable(RuntimeError):
    """The store cannot be read or written (the message names it, without credentials)."""


@dataclass(frozen=True, slots=True)
class Shard:
    """One execution shard: its id (0..MAX_SHARD_ID, stable for its life) and address (host:port)."""

    shard_id: int
    address: str


def weight(shard_id: int, symbol: str) -> int:
    """The rendezvous weight of ``symbol`` on shard ``shard_id`` (see the module docstring)."""
    data = shard_id.to_bytes(4, "big") + symbol.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def order_id_shard(order_id: int) -> int:
    """The shard id carried by an order id (0 for ids issued by an unsharded service)."""
    return (order_id >> ORDER_ID_SHARD_SHIFT) & MAX_SHARD_ID


def make_order_id(shard_id: int, local_id: int) -> int:
    """The public order id of a shard's local order id (what a shard hands out)."""
    if not 0 <= shard_id <= MAX_SHARD_ID:
        raise ShardMapError(f"shard id {shard_id} is outside 0..{MAX_SHARD_ID}")
    if not 0 < local_id <= ORDER_ID_LOCAL_MASK:
        raise ShardMapError(f"local order id {local_id} is outside 1..{ORDER_ID_LOCAL_MASK}")
    return (shard_id << ORDER_ID_SHARD_SHIFT) | local_id


def check_symbol(symbol: str) -> None:
    if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol):
        shown = repr(symbol[:MAX_SYMBOL_CHARS]) if isinstance(symbol, str) else type(symbol).__name__
        raise ShardMapError(f"symbol {shown} must be 1..{MAX_SYMBOL_CHARS} printable ASCII characters")


class ShardMap:
    """An immutable shard map. :meth:`owner` is what every router calls; changes return new maps
    with the next epoch (:meth:`with_shard`, :meth:`without_shard`, :meth:`with_pin`...)."""

    __slots__ = ("_by_id", "_owners", "epoch", "moving", "pins", "shards")

    def __init__(
        self,
        epoch: int,
        shards: Iterable[Shard],
        pins: Mapping[str, int] | None = None,
        moving: Mapping[str, int] | None = None,
    ) -> None:
        shard_list = tuple(sorted(shards, key=lambda s: s.shard_id))
        pin_map = dict(pins or {})
        moving_map = dict(moving or {})
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ShardMapError(f"epoch must be a positive integer, got {epoch!r}")
        if not shard_list:
            raise ShardMapError("a shard map needs at least one shard")
        if len(shard_list) > MAX_SHARDS:
            raise ShardMapError(f"{len(shard_list)} shards exceed the limit of {MAX_SHARDS}")
        by_id: dict[int, Shard] = {}
        addresses: set[str] = set()
        for shard in shard_list:
            sid = shard.shard_id
            if isinstance(sid, bool) or not isinstance(sid, int) or not 0 <= sid <= MAX_SHARD_ID:
                raise ShardMapError(f"shard id {sid!r} is outside 0..{MAX_SHARD_ID}")
            if sid in by_id:
                raise ShardMapError(f"shard id {sid} appears twice")
            if not isinstance(shard.address, str) or not _ADDRESS.fullmatch(shard.address):
                raise ShardMapError(
                    f"shard {sid}: address must be 1..{MAX_ADDRESS_CHARS} printable characters (host:port)"
                )
            if shard.address in addresses:
                raise ShardMapError(f"shard {sid}: address {shard.address} belongs to another shard too")
            addresses.add(shard.address)
            by_id[sid] = shard
        if len(pin_map) > MAX_PINS:
            raise ShardMapError(f"{len(pin_map)} pins exceed the limit of {MAX_PINS}")
        for symbol, sid in pin_map.items():
            check_symbol(symbol)
            if sid not in by_id:
                raise ShardMapError(f"symbol {symbol} is pinned to shard {sid}, which is not in the map")
        if len(moving_map) > MAX_MOVING:
            raise ShardMapError(f"{len(moving_map)} symbols moving at once exceed the limit of {MAX_MOVING}")
        for symbol, sid in moving_map.items():
            check_symbol(symbol)
            if sid not in by_id:
                raise ShardMapError(f"symbol {symbol} is moving to shard {sid}, which is not in the map")
        self.epoch = epoch
        self.shards = shard_list
        self.pins: Mapping[str, int] = pin_map
        #: Symbols whose book is being handed over: symbol -> target shard id (see the module docstring).
        self.moving: Mapping[str, int] = moving_map
        self._by_id = by_id
        self._owners: dict[str, Shard] = {}

    # --- reading ------------------------------------------------------------------------------
    @classmethod
    def single(cls, address: str = DEFAULT_SHARD_ADDRESS, epoch: int = 1) -> ShardMap:
        """The default map: shard 0 at ``address`` owns every symbol."""
        return cls(epoch, [Shard(0, address)])

    def shard(self, shard_id: int) -> Shard | None:
        return self._by_id.get(shard_id)

    @property
    def shard_ids(self) -> tuple[int, ...]:
        return tuple(s.shard_id for s in self.shards)

    def owner(self, symbol: str) -> Shard:
        """The shard that owns ``symbol``: its pin, else the highest rendezvous weight."""
        known = self._owners.get(symbol)
        if known is not None:
            return known
        pinned = self.pins.get(symbol)
        if pinned is not None:
            found = self._by_id[pinned]
        elif len(self.shards) == 1:
            found = self.shards[0]
        else:
            data = symbol.encode("utf-8")
            best = -1
            found = self.shards[0]
            for shard in self.shards:  # ascending ids: a tie keeps the lower id
                digest = hashlib.blake2b(shard.shard_id.to_bytes(4, "big") + data, digest_size=8).digest()
                w = int.from_bytes(digest, "big")
                if w > best:
                    best, found = w, shard
        if len(self._owners) >= MAX_CACHED_OWNERS:
            self._owners.clear()
        self._owners[symbol] = found
        return found

    def owner_of_order_id(self, order_id: int) -> Shard | None:
        """The shard whose id is in ``order_id``'s shard bits, or None when no such shard is mapped."""
        return self._by_id.get(order_id_shard(order_id))

    # --- changing (each returns a new map, epoch + 1) --------------------------------------------
    def _next(
        self, shards: Iterable[Shard], pins: Mapping[str, int], moving: Mapping[str, int] | None = None
    ) -> ShardMap:
        return ShardMap(self.epoch + 1, shards, pins, self.moving if moving is None else moving)

    def with_shard(self, shard: Shard) -> ShardMap:
        """This map plus ``shard`` (a new id), or with an existing shard's address changed."""
        others = [s for s in self.shards if s.shard_id != shard.shard_id]
        return self._next([*others, shard], self.pins)

    def without_shard(self, shard_id: int) -> ShardMap:
        """This map less one shard; its symbols go to their next-highest weight. Refused while a
        symbol is pinned to it (unpin or move the pins first) or when it is the last shard."""
        if shard_id not in self._by_id:
            raise ShardMapError(f"shard {shard_id} is not in the map")
        pinned = sorted(s for s, sid in self.pins.items() if sid == shard_id)
        if pinned:
            raise ShardMapError(f"shard {shard_id} still has pinned symbols: {', '.join(pinned[:5])}")
        return self._next([s for s in self.shards if s.shard_id != shard_id], self.pins)

    def with_pin(self, symbol: str, shard_id: int) -> ShardMap:
        return self._next(self.shards, {**self.pins, symbol: shard_id})

    def without_pin(self, symbol: str) -> ShardMap:
        if symbol not in self.pins:
            raise ShardMapError(f"symbol {symbol!r} is not pinned")
        return self._next(self.shards, {s: sid for s, sid in self.pins.items() if s != symbol})

    def with_move_started(self, symbol: str, target_shard_id: int) -> ShardMap:
        """This map with ``symbol`` marked moving to ``target_shard_id``: no shard takes new inputs
        for it until :meth:`with_move_done` or :meth:`without_move`."""
        check_symbol(symbol)
        if target_shard_id not in self._by_id:
            raise ShardMapError(f"cannot move {symbol} to shard {target_shard_id}: not in the map")
        if self.owner(symbol).shard_id == target_shard_id:
            raise ShardMapError(f"{symbol} already belongs to shard {target_shard_id}")
        return self._next(self.shards, self.pins, {**self.moving, symbol: target_shard_id})

    def with_move_done(self, symbol: str) -> ShardMap:
        """The end of a move, in one epoch: ``symbol`` pinned to its target and no longer moving."""
        target = self.moving.get(symbol)
        if target is None:
            raise ShardMapError(f"symbol {symbol!r} is not moving")
        rest = {s: sid for s, sid in self.moving.items() if s != symbol}
        return self._next(self.shards, {**self.pins, symbol: target}, rest)

    def without_move(self, symbol: str) -> ShardMap:
        """An abandoned move: ``symbol`` stays with its owner and takes inputs again."""
        if symbol not in self.moving:
            raise ShardMapError(f"symbol {symbol!r} is not moving")
        return self._next(self.shards, self.pins, {s: sid for s, sid in self.moving.items() if s != symbol})

    # --- comparing ---------------------------------------------------------------------------
    def moves_to(self, other: ShardMap, symbols: Iterable[str]) -> dict[str, tuple[int, int]]:
        """For each of ``symbols`` whose owner differs in ``other``: (old shard id, new shard id)."""
        moved: dict[str, tuple[int, int]] = {}
        for symbol in symbols:
            before, after = self.owner(symbol).shard_id, other.owner(symbol).shard_id
            if before != after:
                moved[symbol] = (before, after)
        return moved

    def moves_if_added(self, shard: Shard, symbols: Iterable[str]) -> dict[str, tuple[int, int]]:
        """What :meth:`with_shard` would move, without publishing anything."""
        return self.moves_to(self.with_shard(shard), symbols)

    # --- encoding ----------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(
            {
                "epoch": self.epoch,
                "shards": [{"shard_id": s.shard_id, "address": s.address} for s in self.shards],
                "pins": dict(sorted(self.pins.items())),
                **({"moving": dict(sorted(self.moving.items()))} if self.moving else {}),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> ShardMap:
        try:
            body = json.loads(text)
            shards = [Shard(int(s["shard_id"]), str(s["address"])) for s in body["shards"]]
            pins = {str(k): int(v) for k, v in body.get("pins", {}).items()}
            moving = {str(k): int(v) for k, v in body.get("moving", {}).items()}
            epoch = int(body["epoch"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ShardMapError(f"stored shard map cannot be read: {exc!r}") from None
        return cls(epoch, shards, pins, moving)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardMap):
            return NotImplemented
        return (self.epoch, self.shards, dict(self.pins), dict(self.moving)) == (
            other.epoch,
            other.shards,
            dict(other.pins),
            dict(other.moving),
        )

    def __hash__(self) -> int:
        return hash((self.epoch, self.shards))

    def __repr__(self) -> str:
        shards = ", ".join(f"{s.shard_id}@{s.address}" for s in self.shards)
        moving = f", moving={len(self.moving)}" if self.moving else ""
        return f"ShardMap(epoch={self.epoch}, shards=[{shards}], pins={len(self.pins)}{moving})"


def parse_shards(specs: Iterable[str]) -> list[Shard]:
    """Shards from ``"ID=HOST:PORT"`` strings, or plain ``"HOST:PORT"`` (ids 0, 1, 2... in order).

    A configuration format (``HFTGATE_GATEWAY_EXECUTION_SHARDS=0=127.0.0.1:50051,1=127.0.0.1:50061``)."""
    shards: list[Shard] = []
    for position, spec in enumerate(specs):
        spec = spec.strip()
        head, eq, tail = spec.partition("=")
        if eq:
            if not head.isdigit():
                raise ShardMapError(f"shard {spec!r}: expected ID=HOST:PORT with a numeric ID")
            shards.append(Shard(int(head), tail))
        else:
            shards.append(Shard(position, spec))
    return shards


# --- the SQL store ------------------------------------------------------------------------------
def default_url(environ: Mapping[str, str] | None = None, state_dir: Path | None = None) -> str:
    """Where the suite's shard map lives: ``HFTGATE_SHARD_MAP_DATABASE_URL``, else ``DATABASE_URL``
    (the suite's shared PostgreSQL, when deployed with one), else SQLite at
    ``<state dir>/shardmap/shardmap.sqlite3``: the same place for every process of one suite."""
    env = os.environ if environ is None else environ
    url = env.get("HFTGATE_SHARD_MAP_DATABASE_URL") or env.get("DATABASE_URL")
    if url:
        return url
    folder = (state_dir or default_state_dir()) / "shardmap"
    return f"sqlite+aiosqlite:///{folder / 'shardmap.sqlite3'}"


def _table(metadata: MetaData, name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("name", Text, primary_key=True),
        Column("epoch", BigInteger, nullable=False),
        Column("body", Text, nullable=False),
        Column("updated_ns", BigInteger, nullable=False),
    )


class ShardMapStore:
    """The durable shard map: one row per map name, published by compare-and-set on the epoch."""

    def __init__(self, url: str, *, table_name: str = DEFAULT_TABLE, name: str = DEFAULT_MAP_NAME) -> None:
        self.url = url
        self.name = name
        self._metadata = MetaData()
        self.table = _table(self._metadata, table_name)
        self._engine: AsyncEngine | None = None
        # On a SQLite file, the epoch poll reads through a blocking connection on a thread of its
        # own: one hand-over per poll, where aiosqlite took about six trips between the event loop
        # and its thread (~1.8 ms of a shard's loop CPU a poll, 5 polls a second; the loop is the
        # order path's). The query and its answer are the same.
        self._poll_engine: Engine | None = None
        self._poll_thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._epoch_query = select(self.table.c.epoch).where(self.table.c.name == name)

    def safe_url(self) -> str:
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:
            return "<unparseable URL>"

    async def start(self) -> None:
        """Connect and create the table if missing; :class:`ShardMapUnavailable` when it cannot."""
        try:
            if self.url.startswith("sqlite"):
                path = self.url.split(":///", 1)[-1]
                if path and path != ":memory:":
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                engine = create_async_engine(self.url, connect_args={"timeout": 30})

                @event.listens_for(engine.sync_engine, "connect")
                def _pragmas(dbapi_connection: Any, _record: Any) -> None:
                    cursor = dbapi_connection.cursor()
                    cursor.execute("PRAGMA journal_mode=WAL")
                    cursor.execute("PRAGMA busy_timeout=10000")
                    cursor.close()

                if path and path != ":memory:" and not path.startswith("file:"):
                    # Used only by the poll thread, which is not the thread that makes the pool.
                    self._poll_engine = create_engine(
                        engine.url.set(drivername="sqlite+pysqlite"),
                        connect_args={"timeout": 30, "check_same_thread": False},
                    )

            else:
                engine = create_async_engine(self.url, pool_size=2, pool_pre_ping=True)
        except (SQLAlchemyError, OSError, ValueError) as exc:
            raise ShardMapUnavailable(f"shard map store {self.safe_url()}: {exc}") from None
        self._engine = engine
        try:
            await create_tables(engine, self._metadata)
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            self._engine = None
            raise ShardMapUnavailable(
                f"cannot open shard map table {self.table.name} at {self.safe_url()}: {exc}"
            ) from None

    async def close(self) -> None:
        if self._poll_thread is not None:
            await asyncio.to_thread(self._poll_thread.shutdown, wait=True)
            self._poll_thread = None
        if self._poll_engine is not None:
            self._poll_engine.dispose()
            self._poll_engine = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    async def drop_table(self) -> None:
        """Drop the table (tests clean up with it)."""
        async with self._live().begin() as conn:
            await conn.run_sync(self._metadata.drop_all, checkfirst=True)

    def _live(self) -> AsyncEngine:
        if self._engine is None:
            raise ShardMapUnavailable("shard map store is not started")
        return self._engine

    async def load(self) -> ShardMap | None:
        """The stored map, or None when none was ever published."""
        t = self.table
        try:
            async with self._live().connect() as conn:
                row = (await conn.execute(select(t.c.body).where(t.c.name == self.name))).first()
        except (SQLAlchemyError, OSError) as exc:
            raise ShardMapUnavailable(f"cannot read the shard map at {self.safe_url()}: {exc}") from None
        return None if row is None else ShardMap.from_json(row[0])

    async def epoch(self) -> int:
        """The stored epoch (0: no map): a cheap poll."""
        engine = self._live()
        try:
            if self._poll_engine is not None:
                if self._poll_thread is None:
                    self._poll_thread = concurrent.futures.ThreadPoolExecutor(
                        1, thread_name_prefix="shardmap-poll"
                    )
                row = await asyncio.get_running_loop().run_in_executor(self._poll_thread, self._read_epoch)
            else:
                async with engine.connect() as conn:
                    row = (await conn.execute(self._epoch_query)).first()
        except (SQLAlchemyError, OSError) as exc:
            raise ShardMapUnavailable(f"cannot read the shard map at {self.safe_url()}: {exc}") from None
        return 0 if row is None else int(row[0])

    def _read_epoch(self) -> Any:
        assert self._poll_engine is not None
        with self._poll_engine.connect() as conn:
            return conn.execute(self._epoch_query).first()

    async def create(self, initial: ShardMap) -> ShardMap:
        """Store ``initial`` when no map exists; returns the stored map (the existing one, if any)."""
        t = self.table
        try:
            async with self._live().begin() as conn:
                await conn.execute(
                    t.insert().values(
                        name=self.name, epoch=initial.epoch, body=initial.to_json(), updated_ns=time.time_ns()
                    )
                )
            return initial
        except IntegrityError:
            pass  # another process created it first: theirs stands
        except (SQLAlchemyError, OSError) as exc:
            raise ShardMapUnavailable(f"cannot write the shard map at {self.safe_url()}: {exc}") from None
        stored = await self.load()
        assert stored is not None
        return stored

    async def publish(self, new: ShardMap, expected_epoch: int) -> ShardMap:
        """Store ``new`` if the stored epoch is still ``expected_epoch`` (compare-and-set).

        ``new.epoch`` must be greater: epochs only grow. Raises :class:`EpochConflict` (with the
        stored map) when another writer got there first."""
        if new.epoch <= expected_epoch:
            raise ShardMapError(f"epochs only grow: epoch {new.epoch} does not follow {expected_epoch}")
        t = self.table
        try:
            async with self._live().begin() as conn:
                result = await conn.execute(
                    update(t)
                    .where(t.c.name == self.name, t.c.epoch == expected_epoch)
                    .values(epoch=new.epoch, body=new.to_json(), updated_ns=time.time_ns())
                )
                won = result.rowcount == 1
        except (SQLAlchemyError, OSError) as exc:
            raise ShardMapUnavailable(f"cannot write the shard map at {self.safe_url()}: {exc}") from None
        if not won:
            raise EpochConflict(expected_epoch, await self.load())
        log.info("shard map published: %r", new)
        return new

    async def update(self, change: Callable[[ShardMap], ShardMap], attempts: int = 5) -> ShardMap:
        """Read, apply ``change`` (a pure function of the current map), publish; on a conflict read
        again and re-apply, up to ``attempts`` times. Raises ShardMapError when no map exists."""
        for _ in range(max(attempts, 1)):
            current = await self.load()
            if current is None:
                raise ShardMapError("no shard map is stored yet: create one first")
            try:
                return await self.publish(change(current), current.epoch)
            except EpochConflict:
                continue
        raise EpochConflict(-1, await self.load())

    async def watch(self, poll_ms: int, known_epoch: int = 0) -> AsyncIterator[ShardMap]:
        """Yield the stored map whenever its epoch is above the last one seen (``known_epoch`` at
        first), polling the epoch every ``poll_ms``. A failed poll is logged and retried; the
        caller keeps the map it has meanwhile."""
        last = known_epoch
        while True:
            try:
                if await self.epoch() > last:
                    found = await self.load()
                    if found is not None and found.epoch > last:
                        last = found.epoch
                        yield found
            except ShardMapUnavailable as exc:
                log.warning("shard map poll failed (keeping epoch %d): %s", last, exc)
            await asyncio.sleep(poll_ms / 1000)
