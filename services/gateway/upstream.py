"""Channels from the gateway to the execution shards, carrying requests and responses as bytes.

One channel per shard address, opened with the gateway's service credentials (its token, and TLS
from the suite when configured); the method callables have no (de)serializers, so a forwarded
call is never decoded or re-encoded here. Retries are off on every channel: an order submission
is never sent twice by the gateway (a failure goes back to the client with the shard named).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import status_pb2

from hftgate.grpcserver import CHANNEL_OPTIONS
from hftgate.security import ClientCredentials
from hftgate.shardmap import Shard

log = logging.getLogger(__name__)

EXECUTION_SERVICE = "hftgate.v1.ExecutionService"

UPSTREAM_OPTIONS: list[tuple[str, Any]] = [
    *CHANNEL_OPTIONS,
    # Never retried by gRPC either (a SubmitOrder that reached the shard must not run twice).
    ("grpc.enable_retries", 0),
    # A shard that went away is found quickly, and reconnected to soon after it is back.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]


class ShardChannel:
    """One shard's channel and its byte-level method callables (made once per method)."""

    def __init__(self, shard: Shard, channel: grpc.aio.Channel) -> None:
        self.shard = shard
        self.channel = channel
        self._unary: dict[str, Any] = {}
        self._unary_stream: dict[str, Any] = {}
        self._stream_stream: dict[str, Any] = {}

    @property
    def name(self) -> str:
        """How a status message names the shard."""
        return f"execution shard {self.shard.shard_id} at {self.shard.address}"

    def unary(self, method: str) -> Any:
        known = self._unary.get(method)
        if known is None:
            known = self._unary[method] = self.channel.unary_unary(
                f"/{EXECUTION_SERVICE}/{method}", None, None
            )
        return known

    def unary_stream(self, method: str) -> Any:
        known = self._unary_stream.get(method)
        if known is None:
            known = self._unary_stream[method] = self.channel.unary_stream(
                f"/{EXECUTION_SERVICE}/{method}", None, None
            )
        return known

    def stream_stream(self, method: str) -> Any:
        known = self._stream_stream.get(method)
        if known is None:
            known = self._stream_stream[method] = self.channel.stream_stream(
                f"/{EXECUTION_SERVICE}/{method}", None, None
            )
        return known


class ShardFailed(Exception):
    """A call to a shard failed: the channel it went on, and gRPC's error."""

    def __init__(self, channel: ShardChannel, error: grpc.aio.AioRpcError) -> None:
        super().__init__(channel.name)
        self.channel = channel
        self.error = error


STATUS_DETAILS = "grpc-status-details-bin"


def status_of(failure: ShardFailed) -> tuple[grpc.StatusCode, str, tuple[tuple[str, Any], ...]]:
    """The status to answer for a shard's failure: transport failures name the shard; the shard's
    own statuses pass through with their rich details (trailing ``grpc-status-details-bin``)."""
    err, name = failure.error, failure.channel.name
    code = err.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return code, f"{name} did not answer within the deadline", ()
    trailing: tuple[tuple[str, Any], ...] = tuple(
        (item[0], item[1])  # type: ignore[index]
        for item in (err.trailing_metadata() or ())
        if item[0] == STATUS_DETAILS  # type: ignore[index]
    )
    if code == grpc.StatusCode.UNAVAILABLE and not trailing:
        return code, f"{name} is unavailable: {err.details()}", ()
    # (An UNAVAILABLE with details is the shard's own answer, e.g. a moving symbol's RetryInfo.)
    return code, err.details() or f"{name} answered {code.name}", trailing


def named_status(failure: ShardFailed, suffix: str = "") -> status_pb2.Status:
    """A shard's failure as a google.rpc.Status whose message names the shard (for a stream that
    merges several shards, where the shard's own message would not say which one failed), with the
    shard's rich details kept, then ``suffix``."""
    code, message, trailing = status_of(failure)
    name = failure.channel.name
    if not message.startswith(name):
        message = f"{name}: {message}"
    status = status_pb2.Status(code=code.value[0], message=message + suffix)
    for _, value in trailing:
        try:
            details: Sequence[any_pb2.Any] = status_pb2.Status.FromString(value).details
        except Exception:  # not a google.rpc.Status: keep the message alone
            continue
        status.details.extend(details)
    return status


class UpstreamPool:
    """The channels to every shard of the maps seen, by address (a shard that changes address gets
    a new channel; the old one is closed with the pool, so calls in flight on it finish)."""

    def __init__(self, credentials: ClientCredentials) -> None:
        self.credentials = credentials
        self._by_address: dict[str, ShardChannel] = {}

    def get(self, shard: Shard) -> ShardChannel:
        known = self._by_address.get(shard.address)
        if known is not None and known.shard == shard:
            return known
        if known is not None:  # the address now names another shard id: same channel, new name
            updated = ShardChannel(shard, known.channel)
            self._by_address[shard.address] = updated
            return updated
        channel = self.credentials.open_channel(shard.address, UPSTREAM_OPTIONS)
        made = self._by_address[shard.address] = ShardChannel(shard, channel)
        return made

    async def close(self) -> None:
        for shard_channel in self._by_address.values():
            await shard_channel.channel.close(None)
        self._by_address.clear()
