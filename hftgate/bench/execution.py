"""Benchmark: the execution service's order path through a real server process, with its floors.

One ``python -m services.execution`` process per round, durable journal on (the default,
``fsync``), its state in a fresh temporary directory; the client is this process (grpc.aio).
Every round measures, in this order:

- ``unary_p50_ms`` / ``unary_p99_ms``: sequential SubmitOrder calls, one in flight, in short
  blocks interleaved with blocks of the floors below, so that figure and floors see the same
  noise on a shared machine.
- ``tcp_floor_p50_ms``: raw TCP ping-pong with a child process (hftgate.bench.floors).
- ``grpc_echo_p50_ms``: an empty unary call to a do-nothing server on the same gRPC stack, behind
  the same authentication interceptor as the service and carrying an API key as the orders do,
  placed as the service is and waking the same CPU keeper on every call as SubmitOrder does
  (hftgate.bench.floors): on a 2-vCPU VM a CPU kept awake spares the caller's process its wake-up too.
  (The CPU only: the keeper does not wake the floor's journal writer ahead, as it does SubmitOrder's,
  since no record follows.)
- ``grpc_plain_echo_p50_ms``: the same without the interceptor; ``auth_overhead_us`` =
  ``grpc_echo_p50_ms - grpc_plain_echo_p50_ms`` (in microseconds): what refusing calls without
  credentials costs every admitted call. (The API key's own lookup, a dict hit for a known key,
  is inside ``unary_logic_ms``.)
- ``fsync_p50_ms``: one SubmitOrder's journal record written and ``fdatasync``-ed as the journal does
  (into space reserved ahead with ``posix_fallocate``), in a file of its own in the journal's directory.
- ``grpc_durable_echo_p50_ms``: an empty unary call whose handler awaits one append to the
  service's own journal class (C writer, group commit, fdatasync): the floor of any durable
  acknowledgement on this stack (see :mod:`hftgate.bench.floors`).
- ``batch_orders_per_s``: SubmitOrders with 1,000 orders a call, two accounts each with one
  call in flight.
- ``columns_orders_per_s``: SubmitOrderColumns (the batch and its acks as packed columns) with
  10,000 orders a call, two accounts each with one call in flight, 800,000 orders in all: a
  sustained rate, with the snapshots that such a flow takes at the service's defaults (the
  first, at 16 MB of journal, lands in this phase; ``columns_snapshots`` says how many did);
  ``columns_bar_holds`` against issue #17's 500,000. ``columns_first_orders_per_s``: the rate
  until each account's first 8 calls were answered (the 160,000 orders this phase used to be,
  which hold that first snapshot: what a short burst meets).
- ``stream_orders_per_s``: OrderStream, 100 orders a message, two accounts, each stream keeping
  up to ``stream_window_inputs`` orders unanswered.
- ``stream_single_orders_per_s``: OrderStream with one order a message.
- ``fair_unary_p99_ms_under_flood`` (and ``fair_unary_p50_ms_under_flood``): sequential SubmitOrder
  calls of one account (alice) while two other accounts (carol, dave) flood OrderStream as fast
  as they can (100 orders a message, no client-side window: only the server's backpressure
  slows them), from a separate client process so that the flood's client work does not delay
  the measuring client. ``fair_flood_orders_per_s`` is what the two floods got through meanwhile.
  ``fair_bar_holds``: ``fair_unary_p99_ms_under_flood <= 5 * unary_p99_ms`` (issue 13.3), both
  taken per round.

- ``fsync_spaced_p50_ms``: the same write and fdatasync, each after as long idle as a unary
  SubmitOrder call takes (the median of the block just measured): what a lone order's fsync
  meets, the disk idle since the last call's. Diagnostic only.

Derived: ``unary_overhead_ms = unary_p50_ms - grpc_echo_p50_ms - fsync_p50_ms`` (what the service
adds besides the transport and its one fsync: decode, risk, match, journal hand-off, ack; the
bar is judged on this one, against back-to-back fsyncs, the lower floor),
``unary_overhead_spaced_ms`` (the same against ``fsync_spaced_p50_ms``: how much of the overhead
is the idle disk's slower sync rather than the service), ``unary_overhead_paired_ms`` (the median over
blocks of each block's unary median minus the echo and fsync medians of the blocks right after it:
the same difference taken minutes-apart noise out of; diagnostic, the bar stays on the first) and
the issue's bars (``*_bar_holds``); ``unary_logic_ms = unary_p50_ms - grpc_durable_echo_p50_ms``
(what the order path itself costs: decode, auth, risk, match, bookkeeping, acks) and
``durable_ack_overhead_ms = grpc_durable_echo_p50_ms - grpc_echo_p50_ms - fsync_p50_ms`` (what
waiting for a writer thread costs a gRPC handler beyond the fsync). From the service's own
GetStats after the unary phase: ``unary_service_*_p50_ms`` per order-path stage, which say
where the time inside goes; ``unary_service_fsync_p50_ms``, the journal writer's own fdatasyncs
over the warm-up and the unary phase (every one the service made, at its cadence: the disk's part
of each lone order's wait as the service met it), and ``unary_overhead_service_fsync_ms =
unary_p50_ms - grpc_echo_p50_ms - unary_service_fsync_p50_ms`` (what is left of the overhead when
the disk is charged at what the service's own fsyncs took rather than the back-to-back floor;
diagnostic: the bar stays on ``unary_overhead_ms``).

Every figure is the median over ``repeats`` rounds; ``*_spread`` = (max - min) / median of the
rounds says how noisy the machine was.

``journal_records_per_fsync``: journal records (one per call or stream message) per fsync over
the whole round, the group-commit size.

The order flow (:class:`OrderFlow`) is the one the load tests and the crash harness use too: a
little under half passive GTC limit orders a few ticks behind the mid, a little over half
aggressive IOC orders that take them, so the book keeps a stationary depth however long the run.

This module also holds what the crash harness, the load tests and their tests share:
:class:`ExecutionProcess` (start, SIGKILL, restart on the same port, stop) and the demo accounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hftgate.config import repo_root
from hftgate.grpcserver import CHANNEL_OPTIONS

# Issue #17's bars (they replace issue 5's: 50,000 batch, 20,000 stream, 0.25 ms unary).
BATCH_ORDERS_PER_S_BAR = 150_000
#: SubmitOrderColumns, batches of 10,000, durable.
COLUMNS_ORDERS_PER_S_BAR = 500_000
STREAM_ORDERS_PER_S_BAR = 80_000
UNARY_OVERHEAD_MS_BAR = 0.20
# Issue 13.2: what the service's resident memory may grow per accepted order after warm-up.
RSS_BYTES_PER_ORDER_BAR = 8.0
# Issue 13.3: a well-behaved account's SubmitOrder p99 while two others flood, against unloaded.
FAIR_UNARY_P99_RATIO_BAR = 5.0

DEMO_SYMBOL = "BTCUSDT"
# BTCUSDT's reference price in the service's demo data (60,000.00 in 0.01 ticks).
DEMO_MID_PRICE_TICKS = 6_000_000
DEMO_ACCOUNTS = ("alice", "bob", "carol", "dave")

_LISTENING = re.compile(r"listening on (\S+):(\d+)")
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


def require_loopback(target: str) -> str:
    """``target`` (host:port) if its host is the loopback interface; load is never aimed elsewhere."""
    host = target.rsplit(":", 1)[0]
    if host not in _LOOPBACK_HOSTS:
        raise ValueError(
            f"refusing to send load to {target!r}: only 127.0.0.1 / localhost targets are allowed"
        )
    return target


@dataclass(frozen=True)
class Account:
    """A demo account the service seeds, and the metadata that authenticates as it."""

    name: str
    api_key: str

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.api_key),)


# --- the server process ---------------------------------------------------------------------------


def _serving(address: str) -> bool:
    """One ``grpc.health.v1`` check: whether ``address`` answers SERVING now."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class ExecutionProcess:
    """One ``python -m services.execution`` process on 127.0.0.1, state in ``state_dir``.

    ``start()`` binds a free port the first time and the same port on every restart, as a
    deployed service would come back; ``kill()`` is SIGKILL (no clean-up runs), ``stop()`` is
    SIGTERM (graceful drain). The demo reference data (instruments, accounts) is seeded into a
    SQLite file in ``state_dir`` with a key secret of this object's own, so ``account(name)``
    gives working credentials: the process runs in the dev profile (demo rows are seeded only
    there) and serves plaintext on loopback (``HFTGATE_TLS_DIR`` is not passed on). ``settings``
    are extra ``HFTGATE_EXECUTION_*`` values (field names in lower case, e.g.
    ``{"snapshot_every_inputs": "500"}``).

    Every process's output goes to ``state_dir/logs/execution-<n>.log``; :meth:`log_tail`
    shows the end of the latest for error messages.
    """

    def __init__(self, state_dir: Path, settings: Mapping[str, str] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.service_dir = self.state_dir / "execution"
        self.log_dir = self.state_dir / "logs"
        self.key_secret = "bench-" + secrets.token_hex(8)
        self.settings = dict(settings or {})
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path: Path | None = None
        self.spawned_at = 0.0  # time.monotonic() of the latest spawn
        self._port_of_start = 0  # the start whose log gave ``port``

    @property
    def address(self) -> str:
        if not self.port:
            raise RuntimeError("the execution process has not reported its port yet")
        return f"127.0.0.1:{self.port}"

    @property
    def journal_dir(self) -> Path:
        return self.service_dir / "journal"

    @property
    def ledger_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.service_dir / 'ledger.sqlite3'}"

    def account(self, name: str) -> Account:
        if name not in DEMO_ACCOUNTS:
            raise KeyError(f"no demo account {name!r}; the service seeds {', '.join(DEMO_ACCOUNTS)}")
        return Account(name, f"{self.key_secret}-{name}")

    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata of the "admin" principal under this process's suite secret (GetStats gives
        the service-wide figures only to a service principal; an account sees its own)."""
        from hftgate.security import ADMIN, SERVICE_TOKEN_METADATA, load_suite_secret

        secret = load_suite_secret(self.environment(), state_dir=self.state_dir, create=False)
        return ((SERVICE_TOKEN_METADATA, secret.token_for(ADMIN)),)

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HFTGATE_EXECUTION_")}
        env.pop("DATABASE_URL", None)
        values = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "state_dir": str(self.service_dir),
            "reference_database_url": f"sqlite+aiosqlite:///{self.state_dir / 'reference.sqlite3'}",
            "cache_address": "",
            "seed_demo_data": "true",
            "demo_accounts": ",".join(DEMO_ACCOUNTS),
            "demo_key_secret": self.key_secret,
            "marketdata_address": "",
            "metrics_port": "0",
            **self.settings,
        }
        env.update({f"HFTGATE_EXECUTION_{name.upper()}": value for name, value in values.items()})
        env["HFTGATE_STATE_DIR"] = str(self.state_dir)
        env["HFTGATE_PROFILE"] = "dev"  # demo accounts: a throwaway state directory on loopback
        env.pop("HFTGATE_TLS_DIR", None)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def spawn(self) -> None:
        """Start the process and return at once (see :meth:`wait_ready` / :meth:`start`)."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the execution process is already running")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.log_path = self.log_dir / f"execution-{self.starts}.log"
        with open(self.log_path, "wb") as log_file:
            self.spawned_at = time.monotonic()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "services.execution"],
                env=self.environment(),
                cwd=repo_root(),
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def _poll_ready(self) -> bool:
        """True once the latest process answers SERVING on ``grpc.health.v1``, as the supervisor
        waits for a service; raises if it died first. Its port is the one it logged ('listening on
        HOST:PORT'): the service binds port 0 itself, since a port chosen here could be taken by
        another process between the choice and the bind."""
        assert self.process is not None and self.log_path is not None
        if not self.port or self.starts != self._port_of_start:
            match = _LISTENING.search(self.log_path.read_text(errors="replace"))
            if match:
                self.port, self._port_of_start = int(match.group(2)), self.starts
        if self.port and self.starts == self._port_of_start and _serving(self.address):
            return True
        code = self.process.poll()
        if code is not None:
            raise RuntimeError(
                f"execution service exited with code {code} before listening:\n{self.log_tail()}"
            )
        return False

    def wait_ready_blocking(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._poll_ready():
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"execution service not listening after {timeout_s} s:\n{self.log_tail()}")
            time.sleep(0.005)

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Like :meth:`wait_ready_blocking`, but lets the event loop run meanwhile."""
        deadline = time.monotonic() + timeout_s
        while not self._poll_ready():
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"execution service not listening after {timeout_s} s:\n{self.log_tail()}")
            await asyncio.sleep(0.005)

    def start(self, timeout_s: float = 60.0) -> None:
        self.spawn()
        self.wait_ready_blocking(timeout_s)

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush, sync or say goodbye."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait for the graceful drain; SIGKILL after ``timeout_s``. Returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.process.returncode)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def __enter__(self) -> ExecutionProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.is_running():
            self.stop()


# --- the order flow -------------------------------------------------------------------------------


@dataclass
class OrderFlow:
    """Random orders around a fixed mid that keep the book at a stationary depth.

    A share ``1 - take_share`` are passive GTC limits at 1..``depth_ticks`` ticks behind the mid
    (buys below, sells above; they never cross each other); the rest are aggressive IOC limits
    priced ``depth_ticks`` through the mid, which take resting liquidity and expire what they
    cannot fill. With ``take_share`` a little above one half more liquidity is taken than given,
    so the book stays shallow however long the run. Quantities are 1..``max_lots`` lots.
    ``client_order_id`` is ``<prefix><n>``; give each account and run its own prefix.
    """

    prefix: str
    symbol: str = DEMO_SYMBOL
    mid_price_ticks: int = DEMO_MID_PRICE_TICKS
    depth_ticks: int = 5
    take_share: float = 0.55
    max_lots: int = 10
    seed: int = 0
    count: int = 0
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = np.random.default_rng(self.seed)

    def next_fields(self) -> dict[str, Any]:
        """The next order as NewOrder keyword arguments (plain ints and strings)."""
        from hftgate.v1 import common_pb2, execution_pb2

        rng = self._rng
        buy = bool(rng.integers(2))
        take = bool(rng.random() < self.take_share)
        if take:
            offset = self.depth_ticks
            tif = execution_pb2.TIME_IN_FORCE_IOC
        else:
            offset = -int(rng.integers(1, self.depth_ticks + 1))
            tif = execution_pb2.TIME_IN_FORCE_GTC
        price = self.mid_price_ticks + (offset if buy else -offset)
        self.count += 1
        return {
            "client_order_id": f"{self.prefix}{self.count}",
            "symbol": self.symbol,
            "side": common_pb2.SIDE_BUY if buy else common_pb2.SIDE_SELL,
            "order_type": execution_pb2.ORDER_TYPE_LIMIT,
            "time_in_force": tif,
            "price_ticks": price,
            "quantity_lots": int(rng.integers(1, self.max_lots + 1)),
        }

    def next_order(self) -> Any:
        """The next order as an ``execution_pb2.NewOrder``."""
        from hftgate.v1 import execution_pb2

        return execution_pb2.NewOrder(**self.next_fields())


def replayed_mbo_messages(
    *,
    limit: int | None = None,
    accounts: Sequence[str] = DEMO_ACCOUNTS,
    symbol: str = "ESZ4",
    message_inputs: int = 100,
    prefix: str = "",
) -> dict[str, list[Any]]:
    """A recorded order flow as OrderStream messages per account: the CME E-mini order-by-order day
    (``l3/databento_glbx-mdp3_ESH4_mbo_2023-12-25.csv.gz``, through :mod:`hftgate.matching.mbo`).

    Each recorded order (and each trade's aggressor, an IOC limit) belongs to account
    ``accounts[order id % len(accounts)]``, so its cancels and modifies come from its owner; adds
    become GTC limits, cancels cancel by client order id (``<prefix><recorded order id>``), modifies
    replace price and quantity. Within an account the recorded order is kept; across accounts the
    streams interleave as they run. ``limit`` keeps the first records of the file.
    """
    from hftgate.matching.mbo import data_dir, load_mbo
    from hftgate.matching.types import Action
    from hftgate.v1 import execution_pb2

    path = data_dir() / "l3" / "databento_glbx-mdp3_ESH4_mbo_2023-12-25.csv.gz"
    if not path.exists():
        raise FileNotFoundError(f"recorded order flow {path} is missing (set HFTGATE_DATA_DIR)")
    commands = load_mbo(path, limit).commands
    per_account: dict[str, list[Any]] = {name: [] for name in accounts}
    for order_id, price, qty, action, side, tif in zip(
        commands["order_id"].tolist(),
        commands["price"].tolist(),
        commands["qty"].tolist(),
        commands["action"].tolist(),
        commands["side"].tolist(),
        commands["tif"].tolist(),
        strict=True,
    ):
        client_order_id = f"{prefix}{order_id}"
        if action == Action.NEW:
            order = execution_pb2.NewOrder(
                client_order_id=client_order_id,
                symbol=symbol,
                side=side,
                order_type=execution_pb2.ORDER_TYPE_LIMIT,
                time_in_force=tif,
                price_ticks=price,
                quantity_lots=qty,
            )
            item = execution_pb2.OrderInput(new_order=order)
        elif action == Action.CANCEL:
            item = execution_pb2.OrderInput(
                cancel=execution_pb2.CancelOrderRequest(client_order_id=client_order_id)
            )
        elif action == Action.REPLACE:
            replace = execution_pb2.ReplaceOrderRequest(
                client_order_id=client_order_id, price_ticks=price, quantity_lots=qty
            )
            item = execution_pb2.OrderInput(replace=replace)
        else:
            continue
        per_account[accounts[order_id % len(accounts)]].append(item)
    return {
        name: [
            execution_pb2.OrderStreamRequest(inputs=inputs[start : start + message_inputs])
            for start in range(0, len(inputs), message_inputs)
        ]
        for name, inputs in per_account.items()
        if inputs
    }


def run_prefix() -> str:
    """A client order id prefix no earlier run used (ids stay unique per account for the journal's life)."""
    return secrets.token_hex(3) + "-"


# --- the floors beside the service ------------------------------------------------------------------


def single_order_record_bytes() -> int:
    """The journal record of one SubmitOrder: its header and payload (services/execution/records.py)."""
    from hftgate.bench.floors import submit_order_payload_bytes
    from services.execution.journal import RECORD_HEADER_BYTES

    return RECORD_HEADER_BYTES + submit_order_payload_bytes()


class FsyncProbe:
    """One SubmitOrder's journal record written and fdatasynced, as the journal does it: into space
    reserved ahead with ``posix_fallocate`` (``DEFAULT_PREALLOCATE_BYTES`` at a time), at the next
    offset with ``pwrite``, in a file of its own in the journal's directory (issue #17's honest
    floor: an ``O_APPEND`` write grows the file, and its fdatasync then also writes the size,
    which the journal's does not, so such a floor is dearer and flatters the service's overhead)."""

    def __init__(self, directory: Path) -> None:
        from services.execution.journal import DEFAULT_PREALLOCATE_BYTES

        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "fsync-probe.tmp"
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._payload = b"f" * single_order_record_bytes()
        self._chunk = DEFAULT_PREALLOCATE_BYTES
        self._offset = 0
        self._reserved = 0

    def _reserve(self) -> None:
        if self._offset + len(self._payload) > self._reserved:
            try:
                os.posix_fallocate(self._fd, self._reserved, self._chunk)
            except OSError:  # a filesystem without it: the journal falls back to plain writes too
                self._chunk = 1 << 62
            self._reserved += self._chunk

    def round_trips_ns(self, count: int, gap_s: float = 0.0) -> np.ndarray:
        """``count`` writes and fdatasyncs, back to back, or each after ``gap_s`` of idle: a lone
        SubmitOrder's fsync follows the idle time between calls, and on a VM a disk that was idle
        can take longer to sync than one kept busy (``fsync_spaced_p50_ms``)."""
        out = np.empty(count, dtype=np.int64)
        fd, payload = self._fd, self._payload
        for i in range(count):
            self._reserve()  # (outside the timing, as the journal's reservation is amortized)
            if gap_s:
                time.sleep(gap_s)
            start = time.perf_counter_ns()
            os.pwrite(fd, payload, self._offset)
            os.fdatasync(fd)
            out[i] = time.perf_counter_ns() - start
            self._offset += len(payload)
        return out

    def close(self) -> None:
        os.close(self._fd)
        self.path.unlink(missing_ok=True)


# --- measurements ----------------------------------------------------------------------------------


def _ms(ns: float) -> float:
    return float(ns) / 1e6


async def _unary_block(stub: Any, flows: Sequence[tuple[OrderFlow, Account]], count: int) -> np.ndarray:
    """``count`` sequential SubmitOrder calls, alternating accounts; client-side ns per call."""
    from hftgate.v1 import execution_pb2

    requests = []
    for i in range(count):
        flow, account = flows[i % len(flows)]
        requests.append((execution_pb2.SubmitOrderRequest(order=flow.next_order()), account.metadata))
    out = np.empty(count, dtype=np.int64)
    call = stub.SubmitOrder
    for i, (request, metadata) in enumerate(requests):
        start = time.perf_counter_ns()
        await call(request, metadata=metadata)
        out[i] = time.perf_counter_ns() - start
    return out


@dataclass
class UnaryRound:
    unary_ns: np.ndarray
    echo_ns: np.ndarray
    tcp_ns: np.ndarray
    fsync_ns: np.ndarray
    durable_echo_ns: np.ndarray
    plain_echo_ns: np.ndarray
    fsync_spaced_ns: np.ndarray
    #: Per block: its unary median minus the medians of the echo and fsync blocks that followed it.
    block_overhead_ns: np.ndarray


async def measure_unary_with_floors(
    stub: Any,
    flows: Sequence[tuple[OrderFlow, Account]],
    echo: Any,
    tcp: Any,
    fsync: FsyncProbe,
    durable_echo: Any,
    plain_echo: Any,
    *,
    samples: int,
    block: int,
) -> UnaryRound:
    """Unary SubmitOrder latencies in blocks of ``block``, each block followed by a block of each floor."""
    await _unary_block(stub, flows, min(200, samples))  # warm-up: connection, caches, first snapshots
    await echo.round_trips_ns(100)
    await durable_echo.round_trips_ns(100)
    await plain_echo.round_trips_ns(100)
    unary, echoes, tcps, fsyncs, durable, plain, spaced = [], [], [], [], [], [], []
    done = 0
    while done < samples:
        n = min(block, samples - done)
        unary.append(await _unary_block(stub, flows, n))
        echoes.append(await echo.round_trips_ns(n))
        tcps.append(tcp.round_trips_ns(n))
        fsyncs.append(fsync.round_trips_ns(max(1, n // 4)))
        # As the journal sees a lone order's record: one per call, the disk idle in between.
        spaced.append(fsync.round_trips_ns(max(1, n // 8), gap_s=float(np.median(unary[-1])) / 1e9))
        durable.append(await durable_echo.round_trips_ns(n))
        plain.append(await plain_echo.round_trips_ns(n))
        done += n
    return UnaryRound(
        np.concatenate(unary),
        np.concatenate(echoes),
        np.concatenate(tcps),
        np.concatenate(fsyncs),
        np.concatenate(durable),
        np.concatenate(plain),
        np.concatenate(spaced),
        np.array(
            [
                np.median(u) - np.median(e) - np.median(f)
                for u, e, f in zip(unary, echoes, fsyncs, strict=True)
            ]
        ),
    )


def order_columns(orders: Sequence[Any]) -> Any:
    """NewOrders as one ``execution_pb2.OrderColumns`` (what a columnar client sends)."""
    from hftgate.v1 import execution_pb2

    columns = execution_pb2.OrderColumns()
    symbols = sorted({o.symbol for o in orders})
    columns.symbols.extend(symbols)
    columns.symbol_index.extend(symbols.index(o.symbol) for o in orders)
    columns.client_order_id.extend(o.client_order_id for o in orders)
    for name in ("side", "order_type", "time_in_force", "price_ticks", "quantity_lots"):
        getattr(columns, name).extend(getattr(o, name) for o in orders)
    return columns


async def measure_columns(
    stub: Any,
    flows: Sequence[tuple[OrderFlow, Account]],
    *,
    batches_per_account: int,
    batch_orders: int,
    first_batches: int = 0,
) -> tuple[float, int, float]:
    """(orders per second, rejected orders, orders per second until each account's first
    ``first_batches`` calls were answered: 0.0 if not asked) through SubmitOrderColumns, one call
    in flight per account."""
    from hftgate.v1 import execution_pb2

    def request(orders: list[Any]) -> Any:
        return execution_pb2.SubmitOrderColumnsRequest(orders=order_columns(orders))

    async def send(request: Any, account: Account) -> int:
        response = await stub.SubmitOrderColumns(request, metadata=account.metadata)
        return sum(1 for status in response.acks.status if status == execution_pb2.ORDER_STATUS_REJECTED)

    answered: list[list[float]] = []
    rate, rejected = await _measure_calls(flows, request, send, batches_per_account, batch_orders, answered)
    first = 0.0
    if 0 < first_batches <= batches_per_account:
        until = max(times[first_batches - 1] for times in answered)
        first = first_batches * batch_orders * len(flows) / until
    return rate, rejected, first


async def measure_batches(
    stub: Any, flows: Sequence[tuple[OrderFlow, Account]], *, batches_per_account: int, batch_orders: int
) -> tuple[float, int]:
    """(orders per second, rejected orders) through SubmitOrders, one call in flight per account."""
    from hftgate.v1 import execution_pb2

    def request(orders: list[Any]) -> Any:
        return execution_pb2.SubmitOrdersRequest(orders=orders)

    async def send(request: Any, account: Account) -> int:
        response = await stub.SubmitOrders(request, metadata=account.metadata)
        return sum(1 for ack in response.acks if ack.status == execution_pb2.ORDER_STATUS_REJECTED)

    return await _measure_calls(flows, request, send, batches_per_account, batch_orders)


async def _measure_calls(
    flows: Sequence[tuple[OrderFlow, Account]],
    request: Callable[[list[Any]], Any],
    send: Callable[[Any, Account], Awaitable[int]],
    batches_per_account: int,
    batch_orders: int,
    answered: list[list[float]] | None = None,
) -> tuple[float, int]:
    """(orders per second, rejected orders): ``batches_per_account`` requests of ``batch_orders``
    orders per account, built before the clock starts, sent with one call in flight per account
    (``send`` answers how many of a request's orders were rejected). ``answered``, when given,
    gets one list per account: the seconds from the start at which each of its calls was answered."""
    plans = [
        (
            account,
            [request([flow.next_order() for _ in range(batch_orders)]) for _ in range(batches_per_account)],
        )
        for flow, account in flows
    ]
    rejected = 0

    async def one_account(account: Account, requests: list[Any]) -> None:
        nonlocal rejected
        times: list[float] = []
        if answered is not None:
            answered.append(times)
        for one in requests:
            rejected += await send(one, account)
            times.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(one_account(account, requests) for account, requests in plans))
    elapsed = time.perf_counter() - start
    return batches_per_account * batch_orders * len(flows) / elapsed, rejected


async def drive_stream(
    stub: Any, account: Account, messages: Sequence[Any], *, window_inputs: int
) -> tuple[list[Any], list[Any]]:
    """Send ``messages`` on one OrderStream keeping at most ``window_inputs`` inputs unanswered.

    Returns (acks, executions) in the order they arrived. The stream ends when every input
    has its ack and the client has half-closed.
    """
    return acks_and_executions(
        await drive_stream_responses(stub, account, messages, window_inputs=window_inputs)
    )


def acks_and_executions(responses: Sequence[Any]) -> tuple[list[Any], list[Any]]:
    """The acks and the executions of OrderStream ``responses``, in the order they arrived."""
    acks: list[Any] = []
    executions: list[Any] = []
    for response in responses:
        acks.extend(response.acks)
        executions.extend(response.executions)
    return acks, executions


async def drive_stream_responses(
    stub: Any, account: Account, messages: Sequence[Any], *, window_inputs: int
) -> list[Any]:
    """:func:`drive_stream`'s run, returning the responses as they came. Nothing reads their
    entries meanwhile: a Python object per ack and per report costs this client more than the
    service spends on the order (on 2 CPUs, the client's second core is what the service lacks)."""
    total = sum(len(m.inputs) for m in messages)
    call = stub.OrderStream(metadata=account.metadata)
    responses: list[Any] = []
    answered = 0
    room = asyncio.Condition()
    outstanding = 0
    reading = True

    async def read() -> None:
        nonlocal outstanding, reading, answered
        try:
            async for response in call:
                responses.append(response)
                count = len(response.acks)
                answered += count
                async with room:
                    outstanding -= count
                    room.notify_all()
        finally:
            reading = False  # wake the writer, which may be waiting for room that will never come
            async with room:
                room.notify_all()

    reader = asyncio.create_task(read())
    try:
        for message in messages:
            size = len(message.inputs)
            async with room:
                while outstanding + size > window_inputs and reading:
                    await room.wait()
            if not reading:
                break
            outstanding += size
            await call.write(message)
        if reading:
            await call.done_writing()
        await reader
    finally:
        if not reader.done():
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    if answered < total:
        raise RuntimeError(f"OrderStream ended after {answered} of {total} acks (status {await call.code()})")
    return responses


async def measure_streams(
    stub: Any,
    flows: Sequence[tuple[OrderFlow, Account]],
    *,
    orders_per_account: int,
    message_orders: int,
    window_inputs: int,
) -> tuple[float, int]:
    """Orders per second through one OrderStream per account, ``message_orders`` orders a message."""
    from hftgate.v1 import execution_pb2

    plans = []
    for flow, account in flows:
        messages = []
        for _ in range(orders_per_account // message_orders):
            inputs = [execution_pb2.OrderInput(new_order=flow.next_order()) for _ in range(message_orders)]
            messages.append(execution_pb2.OrderStreamRequest(inputs=inputs))
        plans.append((account, messages))
    start = time.perf_counter()
    answers = await asyncio.gather(
        *(
            drive_stream_responses(stub, account, messages, window_inputs=window_inputs)
            for account, messages in plans
        )
    )
    elapsed = time.perf_counter() - start
    results = [acks_and_executions(responses) for responses in answers]
    total = sum(len(acks) for acks, _ in results)
    rejected = sum(
        1 for acks, _ in results for ack in acks if ack.status == execution_pb2.ORDER_STATUS_REJECTED
    )
    return total / elapsed, rejected


def _flood_child(address: str, api_keys: list[str], prefix: str, ready: Any, stop: Any, out: Any) -> None:
    """In a fresh (spawned) process: one OrderStream per key, each sending 100-order messages as
    fast as the server takes them and reading what comes back, until ``stop`` is set; puts the
    orders acknowledged per second on ``out``."""
    asyncio.run(_flood(address, api_keys, prefix, ready, stop, out))


async def _flood(address: str, api_keys: list[str], prefix: str, ready: Any, stop: Any, out: Any) -> None:
    import grpc

    from hftgate.v1 import execution_pb2, execution_pb2_grpc

    acked = [0] * len(api_keys)
    started = asyncio.Event()

    async def one(index: int, api_key: str) -> None:
        flow = OrderFlow(f"{prefix}f{index}-", seed=10 + index)
        templates = [
            execution_pb2.OrderStreamRequest(
                inputs=[execution_pb2.OrderInput(new_order=flow.next_order()) for _ in range(100)]
            )
            for _ in range(50)
        ]
        call = stub.OrderStream(metadata=(("x-api-key", api_key),))

        async def read() -> None:
            async for response in call:
                acked[index] += len(response.acks)
                if acked[index]:
                    started.set()

        reader = asyncio.create_task(read())
        number = 0
        try:
            while not stop.is_set():
                message = execution_pb2.OrderStreamRequest()
                message.CopyFrom(templates[number % len(templates)])
                for item in message.inputs:  # client order ids stay unique for the account
                    number += 1
                    item.new_order.client_order_id = f"{prefix}f{index}-{number}"
                await call.write(message)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass
        finally:
            call.cancel()
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        tasks = [asyncio.create_task(one(i, key)) for i, key in enumerate(api_keys)]

        async def announce() -> None:
            await started.wait()
            ready.set()

        announcer = asyncio.create_task(announce())
        while not stop.is_set():
            await asyncio.sleep(0.01)
        await asyncio.gather(*tasks, return_exceptions=True)
        announcer.cancel()
    out.put(sum(acked))


async def measure_fair_unary(
    process: ExecutionProcess, stub: Any, flow: OrderFlow, account: Account, *, samples: int
) -> tuple[np.ndarray, float]:
    """(SubmitOrder latencies of ``account``, flood orders per second) while carol and dave flood
    OrderStream from a spawned child process (see the module docstring)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # never fork a process that holds gRPC objects
    ready, stop, out = context.Event(), context.Event(), context.Queue()
    keys = [process.account("carol").api_key, process.account("dave").api_key]
    child = context.Process(
        target=_flood_child, args=(process.address, keys, run_prefix(), ready, stop, out), daemon=True
    )
    child.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.is_set():
            if not child.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the flood client did not start flooding")
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # let the floods reach their pace
        begun = time.perf_counter()
        latencies = await _unary_block(stub, [(flow, account)], samples)
        elapsed = time.perf_counter() - begun
    finally:
        stop.set()
    try:
        total = await asyncio.to_thread(out.get, True, 60)
    finally:
        child.join(30)
        if child.is_alive():
            child.kill()
    # Orders over the whole flood (it ran a little longer than the measured window).
    return latencies, float(total) / max(elapsed, 1e-9)


#: After each step of ``measure_rss_per_order`` (client paused): readings over this long, the least
#: kept as the settled figure (a snapshot's capture copy lives ~0.1 s; see rss_transient_mb_max).
RSS_SETTLE_S = 0.5
RSS_SETTLE_READINGS = 5


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (``VmRSS`` of ``/proc/<pid>/status``), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def measure_rss_per_order(
    process: ExecutionProcess, settings: RoundSettings, *, settle_s: float = RSS_SETTLE_S
) -> dict[str, float]:
    """``rss_bytes_per_order``: the service's RSS growth per accepted order after warm-up.

    Two accounts send SubmitOrders of ``batch_orders`` (the stationary :class:`OrderFlow`, so the
    book's depth does not grow), one call in flight each. After ``rss_warmup_orders`` (the order
    window and the report ring fill up and stop growing: state.py), the RSS is sampled every
    ``rss_measured_orders / 16`` orders; the figure is the least-squares slope of RSS over orders
    accepted across those samples (less sensitive to one allocator step than the two ends), with
    ``rss_mb_after_warmup``, ``rss_mb_end`` and ``rss_orders_measured`` beside it.

    The bar's figure is the instant reading right after each step, whatever the service is doing:
    a snapshot's capture (a copy of the retained orders and reports, ~50 MB at the defaults, freed
    once written) counts when a reading lands on it. Beside it, ``rss_settled_bytes_per_order`` is
    the same slope over the least reading of each pause (what the service keeps) and
    ``rss_transient_mb_max`` the largest difference between the two: growth and transient apart.
    """
    import grpc

    from hftgate.v1 import execution_pb2, execution_pb2_grpc

    if process.process is None:
        raise RuntimeError("the execution process is not running")
    pid = process.process.pid
    prefix = run_prefix() + "m"
    flows = [
        (OrderFlow(prefix + "a", seed=11), process.account("alice")),
        (OrderFlow(prefix + "b", seed=12), process.account("bob")),
    ]
    size = settings.batch_orders
    accepted = 0

    async def send(stub: Any, orders: int) -> None:
        nonlocal accepted

        async def one_account(flow: OrderFlow, account: Account, calls: int) -> None:
            nonlocal accepted
            for _ in range(calls):
                request = execution_pb2.SubmitOrdersRequest(orders=[flow.next_order() for _ in range(size)])
                response = await stub.SubmitOrders(request, metadata=account.metadata)
                accepted += sum(1 for a in response.acks if a.status != execution_pb2.ORDER_STATUS_REJECTED)

        calls = max(1, orders // (size * len(flows)))
        await asyncio.gather(*(one_account(flow, account, calls) for flow, account in flows))

    samples: list[tuple[int, int, int]] = []

    async def sample() -> None:
        # The instant reading (the bar's figure) and, with the client paused, the least of
        # readings over settle_s: what the service keeps, without a transient in progress.
        now = rss_bytes(pid)
        least = now
        for _ in range(RSS_SETTLE_READINGS):
            await asyncio.sleep(settle_s / RSS_SETTLE_READINGS)
            least = min(least, rss_bytes(pid))
        samples.append((accepted, now, least))

    async with grpc.aio.insecure_channel(process.address, options=CHANNEL_OPTIONS) as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        await send(stub, settings.rss_warmup_orders)
        steps = 16
        await sample()
        for _ in range(steps):
            await send(stub, settings.rss_measured_orders // steps)
            await sample()
    orders = np.array([o for o, _, _ in samples], np.float64)
    rss = np.array([r for _, r, _ in samples], np.float64)
    settled = np.array([r for _, _, r in samples], np.float64)
    measured = orders[-1] > orders[0]
    slope = float(np.polyfit(orders, rss, 1)[0]) if measured else float("nan")
    settled_slope = float(np.polyfit(orders, settled, 1)[0]) if measured else float("nan")
    return {
        "rss_bytes_per_order": round(slope, 2),
        "rss_bytes_per_order_ends": round((rss[-1] - rss[0]) / max(1.0, orders[-1] - orders[0]), 2),
        "rss_settled_bytes_per_order": round(settled_slope, 2),
        "rss_transient_mb_max": round(float(np.max(rss - settled)) / 2**20, 1),
        "rss_mb_after_warmup": round(rss[0] / 2**20, 1),
        "rss_mb_end": round(rss[-1] / 2**20, 1),
        "rss_orders_measured": int(orders[-1] - orders[0]),
    }


def _latency_ms(summary: Any) -> float:
    return _ms(summary.p50_ns)


@dataclass
class RoundSettings:
    """How much of each measurement one round makes (orders per account where it says so)."""

    unary_samples: int = 3000
    unary_block: int = 250
    batch_orders: int = 1000
    batches_per_account: int = 40
    columns_orders: int = 10_000
    columns_batches_per_account: int = 40
    columns_first_batches: int = 8
    stream_orders_per_account: int = 50_000
    stream_message_orders: int = 100
    stream_window_inputs: int = 2_000
    stream_single_orders_per_account: int = 5_000
    stream_single_window_inputs: int = 64
    fair_unary_samples: int = 1000
    #: ``rss_bytes_per_order`` (measured once per run, in a process of its own): orders sent before
    #: the first RSS sample, and orders over which the growth is measured (0 = not measured).
    rss_warmup_orders: int = 500_000
    rss_measured_orders: int = 2_000_000


async def _one_round(
    process: ExecutionProcess, floors: FloorTargets, settings: RoundSettings
) -> dict[str, float]:
    import grpc

    from hftgate.bench.floors import GrpcEcho, TcpPingPong
    from hftgate.v1 import execution_pb2, execution_pb2_grpc

    prefix = run_prefix()
    alice, bob = process.account("alice"), process.account("bob")
    flows = [(OrderFlow(prefix + "a", seed=1), alice), (OrderFlow(prefix + "b", seed=2), bob)]
    fsync = FsyncProbe(process.journal_dir)
    result: dict[str, float] = {}
    async with grpc.aio.insecure_channel(process.address, options=CHANNEL_OPTIONS) as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        echo = GrpcEcho(floors.echo)
        durable_echo = GrpcEcho(floors.durable_echo)
        plain_echo = GrpcEcho(floors.plain_echo)
        try:
            with TcpPingPong(floors.tcp) as tcp:
                tcp.round_trips_ns(200)
                unary = await measure_unary_with_floors(
                    stub,
                    flows,
                    echo,
                    tcp,
                    fsync,
                    durable_echo,
                    plain_echo,
                    samples=settings.unary_samples,
                    block=settings.unary_block,
                )
        finally:
            await echo.close()
            await durable_echo.close()
            await plain_echo.close()
            fsync.close()
        stats = await stub.GetStats(execution_pb2.GetStatsRequest(), metadata=process.admin_metadata())
        service_fsync_ms = _latency_ms(stats.journal_fsync_latency)
        result.update(
            unary_p50_ms=_ms(np.median(unary.unary_ns)),
            unary_p99_ms=_ms(np.percentile(unary.unary_ns, 99)),
            grpc_echo_p50_ms=_ms(np.median(unary.echo_ns)),
            grpc_plain_echo_p50_ms=_ms(np.median(unary.plain_echo_ns)),
            auth_overhead_us=float(np.median(unary.echo_ns) - np.median(unary.plain_echo_ns)) / 1e3,
            tcp_floor_p50_ms=_ms(np.median(unary.tcp_ns)),
            fsync_p50_ms=_ms(np.median(unary.fsync_ns)),
            unary_overhead_ms=_ms(
                np.median(unary.unary_ns) - np.median(unary.echo_ns) - np.median(unary.fsync_ns)
            ),
            unary_overhead_paired_ms=_ms(np.median(unary.block_overhead_ns)),
            fsync_spaced_p50_ms=_ms(np.median(unary.fsync_spaced_ns)),
            unary_overhead_spaced_ms=_ms(
                np.median(unary.unary_ns) - np.median(unary.echo_ns) - np.median(unary.fsync_spaced_ns)
            ),
            grpc_durable_echo_p50_ms=_ms(np.median(unary.durable_echo_ns)),
            unary_logic_ms=_ms(np.median(unary.unary_ns) - np.median(unary.durable_echo_ns)),
            durable_ack_overhead_ms=_ms(
                np.median(unary.durable_echo_ns) - np.median(unary.echo_ns) - np.median(unary.fsync_ns)
            ),
            unary_service_total_p50_ms=_latency_ms(stats.total_latency),
            unary_service_risk_p50_ms=_latency_ms(stats.risk_latency),
            unary_service_match_p50_ms=_latency_ms(stats.match_latency),
            unary_service_journal_p50_ms=_latency_ms(stats.journal_latency),
            unary_service_ack_p50_ms=_latency_ms(stats.ack_latency),
            unary_service_fsync_p50_ms=service_fsync_ms,
            unary_overhead_service_fsync_ms=_ms(np.median(unary.unary_ns) - np.median(unary.echo_ns))
            - service_fsync_ms,
        )
        rate, rejected = await measure_batches(
            stub, flows, batches_per_account=settings.batches_per_account, batch_orders=settings.batch_orders
        )
        result.update(batch_orders_per_s=rate, batch_rejected=rejected)
        admin = process.admin_metadata()
        before = await stub.GetStats(execution_pb2.GetStatsRequest(), metadata=admin)
        rate, rejected, first = await measure_columns(
            stub,
            flows,
            batches_per_account=settings.columns_batches_per_account,
            batch_orders=settings.columns_orders,
            first_batches=settings.columns_first_batches,
        )
        after = await stub.GetStats(execution_pb2.GetStatsRequest(), metadata=admin)
        result.update(
            columns_orders_per_s=rate,
            columns_rejected=rejected,
            columns_first_orders_per_s=first,
            columns_snapshots=after.snapshots_taken - before.snapshots_taken,
        )
        rate, rejected = await measure_streams(
            stub,
            flows,
            orders_per_account=settings.stream_orders_per_account,
            message_orders=settings.stream_message_orders,
            window_inputs=settings.stream_window_inputs,
        )
        result.update(stream_orders_per_s=rate, stream_rejected=rejected)
        rate, rejected = await measure_streams(
            stub,
            flows,
            orders_per_account=settings.stream_single_orders_per_account,
            message_orders=1,
            window_inputs=settings.stream_single_window_inputs,
        )
        result.update(stream_single_orders_per_s=rate, stream_single_rejected=rejected)
        fair, flood_rate = await measure_fair_unary(
            process, stub, OrderFlow(prefix + "u", seed=3), alice, samples=settings.fair_unary_samples
        )
        result.update(
            fair_unary_p50_ms_under_flood=_ms(np.median(fair)),
            fair_unary_p99_ms_under_flood=_ms(np.percentile(fair, 99)),
            fair_flood_orders_per_s=flood_rate,
        )
        stats = await stub.GetStats(execution_pb2.GetStatsRequest(), metadata=process.admin_metadata())
        if stats.journal_fsyncs:
            result["journal_records_per_fsync"] = stats.journal_records / stats.journal_fsyncs
    return result


@dataclass(frozen=True)
class FloorTargets:
    echo: str
    tcp: str
    durable_echo: str
    plain_echo: str


@contextlib.contextmanager
def _floor_servers() -> Iterator[FloorTargets]:
    from hftgate.bench.floors import floor_server

    with (
        tempfile.TemporaryDirectory(prefix="hftgate-bench-durable-echo-") as journal_dir,
        # Placed as the execution service places its threads (see floor_server).
        floor_server("grpc", placed=True) as echo_target,
        floor_server("tcp") as tcp_target,
        floor_server("grpc-journal", journal_dir, placed=True) as durable_target,
        floor_server("grpc", placed=True, auth=False) as plain_target,
    ):
        yield FloorTargets(echo_target, tcp_target, durable_target, plain_target)


def run(repeats: int = 3, *, settings: RoundSettings | None = None) -> dict[str, float | int | bool]:
    """Run ``repeats`` rounds (fresh server and state each) and report medians; see the module docstring."""
    settings = settings or RoundSettings()
    rounds: list[dict[str, float]] = []
    with _floor_servers() as floors:
        for _ in range(max(1, repeats)):
            with (
                tempfile.TemporaryDirectory(prefix="hftgate-bench-execution-") as tmp,
                ExecutionProcess(Path(tmp)) as process,
            ):
                process.start()
                rounds.append(asyncio.run(_one_round(process, floors, settings)))
                code = process.stop()
                if code != 0:
                    raise RuntimeError(f"execution service exited with {code}:\n{process.log_tail()}")
    out: dict[str, float | int | bool] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if key in r]
        median = statistics.median(values)
        out[key] = round(median, 4) if isinstance(median, float) else median
        if key.endswith(("_p50_ms", "_per_s")) and not key.startswith("unary_service") and median:
            out[f"{key}_spread"] = round((max(values) - min(values)) / median, 3)
    # The overhead is taken per round (figure and floors from the same minutes), then the median.
    out["unary_bar_holds"] = float(out["unary_overhead_ms"]) <= UNARY_OVERHEAD_MS_BAR
    out["batch_bar_holds"] = float(out["batch_orders_per_s"]) >= BATCH_ORDERS_PER_S_BAR
    out["columns_bar_holds"] = float(out["columns_orders_per_s"]) >= COLUMNS_ORDERS_PER_S_BAR
    out["stream_bar_holds"] = float(out["stream_orders_per_s"]) >= STREAM_ORDERS_PER_S_BAR
    # Per round (figure and reference from the same minutes), then the median of the ratios.
    ratios = [r["fair_unary_p99_ms_under_flood"] / r["unary_p99_ms"] for r in rounds if r.get("unary_p99_ms")]
    out["fair_unary_p99_ratio"] = round(statistics.median(ratios), 3) if ratios else float("nan")
    out["fair_bar_holds"] = bool(ratios) and statistics.median(ratios) <= FAIR_UNARY_P99_RATIO_BAR
    if settings.rss_measured_orders > 0:
        with (
            tempfile.TemporaryDirectory(prefix="hftgate-bench-execution-rss-") as tmp,
            ExecutionProcess(Path(tmp)) as process,
        ):
            process.start()
            out.update(asyncio.run(measure_rss_per_order(process, settings)))
            process.stop()
        out["rss_bar_holds"] = float(out["rss_bytes_per_order"]) <= RSS_BYTES_PER_ORDER_BAR
    out["repeats"] = len(rounds)
    return out
