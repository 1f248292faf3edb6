"""The executor's grpc.health.v1 status follows its store and its planner, both real."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mitosis.executor.server import SERVICE_NAME, Executor, parse_args, start_executor
from mitosis.planner.server import Planner, start_planner
from mitosis.planner.server import parse_args as parse_planner_args

from .support.ports import free_port
from .support.redis_server import RedisServer
from .support.waiting import eventually

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
INTERVAL = "--health-check-interval=0.2"


async def start_planner_on(port: int) -> Planner:
    return await start_planner(
        parse_planner_args([f"--listen=127.0.0.1:{port}", "--model=offline"])
    )


class Health:
    """The executor's health service, asked over a real channel."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = health_pb2_grpc.HealthStub(channel)

    async def status(self, service: str = SERVICE_NAME) -> int:
        reply = await self._stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        return reply.status

    async def until(self, status: int, within: float = 60.0) -> None:
        """Wait until TaskService reports `status`; fail after `within` seconds."""
        await eventually(lambda: self._is(status), timeout=within, what=f"health {status}")

    async def _is(self, status: int) -> bool:
        return await self.status() == status


StartWithHealth = Callable[..., Coroutine[Any, Any, tuple[Executor, Health]]]


@pytest.fixture
async def executor_health(
    tmp_path: Path,
) -> AsyncIterator[StartWithHealth]:
    """Start an executor with the given flags and a channel to its health service."""
    started: list[tuple[Executor, grpc.aio.Channel]] = []

    async def start(*flags: str) -> tuple[Executor, Health]:
        executor = await start_executor(
            parse_args(
                [
                    "--listen=127.0.0.1:0",
                    f"--data-dir={tmp_path / 'data'}",
                    "--model=offline",
                    INTERVAL,
                    *flags,
                ]
            )
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}")
        started.append((executor, channel))
        return executor, Health(channel)

    yield start
    for executor, channel in started:
        await channel.close(None)
        await executor.stop(None)


async def test_not_serving_while_the_planner_is_away(
    executor_health: StartWithHealth,
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()
    planner = await start_planner_on(port)
    executor, health = await executor_health(f"--planner=127.0.0.1:{port}")
    await health.until(SERVING)
    caplog.set_level(logging.INFO, logger="mitosis.executor.health")

    await planner.stop(None)
    await health.until(NOT_SERVING)
    assert await health.status("") == SERVING  # the process itself is alive
    (went,) = [r for r in caplog.records if r.name == "mitosis.executor.health"]
    assert went.levelno == logging.WARNING
    assert "NOT_SERVING: the planner is unreachable" in went.getMessage()

    planner = await start_planner_on(port)
    try:
        await health.until(SERVING)
    finally:
        await planner.stop(None)
    back = [r for r in caplog.records if r.name == "mitosis.executor.health"][1:]
    assert [r.getMessage() for r in back] == [
        "SERVING: the store, the planner and the data folder are well again"
    ]
    up = executor.metrics.registry.get_sample_value
    assert up("mitosis_dependency_up", {"dependency": "planner"}) == 1


async def test_not_serving_while_redis_is_away(
    executor_health: StartWithHealth,
    planner_target: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis = RedisServer(tmp_path / "redis", aof=True)
    redis.start()
    try:
        executor, health = await executor_health(
            f"--planner={planner_target}", f"--store={redis.url}"
        )
        await health.until(SERVING)
        caplog.set_level(logging.INFO, logger="mitosis.executor.health")

        await asyncio.to_thread(redis.stop)
        await health.until(NOT_SERVING)
        up = executor.metrics.registry.get_sample_value
        assert up("mitosis_dependency_up", {"dependency": "store"}) == 0
        assert up("mitosis_dependency_up", {"dependency": "planner"}) == 1

        await asyncio.to_thread(redis.start)
        await health.until(SERVING)
        assert up("mitosis_dependency_up", {"dependency": "store"}) == 1
    finally:
        redis.stop()
    messages = [r.getMessage() for r in caplog.records if r.name == "mitosis.executor.health"]
    assert len(messages) == 2, messages
    assert messages[0].startswith("NOT_SERVING: the store is unreachable")
    assert messages[1] == "SERVING: the store, the planner and the data folder are well again"


async def test_a_stopping_executor_stays_not_serving(
    executor_health: StartWithHealth,
    planner_target: str,
) -> None:
    executor, health = await executor_health(f"--planner={planner_target}")
    await health.until(SERVING)

    await executor.serving.health.enter_graceful_shutdown()
    await asyncio.sleep(1)  # several probe rounds, all finding store and planner well

    assert await health.status() == NOT_SERVING
