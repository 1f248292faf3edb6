"""Appending to a task's log: store first, then publish to live watchers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from mitosis.executor.hub import EventHub
from mitosis.executor.store import Store
from mitosis.v1 import task_pb2

Observer = Callable[[str, Sequence[task_pb2.TaskEvent]], None]
"""Called with a task id and the events just stored for it (metrics, for one)."""


class EventLog:
    """The one way the executor records what happens: an event is stored before it is seen."""

    def __init__(self, store: Store, hub: EventHub) -> None:
        self.store = store
        self.hub = hub
        self._owners: dict[str, str] = {}
        self.observers: list[Observer] = []

    def fence(self, task_id: str, owner: str | None) -> None:
        """Append to the task only while `owner` holds its lease (None: stop fencing)."""
        if owner is None:
            self._owners.pop(task_id, None)
        else:
            self._owners[task_id] = owner

    async def append(self, task_id: str, *events: task_pb2.TaskEvent) -> list[task_pb2.TaskEvent]:
        """Store the events in one transaction, then offer them to the task's watchers.

        Raises LeaseLost when the task is fenced and its lease has moved to another executor.
        """
        # Shielded: a cancel (of a step, of the task) must not cut an append in half — the
        # commit lands whole or not at all, and a store's connection is never left mid-reply.
        append = self.store.append(task_id, events, owner=self._owners.get(task_id))
        stored = await asyncio.shield(append)
        self.hub.publish(task_id, stored)
        for observe in self.observers:
            observe(task_id, stored)
        return stored
