"""Several executors on one Redis: any of them serves any stream; a dead one's task moves on;
`make run-cluster` (scripts/run.py) restarts what dies, as a ReplicaSet would."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mitosis.client import TERMINAL_STATES, AsyncClient
from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub
from scripts.run import Backoff, Supervised

from .gateway import start_gateway
from .support.make_run import Runner, running
from .support.processes import Service, start_executor
from .support.redis_server import RedisServer
from .support.waiting import eventually

pytestmark = pytest.mark.e2e
Task = task_pb2.Task
TEXT = "Write a short market brief on home solar batteries"
LEASE_TTL = 1.5


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class Cluster:
    def __init__(self, tmp_path: Path, planner: Service, redis: RedisServer) -> None:
        self.tmp_path, self.planner, self.redis = tmp_path, planner, redis
        self.executors: list[Service] = []

    def start(self, name: str, pace: str = "0.01") -> Service:
        executor = start_executor(
            self.tmp_path,
            self.planner,
            f"--store={self.redis.url}",
            f"--lease-ttl={LEASE_TTL}",
            name=name,
            pace=pace,
        )
        self.executors.append(executor)
        return executor

    def stop(self) -> None:
        for executor in self.executors:
            if executor.process.poll() is None:
                os.kill(executor.process.pid, signal.SIGCONT)
                executor.stop()


@pytest.fixture
def cluster(tmp_path: Path, planner_process: Service, redis: RedisServer) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, planner_process, redis)
    yield cluster
    cluster.stop()


async def create(target: str) -> Task:
    async with grpc.aio.insecure_channel(target) as channel:
        return await TaskServiceStub(channel).CreateTask(
            task_service_pb2.CreateTaskRequest(text=TEXT)
        )


async def test_a_task_created_on_one_executor_streams_live_from_another(
    cluster: Cluster,
) -> None:
    a, b = cluster.start("a"), cluster.start("b")
    task = await create(a.target)

    async with AsyncClient(b.target) as client:
        events = [event async for event in client.watch(task.task_id)]
        final = await client.get_task(task.task_id)

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert final.state == Task.STATE_SUCCEEDED
    assert any(e.HasField("page_delta") for e in events)


async def test_kill_9_mid_task_hands_the_task_to_another_executor(cluster: Cluster) -> None:
    a, b = cluster.start("a"), cluster.start("b")
    task = await create(a.target)
    takeover_s = 0.0
    async with AsyncClient(b.target) as client:
        stream = client.watch(task.task_id)
        events = []
        async for event in stream:
            events.append(event)
            if event.HasField("page_delta"):
                break
        killed_at = time.monotonic()
        a.stop(signal.SIGKILL)  # a created the task, so a took its lease and runs it
        async for event in stream:
            events.append(event)
            if event.step_state_changed.message.startswith("restarted"):
                takeover_s = time.monotonic() - killed_at
        final = await client.get_task(task.task_id)

    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert final.state == Task.STATE_SUCCEEDED
    assert sum(e.page_finished.abandoned for e in events) == 1
    print(f"takeover after kill -9: {takeover_s:.2f} s (lease {LEASE_TTL} s)")


async def test_a_paused_executor_cannot_write_after_takeover(cluster: Cluster) -> None:
    a = cluster.start("a", pace="0.02")
    b = cluster.start("b", pace="0.02")  # before the task: a slow start would miss it running
    task = await create(a.target)
    async with AsyncClient(b.target) as client:
        stream = client.watch(task.task_id)
        async for event in stream:
            if event.HasField("page_delta"):
                break
        os.kill(a.process.pid, signal.SIGSTOP)  # mid-document
        await eventually(  # a's lease ran out: b took the task over and goes on with it
            lambda: f"task {task.task_id}: running it here" in b.log.read_text(),
            what="b to take the task over",
        )
        os.kill(a.process.pid, signal.SIGCONT)  # while b still runs it: a tries to go on
        await eventually(  # refused, or its lease gone when it renews: its run stops
            lambda: "another executor took it over" in a.log.read_text(),
            what="a to stop its run",
        )
        rest = [event async for event in stream]
        final = await client.get_task(task.task_id)
        after = await client.get_task(task.task_id)

    assert final.state == Task.STATE_SUCCEEDED
    assert (
        sum(
            e.HasField("task_state_changed") and e.task_state_changed.state == Task.STATE_SUCCEEDED
            for e in rest
        )
        == 1
    )
    assert after.last_seq == final.last_seq
    log = a.log.read_text()
    assert " ERROR " not in log, log  # a refusal the design expects is no error


async def test_a_cancel_on_one_executor_after_the_runner_died_mid_page_closes_the_page(
    cluster: Cluster,
) -> None:
    a, b = cluster.start("a", pace="0.05"), cluster.start("b")
    task = await create(a.target)
    async with AsyncClient(b.target) as client:
        stream = client.watch(task.task_id)
        async for event in stream:
            if event.HasField("page_delta"):
                break  # a is writing a page
        a.stop(signal.SIGKILL)
        await client.cancel_task(task.task_id)  # through b, before b could take the task over
        rest = [event async for event in stream]
        final = await client.get_task(task.task_id)

    assert final.state == Task.STATE_CANCELLED
    assert rest[-1].task_state_changed.state == Task.STATE_CANCELLED
    ends = [e for e in rest if e.task_state_changed.state in TERMINAL_STATES]
    assert ends == rest[-1:]
    assert final.pages, "the task had opened a page"
    assert all(page.finished or page.abandoned for page in final.pages)
    assert final.pages[-1].abandoned
    open_steps = (task_pb2.Step.STATE_PENDING, task_pb2.Step.STATE_RUNNING)
    assert not [step.index for step in final.steps if step.state in open_steps]


async def test_watchers_through_envoy_see_every_event_once_across_a_kill_9(
    cluster: Cluster, tmp_path: Path
) -> None:
    a, b, c = cluster.start("a"), cluster.start("b"), cluster.start("c")
    gateway = start_gateway(tmp_path, [a.port, b.port, c.port], None)
    try:
        task = await create(a.target)
        async with AsyncClient(gateway.target) as client:
            # Several watchers, spread by Envoy over the executors; each must see it all once.
            states: list[str] = []
            streams = [client.watch(task.task_id, on_state=states.append) for _ in range(6)]
            firsts = [await anext(stream) for stream in streams]
            a.stop(signal.SIGKILL)  # the executor running the task, and some watchers' host
            received = []
            for first, stream in zip(firsts, streams, strict=True):
                got = [first.seq]
                try:
                    async with asyncio.timeout(30):
                        async for event in stream:
                            got.append(event.seq)
                except TimeoutError:
                    now = await client.get_task(task.task_id)
                    raise AssertionError(
                        f"a watcher stalled at seq {got[-1]}; the task is"
                        f" {Task.State.Name(now.state)} at seq {now.last_seq}; states {states}"
                    ) from None
                received.append(got)
            final = await client.get_task(task.task_id)
    finally:
        gateway.stop()

    assert final.state == Task.STATE_SUCCEEDED
    assert any(state.startswith("reconnecting") for state in states)  # some were on a
    for seqs in received:
        assert seqs == list(range(1, final.last_seq + 1))


class Exiting:
    """A stand-in for a child process: running until told its exit status."""

    def __init__(self) -> None:
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.returncode = -sig

    def wait(self, timeout: float | None = None) -> int:
        assert self.returncode is not None
        return self.returncode


class Started(list[Exiting]):
    """Each process a supervisor started, in order; called, it starts another."""

    def __call__(self) -> Exiting:
        self.append(Exiting())
        return self[-1]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_backoff_doubles_from_1_s_to_30_s_and_starts_over_after_a_stable_run() -> None:
    backoff = Backoff()
    assert [backoff.delay(up_s=0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay(up_s=60) == 1
    assert backoff.delay(up_s=3) == 2


def test_a_supervised_service_that_exits_is_started_again_after_its_backoff() -> None:
    clock, started = Clock(), Started()
    service = Supervised("executor 2 (127.0.0.1:50062)", started, clock=clock)
    service.start()
    assert service.tend() is None
    started[0].returncode = -9
    line = service.tend()
    assert line == "executor 2 (127.0.0.1:50062) exited with status -9; restarting in 1 s"
    clock.now += 0.9
    assert service.tend() is None
    assert len(started) == 1
    clock.now += 0.1
    assert service.tend() is None
    assert len(started) == 2
    assert service.restarts == 1
    started[1].returncode = 1  # again at once: the next delay is longer
    assert service.tend() == "executor 2 (127.0.0.1:50062) exited with status 1; restarting in 2 s"


def test_a_terminated_service_is_not_started_again() -> None:
    clock, started = Clock(), Started()
    service = Supervised("the planner", started, clock=clock)
    service.start()
    started[0].returncode = -9
    service.tend()
    service.terminate()
    clock.now += 60
    assert service.tend() is None
    assert len(started) == 1


@pytest.fixture
def run_cluster(tmp_path: Path) -> Iterator[Runner]:
    """`make run-cluster` (scripts/run.py --executors 3) on free ports."""
    env = {"MITOSIS_OFFLINE_PACE": "0.02", "MITOSIS_LEASE_TTL": str(LEASE_TTL)}
    with running(tmp_path, executors=3, env=env) as runner:
        yield runner


async def serving(address: str, service: str = "mitosis.v1.TaskService") -> bool:
    """Whether the server at `address` says SERVING for `service` (an executor's by default)."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1
            )
        except grpc.aio.AioRpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.timeout(300)
