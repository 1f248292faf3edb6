"""Whole tasks on the OpenAI path: real planner and executor, the real `openai` client,
and a fake OpenAI-compatible server on loopback speaking the wire format."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from mitosis.executor.server import Executor, parse_args, start_executor
from mitosis.models.base import OFFLINE_FALLBACK_NOTE
from mitosis.planner.server import parse_args as parse_planner_args
from mitosis.planner.server import start_planner
from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub
from tests.support.watch import each_event

from .fake_openai import (
    Call,
    Drop,
    FakeOpenAI,
    Hang,
    Text,
    ToolCalls,
    error_401,
    error_429,
    plan_reply,
    plan_step,
)
from .support.waiting import eventually
from .support.watch import watch_all

Task = task_pb2.Task
DOCUMENT = ["# Solar", " batteries\n\n", "Home ", "storage ", "is ", "growing."]


def plan(*steps: dict[str, object]) -> Text:
    return plan_reply({"summary": "A scripted plan.", "steps": list(steps)})


WRITE = plan_step("Write the brief", "write_document", file_name="brief.md", doc_title="Brief")
RUN = plan_step("Compute", "python")
BRIEF_CALL = {"file_name": "brief.md", "title": "Brief", "instructions": "Summarise the market."}


@pytest.fixture
async def stub(fake_openai: FakeOpenAI, tmp_path: Path) -> AsyncIterator[TaskServiceStub]:
    model = ["--model=openai", "--model-retries=1", "--model-timeout=2"]
    planner = await start_planner(parse_planner_args(["--listen=127.0.0.1:0", *model]))
    executor: Executor = await start_executor(
        parse_args(
            [
                "--listen=127.0.0.1:0",
                f"--planner=127.0.0.1:{planner.port}",
                f"--data-dir={tmp_path}",
                "--heartbeat-interval=0.5",
                *model,
            ]
        )
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        yield TaskServiceStub(channel)
    await executor.stop(None)
    await planner.stop()


async def run(stub: TaskServiceStub, text: str = "Write a brief on solar batteries") -> Task:
    task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text=text))
    await watch_all(stub, task.task_id)
    return await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))


async def events_of(stub: TaskServiceStub, task: Task) -> list[task_pb2.TaskEvent]:
    return await watch_all(stub, task.task_id)


async def test_a_task_is_planned_and_run_by_the_model_with_tools(
    fake_openai: FakeOpenAI, stub: TaskServiceStub
) -> None:
    fake_openai.script(
        plan(RUN, WRITE),
        ToolCalls([Call("python", {"code": "print(6 * 7)"})]),
        Text("The answer is 42."),
        ToolCalls([Call("write_document", BRIEF_CALL)]),
        Text(pieces=DOCUMENT),
        Text("Done."),
    )

    task = await run(stub)
    events = await events_of(stub, task)

    assert task.state == Task.STATE_SUCCEEDED, task.error
    assert task.model == "openai:gpt-4o-mini"
    assert [s.title for s in task.steps] == ["Compute", "Write the brief"]
    stdout = [
        e.log_line.text for e in events if e.log_line.source == task_pb2.LogLine.SOURCE_STDOUT
    ]
    assert stdout == ["42"]
    assert any("python" in e.log_line.text for e in events if e.HasField("log_line"))
    page = "".join(e.page_delta.text for e in events if e.HasField("page_delta"))
    assert page == "".join(DOCUMENT)
    assert [a.path for a in task.artifacts] == ["brief.md"]
    assert task.steps[1].usage.model_calls == 3
    assert task.steps[1].usage.input_tokens == 300
    assert fake_openai.exchanges[0].body["response_format"]["type"] == "json_schema"


async def test_a_malformed_plan_is_repaired_once(
    fake_openai: FakeOpenAI, stub: TaskServiceStub
) -> None:
    fake_openai.script(
        Text("Sure! Here is a plan: step one, write it."),
        plan(WRITE),
        ToolCalls([Call("write_document", BRIEF_CALL)]),
        Text(pieces=DOCUMENT),
        Text("Done."),
    )

    task = await run(stub)

    assert task.state == Task.STATE_SUCCEEDED, task.error
    assert "Sure! Here is a plan" in fake_openai.exchanges[1].text()


async def test_a_plan_malformed_twice_is_replaced_by_the_offline_plan(
    fake_openai: FakeOpenAI, stub: TaskServiceStub
) -> None:
    fake_openai.script(Text("no plan today"), Text("still no plan"))

    created = await stub.CreateTask(
        task_service_pb2.CreateTaskRequest(
            text="Write a brief on solar batteries", require_approval=True
        )
    )

    async def waiting() -> Task | None:
        task = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=created.task_id))
        return task if task.state == Task.STATE_AWAITING_APPROVAL else None

    task = await eventually(waiting, what="the plan waits for approval")
    # A task fails at planning only when nothing can run: the offline plan stands in.
    assert task.plan_summary.startswith(OFFLINE_FALLBACK_NOTE)
    assert "the answer is not valid JSON" in task.plan_summary
    assert len(task.steps) >= 3
    assert "write_document" in task.tools
    call = stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id))
    logged = []
    async for event in each_event(call):
        if event.HasField("heartbeat"):
            break  # the log so far has been sent
        logged.append(event.log_line.text)
    call.cancel()
    assert "the model gave no valid plan: the offline planner's plan runs" in logged
    await stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task.task_id))


async def test_a_step_that_fails_twice_is_replanned(
    fake_openai: FakeOpenAI, stub: TaskServiceStub
) -> None:
    fake_openai.script(
        plan(RUN, WRITE),
        Drop(),  # step 1, attempt 1: no answer, then the client's one retry
        Drop(),
        Drop(),  # attempt 2
        Drop(),
        plan(WRITE),  # RevisePlan: write instead
        ToolCalls([Call("write_document", BRIEF_CALL)]),
        Text(pieces=DOCUMENT),
        Text("Done."),
    )

    task = await run(stub)
    events = await events_of(stub, task)

    assert task.state == Task.STATE_SUCCEEDED, task.error
    assert task.revisions == 1
    assert [s.state for s in task.steps] == [
        task_pb2.Step.STATE_FAILED,
        task_pb2.Step.STATE_SUCCEEDED,
    ]
    revised = [e.plan_revised for e in events if e.HasField("plan_revised")]
    assert [s.title for s in revised[0].steps] == ["Write the brief"]


async def test_a_429_is_retried_and_watchers_see_the_wait(
    fake_openai: FakeOpenAI, stub: TaskServiceStub
) -> None:
    fake_openai.script(
        plan(WRITE),
        error_429(),
        ToolCalls([Call("write_document", BRIEF_CALL)]),
        Text(pieces=DOCUMENT),
        Text("Done."),
    )

    task = await run(stub)
    events = await events_of(stub, task)

    assert task.state == Task.STATE_SUCCEEDED, task.error
    assert any("429" in e.log_line.text for e in events if e.HasField("log_line"))


async def test_a_bad_key_fails_the_task_at_once(
    fake_openai: FakeOpenAI, stub: TaskServiceStub
) -> None:
    fake_openai.script(error_401())

    task = await run(stub)

    assert task.state == Task.STATE_FAILED
    assert "OPENAI_API_KEY" in task.error
    assert len(fake_openai.exchanges) == 1


async def test_a_model_that_does_not_answer_fails_the_step_not_the_service(
    fake_openai: FakeOpenAI, stub: TaskServiceStub
) -> None:
    fake_openai.script(
        plan(WRITE), *[Hang(seconds=5) for _ in range(4)], plan_reply({"summary": "x", "steps": []})
    )

    task = await run(stub)

    assert task.state == Task.STATE_FAILED
    assert "did not answer within 2 s" in task.error
    health = await stub.ListTasks(task_service_pb2.ListTasksRequest())
    assert health.tasks[0].task_id == task.task_id


async def test_cancel_during_a_model_stream_closes_it(
    fake_openai: FakeOpenAI, stub: TaskServiceStub
) -> None:
    fake_openai.script(
        plan(WRITE),
        ToolCalls([Call("write_document", BRIEF_CALL)]),
        Text(pieces=["word "] * 400, piece_delay=0.02),
    )
    task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="Write a long brief"))
    call = stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id))
    async for event in each_event(call):
        if event.HasField("page_delta"):
            break
    call.cancel()

    cancelled = await stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=task.task_id))
    await fake_openai.wait_for(lambda: fake_openai.exchanges[-1].disconnected)

    assert cancelled.state == Task.STATE_CANCELLED
    assert not fake_openai.exchanges[-1].finished
    await asyncio.sleep(0)
