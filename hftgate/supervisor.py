"""Start the suite as plain local processes: what `hftgate up` and `make run` do.

Each service runs in a fresh interpreter (``python -m services.<name>``), never a
fork of this one, so no gRPC state crosses a fork. The same start-up path is what
docker compose runs, one container per service.

Before the first service starts, :func:`prepare_suite_env` makes sure the suite secret exists
(``hftgate.security.load_suite_secret``: ``<state dir>/secrets/suite.secret``, created 0600 on
first use) and names it to every child, so the services and the replay feeder authenticate to
each other with tokens derived from one secret; it sets the ``dev`` profile (demo accounts)
unless ``HFTGATE_PROFILE`` says otherwise, and with ``tls`` makes a suite CA and certificates
under ``<state dir>/tls`` (``hftgate certs init``) and points ``HFTGATE_TLS_DIR`` at them.
Start-up waits on ``grpc.health.v1``, which needs no credential (over TLS when it is on).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hftgate.config import default_data_dir
from hftgate.security import (
    ADMIN,
    DEV_PROFILE,
    PROFILE_VARIABLE,
    ClientTls,
    certs_init,
    load_suite_secret,
    profile,
    suite_client_tls,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    """A service the suite can start: its module and default port."""

    name: str
    default_port: int

    @property
    def module(self) -> str:
        return f"services.{self.name}"

    @property
    def port_variable(self) -> str:
        return f"HFTGATE_{self.name.upper()}_PORT"

    def is_available(self) -> bool:
        """True once the service has been built (its ``__main__`` module exists)."""
        try:
            return importlib.util.find_spec(f"{self.module}.__main__") is not None
        except ModuleNotFoundError:
            return False


# Start order: dependencies first (execution reads reference data through the cache).
ALL_SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("cache", 50053),
    ServiceSpec("marketdata", 50052),
    ServiceSpec("execution", 50051),
    ServiceSpec("gateway", 50050),
    ServiceSpec("scaler", 50054),
)


# Which address of an already started service each service is told, and by which variable:
# market data verifies accounts' API keys through the cache; execution reads reference data
# through the cache and publishes its trades to market data.
DEPENDENCY_ADDRESS_VARIABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "marketdata": (("cache", "HFTGATE_MARKETDATA_CACHE_ADDRESS"),),
    "execution": (
        ("cache", "HFTGATE_EXECUTION_CACHE_ADDRESS"),
        ("marketdata", "HFTGATE_EXECUTION_MARKETDATA_ADDRESS"),
    ),
    # One execution shard for now: the gateway stores it as the first shard map (a map already
    # stored under the state directory wins) and checks API keys through the cache.
    "gateway": (
        ("execution", "HFTGATE_GATEWAY_EXECUTION_SHARDS"),
        ("cache", "HFTGATE_GATEWAY_CACHE_ADDRESS"),
        ("cache", "HFTGATE_GATEWAY_CACHE_REPLICAS"),
        ("marketdata", "HFTGATE_GATEWAY_MARKETDATA_REPLICAS"),
    ),
}


def available_services() -> list[ServiceSpec]:
    return [s for s in ALL_SERVICES if s.is_available()]


def prepare_suite_env(env: Mapping[str, str] | None = None, *, tls: bool = False) -> dict[str, str]:
    """The environment the suite's processes share (see the module docstring); ``env`` is not changed.

    Idempotent: an existing secret, profile or TLS folder is kept.
    """
    prepared = dict(os.environ if env is None else env)
    state_dir = Path(prepared["HFTGATE_STATE_DIR"]) if prepared.get("HFTGATE_STATE_DIR") else None
    # Made here, once, before any child reads it (each would otherwise race to create it).
    secret = load_suite_secret(prepared, state_dir=state_dir)
    if not prepared.get("HFTGATE_SUITE_SECRET") and not prepared.get("HFTGATE_SUITE_SECRET_FILE"):
        prepared["HFTGATE_SUITE_SECRET_FILE"] = str(Path(secret.source).resolve())
    prepared.setdefault(PROFILE_VARIABLE, DEV_PROFILE)
    profile(prepared)  # fails fast on a profile that is neither dev nor production
    if tls and not prepared.get("HFTGATE_TLS_DIR"):
        from hftgate.config import default_state_dir

        folder = ((state_dir or default_state_dir()) / "tls").resolve()
        if not (folder / "ca.pem").exists():
            written = certs_init(folder)
            log.info("suite CA and %d certificate files written under %s", len(written), folder)
        prepared["HFTGATE_TLS_DIR"] = str(folder)
    return prepared


@dataclass
class RunningService:
    spec: ServiceSpec
    port: int
    process: subprocess.Popen[bytes]
    #: The environment the service was started with (what a feeder or tool beside it should use).
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def _health_channel(address: str, tls: ClientTls | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, tls.credentials())


def wait_until_serving(address: str, timeout_s: float, tls: ClientTls | None = None) -> bool:
    """Poll ``grpc.health.v1`` at ``address`` until it answers SERVING or time runs out.

    Health needs no credential; with ``tls`` the channel verifies the server against the suite
    CA (and presents the certificate in ``tls``, if any, for servers that require one).
    """
    deadline = time.monotonic() + timeout_s
    with _health_channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    return False


def start_services(
    specs: Iterable[ServiceSpec],
    env: Mapping[str, str] | None = None,
    startup_timeout_s: float = 30.0,
    *,
    tls: bool = False,
) -> list[RunningService]:
    """Start each service and wait for it to report SERVING before starting the next.

    The children get :func:`prepare_suite_env` of ``env`` (default: this process's environment)
    and the addresses of the services they depend on (``DEPENDENCY_ADDRESS_VARIABLES``).
    """
    base_env = prepare_suite_env(env, tls=tls)
    health_tls = suite_client_tls(ADMIN, base_env)
    running: list[RunningService] = []
    try:
        for spec in specs:
            port = int(base_env.get(spec.port_variable, spec.default_port))
            child_env = {**base_env, spec.port_variable: str(port)}
            started = {s.spec.name: s.address for s in running}
            for dependency, variable in DEPENDENCY_ADDRESS_VARIABLES.get(spec.name, ()):
                if dependency in started and not child_env.get(variable):
                    child_env[variable] = started[dependency]
            process = subprocess.Popen([sys.executable, "-m", spec.module], env=child_env)
            service = RunningService(spec=spec, port=port, process=process, env=child_env)
            running.append(service)
            if not wait_until_serving(service.address, startup_timeout_s, health_tls):
                code = process.poll()
                state = f"exited with code {code}" if code is not None else "did not report SERVING"
                raise RuntimeError(f"service {spec.name} on {service.address} {state}")
    except BaseException:
        stop_services(running)
        raise
    return running


# The overlapping window of Binance spot and perpetual books (see ../shared/data/README.md).
DEMO_REPLAY_FILES: tuple[str, ...] = (
    "quotes/binance-spot_BTCUSDT_bookTicker_20240808.csv.gz",
    "quotes/binance-usdm_BTCUSDT_bookTicker_20240808.csv.gz",
    "quotes/binance-spot_ETHUSDT_bookTicker_20240808.csv.gz",
    "quotes/binance-usdm_ETHUSDT_bookTicker_20240808.csv.gz",
    "trades/binance-spot_BTCUSDT_trades_20240808.csv.gz",
    "trades/binance-usdm_BTCUSDT_trades_20240808.csv.gz",
)


def start_replay(running: list[RunningService], speed: float) -> subprocess.Popen[bytes] | None:
    """Feed the recorded demo window to the running market data service, if both exist.

    The feeder gets the suite's environment (the secret, TLS), from which ``hftgate replay``
    loads its own credentials as the ``feed`` principal.
    """
    target = next((s for s in running if s.spec.name == "marketdata"), None)
    data_dir = default_data_dir()
    files = [data_dir / name for name in DEMO_REPLAY_FILES if (data_dir / name).exists()]
    if target is None or not files:
        return None
    command = [sys.executable, "-m", "hftgate.cli", "replay", "--target", target.address]
    command += ["--speed", str(speed), *map(str, files)]
    return subprocess.Popen(command, env=target.env or None)


def stop_services(running: list[RunningService], grace_s: float = 10.0) -> None:
    """SIGTERM in reverse start order (each drains itself), then SIGKILL stragglers."""
    for service in reversed(running):
        if service.process.poll() is None:
            service.process.terminate()
    deadline = time.monotonic() + grace_s
    for service in reversed(running):
        remaining = max(0.1, deadline - time.monotonic())
        try:
            service.process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            service.process.kill()
            service.process.wait()
