"""``hftgate bench e2e``: open-loop orders end to end, to two execution shards with the durable journal.

A fresh suite per run (:class:`hftgate.bench.gateway.ShardedSuite`: two ``python -m
services.execution`` shards, each with its own durable journal, BTCUSDT pinned to shard 0 and
ETHUSDT to shard 1, the Python gateway as a process and, for ``--via haproxy``, HAProxy; on a machine
of at most four CPUs the shards neither pin nor busy-poll: :func:`shard_settings`), then the
open-loop generator of ``loadtest/open_loop.py`` at ``rate`` orders a second for ``duration_s``:
every order's send time is fixed in advance and its latency counted from that intended time, so
a stall counts against every order due during it (no coordinated omission). Orders alternate the
two symbols (so the shards) and the four demo accounts.

``via`` picks the path:

- ``direct``: each order straight to the shard that owns its symbol (no routing hop);
- ``client``: :class:`hftgate.client.HftgateClient`, the routing client (map from the gateway,
  each order sent to its owner by the client itself);
- ``gateway``: through the Python gateway, which checks the key and forwards to the owner;
- ``haproxy``: through HAProxy, routing by the ``x-hftgate-symbol`` header (needs Debian's
  ``haproxy``; :class:`HaproxyUnavailable` says so when it is missing).

With ``batch_per_ms`` the orders due at each wake-up of the sender (about a millisecond's worth)
go out as one SubmitOrders call, as a client bursting thousands of orders a second would.

Reported: ``rate``, ``duration_s``, ``sent``, ``acked`` (answered and accepted), ``rejected``
(answered with a rejection), ``errors`` (calls that failed, and orders the generator had to shed
because too many calls were open), ``mean_ms``, ``p50_ms``, ``p95_ms``, ``p99_ms``, ``p999_ms``,
``jitter_ms`` (the standard deviation), ``max_ms``, ``acked_ratio`` (acked / sent),
``throughput_ratio`` (answers per second over the rate asked for), the sender's own lag
(``send_lag_p99_ms``: when it grows, this client and not the suite is the bottleneck), and the floors measured
right after in the same run (:mod:`hftgate.bench.floors`): ``grpc_echo_p50_ms`` (an empty gRPC call on the
services' stack) and ``tcp_floor_p50_ms`` (a loopback TCP ping-pong); ``p50_over_echo`` and
``p99_over_echo`` relate the figures to the floor, so runs on different machines compare.

Bars (issue 16), each as ``<name>_bar_holds`` and all as ``bars_hold``: sustained (no batching):
``mean_ms`` < 20, ``p95_ms`` < 30, ``p99_ms`` < 50, ``p999_ms`` < 100, ``jitter_ms`` < 5, ``errors``
0 and ``acked`` = ``sent``; a burst (``batch_per_ms``): ``acked`` = ``sent`` and ``p99_ms`` < 50.
The bars are stated for ``--rate 1000 --duration 60 --via gateway`` and ``--rate 5000 --duration 10
--batch-per-ms``; on a shared machine the figures are noisy, so report them beside the floors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from hftgate.bench.execution import DEMO_ACCOUNTS
from hftgate.bench.floors import grpc_echo_p50_ms, tcp_floor_p50_ms
from hftgate.bench.gateway import BENCH_PINS, MID_PRICE_TICKS, ShardedSuite
from hftgate.grpcserver import CHANNEL_OPTIONS
from loadtest.open_loop import OpenLoopReport, OpenLoopSettings, OrderPlane, StubPlane, run_open_loop
from services.gateway.haproxy import haproxy_binary

VIAS = ("direct", "client", "gateway", "haproxy")
#: Bounds of one run: the generator holds every order's timing in memory only as histograms, but
#: a run still sends real orders into real journals.
MAX_RATE_PER_S = 20_000.0
MAX_DURATION_S = 600.0
#: Calls open at once before the generator sheds orders (counted as errors).
MAX_IN_FLIGHT = 5_000
CALL_DEADLINE_S = 5.0
FLOOR_SAMPLES = 2_000

# The bars of issue 16 (ms), for a sustained run and for a burst.
SUSTAINED_BARS_MS = {"mean_ms": 20.0, "p95_ms": 30.0, "p99_ms": 50.0, "p999_ms": 100.0, "jitter_ms": 5.0}
BURST_BARS_MS = {"p99_ms": 50.0}


#: Two shards, the gateway and this client want a core each; on a smaller machine pinned loops and
#: busy-polling journal acks would make them fight over the same cores, so each process is left to
#: the scheduler (the settings the suite's own tests use on a 2-CPU machine).
SHARED_MACHINE_CPUS = 4
SHARED_MACHINE_SHARD_SETTINGS = {"loop_cpus": "off", "journal_writer_cpus": "off", "journal_ack_poll_us": "0"}


def shard_settings(cpus: int | None = None) -> dict[str, str]:
    """Extra ``HFTGATE_EXECUTION_*`` settings of the shards on a machine with ``cpus`` CPUs."""
    cpus = (os.cpu_count() or 1) if cpus is None else cpus
    return dict(SHARED_MACHINE_SHARD_SETTINGS) if cpus <= SHARED_MACHINE_CPUS else {}


class HaproxyUnavailable(RuntimeError):
    """``--via haproxy`` without HAProxy installed."""


class ClientPlane:
    """The routing client: one :class:`~hftgate.client.HftgateClient` per account (each holds its
    account's key), each sending every order straight to the shard that owns its symbol."""

    def __init__(self, clients: Sequence[Any]) -> None:
        self._clients = list(clients)

    async def submit(self, order: Any, account: int, timeout_s: float) -> Any:
        return await self._clients[account].submit(order, timeout=timeout_s)

    async def submit_many(self, orders: Sequence[Any], account: int, timeout_s: float) -> list[Any]:
        from hftgate.client import BatchError

        try:
            return list(await self._clients[account].submit_many(orders, timeout=timeout_s))
        except BatchError as partial:
            # The parts that failed have no ack; name their failure by the first error's code.
            code = partial.errors[0].code()
            return [ack if ack is not None else code for ack in partial.acks]


def check_arguments(rate: float, duration_s: float, via: str) -> None:
    """ValueError saying what is wrong with a run's arguments; HaproxyUnavailable for ``haproxy``
    without HAProxy."""
    if via not in VIAS:
        raise ValueError(f"--via must be one of {', '.join(VIAS)}, not {via!r}")
    if not 0 < rate <= MAX_RATE_PER_S:
        raise ValueError(f"--rate must be above 0 and at most {MAX_RATE_PER_S:g} orders/s, not {rate:g}")
    if not 0 < duration_s <= MAX_DURATION_S:
        raise ValueError(f"--duration must be above 0 and at most {MAX_DURATION_S:g} s, not {duration_s:g}")
    if via == "haproxy" and haproxy_binary() is None:
        raise HaproxyUnavailable(
            "--via haproxy is not available: HAProxy is not installed (apt-get install -y haproxy)"
        )


@contextlib.asynccontextmanager
async def _plane(suite: ShardedSuite, via: str, api_keys: Sequence[str]) -> AsyncIterator[OrderPlane]:
    import grpc

    from hftgate.client import HftgateClient

    if via == "client":
        clients = [await HftgateClient(suite.gateway_address, api_key=key).start() for key in api_keys]
        try:
            for client in clients:
                if client.shard_map is None or client.shard_map.epoch != suite.shard_map.epoch:
                    raise RuntimeError(f"the routing client did not get the shard map ({client.shard_map})")
            yield ClientPlane(clients)
        finally:
            for client in clients:
                await client.close()
        return
    channels: dict[str, grpc.aio.Channel] = {}

    def channel_for(address: str) -> grpc.aio.Channel:
        if address not in channels:
            channels[address] = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        return channels[address]

    if via == "direct":
        owners = {symbol: suite.owner(symbol).address for symbol in BENCH_PINS}
        plane = StubPlane(channel_for, owners.__getitem__, api_keys)
    else:
        front = suite.gateway_address if via == "gateway" else suite.haproxy_address
        plane = StubPlane(channel_for, lambda _symbol: front, api_keys, symbol_header=via == "haproxy")
    try:
        yield plane
    finally:
        for channel in channels.values():
            await channel.close(None)


async def run_suite(
    rate: float, duration_s: float, via: str, batch_per_ms: bool, folder: Path
) -> tuple[OpenLoopReport, list[str]]:
    """Start the suite under ``folder``, run the open loop through ``via``, stop the suite; the
    report and what did not stop cleanly."""
    suite = ShardedSuite(folder, haproxy=via == "haproxy", shard_settings=shard_settings())
    try:
        await suite.start()
        api_keys = tuple(suite.account(name).api_key for name in DEMO_ACCOUNTS)
        settings = OpenLoopSettings(
            target=suite.gateway_address,
            api_keys=api_keys,
            rate_per_s=rate,
            duration_s=duration_s,
            max_orders=max(1, int(rate * duration_s)),
            max_in_flight=MAX_IN_FLIGHT,
            call_deadline_s=CALL_DEADLINE_S,
            instruments=tuple((symbol, MID_PRICE_TICKS[symbol]) for symbol in BENCH_PINS),
            batch_per_ms=batch_per_ms,
        )
        async with _plane(suite, via, api_keys) as plane:
            report = await run_open_loop(settings, plane)
    finally:
        problems = await suite.stop()
    return report, problems


def figures(
    report: OpenLoopReport, rate: float, duration_s: float, via: str, batch_per_ms: bool
) -> dict[str, Any]:
    """The reported figures of one run, without floors and bars."""
    latency = report.latency_ms
    return {
        "via": via,
        "batch_per_ms": batch_per_ms,
        "rate": rate,
        "duration_s": duration_s,
        "scheduled": report.scheduled,
        "sent": report.sent,
        "acked": report.accepted,
        "rejected": report.rejected,
        "errors": report.failed + report.shed,
        "calls": report.calls,
        "completed_per_s": report.completed_per_s,
        # Ratios a comparison with a saved run can use on any machine (hftgate/bench/compare.py).
        "acked_ratio": round(report.accepted / report.sent, 4) if report.sent else 0.0,
        "throughput_ratio": round(report.completed_per_s / rate, 4),
        "mean_ms": latency["mean"],
        "p50_ms": latency["p50"],
        "p95_ms": latency["p95"],
        "p99_ms": latency["p99"],
        "p999_ms": latency["p99_9"],
        "jitter_ms": latency["stdev"],
        "max_ms": latency["max"],
        "send_lag_p99_ms": report.send_lag_ms["p99"],
        "rejects_by_reason": ",".join(f"{k}={v}" for k, v in sorted(report.rejects_by_reason.items())),
        "failures_by_code": ",".join(f"{k}={v}" for k, v in sorted(report.failures_by_code.items())),
    }


def bars(result: dict[str, Any]) -> dict[str, bool]:
    """``<name>_bar_holds`` for each bar of the run's kind (sustained or burst), and ``bars_hold``."""
    limits = BURST_BARS_MS if result["batch_per_ms"] else SUSTAINED_BARS_MS
    held = {
        f"{key.removesuffix('_ms')}_bar_holds": float(result[key]) < limit for key, limit in limits.items()
    }
    held["acked_bar_holds"] = result["sent"] > 0 and result["acked"] == result["sent"]
    if not result["batch_per_ms"]:
        held["errors_bar_holds"] = result["errors"] == 0
    held["bars_hold"] = all(held.values())
    return held


def e2e(
    rate: float,
    duration_s: float,
    via: str = "gateway",
    batch_per_ms: bool = False,
    *,
    floor_samples: int = FLOOR_SAMPLES,
) -> dict[str, Any]:
    """One end-to-end run (see the module docstring) with its floors (``floor_samples`` round
    trips each) and bars, as one flat dict."""
    check_arguments(rate, duration_s, via)
    with tempfile.TemporaryDirectory(prefix="hftgate-e2e-") as folder:
        report, problems = asyncio.run(run_suite(rate, duration_s, via, batch_per_ms, Path(folder)))
    result = figures(report, rate, duration_s, via, batch_per_ms)
    result["stop_problems"] = "; ".join(problems)
    # The floors right after the load, in this run, on this machine as loaded as it now is.
    result["grpc_echo_p50_ms"] = round(grpc_echo_p50_ms(floor_samples), 4)
    result["tcp_floor_p50_ms"] = round(tcp_floor_p50_ms(floor_samples), 4)
    echo = result["grpc_echo_p50_ms"]
    result["p50_over_echo"] = round(result["p50_ms"] / echo, 3) if echo > 0 else 0.0
    result["p99_over_echo"] = round(result["p99_ms"] / echo, 3) if echo > 0 else 0.0
    result.update(bars(result))
    return result
