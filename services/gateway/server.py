"""gRPC wiring of the gateway: the public ExecutionService, forwarded to the shards, and the
GatewayService (the shard map for routing clients).

Execution calls are handled as bytes (generic handlers with no deserializers): the API key is
checked here once, then the call goes to its shard with the gateway's service token and the
account (``x-hftgate-account``, percent-encoded UTF-8). Only what routing needs is decoded: the
symbol of an order (not even that while one shard owns everything), the order ids of a cancel,
replace or get. A request that does not decode answers INVALID_ARGUMENT as on the shards.

Across several shards (the rules in routing.py, streams.py, fanout.py and stats.py):

* OrderStream: one upstream stream per shard, opened on the first input for it, each input routed
  as the unary calls are; the client gets its acks in its input order across the whole stream and
  each shard's reports in that shard's sequence order (fanout.py says what is held and when).
* StreamExecutions without a symbol: every shard's reports merged; report sequences are per shard,
  so resuming takes the per-shard cursor ``x-hftgate-after-sequences: 0=S0,1=S1`` (streams.py).
* GetStats: counters summed, latency percentiles the worst shard's (stats.py).

Per-account rate limit at the door (ratelimit.py): orders and replaces over the account's token
bucket answer RESOURCE_EXHAUSTED with a google.rpc.QuotaFailure and a google.rpc.RetryInfo whose
retry_delay is when the bucket will hold the call's orders; an OrderStream is paced instead. It is
checked here rather than in an interceptor because both what it costs (the orders in the request)
and whose bucket (the API key's account) are known only once the call is read for routing.

Tracing: with a tracer recording the call's SERVER span, each call to a shard gets a CLIENT span
(attributes ``hftgate.shard_id``, ``hftgate.symbol`` when one, ``rpc.method``) whose
``traceparent`` the shard continues; when nothing records, the client's own ``traceparent`` is
passed on unchanged and no span is made.

Statuses of the gateway itself (the shard's own statuses pass through unchanged, details too):

* UNAVAILABLE naming the shard ("execution shard 1 at host:port is unavailable: ...") when it
  cannot be reached; DEADLINE_EXCEEDED naming it when it did not answer within the deadline. The
  client's deadline is propagated to the shard (a call without one gets ``default_deadline_ms``).
  Nothing is retried: an order that may have reached a shard is never sent again.
* A SubmitOrders split across shards of which some failed answers the first failure's status with
  a ``hftgate.v1.SubmitOrdersResponse`` detail holding the acks of the orders that other shards
  answered (the failed ones' acks left empty, action UNSPECIFIED).
* A stream across shards that a shard ends answers that shard's status, the message naming it.
* FAILED_PRECONDITION when a client order id names orders on several shards (name it by order id).
"""

from __future__ import annotations

import asyncio
import logging
import math
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn

import grpc
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry import trace

from hftgate import security
from hftgate.client import not_owner_info
from hftgate.columns import column_problem, columns_at, merged_ack_columns
from hftgate.grpcserver import (
    STREAM_ADMITTED_METADATA,
    RunningServer,
    ServiceBinding,
    abort_invalid_argument,
    check_batch_size,
    create_server,
)
from hftgate.shardmap import HASH_ALGORITHM, ORDER_ID_SHARD_SHIFT, Shard, ShardMap
from hftgate.telemetry import ClientSpan, describe_malformed
from hftgate.v1 import cache_pb2, marketdata_pb2  # noqa: F401 (their descriptors, for reflection)
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import gateway_pb2 as gw
from hftgate.v1 import gateway_pb2_grpc as gw_grpc
from services.gateway.app import GatewayApp, build
from services.gateway.config import GatewayConfig
from services.gateway.fanout import (
    OrderStreamFanout,
    StreamEnded,
    Upstream,
    after_admission,
    merge_reports,
    order_cost,
    read_stream_message,
)
from services.gateway.routing import ACCOUNT_METADATA, PRINCIPAL, MergeError, merge
from services.gateway.stateless import StatelessForwarder
from services.gateway.stats import merge_stats
from services.gateway.streams import CURSOR_METADATA, MAX_CURSOR_SHARDS, CursorError, parse_cursor
from services.gateway.upstream import EXECUTION_SERVICE, ShardChannel, ShardFailed, named_status, status_of

