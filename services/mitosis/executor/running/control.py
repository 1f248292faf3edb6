"""Task control as conditional appends: how a task is ended, approved and cancelled.

Every change of a task's state is one append that the store checks against the task as it
is at that moment (Store.append: a Change reads the record, `Expect` states what it must
be, and nothing ever follows a terminal event). So an approval and a cancel, a cancel and
the executor running the task, or two executors, cannot interleave wrongly: the one that
comes second is refused by the store, whoever and wherever it is. No lock, no waiting.
"""

from __future__ import annotations

from collections.abc import Sequence

from mitosis.errors import TASK_ENDED, TASK_NOT_AWAITING_APPROVAL, FailedPrecondition
from mitosis.executor.events.log import EventLog
from mitosis.executor.store.base import Change, Expect, Refused, TaskEnded, state_name
from mitosis.projection import TERMINAL_STATES
from mitosis.v1 import plan_pb2, task_pb2

Task = task_pb2.Task
Step = task_pb2.Step
Event = task_pb2.TaskEvent

AWAITING = Expect(states=frozenset({Task.STATE_AWAITING_APPROVAL}))


def ending(state: Task.State.ValueType, reason: str) -> Change:
    """The change that ends a task in `state`, closing every open page and step first.

    A page left open is abandoned (no file is delivered for it); a running step fails with
    the task (or is cancelled with it); a pending step never runs.
    """
    if state not in TERMINAL_STATES:
        raise ValueError(f"{Task.State.Name(state)} does not end a task")

    def close(task: Task) -> Sequence[Event]:
        events = [
            Event(page_finished=task_pb2.PageFinished(page_number=page.page_number, abandoned=True))
            for page in task.pages
            if not page.finished and not page.abandoned
        ]
        for step in task.steps:
            if step.state == Step.STATE_RUNNING:
                failed = state == Task.STATE_FAILED
                change = task_pb2.StepStateChanged(
                    step_index=step.index,
                    state=Step.STATE_FAILED if failed else Step.STATE_CANCELLED,
                    attempt=step.attempts,
                    message=reason if failed else "",
                )
            elif step.state == Step.STATE_PENDING:
                change = task_pb2.StepStateChanged(
                    step_index=step.index, state=Step.STATE_CANCELLED, attempt=step.attempts
                )
            else:
                continue
            events.append(Event(step_state_changed=change))
        ended = task_pb2.TaskStateChanged(state=state, message=reason)
        events.append(Event(task_state_changed=ended))
        return events

    return close


def approval(plan: plan_pb2.Plan | None) -> Change:
    """The change that approves a waiting plan, as proposed or replaced by `plan`."""

    def approve(task: Task) -> Sequence[Event]:
        events = []
        if plan is not None and plan.steps:
            summary = plan.summary or "The plan as edited when it was approved."
            ready = task_pb2.PlanReady(steps=steps_of(plan), model=task.model, summary=summary)
            events.append(Event(plan_ready=ready))
        running = task_pb2.TaskStateChanged(state=Task.STATE_RUNNING, message="plan approved")
        events.append(Event(task_state_changed=running))
        return events

    return approve


async def end_task(
    log: EventLog, task_id: str, state: Task.State.ValueType, reason: str, *, fenced: bool
) -> list[Event]:
    """End the task: the one way a task ends, whoever ends it. Returns the events stored.

    `fenced`: the task's run ends it, only while it holds the lease (else LeaseLost).
    Raises TaskEnded when it had ended already (then nothing is written).
    """
    return await log.change(task_id, ending(state, reason), fenced=fenced)


async def cancel_task(log: EventLog, task_id: str, reason: str) -> None:
    """End the task CANCELLED; FailedPrecondition when it has ended already."""
    try:
        await end_task(log, task_id, Task.STATE_CANCELLED, reason, fenced=False)
    except TaskEnded as ended:
        raise FailedPrecondition(
            f"task {task_id} has already ended ({_state(ended)})",
            reason=TASK_ENDED,
            metadata={"state": _state(ended)},
        ) from None


async def approve_plan(log: EventLog, task_id: str, plan: plan_pb2.Plan | None) -> None:
    """Move a task that waits for approval to RUNNING; FailedPrecondition in any other state."""
    try:
        await log.change(task_id, approval(plan), expect=AWAITING, fenced=False)
    except Refused as refused:
        ended = isinstance(refused, TaskEnded)
        raise FailedPrecondition(
            f"task {task_id} is not awaiting approval ({_where_it_is(refused)})",
            reason=TASK_ENDED if ended else TASK_NOT_AWAITING_APPROVAL,
            metadata={"state": _state(refused)},
        ) from None


def steps_of(plan: plan_pb2.Plan, first_index: int = 0) -> list[Step]:
    """Return the plan's steps as pending task steps, numbered from `first_index`."""
    return [
        Step(
            index=first_index + offset,
            title=planned.title,
            tool=planned.tool,
            rationale=planned.rationale,
            instructions=planned.instructions,
            arguments=planned.arguments,
            state=Step.STATE_PENDING,
        )
        for offset, planned in enumerate(plan.steps)
    ]


def _state(refused: Refused) -> str:
    return state_name(refused.task.state)


_ENDED_PHRASES = {
    Task.STATE_SUCCEEDED: "it has succeeded",
    Task.STATE_FAILED: "it has failed",
    Task.STATE_CANCELLED: "it was cancelled",
}


def _where_it_is(refused: Refused) -> str:
    """Return "it is running", "it has succeeded", "it was cancelled": the state in words."""
    state = refused.task.state
    return _ENDED_PHRASES.get(state, f"it is {state_name(state)}")
