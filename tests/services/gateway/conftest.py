"""Fixtures for the gateway tests: real execution shards in process (each with its own state
directory, one shared reference store), the gateway in front of them, and fake shards that
record what reaches them, for the faults a real shard does not make on demand."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from hftgate.shardmap import Shard, ShardMap, ShardMapStore
from hftgate.v1 import common_pb2 as common
from hftgate.v1 import execution_pb2 as api
from hftgate.v1 import execution_pb2_grpc as api_grpc
from hftgate.v1 import gateway_pb2_grpc as gw_grpc
from services.execution.app import ExecutionServer
from services.execution.app import start as start_execution
from services.gateway.config import GatewayConfig
from services.gateway.server import GatewayServer
from services.gateway.server import start as start_gateway
from tests.services.execution.conftest import execution_config

ALICE = (("x-api-key", "hftgate-demo-alice"),)
BOB = (("x-api-key", "hftgate-demo-bob"),)


def new_order(client_order_id: str, symbol: str, price_ticks: int = 0, side: int = common.SIDE_BUY) -> Any:
    price = price_ticks or {"BTCUSDT": 5_000_000, "ETHUSDT": 300_000, "ESZ4": 24_000}.get(symbol, 100)
    return api.NewOrder(
        client_order_id=client_order_id,
        symbol=symbol,
        side=side,  # type: ignore[arg-type]
        order_type=api.ORDER_TYPE_LIMIT,
        time_in_force=api.TIME_IN_FORCE_GTC,
        price_ticks=price,
        quantity_lots=10,
    )


@dataclass
class Suite:
    """Two real shards (BTCUSDT pinned to 0, ETHUSDT to 1), the gateway, and a client stub to it."""

    shards: list[ExecutionServer]
    gateway: GatewayServer
    store: ShardMapStore
    channel: grpc.aio.Channel
    stub: api_grpc.ExecutionServiceStub
    gateway_stub: gw_grpc.GatewayServiceStub
    tmp: Path
    extra: list[Any] = field(default_factory=list)

    def orders_on(self, index: int) -> int:
        core = self.shards[index].core
        assert core is not None
        return int(core.counters.orders_received)


def gateway_config(tmp: Path, shard_map_url: str, **overrides: Any) -> GatewayConfig:
    values: dict[str, Any] = {
        "port": 0,
        "shard_map_database_url": shard_map_url,
        "shard_map_table": "shard_maps",
        "reference_database_url": f"sqlite+aiosqlite:///{tmp / 'reference.sqlite3'}",
        "shard_map_poll_ms": 50,
        "default_deadline_ms": 5_000,
    }
    values.update(overrides)
    return GatewayConfig(**values)


async def store_map(url: str, shard_map: ShardMap) -> ShardMapStore:
    store = ShardMapStore(url)
    await store.start()
    await store.create(shard_map)
    return store


async def shards_follow(shards: list[ExecutionServer], epoch: int, timeout_s: float = 10.0) -> None:
    """Wait until every shard's fence holds the stored map of ``epoch`` (they poll it)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while any(s.fence is None or s.fence.epoch < epoch for s in shards):
        assert asyncio.get_running_loop().time() < deadline, "shards did not follow the shard map"
        await asyncio.sleep(0.01)


class _NoRegistry:
    """Stands in for prometheus' global registry: two shards in one test process would register
    the same metric names (in a deployment each shard is its own process)."""

    def register(self, collector: object) -> None:
        return None

    def unregister(self, collector: object) -> None:
        return None


@pytest.fixture(autouse=True)
def _shards_share_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.execution.metrics.REGISTRY", _NoRegistry())


@pytest.fixture
async def suite(tmp_path: Path) -> AsyncIterator[Suite]:
    reference = f"sqlite+aiosqlite:///{tmp_path / 'reference.sqlite3'}"
    url = f"sqlite+aiosqlite:///{tmp_path / 'shardmap.sqlite3'}"
    shards: list[ExecutionServer] = []
    for index in range(2):  # one after the other: the first seeds the shared reference rows
        state = tmp_path / f"shard{index}"
        config = execution_config(
            state, reference_database_url=reference, shard_id=index, shard_map_database_url=url
        )
        shards.append(await start_execution(config))
    shard_map = ShardMap(
        1,
        [Shard(0, f"127.0.0.1:{shards[0].port}"), Shard(1, f"127.0.0.1:{shards[1].port}")],
        {"BTCUSDT": 0, "ETHUSDT": 1},
    )
    store = await store_map(url, shard_map)
    await shards_follow(shards, 1)
    gateway = await start_gateway(gateway_config(tmp_path, url))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    made = Suite(
        shards,
        gateway,
        store,
        channel,
        api_grpc.ExecutionServiceStub(channel),
        gw_grpc.GatewayServiceStub(channel),
        tmp_path,
    )
    try:
        yield made
    finally:
        await channel.close(None)
        for extra in made.extra:
            await extra.stop(0)
        await gateway.stop(0)
        for shard in shards:
            with _suppress():
                await shard.stop(0.5)
        await store.close()


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


# --- fake shards ----------------------------------------------------------------------------------
Behaviour = Callable[[str, bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


@dataclass
class FakeShard:
    """A raw ExecutionService that records every call (method, request bytes, metadata, deadline
    left) and answers with ``behaviour``."""

    behaviour: Behaviour
    calls: list[tuple[str, bytes, dict[str, str], float | None]] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    server: Any = None
    port: int = 0

    async def start(self) -> FakeShard:
        async def handle(method: str, data: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
            self.calls.append((method, data, metadata, context.time_remaining()))
            try:
                return await self.behaviour(method, data, context)
            except asyncio.CancelledError:
                self.cancelled.append(method)
                raise

        def bind(method: str) -> grpc.RpcMethodHandler:
            async def unary(data: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return await handle(method, data, context)

            return grpc.unary_unary_rpc_method_handler(unary)

        methods = (
            "SubmitOrder", "SubmitOrders", "SubmitOrderColumns",
            "CancelOrder", "ReplaceOrder", "GetOrder", "CancelAll",
        )  # fmt: skip
        handler = grpc.method_handlers_generic_handler(
            "hftgate.v1.ExecutionService", {m: bind(m) for m in methods}
        )
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def stop(self, grace: float | None = 0) -> None:
        await self.server.stop(grace)


@pytest.fixture
async def fake_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[tuple[GatewayServer, Any]]]]:
    """``await fake_gateway(shard_map)``: the gateway over ``shard_map`` (stored fresh) and a stub.

    Reference rows come from a real shard started once for the demo seeding, then stopped."""
    reference = f"sqlite+aiosqlite:///{tmp_path / 'reference.sqlite3'}"
    seeder = await start_execution(execution_config(tmp_path / "seeder", reference_database_url=reference))
    await seeder.stop(0)
    started: list[Any] = []

    async def make(shard_map: ShardMap, **overrides: Any) -> tuple[GatewayServer, Any]:
        url = f"sqlite+aiosqlite:///{tmp_path / f'map{len(started)}.sqlite3'}"
        store = await store_map(url, shard_map)
        await store.close()
        gateway = await start_gateway(gateway_config(tmp_path, url, **overrides))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
        started.append((gateway, channel))
        return gateway, api_grpc.ExecutionServiceStub(channel)

    yield make
    for gateway, channel in started:
        await channel.close(None)
        await gateway.stop(0)
