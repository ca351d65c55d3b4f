"""``hftgate bench gateway``: the gateway's balancing of stateless replicas, with the floors.

- ``no_fault_p99_ms``: p99 of GetSnapshot through the gateway (in this process) over three real
  market data replicas (in this process), 8 calls in flight, with the default balancer.
- ``round_robin_p99_ms``, ``p2c_inflight_p99_ms``, ``p2c_peak_ewma_p99_ms``: the same with one
  replica slowed by 5 ms a call (:class:`DelayInterceptor`), per algorithm.
- ``balancing_p99_ratio``: the default algorithm's p99 with the slow replica over the no-fault
  p99 (bar: <= 1.5 and below ``round_robin_p99_ratio``).
- ``grpc_echo_p50_ms``, ``tcp_floor_p50_ms``: the floors (hftgate.bench.floors), same run.

:func:`start_marketdata_replica` is shared with the gateway's tests.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import numpy as np

from hftgate.grpcserver import RunningServer, ServiceBinding, create_server
from hftgate.security import ServiceAuthInterceptor, SuiteSecurity, load_suite_security


class DelayInterceptor(grpc.aio.ServerInterceptor):
    """Holds every call of ``methods`` (full names; empty = all but health) ``delay_ms`` before it
    is handled: a replica made slow on purpose, without blocking its event loop."""

    def __init__(self, delay_ms: float, methods: frozenset[str] = frozenset()) -> None:
        self.delay_s = delay_ms / 1000
        self.methods = methods

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if (
            self.delay_s > 0
            and not method.startswith("/grpc.")
            and (not self.methods or method in self.methods)
        ):
            await asyncio.sleep(self.delay_s)
        return await continuation(handler_call_details)


async def start_marketdata_replica(
    delay_ms: float = 0.0, security: SuiteSecurity | None = None, host: str = "127.0.0.1"
) -> RunningServer:
    """A real market data service on a free port, as services.marketdata.server.start makes it,
    optionally slowed by ``delay_ms`` per call (health excepted). Readers need a service token."""
    from hftgate.v1 import marketdata_pb2_grpc
    from services.marketdata.auth import READ_METHODS, SERVICE_NAME, MarketDataAccessInterceptor
    from services.marketdata.config import MarketDataConfig
    from services.marketdata.engine import MarketDataEngine
    from services.marketdata.server import MarketDataServicer

    config = MarketDataConfig(host=host, port=0)
    engine = MarketDataEngine(config)
    security = security or load_suite_security("marketdata")
    servicer = MarketDataServicer(engine, security, None)
    interceptors: list[grpc.aio.ServerInterceptor] = [
        MarketDataAccessInterceptor(security.secret, engine.publishers, None)
    ]
    if delay_ms > 0:
        interceptors.insert(0, DelayInterceptor(delay_ms))
    return await create_server(
        f"{host}:0",
        [
            ServiceBinding(
                SERVICE_NAME,
                lambda s: marketdata_pb2_grpc.add_MarketDataServiceServicer_to_server(servicer, s),
            )
        ],
        tls=security.server_tls,
        auth=ServiceAuthInterceptor(security.secret, api_key_methods=READ_METHODS),
        interceptors=interceptors,
    )


# --- balancing ------------------------------------------------------------------------------------
BALANCING_ALGORITHMS = ("round_robin", "p2c_inflight", "p2c_peak_ewma")


async def _snapshot_p99_ms(
    algorithm: str, delays_ms: tuple[float, ...], calls: int, in_flight: int, folder: Path
) -> float:
    """p99 of GetSnapshot through a gateway balancing over replicas slowed by ``delays_ms``."""
    from hftgate.security import SERVICE_TOKEN_METADATA
    from hftgate.shardmap import ShardMap, ShardMapStore
    from hftgate.v1 import marketdata_pb2, marketdata_pb2_grpc
    from services.gateway.config import GatewayConfig
    from services.gateway.server import start as start_gateway
    from services.gateway.stateless import MARKETDATA_SERVICE

    security = load_suite_security("marketdata")
    replicas = [await start_marketdata_replica(d, security) for d in delays_ms]
    url = f"sqlite+aiosqlite:///{folder / f'map-{algorithm}-{len(delays_ms)}-{sum(delays_ms)}.sqlite3'}"
    store = ShardMapStore(url)
    await store.start()
    await store.create(ShardMap.single())
    await store.close()
    gateway = await start_gateway(
        GatewayConfig(
            port=0,
            shard_map_database_url=url,
            reference_database_url=f"sqlite+aiosqlite:///{folder / 'reference.sqlite3'}",
            marketdata_replicas=tuple(f"127.0.0.1:{r.port}" for r in replicas),
            balancer=algorithm,
        )
    )
    metadata = ((SERVICE_TOKEN_METADATA, security.secret.token_for("feed")),)
    try:
        assert gateway.app is not None
        await gateway.app.pools[MARKETDATA_SERVICE].wait_serving(len(replicas))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = marketdata_pb2_grpc.MarketDataServiceStub(channel)
            request = marketdata_pb2.GetSnapshotRequest()
            for _ in range(50):
                await stub.GetSnapshot(request, metadata=metadata)
            samples: list[int] = []
            per_worker = calls // in_flight

            async def worker() -> None:
                for _ in range(per_worker):
                    start = time.perf_counter_ns()
                    await stub.GetSnapshot(request, metadata=metadata, timeout=10)
                    samples.append(time.perf_counter_ns() - start)

            await asyncio.gather(*(worker() for _ in range(in_flight)))
        return float(np.percentile(samples, 99)) / 1e6
    finally:
        await gateway.stop(0)
        for replica in replicas:
            await replica.stop(0)


async def measure_balancing(calls: int = 3_000, in_flight: int = 8) -> dict[str, float | str]:
    """p99 of GetSnapshot through the gateway over three replicas, one slowed by 5 ms a call, for
    each algorithm; and with no replica slowed, for the chosen (default) one."""
    from services.gateway.balancer import DEFAULT_ALGORITHM

    with tempfile.TemporaryDirectory(prefix="hftgate-bench-gateway-") as tmp:
        folder = Path(tmp)
        result: dict[str, float | str] = {"balancer": DEFAULT_ALGORITHM}
        result["no_fault_p99_ms"] = await _snapshot_p99_ms(
            DEFAULT_ALGORITHM, (0, 0, 0), calls, in_flight, folder
        )
        for algorithm in BALANCING_ALGORITHMS:
            result[f"{algorithm}_p99_ms"] = await _snapshot_p99_ms(
                algorithm, (0, 0, 5), calls, in_flight, folder
            )
    chosen = float(result[f"{DEFAULT_ALGORITHM}_p99_ms"])
    result["balancing_p99_ratio"] = chosen / float(result["no_fault_p99_ms"])
    result["round_robin_p99_ratio"] = float(result["round_robin_p99_ms"]) / float(result["no_fault_p99_ms"])
    return result


def run(repeats: int = 1) -> dict[str, float | int | bool | str]:
    """Balancing figures (medians over ``repeats``) and the floors of the same run.

    Not measured yet: the order-path latencies through each plane (direct_p50_ms, gateway_p50_ms,
    haproxy_p50_ms, routing_client_p50_ms and their *_added_p50_ms, *_rps): they need two
    execution shards as processes sharing one reference store, not built here yet."""
    from hftgate.bench.floors import grpc_echo_p50_ms, tcp_floor_p50_ms

    rounds = [asyncio.run(measure_balancing()) for _ in range(max(1, repeats))]
    out: dict[str, float | int | bool | str] = {"balancer": str(rounds[0]["balancer"])}
    for key in rounds[0]:
        if key != "balancer":
            out[key] = float(np.median([float(r[key]) for r in rounds]))
    out["balancing_p99_ratio_ok"] = bool(
        float(out["balancing_p99_ratio"]) <= 1.5
        and float(out["balancing_p99_ratio"]) < float(out["round_robin_p99_ratio"])
    )
    out["grpc_echo_p50_ms"] = grpc_echo_p50_ms()
    out["tcp_floor_p50_ms"] = tcp_floor_p50_ms()
    return out
