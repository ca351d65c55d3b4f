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

Execution runs as ``shards`` processes (``hftgate up`` starts two; callers of
:func:`start_services` get one unless they ask): shard ``i`` is instance ``i`` of the execution
spec (:func:`with_shards`), on port 50051 + 10 * i (``HFTGATE_EXECUTION_<i>_PORT`` overrides it),
with ``HFTGATE_EXECUTION_SHARD_ID=i``, its own state directory (``<state dir>/execution-<i>``), the
first shard's ledger database (shards share one hash-chained ledger) and no demo seeding (shard 0
seeds). Before the first shard starts, :func:`store_shard_map` stores the map of the shards about
to start in the suite's shard-map store (``hftgate.shardmap.default_url``: SQLite under the state
directory unless a URL says otherwise), which every shard and the gateway read; the gateway is
told every shard (``HFTGATE_GATEWAY_EXECUTION_SHARDS=0=HOST:PORT,1=HOST:PORT``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import logging
import os
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hftgate import shardmap
from hftgate.config import default_data_dir, default_state_dir
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

if TYPE_CHECKING:
    from hftgate.demoflow import FlowWindow

log = logging.getLogger(__name__)


#: Instance ``i`` of a service that runs several (execution shards) listens on its default port
#: plus ``i`` times this (execution shard 1: 50061).
INSTANCE_PORT_STEP = 10


@dataclass(frozen=True)
class ServiceSpec:
    """A service the suite can start: its module and default port, and which instance it is
    when the service runs as several processes (instance 0 is the first, or the only one)."""

    name: str
    default_port: int
    instance: int = 0
    #: Variables this instance gets over the suite's (its shard id, its state directory...).
    extra_env: tuple[tuple[str, str], ...] = ()

    @property
    def module(self) -> str:
        return f"services.{self.name}"

    @property
    def label(self) -> str:
        """The name of this process: ``execution``, ``execution-1``..."""
        return self.name if self.instance == 0 else f"{self.name}-{self.instance}"

    @property
    def port_variable(self) -> str:
        """The variable the supervisor reads this process's port from (``HFTGATE_EXECUTION_PORT``,
        ``HFTGATE_EXECUTION_1_PORT``...)."""
        return f"HFTGATE_{self.label.upper().replace('-', '_')}_PORT"

    @property
    def service_port_variable(self) -> str:
        """The variable the service itself reads its port from (the same for every instance)."""
        return f"HFTGATE_{self.name.upper()}_PORT"

    def is_available(self) -> bool:
        """True once the service has been built (its ``__main__`` module exists)."""
        try:
            return importlib.util.find_spec(f"{self.module}.__main__") is not None
        except ModuleNotFoundError:
            return False


# Start order: dependencies first (execution reads reference data through the cache).
#: The supervisor's pid, given to each service it starts (see hftgate.grpcserver.serve_until_signalled).
SUPERVISOR_PID_VARIABLE = "HFTGATE_SUPERVISOR_PID"

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
    # The gateway checks API keys through the cache and balances cache and market data; it learns
    # the execution shards from SHARD_ADDRESS_VARIABLES below.
    "gateway": (
        ("cache", "HFTGATE_GATEWAY_CACHE_ADDRESS"),
        ("cache", "HFTGATE_GATEWAY_CACHE_REPLICAS"),
        ("marketdata", "HFTGATE_GATEWAY_MARKETDATA_REPLICAS"),
    ),
}


# Which services are told every started instance of a sharded service, as ``ID=HOST:PORT,...``
# (the instance is the shard id): the gateway routes to every execution shard.
SHARD_ADDRESS_VARIABLES: dict[str, tuple[tuple[str, str], ...]] = {
    "gateway": (("execution", "HFTGATE_GATEWAY_EXECUTION_SHARDS"),),
}

