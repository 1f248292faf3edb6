"""The watch algorithm on a real SQLite store and hub, without the network."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mitosis.errors import InvalidArgument, NotFound, OutOfRange
from mitosis.executor.events import watch as watch_module
from mitosis.executor.events.hub import EventHub
from mitosis.executor.events.log import EventLog
from mitosis.executor.events.watch import (
    MAX_MESSAGE_BYTES,
    MAX_MESSAGE_EVENTS,
    split,
    watch_batches,
)
from mitosis.executor.store.encoded import EncodedEvent, watch_response
from mitosis.executor.store.sqlite import SqliteStore
from mitosis.v1 import task_pb2, task_service_pb2
from tests.support.watch import flat

Event = task_pb2.TaskEvent


def watch_events(*args: Any, **kwargs: Any) -> AsyncIterator[Event]:
    """The watch's events one by one, whatever batches they came in."""
    return flat(watch_batches(*args, **kwargs))


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "events.sqlite3")
    yield store
    await store.close()


async def new_task(store: SqliteStore, task_id: str = "00000000000000aa") -> str:
    task = task_pb2.Task(task_id=task_id, text="t", state=task_pb2.Task.STATE_PENDING)
    task.create_time.FromNanoseconds(time.time_ns())
    await store.create_task(task)
    return task_id


def line(text: str) -> Event:
    return Event(log_line=task_pb2.LogLine(step_index=0, text=text))


def end() -> Event:
    return Event(task_state_changed=task_pb2.TaskStateChanged(state=task_pb2.Task.STATE_SUCCEEDED))


async def take(stream: AsyncIterator[Event], count: int) -> list[Event]:
    return [await anext(stream) for _ in range(count)]


async def test_appends_get_gapless_seqs_and_update_the_record(store: SqliteStore) -> None:
    task_id = await new_task(store)
    first = await store.append(task_id, [line("a"), line("b")])
    second = await store.append(task_id, [line("c")])

    assert [e.seq for e in first + second] == [1, 2, 3]
    task = await store.get_task(task_id)
    assert task is not None
    assert task.last_seq == 3


async def test_append_to_a_missing_task_stores_nothing(store: SqliteStore) -> None:
    with pytest.raises(KeyError):
        await store.append("00000000000000ff", [line("a")])
    assert await store.read_events("00000000000000ff", 0, 10) == []


async def test_live_events_follow_the_backlog_without_gap_or_duplicate(store: SqliteStore) -> None:
    hub = EventHub()
    log = EventLog(store, hub)
    task_id = await new_task(store)
    await log.append(task_id, *[line(str(i)) for i in range(5)])

    stream = watch_events(store, hub, task_id, 2, heartbeat_interval=5)
    backlog = await take(stream, 3)
    await log.append(task_id, line("live"), end())
    live = [event async for event in stream]

    assert [e.seq for e in backlog + live] == [3, 4, 5, 6, 7]


async def test_a_quiet_task_sends_heartbeats_with_the_latest_seq(store: SqliteStore) -> None:
    hub = EventHub()
    task_id = await new_task(store)
    await EventLog(store, hub).append(task_id, line("a"), line("b"))

    stream = watch_events(store, hub, task_id, 0, heartbeat_interval=0.05)
    events = await take(stream, 4)

    assert [e.WhichOneof("kind") for e in events] == [
        "log_line",
        "log_line",
        "heartbeat",
        "heartbeat",
    ]
    assert [e.seq for e in events[2:]] == [2, 2]
    await stream.aclose()


async def test_a_slow_watcher_catches_up_from_the_store(store: SqliteStore) -> None:
    hub = EventHub(capacity=8)
    log = EventLog(store, hub)
    task_id = await new_task(store)
    await log.append(task_id, line("first"))
    slow = watch_events(store, hub, task_id, 0, heartbeat_interval=5)
    fast = watch_events(store, hub, task_id, 0, heartbeat_interval=5)
    assert [e.seq for e in await take(slow, 1)] == [1]
    assert [e.seq for e in await take(fast, 1)] == [1]

    # The slow watcher reads nothing while 500 events are appended: its buffer overflows,
    # the appends never wait for it, and the fast watcher keeps up.
    fast_seen = []
    for i in range(500):
        await log.append(task_id, line(str(i)))
        fast_seen.append((await anext(fast)).seq)
    await log.append(task_id, end())
    rest = [event.seq async for event in slow]

    assert fast_seen == list(range(2, 502))
    assert rest == list(range(2, 503))


