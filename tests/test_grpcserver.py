"""The shared server set-up: health, reflection and graceful stop on a real server."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from hftgate.grpcserver import ServiceBinding, create_server
from hftgate.v1 import scaler_pb2, scaler_pb2_grpc


async def test_health_reports_serving_then_not_serving_on_stop() -> None:
    running = await create_server("127.0.0.1:0", [])
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        await running.stop(grace_s=0.5)
        # The drain signal reaches watchers before the server goes away.
        second = await watch.read()
        assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_reflection_lists_health_and_reflection() -> None:
    running = await create_server("127.0.0.1:0", [])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)

            async def one_request():  # type: ignore[no-untyped-def]
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            names = set()
            async for reply in stub.ServerReflectionInfo(one_request()):
                names |= {s.name for s in reply.list_services_response.service}
        assert "grpc.health.v1.Health" in names
        assert "grpc.reflection.v1alpha.ServerReflection" in names
    finally:
        await running.stop(0)


async def test_services_are_served_by_their_generic_handlers_only(monkeypatch: Any) -> None:
    """The generated add_*_to_server functions' registered methods never reach grpc.aio (they cost
    every call; see grpcserver._generic_handlers_only), and every method is still served."""
    registered: list[str] = []
    real = grpc.aio._server.Server.add_registered_method_handlers  # type: ignore[attr-defined]

    def record(self: Any, service: str, handlers: Any) -> None:
        registered.append(service)
        real(self, service, handlers)

    monkeypatch.setattr(grpc.aio._server.Server, "add_registered_method_handlers", record)  # type: ignore[attr-defined]
    binding = ServiceBinding(
        "hftgate.v1.TuningService",
        lambda server: scaler_pb2_grpc.add_TuningServiceServicer_to_server(_Tunables(), server),
    )
    running = await create_server("127.0.0.1:0", [binding])
    try:
        assert registered == []
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            reply = await scaler_pb2_grpc.TuningServiceStub(channel).GetTunable(
                scaler_pb2.GetTunableRequest(name="x")
            )
            assert reply.tunable.name == "x" and reply.tunable.value == 1.5
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="")
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        await running.stop(0)


class _Tunables(scaler_pb2_grpc.TuningServiceServicer):
    async def GetTunable(self, request: Any, context: Any) -> Any:
        return scaler_pb2.GetTunableResponse(tunable=scaler_pb2.Tunable(name=request.name, value=1.5))


def test_freeze_startup_objects_moves_live_objects_out_of_collection() -> None:
    import gc

    from hftgate.grpcserver import freeze_startup_objects

    long_lived = [object() for _ in range(1000)]  # tracked containers alive "at start-up"
    try:
        frozen = freeze_startup_objects()
        assert frozen == gc.get_freeze_count() > len(long_lived)
        assert not any(o is long_lived for o in gc.get_objects(generation=2))  # out of the old generation
    finally:
        gc.unfreeze()