# The services that report their load to the scaler (hftgate/loadreport.py), each through its own
# ``HFTGATE_<SERVICE>_SCALER_ADDRESS``; the gateway also follows the scaler's replica set with it.
SCALER_SERVICE = "scaler"
SCALER_REPORTING_SERVICES: tuple[str, ...] = ("cache", "marketdata", "execution", "gateway")


def scaler_address_env(plan: Iterable[tuple[ServiceSpec, int]], env: Mapping[str, str]) -> dict[str, str]:
    """The scaler's address for every reporting service, when ``plan`` starts the scaler.

    The scaler starts last (it starts replicas of the others), but its port is known up front, so
    the others get its address when they start; until it serves, their reports are retried with
    backoff. A variable set already is kept."""
    ports = [port for spec, port in plan if spec.name == SCALER_SERVICE]
    if not ports:
        return {}
    names = (f"HFTGATE_{name.upper()}_SCALER_ADDRESS" for name in SCALER_REPORTING_SERVICES)
    return {name: f"127.0.0.1:{ports[0]}" for name in names if not env.get(name)}


#: The service that runs as shards, and the most shards ``hftgate up`` starts.
SHARDED_SERVICE = "execution"
MAX_LOCAL_SHARDS = 16


def available_services() -> list[ServiceSpec]:
    return [s for s in ALL_SERVICES if s.is_available()]


def with_shards(specs: Iterable[ServiceSpec], shards: int = 1) -> list[ServiceSpec]:
    """``specs`` with the execution spec replaced by ``shards`` instances (shard ids 0..shards-1),
    in place, so the start order stays dependencies first. Instances given already are kept."""
    if not 1 <= shards <= MAX_LOCAL_SHARDS:
        raise ValueError(f"shards must be 1..{MAX_LOCAL_SHARDS}, not {shards}")
    expanded: list[ServiceSpec] = []
    for spec in specs:
        if spec.name != SHARDED_SERVICE or spec.instance != 0:
            expanded.append(spec)
            continue
        expanded.append(spec)
        for shard_id in range(1, shards):
            expanded.append(
                replace(
                    spec, default_port=spec.default_port + INSTANCE_PORT_STEP * shard_id, instance=shard_id
                )
            )
    return expanded


def _state_dir(env: Mapping[str, str]) -> Path:
    return Path(env["HFTGATE_STATE_DIR"]) if env.get("HFTGATE_STATE_DIR") else default_state_dir()


def shard_state_dir(shard_id: int, env: Mapping[str, str]) -> Path:
    """Where execution shard ``shard_id`` keeps its journal and snapshots under the suite's ``env``
    (shard 0: ``<state dir>/execution``; shard i: the same with ``-i``)."""
    first = Path(env.get("HFTGATE_EXECUTION_STATE_DIR") or _state_dir(env) / "execution")
    return first if shard_id == 0 else Path(f"{first}-{shard_id}")


def _holds_state(directory: Path) -> bool:
    return directory.is_dir() and any(directory.iterdir())


def execution_shard_env(shard_id: int, env: Mapping[str, str]) -> dict[str, str]:
    """What execution shard ``shard_id`` gets over the suite's ``env``: shard 0 nothing (it is
    today's single service: ``<state dir>/execution``, seeds the demo data in the dev profile);
    another shard its id, its own state directory beside shard 0's, shard 0's ledger database
    unless one is configured (one hash-chained ledger; trade ids carry the shard), no demo
    seeding, and its own metrics port when shard 0 has one."""
    if shard_id == 0:
        return {}
    first_state = shard_state_dir(0, env)
    extra = {
        "HFTGATE_EXECUTION_SHARD_ID": str(shard_id),
        "HFTGATE_EXECUTION_STATE_DIR": str(shard_state_dir(shard_id, env)),
        "HFTGATE_EXECUTION_SEED_DEMO_DATA": "false",
    }
    if not env.get("HFTGATE_EXECUTION_LEDGER_DATABASE_URL"):
        extra["HFTGATE_EXECUTION_LEDGER_DATABASE_URL"] = (
            f"sqlite+aiosqlite:///{first_state.resolve() / 'ledger.sqlite3'}"
        )
    metrics_port = int(env.get("HFTGATE_EXECUTION_METRICS_PORT") or 0)
    if metrics_port:
        extra["HFTGATE_EXECUTION_METRICS_PORT"] = str(metrics_port + INSTANCE_PORT_STEP * shard_id)
    return extra