log = logging.getLogger(__name__)

GATEWAY_SERVICE = "hftgate.v1.GatewayService"
_TRACE_METADATA = ("traceparent", "tracestate")


@dataclass(frozen=True, slots=True)
class _Caller:
    """An authenticated account's forwarding metadata, and the deadline left for the shard."""

    account: str
    #: The gateway's metadata for the shard, without the client's trace headers.
    base: tuple[tuple[str, str], ...]
    #: ``base`` and the client's trace headers: what goes to the shard when the gateway records
    #: no span of its own (the shard then continues the client's trace directly).
    metadata: tuple[tuple[str, str], ...]
    timeout_s: float | None


class _Status:
    """A grpc.Status for abort_with_status with trailing metadata besides the rich details."""

    def __init__(self, status: status_pb2.Status, trailing: tuple[tuple[str, str], ...] = ()) -> None:
        made = rpc_status.to_status(status)
        self.code = made.code
        self.details = made.details
        self.trailing_metadata = (*made.trailing_metadata, *trailing)


async def _abort_failure(context: grpc.aio.ServicerContext, failure: ShardFailed) -> NoReturn:
    code, message, trailing = status_of(failure)
    await context.abort(code, message, trailing_metadata=trailing)
    raise AssertionError("abort raises")


async def _abort_status(
    context: grpc.aio.ServicerContext, status: status_pb2.Status, trailing: tuple[tuple[str, str], ...] = ()
) -> NoReturn:
    await context.abort_with_status(_Status(status, trailing))  # type: ignore[attr-defined]
    raise AssertionError("abort raises")


async def _abort_bad_request(
    context: grpc.aio.ServicerContext, field_name: str, description: str
) -> NoReturn:
    await abort_invalid_argument(context, field_name, description)


def _ids(shards: Sequence[Shard]) -> str:
    return ", ".join(str(shard.shard_id) for shard in shards)


def _symbol_of(data: bytes) -> str:
    """The order's symbol of an encoded SubmitOrderRequest ("" when it does not decode)."""
    try:
        return str(api.SubmitOrderRequest.FromString(data).order.symbol)
    except DecodeError:
        return ""


