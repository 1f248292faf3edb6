"""A full data folder (SQLite store): RESOURCE_EXHAUSTED naming the folder, never a Python class
name; health NOT_SERVING while it lasts; running tasks wait with one warning and go on once
there is space again.

The disk is made full by SQLite's own `max_page_count`, which fails writes with the same
SQLITE_FULL ("database or disk is full") a full file system gives; health reads the file
system's free space, checked here with a threshold no disk meets."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import grpc
import pytest

from mitosis.errors import DATA_FOLDER_FULL
from mitosis.executor.health import Unhealthy, space_check
from mitosis.executor.store.base import StoreFull
from mitosis.executor.store.sqlite import SqliteStore
from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub
from tests.support.executors import StartExecutor
from tests.support.waiting import eventually
from tests.support.watch import each_event, watch_all

Task = task_pb2.Task
TASK = "Write a short market brief on home solar batteries"


def fill(db: sqlite3.Connection) -> None:
    """Let the database grow no more: its next new page fails as a full disk does."""
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages}")


def make_room(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA max_page_count = 1073741823")


def task(task_id: str) -> Task:
    created = Task(task_id=task_id, text="x" * 20_000, state=Task.STATE_PENDING)
    created.create_time.GetCurrentTime()
    return created


async def test_a_full_store_says_so_naming_the_folder_and_recovers(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "data" / "mitosis.sqlite3")
    await store.create_task(task("000000000000000a"))
    fill(store._db)

    async def create_many() -> None:
        for n in range(20):  # the last page may still have room for a row or two
            await store.create_task(task(f"{n + 16:016x}"))

    with pytest.raises(StoreFull) as full:
        await create_many()

    assert full.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert full.value.reason == DATA_FOLDER_FULL
    assert str(full.value).startswith(f"the data folder {tmp_path / 'data'} is full")
    assert "OperationalError" not in str(full.value)
    line = task_pb2.LogLine(text="y" * 20_000)

    async def append_many() -> None:
        for _ in range(20):
            await store.append("000000000000000a", [task_pb2.TaskEvent(log_line=line)])

    with pytest.raises(StoreFull):
        await append_many()

    make_room(store._db)
    stored = await store.append("000000000000000a", [task_pb2.TaskEvent(log_line=line)])
    assert stored[0].seq >= 1
    await store.close()


async def test_health_calls_a_folder_without_room_full(tmp_path: Path) -> None:
    await space_check(tmp_path, min_free=1)()  # any disk has a byte free
    with pytest.raises(Unhealthy, match=f"the data folder {tmp_path} is full"):
        await space_check(tmp_path, min_free=2**62)()


async def test_create_task_on_a_full_store_is_resource_exhausted(
    start_executor_on: StartExecutor, tmp_path: Path
) -> None:
    executor = await start_executor_on()
    assert isinstance(executor.store, SqliteStore)
    fill(executor.store._db)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = TaskServiceStub(channel)
        request = task_service_pb2.CreateTaskRequest(text="x" * 30_000)

        async def create_many() -> None:
            for _ in range(20):
                await stub.CreateTask(request, timeout=10)

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await create_many()

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = refused.value.details() or ""
    assert details.startswith(f"the data folder {tmp_path / 'data'} is full")
    assert "class" not in details
    assert "OperationalError" not in details


async def test_a_running_task_waits_with_one_warning_and_goes_on_when_there_is_room(
    start_executor_on: StartExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    executor = await start_executor_on("--offline-pace=0.01", "--lease-ttl=0.6")
    assert isinstance(executor.store, SqliteStore)
    caplog.set_level(logging.DEBUG, logger="mitosis.executor.running.runner")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = TaskServiceStub(channel)
        created = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text=TASK), timeout=10)
        watch = stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=created.task_id))
        async for event in each_event(watch):
            if event.HasField("page_delta"):
                break
        watch.cancel()
        fill(executor.store._db)

        def tries() -> list[str]:
            return [
                r.getMessage()
                for r in caplog.records
                if created.task_id in r.getMessage() and "store" in r.getMessage()
            ]

        # Several tries of the claim loop while the store is full...
        await eventually(lambda: len(tries()) >= 3, what="three tries while the disk is full")
        make_room(executor.store._db)
        events = await watch_all(stub, created.task_id)

    warnings = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and created.task_id in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "waiting, the store cannot take its events" in warnings[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]  # no traceback
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].task_state_changed.state == Task.STATE_SUCCEEDED
