"""The runner with scripted plans: retries, failures people can act on, cancel mid-tool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mitosis.errors import FailedPrecondition
from mitosis.executor.events.hub import EventHub
from mitosis.executor.events.log import EventLog
from mitosis.executor.events.watch import watch_batches
from mitosis.executor.running.planned_agent import PlannedToolAgent
from mitosis.executor.running.runner import RunnerConfig, TaskRunner
from mitosis.executor.store.sqlite import SqliteStore
from mitosis.models.offline import OfflineModel
from mitosis.v1 import plan_pb2, task_pb2
from tests.support.planning import ScriptedPlanner, python_step
from tests.support.sandbox import processes_with
from tests.support.watch import flat

Task = task_pb2.Task
Step = task_pb2.Step


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, EventHub, EventLog]]:
    store = SqliteStore(tmp_path / "store.sqlite3")
    hub = EventHub()
    yield store, hub, EventLog(store, hub)
    await store.close()


async def run_task(
    parts: tuple[SqliteStore, EventHub, EventLog],
    tmp_path: Path,
    planner: ScriptedPlanner,
    max_revisions: int = 0,
) -> tuple[TaskRunner, str]:
    store, _, log = parts
    agent = PlannedToolAgent(OfflineModel(pace=0))
    config = RunnerConfig(data_dir=tmp_path, tool_timeout=20, max_revisions=max_revisions)
    runner = TaskRunner(log, planner, agent, config)
    task = Task(task_id="0123456789abcdef", text="do it", state=Task.STATE_PENDING)
    task.create_time.FromNanoseconds(time.time_ns())
    await store.create_task(task)
    runner.start(task.task_id)
    return runner, task.task_id


async def events_of(
    parts: tuple[SqliteStore, EventHub, EventLog], task_id: str
) -> list[task_pb2.TaskEvent]:
    store, hub, _ = parts
    events = flat(watch_batches(store, hub, task_id, 0, 5))
    return [e async for e in events if not e.HasField("heartbeat")]


async def test_a_failing_step_is_retried_once_then_fails_the_task(parts, tmp_path: Path) -> None:
    planner = ScriptedPlanner(
        python_step("print('ok')", "Warm up"),
        python_step("print('working'); 1 / 0", "Divide"),
        python_step("print('never')", "Never runs"),
    )
    _, task_id = await run_task(parts, tmp_path, planner)
    events = await events_of(parts, task_id)
    task = await parts[0].get_task(task_id)

    assert task is not None
    assert task.state == Task.STATE_FAILED
    assert task.error.startswith("step 2 (Divide) failed: python exited with status 1")
    assert "ZeroDivisionError" in task.error
    assert [s.state for s in task.steps] == [
        Step.STATE_SUCCEEDED,
        Step.STATE_FAILED,
        Step.STATE_CANCELLED,
    ]
    assert task.steps[1].attempts == 2
    outputs = [
        e.log_line.text for e in events if e.log_line.source == task_pb2.LogLine.SOURCE_STDOUT
    ]
    assert outputs == ["ok", "working", "working"]
    retries = [
        e.step_state_changed for e in events if e.step_state_changed.message.startswith("retrying")
    ]
    assert len(retries) == 1
    assert retries[0].attempt == 2


async def test_a_plan_that_cannot_be_made_fails_the_task_with_the_reason(
    parts, tmp_path: Path
) -> None:
    _, task_id = await run_task(
        parts, tmp_path, ScriptedPlanner(error="the planner is unreachable")
    )
    events = await events_of(parts, task_id)

    states = [e.task_state_changed.state for e in events if e.HasField("task_state_changed")]
    assert states == [Task.STATE_PLANNING, Task.STATE_FAILED]
    assert (
        events[-1].task_state_changed.message == "no plan could be made: the planner is unreachable"
    )


async def test_an_unknown_tool_fails_the_step(parts, tmp_path: Path) -> None:
    planner = ScriptedPlanner(plan_pb2.PlanStep(title="Hack", tool="shell"))
    _, task_id = await run_task(parts, tmp_path, planner)
    await events_of(parts, task_id)
    task = await parts[0].get_task(task_id)

    assert task is not None
    assert task.state == Task.STATE_FAILED
    assert "unknown tool 'shell'" in task.error


async def test_cancel_kills_the_running_python_and_its_children(parts, tmp_path: Path) -> None:
    marker = f"{tmp_path}/tasks/0123456789abcdef/workspace"
    code = (
        "import subprocess, sys, time\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', {marker!r}])\n"
        "print('started', flush=True)\n"
        "time.sleep(600)\n"
    )
    runner, task_id = await run_task(parts, tmp_path, ScriptedPlanner(python_step(code)))
    store, hub, _ = parts
    async for event in flat(watch_batches(store, hub, task_id, 0, 5)):
        if event.log_line.source == task_pb2.LogLine.SOURCE_STDOUT:
            assert event.log_line.text == "started"
            break
    assert len(processes_with(marker)) >= 2

    await runner.cancel(task_id)
    task = await store.get_task(task_id)

    assert task is not None
    assert task.state == Task.STATE_CANCELLED
    assert task.steps[0].state == Step.STATE_CANCELLED
    assert processes_with(marker) == []


async def test_a_step_that_still_fails_is_replanned_and_the_task_goes_on(
    parts, tmp_path: Path
) -> None:
    revision = plan_pb2.Plan(steps=[python_step("print('plan b')", "Plan B")])
    planner = ScriptedPlanner(
        python_step("raise SystemExit('no luck')", "Plan A"),
        python_step("print('never')", "Replaced"),
        revision=revision,
    )
    _, task_id = await run_task(parts, tmp_path, planner, max_revisions=2)
    events = await events_of(parts, task_id)
    task = await parts[0].get_task(task_id)

    assert task is not None
    assert task.state == Task.STATE_SUCCEEDED
    assert task.revisions == 1
    assert [s.title for s in task.steps] == ["Plan A", "Plan B"]
    assert [s.state for s in task.steps] == [Step.STATE_FAILED, Step.STATE_SUCCEEDED]
    assert planner.revisions == [(0, "python exited with status 1: no luck")]
    revised = [e.plan_revised for e in events if e.HasField("plan_revised")]
    assert len(revised) == 1
    assert revised[0].from_step_index == 1
    assert revised[0].reason.startswith("step 1 (Plan A) failed")
    assert events[-1].task_state_changed.message == "delivered 0 files after 1 plan revision"


async def test_revisions_are_capped(parts, tmp_path: Path) -> None:
    failing = plan_pb2.Plan(steps=[python_step("raise SystemExit('again')", "Try again")])
    planner = ScriptedPlanner(python_step("raise SystemExit('no')", "First"), revision=failing)
    _, task_id = await run_task(parts, tmp_path, planner, max_revisions=2)
    await events_of(parts, task_id)
    task = await parts[0].get_task(task_id)

    assert task is not None
    assert task.state == Task.STATE_FAILED
    assert task.revisions == 2
    assert len(planner.revisions) == 2
    assert task.error.endswith("(the plan was already revised 2 times)")


@pytest.mark.parametrize("head_start", range(8))
async def test_approve_and_cancel_at_once_take_turns(
    parts: tuple[SqliteStore, EventHub, EventLog], tmp_path: Path, head_start: int
) -> None:
    """Whichever lands first wins; the other sees what it did. Never an event after the end."""
    store, _, log = parts
    planner = ScriptedPlanner(python_step("print('ran')"))
    config = RunnerConfig(data_dir=tmp_path, tool_timeout=20)
    runner = TaskRunner(log, planner, PlannedToolAgent(OfflineModel(pace=0)), config)
    task = Task(task_id="0123456789abcdef", text="do it", state=Task.STATE_PENDING)
    task.require_approval = True
    task.create_time.FromNanoseconds(time.time_ns())
    await store.create_task(task)
    # Planned and waiting, as a restarted executor finds it: nobody runs it.
    planned = task_pb2.PlanReady(steps=[Step(index=0, title="s", tool="list_files")])
    waiting = task_pb2.TaskStateChanged(state=Task.STATE_AWAITING_APPROVAL)
    await log.append(
        task.task_id,
        task_pb2.TaskEvent(plan_ready=planned),
        task_pb2.TaskEvent(task_state_changed=waiting),
    )

    async def approve_later() -> None:
        for _ in range(head_start):  # the cancel gets this many turns of the loop first
            await asyncio.sleep(0)
        await runner.approve(task.task_id, None)

    outcomes = await asyncio.gather(
        runner.cancel(task.task_id), approve_later(), return_exceptions=True
    )
    await events_of(parts, task.task_id)  # to its end
    await runner.shutdown()
    events = await store.read_events(task.task_id, 0, 1000)  # all of the log, even past an end

    states = [e.task_state_changed.state for e in events if e.HasField("task_state_changed")]
    assert states[-1] == Task.STATE_CANCELLED, [Task.State.Name(s) for s in states]
    assert sum(state in (Task.STATE_CANCELLED, Task.STATE_SUCCEEDED) for state in states) == 1
    assert outcomes[0] is None  # the cancel always lands: before the approval, or after it
    if isinstance(outcomes[1], Exception):  # the approval came second and was refused
        assert isinstance(outcomes[1], FailedPrecondition)
        assert Task.STATE_RUNNING not in states
