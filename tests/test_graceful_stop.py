"""SIGTERM stops the executor gracefully: its steps stop first (their tasks are not ended),
then its open streams end UNAVAILABLE saying the executor restarts and from which seq to
resume; the next start resumes the task, and a watcher sees every event once."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from mitosis.client import AsyncClient
from mitosis.client.errors import error_info
from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub
from tests.support.executors import StartExecutor
from tests.support.ports import free_port
from tests.support.watch import EventReader

from .support.processes import BIN, Service, start_executor

Task = task_pb2.Task
TEXT = "Write a short market brief on home solar batteries"


@pytest.mark.e2e
async def test_sigterm_ends_watches_with_where_to_resume_and_the_task_resumes(
    tmp_path: Path, planner_process: Service
) -> None:
    executor = start_executor(tmp_path, planner_process, pace=0.02)
    received: list[task_pb2.TaskEvent] = []
    try:
        async with grpc.aio.insecure_channel(executor.target) as channel:
            stub = TaskServiceStub(channel)
            task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text=TEXT))
            watch = EventReader(
                stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id))
            )

            async def watch_through_the_stop() -> None:
                signalled = False
                async for event in watch:
                    if event.HasField("heartbeat"):
                        continue
                    received.append(event)
                    if event.HasField("page_delta") and not signalled:
                        executor.process.send_signal(signal.SIGTERM)  # mid-document
                        signalled = True

            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await watch_through_the_stop()
            assert executor.process.wait(30) == 0
    finally:
        executor.stop()

    last = received[-1].seq
    assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
    assert ended.value.details() == (
        f"the executor is restarting; call again to resume with after_seq={last}"
    )
    info = error_info(ended.value.trailing_metadata())
    assert info is not None
    assert (info.reason, dict(info.metadata)) == ("SERVICE_STOPPING", {"after_seq": str(last)})
    assert all(e.task_state_changed.state != Task.STATE_SUCCEEDED for e in received)
    log = executor.log.read_text()
    assert "Cancelling all calls" not in log

    executor = start_executor(tmp_path, planner_process, pace=0)
    try:
        async with grpc.aio.insecure_channel(executor.target) as channel:
            stub = TaskServiceStub(channel)
            request = task_service_pb2.WatchTaskRequest(task_id=task.task_id, after_seq=last)
            async for event in EventReader(stub.WatchTask(request, timeout=60)):
                if not event.HasField("heartbeat"):
                    received.append(event)
    finally:
        executor.stop()
    assert [e.seq for e in received] == list(range(1, len(received) + 1))
    assert received[-1].task_state_changed.state == Task.STATE_SUCCEEDED


@pytest.mark.e2e
async def test_the_client_says_the_server_is_restarting_and_resumes_once_it_is_back(
    tmp_path: Path, planner_process: Service
) -> None:
    port = free_port()
    listen = f"--listen=127.0.0.1:{port}"
    executor = start_executor(tmp_path, planner_process, listen, pace=0.02)
    states: list[str] = []
    seqs: list[int] = []
    restarted = False
    try:
        async with AsyncClient(executor.target, max_reconnect_wait=0.5) as client:
            task = await client.create_task(TEXT)
            async for event in client.watch(task.task_id, on_state=states.append):
                seqs.append(event.seq)
                if event.HasField("page_delta") and not restarted:
                    restarted = True
                    executor.process.send_signal(signal.SIGTERM)
                    assert executor.process.wait(30) == 0
                    executor = start_executor(tmp_path, planner_process, listen, pace=0)
            final = await client.get_task(task.task_id)
    finally:
        executor.stop()
    assert final.state == Task.STATE_SUCCEEDED
    assert seqs == list(range(1, len(seqs) + 1))
    reconnecting = [s for s in states if s.startswith("reconnecting")]
    assert reconnecting, states
    assert all("the server is restarting" in s for s in reconnecting), reconnecting


async def test_a_stop_after_a_watcher_went_away_logs_no_error(
    start_executor_on: StartExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    executor = await start_executor_on()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = TaskServiceStub(channel)
        request = task_service_pb2.CreateTaskRequest(text="Explain tides", require_approval=True)
        task = await stub.CreateTask(request)
        watch = EventReader(stub.WatchTask(task_service_pb2.WatchTaskRequest(task_id=task.task_id)))
        assert await watch.read() is not None
    # The channel is closed: the watcher is gone while its stream is still open here.
    await executor.stop(None)
    # Nothing from the calls: the stream's end had nobody to go to, and that is no error.
    calls = ("mitosis.rpc", "grpc")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(calls)]
    assert [r.getMessage() for r in errors] == []


@pytest.mark.e2e
def test_the_cli_says_the_server_is_restarting(tmp_path: Path, planner_process: Service) -> None:
    listen = f"--listen=127.0.0.1:{free_port()}"  # the same port again after the restart
    executor = start_executor(tmp_path, planner_process, listen, pace=0.02)
    with subprocess.Popen(
        [str(BIN / "mitosis"), "--target", executor.target, "--json", "run", TEXT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as cli:
        assert cli.stdout is not None
        assert cli.stderr is not None
        try:
            lines = []
            for line in cli.stdout:  # mid-task: part of a page shown
                lines.append(line)
                if "pageDelta" in json.loads(line):
                    break
            assert executor.stop(signal.SIGTERM) == 0
            executor = start_executor(tmp_path, planner_process, listen, pace=0)
            lines += cli.stdout.readlines()  # the same reader to the end
            cli.wait(timeout=60)
            stderr = cli.stderr.read()
        finally:
            cli.kill()
            executor.stop()
    assert cli.returncode == 0, stderr
    assert "connection: reconnecting (attempt 1, waiting" in stderr
    assert "the server is restarting" in stderr
    assert "UNAVAILABLE" not in stderr
    seqs = [int(json.loads(line)["seq"]) for line in lines if "seq" in json.loads(line)]
    assert seqs == list(range(1, len(seqs) + 1))
