"""Replica sets of the stateless services behind the gateway, their channels and health watches.

Where a set comes from is a :class:`ReplicaSource`: an async iterator of *whole* sets, each one
replacing the previous (a replica missing from the next set is removed; its channel is closed
once the calls in flight on it had ``close_grace_s`` to finish). Two sources:
:class:`StaticReplicas` (``HFTGATE_GATEWAY_MARKETDATA_REPLICAS`` / ``_CACHE_REPLICAS``), and
:class:`ScalerReplicas` (with ``HFTGATE_GATEWAY_SCALER_ADDRESS``), which follows the scaler's
``WatchReplicas`` stream and turns its changes into whole sets: the static list, plus the scaler's
replicas (READY -> a replica, DRAINING -> a replica with ``draining=True``, STARTING, STOPPED and
FAILED -> absent), a static replica the scaler drains marked draining too.

Each replica's health comes from its own ``grpc.health.v1.Health/Watch`` on the service's name
(a push on every change, not a poll): SERVING makes it eligible, anything else (NOT_SERVING,
SERVICE_UNKNOWN, a broken watch) makes it ineligible until it says SERVING again. A broken watch
is re-opened with backoff (``health_retry_ms``, doubling up to 1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hftgate.loadreport import CHANNEL_OPTIONS as SCALER_CHANNEL_OPTIONS
from hftgate.loadreport import STARTUP_QUIET_S
from hftgate.security import ClientCredentials
from hftgate.telemetry import RateLimitedWarning
from hftgate.v1 import scaler_pb2, scaler_pb2_grpc
from services.gateway.balancer import Balancer, Endpoint
from services.gateway.upstream import UPSTREAM_OPTIONS

log = logging.getLogger(__name__)

#: A replica set holds at most this many replicas (more is a configuration error).
MAX_REPLICAS = 256


@dataclass(frozen=True, slots=True)
class ReplicaSpec:
    """One replica as a source names it: its address and whether it is draining."""

    address: str
    draining: bool = False


class ReplicaSource(Protocol):
    """Where a service's replica set comes from: whole sets, each replacing the last."""

    def sets(self) -> AsyncIterator[Sequence[ReplicaSpec]]:
        """Yield the current set first, then each new one; runs until cancelled."""
        ...


