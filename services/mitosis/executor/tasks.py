"""TaskService's logic without the wire: validation, creation, listing, cancel, artifacts."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import secrets
import time
from collections.abc import AsyncIterator

from mitosis.errors import (
    READ_OFFSET_OUT_OF_RANGE,
    TASK_QUOTA_EXCEEDED,
    InvalidArgument,
    MitosisError,
    NotFound,
    OutOfRange,
    ResourceExhausted,
)
from mitosis.executor.events.log import EventLog
from mitosis.executor.events.watch import Batch, check_max_wait, watch_batches
from mitosis.executor.running.quotas import CreationGate, Limits, WatcherCount
from mitosis.executor.running.runner import TaskRunner
from mitosis.rpc.auth import may_see
from mitosis.tool_errors import PathEscapeError
from mitosis.v1 import plan_pb2, task_pb2
from mitosis.validation import shown, validate_plan, validate_task_text

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
MAX_PAGE_BYTES = 1024 * 1024 - 1024
"""The most bytes of tasks one ListTasks page holds: gRPC clients refuse messages over 4 MiB
by default, and 1,000 tasks in full are about 6.5 MB (1 KiB is kept for the token)."""
ARTIFACT_CHUNK_BYTES = 64 * 1024
_TASK_ID = re.compile(r"[0-9a-f]{16}")
_REQUEST_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


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

    async def create(
        self, text: str, require_approval: bool, owner: str, request_id: str = ""
    ) -> task_pb2.Task:
        """Store a new task of the key `owner` and start running it.

        With a `request_id` the key used before, return the task it created and start none.
        """
        text = validate_task_text(text)
        if request_id:
            task_id = task_id_for_request(owner, validate_request_id(request_id))
        else:
            task_id = secrets.token_hex(8)
        task = task_pb2.Task(
            task_id=task_id,
            text=text,
            state=task_pb2.Task.STATE_PENDING,
            require_approval=require_approval,
            owner=owner,
        )
        task.model = self._model
        async with self._creation.turn(owner):
            # A retry is answered before the quota is counted: the task it asks for exists.
            if request_id and (earlier := await self._store.get_task(task_id)) is not None:
                return _requested_before(earlier, owner, request_id)
            unfinished = await self._store.count_unfinished(owner)
            if unfinished >= self._limits.tasks_per_key:
                raise ResourceExhausted(
                    f"this key already has {unfinished} unfinished tasks, the most one key may"
                    f" have ({self._limits.tasks_per_key}); wait for one to end or cancel one",
                    reason=TASK_QUOTA_EXCEEDED,
                    metadata={"limit": str(self._limits.tasks_per_key)},
                )
            task.create_time.FromNanoseconds(time.time_ns())
            task.update_time.CopyFrom(task.create_time)
            try:
                await self._store.create_task(task)
            except Exception:
                # Another executor (same Redis) created it from the same request_id first:
                # the store refused our copy, and the retry gets the task that won.
                earlier = await self._store.get_task(task_id) if request_id else None
                if earlier is None:
                    raise
                return _requested_before(earlier, owner, request_id)
        # The first event at once: a watcher sees the task accepted before it is planned.
        accepted = task_pb2.TaskStateChanged(state=task.state, message="accepted")
        await self._log.append(task.task_id, task_pb2.TaskEvent(task_state_changed=accepted))
        self._runner.start(task.task_id)
        return await self.get(task.task_id, owner)

    async def get(self, task_id: str, owner: str) -> task_pb2.Task:
        """Return the task, or raise NotFound when it does not exist or is another key's."""
        task = await self._store.get_task(validate_task_id(task_id))
        # Another key's task is not found, so ids cannot be probed for what exists.
        if task is None or not may_see(task.owner, owner):
            raise NotFound(f"task {task_id!r} does not exist")
        return task

    async def list(
        self,
        page_size: int,
        page_token: str,
        owner: str,
        view: task_pb2.Task.View.ValueType = task_pb2.Task.VIEW_BASIC,
    ) -> tuple[list[task_pb2.Task], str]:
        """Return a page of the key's tasks in `view`, newest first, and the next page's token.

        The page ends after `page_size` tasks or before MAX_PAGE_BYTES, whichever comes first.
        """
        if page_size < 0:
            raise InvalidArgument(f"page_size must be 0 or more, not {page_size}")
        if view not in task_pb2.Task.View.values():
            raise InvalidArgument(f"view {view} is not a Task.View")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        page = await self._store.list_tasks(size, decode_page_token(page_token), owner=owner)
        tasks = fitting_page([in_view(task, view) for task in page.tasks], MAX_PAGE_BYTES)
        next_cursor = page.next_cursor
        if len(tasks) < len(page.tasks):
            last = tasks[-1]
            next_cursor = (last.create_time.ToNanoseconds(), last.task_id)
        next_token = "" if next_cursor is None else encode_page_token(next_cursor)
        return tasks, next_token

    async def cancel(self, task_id: str, owner: str) -> task_pb2.Task:
        """Cancel the task and return it as it ended."""
        await self.get(task_id, owner)
        await self._runner.cancel(task_id)
        return await self.get(task_id, owner)

    async def delete(self, task_id: str, owner: str) -> None:
        """Delete the task (record, events, files), cancelling it first if it has not ended."""
        await self.get(task_id, owner)
        await self._runner.delete(task_id)

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
        self, task_id: str, path: str, owner: str, read_offset: int = 0
    ) -> AsyncIterator[tuple[int, bytes]]:
        """Yield (offset, chunk) pairs of a delivered file, from byte `read_offset` on."""
        if read_offset < 0:
            raise InvalidArgument(f"read_offset must be 0 or more, not {read_offset}")
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
            size = os.fstat(file.fileno()).st_size
            if read_offset > size:
                raise OutOfRange(
                    f"read_offset {read_offset} is beyond the end of {path!r}"
                    f" ({size} bytes); resume from at most {size}",
                    reason=READ_OFFSET_OUT_OF_RANGE,
                    metadata={"size_bytes": str(size)},
                )
            offset = file.seek(read_offset)
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