async def test_watching_during_appends_never_skips_or_repeats(store: SqliteStore) -> None:
    hub = EventHub(capacity=4)
    log = EventLog(store, hub)
    task_id = await new_task(store)

    async def produce() -> None:
        for i in range(300):
            await log.append(task_id, line(str(i)))
            if i % 7 == 0:
                await asyncio.sleep(0)
        await log.append(task_id, end())

    async def watch(after: int) -> list[int]:
        return [
            e.seq
            async for e in watch_events(store, hub, task_id, after, 5)
            if e.HasField("log_line") or e.HasField("task_state_changed")
        ]

    producer = asyncio.create_task(produce())
    results = await asyncio.gather(watch(0), watch(0))
    await producer
    assert results[0] == results[1] == list(range(1, 302))


async def test_bad_positions_and_unknown_tasks_are_refused(store: SqliteStore) -> None:
    hub = EventHub()
    task_id = await new_task(store)
    await EventLog(store, hub).append(task_id, line("a"))

    with pytest.raises(InvalidArgument):
        await anext(watch_events(store, hub, task_id, -1, 5))
    with pytest.raises(OutOfRange):
        await anext(watch_events(store, hub, task_id, 2, 5))
    with pytest.raises(NotFound):
        await anext(watch_events(store, hub, "00000000000000ff", 0, 5))
    assert hub.watcher_count(task_id) == 0


async def test_a_watch_of_a_task_deleted_under_it_ends_not_found(store: SqliteStore) -> None:
    """Retention may delete an ended task while someone replays it: the watch says so
    instead of idling on heartbeats forever (what it had read before is still gapless)."""
    hub = EventHub()
    task_id = await new_task(store)
    await store.append(task_id, [line(f"line {n}") for n in range(1500)])
    await store.append(task_id, [end()])
    watch = watch_events(store, hub, task_id, 0, heartbeat_interval=0.05)
    seen = [await anext(watch) for _ in range(10)]

    assert await store.delete_ended([task_id], time.time_ns() + 10**12) == [task_id]

    with pytest.raises(NotFound, match="was deleted while it was being watched"):
        await read_into(seen, watch)
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert not any(e.HasField("heartbeat") for e in seen)


async def read_into(events: list[Event], stream: AsyncIterator[Event]) -> None:
    """Append what the stream yields to `events` until it ends or fails."""
    async for event in stream:
        events.append(event)


# --- batches, the first message, the bounded form -------------------------------------------


async def test_a_backlog_comes_many_events_to_a_message(store: SqliteStore) -> None:
    hub = EventHub()
    task_id = await new_task(store)
    await store.append(task_id, [line(str(n)) for n in range(2499)])
    await store.append(task_id, [end()])

    batches = [batch async for batch in watch_batches(store, hub, task_id, 0, 5)]

    assert [len(batch) for batch in batches] == [MAX_MESSAGE_EVENTS, MAX_MESSAGE_EVENTS, 500]
    assert [e.seq for batch in batches for e in batch] == list(range(1, 2501))


def test_a_message_is_cut_by_size_as_well_as_by_count() -> None:
    big = [EncodedEvent.of(line("x" * 300_000)) for _ in range(7)]

    batches = split(big)

    assert [len(batch) for batch in batches] == [3, 3, 1]
    assert all(sum(len(e.data) for e in batch) <= MAX_MESSAGE_BYTES for batch in batches)


async def test_a_live_watch_sends_its_first_message_at_once(store: SqliteStore) -> None:
    """So a client can tell a path that streams from one that holds responses back."""
    hub = EventHub()
    task_id = await new_task(store)
    await EventLog(store, hub).append(task_id, line("a"), line("b"))

    watch = watch_batches(store, hub, task_id, 2, heartbeat_interval=3600)
    first = await asyncio.wait_for(anext(watch), 10)  # not after the hour-long interval

    assert [e.event().WhichOneof("kind") for e in first] == ["heartbeat"]
    assert first[0].seq == 2
    await watch.aclose()


async def test_events_appended_together_reach_a_live_watcher_in_one_message(
    store: SqliteStore,
) -> None:
    hub = EventHub()
    log = EventLog(store, hub)
    task_id = await new_task(store)
    watch = watch_batches(store, hub, task_id, 0, heartbeat_interval=5)
    assert (await anext(watch))[0].heartbeat

    await log.append(task_id, line("a"), line("b"), line("c"))

    assert [e.seq for e in await anext(watch)] == [1, 2, 3]
    await watch.aclose()


