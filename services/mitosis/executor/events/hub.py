"""Live fan-out of stored events to watchers, with a bounded buffer per watcher."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from mitosis.executor.store.encoded import EncodedEvent


class Overflowed(Exception):
    """The watcher fell behind its buffer; it must catch up from the store."""


class Subscription:
    """One watcher's view of a task's live events.

    `offer` never blocks and never grows the buffer past `capacity`: a watcher that stops
    reading is marked overflowed and its buffer dropped, so it costs the publisher nothing.
    The events are not lost; they are in the store, where the watcher reads them next.
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._buffer: deque[EncodedEvent] = deque()
        self._overflowed = False
        self._ready = asyncio.Event()

    def offer(self, events: Sequence[EncodedEvent]) -> bool:
        """Buffer events for the watcher, or mark it overflowed when they do not fit.

        Returns True when this offer overflowed the buffer.
        """
        if self._overflowed:
            return False
        overflowed = len(self._buffer) + len(events) > self._capacity
        if overflowed:
            self._overflowed = True
            self._buffer.clear()
        else:
            self._buffer.extend(events)
        self._ready.set()
        return overflowed

    async def next_batch(self, max_wait: float) -> list[EncodedEvent]:
        """Return the buffered events, waiting up to `max_wait` s; [] when none came.

        Raises Overflowed once after the buffer overflowed, and resets, so the caller can
        catch up from the store and go on listening.
        """
        if not self._buffer and not self._overflowed:
            self._ready.clear()
            try:
                async with asyncio.timeout(max_wait):  # no task per wait, unlike wait_for
                    await self._ready.wait()
            except TimeoutError:
                return []
        return self.take()

    def take(self) -> list[EncodedEvent]:
        """Return the buffered events at once ([] when there are none); raises Overflowed
        like `next_batch`."""
        if self._overflowed:
            self._overflowed = False
            raise Overflowed
        batch = list(self._buffer)
        self._buffer.clear()
        return batch


class EventHub:
    """Routes each task's newly stored events to that task's subscriptions."""

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._subscriptions: defaultdict[str, set[Subscription]] = defaultdict(set)
        self._from_seq: dict[str, int] = {}
        self.changed = asyncio.Event()
        """Set whenever the set of watched tasks changes (a feed from another store waits on it)."""
        self.overflows = 0
        """How many times a watcher's buffer overflowed (it then caught up from the store)."""

    @contextmanager
    def subscribe(self, task_id: str, from_seq: int = 0) -> Iterator[Subscription]:
        """Yield a subscription to the task's live events after `from_seq`, removed on exit.

        Events up to `from_seq` are the watcher's to read from the store; a feed of events
        written elsewhere (another executor) starts after the lowest such seq of a task.
        """
        subscription = Subscription(self._capacity)
        self._subscriptions[task_id].add(subscription)
        self._from_seq[task_id] = min(from_seq, self._from_seq.get(task_id, from_seq))
        self.changed.set()
        try:
            yield subscription
        finally:
            watchers = self._subscriptions[task_id]
            watchers.discard(subscription)
            if not watchers:
                del self._subscriptions[task_id]
                del self._from_seq[task_id]
                self.changed.set()

    def watched(self) -> dict[str, int]:
        """Return each watched task with the seq its earliest watcher's live part starts after."""
        return dict(self._from_seq)

    def publish(self, task_id: str, events: Sequence[EncodedEvent]) -> None:
        """Offer stored events (encoded once, for all) to every subscription of the task."""
        for subscription in self._subscriptions.get(task_id, ()):
            if subscription.offer(events):
                self.overflows += 1

    def watcher_count(self, task_id: str) -> int:
        """Return how many watchers the task has now."""
        return len(self._subscriptions.get(task_id, ()))

    def watcher_total(self) -> int:
        """Return how many watchers all tasks have now."""
        return sum(len(watchers) for watchers in self._subscriptions.values())
