"""One suite for the `Store` interface, run against SQLite and Redis alike.

Redis tests start their own `redis-server` on a free port (tests/support/redis_server.py); the
shared server gives each test its own key prefix, and tests that stop Redis get a server
of their own.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import struct_pb2
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from mitosis.executor.events.hub import EventHub
from mitosis.executor.events.log import EventLog
from mitosis.executor.running.runner import DELETE_ANY_END
from mitosis.executor.store import sqlite as sqlite_store
from mitosis.executor.store.base import (
    Expect,
    LeaseLost,
    Refused,
    Store,
    StoreUnavailable,
    TaskEnded,
)
from mitosis.executor.store.opening import open_store
from mitosis.executor.store.redis import LogCorrupted, RedisStore, TaskExists
from mitosis.executor.store.sqlite import PURGE_CHUNK, SqliteStore
from mitosis.projection import apply_event
from mitosis.v1 import task_pb2
from tests.support.redis_server import RedisServer, running_redis
from tests.support.waiting import eventually

Event = task_pb2.TaskEvent
Task = task_pb2.Task
Step = task_pb2.Step


@dataclass
class Backend:
    """A fresh, empty store, and a way to open more stores on the same data."""

    name: str
    store: Store
    open_another: Callable[[], Awaitable[Store]]
    opened: list[Store] = field(default_factory=list)


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "store.sqlite3"

        async def open_sqlite() -> Store:
            return SqliteStore(path)

        opener = open_sqlite
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        prefix = f"test-{uuid.uuid4().hex}:"

        async def open_redis() -> Store:
            return RedisStore.from_url(server.url, prefix=prefix)

        opener = open_redis
    result = Backend(request.param, await opener(), opener)

    async def open_another() -> Store:
        store = await opener()
        result.opened.append(store)
        return store

    result.open_another = open_another
    yield result
    for store in [result.store, *result.opened]:
        await store.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.store


async def new_task(
    store: Store, task_id: str | None = None, create_ns: int | None = None, owner: str = ""
) -> Task:
    task = Task(
        task_id=task_id or uuid.uuid4().hex[:16], text="t", state=Task.STATE_PENDING, owner=owner
    )
    task.create_time.FromNanoseconds(time.time_ns() if create_ns is None else create_ns)
    await store.create_task(task)
    return task


def line(text: str) -> Event:
    return Event(log_line=task_pb2.LogLine(step_index=0, text=text))


def task_state(state: Task.State.ValueType, message: str = "") -> Event:
    return Event(task_state_changed=task_pb2.TaskStateChanged(state=state, message=message))


def step_state(
    index: int, state: Step.State.ValueType, attempt: int = 1, message: str = ""
) -> Event:
    return Event(
        step_state_changed=task_pb2.StepStateChanged(
            step_index=index, state=state, attempt=attempt, message=message
        )
    )


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


# --- tasks ---------------------------------------------------------------------------------


async def test_a_created_task_reads_back_and_a_missing_one_is_none(store: Store) -> None:
    task = await new_task(store, "00000000000000aa")

    assert await store.get_task("00000000000000aa") == task
    assert await store.get_task("00000000000000ff") is None


async def test_creating_a_task_twice_is_refused_and_keeps_the_first(store: Store) -> None:
    first = await new_task(store, "00000000000000aa")
    second = Task(task_id="00000000000000aa", text="other")

    with pytest.raises((TaskExists, sqlite3.IntegrityError)):
        await store.create_task(second)
    assert await store.get_task("00000000000000aa") == first
    assert len((await store.list_tasks(10, None)).tasks) == 1


# --- append --------------------------------------------------------------------------------


async def test_appends_get_gapless_seqs_and_the_append_time(store: Store) -> None:
    task = await new_task(store)
    before = time.time_ns()
    first = await store.append(task.task_id, [line("a"), line("b")])
    second = await store.append(task.task_id, [line("c")])
    after = time.time_ns()

    assert seqs(first + second) == [1, 2, 3]
    assert all(e.task_id == task.task_id for e in first + second)
    assert all(before <= e.create_time.ToNanoseconds() <= after for e in first + second)
    assert [e.log_line.text for e in first + second] == ["a", "b", "c"]
    assert await store.read_events(task.task_id, 0, 100) == first + second
    record = await store.get_task(task.task_id)
    assert record is not None
    assert record.last_seq == 3
    assert record.update_time == second[-1].create_time


async def test_appending_nothing_changes_nothing(store: Store) -> None:
    task = await new_task(store)

    assert await store.append(task.task_id, []) == []
    assert await store.get_task(task.task_id) == task
    with pytest.raises(KeyError):
        await store.append("00000000000000ff", [])


async def test_the_record_is_the_fold_of_its_events(store: Store) -> None:
    task = await new_task(store)
    arguments = struct_pb2.Struct()
    arguments.update({"title": "Notes", "pages": 2})
    plan = task_pb2.PlanReady(
        model="offline",
        summary="two steps",
        steps=[
            Step(index=0, title="write", tool="write_document", arguments=arguments),
            Step(index=1, title="check", tool="python"),
        ],
    )
    artifact_v1 = task_pb2.Artifact(path="notes.md", size_bytes=5, sha256="a" * 64)
    artifact_v2 = task_pb2.Artifact(path="notes.md", size_bytes=11, sha256="b" * 64)
    usage = task_pb2.Usage(model_calls=1, input_tokens=10, output_tokens=20)
    finished_step = step_state(0, Step.STATE_SUCCEEDED)
    finished_step.step_state_changed.usage.CopyFrom(usage)
    await store.append(task.task_id, [task_state(Task.STATE_PLANNING), Event(plan_ready=plan)])
    await store.append(
        task.task_id, [task_state(Task.STATE_RUNNING), step_state(0, Step.STATE_RUNNING)]
    )
    await store.append(
        task.task_id,
        [
            Event(
                page_started=task_pb2.PageStarted(
                    page_number=1, title="Notes", file_name="notes.md"
                )
            ),
            Event(page_delta=task_pb2.PageDelta(page_number=1, offset=0, text="héllo")),
            Event(page_delta=task_pb2.PageDelta(page_number=1, offset=6, text=" world")),
            Event(
                page_finished=task_pb2.PageFinished(page_number=1, size_bytes=12, sha256="c" * 64)
            ),
            Event(
                page_started=task_pb2.PageStarted(page_number=2, title="Draft", file_name="d.md")
            ),
            Event(page_finished=task_pb2.PageFinished(page_number=2, abandoned=True)),
        ],
    )
    await store.append(
        task.task_id,
        [
            Event(artifact_ready=task_pb2.ArtifactReady(artifact=artifact_v1)),
            Event(artifact_ready=task_pb2.ArtifactReady(artifact=artifact_v2)),
            finished_step,
            step_state(1, Step.STATE_RUNNING),
            line("Traceback"),
            step_state(1, Step.STATE_FAILED, attempt=2, message="exit status 1"),
        ],
    )
    await store.append(task.task_id, [task_state(Task.STATE_FAILED, "step 2 failed")])

    record = await store.get_task(task.task_id)
    assert record is not None
    assert record.state == Task.STATE_FAILED
    assert record.error == "step 2 failed"
    assert record.model == "offline"
    assert record.plan_summary == "two steps"
    assert [(s.state, s.attempts, s.error) for s in record.steps] == [
        (Step.STATE_SUCCEEDED, 1, ""),
        (Step.STATE_FAILED, 2, "exit status 1"),
    ]
    assert record.steps[0].arguments == arguments
    assert record.steps[0].usage == usage
    assert [(p.title, p.size_bytes, p.finished, p.abandoned) for p in record.pages] == [
        ("Notes", 12, True, False),
        ("Draft", 0, False, True),
    ]
    assert list(record.artifacts) == [artifact_v2]
    # And it is exactly the fold of the stored log over the created record.
    folded = Task()
    folded.CopyFrom(task)
    for event in await store.read_events(task.task_id, 0, 1000):
        apply_event(folded, event)
    assert record == folded
    assert record.last_seq == 17


async def test_append_to_a_missing_task_raises_and_writes_nothing(store: Store) -> None:
    with pytest.raises(KeyError):
        await store.append("00000000000000ff", [line("a"), task_state(Task.STATE_SUCCEEDED)])

    assert await store.read_events("00000000000000ff", 0, 10) == []
    assert await store.get_task("00000000000000ff") is None
    assert (await store.list_tasks(10, None)).tasks == []
    assert await store.unfinished_task_ids() == []


# --- read_events ---------------------------------------------------------------------------


async def test_read_events_from_any_seq_with_any_limit(store: Store) -> None:
    task = await new_task(store)
    await store.append(task.task_id, [line(str(i)) for i in range(10)])

    for after in range(12):
        for limit in (1, 3, 10, 1000):
            got = await store.read_events(task.task_id, after, limit)
            assert seqs(got) == list(range(after + 1, min(after + limit, 10) + 1)), (after, limit)
    assert await store.read_events(task.task_id, 4, 0) == []
    assert await store.read_events("00000000000000ff", 0, 10) == []


async def test_each_task_has_its_own_log(store: Store) -> None:
    one, two = await new_task(store), await new_task(store)
    await store.append(one.task_id, [line("1a"), line("1b")])
    await store.append(two.task_id, [line("2a")])

    assert [e.log_line.text for e in await store.read_events(one.task_id, 0, 10)] == ["1a", "1b"]
    assert [e.log_line.text for e in await store.read_events(two.task_id, 0, 10)] == ["2a"]


# --- listings ------------------------------------------------------------------------------


async def test_list_tasks_pages_newest_first_through_equal_times(store: Store) -> None:
    base = 1_700_000_000_000_000_000
    created = [await new_task(store, f"{i:016x}", base + i * 1000) for i in range(6)]
    # Four tasks created in the same nanosecond: the task id breaks the tie.
    created += [await new_task(store, f"{i:016x}", base + 3500) for i in (0xC, 0xA, 0xD, 0xB)]
    expected = [
        t.task_id
        for t in sorted(
            created, key=lambda t: (t.create_time.ToNanoseconds(), t.task_id), reverse=True
        )
    ]

    for size in (1, 3, 4, 10, 11):
        listed: list[str] = []
        cursor: tuple[int, str] | None = None
        for _ in range(20):
            page = await store.list_tasks(size, cursor)
            assert len(page.tasks) <= size
            listed += [t.task_id for t in page.tasks]
            cursor = page.next_cursor
            if cursor is None:
                break
            assert cursor == (page.tasks[-1].create_time.ToNanoseconds(), page.tasks[-1].task_id)
        assert listed == expected, size
    assert (await store.list_tasks(10, None)).tasks[0] == created[5]


async def test_a_cursor_between_equal_times_continues_after_it(store: Store) -> None:
    ns = 1_700_000_000_000_000_000
    for task_id in ("00000000000000a1", "00000000000000a2", "00000000000000a3"):
        await new_task(store, task_id, ns)

    page = await store.list_tasks(5, (ns, "00000000000000a2"))
    assert [t.task_id for t in page.tasks] == ["00000000000000a1"]
    assert page.next_cursor is None
    assert (await store.list_tasks(5, (ns - 1, "ffffffffffffffff"))).tasks == []


async def test_unfinished_tasks_oldest_first_shrink_as_tasks_end(store: Store) -> None:
    ns = 1_700_000_000_000_000_000
    ids = ["00000000000000c3", "00000000000000c1", "00000000000000c2", "00000000000000c4"]
    for i, task_id in enumerate(ids):
        await new_task(store, task_id, ns + (0 if i < 3 else 1))
    assert await store.unfinished_task_ids() == sorted(ids)

    await store.append("00000000000000c2", [task_state(Task.STATE_RUNNING)])
    assert await store.unfinished_task_ids() == sorted(ids)
    await store.append("00000000000000c2", [line("x"), task_state(Task.STATE_SUCCEEDED)])
    await store.append("00000000000000c4", [task_state(Task.STATE_CANCELLED, "by user")])
    assert await store.unfinished_task_ids() == ["00000000000000c1", "00000000000000c3"]
    await store.append("00000000000000c1", [task_state(Task.STATE_FAILED, "boom")])
    assert await store.unfinished_task_ids() == ["00000000000000c3"]


async def test_list_tasks_of_one_owner_pages_newest_first(store: Store) -> None:
    base = 1_700_000_000_000_000_000
    owners = ["alice", "bob", "alice", "", "alice", "bob", "alice", "alice:x"]
    created = [
        await new_task(store, f"{i:016x}", base + (i // 2) * 1000, owner)
        for i, owner in enumerate(owners)
    ]

    for owner in ("alice", "bob", "", "alice:x", "carol"):
        expected = [t.task_id for t in reversed(created) if t.owner == owner]
        for size in (1, 2, 3, 10):
            listed: list[str] = []
            cursor: tuple[int, str] | None = None
            for _ in range(20):
                page = await store.list_tasks(size, cursor, owner=owner)
                assert all(t.owner == owner for t in page.tasks)
                listed += [t.task_id for t in page.tasks]
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert listed == expected, (owner, size)
    # Without an owner, every task.
    assert len((await store.list_tasks(20, None)).tasks) == len(owners)
    assert len((await store.list_tasks(20, None, owner=None)).tasks) == len(owners)


async def test_count_unfinished_follows_each_owners_tasks_as_they_end(store: Store) -> None:
    alice = [await new_task(store, owner="alice") for _ in range(3)]
    bob = await new_task(store, owner="bob")
    assert [await store.count_unfinished(o) for o in ("alice", "bob", "", "carol")] == [3, 1, 0, 0]

    await store.append(alice[0].task_id, [task_state(Task.STATE_RUNNING)])
    assert await store.count_unfinished("alice") == 3
    await store.append(alice[0].task_id, [line("x"), task_state(Task.STATE_SUCCEEDED)])
    await store.append(alice[1].task_id, [task_state(Task.STATE_CANCELLED, "by user")])
    assert await store.count_unfinished("alice") == 1
    with pytest.raises(TaskEnded):
        await store.append(alice[0].task_id, [line("after the end")])
    assert await store.count_unfinished("alice") == 1
    await store.append(bob.task_id, [task_state(Task.STATE_FAILED, "boom")])
    assert [await store.count_unfinished(o) for o in ("alice", "bob")] == [1, 0]
    await new_task(store, owner="bob")
    assert await store.count_unfinished("bob") == 1


# --- retention -----------------------------------------------------------------------------


async def _end(store: Store, task: Task, state: Task.State.ValueType = Task.STATE_SUCCEEDED) -> int:
    """End the task with a line and a terminal event; return a time after its end."""
    await store.append(task.task_id, [line("work"), task_state(state, "done")])
    return time.time_ns() + 1


async def test_ended_before_lists_ended_tasks_the_earliest_first(store: Store) -> None:
    first, running, second, third = [await new_task(store) for _ in range(4)]
    await store.append(running.task_id, [task_state(Task.STATE_RUNNING)])
    start = time.time_ns()
    after_first = await _end(store, first, Task.STATE_FAILED)
    after_second = await _end(store, second, Task.STATE_CANCELLED)
    after_third = await _end(store, third)

    assert await store.ended_before(start, 10) == []
    assert await store.ended_before(after_first, 10) == [first.task_id]
    assert await store.ended_before(after_second, 10) == [first.task_id, second.task_id]
    all_ended = [first.task_id, second.task_id, third.task_id]
    assert await store.ended_before(after_third, 10) == all_ended
    assert await store.ended_before(after_third, 2) == all_ended[:2]


async def test_delete_ended_deletes_the_record_the_events_and_the_listings(
    store: Store,
) -> None:
    old = await new_task(store, owner="alice")
    kept = await new_task(store, owner="alice")
    unfinished = await new_task(store, owner="alice")
    await store.append(unfinished.task_id, [task_state(Task.STATE_RUNNING)])
    cutoff = await _end(store, old)
    await _end(store, kept)

    deleted = await store.delete_ended(
        [old.task_id, kept.task_id, unfinished.task_id, "00000000000000ff"], cutoff
    )

    assert deleted == [old.task_id]
    assert await store.get_task(old.task_id) is None
    assert await store.read_events(old.task_id, 0, 10) == []
    for owner in (None, "alice"):
        listed = [t.task_id for t in (await store.list_tasks(10, None, owner=owner)).tasks]
        assert listed == [unfinished.task_id, kept.task_id]
    assert await store.ended_before(time.time_ns(), 10) == [kept.task_id]
    assert await store.count_unfinished("alice") == 1
    assert await store.unfinished_task_ids() == [unfinished.task_id]
    assert seqs(await store.read_events(kept.task_id, 0, 10)) == [1, 2]
    # Deleting again deletes nothing; the task ended after this cutoff stays.
    assert await store.delete_ended([old.task_id, kept.task_id], cutoff) == []
    assert await store.get_task(kept.task_id) is not None


async def test_delete_by_request_takes_a_task_that_ended_just_now(store: Store) -> None:
    # DeleteTask ends a task and deletes it at once, with a cutoff later than any end time.
    task = await new_task(store, owner="alice")
    running = await new_task(store, owner="alice")
    await store.append(running.task_id, [task_state(Task.STATE_RUNNING)])
    await store.append(task.task_id, [task_state(Task.STATE_CANCELLED, "deleted by request")])

    assert await store.delete_ended([task.task_id, running.task_id], DELETE_ANY_END) == [
        task.task_id
    ]
    assert await store.get_task(task.task_id) is None
    assert await store.read_events(task.task_id, 0, 10) == []
    listed = (await store.list_tasks(10, None, owner="alice")).tasks
    assert [t.task_id for t in listed] == [running.task_id]
    assert await store.get_task(running.task_id) is not None


async def test_a_deleted_task_is_gone_for_another_store_on_the_same_data(
    backend: Backend,
) -> None:
    other = await backend.open_another()
    task = await new_task(backend.store, owner="bob")
    cutoff = await _end(backend.store, task)

    assert await other.ended_before(cutoff, 10) == [task.task_id]
    assert await other.delete_ended([task.task_id], cutoff) == [task.task_id]
    assert await backend.store.delete_ended([task.task_id], cutoff) == []  # already done
    assert await backend.store.get_task(task.task_id) is None
    assert (await backend.store.list_tasks(10, None, owner="bob")).tasks == []


async def test_a_task_that_has_ended_takes_no_more_events(store: Store) -> None:
    task = await new_task(store, owner="alice")
    cutoff = await _end(store, task)
    ended = await store.get_task(task.task_id)
    assert ended is not None

    for events in ([task_state(Task.STATE_RUNNING, "reopened")], [line("late")], []):
        with pytest.raises(TaskEnded):
            await store.append(task.task_id, events)

    assert await store.get_task(task.task_id) == ended
    assert seqs(await store.read_events(task.task_id, 0, 100)) == list(range(1, ended.last_seq + 1))
    assert await store.count_unfinished("alice") == 0
    assert await store.ended_before(cutoff + 1, 10) == [task.task_id]


async def test_an_append_that_expects_a_state_lands_only_in_that_state(store: Store) -> None:
    task = await new_task(store)
    awaiting = Expect(states=frozenset({Task.STATE_AWAITING_APPROVAL}))
    with pytest.raises(Refused) as refused:
        await store.append(task.task_id, [line("approved")], expect=awaiting)
    assert refused.value.task.state == Task.STATE_PENDING
    assert await store.read_events(task.task_id, 0, 10) == []

    await store.append(task.task_id, [task_state(Task.STATE_AWAITING_APPROVAL)])
    stored = await store.append(task.task_id, [task_state(Task.STATE_RUNNING)], expect=awaiting)
    assert seqs(stored) == [2]


async def test_a_change_is_made_from_the_record_it_is_appended_to(store: Store) -> None:
    task = await new_task(store)
    await store.append(task.task_id, [line("a"), line("b")])
    seen: list[int] = []

    def numbered(record: Task) -> list[Event]:
        seen.append(record.last_seq)
        return [line(f"after {record.last_seq}")]

    stored = await store.append(task.task_id, numbered)

    assert seen[-1] == 2
    assert [e.log_line.text for e in stored] == ["after 2"]
    assert seqs(stored) == [3]


async def _append_concurrently(stores: list[Store], task_id: str, writers: int, rounds: int) -> int:
    """Append from `writers` coroutines per store; check each batch and return the total."""

    async def writer(store: Store, name: str) -> list[list[int]]:
        batches = []
        for i in range(rounds):
            events = [line(f"{name}.{i}.{j}") for j in range(1 + i % 3)]
            batches.append(seqs(await store.append(task_id, events)))
            if i % 2:
                await asyncio.sleep(0)
        return batches

    results = await asyncio.gather(
        *(writer(store, f"{s}.{w}") for s, store in enumerate(stores) for w in range(writers))
    )
    batches = [batch for result in results for batch in result]
    total = sum(len(batch) for batch in batches)
    for batch in batches:  # each append's events are contiguous
        assert batch == list(range(batch[0], batch[0] + len(batch)))
    assert sorted(seq for batch in batches for seq in batch) == list(range(1, total + 1))
    return total


async def test_concurrent_appends_get_seqs_without_gap_or_duplicate(store: Store) -> None:
    task = await new_task(store)
    total = await _append_concurrently([store], task.task_id, writers=20, rounds=10)

    stored = await store.read_events(task.task_id, 0, 10_000)
    assert seqs(stored) == list(range(1, total + 1))
    assert len({e.log_line.text for e in stored}) == total  # every append stored once
    record = await store.get_task(task.task_id)
    assert record is not None
    assert record.last_seq == total


async def test_a_lease_has_one_holder_until_it_expires(store: Store) -> None:
    task = await new_task(store)

    assert await store.acquire_lease(task.task_id, "executor-a", ttl=0.3)
    assert await store.acquire_lease(task.task_id, "executor-a", ttl=0.3)  # ours already
    assert not await store.acquire_lease(task.task_id, "executor-b", ttl=0.3)
    assert not await store.renew_lease(task.task_id, "executor-b", ttl=0.3)
    assert await store.renew_lease(task.task_id, "executor-a", ttl=0.3)
    assert seqs(await store.append(task.task_id, [line("a")], owner="executor-a")) == [1]
    with pytest.raises(LeaseLost):
        await store.append(task.task_id, [line("b")], owner="executor-b")

    await asyncio.sleep(0.5)  # the holder stopped renewing: it is as good as dead
    assert not await store.renew_lease(task.task_id, "executor-a", ttl=0.3)
    assert await store.acquire_lease(task.task_id, "executor-b", ttl=5)
    with pytest.raises(LeaseLost):
        await store.append(task.task_id, [line("late")], owner="executor-a")
    await store.release_lease(task.task_id, "executor-a")  # not its lease: no effect
    assert not await store.acquire_lease(task.task_id, "executor-c", ttl=5)
    await store.release_lease(task.task_id, "executor-b")
    assert await store.acquire_lease(task.task_id, "executor-c", ttl=5)
    assert seqs(await store.read_events(task.task_id, 0, 10)) == [1]


async def test_two_stores_on_the_same_data_never_write_the_same_seq(backend: Backend) -> None:
    """Two stores are two executors: separate connections, one data set."""
    other = await backend.open_another()
    task = await new_task(backend.store)
    total = await _append_concurrently([backend.store, other], task.task_id, writers=8, rounds=12)

    for store in (backend.store, other):
        stored = await store.read_events(task.task_id, 0, 10_000)
        assert seqs(stored) == list(range(1, total + 1))
        assert len({e.log_line.text for e in stored}) == total
    if isinstance(backend.store, RedisStore) and isinstance(other, RedisStore):
        # The two really raced: WATCH caught conflicts, and they were started over.
        assert backend.store.conflicts + other.conflicts > 0


# --- SQLite only ---------------------------------------------------------------------------

_SCHEMA_BEFORE_OWNERS = """
CREATE TABLE tasks (
    task_id   TEXT PRIMARY KEY,
    create_ns INTEGER NOT NULL,
    terminal  INTEGER NOT NULL DEFAULT 0,
    record    BLOB NOT NULL
);
CREATE INDEX tasks_newest_first ON tasks (create_ns DESC, task_id DESC);
CREATE TABLE events (
    task_id TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    event   BLOB NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
"""


async def test_a_database_from_before_owners_and_retention_is_brought_up_to_date(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    ended = Task(task_id="00000000000000e1", state=Task.STATE_SUCCEEDED, last_seq=0)
    ended.create_time.FromNanoseconds(1_700_000_000_000_000_000)
    ended.update_time.FromNanoseconds(1_700_000_100_000_000_000)
    running = Task(task_id="00000000000000e2", state=Task.STATE_RUNNING)
    running.create_time.FromNanoseconds(1_700_000_200_000_000_000)
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMA_BEFORE_OWNERS)
        db.executemany(
            "INSERT INTO tasks (task_id, create_ns, terminal, record) VALUES (?, ?, ?, ?)",
            [
                (t.task_id, t.create_time.ToNanoseconds(), int(t is ended), t.SerializeToString())
                for t in (ended, running)
            ],
        )
    db.close()

    store = SqliteStore(path)
    try:
        listed = await store.list_tasks(10, None, owner="")
        assert [t.task_id for t in listed.tasks] == [running.task_id, ended.task_id]
        assert await store.count_unfinished("") == 1
        assert await store.ended_before(1_700_000_100_000_000_000, 10) == []
        assert await store.ended_before(1_700_000_100_000_000_001, 10) == [ended.task_id]
        await store.append(running.task_id, [task_state(Task.STATE_SUCCEEDED)])
        assert await store.count_unfinished("") == 0
    finally:
        await store.close()
    reopened = SqliteStore(path)  # a second open finds nothing to do
    try:
        assert await reopened.count_unfinished("") == 0
    finally:
        await reopened.close()


async def test_deleting_a_long_task_deletes_its_events_a_chunk_at_a_time(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3")
    try:
        long, short = await new_task(store), await new_task(store)
        total = PURGE_CHUNK * 2 + 7
        for first in range(0, total, 1000):
            await store.append(
                long.task_id, [line(str(i)) for i in range(first, min(first + 1000, total))]
            )
        await store.append(long.task_id, [task_state(Task.STATE_SUCCEEDED)])
        cutoff = await _end(store, short)

        assert await store.delete_ended([long.task_id, short.task_id], cutoff) == [
            long.task_id,
            short.task_id,
        ]
        assert await store.read_events(long.task_id, 0, 10) == []
        assert await store.read_events(short.task_id, 0, 10) == []
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "store.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM events").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM purged").fetchone() == (0,)
    db.close()


async def test_events_left_by_a_deletion_cut_short_are_deleted_next_time(tmp_path: Path) -> None:
    """A crash after the records went but before all their events did."""
    path = tmp_path / "store.sqlite3"
    store = SqliteStore(path)
    try:
        task, other = await new_task(store), await new_task(store)
        await store.append(task.task_id, [line("a"), task_state(Task.STATE_SUCCEEDED)])
        cutoff = await _end(store, other)
        with sqlite3.connect(path) as db:  # what delete_ended commits first, alone
            db.execute("DELETE FROM tasks WHERE task_id = ?", (task.task_id,))
            db.execute("INSERT INTO purged (task_id) VALUES (?)", (task.task_id,))
        db.close()
        assert len(await store.read_events(task.task_id, 0, 10)) == 2

        assert await store.delete_ended([other.task_id], cutoff) == [other.task_id]
        assert await store.read_events(task.task_id, 0, 10) == []
    finally:
        await store.close()


# --- Redis only ----------------------------------------------------------------------------


@pytest.fixture
async def raw_redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    store = RedisStore.from_url(redis_server.url, prefix=f"test-{uuid.uuid4().hex}:")
    yield store
    await store.close()


async def test_the_stream_itself_refuses_a_duplicate_or_older_seq(
    redis_store: RedisStore, raw_redis: Redis
) -> None:
    task = await new_task(redis_store)
    await redis_store.append(task.task_id, [line("a"), line("b"), line("c")])
    key = redis_store.events_key(task.task_id)
    assert [entry_id for entry_id, _ in await raw_redis.xrange(key) or []] == [
        b"1-0",
        b"2-0",
        b"3-0",
    ]

    for seq in (3, 2):
        with pytest.raises(ResponseError, match="equal or smaller"):
            await raw_redis.xadd(key, {b"e": b"forged"}, id=f"{seq}-0")
    assert seqs(await redis_store.read_events(task.task_id, 0, 10)) == [1, 2, 3]


async def test_an_entry_written_behind_the_stores_back_stops_appends(
    redis_store: RedisStore, raw_redis: Redis
) -> None:
    task = await new_task(redis_store)
    await redis_store.append(task.task_id, [line("a")])
    await raw_redis.xadd(redis_store.events_key(task.task_id), {b"e": b""}, id="2-0")

    with pytest.raises(LogCorrupted, match="record ends at seq 1 but its stream"):
        await redis_store.append(task.task_id, [line("b")])
    record = await redis_store.get_task(task.task_id)
    assert record is not None
    assert record.last_seq == 1


class LostReplyStore(RedisStore):
    """The first append script runs but its reply is lost, as when the connection drops
    right then, and redis-py's retry sends the same call again."""

    lost = 0

    async def _run_append(self, keys: list[str], args: list[bytes | str | int]) -> list[Any]:
        reply = await super()._run_append(keys, args)
        if not self.lost:
            self.lost += 1
            return await super()._run_append(keys, args)
        return reply


async def test_an_append_whose_reply_was_lost_is_not_stored_twice(
    redis_server: RedisServer,
) -> None:
    store = LostReplyStore.from_url(redis_server.url, prefix=f"test-{uuid.uuid4().hex}:")
    try:
        task = await new_task(store)
        stored = await store.append(task.task_id, [line("a"), line("b")])
        assert store.lost == 1
        assert seqs(stored) == [1, 2]
        assert await store.read_events(task.task_id, 0, 10) == stored
        assert seqs(await store.append(task.task_id, [line("c")])) == [3]
    finally:
        await store.close()


async def test_a_fenced_append_needs_the_lease(redis_store: RedisStore, raw_redis: Redis) -> None:
    task = await new_task(redis_store)
    lease = redis_store.lease_key(task.task_id)
    await raw_redis.set(lease, "executor-a")

    assert seqs(await redis_store.append(task.task_id, [line("a")], owner="executor-a")) == [1]
    with pytest.raises(LeaseLost, match="executor-a"):
        await redis_store.append(task.task_id, [line("b")], owner="executor-b")
    await raw_redis.delete(lease)
    with pytest.raises(LeaseLost):
        await redis_store.append(task.task_id, [line("c")], owner="executor-a")
    assert seqs(await redis_store.read_events(task.task_id, 0, 10)) == [1]


async def test_a_lease_taken_during_the_append_stops_it(
    redis_server: RedisServer, raw_redis: Redis
) -> None:
    """The fence is checked by the script that writes: a takeover just before it still wins."""

    class TakenOver(RedisStore):
        async def _run_append(self, keys: list[str], args: list[bytes | str | int]) -> list[Any]:
            await raw_redis.set(lease, "executor-b")  # after the store's last read
            return await super()._run_append(keys, args)

    store = TakenOver.from_url(redis_server.url, prefix=f"test-{uuid.uuid4().hex}:")
    try:
        task = await new_task(store)
        lease = store.lease_key(task.task_id)
        await raw_redis.set(lease, "executor-a")
        with pytest.raises(LeaseLost, match="executor-b"):
            await store.append(task.task_id, [line("late")], owner="executor-a")
        assert await store.read_events(task.task_id, 0, 10) == []
    finally:
        await store.close()


async def test_without_retention_an_ended_task_never_expires(
    redis_store: RedisStore, raw_redis: Redis
) -> None:
    task = await new_task(redis_store)
    await _end(redis_store, task)

    assert await raw_redis.pttl(redis_store.record_key(task.task_id)) == -1
    assert await raw_redis.pttl(redis_store.events_key(task.task_id)) == -1


async def test_an_ended_task_expires_in_redis_and_the_sweep_clears_its_entries(
    redis_server: RedisServer, raw_redis: Redis
) -> None:
    prefix = f"test-{uuid.uuid4().hex}:"
    store = RedisStore.from_url(redis_server.url, prefix=prefix, retain=0.5)
    try:
        task, running = await new_task(store, owner="ann"), await new_task(store, owner="ann")
        await store.append(running.task_id, [task_state(Task.STATE_RUNNING)])
        record, events = store.record_key(task.task_id), store.events_key(task.task_id)
        cutoff = await _end(store, task)

        assert 0 < await raw_redis.pttl(record) <= 500
        assert await raw_redis.pttl(events) > await raw_redis.pttl(record)
        assert await raw_redis.pttl(store.record_key(running.task_id)) == -1
        for _ in range(100):  # Redis deletes it on its own; nobody sweeps
            if not await raw_redis.exists(record):
                break
            await asyncio.sleep(0.05)
        assert await store.get_task(task.task_id) is None
        assert [t.task_id for t in (await store.list_tasks(10, None)).tasks] == [running.task_id]

        assert await store.ended_before(cutoff, 10) == [task.task_id]
        assert await store.delete_ended([task.task_id], cutoff) == [task.task_id]
        assert not await raw_redis.exists(events)
        member = f"{task.create_time.ToNanoseconds():020d}:{task.task_id}".encode()
        for listing in (f"{prefix}tasks", store.owner_tasks_key("ann")):
            assert member not in await raw_redis.zrange(listing, 0, -1), listing
        assert await raw_redis.zcard(f"{prefix}ended") == 0
        assert not await raw_redis.hexists(f"{prefix}ended-info", task.task_id)
        assert await store.get_task(running.task_id) is not None
    finally:
        await store.close()


async def test_appends_continue_across_a_redis_restart(tmp_path: Path) -> None:
    with running_redis(tmp_path / "redis", aof=True) as server:
        store = RedisStore.from_url(server.url, backoff_base=0.02, backoff_cap=0.5, retries=30)
        try:
            task = await new_task(store)
            await store.append(task.task_id, [line("before")])

            server.stop()
            pending = asyncio.create_task(store.append(task.task_id, [line("during")]))
            await asyncio.sleep(0.3)  # the append retries while Redis is away
            assert not pending.done()
            server.start()
            assert seqs(await pending) == [2]
            assert seqs(await store.append(task.task_id, [line("after")])) == [3]

            # Restarted with its data: the log and the record came back from the AOF.
            server.restart()
            assert [e.log_line.text for e in await store.read_events(task.task_id, 0, 10)] == [
                "before",
                "during",
                "after",
            ]
            record = await store.get_task(task.task_id)
            assert record is not None
            assert record.last_seq == 3
            assert await store.unfinished_task_ids() == [task.task_id]
        finally:
            await store.close()


async def test_a_pipeline_of_appends_sent_while_redis_is_away_lands_each_append_once(
    tmp_path: Path,
) -> None:
    """redis-py sends the pipeline again until Redis is back (a script that had already run
    would find its events at the end of the stream: see the lost-reply test)."""
    with running_redis(tmp_path / "redis", aof=True) as server:
        store = RedisStore.from_url(server.url, backoff_base=0.02, backoff_cap=0.5, retries=30)
        try:
            tasks = [await new_task(store) for _ in range(10)]
            for task in tasks:
                await store.append(task.task_id, [line("before")])
            round_trips = store.round_trips

            server.stop()
            pending = [
                asyncio.create_task(store.append(task.task_id, [line("during")])) for task in tasks
            ]
            await eventually(lambda: store.round_trips > round_trips, what="the pipeline sent")
            server.start()
            assert [seqs(await append) for append in pending] == [[2]] * len(tasks)

            for task in tasks:
                stored = await store.read_events(task.task_id, 0, 10)
                assert [e.log_line.text for e in stored] == ["before", "during"]
            assert store.round_trips == round_trips + 1  # the ten went together
        finally:
            await store.close()


async def test_redis_gone_for_good_is_reported_not_retried_forever(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")  # never started: nothing listens on its port
    store = RedisStore.from_url(server.url, retries=2, backoff_base=0.01, backoff_cap=0.02)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"redis://127.0.0.1:{server.port}/0"):
            await store.append("00000000000000aa", [line("a")])
        with pytest.raises(StoreUnavailable):
            await store.get_task("00000000000000aa")
        assert time.monotonic() - started < 5
    finally:
        await store.close()


# --- open_store ----------------------------------------------------------------------------


async def test_open_store_understands_sqlite_specs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cases = {
        "": data / "mitosis.sqlite3",
        "sqlite": data / "mitosis.sqlite3",
        "sqlite:": data / "mitosis.sqlite3",
        f"sqlite:{tmp_path}/a.db": tmp_path / "a.db",
        f"sqlite://{tmp_path}/b.db": tmp_path / "b.db",
        f"{tmp_path}/c.db": tmp_path / "c.db",
    }
    for spec, path in cases.items():
        store = open_store(spec, data)
        try:
            assert isinstance(store, SqliteStore), spec
            assert path.exists(), spec
        finally:
            await store.close()
        path.unlink()


async def test_open_store_understands_redis_urls(redis_server: RedisServer) -> None:
    one = open_store(f"{redis_server.url}?prefix=one:", Path("unused"))
    two = open_store(redis_server.url.replace("redis://", "REDIS://") + "?prefix=two:", Path("x"))
    default = open_store(redis_server.url, Path("unused"))
    tls = open_store("rediss://user:secret@example.invalid:6380/2", Path("unused"))
    try:
        assert isinstance(one, RedisStore)
        assert isinstance(default, RedisStore)
        assert isinstance(tls, RedisStore)
        assert one.record_key("t") == "one:task:t"
        assert default.record_key("t") == "mitosis:task:t"
        await new_task(one, "00000000000000aa")
        assert await two.get_task("00000000000000aa") is None  # the prefix keeps them apart
        assert await one.get_task("00000000000000aa") is not None
    finally:
        for store in (one, two, default, tls):
            await store.close()


@pytest.mark.parametrize("spec", ["postgres://db/x", "redis://", "redis:///0"])
def test_open_store_refuses_what_it_cannot_open(spec: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="store"):
        open_store(spec, tmp_path)


async def test_a_burst_on_redis_waits_for_a_connection_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    """More calls at once than the pool has connections: each waits its turn, none fails."""
    store = RedisStore.from_url(
        redis_server.url, prefix=f"test-{uuid.uuid4().hex}:", max_connections=2
    )
    task_ids = [f"{n:016x}" for n in range(40)]
    await asyncio.gather(*(store.create_task(task_pb2.Task(task_id=t)) for t in task_ids))
    accepted = task_pb2.TaskEvent(task_state_changed=task_pb2.TaskStateChanged(state=1))
    stored = await asyncio.gather(*(store.append(t, [accepted]) for t in task_ids))
    assert [events[0].seq for events in stored] == [1] * len(task_ids)
    assert await store.count_unfinished("") == len(task_ids)
    await store.close()


async def test_sqlite_appends_that_arrive_together_share_one_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "grouped.sqlite3")
    tasks = [await new_task(store) for _ in range(20)]
    ended = await new_task(store)
    await store.append(ended.task_id, [task_state(Task.STATE_CANCELLED)])
    commits = store._commits

    outcomes = await asyncio.gather(
        *(store.append(task.task_id, [line("together")]) for task in tasks),
        store.append(ended.task_id, [line("too late")]),
        return_exceptions=True,
    )

    assert store._commits == commits + 1
    assert [seqs(outcome) for outcome in outcomes[:-1]] == [[1]] * 20  # type: ignore[arg-type]
    assert isinstance(outcomes[-1], TaskEnded)  # refused alone; the others landed
    assert seqs(await store.read_events(ended.task_id, 0, 10)) == [1]
    await store.close()


