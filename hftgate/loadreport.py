"""Each replica's load, reported to the scaler every second (``ScalerService.ReportMetrics``).

:class:`LoadReporter` is a background asyncio task of a service process. Every report interval
(1 s, or what the scaler's last reply asked) it sends, as the process's own service principal:

* ``orders_per_s``: the service's orders per second when it passes ``figures`` with an order
  count (execution), else its unary requests per second (the proto's rule for services without
  orders); ``queue_depth`` from ``figures`` too;
* ``inflight_requests``: :data:`hftgate.telemetry.RPC_INFLIGHT` when that gauge exists, else the
  time-averaged concurrency of the unary calls that completed in the interval (their summed
  latency / the interval: Little's law), from ``hftgate_rpc_seconds``;
* ``p99_latency_ns``: the 99th percentile of the unary calls of the interval, interpolated in
  ``hftgate_rpc_seconds``' buckets as Prometheus' ``histogram_quantile`` does;
* ``cpu_cores``: the process's CPU time over the interval / the interval (psutil); its resident
  memory is measured too (:attr:`Sample.memory_bytes`) and sent when the proto has the field.

Streaming methods are left out of the RPC figures: a stream's "latency" is its lifetime, so a
watch that ends after an hour would look like an hour of load.

It never blocks or crashes its service: each call has a deadline (``rpc_timeout_s``); a scaler
that is down or refuses is retried with exponential backoff (up to ``max_backoff_s``, or
:data:`FIRST_REPORT_MAX_BACKOFF_S` until a first report got through) and logged at most once per
``log_every_s``; a scaler with no policy for the service (NOT_FOUND) is told
again at the normal pace, so the replica counts as soon as a policy exists. When a reply says
``drain``, ``on_drain`` is called once (the services set their health to NOT_SERVING with
:meth:`hftgate.grpcserver.RunningServer.set_serving`; the back end that started the replica
stops it).

No service imports: a service passes what only it knows (``figures``, ``on_drain``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import psutil
from google.protobuf import descriptor_pool

from hftgate import telemetry
from hftgate.security import ClientCredentials
from hftgate.v1 import scaler_pb2, scaler_pb2_grpc

#: For this long after it starts, a reporter that has never reached the scaler logs its failures at
#: debug level only: the scaler is started after the services it scales.
STARTUP_QUIET_S = 30.0
#: Until its first report is taken, a reporter retries at least this often: the scaler waits a few
#: seconds after it starts for the replicas already running to report (its discovery_ms) before it
#: starts min_replicas of a service, so a reporter backed off for longer would be started twice.
FIRST_REPORT_MAX_BACKOFF_S = 2.0
#: gRPC's own reconnect backoff grows to minutes while the scaler is not up yet (hftgate up starts
#: it last), and a channel in backoff fails every call without trying: capped, the first report
#: after the scaler starts gets through within the retry above, inside the scaler's discovery_ms.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
)
#: The first report goes out this soon (or at the report interval, if shorter): it makes the replica
#: known to the scaler (and, through WatchReplicas, to the gateway) and brings the scaler's interval.
FIRST_REPORT_DELAY_S = 0.25
log = logging.getLogger(__name__)

#: The variable the scaler's back ends set to a replica's id (services/scaler/backends.py).
REPLICA_ID_VARIABLE = "HFTGATE_REPLICA_ID"
#: The scaler's reply may move the interval, within these bounds.
MIN_INTERVAL_S = 0.1
MAX_INTERVAL_S = 60.0


@dataclass(frozen=True)
class ServiceFigures:
    """What only the service knows, read once per report."""

    #: Orders handled since the process started (cumulative; the reporter makes the rate).
    #: None: the service has no orders, and orders_per_s is its requests per second.
    orders_total: int | None = None
    #: Work queued inside the replica and not yet started.
    queue_depth: int = 0
    #: Figures only this service has, sent as ReplicaMetrics.gauges for the scaler's optimiser
    #: (the cache's ``near_cache_hit_ratio`` over the interval); at most 16, each finite.
    gauges: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RpcTotals:
    """Cumulative figures of the process's unary RPCs (from ``hftgate_rpc_seconds``)."""

    count: float = 0.0
    seconds: float = 0.0
    #: Cumulative count per bucket upper bound (``inf`` last), as the histogram keeps them.
    buckets: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class Sample:
    """One interval's figures, as sent (plus what the proto may not carry yet)."""

    interval_s: float
    requests_per_s: float
    orders_per_s: float
    inflight_requests: int
    p99_latency_ns: int
    cpu_cores: float
    memory_bytes: int
    queue_depth: int
    gauges: Mapping[str, float] = field(default_factory=dict)