def _run(coroutine: Coroutine[object, object, shardmap.ShardMap]) -> shardmap.ShardMap:
    """Run ``coroutine`` to completion from synchronous code, even under a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


def shard_map_store(env: Mapping[str, str]) -> shardmap.ShardMapStore:
    """The suite's shard-map store, as the execution shards and the gateway find it in ``env``."""
    url = env.get("HFTGATE_EXECUTION_SHARD_MAP_DATABASE_URL") or shardmap.default_url(env, _state_dir(env))
    return shardmap.ShardMapStore(
        url,
        table_name=env.get("HFTGATE_EXECUTION_SHARD_MAP_TABLE") or shardmap.DEFAULT_TABLE,
        name=env.get("HFTGATE_EXECUTION_SHARD_MAP_NAME") or shardmap.DEFAULT_MAP_NAME,
    )


def store_shard_map(env: Mapping[str, str], shards: list[shardmap.Shard]) -> shardmap.ShardMap:
    """Make the stored shard map name exactly ``shards``; returns the map the shards will read.

    No map stored: ``shards`` at epoch 1. A stored map with the same shards is kept as it is
    (with its pins and epoch). One with other shards (another ``--shards``, other ports) is
    replaced by the next epoch with ``shards`` and the pins that still name one of them, so a
    shard never starts against a map that does not name it and the gateway never routes to a
    shard that is not running; unless it would leave out a shard that kept state (its books):
    that is refused with ``ShardMapError`` saying how to proceed. A traded symbol (reference data)
    whose owner stays and kept state is pinned to it, so no book is split by the new hash. Raises
    :class:`hftgate.shardmap.ShardMapUnavailable` or ``ShardMapError`` saying why when the store
    cannot be used."""

    async def ensure() -> shardmap.ShardMap:
        store = shard_map_store(env)
        await store.start()
        try:
            wanted = tuple(sorted(shards, key=lambda s: s.shard_id))
            stored = await store.load()
            if stored is None:
                stored = await store.create(shardmap.ShardMap(1, wanted))
            if stored.shards == wanted:
                return stored
            ids = {s.shard_id for s in wanted}
            # A shard left out that kept state holds books and acknowledged orders: dropping it from
            # the map would leave them with no route (its symbols hashed to other shards, which
            # know nothing of them). Its symbols must be moved off first, as the scaler does.
            kept = [
                (shard, shard_state_dir(shard.shard_id, env))
                for shard in stored.shards
                if shard.shard_id not in ids and _holds_state(shard_state_dir(shard.shard_id, env))
            ]
            if kept:
                named = ", ".join(
                    f"shard {shard.shard_id} ({shard.address}, state in {path})" for shard, path in kept
                )
                raise shardmap.ShardMapError(
                    f"the stored shard map names {named}, which this start would leave out: its orders "
                    f"would have no route. Start at least {max(s.shard_id for s in stored.shards) + 1} "
                    "shards (hftgate up --shards N), or move its symbols to the shards you keep first "
                    "(hftgate move SYMBOL --to N) and remove its state directory"
                )

            symbols = await _traded_symbols(env)

            def change(current: shardmap.ShardMap) -> shardmap.ShardMap:
                pins = {symbol: sid for symbol, sid in current.pins.items() if sid in ids}
                # A move in progress keeps its mark (its mover finishes it) while its target stays.
                moving = {symbol: sid for symbol, sid in current.moving.items() if sid in ids}
                rehashed = shardmap.ShardMap(current.epoch + 1, wanted, pins, moving)
                # A symbol whose book is on a shard that stays keeps that shard: rehashing it onto
                # another would split its book in two (the resting orders stay where they are, new
                # ones go elsewhere). Moving a book is `hftgate move` or the scaler's rebalance.
                for symbol in symbols:
                    owner = current.owner(symbol).shard_id
                    if (
                        symbol not in pins
                        and owner in ids
                        and rehashed.owner(symbol).shard_id != owner
                        and _holds_state(shard_state_dir(owner, env))
                    ):
                        pins[symbol] = owner
                return shardmap.ShardMap(current.epoch + 1, wanted, pins, moving)

            updated = await store.update(change)
            log.warning("the stored shard map named other shards: now %r", updated)
            return updated
        finally:
            await store.close()

    return _run(ensure())


