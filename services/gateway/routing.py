"""Where an execution call goes: the gateway's routing rules, with no gRPC import.

* An order goes to the shard that owns its symbol in the current shard map
  (:meth:`hftgate.shardmap.ShardMap.owner`).
* A batch is split by owner (:meth:`Router.split`), each part keeps the request's relative order,
  and the answers are put back in request order (:func:`merge`).
* A cancel, replace or get by order id goes to the shard in the id's shard bits
  (:func:`hftgate.shardmap.order_id_shard`); by client order id only, to the shard the gateway
  routed that (account, client order id) to (:class:`RouteMemory`, bounded), else the gateway
  asks every shard (read-only GetOrder) and uses the one that has it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TypeVar

from hftgate.shardmap import MAX_SYMBOL_CHARS, Shard, ShardMap

T = TypeVar("T")

#: Metadata the gateway sets on a forwarded call: the account it authenticated (by API key), which
#: a shard may trust only from a call carrying the "gateway" principal's service token.
ACCOUNT_METADATA = "x-hftgate-account"
#: The principal the gateway calls shards as.
PRINCIPAL = "gateway"


class RouteMemory:
    """(account, client order id) -> shard id of orders routed here: a bounded LRU.

    Past ``max_routes`` the least recently used route is forgotten; a forgotten route costs one
    read-only question to every shard, never a wrong answer (orders never move between shards)."""

    def __init__(self, max_routes: int) -> None:
        self.max_routes = max(1, max_routes)
        self._routes: OrderedDict[tuple[str, str], int] = OrderedDict()

    def remember(self, account: str, client_order_id: str, shard_id: int) -> None:
        if not client_order_id or len(client_order_id) > 64:
            return  # the shard rejects such ids: nothing to find later
        key = (account, client_order_id)
        self._routes[key] = shard_id
        self._routes.move_to_end(key)
        if len(self._routes) > self.max_routes:
            self._routes.popitem(last=False)

    def recall(self, account: str, client_order_id: str) -> int | None:
        key = (account, client_order_id)
        shard_id = self._routes.get(key)
        if shard_id is not None:
            self._routes.move_to_end(key)
        return shard_id

    def __len__(self) -> int:
        return len(self._routes)


class Router:
    """The current shard map and the routes derived from it. The map is replaced whole, and only by
    a newer one (:meth:`install`), so a late-arriving older map can never win."""

    def __init__(self, shard_map: ShardMap, max_routes: int = 200_000) -> None:
        self.map = shard_map
        self.routes = RouteMemory(max_routes)

    def install(self, shard_map: ShardMap) -> bool:
        """Use ``shard_map`` if it is newer than the current one; True when it was installed."""
        if shard_map.epoch <= self.map.epoch:
            return False
        self.map = shard_map
        return True

    @property
    def single(self) -> Shard | None:
        """The one shard when the map has only one (every call goes there unread), else None."""
        shards = self.map.shards
        return shards[0] if len(shards) == 1 else None

    def shard_for_symbol(self, symbol: str) -> Shard:
        """The owner of ``symbol``. A symbol no instrument can have (empty, too long) goes to the
        lowest shard id, which rejects the order as any shard would (unknown symbol); such symbols
        are not hashed, so a hostile client cannot fill the map's owner cache with megabytes."""
        if not symbol or len(symbol) > MAX_SYMBOL_CHARS:
            return self.map.shards[0]
        return self.map.owner(symbol)

    def split(self, symbols: Sequence[str]) -> dict[Shard, list[int]]:
        """Shard -> the indices (ascending) of the orders it owns, all by one map (a map installed
        meanwhile applies to the next call)."""
        shard_map = self.map
        first = shard_map.shards[0]
        parts: dict[Shard, list[int]] = {}
        for index, symbol in enumerate(symbols):
            shard = first if not symbol or len(symbol) > MAX_SYMBOL_CHARS else shard_map.owner(symbol)
            part = parts.get(shard)
            if part is None:
                parts[shard] = [index]
            else:
                part.append(index)
        return parts

    def shard_for_order_id(self, order_id: int) -> Shard | None:
        """The shard named by ``order_id``'s shard bits, or None when the map has no such shard."""
        return self.map.owner_of_order_id(order_id)


class MergeError(ValueError):
    """A shard answered a different number of items than it was sent."""


def merge(count: int, parts: Sequence[tuple[Sequence[int], Sequence[T]]]) -> list[T | None]:
    """Put each part's answers back at its indices: ``result[indices[k]] = answers[k]``. Positions
    no part answered stay None. Raises :class:`MergeError` when a part's lengths differ."""
    merged: list[T | None] = [None] * count
    for indices, answers in parts:
        if len(indices) != len(answers):
            raise MergeError(f"{len(answers)} answers for {len(indices)} orders")
        for index, answer in zip(indices, answers, strict=True):
            merged[index] = answer
    return merged