class StaticReplicas:
    """A fixed list of addresses (the configuration's): one set, never changed."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.specs = tuple(ReplicaSpec(a) for a in addresses)

    async def sets(self) -> AsyncIterator[Sequence[ReplicaSpec]]:
        yield self.specs
        await asyncio.Event().wait()  # a static set never changes


class ScalerReplicas:
    """The replica set of one service as the scaler's ``WatchReplicas`` says, over a static list.

    Yields the static list at once (the scaler may be down, or start after the gateway, as it
    does under ``hftgate up``), then a new set on every change the watch brings that alters it.
    A replica the scaler knows only from its reports and that has no address is skipped (the
    static list covers the replicas the supervisor started). A broken watch is re-opened with
    backoff (``retry_ms``, doubling up to ``max_retry_ms``), logged at most once a minute; the
    last set the scaler gave is kept meanwhile (every replica is health-watched, so a dead one
    takes no calls), and after ``forget_after_s`` without the scaler the set is the static list
    again. Each message replaces the scaler's part whole (``replicas`` is the set after the change),
    so a conflated watch (a fresh SNAPSHOT) needs nothing special.
    """

    def __init__(
        self,
        service: str,
        scaler_address: str,
        credentials: ClientCredentials,
        static: Sequence[str] = (),
        *,
        retry_ms: int = 200,
        max_retry_ms: int = 5_000,
        forget_after_s: float = 30.0,
    ) -> None:
        #: The scaler's name of the service ("marketdata", "cache").
        self.service = service
        self.scaler_address = scaler_address
        self.credentials = credentials
        self.static = tuple(static)
        self.retry_ms = retry_ms
        self.max_retry_ms = max_retry_ms
        self.forget_after_s = forget_after_s
        #: The scaler's usable replicas of the last message: address -> draining.
        self.from_scaler: dict[str, bool] = {}
        #: True while a watch is open and has sent its snapshot.
        self.connected = False
        self._warn = RateLimitedWarning(log, 60.0)

    def current(self) -> tuple[ReplicaSpec, ...]:
        """The static list, then the scaler's other replicas, each marked draining as the scaler says."""
        specs = [ReplicaSpec(a, self.from_scaler.get(a, False)) for a in self.static]
        static = set(self.static)
        specs.extend(ReplicaSpec(a, d) for a, d in sorted(self.from_scaler.items()) if a not in static)
        return tuple(specs[:MAX_REPLICAS])

    def apply(self, message: scaler_pb2.WatchReplicasResponse) -> None:
        """Take the scaler's set after one change (any change: SNAPSHOT, ADDED, STATE_CHANGED, REMOVED)."""
        usable: dict[str, bool] = {}
        for replica in message.replicas:
            if replica.service != self.service or not replica.address:
                continue
            if replica.state == scaler_pb2.REPLICA_STATE_READY:
                usable.setdefault(replica.address, False)
            elif replica.state == scaler_pb2.REPLICA_STATE_DRAINING:
                usable[replica.address] = True
        self.from_scaler = usable

    async def sets(self) -> AsyncIterator[Sequence[ReplicaSpec]]:
        last = self.current()
        yield last
        loop = asyncio.get_running_loop()
        lost_at = started = loop.time()
        ever_connected = False
        backoff_ms = self.retry_ms
        # Capped reconnect backoff: the scaler may start after the gateway (hftgate up starts it last).
        async with self.credentials.open_channel(self.scaler_address, SCALER_CHANNEL_OPTIONS) as channel:
            stub = scaler_pb2_grpc.ScalerServiceStub(channel)
            while True:
                try:
                    call = stub.WatchReplicas(
                        scaler_pb2.WatchReplicasRequest(service=self.service),
                        metadata=self.credentials.metadata,
                    )
                    async for message in call:
                        if not self.connected:
                            log.info("%s replicas follow the scaler at %s", self.service, self.scaler_address)
                            self.connected = ever_connected = True
                        backoff_ms = self.retry_ms
                        self.apply(message)
                        now = self.current()
                        if now != last:
                            last = now
                            yield now
                    self._warn.warning("the scaler ended the %s replica watch", self.service)
                except grpc.aio.AioRpcError as err:
                    # hftgate up starts the scaler last: no warning while it may still be coming up.
                    quiet = not ever_connected and loop.time() - started < STARTUP_QUIET_S
                    (log.debug if quiet else self._warn.warning)(
                        "cannot follow the %s replicas of the scaler at %s (%s: %s); retrying",
                        self.service,
                        self.scaler_address,
                        err.code().name,
                        err.details(),
                    )
                if self.connected:
                    self.connected = False
                    lost_at = loop.time()
                if self.from_scaler and loop.time() - lost_at >= self.forget_after_s:
                    log.warning(
                        "no scaler for %.0f s: %s replicas back to the static list",
                        self.forget_after_s,
                        self.service,
                    )
                    self.from_scaler = {}
                    now = self.current()
                    if now != last:
                        last = now
                        yield now
                await asyncio.sleep(backoff_ms / 1000)
                backoff_ms = min(backoff_ms * 2, self.max_retry_ms)


class Replica:
    """One replica's channel, its byte-level method callables and its balancer endpoint."""

    def __init__(self, service: str, endpoint: Endpoint, channel: grpc.aio.Channel) -> None:
        self.service = service
        self.endpoint = endpoint
        self.channel = channel
        self._callables: dict[tuple[str, str], Any] = {}
        self.health_task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return self.endpoint.address

    def method(self, shape: str, name: str) -> Any:
        """The callable of method ``name`` with no (de)serializers; ``shape`` is ``unary_unary``,
        ``unary_stream``, ``stream_unary`` or ``stream_stream``."""
        key = (shape, name)
        known = self._callables.get(key)
        if known is None:
            known = self._callables[key] = getattr(self.channel, shape)(f"/{self.service}/{name}", None, None)
        return known