async def test_a_burst_of_single_appends_reaches_a_live_watcher_many_to_a_message(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each append alone, awaited, as fast as they come: once the events' average spacing
    says burst, the watcher lingers and sends what followed in one message (the spacing
    that makes a burst is widened here, so a loaded machine cannot make them look steady)."""
    monkeypatch.setattr(watch_module, "BURST_SPACING", 60.0)
    hub = EventHub()
    log = EventLog(store, hub)
    task_id = await new_task(store)
    watch = watch_batches(store, hub, task_id, 0, heartbeat_interval=5)
    assert (await anext(watch))[0].heartbeat
    messages: list[list[int]] = []

    async def read() -> None:
        async for batch in watch:
            messages.append([e.seq for e in batch])

    reading = asyncio.create_task(read())
    for n in range(300):
        await log.append(task_id, line(str(n)))
    await log.append(task_id, end())
    await asyncio.wait_for(reading, 10)

    assert [seq for message in messages for seq in message] == list(range(1, 302))
    assert messages[0] == [1]  # the first event of a burst goes out at once
    assert len(messages) < 301 / 3


async def test_a_bounded_watch_ends_max_wait_after_its_first_event(store: SqliteStore) -> None:
    hub = EventHub()
    log = EventLog(store, hub)
    task_id = await new_task(store)
    watch = watch_batches(store, hub, task_id, 0, heartbeat_interval=3600, max_wait=0.2)
    waiting = asyncio.create_task(anext(watch))
    await asyncio.sleep(0)  # the watch subscribes and finds nothing to send yet
    assert not waiting.done()

    await log.append(task_id, line("a"))
    first = await asyncio.wait_for(waiting, 10)
    await log.append(task_id, line("b"))
    rest = [batch async for batch in watch]  # ends with no terminal event: time is up

    assert [e.seq for e in first] == [1]
    assert [e.seq for batch in rest for e in batch] == [2]


async def test_a_bounded_watch_of_a_quiet_task_ends_on_one_heartbeat(store: SqliteStore) -> None:
    hub = EventHub()
    task_id = await new_task(store)
    await EventLog(store, hub).append(task_id, line("a"))

    batches = [
        batch
        async for batch in watch_batches(
            store, hub, task_id, 1, heartbeat_interval=0.05, max_wait=10
        )
    ]

    assert [[e.event().WhichOneof("kind") for e in batch] for batch in batches] == [["heartbeat"]]


async def test_bounded_watches_one_after_another_see_each_event_once(store: SqliteStore) -> None:
    hub = EventHub()
    log = EventLog(store, hub)
    task_id = await new_task(store)

    async def produce() -> None:
        for n in range(200):
            await log.append(task_id, line(str(n)))
            if n % 10 == 0:
                await asyncio.sleep(0.01)
        await log.append(task_id, end())

    producer = asyncio.create_task(produce())
    seen: list[int] = []
    calls = 0
    while not seen or seen[-1] != 201:
        calls += 1
        watch = watch_batches(
            store, hub, task_id, seen[-1] if seen else 0, heartbeat_interval=5, max_wait=0.05
        )
        seen += [e.seq async for e in flat(watch) if not e.HasField("heartbeat")]
    await producer

    assert seen == list(range(1, 202))
    assert calls > 1


@pytest.mark.parametrize("max_wait", [0.01, 31.0, -1.0])
async def test_a_bounded_wait_out_of_range_is_refused(store: SqliteStore, max_wait: float) -> None:
    hub = EventHub()
    task_id = await new_task(store)

    with pytest.raises(InvalidArgument, match=r"max_wait must be from 0\.05 s to 30 s"):
        await anext(watch_batches(store, hub, task_id, 0, 5, max_wait=max_wait))


def test_a_response_made_of_events_encoded_once_is_what_protobuf_would_send() -> None:
    events = [line("a"), line("é" * 300), end()]
    for seq, event in enumerate(events, 1):
        event.seq = seq
    encoded = [EncodedEvent.of(event) for event in events]

    message = watch_response(encoded)

    assert message == task_service_pb2.WatchTaskResponse(events=events).SerializeToString()
    assert list(task_service_pb2.WatchTaskResponse.FromString(message).events) == events
    assert [e.terminal for e in encoded] == [False, False, True]
