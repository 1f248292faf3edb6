"""Task control under random interleavings, on both stores: a hypothesis state machine.

Executors (x, y, z) claim tasks, write to them (steps, pages, state changes) as a run does
— including runs that read the task long ago and never looked again — end them; anyone
approves and cancels; leases expire; executors die. The store alone keeps order, and after
every step the invariants hold for every task:

- its log is gapless (seq 1..N) and its record is the fold of its log;
- at most one terminal event, and nothing after it (so never RUNNING after CANCELLED);
- only the lease holder's run ever wrote (at most one writer at a time);
- once ended, no page and no step is left open;
- an approval lands only on a waiting plan, a cancel only on a task that has not ended.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from mitosis.errors import FailedPrecondition
from mitosis.executor.events.hub import EventHub
from mitosis.executor.events.log import EventLog
from mitosis.executor.running.control import approve_plan, cancel_task, end_task
from mitosis.executor.store.base import LeaseLost, Store, TaskEnded
from mitosis.executor.store.redis import RedisStore
from mitosis.executor.store.sqlite import SqliteStore
from mitosis.projection import TERMINAL_STATES, apply_event, is_terminal_event
from mitosis.v1 import task_pb2
from tests.support.redis_server import RedisServer, running_redis

Task = task_pb2.Task
Step = task_pb2.Step
Event = task_pb2.TaskEvent
T = TypeVar("T")

EXECUTORS = ("x", "y", "z")
LEASE_S = 600.0  # leases end only when the machine says so (expire, or a dead executor's)
OPEN_STEPS = (Step.STATE_PENDING, Step.STATE_RUNNING)

# What a run writes, as a run that read the task at some point would: the store must keep
# the log sound whatever the task's state is by then.
WRITES: dict[str, Callable[[Task], list[Event]]] = {
    "plan": lambda task: [
        Event(
            plan_ready=task_pb2.PlanReady(
                steps=[Step(index=i, title=f"step {i}", tool="python") for i in range(2)]
            )
        ),
        Event(task_state_changed=task_pb2.TaskStateChanged(state=Task.STATE_RUNNING)),
    ],
    "plan for approval": lambda task: [
        Event(plan_ready=task_pb2.PlanReady(steps=[Step(index=0, title="only", tool="python")])),
        Event(task_state_changed=task_pb2.TaskStateChanged(state=Task.STATE_AWAITING_APPROVAL)),
    ],
    "step starts": lambda task: [
        Event(step_state_changed=task_pb2.StepStateChanged(step_index=0, state=2, attempt=1))
    ],
    # Pages are numbered as a run numbers them: the next one opens, the newest one grows.
    "page opens": lambda task: [
        Event(
            page_started=task_pb2.PageStarted(
                page_number=len(task.pages) + 1, title="p", file_name="p.md"
            )
        )
    ],
    "page grows": lambda task: [
        Event(page_delta=task_pb2.PageDelta(page_number=len(task.pages), offset=0, text="words "))
    ],
    "page closes": lambda task: [
        Event(
            page_finished=task_pb2.PageFinished(
                page_number=len(task.pages), size_bytes=6, sha256="0" * 64
            )
        )
    ],
    "step succeeds": lambda task: [
        Event(step_state_changed=task_pb2.StepStateChanged(step_index=0, state=3, attempt=1))
    ],
    "running again": lambda task: [
        Event(task_state_changed=task_pb2.TaskStateChanged(state=Task.STATE_RUNNING))
    ],
}


class Backend:
    """One store per executor (separate connections to one data set), or one shared store
    where the store keeps its leases in the process (SQLite serves one executor)."""

    def __init__(
        self, stores: dict[str, Store], expire: Callable[[str], Coroutine[Any, Any, None]]
    ):
        self.stores = stores
        self.expire = expire

    async def close(self) -> None:
        for store in {id(s): s for s in self.stores.values()}.values():
            await store.close()


BackendFactory = Callable[[], Coroutine[Any, Any, Backend]]


class ControlMachine(RuleBasedStateMachine):
    """Drives the control protocol; the store's answers must agree with what it allows."""

    open_backend: BackendFactory

    tasks = Bundle("tasks")

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.backend = self.run(self.open_backend())
        self.logs = {
            name: EventLog(store, EventHub()) for name, store in self.backend.stores.items()
        }
        self.alive = set(EXECUTORS)
        self.holder: dict[str, str | None] = {}
        self.runs: set[tuple[str, str]] = set()
        """(executor, task): a run that claimed the task once and writes fenced ever after."""

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        self.run(self.backend.close())
        self.loop.close()

    def record(self, task_id: str) -> Task:
        task = self.run(self.backend.stores["x"].get_task(task_id))
        assert task is not None
        return task

    @initialize(target=tasks)
    def first_task(self) -> str:
        return self.create(False)

    @rule(target=tasks, require_approval=st.booleans())
    def create(self, require_approval: bool) -> str:
        task = Task(
            task_id=uuid.uuid4().hex[:16],
            text="t",
            state=Task.STATE_PENDING,
            require_approval=require_approval,
        )
        task.create_time.FromNanoseconds(time.time_ns())
        self.run(self.backend.stores["x"].create_task(task))
        self.holder[task.task_id] = None
        return task.task_id

    @rule(task_id=tasks, executor=st.sampled_from(EXECUTORS))
    def claim(self, task_id: str, executor: str) -> None:
        if executor not in self.alive:
            return
        store = self.backend.stores[executor]
        if self.run(store.acquire_lease(task_id, executor, LEASE_S)):
            assert self.holder[task_id] in (None, executor), "two executors hold one lease"
            self.holder[task_id] = executor
        else:
            assert self.holder[task_id] not in (None, executor)
        self.logs[executor].fence(task_id, executor)  # its run writes fenced, held or not
        self.runs.add((executor, task_id))

    @precondition(lambda self: self.runs)
    @rule(data=st.data(), what=st.sampled_from(sorted(WRITES)))
    def write(self, data: st.DataObject, what: str) -> None:
        executor, task_id = data.draw(st.sampled_from(sorted(self.runs)), label="run")
        if executor not in self.alive:
            return
        before = self.record(task_id)
        try:
            self.run(self.logs[executor].append(task_id, *WRITES[what](before)))
        except LeaseLost:
            assert self.holder[task_id] != executor
        except TaskEnded:
            assert before.state in TERMINAL_STATES
        else:
            assert self.holder[task_id] == executor, "a run wrote without the lease"
            assert before.state not in TERMINAL_STATES

    @precondition(lambda self: self.runs)
    @rule(data=st.data(), state=st.sampled_from([Task.STATE_SUCCEEDED, Task.STATE_FAILED]))
    def run_ends_it(self, data: st.DataObject, state: Task.State.ValueType) -> None:
        executor, task_id = data.draw(st.sampled_from(sorted(self.runs)), label="run")
        if executor not in self.alive:
            return
        before = self.record(task_id)
        try:
            self.run(end_task(self.logs[executor], task_id, state, "the run ended", fenced=True))
        except LeaseLost:
            assert self.holder[task_id] != executor
        except TaskEnded:
            assert before.state in TERMINAL_STATES
        else:
            assert self.holder[task_id] == executor
            assert before.state not in TERMINAL_STATES

    @rule(task_id=tasks, via=st.sampled_from(EXECUTORS))
    def cancel(self, task_id: str, via: str) -> None:
        before = self.record(task_id)
        try:
            self.run(cancel_task(self.logs[via], task_id, "cancelled by request"))
        except FailedPrecondition:
            assert before.state in TERMINAL_STATES
        else:
            assert before.state not in TERMINAL_STATES
            assert self.record(task_id).state == Task.STATE_CANCELLED

    @rule(task_id=tasks, via=st.sampled_from(EXECUTORS))
    def approve(self, task_id: str, via: str) -> None:
        before = self.record(task_id)
        try:
            self.run(approve_plan(self.logs[via], task_id, None))
        except FailedPrecondition:
            assert before.state != Task.STATE_AWAITING_APPROVAL
        else:
            assert before.state == Task.STATE_AWAITING_APPROVAL
            assert self.record(task_id).state == Task.STATE_RUNNING

    @rule(task_id=tasks)
    def lease_expires(self, task_id: str) -> None:
        self.run(self.backend.expire(task_id))
        self.holder[task_id] = None

    @precondition(lambda self: len(self.alive) > 1)
    @rule(executor=st.sampled_from(EXECUTORS))
    def executor_dies(self, executor: str) -> None:
        self.alive.discard(executor)  # its leases stay until they expire

    @invariant()
    def every_log_is_sound(self) -> None:
        for task_id in self.holder:
            task = self.record(task_id)
            events = self.run(self.backend.stores["x"].read_events(task_id, 0, 10_000))
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert task.last_seq == len(events)
            ends = [i for i, e in enumerate(events) if is_terminal_event(e)]
            assert ends in ([], [len(events) - 1]), "an event after the end, or two ends"
            folded = Task(task_id=task_id, text=task.text, require_approval=task.require_approval)
            folded.state = Task.STATE_PENDING
            for event in events:
                apply_event(folded, event)
            assert folded.state == task.state
            assert list(folded.steps) == list(task.steps)
            assert list(folded.pages) == list(task.pages)
            if task.state in TERMINAL_STATES:
                assert not [p.page_number for p in task.pages if not (p.finished or p.abandoned)]
                assert not [s.index for s in task.steps if s.state in OPEN_STEPS]


