"""The executor on the Redis store: a task runs, is watched and survives a restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub

from .conftest import StartExecutor, watch_all
from .redis_server import RedisServer


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", aof=True)
    server.start()
    yield server
    server.stop()


async def test_a_task_runs_on_redis_and_resumes_after_a_restart(
    start_executor_on: StartExecutor, redis: RedisServer
) -> None:
    first = await start_executor_on(f"--store={redis.url}", "--offline-pace=0.005")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        stub = TaskServiceStub(channel)
        task = await stub.CreateTask(
            task_service_pb2.CreateTaskRequest(text="Write a guide to composting")
        )
        seen: list[task_pb2.TaskEvent] = []
        call = stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id))
        async for event in call:
            if not event.HasField("heartbeat"):
                seen.append(event)
            if event.HasField("page_delta"):
                break
        call.cancel()
    await first.stop()  # stops the task without ending it

    second = await start_executor_on(f"--store={redis.url}")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        stub = TaskServiceStub(channel)
        rest = await watch_all(stub, task.task_id, after_seq=seen[-1].seq)
        listed = await stub.ListTasks(task_service_pb2.ListTasksRequest())

    events = seen + rest
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].task_state_changed.state == task_pb2.Task.STATE_SUCCEEDED
    assert [t.task_id for t in listed.tasks] == [task.task_id]
