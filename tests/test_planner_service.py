"""Contract tests of PlannerService against a real planner on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from mitosis.models.base import TOOLS
from mitosis.v1 import planner_service_pb2
from mitosis.v1.planner_service_pb2_grpc import PlannerServiceStub


@pytest.fixture
async def planner(planner_target: str) -> AsyncIterator[PlannerServiceStub]:
    async with grpc.aio.insecure_channel(planner_target) as channel:
        yield PlannerServiceStub(channel)


async def test_create_plan_gives_three_to_six_steps_with_known_tools(
    planner: PlannerServiceStub,
) -> None:
    plan = await planner.CreatePlan(
        planner_service_pb2.CreatePlanRequest(task_text="Write a guide to brewing green tea")
    )

    assert plan.model == "offline"
    assert plan.summary
    assert 3 <= len(plan.steps) <= 6
    assert all(step.tool in TOOLS and step.title and step.rationale for step in plan.steps)
    assert sum(step.tool == "write_document" for step in plan.steps) >= 2


async def test_the_same_task_gives_the_same_plan(planner: PlannerServiceStub) -> None:
    request = planner_service_pb2.CreatePlanRequest(task_text="Compare three note-taking apps")

    assert await planner.CreatePlan(request) == await planner.CreatePlan(request)


async def test_revise_plan_replaces_the_failed_step_and_names_the_failure(
    planner: PlannerServiceStub,
) -> None:
    text = "Write a short market brief on home solar batteries"
    plan = await planner.CreatePlan(planner_service_pb2.CreatePlanRequest(task_text=text))

    revised = await planner.RevisePlan(
        planner_service_pb2.RevisePlanRequest(
            task_text=text, plan=plan, failed_step_index=0, failure="python exited with status 1"
        )
    )

    assert revised.steps
    assert all(step.tool != "python" for step in revised.steps)
    assert "python exited with status 1" in str(revised)


@pytest.mark.parametrize("text", ["", "  ", "x" * (64 * 1024 + 1)])
async def test_create_plan_rejects_empty_and_oversized_text(
    planner: PlannerServiceStub, text: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await planner.CreatePlan(planner_service_pb2.CreatePlanRequest(task_text=text))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("index", [-1, 99])
async def test_revise_plan_rejects_a_step_outside_the_plan(
    planner: PlannerServiceStub, index: int
) -> None:
    text = "Write a poem about rain"
    plan = await planner.CreatePlan(planner_service_pb2.CreatePlanRequest(task_text=text))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await planner.RevisePlan(
            planner_service_pb2.RevisePlanRequest(
                task_text=text, plan=plan, failed_step_index=index, failure="boom"
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert str(index) in (caught.value.details() or "")
