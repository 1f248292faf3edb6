"""The executor on the Redis store: a task runs, is watched and survives a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Container, Iterator
from pathlib import Path

import grpc
import pytest

from mitosis.executor.events.hub import EventHub
from mitosis.executor.events.log import EventLog
from mitosis.executor.running.planned_agent import PlannedToolAgent
from mitosis.executor.running.runner import RunnerConfig, TaskRunner
from mitosis.executor.store.redis import RedisStore
from mitosis.models.offline import OfflineModel
from mitosis.projection import TERMINAL_STATES, apply_event, is_terminal_event
from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub
from tests.support.watch import each_event

from .support.executors import StartExecutor
from .support.planning import ScriptedPlanner, python_step
from .support.redis_server import RedisServer
from .support.waiting import eventually
from .support.watch import watch_all


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
        async for event in each_event(call):
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


async def watch_reconnecting(
    target: str, task_id: str, breaks: list[grpc.StatusCode]
) -> list[task_pb2.TaskEvent]:
    """Watch the task to its end as a resuming client does: when the stream breaks, watch
    again from the last seq seen. Each break's status goes into `breaks`."""
    events: list[task_pb2.TaskEvent] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = TaskServiceStub(channel)
        for _ in range(200):
            after = events[-1].seq if events else 0
            request = task_service_pb2.WatchTaskRequest(task_id=task_id, after_seq=after)
            try:
                async for event in each_event(stub.WatchTask(request, timeout=120)):
                    if not event.HasField("heartbeat"):
                        events.append(event)
            except grpc.aio.AioRpcError as error:
                breaks.append(error.code())
                await asyncio.sleep(0.2)
                continue
            return events
    raise AssertionError(f"the watch broke {len(breaks)} times: {breaks}")


@pytest.mark.parametrize(
    ("lease_ttl", "taken_over"),
    [("10", False), ("1", True)],
    ids=["the lease outlives the outage", "the lease expires in the outage"],
)
async def test_a_task_finishes_and_is_watched_exactly_once_across_a_redis_restart(
    start_executor_on: StartExecutor, redis: RedisServer, lease_ttl: str, taken_over: bool
) -> None:
    """Redis (appendonly) stops mid-task and starts again on the same port and data.

    The executors ride it out on retries. When the outage outlasts the lease, the executor
    running the task finds its lease gone and stops, and one of the two resumes the task.
    Either way the task succeeds and two watchers, one on each executor, see every event
    exactly once, reconnecting with their last seq if their stream breaks.
    """
    # Paced so that the task is still writing when Redis goes away.
    flags = [f"--store={redis.url}", f"--lease-ttl={lease_ttl}"]
    running = await start_executor_on(*flags, "--offline-pace=0.02")
    other = await start_executor_on(*flags)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = TaskServiceStub(channel)
        created = await stub.CreateTask(
            task_service_pb2.CreateTaskRequest(text="Write a guide to composting")
        )
        breaks: list[list[grpc.StatusCode]] = [[], []]
        watchers = [
            asyncio.create_task(watch_reconnecting(f"127.0.0.1:{e.port}", created.task_id, b))
            for e, b in zip((running, other), breaks, strict=True)
        ]
        request = task_service_pb2.WatchTaskRequest(task_id=created.task_id)
        async for event in each_event(stub.WatchTask(request)):
            if event.HasField("page_delta"):
                break  # the task is writing its document

        stopped_ns = time.time_ns()
        await asyncio.to_thread(redis.stop)
        await asyncio.sleep(1.5)
        await asyncio.to_thread(redis.start)
        restarted_ns = time.time_ns()

        seen = await asyncio.gather(*watchers)
        task = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=created.task_id))

    events = seen[0]
    # The outage fell mid-task: events were appended before it and after it.
    times = [e.create_time.ToNanoseconds() for e in events]
    assert times[0] < stopped_ns < restarted_ns < times[-1]
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), breaks
    assert events[-1].task_state_changed.state == task_pb2.Task.STATE_SUCCEEDED
    assert seen[1] == events
    assert_pages_whole(events)
    resumed = [e for e in events if e.log_line.text.startswith("resuming the task")]
    assert bool(resumed) == taken_over
    # GetTask agrees with the events: it is their fold.
    assert task.state == task_pb2.Task.STATE_SUCCEEDED
    assert task.last_seq == len(events)
    folded = task_pb2.Task()
    folded.CopyFrom(created)  # the record with the first event (accepted) folded in
    for event in events[1:]:
        apply_event(folded, event)
    assert folded == task


