"""The embedded store: SQLite in WAL mode, one file, no server."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from mitosis.executor.store import LeaseLost, TaskPage
from mitosis.projection import TERMINAL_STATES, stamp_events
from mitosis.v1 import task_pb2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id   TEXT PRIMARY KEY,
    create_ns INTEGER NOT NULL,
    terminal  INTEGER NOT NULL DEFAULT 0,
    record    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_newest_first ON tasks (create_ns DESC, task_id DESC);
CREATE TABLE IF NOT EXISTS events (
    task_id TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    event   BLOB NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
"""


class SqliteStore:
    """Store on one SQLite file.

    Calls run on the event loop's thread: each is a short local transaction (tens of
    microseconds in WAL mode), cheaper than a hop to a worker thread.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.where = f"sqlite:{path}"
        """The database file, as logs name it."""
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); only power loss may lose
        # the newest commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        # One executor per SQLite file: leases and cancel requests live in its memory.
        self._leases: dict[str, tuple[str, float]] = {}
        self._cancel_requests: dict[str, str] = {}

    async def create_task(self, task: task_pb2.Task) -> None:
        self._db.execute(
            "INSERT INTO tasks (task_id, create_ns, record) VALUES (?, ?, ?)",
            (task.task_id, task.create_time.ToNanoseconds(), task.SerializeToString()),
        )

    async def get_task(self, task_id: str) -> task_pb2.Task | None:
        row = self._db.execute("SELECT record FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else task_pb2.Task.FromString(row[0])

    async def list_tasks(self, page_size: int, after: tuple[int, str] | None) -> TaskPage:
        if after is None:
            rows = self._db.execute(
                "SELECT record FROM tasks ORDER BY create_ns DESC, task_id DESC LIMIT ?",
                (page_size + 1,),
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT record FROM tasks WHERE (create_ns, task_id) < (?, ?)"
                " ORDER BY create_ns DESC, task_id DESC LIMIT ?",
                (*after, page_size + 1),
            ).fetchall()
        tasks = [task_pb2.Task.FromString(row[0]) for row in rows[:page_size]]
        more = len(rows) > page_size
        cursor = (tasks[-1].create_time.ToNanoseconds(), tasks[-1].task_id) if more else None
        return TaskPage(tasks, cursor)

    async def append(
        self,
        task_id: str,
        events: Sequence[task_pb2.TaskEvent],
        *,
        owner: str | None = None,
    ) -> list[task_pb2.TaskEvent]:
        if owner is not None and not self._holds(task_id, owner):
            raise LeaseLost(f"task {task_id}: the lease is not held by {owner}")
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT record FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
            if row is None:
                raise KeyError(task_id)
            task = task_pb2.Task.FromString(row[0])
            stored = stamp_events(task, events)
            db.executemany(
                "INSERT INTO events (task_id, seq, event) VALUES (?, ?, ?)",
                [(task_id, e.seq, e.SerializeToString()) for e in stored],
            )
            db.execute(
                "UPDATE tasks SET record = ?, terminal = ? WHERE task_id = ?",
                (task.SerializeToString(), int(task.state in TERMINAL_STATES), task_id),
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return stored

    async def read_events(
        self, task_id: str, after_seq: int, limit: int
    ) -> list[task_pb2.TaskEvent]:
        rows = self._db.execute(
            "SELECT event FROM events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (task_id, after_seq, limit),
        ).fetchall()
        return [task_pb2.TaskEvent.FromString(row[0]) for row in rows]

    async def unfinished_task_ids(self) -> list[str]:
        rows = self._db.execute(
            "SELECT task_id FROM tasks WHERE terminal = 0 ORDER BY create_ns, task_id"
        ).fetchall()
        return [row[0] for row in rows]

    async def acquire_lease(self, task_id: str, owner: str, ttl: float) -> bool:
        holder = self._leases.get(task_id)
        if holder is not None and holder[0] != owner and holder[1] > time.monotonic():
            return False
        self._leases[task_id] = (owner, time.monotonic() + ttl)
        return True

    async def renew_lease(self, task_id: str, owner: str, ttl: float) -> bool:
        if not self._holds(task_id, owner):
            return False
        self._leases[task_id] = (owner, time.monotonic() + ttl)
        return True

    async def release_lease(self, task_id: str, owner: str) -> None:
        if self._holds(task_id, owner):
            del self._leases[task_id]
        self._cancel_requests.pop(task_id, None)

    async def request_cancel(self, task_id: str, reason: str) -> None:
        self._cancel_requests[task_id] = reason

    async def cancel_requested(self, task_id: str) -> str | None:
        return self._cancel_requests.get(task_id)

    def _holds(self, task_id: str, owner: str) -> bool:
        holder = self._leases.get(task_id)
        return holder is not None and holder[0] == owner and holder[1] > time.monotonic()

    async def close(self) -> None:
        self._db.close()
