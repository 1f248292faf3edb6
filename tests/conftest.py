"""Fixtures that start the real services on port 0 and hand out real channels."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from mitosis.executor.server import Executor, parse_args, start_executor
from mitosis.planner.server import parse_args as parse_planner_args
from mitosis.planner.server import start_planner
from mitosis.v1 import task_service_pb2_grpc
from tests.fake_openai import FakeOpenAI
from tests.support import processes
from tests.support.executors import StartExecutor
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer, running_redis
from tests.support.watch import watch_all

__all__ = ["StartExecutor", "watch_all"]  # until every test imports them from tests.support

# Programs some tests drive; without one those tests are skipped, loudly, and under CI
# (CI=true) any skipped test fails the run.
DRIVEN_PROGRAMS = {
    "chromium": "the browser tests",
    "redis-server": "the Redis tests",
    "nginx": "the nginx proxy tests",
    "caddy": "the Caddy proxy tests",
    "haproxy": "the HAProxy proxy tests",
}


def _missing_programs() -> list[str]:
    return [
        f"{program} (for {what})"
        for program, what in DRIVEN_PROGRAMS.items()
        if shutil.which(program) is None
    ]


def pytest_report_header() -> list[str]:
    missing = _missing_programs()
    if not missing:
        return []
    return [f"!!! NOT INSTALLED, THESE TESTS WILL BE SKIPPED: {', '.join(missing)}"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.section("SKIPPED TESTS", sep="!", red=True, bold=True)
        terminalreporter.line(
            f"{len(skipped)} tests did not run (see the reasons above); "
            "`python3 scripts/prereqs.py test` names what to install",
            red=True,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and os.environ.get("CI") and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole session; tests keep apart by key prefix."""
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def planner_process(tmp_path: Path) -> Iterator[processes.Service]:
    """`mitosis-planner` as a subprocess on a free port, its log in tmp_path."""
    service = processes.start_planner(tmp_path)
    yield service
    service.stop()


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible server that this process's OpenAI model talks to."""
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        yield server


@pytest.fixture
def closed_port() -> int:
    """A port on which nothing listens."""
    return free_port()


@pytest.fixture
async def planner_target() -> AsyncIterator[str]:
    """A real PlannerService on a free port."""
    planner = await start_planner(parse_planner_args(["--listen=127.0.0.1:0", "--model=offline"]))
    yield f"127.0.0.1:{planner.port}"
    await planner.stop()


@pytest.fixture
async def start_executor_on(tmp_path: Path, planner_target: str) -> AsyncIterator[StartExecutor]:
    """Start executors on free ports over one data folder; all are stopped at the end."""
    started: list[Executor] = []

    async def start(*flags: str, data_dir: Path | None = None) -> Executor:
        args = parse_args(
            [
                "--listen=127.0.0.1:0",
                f"--planner={planner_target}",
                f"--data-dir={data_dir or tmp_path / 'data'}",
                "--offline-pace=0",
                "--heartbeat-interval=0.2",
                "--model=offline",
                *flags,
            ]
        )
        executor = await start_executor(args)
        started.append(executor)
        return executor

    yield start
    for executor in started:
        if not executor.stopped:
            await executor.stop(None)


@pytest.fixture
async def executor(start_executor_on: StartExecutor) -> Executor:
    """A real executor (offline model, pacing off) on a free port."""
    return await start_executor_on()


@pytest.fixture
async def channel(executor: Executor) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the executor."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> task_service_pb2_grpc.TaskServiceStub:
    """A TaskService stub on the executor's channel."""
    return task_service_pb2_grpc.TaskServiceStub(channel)
