"""Fuzzing every RPC of a running service: generated messages and mutated raw bytes.

What it checks, per call: the answer is OK or a precise status (never UNKNOWN or INTERNAL, and
no Python internals such as a traceback or ``<class ...>`` in the message); a unary call answers
before its deadline (a deadline on a unary call is a hang); and after the run the service still
answers health and a normal request, with its resident memory grown by less than a bound.

Messages come from hypothesis strategies built from the protobuf descriptors, so every field of
every request type is exercised with edge values (int64 extremes, 2^61, huge and empty strings,
unknown enum numbers, NaN and infinities); a failing example shrinks to a small one. Raw bytes
come from a mutation loop over serialized generated messages (flips, truncations, insertions,
overlong varints) plus pure noise.

``make test`` runs a few seconds per service (tests/test_fuzz.py); ``hftgate fuzz --minutes N``
runs long against a suite it starts itself.
"""

from __future__ import annotations

import itertools
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

#: Texts that must never reach a client: they mean an exception escaped into a status message.
INTERNALS_MARKERS: tuple[str, ...] = (
    "Traceback",
    "<class '",
    'File "',
    "debug_error_string",
    "Exception calling application",
    "Unexpected <class",
)
#: Codes that say the service did not know what went wrong.
BAD_CODES = frozenset({grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})

_INT32_EDGES = (0, 1, -1, 2**31 - 1, -(2**31))
_INT64_EDGES = (0, 1, -1, 2**63 - 1, -(2**63), 2**61, -(2**61), 2**62, 10**18)
_UINT32_EDGES = (0, 1, 2**32 - 1)
_UINT64_EDGES = (0, 1, 2**63, 2**64 - 1)
_STRINGS = (
    "",
    "BTCUSDT",
    "ETHUSDT",
    "ESZ4",
    "hftgate",
    "binance-spot",
    "execution",  # (a service's name: the scaler's reports and policies name one)
    "*",
    "?",
    "[",
    "acct:bob:x",
    "apikey:" + "0" * 64,
    "instrument:BTCUSDT",
    "\x00",
    "é" * 8,
    "a" * 600,
    "x" * 70_000,
)

_T = FieldDescriptor


def _scalar(fd: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = fd.type
    if t in (_T.TYPE_INT32, _T.TYPE_SINT32, _T.TYPE_SFIXED32):
        return st.one_of(st.sampled_from(_INT32_EDGES), st.integers(-(2**31), 2**31 - 1))
    if t in (_T.TYPE_INT64, _T.TYPE_SINT64, _T.TYPE_SFIXED64):
        return st.one_of(st.sampled_from(_INT64_EDGES), st.integers(-(2**63), 2**63 - 1))
    if t in (_T.TYPE_UINT32, _T.TYPE_FIXED32):
        return st.one_of(st.sampled_from(_UINT32_EDGES), st.integers(0, 2**32 - 1))
    if t in (_T.TYPE_UINT64, _T.TYPE_FIXED64):
        return st.one_of(st.sampled_from(_UINT64_EDGES), st.integers(0, 2**64 - 1))
    if t == _T.TYPE_DOUBLE:
        return st.floats(allow_nan=True, allow_infinity=True)
    if t == _T.TYPE_FLOAT:
        return st.floats(allow_nan=True, allow_infinity=True, width=32)
    if t == _T.TYPE_BOOL:
        return st.booleans()
    if t == _T.TYPE_STRING:
        return st.one_of(st.sampled_from(_STRINGS), st.text(max_size=24))
    if t == _T.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"\xff" * 4096))
    if t == _T.TYPE_ENUM:
        assert fd.enum_type is not None
        numbers = [v.number for v in fd.enum_type.values]
        return st.one_of(st.sampled_from(numbers), st.integers(-3, 1_000))
    raise TypeError(f"unsupported field type {t}")


