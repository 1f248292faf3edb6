"""WatchTask's algorithm: replay from the store, then go live, with no gap and no duplicate.

One algorithm serves the three ways to watch: live (each event as soon as it is stored),
catch-up (many events to a message) and bounded (the response ends soon after it first
sends something, for paths that deliver a response only once it ends).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence

from mitosis.errors import (
    AFTER_SEQ_OUT_OF_RANGE,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from mitosis.executor.events.hub import EventHub, Overflowed, Subscription
from mitosis.executor.store.base import Store
from mitosis.executor.store.encoded import EncodedEvent
from mitosis.projection import TERMINAL_STATES
from mitosis.v1 import task_pb2

REPLAY_BATCH = 1000
"""Events read from the store per query while catching up."""

MAX_MESSAGE_EVENTS = 1000
"""Events in one WatchTaskResponse at most."""

MAX_MESSAGE_BYTES = 1 << 20
"""A message is cut once its events reach this size (gRPC's default limit is 4 MiB)."""

BURST_SPACING = 0.0004
"""Live events coming closer together than this on average (over 2,500 a second,
sustained) are a burst..."""

LINGER = 0.001
"""...and a watcher of a burst waits this long for the events that follow, to send them in
one message. A steady stream, even a fast one with the odd pair of events close together,
goes out an event at a time as soon as each is stored; a burst goes out about LINGER later
(the event loop's timers have a resolution of 1 ms), many events to a message, which is
what lets the stream outrun a one-event-per-message transport."""

_SPACING_WEIGHT = 0.25
"""How much the newest take counts in the running average of the events' spacing."""

MIN_MAX_WAIT = 0.05
MAX_MAX_WAIT = 30.0
"""The range of the bounded form's `max_wait`, in seconds."""

Batch = list[EncodedEvent]
"""Events that go out in one WatchTaskResponse, each encoded once for every watcher."""


def check_max_wait(max_wait: float | None) -> None:
    """Raise InvalidArgument for a bounded wait outside [MIN_MAX_WAIT, MAX_MAX_WAIT]."""
    if max_wait is not None and not MIN_MAX_WAIT <= max_wait <= MAX_MAX_WAIT:
        raise InvalidArgument(
            f"max_wait must be from {MIN_MAX_WAIT:g} s to {MAX_MAX_WAIT:g} s, not {max_wait:g} s"
        )


async def watch_batches(
    store: Store,
    hub: EventHub,
    task_id: str,
    after_seq: int,
    heartbeat_interval: float,
    max_wait: float | None = None,
) -> AsyncIterator[Batch]:
    """Yield the task's events with `seq > after_seq` in order, in batches, then heartbeats.

    Subscribes before reading the backlog, so an event appended during the replay is
    either in the backlog or in the subscription; what was already sent is dropped by seq.
    While quiet it checks the store before each heartbeat, so even an event a live feed
    missed reaches the watcher within one heartbeat interval. Ends after the terminal event.

    Live (`max_wait` None): the first batch comes at once, a heartbeat when there is no
    backlog. Bounded: waits for the first event (a heartbeat after one interval ends the
    response), then ends `max_wait` after its first batch.
    """
    if after_seq < 0:
        raise InvalidArgument(f"after_seq must be 0 or more, not {after_seq}")
    check_max_wait(max_wait)
    task = await store.get_task(task_id)
    if task is None:
        raise NotFound(f"task {task_id!r} does not exist")
    with hub.subscribe(task_id, from_seq=task.last_seq) as subscription:
        if after_seq > task.last_seq:
            raise OutOfRange(
                f"after_seq {after_seq} is beyond the task's newest event (seq {task.last_seq})",
                reason=AFTER_SEQ_OUT_OF_RANGE,
                metadata={"last_seq": str(task.last_seq)},
            )
        if task.state in TERMINAL_STATES and after_seq == task.last_seq:
            return
        watch = _Watch(store, subscription, task_id, after_seq, heartbeat_interval, max_wait)
        async for batch in watch.batches():
            yield batch


class _Gap(Exception):
    """A live event arrived out of order; the store has the ones in between."""


class _Watch:
    """One response's progress: the last seq sent and, once bounded, when it ends."""

    def __init__(
        self,
        store: Store,
        subscription: Subscription,
        task_id: str,
        after_seq: int,
        heartbeat_interval: float,
        max_wait: float | None,
    ) -> None:
        self._store = store
        self._subscription = subscription
        self._task_id = task_id
        self._last = after_seq
        self._heartbeat_interval = heartbeat_interval
        self._max_wait = max_wait
        self._ends_at: float | None = None  # bounded, once something was sent
        self._sent = False
        self._taken_at = time.monotonic()  # when live events were last taken
        self._spacing = 3600.0  # running average of the seconds between live events

    async def batches(self) -> AsyncIterator[Batch]:
        while True:
            async for batch in self._replay():
                yield self._sending(batch)
                if batch[-1].terminal or self._expired():
                    return
            if not self._sent and self._max_wait is None:
                yield self._sending([heartbeat(self._task_id, self._last)])
            try:
                async for batch in self._live():
                    yield self._sending(batch)
                    if batch[-1].terminal or self._expired():
                        return
            except (Overflowed, _Gap):
                continue
            return  # the live part ended: a bounded response's time is up

    def _sending(self, batch: Batch) -> Batch:
        if not batch[-1].heartbeat:
            self._last = batch[-1].seq
        if not self._sent and self._max_wait is not None:
            self._ends_at = time.monotonic() + self._max_wait
        self._sent = True
        return batch

    async def _with_burst(self, offered: list[EncodedEvent]) -> list[EncodedEvent]:
        """Return the events offered, and, in a burst, those that follow within LINGER."""
        self._measure_spacing(len(offered))
        if self._spacing >= BURST_SPACING or len(offered) >= MAX_MESSAGE_EVENTS:
            return offered
        await asyncio.sleep(LINGER)
        more = self._subscription.take()
        self._measure_spacing(len(more))
        return offered + more

    def _measure_spacing(self, events: int) -> None:
        """Fold the time since the last take, per event taken now, into the average."""
        now = time.monotonic()
        spacing = (now - self._taken_at) / max(events, 1)
        self._spacing += _SPACING_WEIGHT * (spacing - self._spacing)
        self._taken_at = now

    def _expired(self) -> bool:
        return self._ends_at is not None and time.monotonic() >= self._ends_at

    async def _replay(self) -> AsyncIterator[Batch]:
        after_seq = self._last
        while True:
            stored = await self._store.read_encoded(self._task_id, after_seq, REPLAY_BATCH)
            if stored and stored[0].seq != after_seq + 1:
                # Only a deletion takes events away (retention, oldest first): never skip on.
                await _gone(self._store, self._task_id)
                raise Unavailable(
                    f"task {self._task_id}: the store lacks events after seq {after_seq}"
                )
            for batch in split(stored):
                yield batch
            if len(stored) < REPLAY_BATCH:
                return
            after_seq = stored[-1].seq

    async def _live(self) -> AsyncIterator[Batch]:
        """Yield live batches; return when a bounded response's time is up."""
        while True:
            wait = self._heartbeat_interval
            if self._ends_at is not None:
                wait = min(wait, self._ends_at - time.monotonic())
                if wait <= 0:
                    return
            offered = await self._subscription.next_batch(wait)
            if offered:
                offered = await self._with_burst(offered)
            if not offered:
                if self._expired():
                    return
                if await self._store.read_events(self._task_id, self._last, 1):
                    raise _Gap  # stored, but never offered live: read it from the store
                await _gone(self._store, self._task_id)  # a deleted task's watch ends
                yield [heartbeat(self._task_id, self._last)]
                if self._max_wait is not None:
                    return  # a bounded response that had nothing to send ends on a heartbeat
                continue
            fresh = [event for event in offered if event.seq > self._last]
            if not fresh:
                continue  # already sent from the backlog
            if any(event.seq != self._last + 1 + i for i, event in enumerate(fresh)):
                raise _Gap
            for batch in split(fresh):
                yield batch


def split(events: Sequence[EncodedEvent]) -> list[Batch]:
    """Cut events into messages of at most MAX_MESSAGE_EVENTS events and ~MAX_MESSAGE_BYTES."""
    batches: list[Batch] = []
    batch: Batch = []
    size = 0
    for event in events:
        event_size = len(event.data)
        if batch and (len(batch) == MAX_MESSAGE_EVENTS or size + event_size > MAX_MESSAGE_BYTES):
            batches.append(batch)
            batch, size = [], 0
        batch.append(event)
        size += event_size
    if batch:
        batches.append(batch)
    return batches


async def _gone(store: Store, task_id: str) -> None:
    """Raise NotFound when the task was deleted while it was being watched."""
    if await store.get_task(task_id) is None:
        raise NotFound(f"task {task_id} was deleted while it was being watched")


def heartbeat(task_id: str, latest_seq: int) -> EncodedEvent:
    """Return a heartbeat carrying the newest seq the watcher has."""
    event = task_pb2.TaskEvent(task_id=task_id, seq=latest_seq, heartbeat=task_pb2.Heartbeat())
    event.create_time.FromNanoseconds(time.time_ns())
    return EncodedEvent.of(event)
