"""The size and count limits of a running task, each met with small limits: the step or the
task fails with a message that names the limit and its value, and the task still ends."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from google.protobuf import struct_pb2

from mitosis.errors import ResourceExhausted
from mitosis.executor.events.hub import EventHub
from mitosis.executor.events.log import EventLimitExceeded, EventLog, closes, reserved_events
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
Event = task_pb2.TaskEvent
TASK_ID = "0123456789abcdef"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "store.sqlite3")
    yield store
    await store.close()


def document_step(file_name: str) -> plan_pb2.PlanStep:
    arguments = struct_pb2.Struct()
    arguments.update({"file_name": file_name, "title": "Report"})
    return plan_pb2.PlanStep(
        title="Write the report",
        tool="write_document",
        rationale="r",
        instructions="Write a report about the figures.",
        arguments=arguments,
    )


async def run_to_end(
    store: SqliteStore,
    tmp_path: Path,
    planner: ScriptedPlanner,
    max_events: int = 200_000,
    **limits: int,
) -> tuple[Task, list[Event]]:
    """Run one task with the given limits until it ends; return it and its events."""
    hub = EventHub()
    log = EventLog(store, hub, max_events_per_task=max_events)
    config = RunnerConfig(data_dir=tmp_path, tool_timeout=30, max_revisions=0, **limits)  # type: ignore[arg-type]
    runner = TaskRunner(log, planner, PlannedToolAgent(OfflineModel(pace=0)), config)
    task = Task(task_id=TASK_ID, text="Report on the figures", state=Task.STATE_PENDING)
    task.create_time.FromNanoseconds(time.time_ns())
    await store.create_task(task)
    runner.start(TASK_ID)
    events = [
        e
        async for e in flat(watch_batches(store, hub, TASK_ID, 0, 5))
        if not e.HasField("heartbeat")
    ]
    ended = await store.get_task(TASK_ID)
    assert ended is not None
    return ended, events


async def test_a_document_over_the_size_limit_fails_its_step(
    store: SqliteStore, tmp_path: Path
) -> None:
    planner = ScriptedPlanner(document_step("report.md"))
    task, events = await run_to_end(store, tmp_path, planner, max_document_bytes=200)

    assert task.state == Task.STATE_FAILED
    assert task.error == (
        "step 1 (Write the report) failed: the document 'report.md' would be larger than the"
        " document size limit (200 bytes)"
    )
    assert [page.abandoned for page in task.pages] == [True, True]  # each attempt's page
    assert not [e for e in events if e.HasField("artifact_ready")]
    assert all(len(e.page_delta.text.encode()) <= 200 for e in events)


async def test_a_document_within_the_limit_is_delivered(store: SqliteStore, tmp_path: Path) -> None:
    planner = ScriptedPlanner(document_step("report.md"))
    task, _ = await run_to_end(store, tmp_path, planner, max_document_bytes=1 << 20)

    assert task.state == Task.STATE_SUCCEEDED
    assert [artifact.path for artifact in task.artifacts] == ["report.md"]


async def test_a_file_over_the_artifact_limit_fails_its_step(
    store: SqliteStore, tmp_path: Path
) -> None:
    code = "open('big.bin', 'wb').write(bytes(2000))\nopen('small.txt', 'w').write('ok')\n"
    task, events = await run_to_end(
        store, tmp_path, ScriptedPlanner(python_step(code, "Make files")), max_artifact_bytes=1000
    )

    assert task.state == Task.STATE_FAILED
    assert task.error == (
        "step 1 (Make files) failed: the file 'big.bin' is 2,000 bytes, more than the artifact"
        " size limit (1,000 bytes)"
    )
    assert not [e for e in events if e.HasField("artifact_ready")]


async def test_a_task_over_its_events_limit_fails_and_still_ends_cleanly(
    store: SqliteStore, tmp_path: Path
) -> None:
    workspace = f"{tmp_path}/tasks/{TASK_ID}/workspace"
    code = "import time\nfor n in range(1000):\n    print(n, flush=True)\ntime.sleep(600)\n"
    planner = ScriptedPlanner(python_step(code, "Chatter"), python_step("print(1)", "Later"))
    task, events = await run_to_end(store, tmp_path, planner, max_events=60)

    assert task.state == Task.STATE_FAILED
    assert task.error.startswith("the task reached the limit of 60 events per task (it has ")
    assert task.error.endswith("); it cannot record more and was stopped")
    assert [step.state for step in task.steps] == [Step.STATE_FAILED, Step.STATE_CANCELLED]
    assert len(events) <= 60
    assert events[-1].task_state_changed.state == Task.STATE_FAILED
    lines = [e for e in events if e.log_line.source == task_pb2.LogLine.SOURCE_STDOUT]
    assert 0 < len(lines) < 60 - reserved_events(60)
    assert processes_with(workspace) == []  # the chattering script was stopped


async def test_lines_read_together_past_the_limit_store_those_that_still_fit(
    store: SqliteStore, tmp_path: Path
) -> None:
    """A script's lines are stored a hundred to an append; the hundred that would cross the
    limit is not refused whole: the lines that fit are stored, then the task fails."""
    code = (
        "import sys, time\n"
        "sys.stdout.write(''.join(f'{n}\\n' for n in range(1000)))\n"
        "sys.stdout.flush()\n"
        "time.sleep(600)\n"
    )
    planner = ScriptedPlanner(python_step(code, "Chatter"))
    task, events = await run_to_end(store, tmp_path, planner, max_events=60)

    assert task.state == Task.STATE_FAILED
    assert len([e for e in events if not closes(e)]) == 60 - reserved_events(60)
    lines = [e.log_line.text for e in events if e.log_line.source == task_pb2.LogLine.SOURCE_STDOUT]
    assert lines == [str(n) for n in range(len(lines))]


async def test_the_reserve_takes_only_events_that_end_something(store: SqliteStore) -> None:
    task = Task(task_id=TASK_ID, text="t", state=Task.STATE_RUNNING)
    await store.create_task(task)
    log = EventLog(store, EventHub(), max_events_per_task=20)
    log.fence(TASK_ID, "me")
    assert await store.acquire_lease(TASK_ID, "me", 30)
    line = Event(log_line=task_pb2.LogLine(step_index=-1, text="x"))
    ordinary = 20 - reserved_events(20)
    for _ in range(ordinary):
        await log.append(TASK_ID, line)

    with pytest.raises(EventLimitExceeded) as caught:
        await log.append(TASK_ID, line)
    assert isinstance(caught.value, ResourceExhausted)
    assert str(caught.value) == (
        f"the task reached the limit of 20 events per task (it has {ordinary}); it cannot"
        " record more and was stopped"
    )
    failed = task_pb2.TaskStateChanged(state=Task.STATE_FAILED, message="over the limit")
    stored = await log.append(TASK_ID, Event(task_state_changed=failed))
    assert stored[0].seq == ordinary + 1


async def test_sparse_files_past_the_step_limit_fail_it_before_a_byte_is_read(
    store: SqliteStore, tmp_path: Path
) -> None:
    """Files that cost no disk (sparse) but would take minutes to hash are refused by size."""
    code = "for n in range(40):\n    open(f'sparse{n}.bin', 'wb').truncate(60 << 20)\n"
    task, events = await run_to_end(
        store, tmp_path, ScriptedPlanner(python_step(code, "Make sparse files"))
    )

    assert task.state == Task.STATE_FAILED
    assert task.error == (
        "step 1 (Make sparse files) failed: the step's files hold 2,516,582,400 bytes, more"
        " than a step may deliver (268,435,456 bytes)"
    )
    assert not [e for e in events if e.HasField("artifact_ready")]


async def test_more_files_than_a_step_may_deliver_fail_it(
    store: SqliteStore, tmp_path: Path
) -> None:
    code = "for n in range(12):\n    open(f'f{n}.txt', 'w').write('x')\n"
    task, _ = await run_to_end(
        store, tmp_path, ScriptedPlanner(python_step(code, "Make files")), max_files_per_step=10
    )

    assert task.state == Task.STATE_FAILED
    assert task.error == (
        "step 1 (Make files) failed: the step made 12 files, more than a step may deliver (10)"
    )
