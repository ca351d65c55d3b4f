"""The market data service's access interceptor: publishers, readers and account API keys.

It runs after hftgate.security's :class:`~hftgate.security.ServiceAuthInterceptor` (which
refuses calls without a valid service token, or without an API key where one is allowed)
and decides what only this service knows (services.marketdata.access):

* PublishQuotes / PublishTrades: the token's principal must be a publisher, else
  PERMISSION_DENIED naming who may publish. Which venues it may publish is checked per tick
  by the engine (VENUE_NOT_ALLOWED).
* the read RPCs: any service token; an API key only when it resolves to an account through
  the cache service (UNAUTHENTICATED when it does not, or when the service has no cache to ask;
  UNAVAILABLE when the cache cannot be reached, so a client retries rather than gives up).

A refused call gets its status before its request is read.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping

import grpc

from hftgate.security import API_KEY_METADATA, SERVICE_TOKEN_METADATA, SuiteSecret, refusing_handler
from services.cache.errorlog import RateLimitedLog
from services.marketdata.access import ApiKeyVerifier, Publisher

log = logging.getLogger(__name__)

SERVICE_NAME = "hftgate.v1.MarketDataService"
PUBLISH_METHODS: frozenset[str] = frozenset(
    f"/{SERVICE_NAME}/{name}" for name in ("PublishQuotes", "PublishTrades")
)
READ_METHODS: frozenset[str] = frozenset(
    f"/{SERVICE_NAME}/{name}"
    for name in ("GetSnapshot", "Subscribe", "SubscribeBatched", "GetBars", "GetVwap", "StreamArbitrage")
)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]]


class MarketDataAccessInterceptor(grpc.aio.ServerInterceptor):
    """See the module docstring; ``api_keys`` None = API keys cannot be verified here."""

    def __init__(
        self, secret: SuiteSecret, publishers: Mapping[str, Publisher], api_keys: ApiKeyVerifier | None
    ) -> None:
        self._secret = secret
        self._publishers = publishers
        self._api_keys = api_keys
        self._errors = RateLimitedLog(log, 10_000)
        self.refused = 0

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        publish = method in PUBLISH_METHODS
        if not publish and method not in READ_METHODS:
            return await continuation(handler_call_details)
        token = api_key = None
        for name, value in handler_call_details.invocation_metadata or ():
            if name == SERVICE_TOKEN_METADATA:
                token = value
            elif name == API_KEY_METADATA:
                api_key = value
        principal = self._secret.verify_token(token) if isinstance(token, str) else None
        if publish:
            if principal is None:
                return await self._refuse(
                    continuation,
                    handler_call_details,
                    grpc.StatusCode.UNAUTHENTICATED,
                    f"{method} needs a publisher's service token",
                )
            if principal not in self._publishers:
                allowed = ", ".join(sorted(self._publishers)) or "none"
                return await self._refuse(
                    continuation,
                    handler_call_details,
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"principal {principal!r} may not publish market data (publishers: {allowed})",
                )
            return await continuation(handler_call_details)
        if principal is not None:
            return await continuation(handler_call_details)
        if token is not None or not isinstance(api_key, str):
            return await self._refuse(
                continuation,
                handler_call_details,
                grpc.StatusCode.UNAUTHENTICATED,
                f"{method} needs a service token or an API key (x-api-key)",
            )
        return await self._check_api_key(continuation, handler_call_details, api_key)

    async def _check_api_key(
        self, continuation: Continuation, details: grpc.HandlerCallDetails, api_key: str
    ) -> grpc.RpcMethodHandler:
        if self._api_keys is None:
            return await self._refuse(
                continuation,
                details,
                grpc.StatusCode.UNAUTHENTICATED,
                "this market data service cannot verify API keys (it has no cache service: "
                "HFTGATE_MARKETDATA_CACHE_ADDRESS); call with a service token",
            )
        try:
            account = await self._api_keys.account_of(api_key)
        except Exception as exc:  # any failure to ask is "cannot tell now", never "invalid key"
            self._errors.warning("cannot resolve an API key through the cache service: %s", exc)
            return await self._refuse(
                continuation,
                details,
                grpc.StatusCode.UNAVAILABLE,
                "cannot verify the API key now (the cache service is unreachable); retry",
            )
        if account is None:
            return await self._refuse(
                continuation, details, grpc.StatusCode.UNAUTHENTICATED, "the API key is not valid"
            )
        return await continuation(details)

    async def _refuse(
        self,
        continuation: Continuation,
        details: grpc.HandlerCallDetails,
        code: grpc.StatusCode,
        message: str,
    ) -> grpc.RpcMethodHandler:
        self.refused += 1
        return refusing_handler(await continuation(details), code, message)
