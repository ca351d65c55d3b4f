"""Fencing: an execution shard accepts new orders only for the symbols it owns at the shard-map
epoch it knows (hftgate/shardmap.py; issue #14).

At start the shard reads the stored map (:func:`open_fence`): a store that cannot be read, or a
stored map without this shard's id, refuses the start (:class:`ShardMapRefused`, exit code 2,
with the reason); no stored map at all is the single-shard default (shard 0 owns everything).
Then :meth:`ShardFence.follow` keeps the map of the highest epoch seen, fed by
:meth:`hftgate.shardmap.ShardMapStore.watch`: a shard never goes back to a map older than one
it has seen, so it never accepts a symbol it was told it lost, whatever a stale gateway sends.

The check on the order path is :meth:`ShardFence.refusal`: the map's owner of a symbol is
computed once per map (epoch) and then a dict lookup. Cancels and replaces of resting orders are
not fenced: the order lives here until it is finished, or until its symbol is moved away.

Moves (issue #15; services/execution/handover.py, services/scaler/moves.py): a symbol the map
marks ``moving`` is refused with :class:`SymbolMoving` on every shard - new orders, and cancels and
replaces of its resting orders - which the server answers UNAVAILABLE with a google.rpc.RetryInfo
of :data:`MOVE_RETRY_DELAY_MS`: nothing of the call was accepted, so the caller (the routing client,
the gateway, a user) sends it again, and by then the map names the new owner. Why refuse rather
than hold calls at the gateway: a shard that waits holds a call whose deadline keeps running, and
a call held at a gateway still reaches the old shard when the gateway's map is stale; a refusal
before anything is accepted is safe to retry anywhere, at once, by any client. Once the book is
handed over, the old shard records the symbol as handed over (:attr:`ShardFence.handed_over`,
durable in its state directory): its resting orders of that symbol are the new owner's, so a
cancel, replace or get of one answers NOT_SHARD_OWNER naming the new owner. No gRPC import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from hftgate.shardmap import (
    ShardMap,
    ShardMapError,
    ShardMapStore,
    ShardMapUnavailable,
    parse_shards,
)

log = logging.getLogger(__name__)

#: google.rpc.ErrorInfo of a refused call: reason and domain (metadata: symbol, owner_shard_id,
#: owner_address, epoch).
NOT_SHARD_OWNER = "NOT_SHARD_OWNER"
ERROR_DOMAIN = "hftgate.v1"


class ShardMapRefused(SystemExit):
    """The shard cannot start with the stored shard map (the reason is in ``reason``): exit code 2."""

    def __init__(self, reason: str) -> None:
        super().__init__(2)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True, slots=True)
class NotOwner:
    """Why a new order for ``symbol`` is refused here: the owner at ``epoch``."""

    symbol: str
    owner_shard_id: int
    owner_address: str
    epoch: int

    def message(self, shard_id: int) -> str:
        return (
            f"execution shard {shard_id} does not own symbol {self.symbol!r} at shard map epoch "
            f"{self.epoch}: shard {self.owner_shard_id} at {self.owner_address} does; refresh the "
            "shard map and send it there"
        )

    def metadata(self) -> dict[str, str]:
        return {
            "symbol": self.symbol,
            "owner_shard_id": str(self.owner_shard_id),
            "owner_address": self.owner_address,
            "epoch": str(self.epoch),
        }


#: The retry delay a refused input of a moving symbol is given (google.rpc.RetryInfo): a move's
#: pause is a few ms once its book is exported, and a retry sooner than the map poll is wasted.
MOVE_RETRY_DELAY_MS = 5


@dataclass(frozen=True, slots=True)
class SymbolMoving:
    """Why an input for ``symbol`` is refused now: its book is being handed to another shard."""

    symbol: str
    target_shard_id: int
    epoch: int

    def message(self, shard_id: int) -> str:
        return (
            f"symbol {self.symbol!r} is moving to execution shard {self.target_shard_id} (shard map epoch "
            f"{self.epoch}); execution shard {shard_id} takes no input for it: nothing was accepted, "
            f"retry in {MOVE_RETRY_DELAY_MS} ms"
        )


Refusal = NotOwner | SymbolMoving


class ShardFence:
    """This shard's view of the map: which symbols it owns now."""

    def __init__(self, shard_id: int, shard_map: ShardMap, epoch: int | None = None) -> None:
        self.shard_id = shard_id
        self.map = shard_map
        #: The epoch held: the map's, or 0 for the default map when none is stored (so that a
        #: map stored later, even at epoch 1, is followed).
        self.epoch = shard_map.epoch if epoch is None else epoch
        #: Maps followed after the first (for logs and tests).
        self.changes = 0
        self._task: asyncio.Task[None] | None = None
        self._store: ShardMapStore | None = None
        #: Symbols whose book this shard handed over: symbol -> the shard it went to (kept by
        #: services/execution/handover.py, durable in the state directory).
        self.handed_over: dict[str, int] = {}

    def refusal(self, symbol: str) -> Refusal | None:
        """None when this shard owns ``symbol`` now and it is not moving, else why not (a dict
        lookup once the map has seen the symbol: :meth:`ShardMap.owner` caches per map)."""
        current = self.map
        if current.moving and symbol in current.moving:
            return SymbolMoving(symbol, current.moving[symbol], self.epoch)
        owner = current.owner(symbol)
        if owner.shard_id == self.shard_id:
            return None
        return NotOwner(symbol, owner.shard_id, owner.address, self.epoch)

    def first_refusal(self, symbols: list[str]) -> Refusal | None:
        """The first of ``symbols`` (empty ones skipped: not new orders) this shard does not take."""
        current = self.map
        mine = self.shard_id
        moving = current.moving
        for symbol in dict.fromkeys(symbols):  # each symbol once, in the order it first comes
            if symbol and (current.owner(symbol).shard_id != mine or (moving and symbol in moving)):
                return self.refusal(symbol)
        return None

    def refused_positions(self, symbols: list[str]) -> list[int]:
        """Positions of ``symbols`` (empty ones skipped) this shard does not take now."""
        current = self.map
        mine = self.shard_id
        moving = current.moving
        # Each distinct symbol asked once: a stream message's 100 orders are mostly of one.
        refused = {
            symbol
            for symbol in set(symbols)
            if symbol and (current.owner(symbol).shard_id != mine or (moving and symbol in moving))
        }
        if not refused:
            return []
        return [p for p, symbol in enumerate(symbols) if symbol in refused]

    def resting_refusal(self, symbol: str) -> Refusal | None:
        """Why a cancel, replace or get of a working order of ``symbol`` held here is not this
        shard's to answer: the symbol is moving (retry), or its book was handed over (the new
        owner has the order). None otherwise: resting orders are not fenced by ownership alone."""
        current = self.map
        if current.moving and symbol in current.moving:
            return SymbolMoving(symbol, current.moving[symbol], self.epoch)
        target = self.handed_over.get(symbol)
        if target is None:
            return None
        owner = current.owner(symbol)
        if owner.shard_id == self.shard_id:  # the map does not say where yet: name the move's target
            shard = current.shard(target)
            return NotOwner(symbol, target, "" if shard is None else shard.address, self.epoch)
        return NotOwner(symbol, owner.shard_id, owner.address, self.epoch)

    async def refresh(self) -> ShardMap:
        """Read the stored map now and follow it (a move's step must not wait for the next poll)."""
        if self._store is not None:
            stored = await self._store.load()
            if stored is not None:
                self.follow(stored)
        return self.map

    def follow(self, shard_map: ShardMap) -> bool:
        """Take ``shard_map`` if its epoch is higher than the one held; returns whether it did."""
        if shard_map.epoch <= self.epoch:
            return False
        if shard_map.shard(self.shard_id) is None:
            log.error(
                "shard map epoch %d no longer names shard %d: refusing every new order until it does",
                shard_map.epoch,
                self.shard_id,
            )
        else:
            log.info("shard map epoch %d followed (was %d)", shard_map.epoch, self.epoch)
        self.map = shard_map
        self.epoch = shard_map.epoch
        self.changes += 1
        return True

    def start_watching(self, store: ShardMapStore, poll_ms: int) -> None:
        """Follow ``store`` in a background task until :meth:`close`."""
        self._store = store

        async def watch() -> None:
            async for found in store.watch(poll_ms, self.epoch):
                self.follow(found)

        self._task = asyncio.get_running_loop().create_task(watch(), name="shard-map-watch")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        if self._store is not None:
            await self._store.close()
            self._store = None


