"""WatchTask's algorithm: replay from the store, then go live, with no gap and no duplicate."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from mitosis.errors import InvalidArgument, NotFound, OutOfRange, Unavailable
from mitosis.executor.hub import EventHub, Overflowed, Subscription
from mitosis.executor.store import Store
from mitosis.projection import TERMINAL_STATES, is_terminal_event
from mitosis.v1 import task_pb2

REPLAY_BATCH = 1000
"""Events read from the store per query while catching up."""


async def watch_events(
    store: Store,
    hub: EventHub,
    task_id: str,
    after_seq: int,
    heartbeat_interval: float,
) -> AsyncIterator[task_pb2.TaskEvent]:
    """Yield the task's events with `seq > after_seq` in order, then heartbeats while quiet.

    Subscribes before reading the backlog, so an event appended during the replay is
    either in the backlog or in the subscription; what was already sent is dropped by seq.
    While quiet it checks the store before each heartbeat, so even an event a live feed
    missed reaches the watcher within one heartbeat interval. Ends after the terminal event.
    """
    if after_seq < 0:
        raise InvalidArgument(f"after_seq must be 0 or more, not {after_seq}")
    task = await store.get_task(task_id)
    if task is None:
        raise NotFound(f"task {task_id!r} does not exist")
    with hub.subscribe(task_id, from_seq=task.last_seq) as subscription:
        if after_seq > task.last_seq:
            raise OutOfRange(
                f"after_seq {after_seq} is beyond the task's newest event (seq {task.last_seq})"
            )
        if task.state in TERMINAL_STATES and after_seq == task.last_seq:
            return
        last = after_seq
        while True:
            async for event in _replay(store, task_id, last):
                last = event.seq
                yield event
                if is_terminal_event(event):
                    return
            try:
                async for event in _live(store, subscription, task_id, last, heartbeat_interval):
                    if event.seq > last:
                        last = event.seq
                    yield event
                    if is_terminal_event(event):
                        return
            except (Overflowed, _Gap):
                continue


class _Gap(Exception):
    """A live event arrived out of order; the store has the ones in between."""


async def _replay(store: Store, task_id: str, after_seq: int) -> AsyncIterator[task_pb2.TaskEvent]:
    while True:
        batch = await store.read_events(task_id, after_seq, REPLAY_BATCH)
        if batch and batch[0].seq != after_seq + 1:
            # Only a deletion takes events away (retention, oldest first): never skip on.
            await _gone(store, task_id)
            raise Unavailable(f"task {task_id}: the store lacks events after seq {after_seq}")
        for event in batch:
            yield event
        if len(batch) < REPLAY_BATCH:
            return
        after_seq = batch[-1].seq


async def _gone(store: Store, task_id: str) -> None:
    """Raise NotFound when the task was deleted while it was being watched."""
    if await store.get_task(task_id) is None:
        raise NotFound(f"task {task_id} was deleted while it was being watched")


async def _live(
    store: Store, subscription: Subscription, task_id: str, last: int, heartbeat_interval: float
) -> AsyncIterator[task_pb2.TaskEvent]:
    while True:
        batch = await subscription.next_batch(heartbeat_interval)
        if not batch:
            if await store.read_events(task_id, last, 1):
                raise _Gap  # stored, but never offered live: read it from the store
            await _gone(store, task_id)  # a deleted task's watch ends instead of idling on
            yield heartbeat(task_id, last)
            continue
        for event in batch:
            if event.seq <= last:
                continue  # already sent from the backlog
            if event.seq != last + 1:
                raise _Gap
            last = event.seq
            yield event


def heartbeat(task_id: str, latest_seq: int) -> task_pb2.TaskEvent:
    """Return a heartbeat carrying the newest seq the watcher has."""
    event = task_pb2.TaskEvent(task_id=task_id, seq=latest_seq, heartbeat=task_pb2.Heartbeat())
    event.create_time.FromNanoseconds(time.time_ns())
    return event
