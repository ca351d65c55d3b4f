"""Scaling execution by moving symbols: the scaler's :class:`~services.scaler.app.ShardRebalancer`
for shards it runs as local processes (issue #15). Plain domain logic; no servicer code.

An execution shard owns symbols (hftgate/shardmap.py), so adding or retiring one is a sequence of
symbol moves, each done by :class:`~services.scaler.moves.SymbolMover` (durable, resumable, one
owner per symbol at every step). One shard at a time:

**Adding** shard ``n`` (the highest id in the map + 1, skipping an id whose state directory is
left from a retired shard: its journal and order-id sequence are that shard's):

1. publish, in one epoch, the map with the new shard *and* a pin to its current owner for every
   symbol rendezvous hashing would give it. A shard only starts against a map that names it
   (services/execution/fencing.py), and the pins keep every book where it is until it is moved;
2. start the shard process (:class:`ShardLauncher`) and wait until it is SERVING; if it does not
   come up, the shard and the pins are taken out of the map again;
3. move those symbols to it, one at a time (each move ends with the symbol pinned to the new shard);
4. drop the pins of the moved symbols: the hash gives them to the new shard anyway, and a pin left
   behind would stop a later shard from taking its share.

**Retiring** the shard of highest id (never the last one):

1. move every symbol it owns (the traded symbols the hash gives it, and its pins) to the shard
   that owns it once it is gone (the hash over the remaining shards);
2. publish the map without it, dropping the pins of the moved symbols (the hash gives each the
   same owner), wait ``retire_grace_s`` for the gateway and clients to follow the map, and stop
   its process (SIGTERM) when this rebalancer started it. A shard it did not start (one of
   ``hftgate up``'s) is left running, owning nothing, for its own supervisor to stop.

A failed step stops the rebalance: :class:`BackendError` says what moved before it and why it
stopped; every symbol still has exactly one owner (the mover's guarantee per move; the pins of
step 1 keep not-yet-moved symbols with their owner). A scaler killed in the middle is picked up by
the next one: :meth:`MoverRebalancer.start` finishes every unfinished move (``resume_all``); a
symbol held by a pin but not moved stays with its owner, which is a valid map.

*Which symbols* the suite trades: the instruments of the reference data (``instrument:<SYMBOL>``
rows of the cache's SQL table, which the shards themselves validate orders against: an order for
a symbol without a row is refused by every shard, so it has no book to move), plus the pinned
ones. One indexed range read per rebalance (:func:`reference_symbols`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy.exc import SQLAlchemyError

from hftgate import supervisor
from hftgate.config import default_state_dir
from hftgate.shardmap import (
    MAX_SHARD_ID,
    EpochConflict,
    Shard,
    ShardMap,
    ShardMapError,
    ShardMapStore,
    ShardMapUnavailable,
)
from services.cache.l3_sql import SqlStore, StoreUnavailable
from services.execution.reference import INSTRUMENT_PREFIX
from services.scaler.backends import BackendError, LocalProcessBackend, free_port
from services.scaler.moves import MoveRefused, SymbolMover

log = logging.getLogger(__name__)

#: The only sharded service.
EXECUTION = "execution"
#: Most instruments read from the reference data per rebalance (ShardMap.MAX_PINS is 100,000).
MAX_SYMBOLS = 50_000
#: Rebalances remembered in :attr:`MoverRebalancer.history`.
MAX_HISTORY = 100

SymbolSource = Callable[[], Awaitable[list[str]]]


def reference_symbols(url: str, table: str = "cache_entries", limit: int = MAX_SYMBOLS) -> SymbolSource:
    """The instruments of the reference data at ``url`` (the cache's SQL table), read on each call."""

    async def read() -> list[str]:
        store = SqlStore(url, table_name=table, pool_size=1)
        try:
            await store.start()
            rows = await store.get_prefixed(INSTRUMENT_PREFIX, int(time.time() * 1000), limit)
        except (StoreUnavailable, OSError) as exc:
            raise BackendError(f"could not read the traded symbols from the reference data: {exc}") from exc
        finally:
            await store.close()
        return [key[len(INSTRUMENT_PREFIX) :] for key in rows]

    return read


class ShardLauncher(Protocol):
    """Runs execution shard processes for the rebalancer."""

    def has_state(self, shard_id: int) -> bool:
        """Whether a shard of this id has kept state on this host (its id is not to be reused)."""
        ...

    async def start_shard(self, shard_id: int, address: str) -> None:
        """Start shard ``shard_id`` listening on ``address``; return once it is SERVING."""
        ...

    async def stop_shard(self, shard_id: int) -> bool:
        """Stop shard ``shard_id`` (SIGTERM) if this launcher started it; whether it did."""
        ...

    async def close(self) -> None:
        """Stop every shard this launcher started."""
        ...

    def shard_id_of(self, replica_id: str) -> int | None:
        """The id of the shard this launcher started as ``replica_id`` (None: not one of its)."""
        ...


class LocalShardLauncher:
    """Shards as local processes through the scaler's :class:`LocalProcessBackend`, started the
    way ``hftgate up`` starts shard i (hftgate/supervisor.py ``execution_shard_env``): its id, its
    state directory ``<state dir>/execution-<i>``, shard 0's ledger database, no demo seeding, and
    the suite's state directory and shard map store (not the replica folder the back end gives)."""

    def __init__(self, backend: LocalProcessBackend, env: Mapping[str, str], store: ShardMapStore) -> None:
        self.backend = backend
        self.env = dict(env)
        self.store = store
        self.started: set[int] = set()

    @staticmethod
    def replica_id(shard_id: int) -> str:
        return f"{EXECUTION}-shard-{shard_id}"

    def shard_env(self, shard_id: int) -> dict[str, str]:
        env = supervisor.execution_shard_env(shard_id, self.env)
        state_dir = self.env.get("HFTGATE_STATE_DIR") or str(default_state_dir())
        env["HFTGATE_STATE_DIR"] = state_dir
        env["HFTGATE_EXECUTION_SHARD_MAP_DATABASE_URL"] = self.store.url
        env["HFTGATE_EXECUTION_SHARD_MAP_TABLE"] = self.store.table.name
        env["HFTGATE_EXECUTION_SHARD_MAP_NAME"] = self.store.name
        return env

    def has_state(self, shard_id: int) -> bool:
        state_dir = self.shard_env(shard_id).get("HFTGATE_EXECUTION_STATE_DIR")
        return bool(state_dir) and Path(str(state_dir)).exists()

    async def start_shard(self, shard_id: int, address: str) -> None:
        port = int(address.rpartition(":")[2])
        await self.backend.start(
            EXECUTION, self.replica_id(shard_id), 0, port=port, extra_env=self.shard_env(shard_id)
        )
        self.started.add(shard_id)

    async def stop_shard(self, shard_id: int) -> bool:
        if shard_id not in self.started:
            return False
        await self.backend.stop(EXECUTION, self.replica_id(shard_id), "", 0)
        self.started.discard(shard_id)
        return True

    async def close(self) -> None:
        return None  # the back end stops what it started when the scaler closes

    def shard_id_of(self, replica_id: str) -> int | None:
        for shard_id in self.started:
            if self.replica_id(shard_id) == replica_id:
                return shard_id
        return None


@dataclass
class Rebalance:
    """What one rebalance did (the decision's reason quotes :meth:`summary`)."""

    service: str
    from_shards: int
    to_shards: int
    started_ns: int = field(default_factory=time.time_ns)
    added: list[int] = field(default_factory=list)
    retired: list[int] = field(default_factory=list)
    #: (symbol, from shard, to shard) of every finished move, in order.
    moved: list[tuple[str, int, int]] = field(default_factory=list)
    error: str = ""

    def summary(self) -> str:
        parts = [f"shards {self.from_shards} -> {self.to_shards}"]
        if self.added:
            parts.append("added shard " + ", ".join(map(str, self.added)))
        if self.retired:
            parts.append("retired shard " + ", ".join(map(str, self.retired)))
        if self.moved:
            shown = ", ".join(f"{s} {a}->{b}" for s, a, b in self.moved[:20])
            more = f" and {len(self.moved) - 20} more" if len(self.moved) > 20 else ""
            parts.append(f"moved {len(self.moved)} symbol(s): {shown}{more}")
        else:
            parts.append("moved no symbol")
        if self.error:
            parts.append(f"stopped: {self.error}")
        return "; ".join(parts)


def _map_with(current: ShardMap, shards: Iterable[Shard], pins: Mapping[str, int]) -> ShardMap:
    return ShardMap(current.epoch + 1, shards, pins, current.moving)


class MoverRebalancer:
    """See the module docstring. ``store`` and ``mover`` share the suite's shard map database;
    ``host`` is where new shards listen."""

    def __init__(
        self,
        store: ShardMapStore,
        mover: SymbolMover,
        launcher: ShardLauncher,
        symbols: SymbolSource,
        *,
        host: str = "127.0.0.1",
        retire_grace_s: float = 1.0,
        port_picker: Callable[[], int] = free_port,
    ) -> None:
        self.store = store
        self.mover = mover
        self.launcher = launcher
        self.symbols = symbols
        self.host = host
        self.retire_grace_s = retire_grace_s
        self.port_picker = port_picker
        self.history: deque[Rebalance] = deque(maxlen=MAX_HISTORY)
        #: The last rebalance's summary (app.py appends it to the decision's reason).
        self.last_summary = ""
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start the mover and finish the moves a previous scaler left unfinished."""
        await self.mover.start()
        for move in await self.mover.unfinished():
            log.info(
                "resuming move %s: %s from shard %d to shard %d at step %s",
                move.move_id,
                move.symbol,
                move.from_shard_id,
                move.to_shard_id,
                move.step,
            )
            try:
                done = await self.mover.run(move.move_id)
                log.info("move %s of %s ended at step %s", done.move_id, done.symbol, done.step)
            except MoveRefused as exc:
                log.error("could not finish move %s of %s: %s", move.move_id, move.symbol, exc)

    async def close(self) -> None:
        await self.launcher.close()
        await self.mover.close()

    async def restart_shard(self, replica_id: str) -> bool:
        """Start again a shard this rebalancer started that died (the scaler's monitor calls it):
        the same id, address and state directory, so it recovers its book from its journal and
        the map needs no change. False when ``replica_id`` is not such a shard or the map no
        longer names it. Not under the rebalance lock: a move waiting on the dead shard retries
        its step until the shard is back."""
        shard_id = self.launcher.shard_id_of(replica_id)
        if shard_id is None:
            return False
        shard = (await self._load()).shard(shard_id)
        if shard is None:
            log.warning("shard %d died after it left the shard map: not restarted", shard_id)
            return False
        log.warning("restarting shard %d at %s", shard_id, shard.address)
        await self.launcher.start_shard(shard_id, shard.address)
        log.info("shard %d is SERVING again at %s", shard_id, shard.address)
        return True

    # --- ShardRebalancer ------------------------------------------------------------------------
    async def rebalance(self, service: str, current_shards: int, desired_shards: int) -> int:
        """Add or retire shards one at a time until the shard map names ``desired_shards`` (at
        least 1); returns the count reached. The stored map, not ``current_shards``, says how many
        there are. Raises :class:`BackendError` on the first failed step."""
        self.last_summary = ""
        if service != EXECUTION:
            raise BackendError(f"only {EXECUTION} is sharded, not {service!r}")
        async with self._lock:
            shard_map = await self._load()
            record = Rebalance(service, len(shard_map.shards), max(1, desired_shards))
            self.history.append(record)
            target = max(1, desired_shards)
            count = len(shard_map.shards)
            log.info("rebalancing %s: %d -> %d shard(s)", service, count, target)
            try:
                while count < target:
                    await self._add_one(record)
                    count += 1
                while count > target:
                    await self._retire_one(record)
                    count -= 1
            except (
                BackendError,
                MoveRefused,
                ShardMapError,
                EpochConflict,
                ShardMapUnavailable,
                SQLAlchemyError,
                OSError,
            ) as exc:
                record.error = str(exc)
                self.last_summary = record.summary()
                log.error("rebalance of %s stopped: %s", service, self.last_summary)
                raise BackendError(self.last_summary) from exc
            self.last_summary = record.summary()
            log.info("rebalance of %s done: %s", service, self.last_summary)
            return count

    # --- the steps ----------------------------------------------------------------------------
    async def _load(self) -> ShardMap:
        shard_map = await self.store.load()
        if shard_map is None:
            raise BackendError("no shard map is stored: the execution shards have not been started")
        return shard_map

    async def _traded(self, shard_map: ShardMap) -> list[str]:
        return sorted({*await self.symbols(), *shard_map.pins})

    def _next_shard_id(self, shard_map: ShardMap) -> int:
        shard_id = max(shard_map.shard_ids) + 1
        while shard_id <= MAX_SHARD_ID and self.launcher.has_state(shard_id):
            shard_id += 1
        if shard_id > MAX_SHARD_ID:
            raise BackendError(f"no shard id left below {MAX_SHARD_ID + 1}")
        return shard_id

    async def _add_one(self, record: Rebalance) -> None:
        current = await self._load()
        if current.moving:
            raise BackendError(f"symbols are being moved ({', '.join(sorted(current.moving))}): retry later")
        shard = Shard(self._next_shard_id(current), f"{self.host}:{self.port_picker()}")
        symbols = await self._traded(current)
        held: dict[str, int] = {}

        def add(m: ShardMap) -> ShardMap:
            grown = m.with_shard(shard)
            held.clear()
            held.update(
                {
                    s: m.owner(s).shard_id
                    for s in symbols
                    if s not in m.pins and grown.owner(s).shard_id == shard.shard_id
                }
            )
            return _map_with(m, grown.shards, {**m.pins, **held})

        published = await self.store.update(add)
        log.info(
            "shard %d at %s added to the shard map (epoch %d); %d symbol(s) held on their owners "
            "until moved: %s",
            shard.shard_id,
            shard.address,
            published.epoch,
            len(held),
            ", ".join(sorted(held)) or "none",
        )
        try:
            await self.launcher.start_shard(shard.shard_id, shard.address)
        except BaseException as exc:
            await self._undo_add(shard.shard_id, held)
            if isinstance(exc, BackendError):
                raise BackendError(f"shard {shard.shard_id} did not start: {exc}") from exc
            raise
        record.added.append(shard.shard_id)
        log.info("shard %d is SERVING at %s", shard.shard_id, shard.address)
        moved: list[str] = []
        try:
            for symbol in sorted(held):
                log.info("moving %s from shard %d to new shard %d", symbol, held[symbol], shard.shard_id)
                await self.mover.move(symbol, shard.shard_id)
                record.moved.append((symbol, held[symbol], shard.shard_id))
                moved.append(symbol)
        finally:
            await self._drop_pins(moved, shard.shard_id)

    async def _undo_add(self, shard_id: int, held: Mapping[str, int]) -> None:
        def remove(m: ShardMap) -> ShardMap:
            pins = {s: sid for s, sid in m.pins.items() if not (s in held and held[s] == sid)}
            return _map_with(m, [s for s in m.shards if s.shard_id != shard_id], pins)

        try:
            published = await self.store.update(remove)
            log.warning("shard %d taken out of the shard map again (epoch %d)", shard_id, published.epoch)
        except (ShardMapError, OSError) as exc:
            log.error("shard %d could not be taken out of the shard map: %s", shard_id, exc)

    async def _drop_pins(self, symbols: list[str], shard_id: int) -> None:
        """Unpin moved symbols the hash gives to ``shard_id`` anyway (the owner stays the same)."""
        if not symbols:
            return

        def unpin(m: ShardMap) -> ShardMap:
            unpinned = _map_with(m, m.shards, {s: i for s, i in m.pins.items() if s not in symbols})
            pins = dict(m.pins)
            for s in symbols:
                if s not in m.moving and pins.get(s) == shard_id and unpinned.owner(s).shard_id == shard_id:
                    del pins[s]
            return _map_with(m, m.shards, pins)

        try:
            published = await self.store.update(unpin)
            log.info("pins of %d moved symbol(s) dropped (epoch %d)", len(symbols), published.epoch)
        except (ShardMapError, OSError) as exc:  # harmless: the pins name the right owner
            log.warning("could not drop the pins of moved symbols: %s", exc)

    async def _retire_one(self, record: Rebalance) -> None:
        current = await self._load()
        if len(current.shards) <= 1:
            raise BackendError("the last execution shard is never retired")
        leaving = max(current.shard_ids)
        if any(target == leaving for target in current.moving.values()):
            raise BackendError(f"symbols are being moved to shard {leaving}: retry later")
        remaining = [s for s in current.shards if s.shard_id != leaving]
        after = _map_with(current, remaining, {s: i for s, i in current.pins.items() if i != leaving})
        owned = [s for s in await self._traded(current) if current.owner(s).shard_id == leaving]
        log.info(
            "retiring shard %d: moving its %d symbol(s) first: %s",
            leaving,
            len(owned),
            ", ".join(owned) or "none",
        )
        for symbol in owned:
            target = after.owner(symbol).shard_id
            log.info("moving %s from leaving shard %d to shard %d", symbol, leaving, target)
            await self.mover.move(symbol, target)
            record.moved.append((symbol, leaving, target))
        moved = set(owned)

        def retire(m: ShardMap) -> ShardMap:
            left = m.without_shard(leaving)  # refuses while a pin still names it
            if any(target == leaving for target in m.moving.values()):
                raise ShardMapError(f"a symbol started moving to shard {leaving} meanwhile")
            unpinned = _map_with(m, left.shards, {s: i for s, i in left.pins.items() if s not in moved})
            pins = {
                s: i
                for s, i in left.pins.items()
                if s not in moved or s in m.moving or unpinned.owner(s).shard_id != i
            }
            return _map_with(m, left.shards, pins)

        published = await self.store.update(retire)
        record.retired.append(leaving)
        log.info("shard %d left the shard map (epoch %d)", leaving, published.epoch)
        # The gateway and routing clients poll the map; until they follow, a call can still reach
        # the leaving shard, which answers NOT_SHARD_OWNER for what it handed over.
        await asyncio.sleep(self.retire_grace_s)
        if await self.launcher.stop_shard(leaving):
            log.info("shard %d stopped", leaving)
        else:
            log.warning(
                "shard %d was not started by this scaler: its process keeps running, owning nothing", leaving
            )


__all__ = [
    "EXECUTION",
    "LocalShardLauncher",
    "MoverRebalancer",
    "Rebalance",
    "ShardLauncher",
    "SymbolSource",
    "reference_symbols",
]