def validate_request_id(request_id: str) -> str:
    """Return a CreateTask request_id in its canonical (lower-case) form, or raise."""
    if not _REQUEST_ID.fullmatch(request_id.lower()):
        raise InvalidArgument(
            f"request_id {shown(request_id)} is not a UUID"
            " (such as 123e4567-e89b-12d3-a456-426614174000)"
        )
    return request_id.lower()


def task_id_for_request(owner: str, request_id: str) -> str:
    """Return the id of the task a key's CreateTask request_id creates.

    Derived, not stored: every executor of a cluster finds the same id for a retry without
    an index, and the key's name in the hash keeps two keys' ids apart.
    """
    digest = hashlib.blake2b(
        request_id.encode(), key=owner.encode(), digest_size=8, person=b"mitosis.request"
    )
    return digest.hexdigest()


def _requested_before(task: task_pb2.Task, owner: str, request_id: str) -> task_pb2.Task:
    """Return the task an earlier CreateTask with the same request_id created."""
    if task.owner != owner:  # a random id of another key's task: 1 in 2^64
        raise MitosisError(f"request_id {request_id} cannot be used; make a new one")
    return task


def in_view(task: task_pb2.Task, view: task_pb2.Task.View.ValueType) -> task_pb2.Task:
    """Return the task with only the fields `view` shows (BASIC when unspecified)."""
    if view == task_pb2.Task.VIEW_FULL:
        return task
    basic = task_pb2.Task()
    basic.CopyFrom(task)
    basic.ClearField("steps")
    basic.ClearField("artifacts")
    basic.ClearField("pages")
    basic.ClearField("plan_summary")
    return basic


def fitting_page(tasks: list[task_pb2.Task], max_bytes: int) -> list[task_pb2.Task]:
    """Return the first tasks that fit in `max_bytes` once encoded; at least one, if any.

    One task over the limit still goes alone, so paging always moves on.
    """
    total = 0
    for count, task in enumerate(tasks):
        total += task.ByteSize() + 6  # the field's tag and length prefix, at most
        if total > max_bytes and count:
            return tasks[:count]
    return tasks


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