async def test_redis_appends_that_arrive_together_share_one_round_trip(
    redis_store: RedisStore,
) -> None:
    tasks = [await new_task(redis_store) for _ in range(20)]
    ended = await new_task(redis_store)
    await redis_store.append(ended.task_id, [task_state(Task.STATE_CANCELLED)])
    for task in tasks:  # the store knows each record: the appends go straight to the script
        await redis_store.append(task.task_id, [line("first")])
    round_trips = redis_store.round_trips

    outcomes = await asyncio.gather(
        *(redis_store.append(task.task_id, [line("together")]) for task in tasks),
        redis_store.append(ended.task_id, [line("too late")]),
        return_exceptions=True,
    )

    assert redis_store.round_trips == round_trips + 1
    assert [seqs(outcome) for outcome in outcomes[:-1]] == [[2]] * 20  # type: ignore[arg-type]
    assert isinstance(outcomes[-1], TaskEnded)  # refused alone; the others landed
    for task in tasks:
        assert seqs(await redis_store.read_events(task.task_id, 0, 10)) == [1, 2]


async def test_an_append_whose_caller_is_cancelled_lands_whole_and_reaches_live_watchers(
    backend: Backend,
) -> None:
    """A cancel (of a step, of a task) never cuts an append in half, and what was stored is
    offered to the task's watchers all the same."""
    task = await new_task(backend.store)
    hub = EventHub()
    log = EventLog(backend.store, hub)
    with hub.subscribe(task.task_id, from_seq=0) as feed:
        appending = asyncio.create_task(log.append(task.task_id, line("a"), line("b")))
        await asyncio.sleep(0)  # one turn of the loop: it has asked the store, not yet heard
        appending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await appending
        offered = await feed.next_batch(10)

    assert [event.seq for event in offered] == [1, 2]
    assert seqs(await backend.store.read_events(task.task_id, 0, 10)) == [1, 2]