MACHINE_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory() as folder, running_redis(Path(folder)) as server:
        yield server


def test_control_holds_its_invariants_on_sqlite(tmp_path: Path) -> None:
    async def open_backend() -> Backend:
        store = SqliteStore(tmp_path / f"{uuid.uuid4().hex}.sqlite3")

        async def expire(task_id: str) -> None:
            store._leases.pop(task_id, None)  # what time does to a lease

        return Backend(dict.fromkeys(EXECUTORS, store), expire)

    machine = type("SqliteControl", (ControlMachine,), {"open_backend": staticmethod(open_backend)})
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)


def test_control_holds_its_invariants_on_redis(redis_server: RedisServer) -> None:
    async def open_backend() -> Backend:
        prefix = f"control-{uuid.uuid4().hex}:"
        stores: dict[str, Store] = {
            name: RedisStore.from_url(redis_server.url, prefix=prefix) for name in EXECUTORS
        }
        first = stores["x"]
        assert isinstance(first, RedisStore)

        async def expire(task_id: str) -> None:
            await first._redis.delete(first.lease_key(task_id))  # what time does to a lease

        return Backend(stores, expire)

    machine = type("RedisControl", (ControlMachine,), {"open_backend": staticmethod(open_backend)})
    run_state_machine_as_test(machine, settings=MACHINE_SETTINGS)
