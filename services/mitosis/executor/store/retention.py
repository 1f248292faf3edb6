"""Retention: a task that ended is kept for `--retain`, then its record, events and files go.

Unfinished tasks are never touched. The sweep asks the store for tasks that ended before
the cutoff, a batch at a time; for each batch it deletes the task folders first and the
store's data second, so a crash in between leaves tasks the next sweep finds again, never
files nobody can reach. With Redis, the store also sets Redis's own expiry on a task's keys
when it ends (see `RedisStore`), so they go even when no executor is left to sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mitosis.executor.store.base import Store
from mitosis.rpc.settings import add_setting

logger = logging.getLogger(__name__)

DEFAULT_RETAIN = "30d"
"""A month: long enough to come back to last week's results after a holiday, short enough
that the store and the data folder stop growing once the usage is steady."""

BATCH = 100
"""Tasks deleted per store call: a short transaction, a short script."""

MAX_INTERVAL = 60.0
"""Seconds between sweeps at most; shorter retentions sweep every quarter of their length."""

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw]?)")
_SAFE_ID = re.compile(r"[0-9A-Za-z_-]+")


def parse_retention(text: str) -> float:
    """Return the seconds `text` names: `7d`, `12h`, `30m`, `45s`, `2w`, or a number of
    seconds; `0` means keep forever."""
    found = _DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a retention: use a number with s, m, h, d or w (like 7d or"
            " 12h), or 0 to keep finished tasks forever"
        )
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def add_retention_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Define --retain (env MITOSIS_RETAIN)."""
    add_setting(
        parser,
        "--retain",
        "MITOSIS_RETAIN",
        env,
        type=parse_retention,
        default=DEFAULT_RETAIN,
        help="how long a finished task (its record, events and files) is kept after it"
        " ended, like 7d, 12h or 30m; 0 keeps them forever; unfinished tasks are never"
        " deleted",
    )


def task_folder(data_dir: Path, task_id: str) -> Path:
    """The folder of a task's files (`TaskRunner.workspace` is its `workspace/`)."""
    return data_dir / "tasks" / task_id


class Retention:
    """Deletes tasks that ended more than `retain` seconds ago, now and then, until cancelled."""

    def __init__(
        self,
        store: Store,
        data_dir: Path,
        retain: float,
        *,
        interval: float | None = None,
        batch: int = BATCH,
        now: Callable[[], int] = time.time_ns,
    ) -> None:
        self._store = store
        self._data_dir = data_dir
        self._retain = retain
        self._interval = interval or min(max(retain / 4, 0.05), MAX_INTERVAL)
        self._batch = batch
        self._now = now  # nanoseconds since the epoch, as events' create_time; tests move it

    async def run(self) -> None:
        """Sweep every interval until cancelled; return at once when tasks are kept forever."""
        if self._retain <= 0:
            logger.info("retention: finished tasks are kept forever")
            return
        logger.info(
            "retention: finished tasks are deleted %s after they ended", _describe(self._retain)
        )
        while True:
            try:
                deleted = await self.sweep()
            except Exception:  # the loop must outlive any one failure (Redis away, a full disk)
                logger.exception("retention: the sweep failed; trying again")
            else:
                if deleted:
                    logger.info("retention: deleted %d finished tasks", deleted)
            # Jitter keeps the executors sharing a store from sweeping in lockstep.
            await asyncio.sleep(self._interval * random.uniform(0.8, 1.2))

    async def sweep(self) -> int:
        """Delete every task that ended before now minus `retain`; return how many."""
        cutoff = self._now() - round(self._retain * 1e9)
        total = 0
        while True:
            task_ids = await self._store.ended_before(cutoff, self._batch)
            if not task_ids:
                return total
            await asyncio.to_thread(delete_task_folders, self._data_dir, task_ids)
            deleted = await self._store.delete_ended(task_ids, cutoff)
            total += len(deleted)
            if not deleted or len(task_ids) < self._batch:
                return total  # the rest is for the next sweep


def delete_task_folders(data_dir: Path, task_ids: Sequence[str]) -> None:
    """Delete the tasks' folders (their workspaces and files); a folder already gone is fine."""
    for task_id in task_ids:
        if not _SAFE_ID.fullmatch(task_id):
            logger.warning("task id %r names no folder; left alone", task_id)
            continue
        # What another sweeper deleted first is skipped; the rest still goes.
        shutil.rmtree(task_folder(data_dir, task_id), onerror=_skip_missing)


def _skip_missing(
    function: Callable[..., object],
    path: str,
    excinfo: tuple[type[BaseException], BaseException, object],
) -> None:
    """rmtree's error handler: a file already gone is fine, anything else is raised."""
    if not isinstance(excinfo[1], FileNotFoundError):
        raise excinfo[1]


def _describe(seconds: float) -> str:
    for unit in ("w", "d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{int(seconds // _UNITS[unit])}{unit}"
    return f"{seconds:g}s"