async def test_an_sqlite_append_cannot_be_taken_back(tmp_path: Path) -> None:
    """Its future refuses to be cancelled, so a caller cancelled while it waits is cancelled
    once the append has landed, and EventLog needs no shield around it."""
    store = SqliteStore(tmp_path / "landing.sqlite3")
    task = await new_task(store)
    landing = store.append(task.task_id, [line("a")])

    assert landing.cancel() is False
    assert seqs(await landing) == [1]
    await store.close()


async def test_sqlite_keeps_no_record_ahead_of_the_stored_one_after_a_failed_append(
    tmp_path: Path,
) -> None:
    """The records of running tasks are kept in memory; a Change that fails after it was
    given the record must not leave that record folded ahead of the database."""
    store = SqliteStore(tmp_path / "cached.sqlite3")
    task = await new_task(store)
    await store.append(task.task_id, [line("a")])

    def half_made(record: Task) -> list[Event]:
        record.last_seq += 5  # what a fold gone wrong would leave behind
        raise RuntimeError("the change failed")

    with pytest.raises(RuntimeError):
        await store.append(task.task_id, half_made)
    stored = await store.append(task.task_id, [line("b")])

    assert seqs(stored) == [2]
    assert seqs(await store.read_events(task.task_id, 0, 10)) == [1, 2]
    await store.close()


