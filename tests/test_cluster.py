"""Several executors on one Redis: any of them serves any stream; a dead one's task moves on."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from mitosis.client import AsyncClient
from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub

from .gateway import start_gateway
from .processes import Service, start_service
from .redis_server import RedisServer

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


@pytest.fixture
def planner(tmp_path: Path) -> Iterator[Service]:
    service = start_service("mitosis-planner", tmp_path / "planner.log")
    yield service
    service.stop()


class Cluster:
    def __init__(self, tmp_path: Path, planner: Service, redis: RedisServer) -> None:
        self.tmp_path, self.planner, self.redis = tmp_path, planner, redis
        self.executors: list[Service] = []

    def start(self, name: str, pace: str = "0.01") -> Service:
        executor = start_service(
            "mitosis-executor",
            self.tmp_path / f"{name}.log",
            f"--planner={self.planner.target}",
            f"--data-dir={self.tmp_path / 'data'}",
            f"--store={self.redis.url}",
            f"--lease-ttl={LEASE_TTL}",
            f"--offline-pace={pace}",
            "--heartbeat-interval=0.5",
        )
        self.executors.append(executor)
        return executor

    def stop(self) -> None:
        for executor in self.executors:
            if executor.process.poll() is None:
                os.kill(executor.process.pid, signal.SIGCONT)
                executor.stop()


@pytest.fixture
def cluster(tmp_path: Path, planner: Service, redis: RedisServer) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, planner, redis)
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
    task = await create(a.target)
    b = cluster.start("b", pace="0.02")
    async with AsyncClient(b.target) as client:
        stream = client.watch(task.task_id)
        async for event in stream:
            if event.HasField("page_delta"):
                break
        os.kill(a.process.pid, signal.SIGSTOP)
        await asyncio.sleep(LEASE_TTL * 3)  # b takes the lease over and goes on
        os.kill(a.process.pid, signal.SIGCONT)
        rest = [event async for event in stream]
        final = await client.get_task(task.task_id)
        await asyncio.sleep(1)  # what a would still write, it would write now
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
    assert "another executor took it over" in a.log.read_text()


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
