"""The floors under every remote figure, measured in the same run as the figure itself.

- TCP floor: a raw ping-pong between this process and a child process over loopback TCP
  (TCP_NODELAY, 64-byte messages): what any request/response must pay on this machine.
- gRPC echo floor: an empty unary call (no protobuf, zero-length bytes each way) from a
  ``grpc.aio`` client in this process to a do-nothing server in a child process built
  with ``hftgate.grpcserver.create_server``, the same stack and options every service
  uses. A service's own latency minus this is what the service adds.
- gRPC durable-echo floor (``"grpc-journal"``): the same empty call, but the handler first
  appends one ``DURABLE_ECHO_RECORD_BYTES`` record to the execution service's own
  :class:`~services.execution.journal.Journal` (C writer thread, group commit, fdatasync)
  and answers once it is durable. What any durable acknowledgement costs on this stack:
  transport, the hand-off to the writer and back, and one fsync. An order path's latency
  minus this is its own logic (decode, risk, match, bookkeeping, acks).

- gRPC proxy floor (``"grpc-proxy"``): a do-nothing forwarder in a child process on the same stack
  (``create_server``, its interceptors), every unary call passed on as bytes, with its metadata, to
  one upstream over one ``grpc.aio`` channel and the answer passed back. What one Python hop costs
  before any logic of its own: a gateway's added latency minus this floor's is what the gateway's
  own work (key check, routing, limits) adds.

The gRPC floors run behind the same authentication interceptor as the services
(:class:`hftgate.security.ServiceAuthInterceptor`, API keys allowed) unless started with
``auth=False``, and :class:`GrpcEcho` sends an API key on every call (``FLOOR_METADATA``), so a
service's figure minus the floor does not count authentication as the service's own work; the
difference between the two echo floors is what the interceptor costs a call.

The servers are fresh interpreters (``python -m hftgate.bench.floors ...``), never forks:
gRPC does not survive a fork (grpc issue #16001).

Use the one-call helpers (:func:`tcp_floor_p50_ms`, :func:`grpc_echo_p50_ms`), or start a
server with :func:`floor_server`, keep a :class:`TcpPingPong` / :class:`GrpcEcho` open on
it, and interleave short blocks of its round trips with your own measurements, so that
floor and figure see the same noise on a shared machine.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np

ECHO_SERVICE = "hftgate.bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Call"
TCP_MESSAGE_BYTES = 64
WARMUP_ROUND_TRIPS = 200


def submit_order_payload_bytes() -> int:
    """The journal payload of one SubmitOrder (services/execution/records.py): batch header, one
    command, one meta row, a 12-character client order id."""
    from hftgate.matching.types import COMMAND_DTYPE
    from services.execution.records import META_DTYPE

    return struct.calcsize("<QqqII") + COMMAND_DTYPE.itemsize + META_DTYPE.itemsize + 12


DURABLE_ECHO_RECORD_BYTES = submit_order_payload_bytes()  # one SubmitOrder's journal record

FloorKind = Literal["tcp", "grpc", "grpc-journal", "grpc-proxy"]

#: What :class:`GrpcEcho` sends with every call: an API key, as an account's client does.
FLOOR_METADATA: tuple[tuple[str, str], ...] = (("x-api-key", "hftgate-bench-floor-key"),)


@contextmanager
def floor_server(
    kind: FloorKind,
    journal_dir: str | os.PathLike[str] | None = None,
    *,
    placed: bool = False,
    auth: bool = True,
    upstream: str | None = None,
) -> Iterator[str]:
    """Start a TCP echo (``"tcp"``), gRPC do-nothing (``"grpc"``), gRPC durable-echo
    (``"grpc-journal"``, journal in ``journal_dir``) or gRPC proxy (``"grpc-proxy"`` to the
    ``upstream`` address) server process; yield ``host:port``.

    ``placed``: a gRPC floor runs with the execution service's CPU placement (hftgate.placement,
    ``auto``, and its fsync polling), for figures from a service that runs so; the cache service
    does not, so its benchmark compares with an unplaced floor. ``auth``: a gRPC floor puts the
    services' authentication interceptor in front of its handler (see the module docstring)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    arguments = [f"serve-{kind}"]
    if kind == "grpc-journal":
        if journal_dir is None:
            raise ValueError("the grpc-journal floor needs a journal_dir")
        arguments.append(os.fspath(journal_dir))
    if kind == "grpc-proxy":
        if not upstream:
            raise ValueError("the grpc-proxy floor needs an upstream address")
        arguments.append(upstream)
    if placed and kind != "tcp":
        arguments.append("--placed")
    if not auth and kind != "tcp":
        arguments.append("--no-auth")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hftgate.bench.floors", *arguments],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("PORT "):
            raise RuntimeError(f"{kind} floor server did not start (said {line!r})")
        yield f"127.0.0.1:{int(line.split()[1])}"
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # the server exits when its stdin closes
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class TcpPingPong:
    """A connection to a TCP echo server: ``round_trips_ns(n)`` times ``n`` ping-pongs on it."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._sock = socket.create_connection((host, int(port)))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._message = b"p" * TCP_MESSAGE_BYTES

    def round_trips_ns(self, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        sock, message = self._sock, self._message
        for i in range(count):
            start = time.perf_counter_ns()
            sock.sendall(message)
            received = 0
            while received < TCP_MESSAGE_BYTES:
                chunk = sock.recv(TCP_MESSAGE_BYTES - received)
                if not chunk:
                    raise ConnectionError("TCP echo server closed the connection")
                received += len(chunk)
            out[i] = time.perf_counter_ns() - start
        return out

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> TcpPingPong:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class GrpcEcho:
    """A channel to the do-nothing gRPC server: ``await round_trips_ns(n)`` times ``n`` empty calls,
    each carrying ``metadata`` (an API key by default, see ``FLOOR_METADATA``)."""

    def __init__(self, target: str, metadata: tuple[tuple[str, str], ...] = FLOOR_METADATA) -> None:
        import grpc

        self._channel = grpc.aio.insecure_channel(target)
        self._metadata = metadata
        # Raw bytes both ways: no (de)serializers, nothing but the transport.
        self._call = self._channel.unary_unary(ECHO_METHOD, None, None)

    async def round_trips_ns(self, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        call, metadata = self._call, self._metadata
        for i in range(count):
            start = time.perf_counter_ns()
            await call(b"", metadata=metadata)
            out[i] = time.perf_counter_ns() - start
        return out

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> GrpcEcho:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def tcp_round_trips_ns(target: str, samples: int, *, warmup: int = WARMUP_ROUND_TRIPS) -> np.ndarray:
    """``samples`` ping-pong round trips to a TCP echo server at ``target``, in ns each."""
    with TcpPingPong(target) as pingpong:
        pingpong.round_trips_ns(warmup)
        return pingpong.round_trips_ns(samples)


async def grpc_echo_round_trips_ns(
    target: str, samples: int, *, warmup: int = WARMUP_ROUND_TRIPS
) -> np.ndarray:
    """``samples`` sequential empty unary calls to the do-nothing server at ``target``, in ns each."""
    async with GrpcEcho(target) as echo:
        await echo.round_trips_ns(warmup)
        return await echo.round_trips_ns(samples)


def tcp_floor_p50_ms(samples: int = 2000) -> float:
    """Median raw TCP round trip between two processes on loopback, in ms."""
    with floor_server("tcp") as target:
        return float(np.median(tcp_round_trips_ns(target, samples))) / 1e6


def grpc_echo_p50_ms(samples: int = 2000) -> float:
    """Median empty unary gRPC call to a do-nothing server on the services' stack, in ms."""
    with floor_server("grpc") as target:
        trips = asyncio.run(grpc_echo_round_trips_ns(target, samples))
    return float(np.median(trips)) / 1e6


