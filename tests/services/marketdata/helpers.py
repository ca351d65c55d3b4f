"""Test clients of the market data service that carry credentials on every call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.security import API_KEY_METADATA, SERVICE_TOKEN_METADATA, load_suite_secret


def token_metadata(principal: str) -> tuple[tuple[str, str], ...]:
    """The service-token metadata of ``principal`` under the test session's suite secret."""
    return ((SERVICE_TOKEN_METADATA, load_suite_secret().token_for(principal)),)


def api_key_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    return ((API_KEY_METADATA, api_key),)


class _AddMetadata:
    """Adds fixed metadata to every call of a channel, as a credentialed client does."""

    def __init__(self, metadata: Sequence[tuple[str, str]]) -> None:
        self._metadata = tuple(metadata)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(tuple(details.metadata or ()) + self._metadata))
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio sorts a channel's interceptors by the first interceptor class each is an instance
# of, so each call shape needs an object of its own.
class _UnaryUnary(_AddMetadata, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_AddMetadata, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_AddMetadata, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


class _StreamStream(_AddMetadata, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._details(details), request_iterator)


def channel(target: str, metadata: Sequence[tuple[str, str]] = (), options=()) -> grpc.aio.Channel:
    """A plaintext channel to ``target`` sending ``metadata`` on every call."""
    interceptors: list[Any] | None = None
    if metadata:
        interceptors = [kind(metadata) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
    return grpc.aio.insecure_channel(target, options=[*CHANNEL_OPTIONS, *options], interceptors=interceptors)
