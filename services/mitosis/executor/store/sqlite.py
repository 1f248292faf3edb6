"""The embedded store: SQLite in WAL mode, one file, no server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mitosis.errors import DATA_FOLDER_FULL
from mitosis.executor.store.base import (
    Change,
    Expect,
    Landing,
    LeaseLost,
    StoreFull,
    TaskPage,
    check_append,
    events_of,
)
from mitosis.executor.store.encoded import EncodedEvent, stored_batch
from mitosis.projection import TERMINAL_STATES, stamp_events
from mitosis.v1 import task_pb2

logger = logging.getLogger(__name__)

_TABLES = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id   TEXT PRIMARY KEY,
    create_ns INTEGER NOT NULL,
    terminal  INTEGER NOT NULL DEFAULT 0,
    record    BLOB NOT NULL,
    owner     TEXT NOT NULL DEFAULT '',
    end_ns    INTEGER
);
CREATE TABLE IF NOT EXISTS events (
    task_id TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    event   BLOB NOT NULL,
    PRIMARY KEY (task_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS purged (
    task_id TEXT PRIMARY KEY
) WITHOUT ROWID;
"""
"""`owner` is the API key name that created the task; `end_ns` the time its terminal event
was appended (NULL while it runs). `purged` holds deleted tasks whose events are still
being deleted, a chunk at a time."""

_INDEXES = """
CREATE INDEX IF NOT EXISTS tasks_newest_first ON tasks (create_ns DESC, task_id DESC);
CREATE INDEX IF NOT EXISTS tasks_by_owner ON tasks (owner, create_ns DESC, task_id DESC);
CREATE INDEX IF NOT EXISTS tasks_unfinished ON tasks (create_ns, task_id) WHERE terminal = 0;
CREATE INDEX IF NOT EXISTS tasks_unfinished_by_owner ON tasks (owner) WHERE terminal = 0;
CREATE INDEX IF NOT EXISTS tasks_by_end ON tasks (end_ns, task_id) WHERE end_ns IS NOT NULL;
"""

CHECKPOINT_EVERY = 500
"""Commits between two checkpoints of the WAL (SQLite's own default is every 1,000 pages)."""

PURGE_CHUNK = 2000
"""Events deleted per transaction when a task is deleted: a few milliseconds of the loop."""

CACHED_RECORDS = 1024
"""Records of unfinished tasks kept in memory, the most recently appended to: an append to
one of them reads and parses nothing."""


@dataclass
class _Append:
    """One append waiting for the next group commit."""

    task_id: str
    events: Sequence[task_pb2.TaskEvent] | Change
    owner: str | None
    expect: Expect | None
    done: Landing[list[task_pb2.TaskEvent]]


