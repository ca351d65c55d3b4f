"""The routing client: typed async calls to hftgate that send each order straight to its shard.

::

    async with HftgateClient("127.0.0.1:50050", api_key="hftgate-demo-alice") as client:
        ack = await client.submit(order)             # NewOrder -> OrderAck, on the owning shard
        acks = await client.submit_many(orders)      # split by shard, sent in parallel, request order
        await client.cancel(order_id=ack.order_id)
        async for update in client.subscribe(["BTCUSDT"]):
            ...

How it routes (the way Kafka, Cassandra and Redis Cluster clients do):

* On start it reads the shard map from the gateway (``GatewayService.GetShardMap``) and then
  follows ``WatchShardMap``, keeping the map of highest epoch. Each order goes directly to the
  shard that owns its symbol by the map's rule (:meth:`hftgate.shardmap.ShardMap.owner`); with
  no map (the gateway did not answer, or names a hash rule this client does not know) every call
  goes to the gateway, which routes it.
* A shard that does not own a symbol at its epoch refuses the order *before accepting it* with
  FAILED_PRECONDITION and a ``google.rpc.ErrorInfo`` whose reason is ``NOT_SHARD_OWNER``
  (metadata ``owner_address`` / ``epoch`` when it knows them). The client then reads the map
  again and sends the order once more, to the new owner (or to the address the refusal named);
  a second refusal is returned to the caller. A cancel, replace or get of an order whose symbol
  moved to another shard is refused the same way by the shard that took it, naming the new
  owner: it is sent once more, there (services/scaler/moves.py).
* While a symbol is being moved between shards, its shards refuse its inputs, before accepting
  them, with UNAVAILABLE and a ``google.rpc.RetryInfo``: ``submit``, ``cancel``, ``replace``
  and ``get`` wait the delay it gives and send again, for at most ``moving_retry_s`` (2 s) and
  never past the call's deadline. Submits of one symbol send again one at a time
  (:class:`MovingSymbolGate`): the first one refused probes every delay (following the move to
  the new owner when the old one names it), the others wait for its answer, so a move under load
  is not slowed by every waiting call being refused every few ms. When the probe's order is
  accepted, the orders that waited go with it to the same shard as one SubmitOrders, in the
  order they came (each call gets its own ack): a burst of single calls reaching the new owner
  at once took ~1 ms per order on a 2-CPU machine, longer than the move itself. Should that batch
  be refused whole (moving again, not the owner), each order is sent on its own as before.
  Nothing else is ever re-sent: an order whose shard did not answer (UNAVAILABLE without
  RetryInfo, DEADLINE_EXCEEDED) may have been accepted.
* Cancel, replace and get by an order id or client order id that this client submitted go to
  the shard that acknowledged it (remembered in a bounded LRU, ``max_routes``); otherwise, or
  when two shards acknowledged the same id to this client, to the gateway, which finds the
  shard (and refuses an id that names orders on several).
* Every call carries the account's API key (``x-api-key``) and, for orders, the symbol in
  ``x-hftgate-symbol``, so a proxy in front of the shards (HAProxy, see
  services/gateway/haproxy.py) can route it without decoding protobuf.

Market data (``subscribe``, ``snapshot``) goes to the gateway, which balances its replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from hftgate.columns import columns_at, merged_ack_columns
from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.security import API_KEY_METADATA, ClientCredentials
from hftgate.shardmap import HASH_ALGORITHM, MAX_SYMBOL_CHARS, Shard, ShardMap, ShardMapError
from hftgate.v1 import common_pb2
from hftgate.v1 import execution_pb2 as ex
from hftgate.v1 import execution_pb2_grpc as ex_grpc
from hftgate.v1 import gateway_pb2 as gw
from hftgate.v1 import gateway_pb2_grpc as gw_grpc
from hftgate.v1 import marketdata_pb2 as md
from hftgate.v1 import marketdata_pb2_grpc as md_grpc

log = logging.getLogger(__name__)

#: The metadata naming an order's symbol, for proxies that route without decoding the request.
SYMBOL_METADATA = "x-hftgate-symbol"
#: A remembered order name that two shards answered for (route it through the gateway).
_AMBIGUOUS = -1
#: ErrorInfo.reason of a shard's refusal of a symbol it does not own.
NOT_SHARD_OWNER = "NOT_SHARD_OWNER"


class BatchError(Exception):
    """Some shards of a split batch failed. ``acks[i]`` answers ``orders[i]`` where a shard
    answered (None where its shard failed); ``errors`` are the failed shards' statuses. Sending
    the unanswered orders again is safe: a shard answers an order it already has with
    REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID."""

    def __init__(self, acks: list[ex.OrderAck | None], errors: list[grpc.aio.AioRpcError]) -> None:
        missing = sum(1 for a in acks if a is None)
        first = errors[0]
        super().__init__(
            f"{missing} of {len(acks)} orders got no answer: {first.code().name}: {first.details()}"
        )
        self.acks = acks
        self.errors = errors


def map_from_proto(message: gw.ShardMap) -> ShardMap | None:
    """The map a GatewayService message describes; None when this client cannot route by it."""
    if message.hash_algorithm != HASH_ALGORITHM or message.epoch < 1:
        return None
    try:
        return ShardMap(
            message.epoch,
            [Shard(s.shard_id, s.address) for s in message.shards],
            {p.symbol: p.shard_id for p in message.pins},
        )
    except ShardMapError as exc:
        log.warning("shard map from the gateway cannot be used (%s): routing through the gateway", exc)
        return None


def retry_delay_s(error: grpc.aio.AioRpcError) -> float | None:
    """The delay of an UNAVAILABLE refusal that carries a ``google.rpc.RetryInfo`` (a shard
    refusing, before accepting, an input of a symbol being moved), or None for any other error:
    a plain UNAVAILABLE may mean the call reached a shard that then failed."""
    if error.code() != grpc.StatusCode.UNAVAILABLE:
        return None
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return max(0.0, info.retry_delay.ToTimedelta().total_seconds())
    return None


def not_owner_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo of a NOT_SHARD_OWNER refusal, or None when ``error`` is something else."""
    if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.reason == NOT_SHARD_OWNER:
                return info
    return None


