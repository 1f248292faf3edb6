"""Contract tests of TaskService against a real executor and planner on free ports."""

from __future__ import annotations

import hashlib
import os
import random

import grpc
import pytest

from mitosis.executor.server import Executor
from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub
from tests.support.watch import each_event

from .support.executors import StartExecutor
from .support.watch import watch_all

Task = task_pb2.Task
TASK_TEXT = "Write a short market brief on home solar batteries"


async def create(stub: TaskServiceStub, text: str = TASK_TEXT) -> Task:
    return await stub.CreateTask(task_service_pb2.CreateTaskRequest(text=text), timeout=10)


async def read_artifact(stub: TaskServiceStub, task_id: str, path: str) -> bytes:
    request = task_service_pb2.ReadArtifactRequest(task_id=task_id, path=path)
    chunks = [chunk async for chunk in stub.ReadArtifact(request, timeout=10)]
    assert [c.offset for c in chunks] == [
        sum(len(c.data) for c in chunks[:i]) for i in range(len(chunks))
    ]
    return b"".join(chunk.data for chunk in chunks)


def kinds(events: list[task_pb2.TaskEvent]) -> list[str]:
    return [str(event.WhichOneof("kind")) for event in events]


async def test_a_task_runs_to_success_and_its_log_is_gapless(stub: TaskServiceStub) -> None:
    task = await create(stub)
    assert task.state == Task.STATE_PENDING
    assert task.model == "offline"

    events = await watch_all(stub, task.task_id)

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert all(e.task_id == task.task_id and e.create_time.seconds > 0 for e in events)
    assert kinds(events)[0] == "task_state_changed"
    assert "plan_ready" in kinds(events)
    assert events[-1].task_state_changed.state == Task.STATE_SUCCEEDED
    plan = next(e.plan_ready for e in events if e.HasField("plan_ready"))
    assert 3 <= len(plan.steps) <= 6
    assert plan.model == "offline"
    final = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))
    assert final.state == Task.STATE_SUCCEEDED
    assert final.last_seq == events[-1].seq
    assert all(step.state == task_pb2.Step.STATE_SUCCEEDED for step in final.steps)


async def test_each_document_is_a_page_whose_deltas_are_the_delivered_file(
    stub: TaskServiceStub,
) -> None:
    task = await create(stub)
    events = await watch_all(stub, task.task_id)

    started = [e.page_started for e in events if e.HasField("page_started")]
    assert len(started) >= 2
    assert [p.page_number for p in started] == list(range(1, len(started) + 1))
    for page in started:
        deltas = [e.page_delta for e in events if e.page_delta.page_number == page.page_number]
        text = "".join(d.text for d in deltas).encode()
        offsets = [d.offset for d in deltas]
        assert offsets == [
            len("".join(d.text for d in deltas[:i]).encode()) for i in range(len(deltas))
        ]
        finished = next(
            e.page_finished
            for e in events
            if e.HasField("page_finished") and e.page_finished.page_number == page.page_number
        )
        assert finished.size_bytes == len(text)
        assert finished.sha256 == hashlib.sha256(text).hexdigest()
        delivered = await read_artifact(stub, task.task_id, page.file_name)
        assert delivered == text
        assert text.startswith(b"# ")


async def test_page_deltas_are_coalesced(stub: TaskServiceStub) -> None:
    task = await create(stub)
    events = await watch_all(stub, task.task_id)

    deltas = [e.page_delta for e in events if e.HasField("page_delta")]
    total = sum(len(d.text) for d in deltas)
    # Pacing is off, so each document arrives as a few large deltas, not one per word.
    assert total / len(deltas) > 200


async def test_artifacts_are_listed_with_their_digests(stub: TaskServiceStub) -> None:
    task = await create(stub)
    await watch_all(stub, task.task_id)
    final = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))

    assert final.artifacts
    for artifact in final.artifacts:
        data = await read_artifact(stub, task.task_id, artifact.path)
        assert hashlib.sha256(data).hexdigest() == artifact.sha256
        assert len(data) == artifact.size_bytes


async def test_watching_from_any_seq_gives_exactly_the_rest(stub: TaskServiceStub) -> None:
    task = await create(stub)
    everything = await watch_all(stub, task.task_id)
    last = everything[-1].seq

    for after in [*sorted(random.Random(7).sample(range(last), 12)), 0, last - 1]:
        rest = await watch_all(stub, task.task_id, after_seq=after)
        assert [e.seq for e in rest] == list(range(after + 1, last + 1))
        assert rest == everything[after:]


async def test_watching_a_finished_task_from_its_last_seq_ends_at_once(
    stub: TaskServiceStub,
) -> None:
    task = await create(stub)
    last = (await watch_all(stub, task.task_id))[-1].seq

    assert await watch_all(stub, task.task_id, after_seq=last) == []


async def test_a_stream_dropped_at_random_points_resumes_exactly_once(
    start_executor_on: StartExecutor,
) -> None:
    executor = await start_executor_on("--offline-pace=0.002")
    rng = random.Random(2026)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = TaskServiceStub(channel)
        task = await create(stub)
        received: list[int] = []
        drops = 0
        while True:
            request = task_service_pb2.WatchTaskRequest(
                task_id=task.task_id, after_seq=received[-1] if received else 0
            )
            call = stub.WatchTask(request)
            budget = rng.randint(1, 8)
            ended = False
            async for event in each_event(call):
                if event.HasField("heartbeat"):
                    continue
                received.append(event.seq)
                if event.task_state_changed.state == Task.STATE_SUCCEEDED:
                    ended = True
                budget -= 1
                if budget == 0 and not ended:
                    call.cancel()
                    drops += 1
                    break
            if ended:
                break

    assert drops >= 10
    assert received == list(range(1, len(received) + 1))