def reference_url(env: Mapping[str, str]) -> str:
    """The reference store's SQL URL under the suite's ``env`` (as the execution service finds it:
    services/execution/config.py ``reference_url``)."""
    if env.get("HFTGATE_EXECUTION_REFERENCE_DATABASE_URL"):
        return env["HFTGATE_EXECUTION_REFERENCE_DATABASE_URL"]
    if env.get("DATABASE_URL"):
        return env["DATABASE_URL"]
    cache_state = Path(env.get("HFTGATE_CACHE_STATE_DIR") or _state_dir(env) / "cache")
    return f"sqlite+aiosqlite:///{cache_state / 'cache.sqlite3'}"


async def _traded_symbols(env: Mapping[str, str]) -> list[str]:
    """The instruments of the reference data ([] when there is none yet: then no shard has a book)."""
    url = reference_url(env)
    if url.startswith("sqlite") and not Path(url.partition(":///")[2]).exists():
        return []
    from services.scaler.backends import BackendError
    from services.scaler.rebalancer import reference_symbols

    try:
        return await reference_symbols(url)()
    except BackendError as exc:
        raise shardmap.ShardMapUnavailable(
            f"cannot read the traded symbols, to keep each book on its shard: {exc}"
        ) from exc


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
    shards: int = 1,
) -> list[RunningService]:
    """Start each service and wait for it to report SERVING before starting the next.

    The children get :func:`prepare_suite_env` of ``env`` (default: this process's environment)
    and the addresses of the services they depend on (``DEPENDENCY_ADDRESS_VARIABLES``,
    ``SHARD_ADDRESS_VARIABLES``). Execution runs as ``shards`` shards (:func:`with_shards`), with
    their map stored first (:func:`store_shard_map`).
    """
    base_env = prepare_suite_env(env, tls=tls)
    health_tls = suite_client_tls(ADMIN, base_env)
    plan = [
        (spec, int(base_env.get(spec.port_variable, spec.default_port)))
        for spec in with_shards(specs, shards)
    ]
    # Every child gets them, the scaler too: the replicas it starts inherit its environment.
    base_env.update(scaler_address_env(plan, base_env))
    shard_list = [
        shardmap.Shard(spec.instance, f"127.0.0.1:{port}")
        for spec, port in plan
        if spec.name == SHARDED_SERVICE
    ]
    running: list[RunningService] = []
    try:
        for spec, port in plan:
            if spec.name == SHARDED_SERVICE and spec.instance == 0 and shard_list:
                stored = store_shard_map(base_env, shard_list)
                log.info("execution shards start with shard map %r", stored)
            child_env = {**base_env, spec.service_port_variable: str(port)}
            if spec.name == SHARDED_SERVICE:
                child_env.update(execution_shard_env(spec.instance, base_env))
            child_env.update(spec.extra_env)
            first = {s.spec.name: s.address for s in reversed(running)}  # instance 0 of each
            for dependency, variable in DEPENDENCY_ADDRESS_VARIABLES.get(spec.name, ()):
                if dependency in first and not child_env.get(variable):
                    child_env[variable] = first[dependency]
            for dependency, variable in SHARD_ADDRESS_VARIABLES.get(spec.name, ()):
                instances = [s for s in running if s.spec.name == dependency]
                if instances and not child_env.get(variable):
                    child_env[variable] = ",".join(f"{s.spec.instance}={s.address}" for s in instances)
            # Its own session: Ctrl-C in the terminal reaches only this process, which stops the
            # services in dependency order (stop_services); they stop themselves if it dies.
            child_env[SUPERVISOR_PID_VARIABLE] = str(os.getpid())
            process = subprocess.Popen(
                [sys.executable, "-m", spec.module], env=child_env, start_new_session=True
            )
            service = RunningService(spec=spec, port=port, process=process, env=child_env)
            running.append(service)
            if not wait_until_serving(service.address, startup_timeout_s, health_tls):
                code = process.poll()
                state = f"exited with code {code}" if code is not None else "did not report SERVING"
                raise RuntimeError(f"service {spec.label} on {service.address} {state}")
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


