"""Appending to a task's log: store first, then publish to live watchers."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence

from mitosis.errors import ResourceExhausted
from mitosis.executor.events.hub import EventHub
from mitosis.executor.store.base import Change, Expect, Landing, Store
from mitosis.executor.store.encoded import EncodedEvent
from mitosis.projection import TERMINAL_STATES
from mitosis.v1 import task_pb2

Observer = Callable[[str, Sequence[task_pb2.TaskEvent]], None]
"""Called with a task id and the events just stored for it (metrics, for one)."""

DEFAULT_MAX_EVENTS_PER_TASK = 200_000
"""Events one task may have: far more than a long task with chatty scripts writes."""

_CLOSING_STEP_STATES = (task_pb2.Step.STATE_FAILED, task_pb2.Step.STATE_CANCELLED)


class EventLimitExceeded(ResourceExhausted):
    """A running task would go over the events-per-task limit; it must end now."""


def reserved_events(max_events: int) -> int:
    """Return how many of a task's `max_events` are kept for the events that end it."""
    return min(1000, max(16, max_events // 10))


def closes(event: task_pb2.TaskEvent) -> bool:
    """Tell whether an event ends something (the task, a step, a page): such events are
    stored even past the limit's reserve, so a task over its limit can still end cleanly."""
    kind = event.WhichOneof("kind")
    if kind == "task_state_changed":
        return event.task_state_changed.state in TERMINAL_STATES
    if kind == "step_state_changed":
        return event.step_state_changed.state in _CLOSING_STEP_STATES
    return kind == "page_finished"


class EventLog:
    """The one way the executor records what happens: an event is stored before it is seen.

    While a task runs here (it is fenced), its events are counted: once an append would take
    it past `max_events_per_task` less a reserve, the append raises EventLimitExceeded, and
    only events that end the task, a step or a page are stored from then on.
    """

    def __init__(
        self,
        store: Store,
        hub: EventHub,
        *,
        max_events_per_task: int = DEFAULT_MAX_EVENTS_PER_TASK,
    ) -> None:
        if max_events_per_task < 1:
            raise ValueError(f"max_events_per_task must be 1 or more, not {max_events_per_task}")
        self.store = store
        self.hub = hub
        self.max_events_per_task = max_events_per_task
        self._owners: dict[str, str] = {}
        self._counts: dict[str, int] = {}
        self.observers: list[Observer] = []

    def fence(self, task_id: str, owner: str | None) -> None:
        """Append to the task only while `owner` holds its lease (None: stop fencing)."""
        if owner is None:
            self._owners.pop(task_id, None)
            self._counts.pop(task_id, None)
        else:
            self._owners[task_id] = owner

    async def append(self, task_id: str, *events: task_pb2.TaskEvent) -> list[task_pb2.TaskEvent]:
        """Store the events in one transaction, then offer them to the task's watchers.

        Raises LeaseLost when the task is fenced and its lease has moved to another executor,
        TaskEnded when the task has ended (someone cancelled it), and EventLimitExceeded when
        a running task would exceed its events limit.
        """
        owner = self._owners.get(task_id)
        if owner is not None:
            await self._check_limit(task_id, events)
        return await self._store(task_id, events, owner, None)

    async def change(
        self, task_id: str, change: Change, *, expect: Expect | None = None, fenced: bool = True
    ) -> list[task_pb2.TaskEvent]:
        """Append the events `change` makes from the task as stored, if it is as `expect`
        says: one atomic step in the store (see Store.append). Raises Refused otherwise.

        `fenced`: like `append` while the task runs here (the run's own changes); a control
        change (a cancel, an approval) is not, as it may come from anyone at any time. A
        change ends something or moves the task on, so the events limit does not apply.
        """
        owner = self._owners.get(task_id) if fenced else None
        return await self._store(task_id, change, owner, expect)

    async def _store(
        self,
        task_id: str,
        events: Sequence[task_pb2.TaskEvent] | Change,
        owner: str | None,
        expect: Expect | None,
    ) -> list[task_pb2.TaskEvent]:
        # A cancel (of a step, of the task) must not cut an append in half: the commit lands
        # whole or not at all, and a store's connection is never left mid-reply.
        stored = functools.partial(self._stored, task_id)
        append = self.store.append(task_id, events, owner=owner, expect=expect)
        if isinstance(append, Landing):  # it cannot be cancelled: awaited as it is
            append.add_done_callback(stored)
            landed: list[task_pb2.TaskEvent] = await append
            return landed
        running = asyncio.ensure_future(append)  # a coroutine: shielded from the cancel
        running.add_done_callback(stored)
        return await asyncio.shield(running)

    def _stored(self, task_id: str, append: asyncio.Future[list[task_pb2.TaskEvent]]) -> None:
        """Offer what was stored to watchers and observers, even when the caller was
        cancelled meanwhile; a failure is retrieved here, so one nobody awaits any more (a
        cancelled run's refused append) is not reported as an error never retrieved."""
        if append.cancelled() or append.exception() is not None:
            return
        stored = append.result()
        if stored and task_id in self._owners:
            self._counts[task_id] = max(self._counts.get(task_id, 0), stored[-1].seq)
        if self.hub.watcher_count(task_id):
            self.hub.publish(task_id, [EncodedEvent.of(event) for event in stored])
        for observe in self.observers:
            observe(task_id, stored)

    async def _check_limit(self, task_id: str, events: Sequence[task_pb2.TaskEvent]) -> None:
        if all(closes(event) for event in events):
            return
        count = self._counts.get(task_id)
        if count is None:
            task = await self.store.get_task(task_id)
            count = self._counts[task_id] = task.last_seq if task is not None else 0
        limit = self.max_events_per_task
        if count + len(events) > limit - reserved_events(limit):
            raise EventLimitExceeded(
                f"the task reached the limit of {limit:,} events per task"
                f" (it has {count:,}); it cannot record more and was stopped"
            )
