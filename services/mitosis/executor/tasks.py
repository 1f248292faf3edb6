"""TaskService's logic without the wire: validation, creation, listing, cancel, artifacts."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import time
from collections.abc import AsyncIterator

from mitosis.errors import InvalidArgument, NotFound, ResourceExhausted
from mitosis.executor.eventlog import EventLog
from mitosis.executor.quotas import CreationGate, Limits, WatcherCount
from mitosis.executor.runner import TaskRunner
from mitosis.executor.watch import Batch, check_max_wait, watch_batches
from mitosis.executor.workspace import PathEscapeError
from mitosis.v1 import plan_pb2, task_pb2
from mitosis.validation import validate_plan, validate_task_text

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
ARTIFACT_CHUNK_BYTES = 64 * 1024
_TASK_ID = re.compile(r"[0-9a-f]{16}")


class Tasks:
    """What TaskService does, in plain calls that raise MitosisError subclasses."""

    def __init__(
        self,
        log: EventLog,
        runner: TaskRunner,
        model: str,
        heartbeat_interval: float,
        limits: Limits,
    ) -> None:
        self._log = log
        self._store = log.store
        self._hub = log.hub
        self._runner = runner
        self._model = model
        self._heartbeat_interval = heartbeat_interval
        self._limits = limits
        self._watchers = WatcherCount(limits)
        self._creation = CreationGate()

    async def create(self, text: str, require_approval: bool, owner: str) -> task_pb2.Task:
        """Store a new task of the key `owner` and start running it."""
        text = validate_task_text(text)
        task = task_pb2.Task(
            task_id=secrets.token_hex(8),
            text=text,
            state=task_pb2.Task.STATE_PENDING,
            require_approval=require_approval,
            owner=owner,
        )
        task.model = self._model
        async with self._creation.turn(owner):
            unfinished = await self._store.count_unfinished(owner)
            if unfinished >= self._limits.tasks_per_key:
                raise ResourceExhausted(
                    f"this key already has {unfinished} unfinished tasks, the most one key may"
                    f" have ({self._limits.tasks_per_key}); wait for one to end or cancel one"
                )
            task.create_time.FromNanoseconds(time.time_ns())
            task.update_time.CopyFrom(task.create_time)
            await self._store.create_task(task)
        # The first event at once: a watcher sees the task accepted before it is planned.
        accepted = task_pb2.TaskStateChanged(state=task.state, message="accepted")
        await self._log.append(task.task_id, task_pb2.TaskEvent(task_state_changed=accepted))
        self._runner.start(task.task_id)
        return await self.get(task.task_id, owner)

    async def get(self, task_id: str, owner: str) -> task_pb2.Task:
        """Return the task, or raise NotFound when it does not exist or is another key's."""
        task = await self._store.get_task(validate_task_id(task_id))
        # Another key's task is not found, so ids cannot be probed for what exists.
        if task is None or task.owner != owner:
            raise NotFound(f"task {task_id!r} does not exist")
        return task

    async def list(
        self, page_size: int, page_token: str, owner: str
    ) -> tuple[list[task_pb2.Task], str]:
        """Return a page of the key's tasks, newest first, and the token of the next page."""
        if page_size < 0:
            raise InvalidArgument(f"page_size must be 0 or more, not {page_size}")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = await self._store.list_tasks(size, decode_page_token(page_token), owner=owner)
        next_token = "" if page.next_cursor is None else encode_page_token(page.next_cursor)
        return page.tasks, next_token

    async def cancel(self, task_id: str, owner: str) -> task_pb2.Task:
        """Cancel the task and return it as it ended."""
        await self.get(task_id, owner)
        await self._runner.cancel(task_id)
        return await self.get(task_id, owner)

    async def approve(self, task_id: str, plan: plan_pb2.Plan | None, owner: str) -> task_pb2.Task:
        """Run a plan that waits for approval, as proposed or edited; return the task."""
        if plan is not None:
            validate_plan(plan)
        await self.get(task_id, owner)
        await self._runner.approve(task_id, plan)
        return await self.get(task_id, owner)

    async def watch(
        self, task_id: str, after_seq: int, owner: str, max_wait: float | None = None
    ) -> AsyncIterator[Batch]:
        """Yield the task's events after `after_seq` in batches, live, or bounded by max_wait."""
        check_max_wait(max_wait)
        await self.get(task_id, owner)
        with self._watchers.hold(task_id, owner):
            async for batch in watch_batches(
                self._store, self._hub, task_id, after_seq, self._heartbeat_interval, max_wait
            ):
                yield batch

    async def read_artifact(
        self, task_id: str, path: str, owner: str
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield (offset, chunk) pairs of a delivered file."""
        task = await self.get(task_id, owner)
        workspace = self._runner.workspace(task.task_id)
        delivered = any(artifact.path == path for artifact in task.artifacts)
        try:
            # Checked even for paths never delivered, so an escape attempt is named as one.
            workspace.resolve(path)
            if not delivered:
                raise NotFound(f"task {task_id} delivered no file {path!r}")
            file = workspace.open_for_read(path)
        except PathEscapeError as error:
            raise InvalidArgument(str(error)) from error
        except FileNotFoundError as error:
            raise NotFound(f"the file {path!r} of task {task_id} is gone") from error
        except OSError as error:  # replaced since by a folder, a pipe, …
            raise NotFound(
                f"the file {path!r} of task {task_id} is no longer a readable file"
                f" ({error.strerror})"
            ) from error
        with file:
            offset = 0
            while chunk := file.read(ARTIFACT_CHUNK_BYTES):
                yield offset, chunk
                offset += len(chunk)


def validate_task_id(task_id: str) -> str:
    """Return the id when it is well formed, or raise (InvalidArgument, or NotFound)."""
    if not task_id:
        raise InvalidArgument("task_id is required")
    if not _TASK_ID.fullmatch(task_id):
        raise NotFound(f"task {task_id!r} does not exist")
    return task_id


def encode_page_token(cursor: tuple[int, str]) -> str:
    """Return an opaque token for a listing cursor."""
    return base64.urlsafe_b64encode(f"{cursor[0]}:{cursor[1]}".encode()).decode()


def decode_page_token(token: str) -> tuple[int, str] | None:
    """Return the cursor in a token ('' is the first page), or raise InvalidArgument."""
    if not token:
        return None
    try:
        create_ns, task_id = base64.urlsafe_b64decode(token.encode()).decode().split(":", 1)
        cursor = int(create_ns), validate_task_id(task_id)
        if not 0 <= cursor[0] < 2**63:
            raise ValueError("the creation time is out of range")
        return cursor
    except (ValueError, binascii.Error, UnicodeDecodeError, NotFound) as error:
        raise InvalidArgument(f"page_token {token!r} is not one ListTasks gave") from error
