"""The public MarketDataService and CacheService at the gateway: each call forwarded, as bytes, to
one replica picked by the balancer (services/gateway/balancer.py).

* The caller's own credentials travel with the call (``x-api-key`` or its service token, and the
  trace headers; nothing else): the replica authenticates and authorizes it exactly as if it had
  been called directly (per-account stream limits, cache namespaces). The gateway never lends its
  own identity to a caller here.
* The client's deadline is propagated (a unary call without one gets ``default_deadline_ms``).
* An idempotent read (GetSnapshot, GetBars, GetVwap; cache Get, GetMany) that fails with
  UNAVAILABLE, UNKNOWN, INTERNAL or ABORTED is retried once on another replica, within the same
  deadline. Nothing else is ever retried: a write might have been applied.
* A server stream (Subscribe, SubscribeBatched, StreamArbitrage, WatchInvalidations) stays on
  the replica it started on; when that replica fails, the stream ends with its status and the client
  re-subscribes (to another replica, through the gateway).
* Publishing (PublishQuotes, PublishTrades) goes to the one replica when there is one; with
  several, a publisher must feed every replica itself, so the gateway refuses it
  (FAILED_PRECONDITION): a tick sent to one replica of several would be missing from the others.
  A publisher is a service: a call without a valid service token is refused UNAUTHENTICATED at the
  gateway, as the replica would refuse it, before any stream to the replica is opened. (Were the
  replica to refuse it while the caller's messages still flowed, grpcio's asyncio client could
  report the gateway's next write's failure, INTERNAL, instead of the replica's status: grpc issue
  #36066.)
* No replica to take a call: UNAVAILABLE saying why ("no healthy marketdata replica (...)").
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from hftgate import security
from services.gateway.replicas import Replica, ReplicaPool

log = logging.getLogger(__name__)

MARKETDATA_SERVICE = "hftgate.v1.MarketDataService"
CACHE_SERVICE = "hftgate.v1.CacheService"

#: Unary reads retried once on another replica, per service.
IDEMPOTENT_READS: dict[str, frozenset[str]] = {
    MARKETDATA_SERVICE: frozenset({"GetSnapshot", "GetBars", "GetVwap"}),
    CACHE_SERVICE: frozenset({"Get", "GetMany"}),
}
#: Methods by call shape, per service.
UNARY: dict[str, tuple[str, ...]] = {
    MARKETDATA_SERVICE: ("GetSnapshot", "GetBars", "GetVwap"),
    CACHE_SERVICE: ("Get", "GetMany", "Set", "SetMany", "Delete", "InvalidatePattern", "Stats"),
}
SERVER_STREAMS: dict[str, tuple[str, ...]] = {
    MARKETDATA_SERVICE: ("Subscribe", "SubscribeBatched", "StreamArbitrage"),
    CACHE_SERVICE: ("WatchInvalidations",),
}
CLIENT_STREAMS: dict[str, tuple[str, ...]] = {
    MARKETDATA_SERVICE: ("PublishQuotes", "PublishTrades"),
    CACHE_SERVICE: (),
}
#: Statuses after which a read is worth one more try elsewhere (the replica failed, not the call).
RETRYABLE: frozenset[grpc.StatusCode] = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.ABORTED,
    }
)
#: The caller's metadata that is forwarded (its credentials and trace context), nothing else.
FORWARDED_METADATA: frozenset[str] = frozenset(
    {security.API_KEY_METADATA, security.SERVICE_TOKEN_METADATA, "traceparent", "tracestate"}
)
_STATUS_DETAILS = "grpc-status-details-bin"


def _forwarded(context: grpc.aio.ServicerContext) -> tuple[tuple[str, Any], ...]:
    return tuple(
        (name, value) for name, value in (context.invocation_metadata() or ()) if name in FORWARDED_METADATA
    )


def _details_of(err: grpc.aio.AioRpcError) -> tuple[tuple[str, Any], ...]:
    return tuple(
        (item[0], item[1])  # type: ignore[index]
        for item in (err.trailing_metadata() or ())
        if item[0] == _STATUS_DETAILS  # type: ignore[index]
    )


class StatelessForwarder:
    """One stateless service's public API at the gateway, over a :class:`ReplicaPool`."""

    def __init__(self, pool: ReplicaPool, default_deadline_ms: int, secret: security.SuiteSecret) -> None:
        self.pool = pool
        self.secret = secret  # the suite's: publishers' tokens are checked here too
        self.service = pool.service
        self.reads = IDEMPOTENT_READS[self.service]
        self._default_timeout_s = default_deadline_ms / 1000
        #: Unary reads sent a second time after a replica failed (tests and stats).
        self.retries = 0

    def generic_handler(self) -> grpc.GenericRpcHandler:
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for name in UNARY[self.service]:
            handlers[name] = grpc.unary_unary_rpc_method_handler(self._unary(name))
        for name in SERVER_STREAMS[self.service]:
            handlers[name] = grpc.unary_stream_rpc_method_handler(self._server_stream(name))
        for name in CLIENT_STREAMS[self.service]:
            handlers[name] = grpc.stream_unary_rpc_method_handler(self._client_stream(name))
        return grpc.method_handlers_generic_handler(self.service, handlers)

    # --- helpers -------------------------------------------------------------------------------
    def _name(self, replica: Replica) -> str:
        return f"{self.pool.label} replica {replica.address}"

    async def _abort_unavailable(self, context: grpc.aio.ServicerContext) -> NoReturn:
        await context.abort(grpc.StatusCode.UNAVAILABLE, self.pool.describe_unavailable())
        raise AssertionError("abort raises")

    async def _abort_failed(
        self, context: grpc.aio.ServicerContext, replica: Replica, err: grpc.aio.AioRpcError
    ) -> NoReturn:
        code = err.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            await context.abort(code, f"{self._name(replica)} did not answer within the deadline")
        if code == grpc.StatusCode.UNAVAILABLE:
            await context.abort(code, f"{self._name(replica)} is unavailable: {err.details()}")
        # The replica's own status passes through, with its rich details.
        await context.abort(
            code,
            err.details() or f"{self._name(replica)} answered {code.name}",
            trailing_metadata=_details_of(err),
        )
        raise AssertionError("abort raises")

    def _timeout(self, context: grpc.aio.ServicerContext, stream: bool) -> float | None:
        remaining = context.time_remaining()
        if remaining is None:
            return None if stream else self._default_timeout_s
        return max(remaining, 0.0)

    # --- unary ---------------------------------------------------------------------------------
    def _unary(self, method: str) -> Any:
        retry = method in self.reads
        pool = self.pool
        balancer = pool.balancer

        async def forward(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = _forwarded(context)
            replica = pool.pick()
            if replica is None:
                await self._abort_unavailable(context)
            tried: Replica | None = None
            while True:
                assert replica is not None
                endpoint = replica.endpoint
                started = balancer.started(endpoint)
                try:
                    reply: bytes = await replica.method("unary_unary", method)(
                        data, metadata=metadata, timeout=self._timeout(context, False)
                    )
                except grpc.aio.AioRpcError as err:
                    code = err.code()
                    balancer.finished(
                        endpoint, started, transport_failure=code == grpc.StatusCode.UNAVAILABLE
                    )
                    if retry and tried is None and code in RETRYABLE:
                        other = pool.pick(exclude=replica)
                        if other is not None and (context.time_remaining() or 1.0) > 0:
                            log.debug(
                                "%s %s failed (%s): retrying on %s", self._name(replica), method, code, other
                            )
                            self.retries += 1
                            tried, replica = replica, other
                            continue
                    await self._abort_failed(context, replica, err)
                balancer.finished(endpoint, started)
                return reply

        return forward

    # --- streams -------------------------------------------------------------------------------
    def _server_stream(self, method: str) -> Any:
        pool = self.pool

        async def forward(data: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            replica = pool.pick()
            if replica is None:
                await self._abort_unavailable(context)
            assert replica is not None
            replica.endpoint.calls += 1
            call = replica.method("unary_stream", method)(
                data, metadata=_forwarded(context), timeout=self._timeout(context, True)
            )
            try:
                async for item in call:
                    yield item
            except grpc.aio.AioRpcError as err:
                await self._abort_failed(context, replica, err)
            finally:
                call.cancel()

        return forward

    def _client_stream(self, method: str) -> Any:
        pool = self.pool

        async def forward(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
            if security.principal_of(context, self.secret) is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, f"/{self.service}/{method} needs a service token"
                )
            replicas = pool.replicas
            if len(replicas) > 1:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"{method} through the gateway needs a single {pool.label} replica and there are "
                    f"{len(replicas)}: publish to every replica directly, "
                    "or each would miss the others' ticks",
                )
            replica = pool.pick()
            if replica is None:
                await self._abort_unavailable(context)
            assert replica is not None
            replica.endpoint.calls += 1
            try:
                reply: bytes = await replica.method("stream_unary", method)(
                    requests, metadata=_forwarded(context), timeout=self._timeout(context, True)
                )
            except grpc.aio.AioRpcError as err:
                await self._abort_failed(context, replica, err)
            return reply

        return forward