async def test_run_cluster_restarts_a_killed_executor_while_its_task_moves_on(
    run_cluster: Runner,
) -> None:
    first = run_cluster.executors[0]
    task = await create(first)  # the executor that creates a task takes its lease and runs it
    async with AsyncClient(run_cluster.gateway) as client:
        stream = client.watch(task.task_id)
        events = []
        async for event in stream:
            events.append(event)
            if event.HasField("page_delta"):
                break
        os.kill(run_cluster.pid_of(first), signal.SIGKILL)
        killed_at = time.monotonic()
        events += [event async for event in stream]
        final = await client.get_task(task.task_id)

    assert final.state == Task.STATE_SUCCEEDED, final.error
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    restarted = rf"^executor 1 \({re.escape(first)}\) exited with status -9; restarting in 1 s$"
    await asyncio.to_thread(run_cluster.wait_for, restarted, 10)
    await eventually(lambda: serving(first), timeout=60, interval=0.1, what=f"{first} serves")
    back_s = time.monotonic() - killed_at
    assert run_cluster.process.poll() is None
    assert all([await serving(address) for address in run_cluster.executors])
    print(f"executor 1 serving again {back_s:.2f} s after kill -9 (backoff 1 s)")


@pytest.mark.timeout(300)
async def test_run_cluster_restarts_a_killed_planner_and_tasks_are_planned_again(
    run_cluster: Runner,
) -> None:
    planner = run_cluster.planner
    os.kill(run_cluster.pid_of(planner), signal.SIGKILL)
    killed_at = time.monotonic()
    restarted = rf"^the planner \({re.escape(planner)}\) exited with status -9; restarting in 1 s$"
    await asyncio.to_thread(run_cluster.wait_for, restarted, 10)
    await eventually(
        lambda: serving(planner, "mitosis.v1.PlannerService"), timeout=60, interval=0.1
    )
    back_s = time.monotonic() - killed_at
    async with AsyncClient(run_cluster.gateway) as client:
        task = await client.create_task(TEXT)
        events = [event async for event in client.watch(task.task_id)]
        final = await client.get_task(task.task_id)

    assert final.state == Task.STATE_SUCCEEDED, final.error
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    print(f"planner serving again {back_s:.2f} s after kill -9 (backoff 1 s)")
