"""gRPC wiring of the gateway: the public ExecutionService, forwarded to the shards, and the
GatewayService (the shard map for routing clients).

Execution calls are handled as bytes (generic handlers with no deserializers): the API key is
checked here once, then the call goes to its shard with the gateway's service token and the
account (``x-hftgate-account``, percent-encoded UTF-8). Only what routing needs is decoded: the
symbol of an order (not even that while one shard owns everything), the order ids of a cancel,
replace or get. A request that does not decode answers INVALID_ARGUMENT as on the shards.

Statuses of the gateway itself (the shard's own statuses pass through unchanged, details too):

* UNAVAILABLE naming the shard ("execution shard 1 at host:port is unavailable: ...") when it
  cannot be reached; DEADLINE_EXCEEDED naming it when it did not answer within the deadline. The
  client's deadline is propagated to the shard (a call without one gets ``default_deadline_ms``).
  Nothing is retried: an order that may have reached a shard is never sent again.
* A SubmitOrders split across shards of which some failed answers the first failure's status with
  a ``hftgate.v1.SubmitOrdersResponse`` detail holding the acks of the orders that other shards
  answered (the failed ones' acks left empty, action UNSPECIFIED).
* FAILED_PRECONDITION when a client order id names orders on several shards (name it by order id);
  UNIMPLEMENTED for what needs more than one shard and is not built yet (OrderStream across
  shards, StreamExecutions without a symbol across shards, GetStats across shards).
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from grpc_status import rpc_status

from hftgate import security
from hftgate.grpcserver import RunningServer, ServiceBinding, abort_invalid_argument, create_server
from hftgate.shardmap import HASH_ALGORITHM, ORDER_ID_SHARD_SHIFT, Shard, ShardMap
from hftgate.telemetry import describe_malformed
from hftgate.v1 import cache_pb2, marketdata_pb2  # noqa: F401 (their descriptors, for reflection)
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import gateway_pb2 as gw
from hftgate.v1 import gateway_pb2_grpc as gw_grpc
from services.gateway.app import GatewayApp, build
from services.gateway.config import GatewayConfig
from services.gateway.routing import ACCOUNT_METADATA, PRINCIPAL, MergeError, merge
from services.gateway.stateless import StatelessForwarder
from services.gateway.upstream import EXECUTION_SERVICE, ShardChannel

log = logging.getLogger(__name__)

GATEWAY_SERVICE = "hftgate.v1.GatewayService"
_TRACE_METADATA = ("traceparent", "tracestate")
_STATUS_DETAILS = "grpc-status-details-bin"


@dataclass(frozen=True, slots=True)
class _Caller:
    """An authenticated account's forwarding metadata, and the deadline left for the shard."""

    account: str
    metadata: tuple[tuple[str, str], ...]
    timeout_s: float | None


class _ShardFailed(Exception):
    def __init__(self, channel: ShardChannel, error: grpc.aio.AioRpcError) -> None:
        super().__init__(channel.name)
        self.channel = channel
        self.error = error


def _status_of(failure: _ShardFailed) -> tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]:
    """The status to answer for a shard's failure: transport failures name the shard; the shard's
    own statuses pass through with their rich details."""
    err, name = failure.error, failure.channel.name
    code = err.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return code, f"{name} did not answer within the deadline", ()
    if code == grpc.StatusCode.UNAVAILABLE:
        return code, f"{name} is unavailable: {err.details()}", ()
    trailing: tuple[tuple[str, Any], ...] = tuple(
        (item[0], item[1])  # type: ignore[index]
        for item in (err.trailing_metadata() or ())
        if item[0] == _STATUS_DETAILS  # type: ignore[index]
    )
    return code, err.details() or f"{name} answered {code.name}", trailing


async def _abort_failure(context: grpc.aio.ServicerContext, failure: _ShardFailed) -> NoReturn:
    code, message, trailing = _status_of(failure)
    await context.abort(code, message, trailing_metadata=trailing)
    raise AssertionError("abort raises")


async def _abort_bad_request(
    context: grpc.aio.ServicerContext, field_name: str, description: str
) -> NoReturn:
    await abort_invalid_argument(context, field_name, description)


async def _parse(context: grpc.aio.ServicerContext, cls: type[Any], data: bytes) -> Any:
    try:
        return cls.FromString(data)
    except DecodeError:
        detail = describe_malformed(data, cls.DESCRIPTOR)
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {cls.DESCRIPTOR.full_name}: {detail}"
        )


