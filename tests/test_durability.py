"""kill -9 the executor mid-task: the task resumes and no event is lost or repeated."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest

from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub
from tests.support.watch import each_event

from .support.processes import Service, start_executor

pytestmark = pytest.mark.e2e
Task = task_pb2.Task


async def test_kill_9_mid_task_resumes_with_every_event_exactly_once(
    tmp_path: Path, planner_process: Service
) -> None:
    executor = start_executor(tmp_path, planner_process)
    received: list[task_pb2.TaskEvent] = []
    try:
        async with grpc.aio.insecure_channel(executor.target) as channel:
            stub = TaskServiceStub(channel)
            task = await stub.CreateTask(
                task_service_pb2.CreateTaskRequest(
                    text="Write a short market brief on home solar batteries"
                )
            )
            call = each_event(
                stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id))
            )
            pages_seen = 0
            async for event in call:
                if event.HasField("heartbeat"):
                    continue
                received.append(event)
                if event.HasField("page_delta"):
                    pages_seen += 1
                if pages_seen == 5:
                    break  # mid-document
            executor.stop(signal.SIGKILL)
            call.cancel()
        assert executor.process.returncode == -signal.SIGKILL

        executor = start_executor(tmp_path, planner_process)
        async with grpc.aio.insecure_channel(executor.target) as channel:
            stub = TaskServiceStub(channel)
            request = task_service_pb2.WatchTaskRequest(
                task_id=task.task_id, after_seq=received[-1].seq
            )
            async for event in each_event(stub.WatchTask(request, timeout=60)):
                if not event.HasField("heartbeat"):
                    received.append(event)
            final = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))
    finally:
        executor.stop()

    assert [e.seq for e in received] == list(range(1, len(received) + 1))
    assert received[-1].task_state_changed.state == Task.STATE_SUCCEEDED
    assert final.state == Task.STATE_SUCCEEDED
    abandoned = [e.page_finished.page_number for e in received if e.page_finished.abandoned]
    assert len(abandoned) == 1
    restarted = [e for e in received if "restarted" in e.step_state_changed.message]
    assert len(restarted) == 1
    # The page the kill interrupted is written again as a new page, complete this time.
    interrupted = abandoned[0]
    redo = [e.page_started for e in received if e.HasField("page_started")]
    assert redo[interrupted].title == redo[interrupted - 1].title


async def test_sigterm_stops_gracefully_and_the_task_resumes(
    tmp_path: Path, planner_process: Service
) -> None:
    executor = start_executor(tmp_path, planner_process)
    async with grpc.aio.insecure_channel(executor.target) as channel:
        stub = TaskServiceStub(channel)
        task = await stub.CreateTask(
            task_service_pb2.CreateTaskRequest(text="Write a guide to composting")
        )
        watch = stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id))
        async for event in each_event(watch):
            if event.HasField("page_delta"):
                break
    assert executor.stop(signal.SIGTERM) == 0

    executor = start_executor(tmp_path, planner_process)
    try:
        async with grpc.aio.insecure_channel(executor.target) as channel:
            stub = TaskServiceStub(channel)
            events = [
                e
                async for e in each_event(
                    stub.WatchTask(
                        task_service_pb2.WatchTaskRequest(task_id=task.task_id), timeout=60
                    )
                )
                if not e.HasField("heartbeat")
            ]
    finally:
        executor.stop()
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].task_state_changed.state == Task.STATE_SUCCEEDED
