"""Workload 6: appends per second to the stores.

Measured in the benchmark's own process, straight on `SqliteStore` and `RedisStore` (a
private redis-server on a free port, no persistence), with the same event mix as the streams:
one task appending one event at a time, each append awaited; 20 tasks doing that at once
(what the group commit is for: appends asked for in one turn of the event loop share one
SQLite transaction or one Redis round trip); and one task appending 1,000 events at a time
(how catch-up data is loaded). The time of each append is kept.

Before them, once a repetition, a python step printing 20,000 lines as fast as it can
through the real tool (sandbox, pipe, EventLog) into SQLite: how fast a chatty script's
output is stored, and how many lines go to one append.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from pathlib import Path
from typing import Any

from bench.payloads import Shapes, task_event
from bench.procs import Redis
from bench.rig import Progress
from bench.stats import percentile
from mitosis.executor.events.hub import EventHub
from mitosis.executor.events.log import EventLog
from mitosis.executor.store.base import Store
from mitosis.executor.store.redis import RedisStore
from mitosis.executor.store.sqlite import SqliteStore
from mitosis.executor.tools.recorded import RecordedTools
from mitosis.executor.tools.workspace import Workspace
from mitosis.v1 import task_pb2


async def _new_task(store: Store) -> str:
    task = task_pb2.Task(
        task_id=secrets.token_hex(8), text="store benchmark", state=task_pb2.Task.STATE_RUNNING
    )
    task.create_time.FromNanoseconds(time.time_ns())
    await store.create_task(task)
    return task.task_id


async def _appends(store: Store, count: int, batch: int) -> tuple[float, list[float]]:
    """Events per second appended to a new task in transactions of `batch` events, and the
    time each append took."""
    task_id = await _new_task(store)
    shapes = Shapes()
    events = [task_event(shapes.next()) for _ in range(count)]
    each = []
    start = time.perf_counter()
    for first in range(0, count, batch):
        t0 = time.perf_counter()
        await store.append(task_id, events[first : first + batch])
        each.append(time.perf_counter() - t0)
    return count / (time.perf_counter() - start), each


TOGETHER = 20
"""Tasks appending at once in the concurrent row."""


def _commits(store: Store) -> int:
    """SQLite transactions or Redis round trips the store has made for appends so far."""
    if isinstance(store, SqliteStore):
        return store._commits
    if isinstance(store, RedisStore):
        return store.round_trips
    return 0


async def _appends_together(store: Store, count: int) -> tuple[float, list[float], float]:
    """Events per second when TOGETHER tasks each append `count` // TOGETHER events one at a
    time, all at once; the time each append took; appends per transaction or round trip."""
    task_ids = [await _new_task(store) for _ in range(TOGETHER)]
    shapes = Shapes()
    each: list[float] = []

    async def one(task_id: str) -> None:
        for _ in range(count // TOGETHER):
            event = task_event(shapes.next())
            t0 = time.perf_counter()
            await store.append(task_id, [event])
            each.append(time.perf_counter() - t0)

    commits = _commits(store)
    start = time.perf_counter()
    await asyncio.gather(*(one(task_id) for task_id in task_ids))
    seconds = time.perf_counter() - start
    return len(each) / seconds, each, len(each) / max(_commits(store) - commits, 1)


SCRIPT_LINES = 20_000
"""Lines the chatty script of the script-output row prints."""


async def _script_output(store: SqliteStore, workdir: Path, lines: int) -> dict[str, Any]:
    """A python step (the real tool, sandbox and all) printing `lines` lines as fast as it
    can, through EventLog into SQLite: lines stored per second and per append."""
    task_id = await _new_task(store)
    tools = RecordedTools(
        EventLog(store, EventHub()), task_id, 0, Workspace(workdir), tool_timeout=120, page_window=0
    )
    code = f"for n in range({lines}):\n    print('step 2 python: read 1,024 rows; line', n)\n"
    commits = _commits(store)
    start = time.perf_counter()
    await tools.python(code)
    seconds = time.perf_counter() - start
    stored = await store.get_task(task_id)
    if stored is None or stored.last_seq != lines:
        seq = stored.last_seq if stored else None
        raise RuntimeError(f"the script printed {lines} lines but the task ends at seq {seq}")
    return {
        "lines": lines,
        "seconds": seconds,
        "lines_per_s": lines / seconds,
        "lines_per_append": lines / max(_commits(store) - commits, 1),
    }


async def stores(
    workdir: Path, reps: int, counts: dict[str, int], progress: Progress
) -> list[dict[str, Any]]:
    """SQLite and Redis: single-event appends by one task and by TOGETHER at once, and
    1000-event appends, `reps` times each."""
    rows: list[dict[str, Any]] = []
    sqlite = SqliteStore(workdir / "store.sqlite3")
    stores: list[tuple[str, Store]] = [("sqlite", sqlite)]
    redis = redis_store = None
    if shutil.which("redis-server"):
        redis = await Redis(workdir / "redis").start()
        redis_store = RedisStore.from_url(redis.url)
        stores.append(("redis", redis_store))
    else:
        progress("store: redis-server is not installed, so no Redis figures")
    try:
        for rep in range(reps):
            row = await _script_output(sqlite, workdir / f"script-{rep}", SCRIPT_LINES)
            rows.append({"workload": "script", "rep": rep, **row})
            progress(
                f"script output rep {rep + 1}: {row['lines_per_s']:,.0f} lines/s,"
                f" {row['lines_per_append']:.1f} lines per append"
            )
            for name, store in stores:
                for tasks, batch in ((1, 1), (TOGETHER, 1), (1, 1000)):
                    count = counts[name] if batch == 1 else 20 * batch
                    if tasks == 1:
                        rate, each = await _appends(store, count, batch)
                        per_commit = 1.0
                    else:
                        rate, each, per_commit = await _appends_together(store, count)
                    rows.append(
                        {
                            "workload": "store",
                            "rep": rep,
                            "store": name,
                            "tasks": tasks,
                            "appends_per_commit": per_commit,
                            "batch": batch,
                            "events": count,
                            "events_per_s": rate,
                            "appends_per_s": rate / batch,
                            "append_p50_us": percentile(each, 50) * 1e6,
                            "append_p99_us": percentile(each, 99) * 1e6,
                            "append_max_us": max(each) * 1e6,
                        }
                    )
                    progress(
                        f"store {name} {tasks} task(s), batch {batch} rep {rep + 1}:"
                        f" {rate:,.0f} events/s, {per_commit:.1f} appends per commit"
                    )
    finally:
        if redis_store is not None:
            await redis_store.close()
        await sqlite.close()
        if redis is not None:
            await redis.stop()
    return rows