#: Orders the probe sends in one SubmitOrders with its own (the shard's max_batch_orders is 10,000).
HELD_BATCH_MAX = 1_000


class HeldOrder:
    """An order waiting out a move, for the probe to send with its own answer (MovingSymbolGate)."""

    __slots__ = ("order", "result", "taken", "timeout")

    def __init__(self, order: ex.NewOrder, timeout: float | None) -> None:
        self.order = order
        self.timeout = timeout
        #: True once a probe took it: its ``result`` then comes (an ack, or None: send it alone).
        self.taken = False
        self.result: asyncio.Future[ex.OrderAck | None] = asyncio.get_running_loop().create_future()


class MovingSymbolGate:
    """One probe per moving symbol: while a symbol is refused as moving, one call (the probe)
    sends again after each refusal's delay and the others wait until it gets any other answer.

    Why: a shard refuses a moving symbol's inputs with a retry delay of a few ms; with every
    waiting call sending again on its own, a client with 64 calls waiting sends ~13,000 refused
    calls a second, and those compete for the CPU with the move they wait for (measured: the move
    took twice as long). The waiters lose nothing: they go the moment the probe is answered,
    which is when their own next try would have found the move over. Bounded by the symbols with
    a call waiting (one event each). One per event loop; not thread-safe.

    A waiting submit also ``hold``s its order: when the probe's own order is accepted, the probe
    ``take_held``s them and sends them as one batch (see the module docstring); a waiter whose
    order was not taken ``unhold``s it and sends it itself."""

    def __init__(self) -> None:
        #: symbol -> set once its probe has an answer other than "moving".
        self._probes: dict[str, asyncio.Event] = {}
        #: symbol -> the orders waiting for its probe, oldest first.
        self._held: dict[str, list[HeldOrder]] = {}

    def probing(self, symbol: str) -> bool:
        return symbol in self._probes

    async def wait(self, symbol: str, give_up_at: float) -> None:
        """Return once no call probes ``symbol`` (at the latest at loop time ``give_up_at``)."""
        loop = asyncio.get_running_loop()
        while (answered := self._probes.get(symbol)) is not None:
            left = give_up_at - loop.time()
            if left <= 0:
                return
            try:
                await asyncio.wait_for(answered.wait(), left)
            except TimeoutError:
                return

    def claim(self, symbol: str) -> bool:
        """True when the caller becomes ``symbol``'s probe (no other call probes it)."""
        if symbol in self._probes:
            return False
        self._probes[symbol] = asyncio.Event()
        return True

    def release(self, symbol: str) -> None:
        """The probe has an answer (or gave up): the waiting calls go."""
        answered = self._probes.pop(symbol, None)
        if answered is not None:
            answered.set()

    def hold(self, symbol: str, order: ex.NewOrder, timeout: float | None) -> HeldOrder | None:
        """Offer ``order`` to ``symbol``'s probe (None when nobody probes it)."""
        if symbol not in self._probes:
            return None
        held = HeldOrder(order, timeout)
        self._held.setdefault(symbol, []).append(held)
        return held

    def unhold(self, symbol: str, held: HeldOrder) -> None:
        """Withdraw an order the probe did not take (its caller sends it itself)."""
        waiting = self._held.get(symbol)
        if waiting is not None and held in waiting:
            waiting.remove(held)
            if not waiting:
                del self._held[symbol]

    def take_held(self, symbol: str) -> list[HeldOrder]:
        """The orders waiting for ``symbol``'s probe, oldest first, now the probe's to send."""
        taken = self._held.pop(symbol, [])
        for held in taken:
            held.taken = True
        return taken


