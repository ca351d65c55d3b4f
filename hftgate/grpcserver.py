"""What every hftgate gRPC server shares: health, reflection, TLS, graceful stop.

A service's ``server.py`` builds its servicers and calls :func:`create_server`;
tests call the same function with port 0 and talk to the real server.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import _async as health_aio  # public as health.aio; mypy only sees this name
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status

from hftgate.native.process import die_with_parent
from hftgate.security import ServerTls
from hftgate.telemetry import RequestDecodingInterceptor, ServerTelemetryInterceptor

log = logging.getLogger(__name__)

# Large batches (thousands of orders, deep books) exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
#: Initial metadata a service sends on a bidirectional stream once it has admitted it (the caller
#: authenticated, a stream slot taken): until then its refusal may still come. A client that waits
#: for it before its first write never writes into a stream the service has already refused, and
#: so never meets grpcio's asyncio client reporting such a write's failure (INTERNAL "Internal
#: error from Core") in place of the service's status (grpc issue #36066). See execution.proto.
STREAM_ADMITTED_METADATA = "x-hftgate-stream-admitted"

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Let idle clients keep connections warm: a new connection costs a handshake.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    # Probe idle connections: a client that vanished without a reset (a partition, a dead host)
    # would otherwise hold its streams, and their per-caller slots, until TCP gives up (hours).
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.so_reuseport", 0),
]


# What every hftgate client channel sets, for the same reason as the server.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


@dataclass(frozen=True)
class ServiceBinding:
    """One gRPC service to host: its full name (``hftgate.v1.CacheService``) and how to add it."""

    full_name: str
    add_to_server: Callable[[grpc.aio.Server], None]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for server-side TLS; no client certificates are required."""

    cert_path: Path
    key_path: Path

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials([(self.key_path.read_bytes(), self.cert_path.read_bytes())])


@dataclass
class RunningServer:
    """A started server, the port it bound and its health servicer."""

    server: grpc.aio.Server
    port: int
    health: health_aio.HealthServicer
    service_names: tuple[str, ...]

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING or NOT_SERVING for the server and each of its services (a balancer
        stops sending calls to a replica that cannot take them)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *self.service_names):
            await self.health.set(name, status)

    async def stop(self, grace_s: float) -> None:
        """Report NOT_SERVING first so balancers drain us, then stop within ``grace_s``."""
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(grace_s)