def assert_pages_whole(events: list[task_pb2.TaskEvent]) -> None:
    """Each delivered page's deltas follow one another without a hole, up to its size."""
    ends: dict[int, int] = {}
    for event in events:
        if event.HasField("page_started"):
            ends[event.page_started.page_number] = 0
        elif event.HasField("page_delta"):
            delta = event.page_delta
            assert delta.offset == ends[delta.page_number], f"a hole before seq {event.seq}"
            ends[delta.page_number] += len(delta.text.encode())
        elif event.HasField("page_finished") and not event.page_finished.abandoned:
            assert event.page_finished.size_bytes == ends[event.page_finished.page_number]


async def test_an_executor_started_while_redis_is_down_serves_and_resumes_its_tasks_later(
    start_executor_on: StartExecutor, tmp_path: Path
) -> None:
    """Redis down at start is not fatal: the executor serves, and takes the tasks up once
    Redis is back (here: a task left unfinished by a first executor)."""
    server = RedisServer(tmp_path / "redis", aof=True)
    server.start()
    first = await start_executor_on(f"--store={server.url}", "--offline-pace=0.05")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        task = await TaskServiceStub(channel).CreateTask(
            task_service_pb2.CreateTaskRequest(text="Write a guide to composting at home")
        )
    await first.stop(None)  # stops its tasks without ending them
    server.stop()

    second = await start_executor_on(f"--store={server.url}", "--lease-ttl=1")  # no Redis now
    server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel:
        stub = TaskServiceStub(channel)
        events = await watch_all(stub, task.task_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].task_state_changed.state == task_pb2.Task.STATE_SUCCEEDED
    server.stop()


@pytest.mark.parametrize("action", ["approve", "cancel"])
async def test_approve_or_cancel_on_one_executor_while_another_keeps_claiming(
    tmp_path: Path, redis: RedisServer, action: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Executor A planned the task, and its claim loop looks at it every 0.1 s (and leaves
    it: a task waiting for approval has nothing to run); B's ApprovePlan and CancelTask
    still land, exactly once. It checks the path across executors."""
    prefix = f"race-{action}:"
    stores = [RedisStore.from_url(redis.url, prefix=prefix) for _ in range(2)]
    looks_by_a = 0
    list_unfinished = stores[0].unfinished_task_ids

    async def counted() -> list[str]:
        nonlocal looks_by_a
        looks_by_a += 1
        return await list_unfinished()

    monkeypatch.setattr(stores[0], "unfinished_task_ids", counted)
    runners = []
    for number, store in enumerate(stores):
        config = RunnerConfig(
            data_dir=tmp_path / "data", tool_timeout=20, lease_ttl=0.2, owner=f"exec-{number}"
        )
        log = EventLog(store, EventHub())
        planner = ScriptedPlanner(python_step("print('ran')"))
        runners.append(TaskRunner(log, planner, PlannedToolAgent(OfflineModel(pace=0)), config))
    a, b = runners
    task = task_pb2.Task(task_id="0123456789abcdef", text="do it", require_approval=True)
    task.create_time.FromNanoseconds(time.time_ns())
    await stores[0].create_task(task)
    a.start(task.task_id)
    claiming = asyncio.create_task(a.claim_forever())
    try:
        await reached(stores[1], task.task_id, {task_pb2.Task.STATE_AWAITING_APPROVAL})
        looked = looks_by_a
        await eventually(lambda: looks_by_a >= looked + 2, what="A's claim loop looking twice")
        if action == "approve":
            await b.approve(task.task_id, None)
            expected = task_pb2.Task.STATE_SUCCEEDED
        else:
            await b.cancel(task.task_id)
            expected = task_pb2.Task.STATE_CANCELLED
        ended = await reached(stores[1], task.task_id, TERMINAL_STATES)
    finally:
        claiming.cancel()
        await asyncio.gather(claiming, return_exceptions=True)
        for runner in runners:
            await runner.shutdown()
    events = await stores[1].read_events(task.task_id, 0, 1000)
    for store in stores:
        await store.close()
    assert ended.state == expected, ended.error
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert is_terminal_event(events[-1])  # nothing after the end
    assert sum(is_terminal_event(e) for e in events) == 1


async def reached(store: RedisStore, task_id: str, states: Container[int]) -> task_pb2.Task:
    """Return the task once its state is one of `states` (polled: the test has no hub)."""

    async def there() -> task_pb2.Task | None:
        task = await store.get_task(task_id)
        return task if task is not None and task.state in states else None

    return await eventually(there, timeout=30, interval=0.02, what=f"task {task_id} in {states}")
