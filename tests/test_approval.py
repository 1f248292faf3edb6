"""Plan approval: a task can wait for ApprovePlan, run an edited plan, or be cancelled."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import struct_pb2

from mitosis.v1 import plan_pb2, task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub
from tests.support.refusals import reason_of
from tests.support.watch import each_event

from .support.watch import watch_all

Task = task_pb2.Task


async def create_waiting(stub: TaskServiceStub) -> Task:
    task = await stub.CreateTask(
        task_service_pb2.CreateTaskRequest(
            text="Write a guide to composting", require_approval=True
        )
    )
    call = each_event(stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id)))
    async for event in call:
        if event.task_state_changed.state == Task.STATE_AWAITING_APPROVAL:
            break
    call.cancel()
    return await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))


async def test_a_task_waits_for_approval_then_runs_the_plan(stub: TaskServiceStub) -> None:
    waiting = await create_waiting(stub)
    assert waiting.require_approval
    assert waiting.steps
    assert all(step.attempts == 0 for step in waiting.steps)

    approved = await stub.ApprovePlan(task_service_pb2.ApprovePlanRequest(task_id=waiting.task_id))
    events = await watch_all(stub, waiting.task_id)

    assert approved.state == Task.STATE_RUNNING
    assert events[-1].task_state_changed.state == Task.STATE_SUCCEEDED
    assert not any("resuming" in e.log_line.text for e in events)


async def test_an_edited_plan_replaces_the_proposed_one(stub: TaskServiceStub) -> None:
    waiting = await create_waiting(stub)
    arguments = struct_pb2.Struct()
    arguments.update({"file_name": "notes.md", "title": "My notes"})
    plan = plan_pb2.Plan(
        steps=[
            plan_pb2.PlanStep(title="Write my notes", tool="write_document", arguments=arguments),
            plan_pb2.PlanStep(title="Check", tool="list_files"),
        ]
    )

    await stub.ApprovePlan(task_service_pb2.ApprovePlanRequest(task_id=waiting.task_id, plan=plan))
    await watch_all(stub, waiting.task_id)
    final = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=waiting.task_id))

    assert final.state == Task.STATE_SUCCEEDED
    assert [step.title for step in final.steps] == ["Write my notes", "Check"]
    assert [artifact.path for artifact in final.artifacts] == ["notes.md"]


async def test_a_waiting_task_can_be_cancelled(stub: TaskServiceStub) -> None:
    waiting = await create_waiting(stub)

    cancelled = await stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=waiting.task_id))

    assert cancelled.state == Task.STATE_CANCELLED
    assert {step.state for step in cancelled.steps} == {task_pb2.Step.STATE_CANCELLED}


async def test_approving_a_task_that_does_not_wait_is_a_failed_precondition(
    stub: TaskServiceStub,
) -> None:
    task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="Write a poem"))
    await watch_all(stub, task.task_id)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ApprovePlan(task_service_pb2.ApprovePlanRequest(task_id=task.task_id))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not awaiting approval" in (caught.value.details() or "")
    assert reason_of(caught.value).reason == "TASK_ENDED"
    assert reason_of(caught.value).metadata["state"] == "succeeded"


async def test_approving_a_running_task_names_its_reason(stub: TaskServiceStub) -> None:
    waiting = await create_waiting(stub)
    await stub.ApprovePlan(task_service_pb2.ApprovePlanRequest(task_id=waiting.task_id))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ApprovePlan(task_service_pb2.ApprovePlanRequest(task_id=waiting.task_id))

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(caught.value).reason in ("TASK_NOT_AWAITING_APPROVAL", "TASK_ENDED")


async def test_cancelling_an_ended_task_and_watching_past_its_end_name_their_reasons(
    stub: TaskServiceStub,
) -> None:
    waiting = await create_waiting(stub)
    cancelled = await stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=waiting.task_id))

    with pytest.raises(grpc.aio.AioRpcError) as again:
        await stub.CancelTask(task_service_pb2.CancelTaskRequest(task_id=waiting.task_id))
    beyond = task_service_pb2.WatchTaskRequest(
        task_id=waiting.task_id, after_seq=cancelled.last_seq + 1
    )
    with pytest.raises(grpc.aio.AioRpcError) as past:
        await stub.WatchTask(beyond).read()

    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason_of(again.value).reason == "TASK_ENDED"
    assert reason_of(again.value).metadata["state"] == "cancelled"
    assert past.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert reason_of(past.value).reason == "AFTER_SEQ_OUT_OF_RANGE"
    assert reason_of(past.value).metadata["last_seq"] == str(cancelled.last_seq)


async def test_an_edited_plan_with_an_unknown_tool_is_invalid(stub: TaskServiceStub) -> None:
    waiting = await create_waiting(stub)
    plan = plan_pb2.Plan(steps=[plan_pb2.PlanStep(title="Hack", tool="shell")])

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ApprovePlan(
            task_service_pb2.ApprovePlanRequest(task_id=waiting.task_id, plan=plan)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'shell'" in (caught.value.details() or "")
    still = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=waiting.task_id))
    assert still.state == Task.STATE_AWAITING_APPROVAL