class ReplicaPool:
    """The live replicas of one service (``hftgate.v1.MarketDataService``...), kept in step with
    its source, each health-watched; :meth:`pick` asks the balancer for one."""

    def __init__(
        self,
        service: str,
        label: str,
        source: ReplicaSource,
        credentials: ClientCredentials,
        balancer: Balancer,
        *,
        health_retry_ms: int = 100,
        close_grace_s: float = 30.0,
    ) -> None:
        self.service = service
        #: How statuses name the service ("marketdata").
        self.label = label
        self.source = source
        self.credentials = credentials
        self.balancer = balancer
        self.health_retry_ms = health_retry_ms
        self.close_grace_s = close_grace_s
        self._replicas: dict[str, Replica] = {}
        self._endpoints: list[Endpoint] = []
        self._follower: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._first_set = asyncio.Event()

    # --- the set -------------------------------------------------------------------------------
    async def start(self, first_set_timeout_s: float = 5.0) -> None:
        """Follow the source; returns once its first set is installed (or the timeout passed)."""
        self._follower = asyncio.get_running_loop().create_task(self._follow(), name=f"replicas-{self.label}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_set.wait(), first_set_timeout_s)

    async def _follow(self) -> None:
        async for specs in self.source.sets():
            try:
                self.install(specs)
            except ValueError as exc:
                log.error("%s replica set refused: %s", self.label, exc)
            self._first_set.set()

    def install(self, specs: Sequence[ReplicaSpec]) -> None:
        """Make the live set ``specs``: new replicas get a channel and a health watch, removed
        ones are closed after ``close_grace_s``, kept ones keep their statistics."""
        if len(specs) > MAX_REPLICAS:
            raise ValueError(f"{len(specs)} replicas exceed the limit of {MAX_REPLICAS}")
        wanted = {spec.address: spec for spec in specs}
        for address in [a for a in self._replicas if a not in wanted]:
            gone = self._replicas.pop(address)
            log.info("%s replica %s removed", self.label, address)
            self._retire(gone)
        for address, spec in wanted.items():
            known = self._replicas.get(address)
            if known is not None:
                known.endpoint.draining = spec.draining
                continue
            endpoint = Endpoint(address, draining=spec.draining)
            replica = Replica(
                self.service, endpoint, self.credentials.open_channel(address, UPSTREAM_OPTIONS)
            )
            replica.health_task = asyncio.get_running_loop().create_task(
                self._watch_health(replica), name=f"health-{self.label}-{address}"
            )
            self._replicas[address] = replica
            log.info("%s replica %s added%s", self.label, address, " (draining)" if spec.draining else "")
        self._endpoints = [r.endpoint for r in self._replicas.values()]

    def _retire(self, replica: Replica) -> None:
        if replica.health_task is not None:
            replica.health_task.cancel()

        async def close() -> None:
            await replica.channel.close(self.close_grace_s)

        task = asyncio.get_running_loop().create_task(close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @property
    def replicas(self) -> list[Replica]:
        return list(self._replicas.values())

    def replica(self, address: str) -> Replica | None:
        return self._replicas.get(address)

    # --- health --------------------------------------------------------------------------------
    async def _watch_health(self, replica: Replica) -> None:
        stub = health_pb2_grpc.HealthStub(replica.channel)
        backoff_ms = self.health_retry_ms
        serving = health_pb2.HealthCheckResponse.SERVING
        while True:
            try:
                call = stub.Watch(health_pb2.HealthCheckRequest(service=self.service))
                async for answer in call:
                    now_serving = answer.status == serving
                    if now_serving != replica.endpoint.serving:
                        log.info(
                            "%s replica %s is %s",
                            self.label,
                            replica.address,
                            health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status),
                        )
                    replica.endpoint.serving = now_serving
                    backoff_ms = self.health_retry_ms
                # The replica ended the watch (it is stopping): not serving.
                replica.endpoint.serving = False
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as err:
                if replica.endpoint.serving is not False:
                    log.info("%s replica %s health watch broke: %s", self.label, replica.address, err.code())
                replica.endpoint.serving = False
            await asyncio.sleep(backoff_ms / 1000)
            backoff_ms = min(backoff_ms * 2, 1_000)

    async def wait_serving(self, count: int, timeout_s: float = 5.0) -> bool:
        """Wait until ``count`` replicas are SERVING (tests and start-up logs)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while sum(1 for e in self._endpoints if e.serving) < count:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    # --- picking -------------------------------------------------------------------------------
    def pick(self, exclude: Replica | None = None) -> Replica | None:
        """The replica for a new call (None: no replica may take it)."""
        endpoint = self.balancer.pick(self._endpoints, None if exclude is None else exclude.endpoint)
        return None if endpoint is None else self._replicas.get(endpoint.address)

    def describe_unavailable(self) -> str:
        """Why no replica could be picked, for the status message."""
        if not self._replicas:
            return f"no {self.label} replica is configured"
        states = ", ".join(
            f"{r.address} "
            + (
                "draining"
                if r.endpoint.draining
                else "not serving"
                if r.endpoint.serving is False
                else "recently failed"
                if r.endpoint.serving
                else "not yet health-checked"
            )
            for r in self._replicas.values()
        )
        return f"no healthy {self.label} replica ({states})"

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        for replica in self._replicas.values():
            if replica.health_task is not None:
                replica.health_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await replica.health_task
            await replica.channel.close(None)
        self._replicas.clear()
        self._endpoints = []
        for task in list(self._closing):
            task.cancel()