async def create_server(
    address: str,
    bindings: Sequence[ServiceBinding],
    *,
    tls: TlsFiles | ServerTls | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    telemetry: bool = True,
    auth: grpc.aio.ServerInterceptor | None = None,
) -> RunningServer:
    """Create, bind and start an asyncio gRPC server hosting ``bindings``.

    ``address`` is ``host:port``; port 0 binds a free port (returned). Health
    (``grpc.health.v1``) and server reflection are always registered; ``telemetry``
    puts the span-and-metrics interceptor (hftgate.telemetry) in front of ``interceptors``;
    ``auth`` (hftgate.security.ServiceAuthInterceptor) goes before everything, so a call
    without credentials is refused before any other work.

    Every method's requests are decoded by that first interceptor (or, with ``telemetry``
    off, by :class:`~hftgate.telemetry.RequestDecodingInterceptor`), not by gRPC: bytes that
    are not a valid request answer INVALID_ARGUMENT "request is not a valid <message>: ..."
    on every RPC, unary or streaming, health and reflection included. Servicers therefore
    read request streams by iterating them, not with ``context.read()``.
    """
    first: grpc.aio.ServerInterceptor = (
        ServerTelemetryInterceptor() if telemetry else RequestDecodingInterceptor()
    )
    chain = [first, *interceptors]
    if auth is not None:
        chain.insert(0, auth)
    server = grpc.aio.server(interceptors=chain, options=SERVER_OPTIONS)
    _generic_handlers_only(server)
    for binding in bindings:
        binding.add_to_server(server)
    health_servicer = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(b.full_name for b in bindings)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, tls.credentials())
    if port == 0:
        raise OSError(f"cannot bind gRPC server to {address}")
    await server.start()
    running = RunningServer(server=server, port=port, health=health_servicer, service_names=names)
    for name in ("", *names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return running


def _generic_handlers_only(server: grpc.aio.Server) -> None:
    """Make ``server`` ignore "registered" method handlers. The generated
    ``add_<Service>Servicer_to_server`` functions (and health's and reflection's) add each service
    twice: as a generic handler and as registered methods, the same handlers either way. With
    registered methods grpc.aio (1.85) does per-call work that grows with their number, on every
    call, registered method or not: measured on the 2-vCPU VM, an empty call cost ~12-15 us more
    once the execution service's and shard admin's methods were registered besides, and nothing
    more without them (3 runs each); py-spy showed ``asyncio.wait`` over many awaitables on each
    call. The generic handlers serve every method alone."""

    def ignore(service: str, method_handlers: Any) -> None:
        return None

    server.add_registered_method_handlers = ignore  # type: ignore[attr-defined]


def freeze_startup_objects() -> int:
    """Move every object alive now out of the garbage collector's reach; returns how many.

    Called once a service has started (imports done, state recovered). Those objects live
    as long as the process, yet each full collection walked all of them: measured in the
    execution service under 1,000 orders/s, one full collection paused the event loop
    41.7 ms (every order arriving meanwhile waited); after the freeze it took 0.75 ms.
    Objects created later are collected as usual.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def _stop_with_supervisor() -> None:
    """A service ``hftgate up`` started (in a session of its own, out of reach of the terminal's
    Ctrl-C) gets SIGTERM, and drains, if that supervisor dies without stopping it. Only when the
    supervisor is this process's parent: a replica the scaler started inherits the variable."""
    supervisor = os.environ.get("HFTGATE_SUPERVISOR_PID", "")
    if supervisor.isdigit() and int(supervisor) == os.getppid():
        die_with_parent(int(supervisor), signal.SIGTERM)


async def serve_until_signalled(running: RunningServer, grace_s: float) -> None:
    """Block until SIGTERM or SIGINT, then stop gracefully (health first).

    First freezes the objects of start-up out of the garbage collector's way
    (:func:`freeze_startup_objects`).
    """
    log.info("%d start-up objects frozen out of garbage collection", freeze_startup_objects())
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _stop_with_supervisor()
    await stop.wait()
    log.info("signal received: draining for up to %.1f s", grace_s)
    await running.stop(grace_s)


async def check_batch_size(
    context: grpc.aio.ServicerContext, count: int, limit: int, whose: str = ""
) -> None:
    """INVALID_ARGUMENT (field ``orders``) for a batch of no order or of more than ``limit``
    (``whose``: whose setting the limit is, for the message, e.g. "the gateway's ")."""
    if count == 0:
        await abort_invalid_argument(context, "orders", "Cannot submit orders: the batch is empty")
    if count > limit:
        await abort_invalid_argument(
            context, "orders", f"Cannot submit orders: {count} orders exceed {whose}max_batch_orders={limit}"
        )


async def abort_invalid_argument(
    context: grpc.aio.ServicerContext, field: str, description: str, *, message: str | None = None
) -> NoReturn:
    """End the call with INVALID_ARGUMENT and a google.rpc.BadRequest naming ``field``, so a client
    can fix it; ``message`` is the status text (default: ``description``)."""
    detail = error_details_pb2.BadRequest(
        field_violations=[error_details_pb2.BadRequest.FieldViolation(field=field, description=description)]
    )
    status = status_pb2.Status(
        code=code_pb2.INVALID_ARGUMENT, message=description if message is None else message
    )
    status.details.add().Pack(detail)
    # grpc-stubs lacks abort_with_status on the aio context; grpcio has it.
    await context.abort_with_status(rpc_status.to_status(status))  # type: ignore[attr-defined]
    raise AssertionError("abort raises")
