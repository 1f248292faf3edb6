"""Health and reflection on both services, as grpcurl and load balancers use them."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from mitosis.executor.server import Executor


async def list_services(channel: grpc.aio.Channel) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request])):
        return {service.name for service in response.list_services_response.service}
    return set()


async def test_executor_reports_serving_and_reflects_its_services(
    channel: grpc.aio.Channel,
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "mitosis.v1.TaskService"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert {"mitosis.v1.TaskService", "grpc.health.v1.Health"} <= await list_services(channel)


async def test_planner_reports_serving_and_reflects_its_services(planner_target: str) -> None:
    async with grpc.aio.insecure_channel(planner_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="mitosis.v1.PlannerService")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        assert "mitosis.v1.PlannerService" in await list_services(channel)


async def test_stopping_reports_not_serving_first(
    executor: Executor, channel: grpc.aio.Channel
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service="mitosis.v1.TaskService"))
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING

    stop_task = asyncio.ensure_future(executor.stop(grace=1.0))
    second = await watch.read()
    await stop_task
    assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
