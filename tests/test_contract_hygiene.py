"""AIP contract details of TaskService against real executors: CreateTask's request_id
(AIP-155), ReadArtifact's read_offset (as google.bytestream), ErrorInfo reasons on refusals
(AIP-193), and ListTasks' view with pages bounded in bytes (AIP-157, AIP-158)."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mitosis.client import AsyncClient
from mitosis.client.errors import ResourceExhaustedError, UnauthenticatedError
from mitosis.executor.server import Executor
from mitosis.executor.store.opening import open_store
from mitosis.executor.store.redis import TaskExists
from mitosis.executor.tasks import MAX_PAGE_BYTES
from mitosis.rpc.auth import key_line
from mitosis.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from tests.conftest import StartExecutor, watch_all
from tests.support.redis_server import RedisServer
from tests.support.refusals import reason_of

Task = task_pb2.Task
Stub = task_service_pb2_grpc.TaskServiceStub
CreateTaskRequest = task_service_pb2.CreateTaskRequest

ALICE_KEY = "mk_alice-contract-key-000000000000000000000000"
BOB_KEY = "mk_bob-contract-key-1111111111111111111111111111"
ALICE = (("authorization", f"Bearer {ALICE_KEY}"),)
BOB = (("authorization", f"Bearer {BOB_KEY}"),)
WAITING = "Plan a garden."  # with require_approval: planned, then waits without running


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-keys"
    path.write_text(f"{key_line('alice', ALICE_KEY)}\n{key_line('bob', BOB_KEY)}\n")
    return path


@pytest.fixture(params=["sqlite", "redis"])
def store_flags(request: pytest.FixtureRequest) -> list[str]:
    """The flags of an executor on SQLite (its data folder) or on a fresh Redis prefix."""
    if request.param == "sqlite":
        return []
    redis: RedisServer = request.getfixturevalue("redis_server")
    return [f"--store={redis.url}?prefix=test-{uuid.uuid4().hex}:"]


async def stub_of(executor: Executor) -> AsyncIterator[Stub]:
    """Yield one stub on a channel to the executor (`async for` closes the channel after)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        yield task_service_pb2_grpc.TaskServiceStub(channel)


async def refusal(call: Any) -> grpc.aio.AioRpcError:
    """Return the error a unary call, or a stream's first read, ends with."""
    ended = call.read() if isinstance(call, grpc.aio.UnaryStreamCall) else call
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ended
    return refused.value


async def cancelled_log(stub: Stub, task_id: str) -> list[task_pb2.TaskEvent]:
    """Cancel a task that waits for approval and return its whole log."""
    await stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task_id))
    return await watch_all(stub, task_id)


# --- CreateTask.request_id (AIP-155) --------------------------------------------------------


async def test_a_retried_create_returns_the_task_it_created_on_either_store(
    start_executor_on: StartExecutor, store_flags: list[str]
) -> None:
    executor = await start_executor_on(*store_flags, "--max-tasks-per-key=1")
    async for stub in stub_of(executor):
        request_id = str(uuid.uuid4())
        request = CreateTaskRequest(text=WAITING, require_approval=True, request_id=request_id)
        first = await stub.CreateTask(request)
        # The key is at its quota now, yet the retry is answered: it creates nothing.
        again = await stub.CreateTask(request)
        other = CreateTaskRequest(text="other words", request_id=request_id.upper())
        third = await stub.CreateTask(other)
        assert again.task_id == first.task_id == third.task_id
        assert third.text == WAITING  # the stored task, whatever the retry said
        listed = await stub.ListTasks(task_service_pb2.ListTasksRequest())
        assert [t.task_id for t in listed.tasks] == [first.task_id]
        events = await cancelled_log(stub, first.task_id)
        accepted = [e for e in events if e.task_state_changed.message == "accepted"]
        assert len(accepted) == 1  # started once


async def test_two_executors_racing_on_one_request_id_create_one_task(
    start_executor_on: StartExecutor, redis_server: RedisServer
) -> None:
    store = f"--store={redis_server.url}?prefix=test-{uuid.uuid4().hex}:"
    executors = [await start_executor_on(store), await start_executor_on(store)]
    request = CreateTaskRequest(text=WAITING, require_approval=True, request_id=str(uuid.uuid4()))
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{executors[0].port}") as one,
        grpc.aio.insecure_channel(f"127.0.0.1:{executors[1].port}") as two,
    ):
        stubs = [task_service_pb2_grpc.TaskServiceStub(c) for c in (one, two)]
        tasks = await asyncio.gather(*(s.CreateTask(request) for s in stubs for _ in range(3)))
        assert len({t.task_id for t in tasks}) == 1
        listed = await stubs[1].ListTasks(task_service_pb2.ListTasksRequest())
        assert [t.task_id for t in listed.tasks] == [tasks[0].task_id]
        events = await cancelled_log(stubs[0], tasks[0].task_id)
        assert len([e for e in events if e.task_state_changed.message == "accepted"]) == 1


