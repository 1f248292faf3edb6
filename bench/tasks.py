"""Workload 5: whole tasks on the offline model with pacing off, through the real services.

A real planner and a real executor run as subprocesses (`mitosis-planner`, `mitosis-executor
--offline-pace=0`, SQLite in a folder of their own), the way `make run` starts them. Every
task is a client doing CreateTask and then WatchTask to the end, all at once; the time to the
first event runs from just before CreateTask to that event's arrival at the client.

The largest batch runs a second time with every task asking for approval: each is planned
and then waits, and nothing runs. Its CreateTask figures are what the executor answers when
no task execution shares its event loop: the best that running tasks elsewhere (in worker
processes) could give. Those tasks are cancelled afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from bench.procs import Service, Usage
from bench.rig import Progress
from bench.stats import percentile
from mitosis.projection import is_terminal_event
from mitosis.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

if TYPE_CHECKING:
    from mitosis.v1.task_service_pb2_grpc import TaskServiceAsyncStub

TEXTS = (
    "Write a short market brief on home solar batteries",
    "Write a guide to composting at home",
    "Compare heat pumps and gas boilers for a small house",
    "Write a python script that computes compound interest over 10 years",
    "Draft a one-page brief on e-bike adoption in cities",
)
"""What people ask for (the offline model plans by kind: brief, guide, comparison, code)."""


@dataclass
class TaskTiming:
    task_id: str
    created: float
    """CreateTask's answer arrived, seconds after it was called."""
    first_stored: float
    """The first event's create_time (stamped when stored), seconds after CreateTask."""
    first_event: float
    """The first event arrived at the client, seconds after CreateTask."""
    total: float
    end: float
    state: int
    events: int


WAITING = task_pb2.Task.STATE_AWAITING_APPROVAL


async def _one(
    stub: TaskServiceAsyncStub, text: str, start: float, approval: bool = False
) -> TaskTiming:
    """One task from CreateTask to its end (with `approval`: to its plan waiting)."""
    wall_start = time.time()
    create = task_service_pb2.CreateTaskRequest(text=text, require_approval=approval)
    task = await stub.CreateTask(create, timeout=60)
    created = time.perf_counter() - start
    first = first_stored = 0.0
    events = 0
    state = task_pb2.Task.STATE_UNSPECIFIED
    request = task_service_pb2.WatchTaskRequest(task_id=task.task_id)
    call = stub.WatchTask(request, timeout=300)
    async for event in (e async for message in call for e in message.events):
        if event.WhichOneof("kind") == "heartbeat":
            continue
        if not events:
            first = time.perf_counter() - start
            first_stored = event.create_time.ToNanoseconds() / 1e9 - wall_start
        events += 1
        if is_terminal_event(event):
            state = event.task_state_changed.state
        elif approval and event.task_state_changed.state == WAITING:
            state = WAITING
            call.cancel()
            break
    end = time.perf_counter()
    return TaskTiming(task.task_id, created, first_stored, first, end - start, end, state, events)


PROBE_EVERY = 0.02
"""Seconds between two GetTasks of the responsiveness probe."""


async def _probe(stub: TaskServiceAsyncStub, task_id: str, stop: asyncio.Event) -> list[float]:
    """GetTask every PROBE_EVERY seconds until `stop`: how long each took to answer."""
    took = []
    while not stop.is_set():
        t0 = time.perf_counter()
        await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=task_id), timeout=60)
        took.append(time.perf_counter() - t0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROBE_EVERY)
    return took


async def _batch(
    target: str, n: int, rep: int, probe_task: str = "", approval: bool = False
) -> tuple[list[TaskTiming], float, list[float]]:
    """Run `n` tasks at once; with `probe_task`, GetTask it every PROBE_EVERY s meanwhile;
    with `approval`, each only until its plan waits for approval, and cancelled then."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        await channel.channel_ready()
        stop = asyncio.Event()
        probing = asyncio.create_task(_probe(stub, probe_task, stop)) if probe_task else None
        began = time.perf_counter()

        async def one(i: int) -> TaskTiming:
            text = f"{TEXTS[i % len(TEXTS)]} ({rep}.{i})"
            return await _one(stub, text, time.perf_counter(), approval)

        timings = await asyncio.gather(*(one(i) for i in range(n)))
        wall = max(t.end for t in timings) - began
        stop.set()
        probes = await probing if probing is not None else []
        for timing in timings if approval else []:  # none of them is to run
            cancel = task_service_pb2.CancelTaskRequest(task_id=timing.task_id)
            await stub.CancelTask(cancel, timeout=60)
        return list(timings), wall, probes


async def tasks(
    workdir: Path, reps: int, counts: tuple[int, ...], progress: Progress
) -> list[dict[str, Any]]:
    """Run `counts` concurrent tasks (e.g. 1, then 50) `reps` times on one planner+executor."""
    planner = await Service.start("mitosis-planner", workdir / "planner.log", "--model=offline")
    executor = None
    try:
        executor = await Service.start(
            "mitosis-executor",
            workdir / "executor.log",
            f"--planner={planner.target}",
            f"--data-dir={workdir / 'data'}",
            "--model=offline",
            "--offline-pace=0",
        )
        # Warm-up (imports, channel, first SQLite pages); its first task is the one probed.
        warm_up, _, _ = await _batch(executor.target, 2, -1)
        rows = []
        runs = [(n, False) for n in counts] + [(max(counts), True)]
        for rep in range(reps):
            for n, approval in runs:
                usage = Usage(executor.process.pid).start()
                timings, wall, probes = await _batch(
                    executor.target, n, rep, warm_up[0].task_id, approval
                )
                await usage.stop()
                firsts = [t.first_event for t in timings]
                reached = WAITING if approval else task_pb2.Task.STATE_SUCCEEDED
                succeeded = sum(t.state == reached for t in timings)
                row = {
                    "workload": "tasks",
                    "rep": rep,
                    "tasks": n,
                    "approval": approval,
                    "succeeded": succeeded,
                    "first_event_p50_ms": percentile(firsts, 50) * 1000,
                    "first_event_p99_ms": percentile(firsts, 99) * 1000,
                    "first_event_max_ms": max(firsts) * 1000,
                    "created_p50_ms": percentile([t.created for t in timings], 50) * 1000,
                    "created_p99_ms": percentile([t.created for t in timings], 99) * 1000,
                    "get_task_p50_ms": percentile(probes, 50) * 1000,
                    "get_task_p99_ms": percentile(probes, 99) * 1000,
                    "first_stored_p50_ms": percentile([t.first_stored for t in timings], 50) * 1000,
                    "task_p50_s": percentile([t.total for t in timings], 50),
                    "wall_s": wall,
                    "events": sum(t.events for t in timings),
                    "executor_cores": usage.cores,
                }
                rows.append(row)
                progress(
                    f"tasks {n}{' (approval)' if approval else ''} rep {rep + 1}: first event p50"
                    f" {row['first_event_p50_ms']:.1f} ms, p99 {row['first_event_p99_ms']:.1f} ms"
                    f" (CreateTask answered at p50 {row['created_p50_ms']:.1f} ms, first event"
                    f" stored at p50 {row['first_stored_p50_ms']:.1f} ms; GetTask meanwhile p99"
                    f" {row['get_task_p99_ms']:.1f} ms),"
                    f" wall {wall:.2f} s, {succeeded}/{n} {'waiting' if approval else 'succeeded'}"
                )
        return rows
    finally:
        if executor is not None:
            await executor.stop()
        await planner.stop()