async def test_list_tasks_pages_newest_first(stub: TaskServiceStub) -> None:
    created = [await create(stub, f"Write a note number {i}") for i in range(5)]
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        response = await stub.ListTasks(
            task_service_pb2.ListTasksRequest(page_size=2, page_token=token)
        )
        seen += [task.task_id for task in response.tasks]
        pages += 1
        token = response.next_page_token
        if not token:
            break

    assert pages == 3
    assert seen == [task.task_id for task in reversed(created)]


async def test_cancel_stops_the_task_and_watchers_see_the_end(
    start_executor_on: StartExecutor,
) -> None:
    executor = await start_executor_on("--offline-pace=0.05")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = TaskServiceStub(channel)
        task = await create(stub)
        call = stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id))
        seen = 0
        async for event in each_event(call):
            seen = max(seen, event.seq)
            if event.HasField("page_delta"):
                break
        call.cancel()
        cancelled = await stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task.task_id))
        rest = await watch_all(stub, task.task_id, after_seq=seen)

    assert cancelled.state == Task.STATE_CANCELLED
    assert cancelled.error == "cancelled by request"
    assert rest[-1].task_state_changed.state == Task.STATE_CANCELLED
    assert any(e.page_finished.abandoned for e in rest)
    states = {step.state for step in cancelled.steps}
    assert task_pb2.Step.STATE_CANCELLED in states
    assert task_pb2.Step.STATE_RUNNING not in states
    assert task_pb2.Step.STATE_PENDING not in states


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "empty"), ("   \n\t", "empty"), ("x" * (64 * 1024 + 1), "limit")],
)
async def test_create_task_rejects_bad_text(stub: TaskServiceStub, text: str, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(stub, text)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")


@pytest.mark.parametrize("task_id", ["0123456789abcdef", "no-such-task", "../../etc"])
async def test_unknown_task_ids_are_not_found_everywhere(
    stub: TaskServiceStub, task_id: str
) -> None:
    calls = [
        stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id)),
        stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task_id)),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    for stream in (
        stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task_id)),
        stub.ReadArtifact(task_service_pb2.ReadArtifactRequest(task_id=task_id, path="a.md")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in stream:
                pass
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_empty_task_id_is_invalid(stub: TaskServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=""))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("after_seq", "code"),
    [(-1, grpc.StatusCode.INVALID_ARGUMENT), (10**9, grpc.StatusCode.OUT_OF_RANGE)],
)
async def test_watch_rejects_negative_and_future_after_seq(
    stub: TaskServiceStub, after_seq: int, code: grpc.StatusCode
) -> None:
    task = await create(stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await watch_all(stub, task.task_id, after_seq=after_seq)
    assert caught.value.code() == code
    assert str(after_seq) in (caught.value.details() or "")


@pytest.mark.parametrize("path", ["../mitosis.sqlite3", "/etc/passwd", "a/../../x", "escape.md"])
async def test_read_artifact_refuses_paths_out_of_the_workspace(
    executor: Executor, stub: TaskServiceStub, path: str
) -> None:
    task = await create(stub)
    await watch_all(stub, task.task_id)
    workspace = executor.runner.workspace(task.task_id).root
    os.symlink("/etc/passwd", workspace / "escape.md")

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_artifact(stub, task.task_id, path)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_read_artifact_of_a_file_never_delivered_is_not_found(stub: TaskServiceStub) -> None:
    task = await create(stub)
    await watch_all(stub, task.task_id)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await read_artifact(stub, task.task_id, "never-written.md")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cancelling_a_finished_task_is_a_failed_precondition(stub: TaskServiceStub) -> None:
    task = await create(stub)
    await watch_all(stub, task.task_id)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task.task_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "succeeded" in (caught.value.details() or "")


@pytest.mark.parametrize("token", ["garbage", "bm90OmEgY3Vyc29y"])
async def test_list_tasks_rejects_a_forged_page_token(stub: TaskServiceStub, token: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListTasks(task_service_pb2.ListTasksRequest(page_token=token))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_tasks_rejects_a_negative_page_size(stub: TaskServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListTasks(task_service_pb2.ListTasksRequest(page_size=-1))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_watcher_that_stops_reading_blocks_neither_the_task_nor_others(
    start_executor_on: StartExecutor,
) -> None:
    executor = await start_executor_on("--offline-pace=0.001")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = TaskServiceStub(channel)
        task = await create(stub)
        stalled = each_event(
            stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id))
        )
        first = await stalled.read()  # then reads nothing until the task has ended
        while first is not None and first.HasField("heartbeat"):
            first = await stalled.read()

        fast = await watch_all(stub, task.task_id)
        final = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))
        rest = []
        while (event := await stalled.read()) is not None:
            if not event.HasField("heartbeat"):
                rest.append(event)

    assert final.state == Task.STATE_SUCCEEDED
    assert [first, *rest] == fast