class SqliteStore:
    """Store on one SQLite file.

    Calls run on the event loop's thread: each is a short local transaction (tens of
    microseconds in WAL mode), cheaper than a hop to a worker thread.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # The executor's alone: every key's tasks are in it (SQLite gives its -wal and -shm
        # files the same mode).
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        self.where = f"sqlite:{path}"
        """The database file, as logs name it."""
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (kill -9); only power loss may lose
        # the newest commits.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        # Checkpoints run in a worker thread (_checkpoint_soon), not inside a commit.
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._path = path
        self._pending: list[_Append] = []
        self._commits = 0
        self._checkpointing: asyncio.Task[None] | None = None
        # A thread of the checkpoint's own, so its second pass (appends held back while it
        # runs) never waits behind other work in the loop's default pool.
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
        self._holding = False  # group commits wait for the checkpoint's second pass
        self._closed = False
        self._db.executescript(_TABLES)
        _add_missing_columns(self._db)
        self._db.executescript(_INDEXES)
        # One executor per SQLite file: leases live in its memory. So do the records of the
        # tasks it appends to, exactly as committed (forgotten when another connection
        # commits: see _forget_records_written_elsewhere).
        self._leases: dict[str, tuple[str, float]] = {}
        self._records: OrderedDict[str, task_pb2.Task] = OrderedDict()
        self._data_version = -1  # SQLite's count of other connections' commits, when read

    async def create_task(self, task: task_pb2.Task) -> None:
        with self._space_reported():
            self._db.execute(
                "INSERT INTO tasks (task_id, create_ns, owner, record) VALUES (?, ?, ?, ?)",
                (
                    task.task_id,
                    task.create_time.ToNanoseconds(),
                    task.owner,
                    task.SerializeToString(),
                ),
            )

    @contextlib.contextmanager
    def _space_reported(self) -> Iterator[None]:
        """Turn SQLite's "database or disk is full" into StoreFull naming the folder."""
        try:
            yield
        except sqlite3.OperationalError as error:
            if getattr(error, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                raise
            raise self._full() from error

    def _full(self) -> StoreFull:
        folder = self._path.parent
        return StoreFull(
            f"the data folder {folder} is full (the store cannot write to"
            f" {self._path.name}); free space there",
            reason=DATA_FOLDER_FULL,
            metadata={"folder": str(folder)},
        )

    async def get_task(self, task_id: str) -> task_pb2.Task | None:
        row = self._db.execute("SELECT record FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return None if row is None else task_pb2.Task.FromString(row[0])

    async def list_tasks(
        self, page_size: int, after: tuple[int, str] | None, owner: str | None = None
    ) -> TaskPage:
        where: list[str] = []
        params: list[object] = []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if after is not None:
            where.append("(create_ns, task_id) < (?, ?)")
            params += after
        # Only fixed fragments go into the text; the values are parameters.
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(
            f"SELECT record FROM tasks {condition} ORDER BY create_ns DESC, task_id DESC LIMIT ?",
            (*params, page_size + 1),
        ).fetchall()
        tasks = [task_pb2.Task.FromString(row[0]) for row in rows[:page_size]]
        more = len(rows) > page_size
        cursor = (tasks[-1].create_time.ToNanoseconds(), tasks[-1].task_id) if more else None
        return TaskPage(tasks, cursor)

    async def count_unfinished(self, owner: str) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM tasks WHERE owner = ? AND terminal = 0", (owner,)
        ).fetchone()
        return int(row[0])

    def append(
        self,
        task_id: str,
        events: Sequence[task_pb2.TaskEvent] | Change,
        *,
        owner: str | None = None,
        expect: Expect | None = None,
    ) -> Landing[list[task_pb2.TaskEvent]]:
        """Append atomically (see Store.append), in a group commit: the appends asked for
        in one turn of the event loop share one transaction, each in a savepoint of its own,
        so one that is refused changes nothing and the others still land.

        A Landing, not a coroutine: nothing runs until the commit, so awaiting it costs no
        task of its own, and it cannot be cancelled, so EventLog needs no shield around it.
        """
        loop = asyncio.get_running_loop()
        done: Landing[list[task_pb2.TaskEvent]] = Landing(loop=loop)
        self._pending.append(_Append(task_id, events, owner, expect, done))
        if len(self._pending) == 1 and not self._holding:
            loop.call_soon(self._commit_pending)
        return done

    def _commit_pending(self) -> None:
        if self._holding or not self._pending:
            return  # the checkpoint's second pass commits them when it is done
        batch, self._pending = self._pending, []
        db = self._db
        outcomes: list[tuple[_Append, list[task_pb2.TaskEvent] | BaseException]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            self._forget_records_written_elsewhere()
            alone = len(batch) == 1  # the whole transaction is its savepoint
            for request in batch:
                if not alone:
                    db.execute("SAVEPOINT one_append")
                try:
                    outcomes.append((request, self._append_now(request)))
                except Exception as refused:  # unknown task, refused, fenced: this one only
                    if _is_full(refused):
                        raise  # SQLite rolled the whole transaction back: all of them fail
                    db.execute("ROLLBACK" if alone else "ROLLBACK TO one_append")
                    outcomes.append((request, refused))
                if not alone:
                    db.execute("RELEASE one_append")
            if db.in_transaction:
                db.execute("COMMIT")
            self._commits += 1
        except BaseException as error:
            if db.in_transaction:  # a failed COMMIT leaves it open: never carry it over
                db.execute("ROLLBACK")
            for request in batch:  # their records were folded ahead of what is stored
                self._records.pop(request.task_id, None)
            if _is_full(error):
                error = self._full()
            outcomes = [(request, error) for request in batch]
        for request, outcome in outcomes:
            if isinstance(outcome, BaseException):
                request.done.set_exception(outcome)
            else:
                request.done.set_result(outcome)
        if self._commits % CHECKPOINT_EVERY == 0:
            self._checkpoint_soon()

    def _append_now(self, request: _Append) -> list[task_pb2.TaskEvent]:
        """One append inside the open transaction; raises and writes nothing when refused."""
        task_id, db = request.task_id, self._db
        if request.owner is not None and not self._holds(task_id, request.owner):
            raise LeaseLost(f"task {task_id}: the lease is not held by {request.owner}")
        task = self._record(task_id)
        check_append(task, request.expect)  # so the task has not ended before this append
        try:
            stored = stamp_events(task, events_of(task, request.events))
            db.executemany(
                "INSERT INTO events (task_id, seq, event) VALUES (?, ?, ?)",
                [(task_id, e.seq, e.SerializeToString()) for e in stored],
            )
            if task.state not in TERMINAL_STATES:
                # Most appends: only the record changes, so no index has to be touched.
                db.execute(
                    "UPDATE tasks SET record = ? WHERE task_id = ?",
                    (task.SerializeToString(), task_id),
                )
                return stored
            db.execute(
                "UPDATE tasks SET record = ?, terminal = 1, end_ns = ? WHERE task_id = ?",
                (task.SerializeToString(), task.update_time.ToNanoseconds(), task_id),
            )
        except BaseException:
            # A Change that raised, or a write that failed: the record in memory may be
            # folded ahead of the one stored, so the next append reads it again.
            self._records.pop(task_id, None)
            raise
        self._records.pop(task_id, None)  # an ended task takes no more appends
        return stored

    def _forget_records_written_elsewhere(self) -> None:
        """Drop the records in memory when another connection has committed since (another
        process on the same file, which `make run` never starts but nothing forbids)."""
        (version,) = self._db.execute("PRAGMA data_version").fetchone()
        if version != self._data_version:
            self._records.clear()
            self._data_version = version

    def _record(self, task_id: str) -> task_pb2.Task:
        """The task's record as committed: from memory, or read once and kept."""
        task = self._records.get(task_id)
        if task is not None:
            self._records.move_to_end(task_id)
            return task
        row = self._db.execute("SELECT record FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        if row is None:
            raise KeyError(task_id)
        task = task_pb2.Task.FromString(row[0])
        if task.state not in TERMINAL_STATES:
            self._records[task_id] = task
            if len(self._records) > CACHED_RECORDS:
                self._records.popitem(last=False)
        return task

    def _checkpoint_soon(self) -> None:
        """Move the WAL into the database in a worker thread, on a connection of its own
        (SQLite's automatic checkpoint would run inside a commit, on the event loop)."""
        if self._closed:
            return  # closing: the WAL goes into the database when the connection closes
        if self._checkpointing is None or self._checkpointing.done():
            self._checkpointing = asyncio.get_running_loop().create_task(self._checkpoint())

    async def _checkpoint(self) -> None:
        """Two passes: the first while appends go on, the second, over what they committed
        meanwhile, with the group commits held back (appends wait, the event loop does not).

        A checkpoint never catches up with appends that go on while it runs, and SQLite
        starts the WAL over only at a commit that finds it all checkpointed: without the
        second pass the WAL grew without bound (2.8 GB after some 200,000 appends in a row).
        """
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._checkpointer, self._checkpoint_pass)
            if not self._closed:
                self._holding = True
                await loop.run_in_executor(self._checkpointer, self._checkpoint_pass)
        except sqlite3.Error as error:  # nothing is lost: the WAL grows until the next one
            logger.warning("checkpoint of %s failed: %s", self._path, error)
        finally:
            self._holding = False
            if self._pending:
                asyncio.get_running_loop().call_soon(self._commit_pending)

    def _checkpoint_pass(self) -> None:
        with contextlib.closing(sqlite3.connect(self._path, timeout=5)) as db:
            db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def read_encoded(self, task_id: str, after_seq: int, limit: int) -> list[EncodedEvent]:
        return stored_batch(self._rows(task_id, after_seq, limit))

    async def read_events(
        self, task_id: str, after_seq: int, limit: int
    ) -> list[task_pb2.TaskEvent]:
        return [
            task_pb2.TaskEvent.FromString(data) for _, data in self._rows(task_id, after_seq, limit)
        ]

    def _rows(self, task_id: str, after_seq: int, limit: int) -> list[tuple[int, bytes]]:
        """(seq, stored bytes) of up to `limit` events with `seq > after_seq`, in order."""
        rows: list[tuple[int, bytes]] = self._db.execute(
            "SELECT seq, event FROM events WHERE task_id = ? AND seq > ? ORDER BY seq LIMIT ?",
            (task_id, after_seq, limit),
        ).fetchall()
        return rows

    async def unfinished_task_ids(self) -> list[str]:
        rows = self._db.execute(
            "SELECT task_id FROM tasks WHERE terminal = 0 ORDER BY create_ns, task_id"
        ).fetchall()
        return [row[0] for row in rows]

    async def ended_before(self, before_ns: int, limit: int) -> list[str]:
        rows = self._db.execute(
            "SELECT task_id FROM tasks WHERE end_ns < ? ORDER BY end_ns, task_id LIMIT ?",
            (before_ns, limit),
        ).fetchall()
        return [row[0] for row in rows]

    async def delete_ended(self, task_ids: Sequence[str], before_ns: int) -> list[str]:
        """Delete the records at once, in one transaction, then their events a chunk at a
        time; a crash in between leaves the ids in `purged`, and the next call finishes."""
        db = self._db
        deleted = []
        db.execute("BEGIN IMMEDIATE")
        try:
            for task_id in task_ids:
                cursor = db.execute(
                    "DELETE FROM tasks WHERE task_id = ? AND terminal = 1 AND end_ns < ?",
                    (task_id, before_ns),
                )
                if cursor.rowcount:
                    db.execute("INSERT OR IGNORE INTO purged (task_id) VALUES (?)", (task_id,))
                    deleted.append(task_id)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # a failed COMMIT leaves it open: never carry it over
                db.execute("ROLLBACK")
            raise
        for task_id in deleted:
            self._leases.pop(task_id, None)
            self._records.pop(task_id, None)
        await self._purge_events()
        return deleted

    async def _purge_events(self) -> None:
        """Delete the events of deleted tasks, yielding to the loop between chunks."""
        db = self._db
        for (task_id,) in db.execute("SELECT task_id FROM purged").fetchall():
            while True:
                chunk = db.execute(
                    "DELETE FROM events WHERE task_id = ?1 AND seq <"
                    " (SELECT min(seq) FROM events WHERE task_id = ?1) + ?2",
                    (task_id, PURGE_CHUNK),
                )
                if not chunk.rowcount:
                    break
                await asyncio.sleep(0)  # other calls run between chunks
            db.execute("DELETE FROM purged WHERE task_id = ?", (task_id,))

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

    def _holds(self, task_id: str, owner: str) -> bool:
        holder = self._leases.get(task_id)
        return holder is not None and holder[0] == owner and holder[1] > time.monotonic()

    async def close(self) -> None:
        self._closed = True
        if self._checkpointing is not None:
            await self._checkpointing
        self._commit_pending()  # what was asked for before, held back by the checkpoint
        self._checkpointer.shutdown()
        self._db.close()


def _is_full(error: BaseException) -> bool:
    return (
        isinstance(error, sqlite3.OperationalError)
        and getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    )


def _add_missing_columns(db: sqlite3.Connection) -> None:
    """Bring a database made before tasks had an owner and an end time up to date.

    Tasks made then have no owner (""), and their end time is the record's update time,
    which is the terminal event's time unless something was appended after it.
    """
    columns = {row[1] for row in db.execute("PRAGMA table_info(tasks)")}
    if {"owner", "end_ns"} <= columns:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        if "owner" not in columns:
            db.execute("ALTER TABLE tasks ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
        if "end_ns" not in columns:
            db.execute("ALTER TABLE tasks ADD COLUMN end_ns INTEGER")
            ended = db.execute("SELECT task_id, record FROM tasks WHERE terminal = 1")
            db.executemany(
                "UPDATE tasks SET end_ns = ? WHERE task_id = ?",
                [
                    (task_pb2.Task.FromString(record).update_time.ToNanoseconds(), task_id)
                    for task_id, record in ended.fetchall()
                ],
            )
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a failed COMMIT leaves it open: never carry it over
            db.execute("ROLLBACK")
        raise