class ExecutionForwarder:
    """The public ExecutionService, each call forwarded as bytes to the shard that owns it."""

    def __init__(self, app: GatewayApp) -> None:
        self.app = app
        self.router = app.router
        self.config = app.config
        self._token = app.suite.secret.token_for(PRINCIPAL)
        self._default_timeout_s = app.config.default_deadline_ms / 1000
        #: Calls sent to each shard id (unary calls and streams), for tests and stats.
        self.sent: dict[int, int] = {}

    def generic_handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            EXECUTION_SERVICE,
            {
                "SubmitOrder": unary(self.submit_order),
                "SubmitOrders": unary(self.submit_orders),
                "CancelOrder": unary(self.cancel_order),
                "ReplaceOrder": unary(self.replace_order),
                "GetOrder": unary(self.get_order),
                "CancelAll": unary(self.cancel_all),
                "GetStats": unary(self.get_stats),
                "StreamExecutions": grpc.unary_stream_rpc_method_handler(self.stream_executions),
                "OrderStream": grpc.stream_stream_rpc_method_handler(self.order_stream),
            },
        )

    # --- the door ----------------------------------------------------------------------------------
    async def _caller(self, context: grpc.aio.ServicerContext, *, stream: bool = False) -> _Caller:
        key = security.api_key_of(context)
        if not key:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing API key: send it in '{security.API_KEY_METADATA}'",
            )
        assert key is not None
        try:
            account = await self.app.account_for_key(key)
        except Exception as exc:  # the reference store is down: say so, never a traceback
            log.warning("API key check failed: %r", exc)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "cannot check the API key now: reference data unavailable"
            )
        if account is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")
        assert account is not None
        metadata = [
            (security.SERVICE_TOKEN_METADATA, self._token),
            (ACCOUNT_METADATA, urllib.parse.quote(account.name, safe="")),
        ]
        if self.config.forward_api_key:
            metadata.append((security.API_KEY_METADATA, key))
        for name, value in context.invocation_metadata() or ():
            if name in _TRACE_METADATA and isinstance(value, str):
                metadata.append((name, value))
        remaining = context.time_remaining()
        if remaining is None:
            timeout = None if stream else self._default_timeout_s
        else:
            if remaining <= 0:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the call's deadline had passed")
            timeout = remaining
        return _Caller(account.name, tuple(metadata), timeout)

    def _channel(self, shard: Shard) -> ShardChannel:
        self.sent[shard.shard_id] = self.sent.get(shard.shard_id, 0) + 1
        return self.app.upstreams.get(shard)

    async def _call(self, shard: Shard, method: str, data: bytes, caller: _Caller) -> bytes:
        """One unary call to ``shard``, never retried; :class:`_ShardFailed` on any failure."""
        channel = self._channel(shard)
        try:
            reply: bytes = await channel.unary(method)(
                data, metadata=caller.metadata, timeout=caller.timeout_s
            )
        except grpc.aio.AioRpcError as err:
            raise _ShardFailed(channel, err) from None
        return reply

    async def _forward(
        self, context: grpc.aio.ServicerContext, shard: Shard, method: str, data: bytes, caller: _Caller
    ) -> bytes:
        try:
            return await self._call(shard, method, data, caller)
        except _ShardFailed as failure:
            await _abort_failure(context, failure)

    # --- orders ------------------------------------------------------------------------------------
    async def submit_order(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        caller = await self._caller(context)
        shard = self.router.single
        if shard is None:
            request = await _parse(context, api.SubmitOrderRequest, data)
            shard = self.router.shard_for_symbol(request.order.symbol)
            self.router.routes.remember(caller.account, request.order.client_order_id, shard.shard_id)
        return await self._forward(context, shard, "SubmitOrder", data, caller)

    async def submit_orders(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        caller = await self._caller(context)
        single = self.router.single
        if single is not None:
            return await self._forward(context, single, "SubmitOrders", data, caller)
        request = await _parse(context, api.SubmitOrdersRequest, data)
        orders = request.orders
        count = len(orders)
        if count == 0:
            await _abort_bad_request(context, "orders", "Cannot submit orders: the batch is empty")
        if count > self.config.max_batch_orders:
            await _abort_bad_request(
                context,
                "orders",
                f"Cannot submit orders: {count} orders exceed the gateway's max_batch_orders="
                f"{self.config.max_batch_orders}",
            )
        parts = self.router.split([order.symbol for order in orders])
        routes = self.router.routes
        for shard, indices in parts.items():
            for index in indices:
                routes.remember(caller.account, orders[index].client_order_id, shard.shard_id)
        if len(parts) == 1:
            (only,) = parts
            return await self._forward(context, only, "SubmitOrders", data, caller)

        async def send(shard: Shard, indices: list[int]) -> bytes:
            part = api.SubmitOrdersRequest()
            part.orders.extend(orders[i] for i in indices)
            return await self._call(shard, "SubmitOrders", part.SerializeToString(), caller)

        outcomes = await asyncio.gather(
            *(send(shard, indices) for shard, indices in parts.items()),
            return_exceptions=True,
        )
        answered: list[tuple[Sequence[int], Sequence[api.OrderAck]]] = []
        failures: list[_ShardFailed] = []
        for indices, outcome in zip(parts.values(), outcomes, strict=True):
            if isinstance(outcome, _ShardFailed):
                failures.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                answered.append((indices, api.SubmitOrdersResponse.FromString(outcome).acks))
        try:
            merged = merge(count, answered)
        except MergeError as exc:
            await context.abort(
                grpc.StatusCode.INTERNAL, f"a shard's SubmitOrders answer did not match: {exc}"
            )
        response = api.SubmitOrdersResponse()
        for ack in merged:
            if ack is None:
                response.acks.add()
            else:
                response.acks.append(ack)
        if not failures:
            return response.SerializeToString()
        await self._abort_partial(
            context, failures, response, count - sum(len(i) for i, _ in answered), count
        )

    async def _abort_partial(
        self,
        context: grpc.aio.ServicerContext,
        failures: list[_ShardFailed],
        partial: api.SubmitOrdersResponse,
        unanswered: int,
        count: int,
    ) -> NoReturn:
        code, message, _ = _status_of(failures[0])
        others = "; ".join(_status_of(f)[1] for f in failures[1:])
        text = (
            f"{message}{'; ' + others if others else ''}: {unanswered} of {count} orders got no answer "
            f"(their acks are empty in this status's SubmitOrdersResponse detail; the other orders' acks "
            f"are there). Sending them again is safe: a shard answers an order it already has with "
            f"REJECT_REASON_DUPLICATE_CLIENT_ORDER_ID"
        )
        status = status_pb2.Status(code=code.value[0], message=text)
        status.details.add().Pack(partial)
        await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]
        raise AssertionError("abort raises")

    async def _order_shard(
        self,
        context: grpc.aio.ServicerContext,
        caller: _Caller,
        order_id: int,
        client_order_id: str,
    ) -> tuple[Shard, bytes | None]:
        """The shard holding the order named by id or client order id, and, when finding it took a
        GetOrder probe, that probe's answer. Aborts with the status the shards would give."""
        if order_id < 0:
            await _abort_bad_request(context, "order_id", f"order_id must be positive, got {order_id}")
        if order_id and self.config.order_id_shard_bits:
            shard = self.router.shard_for_order_id(order_id)
            if shard is None:
                await context.abort(grpc.StatusCode.NOT_FOUND, f"no order with order_id {order_id}")
            assert shard is not None
            return shard, None
        if not order_id and not client_order_id:
            await _abort_bad_request(context, "order_id", "name the order by order_id or client_order_id")
        if client_order_id:
            remembered = self.router.routes.recall(caller.account, client_order_id)
            found = None if remembered is None else self.router.map.shard(remembered)
            if found is not None:
                return found, None
        return await self._probe(context, caller, order_id, client_order_id)

    async def _probe(
        self, context: grpc.aio.ServicerContext, caller: _Caller, order_id: int, client_order_id: str
    ) -> tuple[Shard, bytes]:
        """Ask every shard (read-only GetOrder) which holds the order."""
        shards = self.router.map.shards
        request = api.GetOrderRequest(order_id=order_id, client_order_id=client_order_id)
        data = request.SerializeToString()
        outcomes = await asyncio.gather(
            *(self._call(shard, "GetOrder", data, caller) for shard in shards), return_exceptions=True
        )
        found: list[tuple[Shard, bytes]] = []
        failed: list[_ShardFailed] = []
        for shard, outcome in zip(shards, outcomes, strict=True):
            if isinstance(outcome, bytes):
                found.append((shard, outcome))
            elif isinstance(outcome, _ShardFailed):
                if outcome.error.code() != grpc.StatusCode.NOT_FOUND:
                    failed.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
        named = f"order_id {order_id}" if order_id else f"client_order_id {client_order_id!r}"
        if len(found) > 1:
            names = ", ".join(str(shard.shard_id) for shard, _ in found)
            hint = "name it by client_order_id as well" if order_id else "name the order by order_id"
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"{named} names orders on shards {names}: {hint}"
            )
        if found:
            shard, reply = found[0]
            if client_order_id:
                self.router.routes.remember(caller.account, client_order_id, shard.shard_id)
            return shard, reply
        if failed:
            await _abort_failure(context, failed[0])  # it may be on the shard that did not answer
        await context.abort(grpc.StatusCode.NOT_FOUND, f"no order with {named}")
        raise AssertionError("abort raises")

    async def _by_order(
        self, method: str, cls: type[Any], data: bytes, context: grpc.aio.ServicerContext
    ) -> bytes:
        caller = await self._caller(context)
        single = self.router.single
        if single is not None:
            return await self._forward(context, single, method, data, caller)
        request = await _parse(context, cls, data)
        shard, probed = await self._order_shard(context, caller, request.order_id, request.client_order_id)
        if probed is not None and method == "GetOrder":
            return probed  # the probe was this very request
        return await self._forward(context, shard, method, data, caller)

    async def cancel_order(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._by_order("CancelOrder", api.CancelOrderRequest, data, context)

    async def replace_order(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._by_order("ReplaceOrder", api.ReplaceOrderRequest, data, context)

    async def get_order(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await self._by_order("GetOrder", api.GetOrderRequest, data, context)

    async def cancel_all(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        caller = await self._caller(context)
        single = self.router.single
        if single is not None:
            return await self._forward(context, single, "CancelAll", data, caller)
        request = await _parse(context, api.CancelAllRequest, data)
        if request.symbol:
            return await self._forward(
                context, self.router.shard_for_symbol(request.symbol), "CancelAll", data, caller
            )
        shards = self.router.map.shards
        outcomes = await asyncio.gather(
            *(self._call(shard, "CancelAll", data, caller) for shard in shards), return_exceptions=True
        )
        merged = api.CancelAllResponse(durable=True)
        failures: list[_ShardFailed] = []
        for outcome in outcomes:
            if isinstance(outcome, _ShardFailed):
                failures.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                part = api.CancelAllResponse.FromString(outcome)
                merged.canceled_order_ids.extend(part.canceled_order_ids)
                if part.sequence:
                    merged.sequence = part.sequence  # the last (highest id) shard that canceled
                    merged.durable = merged.durable and part.durable
        if failures:
            code, message, _ = _status_of(failures[0])
            await context.abort(
                code,
                f"{message}; the other shards canceled {len(merged.canceled_order_ids)} order(s): "
                "CancelAll again once it is back",
            )
        if not merged.sequence:
            merged.durable = False
        return merged.SerializeToString()

    async def get_stats(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        caller = await self._caller(context)
        single = self.router.single
        if single is None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"GetStats is per shard and the map has {len(self.router.map.shards)}: call each shard "
                "(GatewayService.GetShardMap lists them)",
            )
        assert single is not None
        return await self._forward(context, single, "GetStats", data, caller)

    # --- streams -----------------------------------------------------------------------------------
    async def stream_executions(self, data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        caller = await self._caller(context, stream=True)
        shard = self.router.single
        if shard is None:
            request = await _parse(context, api.StreamExecutionsRequest, data)
            if not request.symbol:
                await context.abort(
                    grpc.StatusCode.UNIMPLEMENTED,
                    "StreamExecutions across shards is not served by the gateway yet: name a symbol "
                    "(its shard's reports), or stream from each shard (GatewayService.GetShardMap)",
                )
            shard = self.router.shard_for_symbol(request.symbol)
        channel = self._channel(shard)
        call = channel.unary_stream("StreamExecutions")(
            data, metadata=caller.metadata, timeout=caller.timeout_s
        )
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as err:
            await _abort_failure(context, _ShardFailed(channel, err))
        finally:
            call.cancel()

    async def order_stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        caller = await self._caller(context, stream=True)
        shard = self.router.single
        if shard is None:
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED,
                f"OrderStream across {len(self.router.map.shards)} shards is not served by the gateway "
                "yet: open one stream per shard (GatewayService.GetShardMap), or use SubmitOrders",
            )
        assert shard is not None
        channel = self._channel(shard)
        call = channel.stream_stream("OrderStream")(
            requests, metadata=caller.metadata, timeout=caller.timeout_s
        )
        try:
            async for item in call:
                yield item
        except grpc.aio.AioRpcError as err:
            await _abort_failure(context, _ShardFailed(channel, err))
        finally:
            call.cancel()


def map_proto(shard_map: ShardMap) -> gw.ShardMap:
    return gw.ShardMap(
        epoch=shard_map.epoch,
        shards=[gw.Shard(shard_id=s.shard_id, address=s.address) for s in shard_map.shards],
        pins=[gw.SymbolPin(symbol=k, shard_id=v) for k, v in sorted(shard_map.pins.items())],
        hash_algorithm=HASH_ALGORITHM,
        order_id_shard_shift=ORDER_ID_SHARD_SHIFT,
    )


class GatewayServicer(gw_grpc.GatewayServiceServicer):
    """The shard map, for routing clients (accounts by API key, services by token)."""

    def __init__(self, app: GatewayApp) -> None:
        self.app = app

    async def _authorize(self, context: grpc.aio.ServicerContext) -> None:
        if security.principal_of(context, self.app.suite.secret) is not None:
            return
        key = security.api_key_of(context)
        try:
            account = await self.app.account_for_key(key) if key else None
        except Exception as exc:
            log.warning("API key check failed: %r", exc)
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "cannot check the API key now: reference data unavailable"
            )
        if account is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")

    async def GetShardMap(
        self, request: gw.GetShardMapRequest, context: grpc.aio.ServicerContext
    ) -> gw.GetShardMapResponse:
        await self._authorize(context)
        return gw.GetShardMapResponse(map=map_proto(self.app.shard_map))

    async def WatchShardMap(
        self, request: gw.WatchShardMapRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gw.ShardMap]:
        await self._authorize(context)
        if request.known_epoch < 0:
            await _abort_bad_request(
                context, "known_epoch", f"must be 0 (no map yet) or an epoch, not {request.known_epoch}"
            )
        known = request.known_epoch
        while True:
            current = await self.app.next_map(known)
            known = current.epoch
            yield map_proto(current)


@dataclass
class GatewayServer(RunningServer):
    """The running gRPC server and the gateway behind it, stopped together."""

    app: GatewayApp | None = None
    forwarder: ExecutionForwarder | None = None
    #: The balanced stateless services' forwarders, by full service name.
    stateless: dict[str, StatelessForwarder] = field(default_factory=dict)

    async def stop(self, grace_s: float) -> None:
        await super().stop(grace_s)
        if self.app is not None:
            await self.app.close()


async def start(config: GatewayConfig, suite: security.SuiteSecurity | None = None) -> GatewayServer:
    """Read the shard map, open the account check, and serve on config.address.

    Raises :class:`services.gateway.app.StartError` (saying why) when the shard map or the
    reference data cannot be read."""
    suite = suite or security.load_suite_security(PRINCIPAL)
    app = await build(config, suite)
    try:
        forwarder = ExecutionForwarder(app)
        servicer = GatewayServicer(app)
        handler = forwarder.generic_handler()
        stateless = {
            name: StatelessForwarder(pool, config.default_deadline_ms) for name, pool in app.pools.items()
        }
        bindings = [
            ServiceBinding(EXECUTION_SERVICE, lambda s: s.add_generic_rpc_handlers((handler,))),
            ServiceBinding(
                GATEWAY_SERVICE, lambda s: gw_grpc.add_GatewayServiceServicer_to_server(servicer, s)
            ),
        ]
        for name, balanced in stateless.items():
            bindings.append(ServiceBinding(name, _add_generic(balanced.generic_handler())))
        running = await create_server(
            config.address,
            bindings,
            tls=suite.server_tls,
            auth=security.ServiceAuthInterceptor(suite.secret, api_key_methods=True),
        )
    except BaseException:
        await app.close()
        raise
    return GatewayServer(
        server=running.server,
        port=running.port,
        health=running.health,
        service_names=running.service_names,
        app=app,
        forwarder=forwarder,
        stateless=stateless,
    )


def _add_generic(handler: grpc.GenericRpcHandler) -> Any:
    def add(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers((handler,))

    return add
