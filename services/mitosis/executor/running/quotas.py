"""Per-key and per-task limits on what callers may hold open at once on this executor."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

from mitosis.errors import (
    KEY_WATCHER_QUOTA_EXCEEDED,
    TASK_WATCHER_QUOTA_EXCEEDED,
    ResourceExhausted,
)
from mitosis.words import counted


@dataclass(frozen=True)
class Limits:
    """How much one key may use. Watchers are counted per executor process."""

    tasks_per_key: int = 100
    """Unfinished tasks one key may have at once, across all executors."""
    watchers_per_task: int = 2000
    """WatchTask streams open on one task at once."""
    watchers_per_key: int = 5000
    """WatchTask streams one key has open at once."""


class WatcherCount:
    """Counts open watch streams; refuses one more past a limit with RESOURCE_EXHAUSTED."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._by_task: Counter[str] = Counter()
        self._by_key: Counter[str] = Counter()

    @contextmanager
    def hold(self, task_id: str, owner: str) -> Iterator[None]:
        """Count one watcher of the task by the key while the block runs."""
        per_task, per_key = self._limits.watchers_per_task, self._limits.watchers_per_key
        if self._by_task[task_id] >= per_task:
            raise ResourceExhausted(
                f"task {task_id} already has {counted(per_task, 'watcher')}, the most one task"
                " may have; close one and try again",
                reason=TASK_WATCHER_QUOTA_EXCEEDED,
                metadata={"limit": str(per_task), "task_id": task_id},
            )
        if self._by_key[owner] >= per_key:
            raise ResourceExhausted(
                f"this key already has {per_key} WatchTask streams open, the most one key may"
                " have; close one and try again",
                reason=KEY_WATCHER_QUOTA_EXCEEDED,
                metadata={"limit": str(per_key)},
            )
        self._by_task[task_id] += 1
        self._by_key[owner] += 1
        try:
            yield
        finally:
            _release(self._by_task, task_id)
            _release(self._by_key, owner)

    def watching(self, task_id: str) -> int:
        """Return how many watchers the task has here."""
        return self._by_task[task_id]


def _release(counts: Counter[str], name: str) -> None:
    """Count one fewer; a name at zero is dropped, so the counts never grow with history."""
    counts[name] -= 1
    if counts[name] <= 0:
        del counts[name]


class CreationGate:
    """Lets one CreateTask per key at a time count the key's unfinished tasks and add one."""

    def __init__(self) -> None:
        # One lock per key name: names come from the keys file, so the dict stays small.
        self._locks: dict[str, asyncio.Lock] = {}

    @asynccontextmanager
    async def turn(self, owner: str) -> AsyncIterator[None]:
        """Hold the key's turn while the block runs."""
        async with self._locks.setdefault(owner, asyncio.Lock()):
            yield
