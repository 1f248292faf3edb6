"""Retention: finished tasks older than --retain go, with their events and files; the rest stay."""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from mitosis.executor.store.base import Store
from mitosis.executor.store.redis import RedisStore
from mitosis.executor.store.retention import (
    DEFAULT_RETAIN,
    Retention,
    add_retention_arguments,
    parse_retention,
    task_folder,
)
from mitosis.executor.store.sqlite import SqliteStore
from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub

from .support.executors import StartExecutor
from .support.redis_server import RedisServer
from .support.waiting import eventually
from .support.watch import watch_all

Task = task_pb2.Task
Event = task_pb2.TaskEvent


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened: Store
    if request.param == "sqlite":
        opened = SqliteStore(tmp_path / "store.sqlite3")
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        opened = RedisStore.from_url(server.url, prefix=f"test-{uuid.uuid4().hex}:")
    yield opened
    await opened.close()


async def new_task(store: Store, data_dir: Path) -> str:
    """A task with a delivered file in its workspace."""
    task = Task(task_id=uuid.uuid4().hex[:16], text="t", state=Task.STATE_PENDING)
    task.create_time.FromNanoseconds(time.time_ns())
    await store.create_task(task)
    workspace = task_folder(data_dir, task.task_id) / "workspace"
    workspace.mkdir(parents=True)
    (workspace / "notes.md").write_text("# Notes\n")
    started = task_pb2.TaskStateChanged(state=Task.STATE_RUNNING)
    await store.append(task.task_id, [Event(task_state_changed=started)])
    return task.task_id


async def finish(store: Store, task_id: str) -> None:
    done = task_pb2.TaskStateChanged(state=Task.STATE_SUCCEEDED, message="done")
    await store.append(task_id, [Event(task_state_changed=done)])


async def parts(store: Store, data_dir: Path, task_id: str) -> tuple[bool, bool, bool, bool]:
    """Whether the task's record, events, listing entry and files are there."""
    record = await store.get_task(task_id) is not None
    events = bool(await store.read_events(task_id, 0, 10))
    listed = task_id in [t.task_id for t in (await store.list_tasks(100, None)).tasks]
    return record, events, listed, task_folder(data_dir, task_id).exists()


KEPT = (True, True, True, True)
GONE = (False, False, False, False)


async def until_gone(store: Store, data_dir: Path, task_ids: list[str]) -> None:
    """Wait until a running loop has deleted the tasks."""

    async def all_gone() -> bool:
        return all([await parts(store, data_dir, task_id) == GONE for task_id in task_ids])

    await eventually(all_gone, what=f"retention deleted {task_ids}")


async def end_ns(store: Store, task_id: str) -> int:
    """When the task ended, as the store recorded it."""
    task = await store.get_task(task_id)
    assert task is not None
    return task.update_time.ToNanoseconds()


async def test_a_sweep_deletes_tasks_that_ended_before_the_retention(
    store: Store, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    old, running, recent = [await new_task(store, data_dir) for _ in range(3)]
    await finish(store, old)
    await finish(store, recent)
    old_end, recent_end = await end_ns(store, old), await end_ns(store, recent)
    assert old_end < recent_end
    # The sweep runs when old ended more than the retention ago, recent not yet; running
    # never ends.
    retain_ns = 1_500_000_000
    retention = Retention(store, data_dir, retain=1.5, now=lambda: old_end + 1 + retain_ns)

    assert await retention.sweep() == 1

    assert await parts(store, data_dir, old) == GONE
    assert await parts(store, data_dir, running) == KEPT
    assert await parts(store, data_dir, recent) == KEPT
    assert await retention.sweep() == 0


async def test_the_loop_keeps_sweeping_and_never_touches_unfinished_tasks(
    store: Store, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    tasks = [await new_task(store, data_dir) for _ in range(5)]
    for task_id in tasks[:3]:
        await finish(store, task_id)
    loop = asyncio.create_task(Retention(store, data_dir, retain=0.2, batch=2).run())
    try:
        await until_gone(store, data_dir, tasks[:3])
        assert [await parts(store, data_dir, task_id) for task_id in tasks] == [
            GONE,
            GONE,
            GONE,
            KEPT,
            KEPT,
        ]
        await finish(store, tasks[3])  # ends now: the running loop deletes it too
        await until_gone(store, data_dir, tasks[3:4])
        assert await parts(store, data_dir, tasks[3]) == GONE
        assert await parts(store, data_dir, tasks[4]) == KEPT
    finally:
        loop.cancel()
        with pytest.raises(asyncio.CancelledError):
            await loop


async def test_keeping_forever_deletes_nothing(store: Store, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    task_id = await new_task(store, data_dir)
    await finish(store, task_id)

    await Retention(store, data_dir, retain=0).run()  # returns at once

    assert await parts(store, data_dir, task_id) == KEPT


async def test_a_deleted_task_is_not_found_through_the_service(
    start_executor_on: StartExecutor, tmp_path: Path
) -> None:
    # The executor's own retention loop, as --retain starts it, does the deleting.
    executor = await start_executor_on("--retain=0.5s")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = TaskServiceStub(channel)
        task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="Write notes"))
        events = await watch_all(stub, task.task_id)
        assert events[-1].task_state_changed.state == Task.STATE_SUCCEEDED
        done = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))
        assert done.artifacts
        folder = task_folder(tmp_path / "data", task.task_id)

        async def refused() -> grpc.StatusCode | None:
            try:
                await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))
            except grpc.aio.AioRpcError as error:
                return error.code()
            return None

        gone = await eventually(refused, timeout=20, what="the executor deleted the task")
        assert gone == grpc.StatusCode.NOT_FOUND
        assert not folder.exists()
        for call in (
            stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id)),
            stub.ReadArtifact(
                task_service_pb2.ReadArtifactRequest(
                    task_id=task.task_id, path=done.artifacts[0].path
                )
            ).read(),
            stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id)).read(),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as error:
                await call
            assert error.value.code() == grpc.StatusCode.NOT_FOUND
        listed = await stub.ListTasks(task_service_pb2.ListTasksRequest())
        assert task.task_id not in [t.task_id for t in listed.tasks]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), ("45", 45), ("45s", 45), ("30m", 1800), ("12h", 43200), ("7d", 604800),
     ("2w", 1209600), ("1.5h", 5400), (" 7D ", 604800)],
)  # fmt: skip
def test_retention_is_read_as_a_duration(text: str, seconds: float) -> None:
    assert parse_retention(text) == seconds


@pytest.mark.parametrize("text", ["", "forever", "-1d", "7 days", "1d2h", "d"])
def test_a_retention_that_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a retention"):
        parse_retention(text)


def test_the_retention_flag_takes_its_default_from_the_environment() -> None:
    def parse(argv: list[str], env: dict[str, str]) -> float:
        parser = argparse.ArgumentParser()
        add_retention_arguments(parser, env)
        retain: float = parser.parse_args(argv).retain
        return retain

    assert parse([], {}) == parse_retention(DEFAULT_RETAIN)
    assert parse([], {"MITOSIS_RETAIN": "12h"}) == 43200
    assert parse(["--retain=0"], {"MITOSIS_RETAIN": "12h"}) == 0
