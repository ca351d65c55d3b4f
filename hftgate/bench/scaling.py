"""``hftgate bench scaling``: the scaler meeting a load step and a square wave, with local processes.

The suite: a gateway and the scaler as ``hftgate up`` starts them (hftgate.supervisor), and market
data replicas that the scaler starts itself (its local-process back end); every call goes through
the gateway, which follows the scaler's ``WatchReplicas``. The load is GetSnapshot from this
process, open loop (a fixed arrival rate, at most ``max_outstanding`` calls in flight).

- ``capacity_calls_per_s``: one replica's capacity, measured first by a short closed-loop ramp
  (1, 2, 4, ... calls in flight; the best throughput of the ramp). Everything below is in its units,
  so the figures hold on a slow or loaded machine alike.
- The scaler keeps ``warm_replicas`` (1) replica started in reserve (STANDBY, no calls, not
  counted): a scale-up claims it at once and a replacement starts (services/scaler/app.py). Without
  it a step waits for a process's cold start, which ``replica_cold_start_s`` measures (the first
  replica's, from the policy to its first call through the gateway): several seconds on a loaded
  2-core machine, the floor of any scaler that starts processes on demand.
- The policy: market data on requests/s (``orders_per_s``, which is requests/s for a service
  without orders) with a target of half the capacity, the scaler evaluating every 500 ms.
- The step, from 10% to 300% of the capacity: ``step_to_decision_s`` (to the first scale-up
  decision), ``step_to_serving_s`` (to the first report of a new replica, READY, that took at
  least :data:`SERVING_CALLS` calls through the gateway: an upper bound, the report comes at the
  end of the interval in which it took them), ``decision_to_serving_s`` (their difference: mostly
  a replica's start-up, the floor of any scaler), ``replicas_before``, ``replicas_after`` (READY
  replicas), ``errors`` (failed calls over the step, and over the square wave below).
- A square wave between 10% and 300% over ``square_periods`` periods: ``scale_downs_per_window``,
  the most scale-downs in any window of the policy's scale-down stabilisation (flapping), with
  ``square_scale_downs`` and ``square_scale_ups`` over the whole wave.

- A symbol moved from one execution shard to another and back (scaling up, then down) under
  ~1,000 orders/s (:mod:`hftgate.bench.moves`, also ``hftgate bench moves`` alone):
  ``move_pause_max_ms`` (the longest any order of the symbol waited or was turned away, over both
  moves, with ``move_pause_p50_ms`` as the same run's floor), ``lost_acked``, ``duplicate_fills``,
  ``books_match``, and ``move_errors`` (calls that failed); ``move_back_window_ms`` and
  ``orders_moved_back`` for the way back.

Bars: ``step_to_serving_s`` <= 5, ``errors`` = 0, ``replicas_after`` > ``replicas_before``,
``scale_downs_per_window`` <= 1, ``move_pause_max_ms`` <= 100, ``lost_acked`` = 0,
``duplicate_fills`` = 0, ``books_match``; each as ``<name>_bar_holds``, and ``bars_hold``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from hftgate.security import SERVICE_TOKEN_METADATA, load_suite_secret
from hftgate.v1 import marketdata_pb2, marketdata_pb2_grpc, scaler_pb2, scaler_pb2_grpc

#: A new replica serves once one of its reports shows at least this many calls in its interval
#: (more than the scaler's own health checks while it started).
SERVING_CALLS = 10
STEP_LOW_FRACTION = 0.1
STEP_HIGH_FRACTION = 3.0
BAR_STEP_TO_SERVING_S = 5.0
BAR_SCALE_DOWNS_PER_WINDOW = 1
BAR_MOVE_PAUSE_MAX_MS = 100.0
CALL_TIMEOUT_S = 10.0

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ScalingSettings:
    """Durations of one round (the smoke test shrinks them)."""

    ramp_levels: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    ramp_level_s: float = 1.0
    low_s: float = 3.0
    step_timeout_s: float = 20.0
    #: After the new replica serves, the step load goes on this long (replicas_after is then read).
    after_serving_s: float = 2.0
    square_periods: int = 10
    square_period_s: float = 3.0
    #: The policy's scale-down stabilisation window: the window scale_downs_per_window counts in.
    scale_down_window_ms: int = 6_000
    max_replicas: int = 3
    warm_replicas: int = 1
    max_outstanding: int = 256
    evaluation_interval_ms: int = 500
    report_interval_ms: int = 250
    startup_timeout_s: float = 60.0


@dataclass
class LoadStats:
    ok: int = 0
    errors: int = 0
    codes: Counter[str] = field(default_factory=Counter)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Load:
    """GetSnapshot through the gateway, closed or open loop."""

    def __init__(
        self, stub: marketdata_pb2_grpc.MarketDataServiceStub, metadata: Metadata, max_outstanding: int
    ):
        self.stub = stub
        self.metadata = metadata
        self.slots = asyncio.Semaphore(max_outstanding)
        self.request = marketdata_pb2.GetSnapshotRequest()

    async def call(self, stats: LoadStats) -> None:
        try:
            await self.stub.GetSnapshot(self.request, metadata=self.metadata, timeout=CALL_TIMEOUT_S)
            stats.ok += 1
        except grpc.aio.AioRpcError as err:
            stats.errors += 1
            stats.codes[err.code().name] += 1

    async def closed_loop(self, concurrency: int, duration_s: float) -> float:
        """Calls per second with ``concurrency`` calls always in flight."""
        stats = LoadStats()
        deadline = time.monotonic() + duration_s

        async def worker() -> None:
            while time.monotonic() < deadline:
                await self.call(stats)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return stats.ok / max(time.monotonic() - started, 1e-9)

    async def open_loop(self, rate: Callable[[float], float], duration_s: float, stats: LoadStats) -> None:
        """Calls at ``rate(seconds since start)`` per second for ``duration_s``; past
        ``max_outstanding`` in flight the schedule waits (the backlog is the client's)."""
        tasks: set[asyncio.Task[None]] = set()
        started = time.monotonic()
        due = 0.0
        last = started
        tick_s = 0.005
        while (now := time.monotonic()) - started < duration_s:
            due += rate(now - started) * (now - last)
            last = now
            while due >= 1.0:
                due -= 1.0
                await self.slots.acquire()
                task = asyncio.get_running_loop().create_task(self._slotted(stats))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(tick_s)
        if tasks:
            await asyncio.gather(*tasks)

    async def _slotted(self, stats: LoadStats) -> None:
        try:
            await self.call(stats)
        finally:
            self.slots.release()


class ScalerView:
    """The bench's admin view of the scaler."""

    def __init__(self, stub: scaler_pb2_grpc.ScalerServiceStub, metadata: Metadata) -> None:
        self.stub = stub
        self.metadata = metadata

    async def set_policy(self, **fields: Any) -> None:
        policy = scaler_pb2.ScalingPolicy(service="marketdata", **fields)
        await self.stub.SetPolicy(
            scaler_pb2.SetPolicyRequest(policy=policy), metadata=self.metadata, timeout=5
        )

    async def replicas(self) -> list[scaler_pb2.Replica]:
        reply = await self.stub.ListReplicas(
            scaler_pb2.ListReplicasRequest(service="marketdata"), metadata=self.metadata, timeout=5
        )
        return list(reply.replicas)

    async def ready(self) -> list[scaler_pb2.Replica]:
        return [r for r in await self.replicas() if r.state == scaler_pb2.REPLICA_STATE_READY]

    async def warm(self) -> list[scaler_pb2.Replica]:
        """Warm replicas that have started (an address) and reported."""
        return [
            r
            for r in await self.replicas()
            if r.state == scaler_pb2.REPLICA_STATE_STANDBY and r.address and r.last_report_ns
        ]

    async def decisions(self, since_ns: int) -> list[scaler_pb2.ScalingDecision]:
        reply = await self.stub.GetDecisions(
            scaler_pb2.GetDecisionsRequest(service="marketdata", since_ns=since_ns),
            metadata=self.metadata,
            timeout=5,
        )
        return sorted(reply.decisions, key=lambda d: d.decided_ns)


def most_in_window(times_ns: list[int], window_ms: int) -> int:
    """The most of ``times_ns`` inside any window of ``window_ms``."""
    ordered = sorted(times_ns)
    worst = 0
    for index, start in enumerate(ordered):
        worst = max(worst, sum(1 for t in ordered[index:] if t < start + window_ms * 1_000_000))
    return worst


async def _wait(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench scaling: {what} within {timeout_s:g} s")
        await asyncio.sleep(0.1)


async def _round(
    gateway: str, scaler: str, env: dict[str, str], settings: ScalingSettings
) -> dict[str, float | int]:
    secret = load_suite_secret(env)
    admin: Metadata = ((SERVICE_TOKEN_METADATA, secret.token_for("admin")),)
    reader: Metadata = ((SERVICE_TOKEN_METADATA, secret.token_for("feed")),)
    async with (
        grpc.aio.insecure_channel(gateway) as gw_channel,
        grpc.aio.insecure_channel(scaler) as sc_channel,
    ):
        view = ScalerView(scaler_pb2_grpc.ScalerServiceStub(sc_channel), admin)
        load = Load(marketdata_pb2_grpc.MarketDataServiceStub(gw_channel), reader, settings.max_outstanding)
        common = {
            "metric": scaler_pb2.SCALING_METRIC_ORDERS_PER_S,
            "evaluation_interval_ms": settings.evaluation_interval_ms,
            "scale_down_stabilization_ms": settings.scale_down_window_ms,
            "panic_hold_ms": settings.scale_down_window_ms,
        }
        # One replica, held at one, while its capacity is measured.
        cold_started = time.monotonic()
        await view.set_policy(min_replicas=1, max_replicas=1, target_value=1e9, **common)

        async def one_serving() -> bool:
            if len(await view.ready()) != 1:
                return False
            probe = LoadStats()
            await load.call(probe)
            return probe.ok == 1

        await _wait(
            one_serving, settings.startup_timeout_s, "no market data replica served through the gateway"
        )
        cold_start_s = time.monotonic() - cold_started

        async def warm_ready() -> bool:
            return len(await view.warm()) >= settings.warm_replicas

        # The warm replicas start before the ramp, so their start-up does not take its CPU.
        await _wait(warm_ready, settings.startup_timeout_s, "the warm replicas did not start")
        levels = [await load.closed_loop(c, settings.ramp_level_s) for c in settings.ramp_levels]
        capacity = max(levels)
        knee = next(c for c, v in zip(settings.ramp_levels, levels, strict=True) if v >= 0.9 * capacity)
        low_rate, high_rate = STEP_LOW_FRACTION * capacity, STEP_HIGH_FRACTION * capacity

        # 10% of capacity on one replica, long enough for the reports to forget the ramp; only
        # then may the policy scale (else the ramp's load would make the first decision).
        stats = LoadStats()
        report_s = settings.report_interval_ms / 1000
        await load.open_loop(lambda _: low_rate, max(settings.low_s, 3 * report_s), stats)
        await view.set_policy(
            min_replicas=1, max_replicas=settings.max_replicas, target_value=0.5 * capacity, **common
        )
        await load.open_loop(lambda _: low_rate, 2 * settings.evaluation_interval_ms / 1000, stats)
        before = await view.ready()
        before_ids = {r.replica_id for r in before}

        # The step to 300%.
        step_ns = time.time_ns()
        step_task = asyncio.get_running_loop().create_task(
            load.open_loop(lambda _: high_rate, settings.step_timeout_s + settings.after_serving_s, stats)
        )
        decision_s = serving_s = math.nan
        deadline = time.monotonic() + settings.step_timeout_s
        while time.monotonic() < deadline and (math.isnan(decision_s) or math.isnan(serving_s)):
            await asyncio.sleep(0.1)
            if math.isnan(decision_s):
                ups = [
                    d for d in await view.decisions(step_ns) if d.action == scaler_pb2.SCALING_ACTION_SCALE_UP
                ]
                if ups:
                    decision_s = (ups[0].decided_ns - step_ns) / 1e9
            if math.isnan(serving_s):
                for replica in await view.ready():
                    calls = replica.last_metrics.requests_per_s * replica.last_metrics.interval_ms / 1000
                    if replica.replica_id not in before_ids and calls >= SERVING_CALLS:
                        serving_s = (replica.last_report_ns - step_ns) / 1e9
                        break
        if not math.isnan(serving_s):
            await asyncio.sleep(settings.after_serving_s)
        after = await view.ready()
        step_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await step_task

        # The square wave: high and low halves, starting low after the step.
        half = settings.square_period_s / 2
        square_ns = time.time_ns()
        square = LoadStats()
        await load.open_loop(
            lambda t: high_rate if int(t // half) % 2 == 1 else low_rate,
            settings.square_periods * settings.square_period_s,
            square,
        )
        applied = [d for d in await view.decisions(square_ns) if d.applied]
        downs: list[int] = [d.decided_ns for d in applied if d.action == scaler_pb2.SCALING_ACTION_SCALE_DOWN]
        scale_ups: list[int] = [
            d.decided_ns for d in applied if d.action == scaler_pb2.SCALING_ACTION_SCALE_UP
        ]
    return {
        "capacity_calls_per_s": capacity,
        "replica_cold_start_s": cold_start_s,
        "warm_replicas": settings.warm_replicas,
        "capacity_concurrency": knee,
        "step_low_calls_per_s": low_rate,
        "step_high_calls_per_s": high_rate,
        "step_to_decision_s": decision_s,
        "step_to_serving_s": serving_s,
        "decision_to_serving_s": serving_s - decision_s,
        "replicas_before": len(before),
        "replicas_after": len(after),
        "step_errors": stats.errors,
        "square_errors": square.errors,
        "errors": stats.errors + square.errors,
        "scale_downs_per_window": most_in_window(downs, settings.scale_down_window_ms),
        "square_scale_downs": len(downs),
        "square_scale_ups": len(scale_ups),
    }


def measure(settings: ScalingSettings | None = None) -> dict[str, float | int]:
    """One round on a fresh suite (a gateway, the scaler, its market data replicas) in a temporary
    state directory; everything it started is stopped before it returns."""
    from hftgate.supervisor import ALL_SERVICES, prepare_suite_env, start_services, stop_services

    settings = settings or ScalingSettings()
    with tempfile.TemporaryDirectory(prefix="hftgate-bench-scaling-") as tmp:
        env = dict(os.environ)
        gateway_port, scaler_port = _free_port(), _free_port()
        env.update(
            {
                "HFTGATE_STATE_DIR": tmp,
                "HFTGATE_GATEWAY_PORT": str(gateway_port),
                "HFTGATE_SCALER_PORT": str(scaler_port),
                "HFTGATE_GATEWAY_METRICS_PORT": "0",
                "HFTGATE_SCALER_METRICS_PORT": "0",
                "HFTGATE_SCALER_STATE_DIR": str(Path(tmp) / "scaler"),
                # The bench's own replicas only: none runs before the scaler starts one.
                "HFTGATE_SCALER_DISCOVERY_MS": "0",
                "HFTGATE_SCALER_EVALUATION_INTERVAL_MS": str(settings.evaluation_interval_ms),
                "HFTGATE_SCALER_REPORT_INTERVAL_MS": str(settings.report_interval_ms),
                "HFTGATE_SCALER_DRAIN_MS": "500",
                "HFTGATE_SCALER_WARM_REPLICAS": str(settings.warm_replicas),
                "HFTGATE_SCALER_STARTUP_TIMEOUT_S": str(settings.startup_timeout_s),
            }
        )
        env.pop("HFTGATE_SCALER_POLICIES", None)  # the bench sets its own, over the wire
        env = prepare_suite_env(env)
        specs = [s for s in ALL_SERVICES if s.name in ("gateway", "scaler")]
        running = start_services(specs, env=env, startup_timeout_s=settings.startup_timeout_s)
        try:
            return asyncio.run(_round(f"127.0.0.1:{gateway_port}", f"127.0.0.1:{scaler_port}", env, settings))
        finally:
            stop_services(running, grace_s=15)


def with_bars(result: dict[str, float | int]) -> dict[str, float | int | bool]:
    out: dict[str, float | int | bool] = dict(result)
    serving = float(result["step_to_serving_s"])
    out["step_to_serving_s_bar_holds"] = not math.isnan(serving) and serving <= BAR_STEP_TO_SERVING_S
    out["errors_bar_holds"] = result["errors"] == 0
    out["replicas_after_bar_holds"] = result["replicas_after"] > result["replicas_before"]
    out["scale_downs_per_window_bar_holds"] = result["scale_downs_per_window"] <= BAR_SCALE_DOWNS_PER_WINDOW
    if "move_pause_max_ms" in result:
        out["move_pause_max_ms_bar_holds"] = float(result["move_pause_max_ms"]) <= BAR_MOVE_PAUSE_MAX_MS
        out["lost_acked_bar_holds"] = result["lost_acked"] == 0
        out["duplicate_fills_bar_holds"] = result["duplicate_fills"] == 0
        out["books_match_bar_holds"] = bool(result["books_match"])
    out["bars_hold"] = all(bool(v) for k, v in out.items() if k.endswith("_bar_holds"))
    return out


#: The symbol-move figures ``run`` takes from :func:`hftgate.bench.moves.run`, by the names they
#: get here (the move's failed calls are not the load step's ``errors``).
MOVE_KEYS = {
    "move_pause_max_ms": "move_pause_max_ms",
    "move_pause_p50_ms": "move_pause_p50_ms",
    "move_window_ms": "move_window_ms",
    "move_back_window_ms": "move_back_window_ms",
    "orders_moved_back": "orders_moved_back",
    "lost_acked": "lost_acked",
    "duplicate_fills": "duplicate_fills",
    "books_match": "books_match",
    "errors": "move_errors",
}


def run(
    repeats: int = 1, settings: ScalingSettings | None = None, *, moves: bool = True
) -> dict[str, float | int | bool]:
    """Every figure of the module docstring: medians over ``repeats`` rounds (a fresh suite each),
    except counts of failures and the worst flapping, which are the worst round's; with ``moves``,
    the symbol move's figures (the worst of ``repeats`` moves)."""
    rounds = [measure(settings) for _ in range(max(1, repeats))]
    merged: dict[str, float | int] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds]
        if key in ("errors", "step_errors", "square_errors", "scale_downs_per_window", "square_scale_downs"):
            merged[key] = max(values)
        elif key == "replicas_after":
            merged[key] = min(values)
        elif key == "replicas_before":
            merged[key] = max(values)
        elif key == "step_to_serving_s":
            merged[key] = max(values, key=lambda v: math.inf if math.isnan(v) else v)
        else:
            merged[key] = statistics.median(values)
    merged["rounds"] = len(rounds)
    if moves:
        from hftgate.bench import moves as move_bench

        moved = move_bench.run(repeats)
        for source, name in MOVE_KEYS.items():
            merged[name] = moved[source]
    return with_bars(merged)
