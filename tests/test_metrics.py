"""Prometheus metrics scraped over HTTP from real services, checked against the tasks' events."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mitosis.executor.server import Executor, start_executor
from mitosis.executor.server import parse_args as parse_executor_args
from mitosis.metrics import state_label
from mitosis.planner.server import Planner, start_planner
from mitosis.planner.server import parse_args as parse_planner_args
from mitosis.rpc.metrics_server import MAX_CONNECTIONS, start_metrics_server
from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub

from .fake_openai import Call, FakeOpenAI, Text, ToolCalls, plan_reply, plan_step
from .support.executors import StartExecutor
from .support.waiting import eventually
from .support.watch import watch_all

Task = task_pb2.Task
Step = task_pb2.Step
METRICS = "--metrics-listen=127.0.0.1:0"


class Scrape:
    """One scrape of a metrics endpoint: its samples by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float | None:
        """The sample's value, or None when the scrape has no such sample."""
        return self.samples.get((name, frozenset(labels.items())))

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        wanted = set(labels.items())
        return sum(
            value
            for (sample, sample_labels), value in self.samples.items()
            if sample == name and wanted <= sample_labels
        )


def fetch(port: int, path: str = "/metrics", **headers: str) -> tuple[int, str, str]:
    """GET the path over real HTTP; return the status, the content type and the body."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


async def scrape(port: int) -> Scrape:
    status, _, body = await asyncio.to_thread(fetch, port)
    assert status == 200, body
    return Scrape(body)


def metrics_port(service: Executor | Planner) -> int:
    assert service.metrics_server is not None, "started without --metrics-listen"
    return service.metrics_server.port


async def run_task(stub: TaskServiceStub, text: str) -> tuple[Task, list[task_pb2.TaskEvent]]:
    task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text=text))
    events = await watch_all(stub, task.task_id)
    task = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))
    return task, events


@pytest.fixture
async def executor(start_executor_on: StartExecutor) -> Executor:
    return await start_executor_on(METRICS)


async def test_counters_match_the_events_of_a_task(
    executor: Executor, stub: TaskServiceStub
) -> None:
    task, events = await run_task(stub, "Write a short guide to composting at home")
    assert task.state == Task.STATE_SUCCEEDED, task.error

    scrape = await scrape_port(executor)

    kinds = Counter(event.WhichOneof("kind") for event in events)
    for kind, count in kinds.items():
        assert scrape.value("mitosis_events_appended_total", kind=str(kind)) == count, kind
    assert scrape.total("mitosis_events_appended_total") == len(events)
    task_states = Counter(
        state_label(e.task_state_changed.state) for e in events if e.HasField("task_state_changed")
    )
    for state in ("pending", "planning", "running", "succeeded", "failed", "cancelled"):
        assert scrape.value("mitosis_task_state_changes_total", state=state) == task_states[state]
    step_states = Counter(
        state_label(e.step_state_changed.state, Step.State)
        for e in events
        if e.HasField("step_state_changed")
    )
    for state in ("running", "succeeded", "failed"):
        assert scrape.value("mitosis_step_state_changes_total", state=state) == step_states[state]
    # The offline agent runs each step's planned tool once.
    tools = Counter(step.tool for step in task.steps)
    for tool in ("write_document", "python", "list_files", "read_file"):
        assert scrape.value("mitosis_tool_runs_total", tool=tool, outcome="ok") == tools[tool]
        assert scrape.value("mitosis_tool_run_seconds_count", tool=tool) == tools[tool]
    assert scrape.total("mitosis_tool_runs_total", outcome="failed") == 0
    for method in ("CreateTask", "WatchTask", "GetTask"):
        assert rpc_count(scrape, method, "OK") == 1, method
    assert scrape.value("mitosis_tasks", state="running") == 0
    assert scrape.value("mitosis_watchers") == 0


async def scrape_port(service: Executor | Planner) -> Scrape:
    return await scrape(metrics_port(service))


def rpc_count(scrape: Scrape, method: str, code: str) -> float | None:
    return scrape.value(
        "grpc_server_handled_total",
        grpc_type="server_stream" if method in ("WatchTask", "ReadArtifact") else "unary",
        grpc_service="mitosis.v1.TaskService",
        grpc_method=method,
        grpc_code=code,
    )


async def test_calls_are_counted_by_method_and_status(
    executor: Executor, stub: TaskServiceStub, channel: grpc.aio.Channel
) -> None:
    missing = task_service_pb2.GetTaskRequest(task_id="0123456789abcdef")
    for _ in range(2):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GetTask(missing)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await stub.CreateTask(task_service_pb2.CreateTaskRequest(text=""))
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    nobody = channel.unary_unary("/mitosis.v1.TaskService/NoSuchMethod")
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await nobody(b"")
    assert unknown.value.code() == grpc.StatusCode.UNIMPLEMENTED

    scrape = await scrape_port(executor)

    assert rpc_count(scrape, "GetTask", "NOT_FOUND") == 2
    assert rpc_count(scrape, "CreateTask", "INVALID_ARGUMENT") == 1
    assert rpc_count(scrape, "CreateTask", "OK") is None
    assert (
        scrape.value(
            "grpc_server_handled_total",
            grpc_type="unknown",
            grpc_service="unknown",
            grpc_method="unknown",
            grpc_code="UNIMPLEMENTED",
        )
        == 1
    )
    assert scrape.total("grpc_server_started_total", grpc_method="GetTask") == 2
    assert scrape.total("grpc_server_handling_seconds_count", grpc_method="GetTask") == 2


async def test_unfinished_tasks_are_counted_from_the_store_even_after_a_restart(
    start_executor_on: StartExecutor, tmp_path: Path
) -> None:
    first = await start_executor_on(METRICS)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel:
        stub = TaskServiceStub(channel)
        task = await stub.CreateTask(
            task_service_pb2.CreateTaskRequest(text="Write a brief on tea", require_approval=True)
        )
        await eventually(lambda: awaiting(stub, task.task_id), timeout=60)
        assert (await scrape_port(first)).value("mitosis_tasks", state="awaiting_approval") == 1
    await first.stop(None)

    second = await start_executor_on(METRICS)

    scrape = await scrape_port(second)
    assert scrape.value("mitosis_tasks", state="awaiting_approval") == 1
    assert scrape.value("mitosis_tasks", state="running") == 0
    assert scrape.total("mitosis_events_appended_total") == 0  # it stored nothing itself


async def awaiting(stub: TaskServiceStub, task_id: str) -> bool:
    task = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id))
    return task.state == Task.STATE_AWAITING_APPROVAL


async def test_watchers_are_counted_while_they_are_connected(
    executor: Executor, stub: TaskServiceStub
) -> None:
    task = await stub.CreateTask(
        task_service_pb2.CreateTaskRequest(text="Write a brief on tea", require_approval=True)
    )
    calls = [
        stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id)) for _ in range(3)
    ]
    for call in calls:
        await call.read()  # subscribed: the first event came

    scrape = await scrape_port(executor)
    assert scrape.value("mitosis_watchers") == 3
    assert scrape.value("mitosis_watched_tasks") == 1

    calls[0].cancel()
    await eventually(lambda: watchers_now(executor, 2), timeout=60)
    for call in calls[1:]:
        call.cancel()
    await eventually(lambda: watchers_now(executor, 0), timeout=60)
    scrape = await scrape_port(executor)
    assert rpc_count(scrape, "WatchTask", "CANCELLED") == 3


async def watchers_now(executor: Executor, count: int) -> bool:
    return (await scrape_port(executor)).value("mitosis_watchers") == count


async def test_the_endpoint_serves_only_metrics(executor: Executor) -> None:
    port = metrics_port(executor)

    status, content_type, body = await asyncio.to_thread(fetch, port)
    assert status == 200
    assert content_type.startswith("text/plain")
    assert "# TYPE mitosis_events_appended_total counter" in body
    assert "process_cpu_seconds_total" in body
    status, content_type, body = await asyncio.to_thread(
        fetch, port, Accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")
    status, _, _ = await asyncio.to_thread(fetch, port, "/anything-else")
    assert status == 404


# The OpenAI path: the models' token counts -----------------------------------------------------

WRITE = plan_step("Write the brief", "write_document", file_name="brief.md", doc_title="Brief")
RUN = plan_step("Compute", "python")
BRIEF_CALL = {"file_name": "brief.md", "title": "Brief", "instructions": "Summarise the market."}


@pytest.fixture
async def services(
    fake_openai: FakeOpenAI, tmp_path: Path
) -> AsyncIterator[tuple[Planner, Executor, TaskServiceStub]]:
    model = ["--model=openai", "--model-retries=1", "--model-timeout=5"]
    planner = await start_planner(parse_planner_args(["--listen=127.0.0.1:0", METRICS, *model]))
    executor = await start_executor(
        parse_executor_args(
            [
                "--listen=127.0.0.1:0",
                f"--planner=127.0.0.1:{planner.port}",
                f"--data-dir={tmp_path}",
                METRICS,
                *model,
            ]
        )
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        yield planner, executor, TaskServiceStub(channel)
    await executor.stop(None)
    await planner.stop()


async def test_model_tokens_plans_and_tool_outcomes_are_counted(
    fake_openai: FakeOpenAI, services: tuple[Planner, Executor, TaskServiceStub]
) -> None:
    planner, executor, stub = services
    fake_openai.script(
        plan_reply({"summary": "A scripted plan.", "steps": [RUN, WRITE]}, prompt_tokens=700),
        ToolCalls([Call("python", {"code": "raise SystemExit('not yet')"})], prompt_tokens=300),
        ToolCalls([Call("python", {"code": "print(6 * 7)"})], completion_tokens=7),
        Text("The answer is 42."),
        ToolCalls([Call("write_document", BRIEF_CALL)]),
        Text(pieces=["# Solar", " batteries\n\n", "are growing."], completion_tokens=50),
        Text("Done."),
    )

    task, _ = await run_task(stub, "Write a brief on solar batteries")
    assert task.state == Task.STATE_SUCCEEDED, task.error

    steps = await scrape_port(executor)
    calls = sum(step.usage.model_calls for step in task.steps)
    assert calls == 6
    assert steps.value("mitosis_model_calls_total", use="step") == calls
    for direction, field in (("input", "input_tokens"), ("output", "output_tokens")):
        spent = sum(getattr(step.usage, field) for step in task.steps)
        assert steps.value("mitosis_model_tokens_total", use="step", direction=direction) == spent
    waited = sum(step.usage.latency_ms for step in task.steps) / 1000
    assert steps.value("mitosis_model_seconds_total", use="step") == pytest.approx(waited)
    assert steps.value("mitosis_tool_runs_total", tool="python", outcome="failed") == 1
    assert steps.value("mitosis_tool_runs_total", tool="python", outcome="ok") == 1
    assert steps.value("mitosis_tool_runs_total", tool="write_document", outcome="ok") == 1

    plans = await scrape_port(planner)
    assert plans.value("mitosis_model_calls_total", use="plan") == 1
    assert plans.value("mitosis_model_tokens_total", use="plan", direction="input") == 700
    assert plans.value("mitosis_model_tokens_total", use="plan", direction="output") == 20
    assert plans.value("mitosis_plan_seconds_count", method="create_plan", outcome="ok") == 1
    assert (
        plans.value(
            "grpc_server_handled_total",
            grpc_type="unary",
            grpc_service="mitosis.v1.PlannerService",
            grpc_method="CreatePlan",
            grpc_code="OK",
        )
        == 1
    )


async def test_the_metrics_endpoint_answers_a_few_at_once_and_drops_the_rest() -> None:
    """Connections past the cap are closed at once; idle ones are dropped at the timeout;
    stopping closes what is open."""
    registry = CollectorRegistry()
    server = await start_metrics_server("127.0.0.1:0", registry)
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(MAX_CONNECTIONS)]
    await eventually(
        lambda: len(server.connections) == MAX_CONNECTIONS, what="every idle one holds a place"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await closed_without_answer(reader)  # no place left
    await server.stop()
    for idle_reader, idle_writer in idle:
        assert await closed_without_answer(idle_reader)  # closed by stop()
        idle_writer.close()
    writer.close()


async def closed_without_answer(reader: asyncio.StreamReader) -> bool:
    """Whether the server closed the connection without a byte of answer (or reset it)."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True