# --- the server processes --------------------------------------------------------------
def _serve_tcp() -> None:
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    print(f"PORT {listener.getsockname()[1]}", flush=True)

    def echo(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept_forever() -> None:
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_forever, daemon=True).start()
    sys.stdin.read()  # until the parent closes our stdin


async def _serve_grpc(journal_dir: str | None = None, *, placed: bool = False, auth: bool = True) -> None:
    import secrets

    import grpc

    from hftgate.grpcserver import ServiceBinding, create_server
    from hftgate.security import ServiceAuthInterceptor, SuiteSecret

    journal = None
    poll_ns = 0
    scratch: tempfile.TemporaryDirectory[str] | None = None
    if journal_dir is None and placed:
        # A journal that never gets a record, for its writer thread's CPU keeper, which SubmitOrder
        # wakes on every call (journal_keep_cpu_us). On a 2-vCPU VM that keeper keeps the helper CPU
        # out of idle for the caller's process too; a floor without it paid ~100 us of CPU wake-up
        # a call that SubmitOrder does not (session 19), which flattered unary_overhead_ms by as much.
        scratch = tempfile.TemporaryDirectory(prefix="hftgate-floor-keeper-")
        journal_dir = scratch.name
    if journal_dir is None:

        async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return b""

    else:
        from services.execution.journal import Journal

        journal = opened = Journal.open(journal_dir)
        journal.start()
        durable = scratch is None  # (else the keeper's journal only)
        record = bytes(DURABLE_ECHO_RECORD_BYTES)

        async def call(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            # As SubmitOrder does (a no-op without a keeper); the writer woken ahead only where a
            # record follows (the plain echo's would spin for one that never comes).
            opened.keep_writer_cpu_awake(record_coming=durable)
            if durable:
                future = opened.append(record)
                if poll_ns:  # as the execution service's SubmitOrder does (journal_ack_poll_us)
                    opened.poll_durable(opened.next_seq - 1, poll_ns)
                await future
            return b""

    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    running = await create_server(
        "127.0.0.1:0",
        [ServiceBinding(ECHO_SERVICE, lambda server: server.add_generic_rpc_handlers((handler,)))],
        # As the execution service: API keys admitted by the interceptor (a secret of its own: an
        # API-key call is checked by the servicer, and this one has no accounts to check).
        auth=ServiceAuthInterceptor(SuiteSecret(secrets.token_bytes(32), "floor"), api_key_methods=True)
        if auth
        else None,
    )
    # With ``placed``, the execution service's CPU placement (hftgate.placement, "auto") and fsync
    # polling: the floor is measured on the stack and settings that service runs with.
    from hftgate import placement

    chosen = placement.Placement(None, None)
    if placed:
        chosen = placement.plan(
            placement.AUTO, placement.AUTO, placement.allowed_cpus(), cpu_quota=placement.cpu_quota_limited()
        )
    place_writer = journal.place_writer if journal is not None else lambda cpus: None
    placement.apply(chosen, asyncio.get_running_loop(), place_writer)
    if chosen.writer_apart and journal is not None:
        from services.execution.config import ExecutionConfig

        poll_ns, _ = journal.speed_up_apart_writer(
            True, ExecutionConfig.journal_ack_poll_us, ExecutionConfig.journal_keep_cpu_us
        )
    print(f"PORT {running.port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await running.stop(0)
    if journal is not None:
        await journal.close()
    if scratch is not None:
        scratch.cleanup()


async def _serve_grpc_proxy(upstream: str, *, auth: bool = True) -> None:
    import secrets

    import grpc

    from hftgate.grpcserver import CHANNEL_OPTIONS, ServiceBinding, create_server
    from hftgate.security import ServiceAuthInterceptor, SuiteSecret

    channel = grpc.aio.insecure_channel(upstream, options=CHANNEL_OPTIONS)
    callables: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}

    class Forward(grpc.GenericRpcHandler):
        def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
            method: str = details.method
            send = callables.get(method)
            if send is None:
                send = callables[method] = channel.unary_unary(method, None, None)

            async def forward(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                reply: bytes = await send(request, metadata=context.invocation_metadata())
                return reply

            return grpc.unary_unary_rpc_method_handler(forward)

    forward = Forward()
    binding = ServiceBinding(
        "hftgate.v1.ExecutionService", lambda server: server.add_generic_rpc_handlers((forward,))
    )
    running = await create_server(
        "127.0.0.1:0",
        [binding],
        auth=ServiceAuthInterceptor(SuiteSecret(secrets.token_bytes(32), "floor"), api_key_methods=True)
        if auth
        else None,
    )
    print(f"PORT {running.port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await running.stop(0)
    await channel.close(None)


def main(argv: list[str]) -> None:
    placed = "--placed" in argv
    auth = "--no-auth" not in argv
    argv = [a for a in argv if a not in ("--placed", "--no-auth")]
    if argv == ["serve-tcp"]:
        _serve_tcp()
    elif argv == ["serve-grpc"]:
        asyncio.run(_serve_grpc(placed=placed, auth=auth))
    elif len(argv) == 2 and argv[0] == "serve-grpc-journal":
        asyncio.run(_serve_grpc(argv[1], placed=placed, auth=auth))
    elif len(argv) == 2 and argv[0] == "serve-grpc-proxy":
        asyncio.run(_serve_grpc_proxy(argv[1], auth=auth))
    else:
        raise SystemExit(
            "usage: python -m hftgate.bench.floors serve-tcp|serve-grpc|serve-grpc-journal DIR"
            "|serve-grpc-proxy HOST:PORT [--placed] [--no-auth]"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