def default_replica_id(environ: dict[str, str] | None = None) -> str:
    """``$HFTGATE_REPLICA_ID`` (set by the scaler's back ends), else ``<hostname>-<pid>``."""
    env = os.environ if environ is None else environ
    return env.get(REPLICA_ID_VARIABLE, "").strip() or f"{socket.gethostname()}-{os.getpid()}"


_streaming_cache: dict[str, bool] = {}


def is_streaming(method: str) -> bool:
    """True when ``/pkg.Service/Method`` streams either way (unknown methods count as unary)."""
    known = _streaming_cache.get(method)
    if known is None:
        service, _, name = method.strip("/").rpartition("/")
        try:
            found = descriptor_pool.Default().FindMethodByName(f"{service}.{name}")
            known = bool(found.client_streaming or found.server_streaming)
        except KeyError:
            known = False
        if len(_streaming_cache) < 4_096:
            _streaming_cache[method] = known
    return known


def rpc_totals(metric: Any = None) -> RpcTotals:
    """The unary RPC totals of this process from ``hftgate_rpc_seconds`` (or ``metric``)."""
    histogram = telemetry.RPC_SECONDS if metric is None else metric
    count = seconds = 0.0
    buckets: dict[float, float] = {}
    for family in histogram.collect():
        for sample in family.samples:
            method = sample.labels.get("method", "")
            if is_streaming(method):
                continue
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                count += sample.value
            elif sample.name.endswith("_sum"):
                seconds += sample.value
    return RpcTotals(count, seconds, tuple(sorted(buckets.items())))


def quantile_seconds(q: float, before: RpcTotals, after: RpcTotals) -> float:
    """The ``q`` quantile of the calls between two totals, interpolated within its bucket; 0 when
    none completed. A quantile in the open top bucket is the highest finite bound."""
    previous = dict(before.buckets)
    deltas = [(bound, cumulative - previous.get(bound, 0.0)) for bound, cumulative in after.buckets]
    total = after.count - before.count
    if total <= 0 or not deltas:
        return 0.0
    rank = q * total
    lower, below = 0.0, 0.0
    finite = [bound for bound, _ in deltas if math.isfinite(bound)]
    for bound, cumulative in deltas:
        if cumulative >= rank:
            if not math.isfinite(bound):
                return finite[-1] if finite else 0.0
            width = cumulative - below
            return lower + (bound - lower) * ((rank - below) / width if width > 0 else 1.0)
        lower, below = bound, cumulative
    return finite[-1] if finite else 0.0


def _inflight_gauge() -> int | None:
    """The in-flight RPC gauge, when hftgate.telemetry keeps one (``RPC_INFLIGHT``)."""
    gauge = getattr(telemetry, "RPC_INFLIGHT", None)
    if gauge is None:
        return None
    return int(
        sum(s.value for family in gauge.collect() for s in family.samples if s.name.endswith("inflight"))
    )


_METRIC_FIELDS = frozenset(scaler_pb2.ReplicaMetrics.DESCRIPTOR.fields_by_name)