#: The order services stop in (lowest first), each wave once the one before has exited: a service
#: outlives those that call it or report to it, so none logs a lost dependency while stopping (the
#: gateway calls everything; execution calls market data and the cache and reports to the scaler;
#: the cache, with its Redis, serves everyone). Unknown names stop first.
STOP_WAVES: dict[str, int] = {"gateway": 1, "execution": 2, "marketdata": 3, "scaler": 4, "cache": 5}


def stop_services(running: list[RunningService], grace_s: float = 10.0) -> None:
    """SIGTERM in :data:`STOP_WAVES` order (each drains itself; a wave once the one before has
    exited), within ``grace_s`` in all, then SIGKILL stragglers."""
    deadline = time.monotonic() + grace_s
    waves: dict[int, list[RunningService]] = {}
    for service in reversed(running):
        waves.setdefault(STOP_WAVES.get(service.spec.name, 0), []).append(service)
    for _, wave in sorted(waves.items()):
        for service in wave:
            if service.process.poll() is None:
                service.process.terminate()
        for service in wave:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                service.process.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                service.process.kill()
                service.process.wait()


def _figure(value: object, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value}{unit}"


def format_summary(
    state: Mapping[str, Any] | None, flow: FlowWindow | None, dashboard_url: str | None
) -> str:
    """The line ``hftgate up`` prints every ``--summary-interval-s``: the suite's own figures
    (``state``, a dashboard sample: orders/s, the worst shard's p50/p99, the cache's hit ratio,
    shards, replicas), what the demo flow got through the gateway, and the dashboard's address."""
    parts = []
    if state is None:
        parts.append("suite: first sample not taken yet")
    else:
        execution, cache, gateway, scaler = (
            state["execution"],
            state["cache"],
            state["gateway"],
            state["scaler"],
        )
        parts.append(
            f"orders/s {_figure(execution['orders_per_s'])}"
            f" p50 {_figure(execution['p50_ms'], 3, ' ms')} p99 {_figure(execution['p99_ms'], 3, ' ms')}"
        )
        ratio = cache["hit_ratio"]
        parts.append(f"cache hit ratio {'-' if ratio is None else f'{ratio:.1%}'}")
        shards = gateway["shards"] if gateway["available"] else execution["shards"]
        up = sum(1 for s in execution["shards"] if s["available"])
        parts.append(f"shards {up}/{len(shards)} up")
        if scaler["available"]:
            parts.append(f"replicas {len(scaler['replicas'])}")
        else:
            parts.append("replicas: no scaler")
    if flow is not None:
        text = (
            f"demo flow {flow.acked_per_s:,.0f} acked/s, {flow.total_acked} orders acked through the gateway"
            f" (round trip p50 {_figure(flow.p50_ms, 3, ' ms')} p99 {_figure(flow.p99_ms, 3, ' ms')})"
        )
        if flow.errors or flow.rejected:
            text += f", {flow.errors} errors and {flow.rejected} rejects: {flow.last_error}"
        parts.append(text)
    if dashboard_url:
        parts.append(f"dashboard {dashboard_url}")
    return " | ".join(parts)
