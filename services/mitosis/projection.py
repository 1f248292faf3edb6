"""The task record as a fold over its events: one pure function the stores and clients share."""

from __future__ import annotations

import time
from collections.abc import Sequence

from mitosis.v1 import task_pb2

MAX_UNSEEN = 1000
"""How many steps or pages a fold fills in for events it joined too late to see announced.
An index further out (or a negative one) is no real step or page: a broken or hostile
server sent it, and the fold ignores it rather than fail or fill in millions."""

_MAX_INT64 = 2**63 - 1

TERMINAL_STATES = frozenset(
    {
        task_pb2.Task.STATE_SUCCEEDED,
        task_pb2.Task.STATE_FAILED,
        task_pb2.Task.STATE_CANCELLED,
    }
)


def is_terminal_event(event: task_pb2.TaskEvent) -> bool:
    """Return whether the event ends the task's log."""
    return (
        event.WhichOneof("kind") == "task_state_changed"
        and event.task_state_changed.state in TERMINAL_STATES
    )


def apply_event(task: task_pb2.Task, event: task_pb2.TaskEvent) -> None:
    """Fold one stored event into the task record, in place."""
    task.last_seq = event.seq
    task.update_time.CopyFrom(event.create_time)
    kind = event.WhichOneof("kind")
    if kind == "task_state_changed":
        change = event.task_state_changed
        task.state = change.state
        if change.state in (task_pb2.Task.STATE_FAILED, task_pb2.Task.STATE_CANCELLED):
            task.error = change.message
    elif kind == "plan_ready":
        del task.steps[:]
        task.steps.extend(event.plan_ready.steps)
        task.model = event.plan_ready.model
        task.plan_summary = event.plan_ready.summary
        if event.plan_ready.tools:  # an approval's edited plan keeps the tools it had
            del task.tools[:]
            task.tools.extend(event.plan_ready.tools)
    elif kind == "plan_revised":
        revised = event.plan_revised
        del task.steps[revised.from_step_index :]
        task.steps.extend(revised.steps)
        task.revisions = revised.revision
    elif kind == "step_state_changed":
        _apply_step_change(task, event.step_state_changed)
    elif kind == "page_started":
        started = event.page_started
        task.pages.add(
            page_number=started.page_number,
            title=started.title,
            step_index=started.step_index,
            file_name=started.file_name,
        )
    elif kind == "page_delta":
        _apply_page_delta(task, event.page_delta)
    elif kind == "page_finished":
        _apply_page_finished(task, event.page_finished)
    elif kind == "artifact_ready":
        _apply_artifact(task, event.artifact_ready.artifact)


def _apply_step_change(task: task_pb2.Task, change: task_pb2.StepStateChanged) -> None:
    if not 0 <= change.step_index < len(task.steps) + MAX_UNSEEN:
        return
    while len(task.steps) <= change.step_index:  # a client that joined after the plan
        task.steps.add(index=len(task.steps), title="(unknown step)")
    step = task.steps[change.step_index]
    step.state = change.state
    step.attempts = max(step.attempts, change.attempt)
    step.error = change.message if change.state == task_pb2.Step.STATE_FAILED else ""
    if change.HasField("usage"):
        step.usage.CopyFrom(change.usage)
    if change.sources:
        del step.sources[:]
        step.sources.extend(change.sources)


def _apply_page_delta(task: task_pb2.Task, delta: task_pb2.PageDelta) -> None:
    page = _page(task, delta.page_number)
    size = delta.offset + len(delta.text.encode())
    if page is not None and delta.offset >= 0 and size <= _MAX_INT64:  # else no real page
        page.size_bytes = size


def _apply_page_finished(task: task_pb2.Task, finished: task_pb2.PageFinished) -> None:
    page = _page(task, finished.page_number)
    if page is None:
        return
    page.finished = not finished.abandoned
    page.abandoned = finished.abandoned
    if not finished.abandoned:
        page.size_bytes = finished.size_bytes


def _page(task: task_pb2.Task, page_number: int) -> task_pb2.Page | None:
    if not 1 <= page_number <= len(task.pages) + MAX_UNSEEN:
        return None
    while len(task.pages) < page_number:  # a client that joined after the page opened
        task.pages.add(page_number=len(task.pages) + 1, title="(earlier page)")
    return task.pages[page_number - 1]


def _apply_artifact(task: task_pb2.Task, artifact: task_pb2.Artifact) -> None:
    # A file rewritten by a later step is delivered again: keep one entry, the newest.
    for existing in task.artifacts:
        if existing.path == artifact.path:
            existing.CopyFrom(artifact)
            return
    task.artifacts.append(artifact)


def stamp_events(
    task: task_pb2.Task, events: Sequence[task_pb2.TaskEvent]
) -> list[task_pb2.TaskEvent]:
    """Give each event the task's next seq and the append time, folding it into `task`."""
    now_ns = time.time_ns()
    stored = []
    for event in events:
        copy = task_pb2.TaskEvent()
        copy.CopyFrom(event)
        copy.task_id = task.task_id
        copy.seq = task.last_seq + 1
        copy.create_time.FromNanoseconds(now_ns)
        apply_event(task, copy)
        stored.append(copy)
    return stored
