"""Structured logs from a real executor: JSON lines with the task id and the request id."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from mitosis.executor.server import Executor, parse_args
from mitosis.rpc.logs import REQUEST_ID_HEADER, configure_logging
from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub

from .support.processes import start_executor, start_planner
from .support.watch import watch_all

Task = task_pb2.Task


class Captured:
    """What the services logged through `configure_logging`, one line per record."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    def lines(self) -> list[str]:
        return self._stream.getvalue().splitlines()

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines()]


@pytest.fixture
def captured(request: pytest.FixtureRequest) -> Iterator[Captured]:
    """configure_logging as `main` calls it, into a stream; undone at the end."""
    fmt = getattr(request, "param", "json")
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handler = configure_logging("info", fmt, stream)
    yield Captured(stream)
    root.removeHandler(handler)
    root.setLevel(level)


async def test_every_line_of_a_task_is_json_and_carries_its_task_id(
    captured: Captured, executor: Executor, stub: TaskServiceStub
) -> None:
    task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="Write a guide to tea"))
    await watch_all(stub, task.task_id)

    records = captured.records()  # each line parses as one JSON object

    about = [r for r in records if task.task_id in r["message"]]
    assert len(about) >= 6, about  # accepted, planning, plan ready, running, steps, succeeded
    for record in about:
        assert record["task_id"] == task.task_id, record
        assert set(record) >= {"time", "level", "logger", "message"}
    # The runner's line names the task only in its text: the id comes from the run's context.
    running = [r for r in about if "running it here" in r["message"]]
    assert running
    assert running[0]["logger"] == "mitosis.executor.running.runner"
    assert "request_id" not in running[0]  # a run is no part of the call that started it
    assert any(r["message"].startswith(f"task {task.task_id}: succeeded") for r in about)
    assert all(r["level"] in ("INFO", "WARNING") for r in about)


async def test_a_call_logs_with_the_request_id_it_was_given_and_returns_it(
    captured: Captured, executor: Executor, stub: TaskServiceStub
) -> None:
    call = stub.CreateTask(
        task_service_pb2.CreateTaskRequest(text="Write a guide to tea", require_approval=True),
        metadata=((REQUEST_ID_HEADER, "envoy-1234-abcd"),),
    )
    task = await call

    assert (REQUEST_ID_HEADER, "envoy-1234-abcd") in tuple(await call.trailing_metadata())
    accepted = [
        r for r in captured.records() if r["message"] == f"task {task.task_id}: pending (accepted)"
    ]
    assert len(accepted) == 1
    assert accepted[0]["request_id"] == "envoy-1234-abcd"
    assert accepted[0]["task_id"] == task.task_id


async def test_a_call_without_a_usable_request_id_gets_a_new_one(
    executor: Executor, stub: TaskServiceStub
) -> None:
    plain = stub.GetTask(task_service_pb2.GetTaskRequest(task_id="0123456789abcdef"))
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await plain
    too_long = stub.ListTasks(
        task_service_pb2.ListTasksRequest(), metadata=((REQUEST_ID_HEADER, "x" * 500),)
    )
    await too_long

    given = dict(missing.value.trailing_metadata() or ())[REQUEST_ID_HEADER]
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # and the id came with the error
    assert re.fullmatch(r"[0-9a-f-]{36}", given)
    replaced = dict(tuple(await too_long.trailing_metadata()))[REQUEST_ID_HEADER]
    assert re.fullmatch(r"[0-9a-f-]{36}", replaced)
    assert replaced != given


def test_an_exception_is_one_json_line_with_its_traceback(captured: Captured) -> None:
    try:
        raise ValueError("the store said no\nand more")
    except ValueError:
        logging.getLogger("mitosis.test").exception("cannot do %s", "it")

    (line,) = captured.lines()
    record = json.loads(line)
    assert record["message"] == "cannot do it"
    assert record["level"] == "ERROR"
    assert record["logger"] == "mitosis.test"
    assert "Traceback (most recent call last)" in record["exc_info"]
    assert "ValueError: the store said no" in record["exc_info"]
    assert "task_id" not in record


@pytest.mark.parametrize("captured", ["text"], indirect=True)
def test_the_text_format_is_one_plain_line(captured: Captured) -> None:
    logging.getLogger("mitosis.test").warning("one %s", "line")

    (line,) = captured.lines()
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING mitosis.test: one line", line
    )


def test_the_format_comes_from_the_flag_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse_args([]).log_format == "text"
    monkeypatch.setenv("MITOSIS_LOG_FORMAT", "json")
    assert parse_args([]).log_format == "json"
    assert parse_args(["--log-format=text"]).log_format == "text"
    with pytest.raises(SystemExit):
        parse_args(["--log-format=xml"])


_GRPC_CORE_LINE = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")
"""gRPC's C core writes its own lines to stderr, in its own format, whatever ours is."""


@pytest.mark.e2e
async def test_the_services_log_json_from_the_environment(tmp_path: Path) -> None:
    json_logs = {"MITOSIS_LOG_FORMAT": "json"}
    planner = start_planner(tmp_path, env=json_logs)
    executor = start_executor(tmp_path, planner, pace=0, env=json_logs)
    try:
        async with grpc.aio.insecure_channel(executor.target) as channel:
            stub = TaskServiceStub(channel)
            task = await stub.CreateTask(
                task_service_pb2.CreateTaskRequest(text="Write a tea guide")
            )
            await watch_all(stub, task.task_id)
    finally:
        assert executor.stop() == 0
        assert planner.stop() == 0

    for service in (planner, executor):
        lines = service.log.read_text().splitlines()
        ours = [json.loads(line) for line in lines if not _GRPC_CORE_LINE.match(line)]
        assert any("serving on port" in record["message"] for record in ours)
        assert any(record["message"].startswith("stopping: NOT_SERVING") for record in ours)
    lines = executor.log.read_text().splitlines()
    records = [json.loads(line) for line in lines if not _GRPC_CORE_LINE.match(line)]
    about = [r for r in records if task.task_id in r["message"]]
    assert len(about) >= 6
    assert all(r["task_id"] == task.task_id for r in about)