async def test_one_request_id_from_two_keys_makes_two_tasks(
    start_executor_on: StartExecutor, keys_file: Path
) -> None:
    executor = await start_executor_on(f"--api-keys={keys_file}")
    async for stub in stub_of(executor):
        request = CreateTaskRequest(
            text=WAITING, require_approval=True, request_id=str(uuid.uuid4())
        )
        alices = await stub.CreateTask(request, metadata=ALICE)
        bobs = await stub.CreateTask(request, metadata=BOB)
        assert alices.task_id != bobs.task_id
        assert (alices.owner, bobs.owner) == ("alice", "bob")


@pytest.mark.parametrize("request_id", ["42", "not-a-uuid", f"{{{uuid.uuid4()}}}", "x" * 5000])
async def test_a_request_id_that_is_no_uuid_is_invalid(stub: Stub, request_id: str) -> None:
    error = await refusal(stub.CreateTask(CreateTaskRequest(text=WAITING, request_id=request_id)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is not a UUID" in (error.details() or "")
    assert len(error.details() or "") < 300


# --- ReadArtifact.read_offset ---------------------------------------------------------------


async def test_read_artifact_starts_at_the_read_offset(stub: Stub) -> None:
    task = await stub.CreateTask(CreateTaskRequest(text="Write a short brief on tea"))
    await watch_all(stub, task.task_id)
    done = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))
    artifact = done.artifacts[0]

    def request(offset: int) -> task_service_pb2.ReadArtifactRequest:
        return task_service_pb2.ReadArtifactRequest(
            task_id=task.task_id, path=artifact.path, read_offset=offset
        )

    async def read(offset: int) -> list[task_service_pb2.ReadArtifactResponse]:
        return [chunk async for chunk in stub.ReadArtifact(request(offset))]

    whole = b"".join(c.data for c in await read(0))
    assert len(whole) == artifact.size_bytes
    middle = artifact.size_bytes // 3
    rest = await read(middle)
    assert rest[0].offset == middle
    assert b"".join(c.data for c in rest) == whole[middle:]
    assert await read(artifact.size_bytes) == []  # a complete download resumes to nothing

    beyond = await refusal(stub.ReadArtifact(request(artifact.size_bytes + 1)))
    assert beyond.code() == grpc.StatusCode.OUT_OF_RANGE
    info = reason_of(beyond)
    assert info.reason == "READ_OFFSET_OUT_OF_RANGE"
    assert dict(info.metadata) == {"size_bytes": str(artifact.size_bytes)}
    negative = await refusal(stub.ReadArtifact(request(-1)))
    assert negative.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- ErrorInfo reasons (AIP-193) -------------------------------------------------------------


async def test_the_task_quota_refusal_names_its_reason_and_limit(
    start_executor_on: StartExecutor, keys_file: Path
) -> None:
    executor = await start_executor_on(f"--api-keys={keys_file}", "--max-tasks-per-key=1")
    async with AsyncClient(f"127.0.0.1:{executor.port}", api_key=ALICE_KEY) as client:
        await client.create_task(WAITING, require_approval=True)
        with pytest.raises(ResourceExhaustedError) as refused:
            await client.create_task(WAITING, require_approval=True)
    assert refused.value.reason == "TASK_QUOTA_EXCEEDED"
    assert refused.value.metadata == {"limit": "1"}


