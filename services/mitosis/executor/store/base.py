"""The store interface: tasks and their gapless, append-only event logs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import grpc

from mitosis.errors import Unavailable
from mitosis.executor.store.encoded import EncodedEvent
from mitosis.projection import TERMINAL_STATES
from mitosis.v1 import task_pb2


class StoreUnavailable(Unavailable):
    """The store could not be reached, even after its bounded retries: not the task's
    fault, and not a reason to end it (it can go on once the store is back)."""


class StoreFull(StoreUnavailable):
    """The store's disk is full: like an unreachable store, not the task's fault and not a
    reason to end it (it goes on once there is space), but RESOURCE_EXHAUSTED to callers,
    with the folder to free space in."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class LeaseLost(Exception):
    """An append was fenced by a lease this executor no longer holds: another one took over."""


class Refused(Exception):
    """The task was not as the append required; nothing was written.

    `task` is the record the store checked, so the caller can say why.
    """

    def __init__(self, task: task_pb2.Task, why: str) -> None:
        super().__init__(f"task {task.task_id}: {why}")
        self.task = task


class TaskEnded(Refused):
    """The task has ended: its log takes nothing after its terminal event."""


Change = Callable[[task_pb2.Task], Sequence[task_pb2.TaskEvent]]
"""Events made from the task's record as the store holds it at the append, atomically with
it: how a change that depends on the task's state (closing what is open) is appended."""


@dataclass(frozen=True)
class Expect:
    """What an append requires of the task, checked by the store atomically with the write."""

    states: frozenset[task_pb2.Task.State.ValueType] = frozenset()
    """The task must be in one of these states (empty: any state that has not ended)."""


def check_append(task: task_pb2.Task, expect: Expect | None) -> None:
    """Raise TaskEnded or Refused unless an append to `task` may go ahead.

    No event ever follows a terminal one, whoever appends; `expect` may ask for more.
    """
    if task.state in TERMINAL_STATES:
        raise TaskEnded(task, f"it has already ended ({state_name(task.state)})")
    if expect is not None and expect.states and task.state not in expect.states:
        raise Refused(task, f"it is {state_name(task.state)}")


def state_name(state: task_pb2.Task.State.ValueType) -> str:
    """Return a state as people read it: STATE_AWAITING_APPROVAL → "awaiting approval"."""
    return task_pb2.Task.State.Name(state).removeprefix("STATE_").lower().replace("_", " ")


def events_of(
    task: task_pb2.Task, events: Sequence[task_pb2.TaskEvent] | Change
) -> list[task_pb2.TaskEvent]:
    """Return the events to append to `task`: as given, or made by the change from it."""
    return list(events(task) if callable(events) else events)


@dataclass(frozen=True)
class TaskPage:
    """One page of a task listing, newest first."""

    tasks: list[task_pb2.Task]
    next_cursor: tuple[int, str] | None
    """(create time in ns, task id) of the last task, when more tasks follow."""


_T = TypeVar("_T")


class Landing(asyncio.Future[_T]):
    """The future of an append the store has taken: it lands whole or fails whole, and
    cannot be taken back, so cancelling it does nothing (`cancel` says False).

    A task cancelled while it awaits one is cancelled once the append is done (asyncio
    raises CancelledError where it awaited): what it appended is stored, and the future's
    callbacks (the hub's, for one) see it stored. Awaited as it is, it costs no shield.
    """

    def cancel(self, msg: Any | None = None) -> bool:
        return False


class Store(Protocol):
    """Where tasks and events live. Implementations: SQLite (embedded), Redis (scale-out)."""

    where: str
    """The store's location as logs may show it (never with credentials)."""

    async def create_task(self, task: task_pb2.Task) -> None:
        """Store a new task record (with no events yet)."""
        ...

    async def get_task(self, task_id: str) -> task_pb2.Task | None:
        """Return the task record as its events made it, or None when it does not exist."""
        ...

    async def list_tasks(
        self, page_size: int, after: tuple[int, str] | None, owner: str | None = None
    ) -> TaskPage:
        """Return up to `page_size` tasks older than the cursor `after`, newest first.

        With `owner`, only the tasks whose `Task.owner` is `owner` (an index, not a filter
        over every task).
        """
        ...

    async def count_unfinished(self, owner: str) -> int:
        """Return how many of `owner`'s tasks have not reached a terminal state."""
        ...

    def append(
        self,
        task_id: str,
        events: Sequence[task_pb2.TaskEvent] | Change,
        *,
        owner: str | None = None,
        expect: Expect | None = None,
    ) -> Awaitable[list[task_pb2.TaskEvent]]:
        """Append events atomically, assigning `seq` and `create_time`; return them stored
        (a coroutine, or a `Landing` when the store batches appends itself).

        The task record is updated with the events in the same transaction, so the record
        never disagrees with the log. Raises KeyError when the task does not exist. With
        `owner`, the append is fenced: it raises LeaseLost unless `owner` holds the task's
        lease when the transaction commits. Whoever appends, a task that has ended takes
        nothing more (TaskEnded), and `expect` is checked against the record the events
        are appended to (Refused): both are part of the same atomic step, as is a Change's
        reading of the record.
        """
        ...

    async def acquire_lease(self, task_id: str, owner: str, ttl: float) -> bool:
        """Take the task's lease for `ttl` seconds when it is free, expired or already ours."""
        ...

    async def renew_lease(self, task_id: str, owner: str, ttl: float) -> bool:
        """Extend our lease by `ttl` seconds; False when it is no longer ours."""
        ...

    async def release_lease(self, task_id: str, owner: str) -> None:
        """Give the lease up, if it is ours."""
        ...

    async def read_events(
        self, task_id: str, after_seq: int, limit: int
    ) -> list[task_pb2.TaskEvent]:
        """Return up to `limit` events with `seq > after_seq`, in order."""
        ...

    async def read_encoded(self, task_id: str, after_seq: int, limit: int) -> list[EncodedEvent]:
        """Return up to `limit` events with `seq > after_seq` as the store holds their bytes."""
        ...

    async def unfinished_task_ids(self) -> list[str]:
        """Return the ids of tasks that have not reached a terminal state, oldest first."""
        ...

    async def ended_before(self, before_ns: int, limit: int) -> list[str]:
        """Return up to `limit` ids of tasks that reached a terminal state before `before_ns`
        (Unix time in ns), the earliest ended first."""
        ...

    async def delete_ended(self, task_ids: Sequence[str], before_ns: int) -> list[str]:
        """Delete the tasks (record, events, index entries) that ended before `before_ns`.

        Ids not known to have ended before `before_ns` (unfinished, ended later, unknown)
        are skipped. Returns the ids deleted; afterwards `get_task` gives None for them and
        listings leave them out.
        """
        ...

    async def close(self) -> None:
        """Release the store's connections."""
        ...