async def open_fence(
    shard_id: int,
    url: str,
    table: str,
    name: str,
    poll_ms: int,
    address: str,
    *,
    initial_shards: Sequence[str] = (),
) -> ShardFence:
    """Read the stored map and follow it. Raises :class:`ShardMapRefused` when the store cannot be
    read or its map does not name ``shard_id``. No stored map: ``initial_shards`` (when given) is
    stored first - the first process to store wins, and every shard then reads the same map -
    else the single-shard default (shard 0 at ``address`` owns everything; any other id owns
    nothing until a stored map names it)."""
    store = ShardMapStore(url, table_name=table, name=name)
    try:
        await store.start()
        stored = await store.load()
        if stored is None and initial_shards:
            stored = await store.create(ShardMap(1, parse_shards(initial_shards)))
    except (ShardMapUnavailable, ShardMapError) as exc:
        await store.close()
        raise ShardMapRefused(f"cannot read the shard map: {exc}") from None
    if stored is None:
        if shard_id != 0:
            log.warning(
                "no shard map stored at %s yet: shard %d owns no symbol until one names it",
                store.safe_url(),
                shard_id,
            )
        fence = ShardFence(shard_id, ShardMap.single(address), epoch=0)
    else:
        if stored.shard(shard_id) is None:
            await store.close()
            raise ShardMapRefused(
                f"the shard map at {store.safe_url()} (epoch {stored.epoch}) has no shard {shard_id}: "
                f"it names shards {', '.join(map(str, stored.shard_ids))}; add this shard to the map "
                "first, or start it with the id the map gives it (HFTGATE_EXECUTION_SHARD_ID)"
            )
        fence = ShardFence(shard_id, stored)
    log.info("shard %d: shard map epoch %d (%r)", shard_id, fence.epoch, fence.map)
    fence.start_watching(store, poll_ms)
    return fence
