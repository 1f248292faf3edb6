"""DeleteTask (AIP-135): a task's record, events and files go; a running task is ended first,
through the one end routine; another key's task is not found."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2

from mitosis.executor.server import Executor
from mitosis.rpc.auth import key_line
from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub
from tests.support.executors import StartExecutor
from tests.support.redis_server import RedisServer
from tests.support.watch import each_event, watch_all

Task = task_pb2.Task
TASK_TEXT = "Write a short market brief on home solar batteries"


async def create(stub: TaskServiceStub, **fields: object) -> Task:
    request = task_service_pb2.CreateTaskRequest(text=TASK_TEXT, **fields)  # type: ignore[arg-type]
    return await stub.CreateTask(request, timeout=10)


async def delete(stub: TaskServiceStub, task_id: str) -> empty_pb2.Empty:
    return await stub.DeleteTask(task_service_pb2.DeleteTaskRequest(task_id=task_id), timeout=30)


async def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


@pytest.fixture(params=["sqlite", "redis"])
async def stub_on_each_store(
    request: pytest.FixtureRequest, start_executor_on: StartExecutor
) -> AsyncIterator[TaskServiceStub]:
    flags = []
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        flags.append(f"--store={server.url}?prefix=delete-{uuid.uuid4().hex}:")
    executor = await start_executor_on(*flags)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        yield TaskServiceStub(channel)


async def test_deleting_an_ended_task_removes_its_record_events_and_files(
    stub_on_each_store: TaskServiceStub, tmp_path: Path
) -> None:
    stub = stub_on_each_store
    task = await create(stub)
    events = await watch_all(stub, task.task_id)
    assert events[-1].task_state_changed.state == Task.STATE_SUCCEEDED
    final = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))
    folder = tmp_path / "data" / "tasks" / task.task_id
    assert (folder / "workspace" / final.artifacts[0].path).is_file()

    assert await delete(stub, task.task_id) == empty_pb2.Empty()

    assert not folder.exists()
    get = stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))
    assert await code_of(get) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as watched:
        await watch_all(stub, task.task_id)
    assert watched.value.code() == grpc.StatusCode.NOT_FOUND
    read = task_service_pb2.ReadArtifactRequest(task_id=task.task_id, path=final.artifacts[0].path)
    with pytest.raises(grpc.aio.AioRpcError) as read_error:
        [chunk async for chunk in stub.ReadArtifact(read)]
    assert read_error.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListTasks(task_service_pb2.ListTasksRequest())
    assert task.task_id not in [t.task_id for t in listed.tasks]
    assert await code_of(delete(stub, task.task_id)) == grpc.StatusCode.NOT_FOUND


async def test_deleting_a_running_task_ends_it_first_and_its_watcher_sees_the_end(
    start_executor_on: StartExecutor, tmp_path: Path
) -> None:
    executor = await start_executor_on("--offline-pace=0.05")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = TaskServiceStub(channel)
        task = await create(stub)
        watcher = each_event(
            stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id), timeout=60)
        )
        async for event in watcher:
            if event.HasField("page_delta"):
                break  # a page is being written: the task runs a step

        await delete(stub, task.task_id)

        rest = [event async for event in watcher]  # ends OK after the terminal event
        ended = rest[-1].task_state_changed
        assert ended.state == Task.STATE_CANCELLED
        assert ended.message == "deleted by request"
        assert any(event.page_finished.abandoned for event in rest)
        assert not (tmp_path / "data" / "tasks" / task.task_id).exists()
        get = stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))
        assert await code_of(get) == grpc.StatusCode.NOT_FOUND


async def test_a_task_waiting_for_approval_is_deleted_and_a_new_watch_is_not_found(
    stub: TaskServiceStub,
) -> None:
    task = await create(stub, require_approval=True)
    async for event in each_event(
        stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id), timeout=30)
    ):
        if event.task_state_changed.state == Task.STATE_AWAITING_APPROVAL:
            break

    await delete(stub, task.task_id)

    with pytest.raises(grpc.aio.AioRpcError) as watched:
        await watch_all(stub, task.task_id)
    assert watched.value.code() == grpc.StatusCode.NOT_FOUND
    assert "does not exist" in (watched.value.details() or "")


ALICE_KEY = "mk_alice-delete-test-key-000000000000000000000"
BOB_KEY = "mk_bob-delete-test-key-1111111111111111111111111"
ALICE = (("authorization", f"Bearer {ALICE_KEY}"),)
BOB = (("authorization", f"Bearer {BOB_KEY}"),)


async def test_another_keys_task_is_not_found_and_stays(
    start_executor_on: StartExecutor, tmp_path: Path
) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text(f"{key_line('alice', ALICE_KEY)}\n{key_line('bob', BOB_KEY)}\n")
    executor: Executor = await start_executor_on(f"--api-keys={keys}")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = TaskServiceStub(channel)
        request = task_service_pb2.CreateTaskRequest(text=TASK_TEXT)
        task = await stub.CreateTask(request, metadata=ALICE, timeout=10)
        by_bob = stub.DeleteTask(
            task_service_pb2.DeleteTaskRequest(task_id=task.task_id), metadata=BOB
        )
        assert await code_of(by_bob) == grpc.StatusCode.NOT_FOUND

        still = await stub.GetTask(
            task_service_pb2.GetTaskRequest(task_id=task.task_id), metadata=ALICE
        )
        assert still.task_id == task.task_id
        await stub.DeleteTask(
            task_service_pb2.DeleteTaskRequest(task_id=task.task_id), metadata=ALICE
        )
        get = stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id), metadata=ALICE)
        assert await code_of(get) == grpc.StatusCode.NOT_FOUND