async def test_the_watcher_quota_refusals_name_which_quota(
    start_executor_on: StartExecutor, keys_file: Path
) -> None:
    executor = await start_executor_on(
        f"--api-keys={keys_file}", "--max-watchers-per-task=1", "--max-watchers-per-key=2"
    )
    async for stub in stub_of(executor):
        request = CreateTaskRequest(text=WAITING, require_approval=True)
        one, two, three = [(await stub.CreateTask(request, metadata=ALICE)).task_id for _ in "123"]
        watching = []
        for task_id in (one, two):
            watch = task_service_pb2.WatchTaskRequest(task_id=task_id)
            call = stub.WatchTask(watch, metadata=ALICE)
            await call.read()  # a watcher is counted once its stream runs
            watching.append(call)
        per_task = await refusal(
            stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=one), metadata=ALICE)
        )
        per_key = await refusal(
            stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=three), metadata=ALICE)
        )
        for call in watching:
            call.cancel()
    assert per_task.code() == per_key.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason_of(per_task).reason == "TASK_WATCHER_QUOTA_EXCEEDED"
    assert dict(reason_of(per_task).metadata) == {"limit": "1", "task_id": one}
    assert reason_of(per_key).reason == "KEY_WATCHER_QUOTA_EXCEEDED"
    assert dict(reason_of(per_key).metadata) == {"limit": "2"}


async def test_a_missing_key_and_an_unknown_key_have_their_own_reasons(
    start_executor_on: StartExecutor, keys_file: Path
) -> None:
    executor = await start_executor_on(f"--api-keys={keys_file}")
    target = f"127.0.0.1:{executor.port}"
    reasons = []
    for key in (None, "mk_nobody"):
        async with AsyncClient(target, api_key=key) as client:
            with pytest.raises(UnauthenticatedError) as refused:
                await client.list_tasks()
            reasons.append(refused.value.reason)
    assert reasons == ["API_KEY_MISSING", "API_KEY_UNKNOWN"]
    async for stub in stub_of(executor):
        watch = task_service_pb2.WatchTaskRequest(task_id="0" * 16)
        streaming = await refusal(stub.WatchTask(watch))
    assert reason_of(streaming).reason == "API_KEY_MISSING"


# --- ListTasks: a view, and pages bounded in bytes -------------------------------------------


async def test_list_tasks_is_basic_by_default_and_full_on_request(stub: Stub) -> None:
    task = await stub.CreateTask(CreateTaskRequest(text="Write a short brief on tea"))
    await watch_all(stub, task.task_id)
    full_task = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))
    assert full_task.steps
    assert full_task.artifacts
    assert full_task.pages

    basic = (await stub.ListTasks(task_service_pb2.ListTasksRequest())).tasks[0]
    assert (basic.task_id, basic.text, basic.state) == (task.task_id, task.text, full_task.state)
    assert (basic.last_seq, basic.create_time) == (full_task.last_seq, full_task.create_time)
    assert (len(basic.steps), len(basic.artifacts), len(basic.pages)) == (0, 0, 0)
    assert basic.plan_summary == ""
    full = await stub.ListTasks(task_service_pb2.ListTasksRequest(view=Task.VIEW_FULL))
    assert full.tasks[0] == full_task

    unknown_view: Any = 9
    unknown = await refusal(stub.ListTasks(task_service_pb2.ListTasksRequest(view=unknown_view)))
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_page_of_big_tasks_stays_under_the_byte_bound_and_paging_sees_each_once(
    stub: Stub,
) -> None:
    text = "Plan a garden. " + "x" * 60_000
    created = [
        await stub.CreateTask(CreateTaskRequest(text=f"{n} {text}", require_approval=True))
        for n in range(40)
    ]
    seen: list[str] = []
    sizes: list[int] = []
    token = ""
    while True:
        request = task_service_pb2.ListTasksRequest(page_size=1000, page_token=token)
        page = await stub.ListTasks(request)
        sizes.append(page.ByteSize())
        seen += [task.task_id for task in page.tasks]
        token = page.next_page_token
        if not token:
            break
    assert seen == [task.task_id for task in reversed(created)]  # each once, newest first
    assert len(sizes) >= 3
    assert max(sizes) <= MAX_PAGE_BYTES + 1024


async def test_either_store_refuses_a_second_create_of_one_id_and_keeps_the_first(
    tmp_path: Path, store_flags: list[str]
) -> None:
    # What CreateTask's request_id relies on when two executors race: the loser's create is
    # refused (each store raises its own error) and the winner's record stays.
    store = open_store(store_flags[0].removeprefix("--store=") if store_flags else "", tmp_path)
    first = Task(task_id="00000000000000aa", text="first", owner="alice")
    first.create_time.FromNanoseconds(1)
    second = Task(task_id=first.task_id, text="second", owner="alice")
    second.create_time.FromNanoseconds(2)
    try:
        await store.create_task(first)
        with pytest.raises((sqlite3.IntegrityError, TaskExists)):
            await store.create_task(second)
        assert await store.get_task(first.task_id) == first
    finally:
        await store.close()