class LoadReporter:
    """Reports this replica's load to the scaler at ``scaler_address`` (see the module docstring)."""

    def __init__(
        self,
        service: str,
        scaler_address: str,
        credentials: ClientCredentials,
        *,
        address: str = "",
        replica_id: str = "",
        figures: Callable[[], ServiceFigures] | None = None,
        on_drain: Callable[[], Awaitable[None] | None] | None = None,
        report_interval_s: float = 1.0,
        rpc_timeout_s: float = 2.0,
        max_backoff_s: float = 30.0,
        log_every_s: float = 60.0,
        rpc_source: Callable[[], RpcTotals] = rpc_totals,
        inflight_source: Callable[[], int | None] = _inflight_gauge,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not service:
            raise ValueError("a load reporter needs its service name")
        if not scaler_address:
            raise ValueError("a load reporter needs the scaler's address")
        if not MIN_INTERVAL_S <= report_interval_s <= MAX_INTERVAL_S:
            raise ValueError(f"report_interval_s must be {MIN_INTERVAL_S}..{MAX_INTERVAL_S} s")
        self.service = service
        self.scaler_address = scaler_address
        self.credentials = credentials
        self.address = address
        self.replica_id = replica_id or default_replica_id()
        self.figures = figures
        self.on_drain = on_drain
        self.interval_s = report_interval_s
        self.rpc_timeout_s = rpc_timeout_s
        self.max_backoff_s = max_backoff_s
        self._rpc_source = rpc_source
        self._inflight_source = inflight_source
        self._clock = clock
        self._process = psutil.Process()
        self._warn = telemetry.RateLimitedWarning(log, log_every_s)
        self._channel: grpc.aio.Channel | None = None
        self._stub: scaler_pb2_grpc.ScalerServiceStub | None = None
        self._task: asyncio.Task[None] | None = None
        self._last: tuple[float, float, RpcTotals, int | None] | None = None
        self._told_no_policy = False
        #: What happened so far (tests, logs).
        self.reports_sent = 0
        self.failures = 0
        self.drain_requested = False
        self.last_sample: Sample | None = None
        self.last_error = ""

    # --- sampling --------------------------------------------------------------------------
    def _cpu_seconds(self) -> float:
        times = self._process.cpu_times()
        return float(times.user + times.system)

    def _service_figures(self) -> ServiceFigures:
        if self.figures is None:
            return ServiceFigures()
        try:
            return self.figures()
        except Exception as exc:  # a broken figure must not stop the reports
            self._warn.warning("%s load figures failed: %s", self.service, exc)
            return ServiceFigures()

    def sample(self) -> Sample:
        """The figures since the previous sample (the first covers the time since start())."""
        now = self._clock()
        cpu = self._cpu_seconds()
        totals = self._rpc_source()
        own = self._service_figures()
        if self._last is None:
            self._last = (now, cpu, totals, own.orders_total)
        then, cpu_then, totals_then, orders_then = self._last
        self._last = (now, cpu, totals, own.orders_total)
        interval = max(now - then, 1e-3)
        requests_per_s = max(0.0, totals.count - totals_then.count) / interval
        if own.orders_total is not None and orders_then is not None:
            orders_per_s = max(0, own.orders_total - orders_then) / interval
        else:
            orders_per_s = requests_per_s
        inflight = self._inflight_source()
        if inflight is None:
            inflight = round(max(0.0, totals.seconds - totals_then.seconds) / interval)
        try:
            memory = int(self._process.memory_info().rss)
        except psutil.Error:
            memory = 0
        sample = Sample(
            interval_s=interval,
            requests_per_s=requests_per_s,
            orders_per_s=orders_per_s,
            inflight_requests=max(0, int(inflight)),
            p99_latency_ns=int(quantile_seconds(0.99, totals_then, totals) * 1e9),
            cpu_cores=max(0.0, cpu - cpu_then) / interval,
            memory_bytes=memory,
            queue_depth=max(0, int(own.queue_depth)),
            gauges={k: float(v) for k, v in list(own.gauges.items())[:16] if math.isfinite(v)},
        )
        self.last_sample = sample
        return sample

    def metrics(self, sample: Sample) -> scaler_pb2.ReplicaMetrics:
        message = scaler_pb2.ReplicaMetrics(
            service=self.service,
            replica_id=self.replica_id,
            cpu_cores=sample.cpu_cores,
            inflight_requests=sample.inflight_requests,
            orders_per_s=sample.orders_per_s,
            p99_latency_ns=sample.p99_latency_ns,
            queue_depth=sample.queue_depth,
            interval_ms=max(1, round(sample.interval_s * 1000)),
            reported_ns=time.time_ns(),
        )
        if sample.gauges and "gauges" in _METRIC_FIELDS:
            message.gauges.update(sample.gauges)
        # Fields the scaler's proto may grow (the replica's address, its memory, requests/s).
        for name, value in (
            ("address", self.address),
            ("memory_bytes", sample.memory_bytes),
            ("requests_per_s", sample.requests_per_s),
        ):
            if name in _METRIC_FIELDS:
                setattr(message, name, value)
        return message

    # --- reporting -------------------------------------------------------------------------
    async def report_once(self) -> scaler_pb2.ReportMetricsResponse:
        """Sample and send one report; raises grpc.aio.AioRpcError when the scaler does not take it."""
        if self._stub is None:
            self._channel = self.credentials.open_channel(self.scaler_address, CHANNEL_OPTIONS)
            self._stub = scaler_pb2_grpc.ScalerServiceStub(self._channel)
        request = scaler_pb2.ReportMetricsRequest(metrics=self.metrics(self.sample()))
        reply: scaler_pb2.ReportMetricsResponse = await self._stub.ReportMetrics(
            request, metadata=self.credentials.metadata, timeout=self.rpc_timeout_s
        )
        self.reports_sent += 1
        if reply.report_interval_ms > 0:
            self.interval_s = min(MAX_INTERVAL_S, max(MIN_INTERVAL_S, reply.report_interval_ms / 1000))
        if reply.drain and not self.drain_requested:
            self.drain_requested = True
            log.warning("the scaler asks %s replica %s to drain", self.service, self.replica_id)
            await self._call_on_drain()
        return reply

    async def _call_on_drain(self) -> None:
        if self.on_drain is None:
            return
        try:
            result = self.on_drain()
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("the drain callback of %s failed", self.service)

    def _backoff_s(self, failures: int) -> float:
        ceiling = (
            self.max_backoff_s if self.reports_sent else min(self.max_backoff_s, FIRST_REPORT_MAX_BACKOFF_S)
        )
        base = min(ceiling, self.interval_s * 2 ** min(failures, 16))
        return base * random.uniform(0.5, 1.0) if base > self.interval_s else self.interval_s

    async def _run(self) -> None:
        self.sample()  # the first interval starts now
        failures = 0
        started, reported = time.monotonic(), False
        first = True
        while True:
            delay = self.interval_s if failures == 0 else self._backoff_s(failures)
            if first:
                delay, first = min(delay, FIRST_REPORT_DELAY_S), False
            await asyncio.sleep(delay)
            try:
                await self.report_once()
                reported = True
                if failures:
                    log.info("%s reports to the scaler at %s again", self.service, self.scaler_address)
                failures = 0
                self.last_error = ""
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as err:
                self.failures += 1
                self.last_error = f"{err.code().name}: {err.details()}"
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    # No policy for the service yet: keep reporting at the normal pace.
                    if not self._told_no_policy:
                        self._told_no_policy = True
                        log.info("the scaler has no policy for %s yet: %s", self.service, err.details())
                    failures = 0
                    continue
                failures += 1
                if not reported and time.monotonic() - started < STARTUP_QUIET_S:
                    # The suite's processes start before the scaler (hftgate up starts it last):
                    # not worth a warning until it has had time to come up.
                    log.debug("%s: the scaler does not answer yet (%s)", self.service, self.last_error)
                    continue
                self._warn.warning(
                    "%s cannot report load to the scaler at %s (%s); retrying with backoff",
                    self.service,
                    self.scaler_address,
                    self.last_error,
                )
            except Exception as exc:  # never let the reporter take the service down
                self.failures += 1
                failures += 1
                self.last_error = repr(exc)
                self._warn.warning("%s load report failed: %r", self.service, exc)

    def start(self) -> None:
        """Start reporting in the background (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"loadreport-{self.service}"
            )
            log.info(
                "%s replica %s reports its load to the scaler at %s every %.1f s",
                self.service,
                self.replica_id,
                self.scaler_address,
                self.interval_s,
            )

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = self._stub = None


def start_reporter(
    service: str,
    scaler_address: str,
    credentials: ClientCredentials,
    *,
    host: str,
    port: int,
    figures: Callable[[], ServiceFigures] | None = None,
    on_drain: Callable[[], Awaitable[None] | None] | None = None,
) -> LoadReporter | None:
    """What each service's ``__main__`` calls: a started reporter, or None without a scaler address."""
    if not scaler_address:
        return None
    # A wildcard bind (a container) is reached by its host name.
    advertised = socket.gethostname() if host in ("", "0.0.0.0", "::", "[::]") else host
    reporter = LoadReporter(
        service,
        scaler_address,
        credentials,
        address=f"{advertised}:{port}",
        figures=figures,
        on_drain=on_drain,
    )
    reporter.start()
    return reporter
