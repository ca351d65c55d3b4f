"""The optimiser's hands and eyes on the running suite: a gRPC actuator and a probe of the reports.

* :class:`GrpcActuator` reads and changes a setting through ``hftgate.v1.TuningService``, which a
  tunable service serves beside its own API (scaler.proto). It changes every READY replica of the
  knob's service (one setting, the same value everywhere) and reads the first one; a service that
  does not serve the hook (UNIMPLEMENTED) or refuses is an :class:`ActuatorError`, so the trial is
  logged as not made. Nothing is restarted.
* :class:`ReportProbe` reads an objective from the replicas' load reports (registry.py): a
  ReplicaMetrics field (``p99_latency_ns``) or one of its ``gauges`` (``near_cache_hit_ratio``),
  averaged over the READY replicas with a fresh report. A report older than the previous sample
  is not read twice, so a window's samples are distinct intervals.

A gRPC client only (like backends.py's health checks); no servicer code.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import grpc

from hftgate.security import ClientCredentials
from hftgate.v1 import scaler_pb2, scaler_pb2_grpc
from services.scaler.config import ScalerConfig
from services.scaler.decisions import NS_PER_MS
from services.scaler.optimiser import (
    ActuatorError,
    Knob,
    Optimiser,
    OptimiserSettings,
    group_commit_knob,
    near_cache_knob,
)
from services.scaler.registry import Registry, ReplicaState

#: Most channels the actuator keeps open (one per replica address; the oldest closed first).
MAX_CHANNELS = 64


class GrpcActuator:
    """See the module docstring."""

    def __init__(
        self,
        registry: Registry,
        credentials: ClientCredentials,
        *,
        rpc_timeout_s: float = 2.0,
        open_channel: Callable[[str], grpc.aio.Channel] | None = None,
    ) -> None:
        self.registry = registry
        self.credentials = credentials
        self.rpc_timeout_s = rpc_timeout_s
        self._open_channel = open_channel or credentials.open_channel
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, address: str) -> scaler_pb2_grpc.TuningServiceStub:
        channel = self._channels.get(address)
        if channel is None:
            if len(self._channels) >= MAX_CHANNELS:
                oldest = next(iter(self._channels))
                asyncio.get_running_loop().create_task(self._channels.pop(oldest).close(None))
            channel = self._channels[address] = self._open_channel(address)
        return scaler_pb2_grpc.TuningServiceStub(channel)

    def _addresses(self, knob: Knob) -> list[str]:
        addresses = [
            r.address for r in self.registry.all(knob.service) if r.state is ReplicaState.READY and r.address
        ]
        if not addresses:
            raise ActuatorError(f"no READY {knob.service} replica with an address to tune")
        return addresses

    async def _call(self, address: str, knob: Knob, value: float | None) -> float:
        stub = self._stub(address)
        try:
            if value is None:
                got = await stub.GetTunable(
                    scaler_pb2.GetTunableRequest(name=knob.setting),
                    metadata=self.credentials.metadata,
                    timeout=self.rpc_timeout_s,
                )
                return float(got.tunable.value)
            done = await stub.SetTunable(
                scaler_pb2.SetTunableRequest(name=knob.setting, value=value),
                metadata=self.credentials.metadata,
                timeout=self.rpc_timeout_s,
            )
            return float(done.tunable.value)
        except grpc.aio.AioRpcError as err:
            verb = "read" if value is None else f"set to {value:g}"
            hint = (
                " (the service does not serve hftgate.v1.TuningService)"
                if err.code() == grpc.StatusCode.UNIMPLEMENTED
                else ""
            )
            raise ActuatorError(
                f"{knob.service} at {address}: {knob.setting} could not be {verb}: "
                f"{err.code().name}: {err.details()}{hint}"
            ) from None

    async def read(self, knob: Knob) -> float:
        return await self._call(self._addresses(knob)[0], knob, None)

    async def write(self, knob: Knob, value: float) -> None:
        addresses = self._addresses(knob)
        results = await asyncio.gather(
            *(self._call(a, knob, value) for a in addresses), return_exceptions=True
        )
        failures = [str(r) for r in results if isinstance(r, BaseException)]
        if failures:
            raise ActuatorError("; ".join(failures[:3]))

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            await channel.close(None)


class ReportProbe:
    """See the module docstring."""

    def __init__(self, registry: Registry, stale_after_ms: int = 5_000) -> None:
        self.registry = registry
        self.stale_after_ms = stale_after_ms
        #: (service, replica id) -> the report time last read, so a report is read once.
        self._read: dict[tuple[str, str], int] = {}

    async def sample(self, knob: Knob) -> float | None:
        now = self.registry.clock()
        values = []
        for replica in self.registry.all(knob.service):
            report = replica.last_metrics
            if replica.state is not ReplicaState.READY or report is None:
                continue
            key = (knob.service, replica.replica_id)
            if now - replica.last_report_ns > self.stale_after_ms * NS_PER_MS:
                continue
            if self._read.get(key) == replica.last_report_ns:
                continue  # read already: wait for the next interval's report
            value = report.figure(knob.objective.metric)
            if value is not None and math.isfinite(value):
                values.append(value)
                self._read[key] = replica.last_report_ns
        if len(self._read) > 4 * MAX_CHANNELS:  # replicas come and go: keep the table bounded
            self._read.clear()
        return sum(values) / len(values) if values else None


def build_optimiser(config: ScalerConfig, registry: Registry, credentials: ClientCredentials) -> Optimiser:
    """The suite's optimiser as ``config`` describes it, acting through TuningService."""
    return Optimiser(
        [
            near_cache_knob(config.optimiser_hit_ratio_target),
            group_commit_knob(float(config.optimiser_p99_latency_target_ns)),
        ],
        GrpcActuator(registry, credentials),
        ReportProbe(registry, config.stale_after_ms),
        OptimiserSettings(
            window_ms=config.optimiser_window_ms,
            sample_interval_ms=config.optimiser_sample_interval_ms,
            pause_ms=config.optimiser_pause_ms,
        ),
        clock=registry.clock,
    )