async def _send_parts(
    parts: dict[Shard, list[int]], send: Callable[[Shard, list[int]], Awaitable[bytes]]
) -> tuple[list[tuple[list[int], bytes]], list[ShardFailed]]:
    """A split batch's parts sent in parallel: (each answered part's positions and reply bytes,
    the failures of the others); anything but a shard's failure is raised."""
    outcomes = await asyncio.gather(
        *(send(shard, indices) for shard, indices in parts.items()), return_exceptions=True
    )
    replies: list[tuple[list[int], bytes]] = []
    failures: list[ShardFailed] = []
    for indices, outcome in zip(parts.values(), outcomes, strict=True):
        if isinstance(outcome, ShardFailed):
            failures.append(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            replies.append((indices, outcome))
    return replies, failures


def _one_symbol(orders: Sequence[api.NewOrder]) -> str:
    """The symbol of every order in ``orders`` when they share one, else "" (a span attribute)."""
    first = orders[0].symbol if orders else ""
    return first if all(order.symbol == first for order in orders) else ""


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
        # This gateway's own tracer (the global provider's, looked up when a span is made).
        self._tracer = trace.get_tracer("hftgate.gateway")

    def generic_handler(self) -> grpc.GenericRpcHandler:
        unary = grpc.unary_unary_rpc_method_handler
        return grpc.method_handlers_generic_handler(
            EXECUTION_SERVICE,
            {
                "SubmitOrder": unary(self.submit_order),
                "SubmitOrders": unary(self.submit_orders),
                "SubmitOrderColumns": unary(self.submit_order_columns),
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
        base = [
            (security.SERVICE_TOKEN_METADATA, self._token),
            (ACCOUNT_METADATA, urllib.parse.quote(account.name, safe="")),
        ]
        if self.config.forward_api_key:
            base.append((security.API_KEY_METADATA, key))
        metadata = list(base)
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
        return _Caller(account.name, tuple(base), tuple(metadata), timeout)

    async def _admit(self, context: grpc.aio.ServicerContext, caller: _Caller, cost: int) -> None:
        """Take ``cost`` orders from the account's bucket, or answer RESOURCE_EXHAUSTED with a
        QuotaFailure and (when waiting can help) a RetryInfo of when the bucket will hold them."""
        buckets = self.app.rate_limits
        if buckets is None or cost <= 0:
            return
        wait_s = buckets.take(caller.account, cost)
        if not wait_s:
            return
        self.app.rate_limited_calls += 1
        rate, burst = buckets.orders_per_s, buckets.burst_orders
        if math.isinf(wait_s):
            message = (
                f"a batch of {cost} orders exceeds account {caller.account!r}'s burst of {burst} orders "
                f"at the gateway ({rate:g} orders/s): split it into batches of at most {burst}"
            )
        else:
            message = (
                f"account {caller.account!r} is over its gateway rate limit of {rate:g} orders/s "
                f"(burst {burst}): {cost} order(s) can be sent in {wait_s * 1000:.1f} ms"
            )
        status = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message=message)
        status.details.add().Pack(
            error_details_pb2.QuotaFailure(
                violations=[
                    error_details_pb2.QuotaFailure.Violation(
                        subject=f"account:{caller.account}",
                        description=f"at most {rate:g} orders/s, bursts of {burst}, per account "
                        "at the gateway",
                    )
                ]
            )
        )
        if not math.isinf(wait_s):
            retry = error_details_pb2.RetryInfo()
            retry.retry_delay.FromNanoseconds(max(1, math.ceil(wait_s * 1e9)))
            status.details.add().Pack(retry)
        await _abort_status(context, status)

    async def _pace(self, account: str, cost: int) -> None:
        """Wait until ``account`` may send ``cost`` orders on a stream (streams are paced, not refused)."""
        buckets = self.app.rate_limits
        if buckets is None:
            return
        while wait_s := buckets.take(account, cost, debt_ok=True):
            await asyncio.sleep(wait_s)

    def _recording(self, context: otel_context.Context | None = None) -> bool:
        """A span of the gateway's records now (else no CLIENT span is made: near-zero cost)."""
        return trace.get_current_span(context).is_recording()

    def _client_span(
        self,
        caller: _Caller,
        shard: Shard,
        method: str,
        symbol: str = "",
        context: otel_context.Context | None = None,
    ) -> ClientSpan:
        attributes: dict[str, Any] = {"hftgate.shard_id": shard.shard_id}
        if symbol:
            attributes["hftgate.symbol"] = symbol
        return ClientSpan(
            f"/{EXECUTION_SERVICE}/{method}",
            shard.address,
            caller.base,
            attributes,
            tracer=self._tracer,
            context=context,
        )

    def _channel(self, shard: Shard) -> ShardChannel:
        self.sent[shard.shard_id] = self.sent.get(shard.shard_id, 0) + 1
        return self.app.upstreams.get(shard)

    async def _call(self, shard: Shard, method: str, data: bytes, caller: _Caller, symbol: str = "") -> bytes:
        """One unary call to ``shard``, never retried; :class:`ShardFailed` on any failure."""
        channel = self._channel(shard)
        reply: bytes
        send = channel.unary(method)
        try:
            if self._recording():
                with self._client_span(caller, shard, method, symbol) as span:
                    reply = await send(data, metadata=span.metadata, timeout=caller.timeout_s)
            else:
                reply = await send(data, metadata=caller.metadata, timeout=caller.timeout_s)
        except grpc.aio.AioRpcError as err:
            raise ShardFailed(channel, err) from None
        return reply

    async def _forward(
        self,
        context: grpc.aio.ServicerContext,
        shard: Shard,
        method: str,
        data: bytes,
        caller: _Caller,
        symbol: str = "",
    ) -> bytes:
        try:
            return await self._call(shard, method, data, caller, symbol)
        except ShardFailed as failure:
            await _abort_failure(context, failure)

    def _open_upstream(
        self,
        caller: _Caller,
        traced: otel_context.Context | None,
        shard: Shard,
        method: str,
        request: bytes | AsyncIterator[bytes] | None,
    ) -> Upstream:
        """Open ``method`` (a stream) on ``shard``: a server stream of ``request`` bytes, else a
        bidirectional one fed by ``request`` (an iterator) or by ``call.write`` (None). With
        ``traced`` (the stream's context, when it records), inside a CLIENT span of its own that
        ends with the stream."""
        channel = self._channel(shard)
        span = None if traced is None else self._client_span(caller, shard, method, context=traced)
        metadata = caller.metadata if span is None else span.metadata
        if isinstance(request, bytes):
            call = channel.unary_stream(method)(request, metadata=metadata, timeout=caller.timeout_s)
        elif request is None:
            call = channel.stream_stream(method)(metadata=metadata, timeout=caller.timeout_s)
        else:
            call = channel.stream_stream(method)(request, metadata=metadata, timeout=caller.timeout_s)
        return Upstream(channel, call, span)

    # --- orders ------------------------------------------------------------------------------------
    async def submit_order(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        caller = await self._caller(context)
        await self._admit(context, caller, 1)
        shard = self.router.single
        symbol = ""
        if shard is None:
            request = await _parse(context, api.SubmitOrderRequest, data)
            symbol = request.order.symbol
            shard = self.router.shard_for_symbol(symbol)
            self.router.routes.remember(caller.account, request.order.client_order_id, shard.shard_id)
        elif self._recording():  # the span names the symbol (decoded only for it)
            symbol = _symbol_of(data)
        return await self._forward(context, shard, "SubmitOrder", data, caller, symbol)

    async def submit_orders(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        caller = await self._caller(context)
        single = self.router.single
        if single is not None:
            if self.app.rate_limits is not None:
                # An empty batch costs nothing: the shard answers it with INVALID_ARGUMENT.
                counted = await _parse(context, api.SubmitOrdersRequest, data)
                await self._admit(context, caller, len(counted.orders))
            return await self._forward(context, single, "SubmitOrders", data, caller)
        request = await _parse(context, api.SubmitOrdersRequest, data)
        orders = request.orders
        count = len(orders)
        await check_batch_size(context, count, self.config.max_batch_orders, "the gateway's ")
        await self._admit(context, caller, count)
        parts = self.router.split([order.symbol for order in orders])
        routes = self.router.routes
        for shard, indices in parts.items():
            for index in indices:
                routes.remember(caller.account, orders[index].client_order_id, shard.shard_id)
        if len(parts) == 1:
            (only,) = parts
            return await self._forward(context, only, "SubmitOrders", data, caller, _one_symbol(orders))

        async def send(shard: Shard, indices: list[int]) -> bytes:
            part = api.SubmitOrdersRequest()
            part.orders.extend(orders[i] for i in indices)
            symbol = _one_symbol(part.orders)
            return await self._call(shard, "SubmitOrders", part.SerializeToString(), caller, symbol)

        replies, failures = await _send_parts(parts, send)
        answered: list[tuple[Sequence[int], Sequence[api.OrderAck]]] = [
            (indices, api.SubmitOrdersResponse.FromString(reply).acks) for indices, reply in replies
        ]
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

    async def submit_order_columns(self, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """A batch whose symbols one shard owns goes there as it came; one that spans shards is
        split column by column (no message per order), the parts sent in parallel and their acks
        merged back in the batch's order, as SubmitOrders does with rows (a partial failure's
        detail is then the SubmitOrderColumnsResponse of what the other shards answered)."""
        caller = await self._caller(context)
        request = await _parse(context, api.SubmitOrderColumnsRequest, data)
        columns = request.orders
        count = len(columns.client_order_id)
        await check_batch_size(context, count, self.config.max_batch_orders, "the gateway's ")
        single = self.router.single
        if single is not None:
            await self._admit(context, caller, count)
            return await self._forward(context, single, "SubmitOrderColumns", data, caller)
        problem = column_problem(columns)
        if problem:
            await _abort_bad_request(context, "orders", f"Cannot submit orders: {problem}")
        names = list(columns.symbols)
        symbols = [names[i] for i in columns.symbol_index]
        await self._admit(context, caller, count)
        parts = self.router.split(symbols)
        routes = self.router.routes
        for shard, indices in parts.items():
            for index in indices:
                routes.remember(caller.account, columns.client_order_id[index], shard.shard_id)
        if len(parts) == 1:
            (only,) = parts
            one_symbol = names[0] if len(names) == 1 else ""
            return await self._forward(context, only, "SubmitOrderColumns", data, caller, one_symbol)

        async def send(shard: Shard, indices: list[int]) -> bytes:
            part = api.SubmitOrderColumnsRequest(orders=columns_at(columns, indices))
            part_symbols = {symbols[i] for i in indices}
            symbol = next(iter(part_symbols)) if len(part_symbols) == 1 else ""
            return await self._call(shard, "SubmitOrderColumns", part.SerializeToString(), caller, symbol)

        replies, failures = await _send_parts(parts, send)
        answered: list[tuple[list[int], api.AckColumns]] = []
        for indices, reply in replies:
            acks = api.SubmitOrderColumnsResponse.FromString(reply).acks
            if len(acks.order_id) != len(indices):
                await context.abort(
                    grpc.StatusCode.INTERNAL, "a shard's SubmitOrderColumns answer did not match its part"
                )
            answered.append((list(indices), acks))
        response = api.SubmitOrderColumnsResponse(acks=merged_ack_columns(count, answered))
        if not failures:
            return response.SerializeToString()
        await self._abort_partial(
            context, failures, response, count - sum(len(i) for i, _ in answered), count
        )

    async def _abort_partial(
        self,
        context: grpc.aio.ServicerContext,
        failures: list[ShardFailed],
        partial: api.SubmitOrdersResponse | api.SubmitOrderColumnsResponse,
        unanswered: int,
        count: int,
    ) -> NoReturn:
        code, message, _ = status_of(failures[0])
        others = "; ".join(status_of(f)[1] for f in failures[1:])
        text = (
            f"{message}{'; ' + others if others else ''}: {unanswered} of {count} orders got no answer "
            f"(their acks are empty in this status's {partial.DESCRIPTOR.name} detail; the other orders' "
            f"acks are there). Sending them again is safe: a shard answers an order it already has with "
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
            if shard is not None:
                return shard, None
            # The shard that took it is no longer in the map (retired after its symbols moved): a
            # resting order moved with its symbol under its own id, so the shards are asked.
        if not order_id and not client_order_id:
            await _abort_bad_request(context, "order_id", "name the order by order_id or client_order_id")
        if client_order_id:
            remembered = self.router.routes.recall(caller.account, client_order_id)
            found = None if remembered is None else self.router.map.shard(remembered)
            if found is not None:
                return found, None
        return await self._probe(context, caller, order_id, client_order_id)

    async def _locate(
        self, caller: _Caller, order_id: int, client_order_id: str
    ) -> tuple[list[tuple[Shard, bytes]], list[ShardFailed]]:
        """Every shard's read-only GetOrder of the order: the shards that have it (with their
        answer), and those that failed otherwise than NOT_FOUND."""
        shards = self.router.map.shards
        request = api.GetOrderRequest(order_id=order_id, client_order_id=client_order_id)
        data = request.SerializeToString()
        outcomes = await asyncio.gather(
            *(self._call(shard, "GetOrder", data, caller) for shard in shards), return_exceptions=True
        )
        found: list[tuple[Shard, bytes]] = []
        failed: list[ShardFailed] = []
        for shard, outcome in zip(shards, outcomes, strict=True):
            if isinstance(outcome, bytes):
                found.append((shard, outcome))
            elif isinstance(outcome, ShardFailed):
                if outcome.error.code() != grpc.StatusCode.NOT_FOUND:
                    failed.append(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
        return found, failed

    async def _probe(
        self, context: grpc.aio.ServicerContext, caller: _Caller, order_id: int, client_order_id: str
    ) -> tuple[Shard, bytes]:
        """Ask every shard (read-only GetOrder) which holds the order."""
        found, failed = await self._locate(caller, order_id, client_order_id)
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
        if method == "ReplaceOrder":
            await self._admit(context, caller, 1)
        single = self.router.single
        if single is not None:
            return await self._forward(context, single, method, data, caller)
        request = await _parse(context, cls, data)
        shard, probed = await self._order_shard(context, caller, request.order_id, request.client_order_id)
        if probed is not None and method == "GetOrder":
            return probed  # the probe was this very request
        try:
            return await self._call(shard, method, data, caller)
        except ShardFailed as failure:
            # The order's symbol moved to another shard since this one took it: the shard refused
            # before acting (NOT_SHARD_OWNER naming the owner), so sending it there once is safe.
            owner = self._moved_to(failure)
            if owner is None or owner.shard_id == shard.shard_id:
                await _abort_failure(context, failure)
            assert owner is not None
            return await self._forward(context, owner, method, data, caller)

    def _moved_to(self, failure: ShardFailed) -> Shard | None:
        """The shard a NOT_SHARD_OWNER refusal names, if the gateway's map has it (an address in
        a refusal is never called unless the map agrees)."""
        info = not_owner_info(failure.error)
        owner_id = info.metadata.get("owner_shard_id", "") if info is not None else ""
        return self.router.map.shard(int(owner_id)) if owner_id.isdigit() else None

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
        failures: list[ShardFailed] = []
        for outcome in outcomes:
            if isinstance(outcome, ShardFailed):
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
            code, message, _ = status_of(failures[0])
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
        if single is not None:
            return await self._forward(context, single, "GetStats", data, caller)
        await _parse(context, api.GetStatsRequest, data)
        shards = self.router.map.shards
        outcomes = await asyncio.gather(
            *(self._call(shard, "GetStats", data, caller) for shard in shards), return_exceptions=True
        )
        parts: list[api.GetStatsResponse] = []
        for outcome in outcomes:
            if isinstance(outcome, ShardFailed):  # partial figures would mislead: say which shard
                await _abort_status(context, named_status(outcome, " (GetStats needs every shard)"))
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                parts.append(api.GetStatsResponse.FromString(outcome))
        return merge_stats(parts).SerializeToString()

    # --- streams -----------------------------------------------------------------------------------
    async def _cursor(self, context: grpc.aio.ServicerContext) -> dict[int, int] | None:
        """The per-shard resume cursor the client sent (None: none sent)."""
        text = security.metadata_value(context, CURSOR_METADATA)
        if text is None:
            return None
        try:
            return parse_cursor(text)
        except CursorError as exc:
            await _abort_bad_request(
                context, CURSOR_METADATA, f"metadata {CURSOR_METADATA} must be SHARD_ID=SEQUENCE,...: {exc}"
            )

    async def _cursor_of(
        self, context: grpc.aio.ServicerContext, entries: Mapping[int, int]
    ) -> dict[int, int]:
        """``after_sequence_by_shard`` checked as the metadata cursor is."""
        problem = ""
        if len(entries) > MAX_CURSOR_SHARDS:
            problem = f"names {len(entries)} shards, at most {MAX_CURSOR_SHARDS}"
        elif any(shard_id < 0 or sequence < 0 for shard_id, sequence in entries.items()):
            problem = "shard ids and sequences must be >= 0"
        if problem:
            await _abort_bad_request(context, "after_sequence_by_shard", f"after_sequence_by_shard {problem}")
        return dict(entries)

    async def stream_executions(self, data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        """A symbol's (or the one shard's) stream passed through, resumed from the shard's entry of
        the per-shard cursor when one is sent; without a symbol across shards, every shard's merged."""
        caller = await self._caller(context, stream=True)
        cursor = await self._cursor(context)
        shard = self.router.single
        request = await _parse(context, api.StreamExecutionsRequest, data)
        if request.after_sequence_by_shard:
            if cursor is not None:
                await _abort_bad_request(
                    context,
                    "after_sequence_by_shard",
                    f"send the per-shard resume point once: after_sequence_by_shard or {CURSOR_METADATA}",
                )
            cursor = await self._cursor_of(context, request.after_sequence_by_shard)
        if shard is None:
            assert request is not None
            if not request.symbol:
                async for item in self._merged_executions(context, caller, request, cursor):
                    yield item
                return
            shard = self.router.shard_for_symbol(request.symbol)
        if cursor is not None and request is not None and shard.shard_id in cursor:
            request.after_sequence = cursor[shard.shard_id]  # one shard: its cursor is the resume point
            request.ClearField("after_sequence_by_shard")
            data = request.SerializeToString()
        traced = otel_context.get_current() if self._recording() else None
        upstream = self._open_upstream(caller, traced, shard, "StreamExecutions", data)
        error: BaseException | None = None
        try:
            async for item in upstream.call:
                yield item
        except grpc.aio.AioRpcError as err:
            error = err
            await _abort_failure(context, ShardFailed(upstream.channel, err))
        except BaseException:  # the client went away: the gateway cancels the shard's stream
            error = asyncio.CancelledError()
            raise
        finally:
            upstream.call.cancel()
            upstream.finish(error)

    async def _merged_executions(
        self,
        context: grpc.aio.ServicerContext,
        caller: _Caller,
        request: api.StreamExecutionsRequest,
        cursor: dict[int, int] | None,
    ) -> AsyncIterator[bytes]:
        """StreamExecutions of every shard (streams.py: the per-shard cursor)."""
        shards = self.router.map.shards
        if cursor is None:
            if request.after_sequence > 0 and not request.live_only:
                await _abort_bad_request(
                    context,
                    "after_sequence",
                    f"report sequences are per shard and the shard map has {len(shards)}: one "
                    f"after_sequence cannot say where you stopped on each. Resume with "
                    f"after_sequence_by_shard (or metadata {CURSOR_METADATA}: SHARD_ID=SEQUENCE,...; "
                    f"a report's shard is its order_id >> "
                    f"{ORDER_ID_SHARD_SHIFT}), or name a symbol",
                )
            cursor = {}
        sent = {s.shard_id: cursor[s.shard_id] for s in shards if s.shard_id in cursor}
        traced = otel_context.get_current() if self._recording() else None
        upstreams: list[Upstream] = []
        for shard in shards:
            part = api.StreamExecutionsRequest(
                after_sequence=cursor.get(shard.shard_id, 0), live_only=request.live_only
            )
            upstreams.append(
                self._open_upstream(caller, traced, shard, "StreamExecutions", part.SerializeToString())
            )
        try:
            async for item in merge_reports(
                upstreams, sent, self.config.stream_merge_buffer_reports, lambda: self._shards_changed(shards)
            ):
                yield item
        except StreamEnded as ended:
            await _abort_status(context, ended.status, ended.trailing)

    async def _shards_changed(self, shards: Sequence[Shard]) -> str:
        """Returns once the routed map's shards differ from ``shards``, saying how."""
        epoch = self.router.map.epoch
        while True:
            current = await self.app.next_map(epoch)
            epoch = current.epoch
            if tuple(current.shards) != tuple(shards):
                now, were = _ids(current.shards), _ids(shards)
                return f"the shard map changed (epoch {epoch}: shards {now}, were {were})"

    async def order_stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        """One shard: the shard's stream, passed through. Several: fanned out (fanout.py); the
        client sees its acks in its input order across the whole stream, and each shard's reports
        in that shard's sequence order, never before that shard's earlier acks; reports of
        different shards interleave as they arrive."""
        caller = await self._caller(context, stream=True)
        traced = otel_context.get_current() if self._recording() else None
        shard = self.router.single
        if shard is not None:
            refused: list[StreamEnded] = []
            checked = self._checked(requests, caller.account, refused)
            opened: asyncio.Future[Upstream] = asyncio.get_running_loop().create_future()
            upstream = self._open_upstream(
                caller, traced, shard, "OrderStream", after_admission(opened, checked)
            )
            opened.set_result(upstream)
            error: BaseException | None = None
            try:
                # The shard's admission passed on (the gateway's own came with _caller): a client
                # that waits for it then never writes into a stream the shard refused.
                if await upstream.admitted():
                    await context.send_initial_metadata(((STREAM_ADMITTED_METADATA, "1"),))
                async for item in upstream.call:
                    yield item
            except grpc.aio.AioRpcError as err:
                error = err
                if not refused:
                    await _abort_failure(context, ShardFailed(upstream.channel, err))
            except BaseException:  # the client went away: the gateway cancels the shard's stream
                error = asyncio.CancelledError()
                raise
            finally:
                upstream.call.cancel()
                upstream.finish(error)
            if refused:  # after the shard's answers to the messages before it
                await _abort_status(context, refused[0].status, refused[0].trailing)
            return

        # Admitted by the gateway; each shard's admission is awaited before the first write to it.
        await context.send_initial_metadata(((STREAM_ADMITTED_METADATA, "1"),))

        async def route(one: api.OrderInput) -> Shard:
            return await self._route_input(caller, one)

        async def pace(cost: int) -> None:
            await self._pace(caller.account, cost)

        config = self.config
        fanout = OrderStreamFanout(
            lambda target, method, request: self._open_upstream(caller, traced, target, method, request),
            route,
            pace if self.app.rate_limits is not None else None,
            max_pending_inputs=config.order_stream_max_pending_inputs,
            max_message_inputs=config.max_stream_message_inputs,
            max_queued_messages=config.stream_max_queued_messages,
            page_items=config.stream_page_items,
        )
        try:
            async for item in fanout.run(requests):
                yield item
        except StreamEnded as ended:
            await _abort_status(context, ended.status, ended.trailing)

    async def _checked(
        self, requests: AsyncIterator[bytes], account: str, refused: list[StreamEnded]
    ) -> AsyncIterator[bytes]:
        """``requests`` unchanged, each message checked as the shard checks it and let through once
        the account's bucket has its orders. At the first that fails, the stream to the shard is
        half-closed and why is put in ``refused``: the gateway answers it, not the shard (whose
        abort, racing the gateway's next write, reached the client as INTERNAL: grpc issue
        #36066)."""
        max_inputs = self.config.max_stream_message_inputs
        async for data in requests:
            try:
                message = read_stream_message(data, max_inputs)
            except StreamEnded as problem:
                refused.append(problem)
                return
            if self.app.rate_limits is not None:
                await self._pace(account, order_cost(message))
            yield data

    async def _route_input(self, caller: _Caller, one: api.OrderInput) -> Shard:
        """The shard an OrderStream input goes to, as the unary calls route (module docstring of
        routing.py); what names no shard goes to the lowest id, which rejects it as any shard would.
        Raises ShardFailed / StreamEnded when asking the shards for a client order id failed."""
        router = self.router
        which = one.WhichOneof("input")
        if which == "new_order":
            order = one.new_order
            shard = router.shard_for_symbol(order.symbol)
            router.routes.remember(caller.account, order.client_order_id, shard.shard_id)
            return shard
        first = router.map.shards[0]
        if which is None:
            return first
        target = one.cancel if which == "cancel" else one.replace
        if target.order_id > 0 and self.config.order_id_shard_bits:
            by_bits = router.shard_for_order_id(target.order_id)
            if by_bits is not None:
                return by_bits
            # Its shard retired: asked below, as the unary calls do (_order_shard).
        if not target.client_order_id and target.order_id <= 0:
            return first
        if target.client_order_id:
            remembered = router.routes.recall(caller.account, target.client_order_id)
            known = None if remembered is None else router.map.shard(remembered)
            if known is not None:
                return known
        found, failed = await self._locate(caller, max(0, target.order_id), target.client_order_id)
        if len(found) > 1:
            names = ", ".join(str(shard.shard_id) for shard, _ in found)
            raise StreamEnded(
                status_pb2.Status(
                    code=code_pb2.FAILED_PRECONDITION,
                    message=f"a {which} input names orders on shards {names}: name the order by order_id",
                )
            )
        if found:
            if target.client_order_id:
                router.routes.remember(caller.account, target.client_order_id, found[0][0].shard_id)
            return found[0][0]
        if failed:
            raise failed[0]  # the order may be on the shard that did not answer
        return first


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
            name: StatelessForwarder(pool, config.default_deadline_ms, app.suite.secret)
            for name, pool in app.pools.items()
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