@dataclass
class _Target:
    """Where a call goes: a shard's stub (with its id) or the gateway's (shard_id None)."""

    stub: ex_grpc.ExecutionServiceStub
    shard_id: int | None
    address: str


class HftgateClient:
    """A client of one hftgate deployment, reached at ``address`` (the gateway)."""

    def __init__(
        self,
        address: str,
        *,
        api_key: str | None = None,
        credentials: ClientCredentials | None = None,
        route_directly: bool = True,
        watch_map: bool = True,
        max_routes: int = 100_000,
        watch_retry_s: float = 0.5,
        moving_retry_s: float = 2.0,
    ) -> None:
        """``api_key`` for an account; ``credentials`` for TLS and/or a service token (its
        metadata is sent too). ``route_directly=False`` sends everything to the gateway."""
        self.address = address
        self._credentials = credentials or ClientCredentials()
        metadata = list(self._credentials.metadata)
        if api_key is not None:
            metadata.append((API_KEY_METADATA, api_key))
        self._metadata: tuple[tuple[str, str], ...] = tuple(metadata)
        self._route_directly = route_directly
        self._watch_map = watch_map
        self._watch_retry_s = watch_retry_s
        self._moving_retry_s = moving_retry_s
        self._max_routes = max(1, max_routes)
        self._channel: grpc.aio.Channel | None = None
        self._gateway: _Target | None = None
        self._gateway_service: gw_grpc.GatewayServiceStub | None = None
        self._marketdata: md_grpc.MarketDataServiceStub | None = None
        self._shards: dict[str, tuple[grpc.aio.Channel, ex_grpc.ExecutionServiceStub]] = {}
        self._map: ShardMap | None = None
        self._watcher: asyncio.Task[None] | None = None
        # order id / (client order id) -> shard id of orders acknowledged through this client.
        self._by_order_id: OrderedDict[int, int] = OrderedDict()
        self._by_client_id: OrderedDict[str, int] = OrderedDict()
        #: Calls sent per destination (shard id, or None for the gateway): for tests and stats.
        self.sent: dict[int | None, int] = {}
        #: Orders sent a second time after a NOT_SHARD_OWNER refusal.
        self.owner_retries = 0
        #: Calls sent again after a moving symbol's UNAVAILABLE + RetryInfo refusal.
        self.moving_retries = 0
        self._moving = MovingSymbolGate()
        #: Batches of orders that waited out a move, being sent (held here so they finish).
        self._held_batches: set[asyncio.Task[None]] = set()

    # --- life --------------------------------------------------------------------------------
    async def start(self) -> HftgateClient:
        self._channel = self._credentials.open_channel(self.address, CHANNEL_OPTIONS)
        self._gateway = _Target(ex_grpc.ExecutionServiceStub(self._channel), None, self.address)
        self._gateway_service = gw_grpc.GatewayServiceStub(self._channel)
        self._marketdata = md_grpc.MarketDataServiceStub(self._channel)
        if self._route_directly:
            await self.refresh_map()
            if self._watch_map:
                self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="shard-map-watch")
        return self

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        for channel, _ in self._shards.values():
            await channel.close(None)
        self._shards.clear()
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None

    async def __aenter__(self) -> HftgateClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- the map -----------------------------------------------------------------------------
    @property
    def shard_map(self) -> ShardMap | None:
        """The map orders are routed by (None: everything goes to the gateway)."""
        return self._map

    def install(self, shard_map: ShardMap | None) -> bool:
        """Route by ``shard_map`` if it is newer than the current one."""
        if shard_map is None or (self._map is not None and shard_map.epoch <= self._map.epoch):
            return False
        self._map = shard_map
        for address in [a for a in self._shards if a not in {s.address for s in shard_map.shards}]:
            channel, _ = self._shards.pop(address)
            asyncio.get_running_loop().create_task(channel.close(5.0))
        return True

    async def refresh_map(self, timeout_s: float = 5.0) -> ShardMap | None:
        """Read the map from the gateway now; keeps the current one when that fails."""
        assert self._gateway_service is not None, "start() the client first"
        try:
            reply = await self._gateway_service.GetShardMap(
                gw.GetShardMapRequest(), metadata=self._metadata, timeout=timeout_s
            )
        except grpc.aio.AioRpcError as err:
            log.warning(
                "cannot read the shard map from %s (%s): %s", self.address, err.code().name, err.details()
            )
            return self._map
        self.install(map_from_proto(reply.map))
        return self._map

    async def _watch(self) -> None:
        assert self._gateway_service is not None
        while True:
            known = self._map.epoch if self._map is not None else 0
            try:
                stream = self._gateway_service.WatchShardMap(
                    gw.WatchShardMapRequest(known_epoch=known), metadata=self._metadata
                )
                async for message in stream:
                    self.install(map_from_proto(message))
            except grpc.aio.AioRpcError as err:
                log.debug("shard map watch ended (%s): retrying", err.code().name)
            await asyncio.sleep(self._watch_retry_s)

    # --- destinations ------------------------------------------------------------------------
    def _shard_target(self, shard: Shard) -> _Target:
        known = self._shards.get(shard.address)
        if known is None:
            channel = self._credentials.open_channel(
                shard.address, [*CHANNEL_OPTIONS, ("grpc.enable_retries", 0)]
            )
            known = self._shards[shard.address] = (channel, ex_grpc.ExecutionServiceStub(channel))
        return _Target(known[1], shard.shard_id, shard.address)

    def _gateway_target(self) -> _Target:
        assert self._gateway is not None, "start() the client first"
        return self._gateway

    def _for_symbol(self, symbol: str) -> _Target:
        shard_map = self._map
        if shard_map is None or not symbol or len(symbol) > MAX_SYMBOL_CHARS:
            return self._gateway_target()
        return self._shard_target(shard_map.owner(symbol))

    def _for_order(self, order_id: int, client_order_id: str) -> _Target:
        shard_map = self._map
        if shard_map is not None:
            shard_id = None
            if order_id:
                shard_id = self._by_order_id.get(order_id)
            if (shard_id is None or shard_id == _AMBIGUOUS) and client_order_id:
                shard_id = self._by_client_id.get(client_order_id)
            shard = None if shard_id is None or shard_id == _AMBIGUOUS else shard_map.shard(shard_id)
            if shard is not None:
                return self._shard_target(shard)
        return self._gateway_target()

    def _remember(self, ack: ex.OrderAck, shard_id: int | None) -> None:
        if shard_id is None or ack.status == ex.ORDER_STATUS_REJECTED:
            return
        self._note(self._by_order_id, ack.order_id, shard_id)
        self._note(self._by_client_id, ack.client_order_id, shard_id)

    def _note(self, table: OrderedDict[Any, int], key: int | str, shard_id: int) -> None:
        if not key:
            return
        known = table.get(key)
        # Until shards put their id in order ids, two shards can hand out the same id (and an
        # account can reuse a client order id on another shard): such a name is ambiguous, and
        # goes to the gateway, which refuses it rather than guess.
        table[key] = shard_id if known is None or known == shard_id else _AMBIGUOUS
        table.move_to_end(key)
        if len(table) > self._max_routes:
            table.popitem(last=False)

    def _count(self, target: _Target) -> None:
        self.sent[target.shard_id] = self.sent.get(target.shard_id, 0) + 1

    def _md(self, symbol: str = "") -> tuple[tuple[str, str], ...]:
        if symbol and len(symbol) <= MAX_SYMBOL_CHARS and symbol.isascii() and symbol.isprintable():
            return (*self._metadata, (SYMBOL_METADATA, symbol))
        return self._metadata

    async def _after_refusal(
        self, target: _Target, info: error_details_pb2.ErrorInfo, symbol: str
    ) -> _Target | None:
        """Where to send an order once more after ``target`` refused it as not its owner."""
        await self.refresh_map()
        fresh = self._for_symbol(symbol)
        if fresh.address != target.address:
            return fresh
        named = info.metadata.get("owner_address", "")
        if named and named != target.address:
            shard_id = info.metadata.get("owner_shard_id", "")
            return self._shard_target(Shard(int(shard_id) if shard_id.isdigit() else -1, named))
        return None

    # --- orders ------------------------------------------------------------------------------
    async def submit(self, order: ex.NewOrder, *, timeout: float | None = None) -> ex.OrderAck:
        """Submit one order to its shard; returns its ack (accepted or rejected with a reason)."""
        request = ex.SubmitOrderRequest(order=order)
        target = self._for_symbol(order.symbol)
        metadata = self._md(order.symbol)
        give_up = self._give_up_at(timeout)
        owner_retried = False
        gate, symbol = self._moving, order.symbol
        probe = False
        try:
            while True:
                if not probe and gate.probing(symbol):
                    held = gate.hold(symbol, order, timeout)
                    await gate.wait(symbol, give_up)
                    if held is not None:
                        if held.taken:  # sent with the probe's order
                            ack = await held.result
                            if ack is not None:
                                return ack
                        else:
                            gate.unhold(symbol, held)
                    target = self._for_symbol(symbol)  # the move may have published a new owner
                self._count(target)
                try:
                    reply = await target.stub.SubmitOrder(request, metadata=metadata, timeout=timeout)
                except grpc.aio.AioRpcError as err:
                    moving = retry_delay_s(err) is not None
                    if probe and not moving and (owner_retried or not_owner_info(err) is None):
                        # (A probe refused as not the owner keeps probing, at the new owner.)
                        gate.release(symbol)
                        probe = False
                    if moving and not probe and gate.probing(symbol):
                        if asyncio.get_running_loop().time() >= give_up:
                            raise
                        self.moving_retries += 1
                        continue  # another call probes: wait for its answer
                    if moving:
                        probe = gate.claim(symbol) or probe
                    if await self._wait_out_move(err, give_up):
                        target = self._for_symbol(symbol)
                        continue
                    info = not_owner_info(err)
                    if owner_retried or info is None or target.shard_id is None:
                        raise
                    retarget = await self._after_refusal(target, info, symbol)
                    if retarget is None:
                        raise
                    self.owner_retries += 1
                    owner_retried = True
                    target = retarget
                    continue
                self._remember(reply.ack, target.shard_id)
                if probe:  # the move is over for this symbol: the orders that waited go now
                    held_orders = gate.take_held(symbol)
                    gate.release(symbol)
                    probe = False
                    if held_orders:
                        task = asyncio.get_running_loop().create_task(
                            self._send_held(target, symbol, held_orders), name="moving-symbol-batch"
                        )
                        self._held_batches.add(task)
                        task.add_done_callback(self._held_batches.discard)
                return reply.ack
        finally:
            if probe:
                gate.release(symbol)

    async def _send_held(self, target: _Target, symbol: str, held: list[HeldOrder]) -> None:
        """Send the orders that waited out a move as SubmitOrders to ``target`` (where the probe's
        order was just accepted), in their order; each waiter gets its ack. A part refused whole
        before any of it was accepted (moving again, not the owner) gives its waiters None: they
        send their orders themselves. Any other failure is each waiter's error, as for its own
        call (the shard may have accepted the orders)."""
        timeouts = [h.timeout for h in held if h.timeout is not None]
        timeout = min(timeouts) if timeouts else None
        for start in range(0, len(held), HELD_BATCH_MAX):
            part = held[start : start + HELD_BATCH_MAX]
            self._count(target)
            try:
                reply = await target.stub.SubmitOrders(
                    ex.SubmitOrdersRequest(orders=[h.order for h in part]),
                    metadata=self._md(symbol),
                    timeout=timeout,
                )
                if len(reply.acks) != len(part):
                    raise RuntimeError(
                        f"{target.address} answered {len(reply.acks)} acks for {len(part)} orders"
                    )
            except grpc.aio.AioRpcError as err:
                alone = retry_delay_s(err) is not None or not_owner_info(err) is not None
                for h in held[start:]:
                    if alone:
                        h.result.set_result(None)
                    else:
                        h.result.set_exception(err)
                return
            except asyncio.CancelledError:  # the client closes
                for h in held[start:]:
                    h.result.cancel()
                raise
            except Exception as exc:
                for h in held[start:]:
                    h.result.set_exception(exc)
                return
            for h, ack in zip(part, reply.acks, strict=True):
                self._remember(ack, target.shard_id)
                h.result.set_result(ack)

    def _give_up_at(self, timeout: float | None) -> float:
        budget = self._moving_retry_s if timeout is None else min(self._moving_retry_s, timeout)
        return asyncio.get_running_loop().time() + budget

    async def _wait_out_move(self, error: grpc.aio.AioRpcError, give_up_at: float) -> bool:
        """True after waiting the delay of a moving symbol's refusal, if there is time to resend."""
        delay = retry_delay_s(error)
        if delay is None or asyncio.get_running_loop().time() + delay >= give_up_at:
            return False
        self.moving_retries += 1
        await asyncio.sleep(delay)
        return True

    async def _by_order(
        self, method: str, request: Any, order_id: int, client_order_id: str, timeout: float | None
    ) -> Any:
        """Cancel, replace or get: to the shard that took the order; once more to the owner a
        NOT_SHARD_OWNER refusal names (the order's symbol moved); again after a move's delay."""
        target = self._for_order(order_id, client_order_id)
        give_up = self._give_up_at(timeout)
        owner_retried = False
        while True:
            self._count(target)
            try:
                return await getattr(target.stub, method)(request, metadata=self._metadata, timeout=timeout)
            except grpc.aio.AioRpcError as err:
                if await self._wait_out_move(err, give_up):
                    continue
                info = not_owner_info(err)
                named = info.metadata.get("owner_address", "") if info is not None else ""
                if owner_retried or not named or named == target.address:
                    raise
                shard_id = info.metadata.get("owner_shard_id", "") if info is not None else ""
                new_shard = int(shard_id) if shard_id.isdigit() else -1
                target = self._shard_target(Shard(new_shard, named))
                if new_shard >= 0 and order_id:
                    self._by_order_id[order_id] = new_shard  # its new home, not an ambiguity
                self.owner_retries += 1
                owner_retried = True

    async def submit_many(
        self, orders: Sequence[ex.NewOrder], *, timeout: float | None = None
    ) -> list[ex.OrderAck]:
        """Submit a batch: split by owning shard, the parts sent in parallel, the acks returned in
        the order of ``orders``. Raises :class:`BatchError` when some parts failed (with the acks
        of the others), or the status when the whole batch failed (e.g. INVALID_ARGUMENT)."""
        if not orders:
            raise ValueError("submit_many needs at least one order")
        parts: dict[str, tuple[_Target, list[int]]] = {}
        for index, order in enumerate(orders):
            target = self._for_symbol(order.symbol)
            part = parts.get(target.address)
            if part is None:
                parts[target.address] = (target, [index])
            else:
                part[1].append(index)
        if len(parts) == 1:
            ((target, _),) = parts.values()
            return await self._submit_part(target, list(orders), timeout, retry=True)
        outcomes = await asyncio.gather(
            *(
                self._submit_part(target, [orders[i] for i in indices], timeout, retry=True)
                for target, indices in parts.values()
            ),
            return_exceptions=True,
        )
        acks: list[ex.OrderAck | None] = [None] * len(orders)
        errors: list[grpc.aio.AioRpcError] = []
        for (_, indices), outcome in zip(parts.values(), outcomes, strict=True):
            if isinstance(outcome, grpc.aio.AioRpcError):
                errors.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                for index, ack in zip(indices, outcome, strict=True):
                    acks[index] = ack
        if errors:
            raise BatchError(acks, errors)
        return [a for a in acks if a is not None]

    async def submit_columns(self, orders: ex.OrderColumns, *, timeout: float | None = None) -> ex.AckColumns:
        """SubmitOrderColumns through the map: the columns split by owning shard (no message per
        order on the way), the parts sent in parallel, the acks merged back in the batch's order.
        A part a shard refuses whole as not its owner is routed again by a fresh map, once; any
        other failure of a part raises its status (the other parts may have been accepted: look
        them up by client order id)."""
        count = len(orders.client_order_id)
        if count == 0:
            raise ValueError("submit_columns needs at least one order")
        symbols = list(orders.symbols)
        try:
            order_symbols = [symbols[i] for i in orders.symbol_index]
        except IndexError:
            raise ValueError("symbol_index names an entry past symbols") from None
        return await self._submit_columns(orders, order_symbols, timeout, retry=True)

    async def _submit_columns(
        self, orders: ex.OrderColumns, order_symbols: list[str], timeout: float | None, *, retry: bool
    ) -> ex.AckColumns:
        parts: dict[str, tuple[_Target, list[int]]] = {}
        for index, symbol in enumerate(order_symbols):
            target = self._for_symbol(symbol)
            parts.setdefault(target.address, (target, []))[1].append(index)
        if len(parts) == 1:
            ((target, _),) = parts.values()
            return await self._submit_column_part(target, orders, order_symbols, timeout, retry=retry)
        answers = await asyncio.gather(
            *(
                self._submit_column_part(
                    target,
                    columns_at(orders, indices),
                    [order_symbols[i] for i in indices],
                    timeout,
                    retry=retry,
                )
                for target, indices in parts.values()
            )
        )
        return merged_ack_columns(
            len(order_symbols),
            [(indices, acks) for (_, indices), acks in zip(parts.values(), answers, strict=True)],
        )

    async def _submit_column_part(
        self,
        target: _Target,
        orders: ex.OrderColumns,
        order_symbols: list[str],
        timeout: float | None,
        *,
        retry: bool,
    ) -> ex.AckColumns:
        self._count(target)
        symbol = order_symbols[0] if len(set(order_symbols)) == 1 else ""
        try:
            reply = await target.stub.SubmitOrderColumns(
                ex.SubmitOrderColumnsRequest(orders=orders), metadata=self._md(symbol), timeout=timeout
            )
        except grpc.aio.AioRpcError as err:
            if not retry or not_owner_info(err) is None or target.shard_id is None:
                raise
            # Refused whole before any of it was accepted: route it again by the fresh map, once.
            await self.refresh_map()
            self.owner_retries += 1
            return await self._submit_columns(orders, order_symbols, timeout, retry=False)
        acks = reply.acks
        if len(acks.order_id) != len(order_symbols):
            raise RuntimeError(
                f"{target.address} answered {len(acks.order_id)} acks for {len(order_symbols)} orders"
            )
        if target.shard_id is not None:  # (as _remember does, without an OrderAck per order)
            for order_id, client_order_id in zip(acks.order_id, orders.client_order_id, strict=True):
                if order_id > 0:  # (0: refused)
                    self._note(self._by_order_id, order_id, target.shard_id)
                    self._note(self._by_client_id, client_order_id, target.shard_id)
        return acks

    async def _submit_part(
        self, target: _Target, orders: list[ex.NewOrder], timeout: float | None, *, retry: bool
    ) -> list[ex.OrderAck]:
        self._count(target)
        symbol = orders[0].symbol if all(o.symbol == orders[0].symbol for o in orders) else ""
        try:
            reply = await target.stub.SubmitOrders(
                ex.SubmitOrdersRequest(orders=orders), metadata=self._md(symbol), timeout=timeout
            )
        except grpc.aio.AioRpcError as err:
            info = not_owner_info(err)
            if not retry or info is None or target.shard_id is None:
                raise
            # The shard refused the whole part before accepting any of it: route it again by the
            # fresh map (it may now span shards), once.
            await self.refresh_map()
            self.owner_retries += 1
            again: dict[str, tuple[_Target, list[int]]] = {}
            for index, order in enumerate(orders):
                fresh = self._for_symbol(order.symbol)
                again.setdefault(fresh.address, (fresh, []))[1].append(index)
            if list(again) == [target.address]:
                raise
            results = await asyncio.gather(
                *(
                    self._submit_part(t, [orders[i] for i in ix], timeout, retry=False)
                    for t, ix in again.values()
                )
            )
            merged: list[ex.OrderAck] = [ex.OrderAck()] * len(orders)
            for (_, indices), acks in zip(again.values(), results, strict=True):
                for index, ack in zip(indices, acks, strict=True):
                    merged[index] = ack
            return merged
        if len(reply.acks) != len(orders):
            raise RuntimeError(f"{target.address} answered {len(reply.acks)} acks for {len(orders)} orders")
        for ack in reply.acks:
            self._remember(ack, target.shard_id)
        return list(reply.acks)

    async def cancel(
        self, order_id: int = 0, client_order_id: str = "", *, timeout: float | None = None
    ) -> ex.CancelOrderResponse:
        """Cancel an order by exchange id or client order id."""
        request = ex.CancelOrderRequest(order_id=order_id, client_order_id=client_order_id)
        response: ex.CancelOrderResponse = await self._by_order(
            "CancelOrder", request, order_id, client_order_id, timeout
        )
        return response

    async def replace(
        self,
        order_id: int = 0,
        client_order_id: str = "",
        *,
        price_ticks: int = 0,
        quantity_lots: int = 0,
        stop_price_ticks: int = 0,
        timeout: float | None = None,
    ) -> ex.ReplaceOrderResponse:
        """Replace an order's price, quantity or trigger (0 keeps each)."""
        request = ex.ReplaceOrderRequest(
            order_id=order_id,
            client_order_id=client_order_id,
            price_ticks=price_ticks,
            quantity_lots=quantity_lots,
            stop_price_ticks=stop_price_ticks,
        )
        response: ex.ReplaceOrderResponse = await self._by_order(
            "ReplaceOrder", request, order_id, client_order_id, timeout
        )
        return response

    async def get(
        self, order_id: int = 0, client_order_id: str = "", *, timeout: float | None = None
    ) -> ex.Order:
        """An order's current state (NOT_FOUND for an unknown order or another account's)."""
        request = ex.GetOrderRequest(order_id=order_id, client_order_id=client_order_id)
        response: ex.GetOrderResponse = await self._by_order(
            "GetOrder", request, order_id, client_order_id, timeout
        )
        return response.order

    # --- market data -------------------------------------------------------------------------
    async def subscribe(
        self, symbols: Sequence[str] = (), *, send_initial_snapshot: bool = True
    ) -> AsyncIterator[md.MarketUpdate]:
        """Market data updates of ``symbols`` (names; empty = everything), through the gateway."""
        assert self._marketdata is not None, "start() the client first"
        request = md.SubscribeRequest(
            filter=md.SymbolFilter(symbols=[common_pb2.Symbol(name=s) for s in symbols]),
            send_initial_snapshot=send_initial_snapshot,
        )
        call: Any = self._marketdata.Subscribe(request, metadata=self._metadata)
        try:
            async for update in call:
                yield update
        finally:
            call.cancel()

    async def snapshot(
        self, *, depth_levels: int = 0, timeout: float | None = None
    ) -> md.GetSnapshotResponse:
        """The market data snapshot of every tracked symbol (one page), through the gateway."""
        assert self._marketdata is not None, "start() the client first"
        response: md.GetSnapshotResponse = await self._marketdata.GetSnapshot(
            md.GetSnapshotRequest(depth_levels=depth_levels), metadata=self._metadata, timeout=timeout
        )
        return response
