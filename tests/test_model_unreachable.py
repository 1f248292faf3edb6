"""A model server that cannot be reached: UNAVAILABLE with its address and what to check, a
warning at start, health that says so, and a task failure that names it (never "refused",
never "UNKNOWN", never a Python class name)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mitosis.errors import MODEL_UNAVAILABLE
from mitosis.executor.server import SERVICE_NAME
from mitosis.models.openai_model import OpenAIModel
from mitosis.models.openai_wire import ModelUnreachable, OpenAISettings
from mitosis.planner.server import parse_args as parse_planner_args
from mitosis.planner.server import start_planner
from mitosis.v1 import planner_service_pb2, task_pb2, task_service_pb2
from mitosis.v1.planner_service_pb2_grpc import PlannerServiceStub
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub
from tests.support.executors import StartExecutor
from tests.support.ports import free_port
from tests.support.waiting import eventually
from tests.support.watch import watch_all

TASK = "Write a short market brief on home solar batteries"


@pytest.fixture
def stopped_server() -> str:
    """The address of a model server that is not running: nothing listens on the port."""
    return f"http://127.0.0.1:{free_port()}/v1"


@pytest.fixture
async def model(stopped_server: str) -> AsyncIterator[OpenAIModel]:
    made = OpenAIModel(OpenAISettings(base_url=stopped_server, api_key="sk-test", max_retries=1))
    yield made
    await made.aclose()


def says_what_to_do(message: str, address: str) -> None:
    assert f"the model server at {address}/ is unreachable" in message
    assert "check that it is running and that OPENAI_BASE_URL points at it" in message
    assert "Error" not in message  # no Python class names
    assert "<class" not in message


async def test_a_plan_from_a_stopped_server_is_unavailable_with_its_address(
    model: OpenAIModel, stopped_server: str
) -> None:
    with pytest.raises(ModelUnreachable) as raised:
        await model.create_plan(TASK)
    assert raised.value.code == grpc.StatusCode.UNAVAILABLE
    assert raised.value.reason == MODEL_UNAVAILABLE
    says_what_to_do(str(raised.value), stopped_server)
    assert "2 attempts" in str(raised.value)


async def test_the_probe_warns_once(
    model: OpenAIModel, stopped_server: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        await model.warn_if_unreachable()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    says_what_to_do(warnings[0], stopped_server)


@pytest.fixture
async def openai_planner(
    monkeypatch: pytest.MonkeyPatch, stopped_server: str
) -> AsyncIterator[str]:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", stopped_server)
    monkeypatch.setenv("MITOSIS_MODEL_RETRIES", "0")
    planner = await start_planner(parse_planner_args(["--listen=127.0.0.1:0", "--model=openai"]))
    yield f"127.0.0.1:{planner.port}"
    await planner.stop()


async def test_the_planner_answers_unavailable_naming_the_model_server(
    openai_planner: str, stopped_server: str
) -> None:
    async with grpc.aio.insecure_channel(openai_planner) as channel:
        planner = PlannerServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await planner.CreatePlan(
                planner_service_pb2.CreatePlanRequest(task_text=TASK), timeout=30
            )
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    says_what_to_do(raised.value.details() or "", stopped_server)


async def test_the_task_fails_saying_unavailable_and_health_says_why(
    openai_planner: str, stopped_server: str, start_executor_on: StartExecutor
) -> None:
    executor = await start_executor_on(
        f"--planner={openai_planner}", "--model=openai", "--health-check-interval=0.2"
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = TaskServiceStub(channel)
        task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text=TASK), timeout=10)
        events = await watch_all(stub, task.task_id)
        ended = events[-1].task_state_changed
        health = health_pb2_grpc.HealthStub(channel)

        async def not_serving() -> bool:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
            return reply.status == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving, what="TaskService NOT_SERVING while the model is away")

    assert ended.state == task_pb2.Task.STATE_FAILED
    assert ended.message.startswith("no plan could be made: UNAVAILABLE: the model server at ")
    assert "refused" not in ended.message
    assert "UNKNOWN" not in ended.message
    says_what_to_do(ended.message, stopped_server)