def message_strategy(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    """Messages of type ``desc``: any subset of fields set, each to edge or random values."""
    cls = message_factory.GetMessageClass(desc)
    fields: dict[str, st.SearchStrategy[Any]] = {}
    for fd in desc.fields:
        if fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry or depth >= 3:
                continue
            inner: st.SearchStrategy[Any] = st.deferred(
                lambda fd=fd: message_strategy(fd.message_type, depth + 1)  # type: ignore[misc]
            )
        else:
            inner = _scalar(fd)
        if fd.is_repeated:
            fields[fd.name] = st.lists(inner, max_size=6)
        else:
            fields[fd.name] = inner

    def build(values: dict[str, Any]) -> Any:
        message = cls()
        for name, value in values.items():
            fd = desc.fields_by_name[name]
            target = getattr(message, name) if fd.is_repeated or fd.message_type else None
            if fd.is_repeated:
                if fd.message_type is not None:
                    for item in value:
                        target.add().CopyFrom(item)  # type: ignore[union-attr]
                else:
                    target.extend(value)  # type: ignore[union-attr]
            elif fd.message_type is not None:
                target.CopyFrom(value)  # type: ignore[union-attr]
            else:
                setattr(message, name, value)
        return message

    return st.fixed_dictionaries({}, optional=fields).map(build)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One random damage to ``data``: what a broken or hostile client sends."""
    choice = rng.randrange(7)
    buf = bytearray(data)
    if choice == 0 or not buf:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
    if choice == 1:
        for _ in range(rng.randrange(1, 5)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if choice == 2:
        return bytes(buf[: rng.randrange(len(buf))])
    if choice == 3:
        at = rng.randrange(len(buf) + 1)
        return bytes(buf[:at] + bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 16))) + buf[at:])
    if choice == 4:  # an overlong varint / length that claims far more than follows
        return bytes(buf[:1]) + b"\xff" * rng.randrange(2, 12) + bytes(buf[1:])
    if choice == 5:  # a field tag with an invalid wire type
        return bytes([(rng.randrange(1, 16) << 3) | rng.choice((6, 7))]) + bytes(buf)
    return bytes(buf) * rng.randrange(2, 4)


@dataclass(frozen=True)
class Finding:
    """One call whose outcome broke the contract."""

    method: str
    kind: str  # "status", "internals", "hang", "dead", "memory"
    detail: str
    request_hex: str = ""


@dataclass
class FuzzReport:
    calls: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    findings: list[Finding] = field(default_factory=list)

    def merge(self, other: FuzzReport) -> None:
        self.calls += other.calls
        self.codes.update(other.codes)
        self.findings.extend(other.findings)

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "codes": dict(self.codes),
            "findings": [f.__dict__ for f in self.findings[:50]],
            "finding_count": len(self.findings),
        }


MetadataFor = Callable[[str], Sequence[tuple[str, str]]]


class ServiceFuzzer:
    """Sends generated and mutated requests to every RPC of one service at ``address``."""

    def __init__(
        self,
        address: str,
        service_full_name: str,
        metadata_for: MetadataFor,
        *,
        deadline_s: float = 3.0,
        stream_read_s: float = 0.3,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.address = address
        _import_api()
        pool = descriptor_pool.Default()
        self.service = pool.FindServiceByName(service_full_name)
        self.metadata_for = metadata_for
        self.deadline_s = deadline_s
        self.stream_read_s = stream_read_s
        self._channel = channel or grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        self.report = FuzzReport()

    def close(self) -> None:
        self._channel.close()

    @property
    def methods(self) -> list[MethodDescriptor]:
        return list(self.service.methods)

    def path(self, method: MethodDescriptor) -> str:
        return f"/{self.service.full_name}/{method.name}"

    # --- one call --------------------------------------------------------------------------
    def call(self, method: MethodDescriptor, payloads: Sequence[bytes]) -> None:
        """Send ``payloads`` (one for a unary request) as raw bytes and judge the outcome."""
        path = self.path(method)
        metadata = tuple(self.metadata_for(method.name))
        client_stream, server_stream = method.client_streaming, method.server_streaming
        timeout = self.stream_read_s if server_stream else self.deadline_s
        self.report.calls += 1
        try:
            if not client_stream and not server_stream:
                self._channel.unary_unary(path, None, None)(payloads[0], timeout=timeout, metadata=metadata)
            elif not client_stream:
                _drain(
                    self._channel.unary_stream(path, None, None)(
                        payloads[0], timeout=timeout, metadata=metadata
                    )
                )
            elif not server_stream:
                self._channel.stream_unary(path, None, None)(
                    iter(payloads), timeout=timeout, metadata=metadata
                )
            else:
                _drain(
                    self._channel.stream_stream(path, None, None)(
                        iter(payloads), timeout=timeout, metadata=metadata
                    )
                )
            self.report.codes["OK"] += 1
        except grpc.RpcError as error:
            self._judge(method, payloads, error)

    def _judge(self, method: MethodDescriptor, payloads: Sequence[bytes], error: grpc.RpcError) -> None:
        code = error.code()  # type: ignore[attr-defined]
        details = error.details() or ""  # type: ignore[attr-defined]
        self.report.codes[code.name] += 1
        sample = b"".join(payloads)[:256].hex()
        where = f"{self.service.name}.{method.name}"  # (a gateway serves several services)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            if not method.server_streaming and not method.client_streaming:
                self.report.findings.append(Finding(where, "hang", details[:300], sample))
            return
        if code in BAD_CODES:
            self.report.findings.append(Finding(where, "status", f"{code.name}: {details[:300]}", sample))
        elif any(marker in details for marker in INTERNALS_MARKERS):
            self.report.findings.append(Finding(where, "internals", f"{code.name}: {details[:300]}", sample))

    # --- campaigns --------------------------------------------------------------------------
    def generated(self, method: MethodDescriptor, examples: int, seed: int = 0) -> None:
        """``examples`` hypothesis-generated requests (lists of 0-3 for client streams)."""
        request = message_strategy(method.input_type)
        payload = (
            st.lists(request, min_size=0, max_size=3)
            if method.client_streaming
            else request.map(lambda m: [m])
        )

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(payload)
        def run(messages: list[Any]) -> None:
            self.call(method, [m.SerializeToString() for m in messages])

        run()

    def mutated(self, method: MethodDescriptor, count: int, seed: int = 0) -> None:
        """``count`` requests of damaged bytes, seeded from serialized generated messages."""
        rng = random.Random(seed ^ hash(method.full_name) & 0xFFFF)
        examples = _examples(message_strategy(method.input_type), 8, seed)
        for _ in range(count):
            base = rng.choice(examples).SerializeToString() if examples else b""
            data = mutate(base, rng)
            self.call(method, [data, mutate(base, rng)] if method.client_streaming else [data])

    def run(self, examples_per_method: int, mutations_per_method: int, seed: int = 0) -> FuzzReport:
        for method in self.methods:
            self.generated(method, examples_per_method, seed)
            self.mutated(method, mutations_per_method, seed)
        return self.report


def _examples(strategy: st.SearchStrategy[Any], count: int, seed: int) -> list[Any]:
    found: list[Any] = []

    @settings(max_examples=count, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(message: Any) -> None:
        found.append(message)

    collect()
    return found


def _import_api() -> None:
    """Register every hftgate.v1 message and service with the default descriptor pool."""
    import importlib
    import pkgutil

    import hftgate.v1

    for module in pkgutil.iter_modules(hftgate.v1.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"hftgate.v1.{module.name}")


def _drain(responses: Any, at_most: int = 8) -> None:
    """Read a few answers of a stream (it may go on for ever), then let the call be cancelled."""
    try:
        for _ in itertools.islice(responses, at_most):
            pass
    finally:
        cancel = getattr(responses, "cancel", None)
        if cancel is not None:
            cancel()


def rss_bytes(pid: int) -> int:
    import psutil

    return int(psutil.Process(pid).memory_info().rss)


def serving(address: str, timeout_s: float = 5.0) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout_s
            )
        except grpc.RpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def until(deadline: float) -> Iterator[int]:
    """Round numbers until ``deadline`` (time.monotonic) passes."""
    n = 0
    while time.monotonic() < deadline:
        yield n
        n += 1


# --- the whole suite ---------------------------------------------------------------------------
#: Per process: the gRPC services the fuzzer calls there and who it calls each as. Each list of
#: identities is cycled call by call, so every RPC sees a valid identity (to get past
#: authentication into the handlers); the cache is fuzzed as non-admin callers only: an admin may
#: legitimately wipe reference data. The gateway is the suite's front door: its order entry (each
#: request routed by what it says, then forwarded as bytes), its shard map for routing clients,
#: and the market data and cache calls it balances over their replicas.
FUZZ_TARGETS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "execution": (("hftgate.v1.ExecutionService", ("key:hftgate-demo-alice", "key:hftgate-demo-bob")),),
    "marketdata": (
        ("hftgate.v1.MarketDataService", ("token:feed", "token:execution", "key:hftgate-demo-carol")),
    ),
    "cache": (("hftgate.v1.CacheService", ("token:gateway", "key:hftgate-demo-dave")),),
    "gateway": (
        ("hftgate.v1.ExecutionService", ("key:hftgate-demo-alice", "key:hftgate-demo-bob")),
        ("hftgate.v1.GatewayService", ("key:hftgate-demo-carol", "token:scaler")),
        ("hftgate.v1.MarketDataService", ("key:hftgate-demo-carol",)),
        ("hftgate.v1.CacheService", ("key:hftgate-demo-dave",)),
    ),
    # The scaler as the services that report to it (execution's reports reach its tables: see
    # SCALER_FUZZ_POLICY) and as an account (refused); never as admin, who may change policies.
    "scaler": (("hftgate.v1.ScalerService", ("token:execution", "token:gateway", "key:hftgate-demo-alice")),),
}
#: The processes ``hftgate fuzz`` fuzzes by default, in the order they start.
FUZZ_SERVICES: tuple[str, ...] = ("execution", "marketdata", "cache", "gateway", "scaler")
#: The scaler's one policy while fuzzed: execution's reports are recorded and judged, and its
#: bounds (1..1 replica) let no decision start or stop a process.
SCALER_FUZZ_POLICY = "execution:inflight_requests:1000:1:1"


def check_fuzz_services(services: Sequence[str]) -> None:
    """ValueError naming any of ``services`` the fuzzer has no targets for."""
    unknown = sorted(set(services) - set(FUZZ_TARGETS))
    if unknown:
        raise ValueError(f"no fuzz targets for {', '.join(unknown)}; choose from {', '.join(FUZZ_TARGETS)}")


def identity_metadata(identity: str, secret: Any) -> tuple[tuple[str, str], ...]:
    kind, _, value = identity.partition(":")
    if kind == "token":
        return (("x-hftgate-service-token", secret.token_for(value)),)
    return (("x-api-key", value),)


def probe(service: str, address: str, secret: Any) -> str | None:
    """A normal request of ``service`` after fuzzing: None when it is answered as usual."""
    from hftgate.v1 import (
        cache_pb2,
        cache_pb2_grpc,
        common_pb2,
        execution_pb2_grpc,
        marketdata_pb2,
        marketdata_pb2_grpc,
        scaler_pb2,
        scaler_pb2_grpc,
    )
    from hftgate.v1 import execution_pb2 as ex

    if not serving(address):
        return "health does not say SERVING"
    with grpc.insecure_channel(address) as channel:
        try:
            if service in ("execution", "gateway"):  # (the gateway routes it to its shard)
                order = ex.NewOrder(
                    client_order_id=f"probe-{time.monotonic_ns()}",
                    symbol="BTCUSDT",
                    side=common_pb2.SIDE_BUY,
                    order_type=ex.ORDER_TYPE_LIMIT,
                    time_in_force=ex.TIME_IN_FORCE_GTC,
                    price_ticks=5_000_000,
                    quantity_lots=100,
                )
                reply = execution_pb2_grpc.ExecutionServiceStub(channel).SubmitOrder(
                    ex.SubmitOrderRequest(order=order),
                    metadata=(("x-api-key", "hftgate-demo-carol"),),
                    timeout=10,
                )
                if reply.ack.status != ex.ORDER_STATUS_NEW:
                    return f"a normal order was not accepted: {reply.ack}"
            elif service == "scaler":
                token = (("x-hftgate-service-token", secret.token_for("gateway")),)
                # Answered is enough: which replicas it knows depends on the reports.
                scaler_pb2_grpc.ScalerServiceStub(channel).ListReplicas(
                    scaler_pb2.ListReplicasRequest(), metadata=token, timeout=10
                )
            elif service == "marketdata":
                token = (("x-hftgate-service-token", secret.token_for("gateway")),)
                marketdata_pb2_grpc.MarketDataServiceStub(channel).GetSnapshot(
                    marketdata_pb2.GetSnapshotRequest(), metadata=token, timeout=10
                )
            else:
                token = (("x-hftgate-service-token", secret.token_for("gateway")),)
                stub = cache_pb2_grpc.CacheServiceStub(channel)
                stub.Set(
                    cache_pb2.CacheSetRequest(key="probe", value=b"v", ttl_ms=60_000),
                    metadata=token,
                    timeout=10,
                )
                got = stub.Get(cache_pb2.CacheGetRequest(key="probe"), metadata=token, timeout=10)
                if not got.found or got.entry.value != b"v":
                    return f"a value just written was not read back: {got}"
        except grpc.RpcError as error:
            return f"a normal request failed: {error.code().name}: {error.details()}"  # type: ignore[attr-defined]
    return None


def _cycling(choices: Sequence[tuple[tuple[str, str], ...]]) -> MetadataFor:
    turn = iter(range(1 << 62))
    return lambda _method: choices[next(turn) % len(choices)]


def fuzz_suite(
    state_dir: Any,
    *,
    seconds_per_service: float = 5.0,
    services: Sequence[str] = FUZZ_SERVICES,
    max_rss_growth_bytes: int = 200 * 1024 * 1024,
    seed: int = 0,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, FuzzReport]:
    """Start the suite as plain processes under ``state_dir``, fuzz each service for about
    ``seconds_per_service``, then probe it with a normal request and check its memory."""
    import os
    import socket
    from pathlib import Path

    from hftgate import supervisor
    from hftgate.security import load_suite_secret

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    env = dict(os.environ)
    env["HFTGATE_STATE_DIR"] = str(state_dir)
    env.setdefault("HFTGATE_PROFILE", "dev")
    check_fuzz_services(services)
    secret = load_suite_secret(env, state_dir=Path(state_dir))
    if "scaler" in services:
        env["HFTGATE_SCALER_POLICIES"] = SCALER_FUZZ_POLICY
    # The services asked for and those they need (the gateway routes to the others).
    wanted = set(services) | ({"cache", "marketdata", "execution"} if "gateway" in services else set())
    specs = [s for s in supervisor.available_services() if s.name in wanted]
    for spec in specs:
        env[spec.port_variable] = str(free_port())
    running = supervisor.start_services(specs, env=env, startup_timeout_s=60)
    reports: dict[str, FuzzReport] = {}
    try:
        by_name = {s.spec.name: s for s in running}
        for name in services:
            target = by_name[name]
            rss_before = rss_bytes(target.process.pid)
            report = FuzzReport()
            rounds_run = 0
            targets = FUZZ_TARGETS[name]
            for full_name, identities in targets:  # the process's time shared by its services
                metadata = [identity_metadata(identity, secret) for identity in identities]
                fuzzer = ServiceFuzzer(target.address, full_name, _cycling(metadata))
                fuzzer.report = report
                deadline = time.monotonic() + seconds_per_service / len(targets)
                try:
                    for rounds in until(deadline):
                        fuzzer.run(examples_per_method=6, mutations_per_method=6, seed=seed + rounds)
                        rounds_run += 1
                finally:
                    fuzzer.close()
            if target.process.poll() is not None:
                report.findings.append(Finding("*", "dead", f"exited with code {target.process.returncode}"))
            else:
                problem = probe(name, target.address, secret)
                if problem is not None:
                    report.findings.append(Finding("*", "dead", problem))
                growth = rss_bytes(target.process.pid) - rss_before
                if growth > max_rss_growth_bytes:
                    report.findings.append(
                        Finding("*", "memory", f"resident memory grew {growth / 1e6:.1f} MB")
                    )
            log(f"{name}: {report.calls} calls in {rounds_run} round(s), {len(report.findings)} finding(s)")
            reports[name] = report
    finally:
        supervisor.stop_services(running)
    return reports
