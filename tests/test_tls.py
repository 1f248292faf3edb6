"""TLS between client and executor, mutual TLS and a key between executor and planner."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from mitosis.auth import key_line
from mitosis.executor.server import Executor, parse_args, start_executor
from mitosis.planner.server import Planner, start_planner
from mitosis.planner.server import parse_args as parse_planner_args
from mitosis.tls import TlsConfigError, channel_credentials
from mitosis.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc
from tests.certs import TestAuthority
from tests.conftest import StartExecutor

EXECUTOR_KEY = "mk_executor-test-key-000000000000000000000000"


@pytest.fixture
def authority(tmp_path: Path) -> TestAuthority:
    return TestAuthority(tmp_path / "pki")


@pytest.fixture
async def planner(tmp_path: Path, authority: TestAuthority) -> AsyncIterator[Planner]:
    """A planner that wants both a client certificate and the executor's key."""
    keys = tmp_path / "planner-keys"
    keys.write_text(key_line("executor", EXECUTOR_KEY) + "\n")
    server = authority.issue("planner", server=True)
    planner = await start_planner(
        parse_planner_args(
            [
                "--listen=127.0.0.1:0",
                "--model=offline",
                f"--api-keys={keys}",
                f"--tls-cert={server.cert}",
                f"--tls-key={server.key}",
                f"--tls-client-ca={authority.cert}",
            ]
        )
    )
    yield planner
    await planner.stop()


@pytest.fixture
async def start(
    tmp_path: Path, authority: TestAuthority, planner: Planner
) -> AsyncIterator[StartExecutor]:
    started: list[Executor] = []
    server = authority.issue("executor", server=True)

    async def start(*flags: str) -> Executor:
        executor = await start_executor(
            parse_args(
                [
                    "--listen=127.0.0.1:0",
                    f"--planner=localhost:{planner.port}",
                    f"--data-dir={tmp_path / 'data'}",
                    "--offline-pace=0",
                    "--model=offline",
                    f"--tls-cert={server.cert}",
                    f"--tls-key={server.key}",
                    *flags,
                ]
            )
        )
        started.append(executor)
        return executor

    yield start
    for executor in started:
        await executor.stop(None)


async def run_task(executor: Executor, credentials: grpc.ChannelCredentials) -> task_pb2.Task:
    """Create a task over TLS, follow it to its end and return it."""
    async with grpc.aio.secure_channel(f"localhost:{executor.port}", credentials) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        task = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="Explain tides."))
        request = task_service_pb2.WatchTaskRequest(task_id=task.task_id)
        async for _ in stub.WatchTask(request, timeout=60):
            pass
        return await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task.task_id))


async def test_a_task_runs_over_tls_end_to_end(
    start: StartExecutor, authority: TestAuthority, tmp_path: Path
) -> None:
    client = authority.issue("executor-client", server=False)
    executor = await start(
        f"--planner-ca={authority.cert}",
        f"--planner-client-cert={client.cert}",
        f"--planner-client-key={client.key}",
        f"--planner-key={EXECUTOR_KEY}",
    )
    credentials = channel_credentials(authority.cert)
    assert credentials is not None
    task = await run_task(executor, credentials)
    assert task.state == task_pb2.Task.STATE_SUCCEEDED, task.error


async def test_a_plaintext_client_cannot_talk_to_a_tls_executor(start: StartExecutor) -> None:
    executor = await start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListTasks(task_service_pb2.ListTasksRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_trust_the_ca_is_refused(
    start: StartExecutor, tmp_path: Path
) -> None:
    executor = await start()
    stranger = TestAuthority(tmp_path / "other-pki", "Someone else's CA")
    credentials = channel_credentials(stranger.cert)
    assert credentials is not None
    async with grpc.aio.secure_channel(f"localhost:{executor.port}", credentials) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListTasks(task_service_pb2.ListTasksRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_planner_refuses_an_executor_without_its_client_certificate(
    start: StartExecutor, authority: TestAuthority
) -> None:
    executor = await start(
        f"--planner-ca={authority.cert}", f"--planner-key={EXECUTOR_KEY}", "--planner-deadline=5"
    )
    credentials = channel_credentials(authority.cert)
    assert credentials is not None
    task = await run_task(executor, credentials)
    assert task.state == task_pb2.Task.STATE_FAILED
    assert "planner" in task.error


async def test_the_planner_refuses_an_executor_without_its_key(
    start: StartExecutor, authority: TestAuthority
) -> None:
    client = authority.issue("executor-client", server=False)
    executor = await start(
        f"--planner-ca={authority.cert}",
        f"--planner-client-cert={client.cert}",
        f"--planner-client-key={client.key}",
    )
    credentials = channel_credentials(authority.cert)
    assert credentials is not None
    task = await run_task(executor, credentials)
    assert task.state == task_pb2.Task.STATE_FAILED
    assert "refused the executor's credential" in task.error
    assert "--planner-key" in task.error


def test_tls_files_that_do_not_go_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match="a client certificate needs a CA"):
        channel_credentials(None, tmp_path / "c.pem", tmp_path / "k.pem")
    with pytest.raises(TlsConfigError, match="cannot read"):
        channel_credentials(tmp_path / "missing.pem")
