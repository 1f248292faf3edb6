"""An exception no servicer expected ends the call INTERNAL with a plain message and is logged
with its traceback; grpc's default ("Unexpected <class ...>", UNKNOWN) never reaches a caller."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from mitosis.planner.servicer import PlannerServicer
from mitosis.rpc.interceptors import ErrorStatusInterceptor
from mitosis.v1 import plan_pb2, planner_service_pb2, planner_service_pb2_grpc


class BrokenModel:
    """A planning model with a bug."""

    name = "broken"

    async def create_plan(self, task_text: str) -> plan_pb2.Plan:
        raise ZeroDivisionError("division by zero")

    async def revise_plan(
        self, task_text: str, plan: plan_pb2.Plan, failed_step_index: int, failure: str
    ) -> plan_pb2.Plan:
        raise AssertionError("unreachable")


@pytest.fixture
async def planner() -> AsyncIterator[planner_service_pb2_grpc.PlannerServiceStub]:
    server = grpc.aio.server(interceptors=[ErrorStatusInterceptor()])
    servicer = PlannerServicer(BrokenModel())  # type: ignore[arg-type]
    planner_service_pb2_grpc.add_PlannerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield planner_service_pb2_grpc.PlannerServiceStub(channel)
    await server.stop(None)


async def test_a_bug_is_internal_with_words_and_logged_with_its_traceback(
    planner: planner_service_pb2_grpc.PlannerServiceStub, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(grpc.aio.AioRpcError) as raised:
        await planner.CreatePlan(planner_service_pb2.CreatePlanRequest(task_text="a task"))

    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == "internal error in the service; its log has the details"
    logged = [r for r in caplog.records if r.exc_info]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[0] is ZeroDivisionError