async def test_sqlite_starts_its_wal_over_under_appends_that_never_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint in a worker thread never catches up with appends that go on meanwhile;
    SQLite starts the WAL over only once one has, so without the store finishing each
    checkpoint between two commits the WAL grows with every append."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 50)
    path = tmp_path / "busy.sqlite3"
    store = SqliteStore(path)
    task = await new_task(store)
    wal = path.with_name(path.name + "-wal")

    sizes = []
    for n in range(2000):
        await store.append(task.task_id, [line(f"append {n}")])
        sizes.append(wal.stat().st_size)
    await store.close()

    never_started_over = 2000 * 4096  # each commit adds a page to the WAL, at the least
    assert max(sizes) < never_started_over / 4


async def test_sqlite_appends_held_back_by_a_checkpoint_land_even_when_it_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """During the checkpoint's second pass appends wait; they are committed after it, and
    a store closed meanwhile commits them before it closes."""
    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 1)
    path = tmp_path / "held.sqlite3"
    store = SqliteStore(path)
    task = await new_task(store)
    second_pass_may_end = threading.Event()
    passes: list[int] = []
    checkpoint_pass = SqliteStore._checkpoint_pass

    def slow_second_pass(self: SqliteStore) -> None:
        passes.append(len(passes) + 1)
        if len(passes) == 2:
            second_pass_may_end.wait(10)
        checkpoint_pass(self)

    monkeypatch.setattr(SqliteStore, "_checkpoint_pass", slow_second_pass)
    await store.append(task.task_id, [line("before")])  # its commit starts a checkpoint
    await eventually(lambda: len(passes) == 2, what="the checkpoint's second pass")

    held = asyncio.ensure_future(store.append(task.task_id, [line("held back")]))
    closing = asyncio.create_task(store.close())
    await asyncio.sleep(0)
    assert not held.done()  # it waits for the second pass
    second_pass_may_end.set()
    await closing

    assert seqs(await held) == [2]
    reopened = SqliteStore(path)
    texts = [e.log_line.text for e in await reopened.read_events(task.task_id, 0, 10)]
    await reopened.close()
    assert texts == ["before", "held back"]
