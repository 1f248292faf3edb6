"""A document being written as a page: its text is coalesced into deltas and saved to a file."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path

from mitosis.executor.events.log import EventLog
from mitosis.executor.store.base import LeaseLost, StoreUnavailable, TaskEnded
from mitosis.tool_errors import ToolLimitExceeded
from mitosis.v1 import task_pb2

DEFAULT_MAX_DOCUMENT_BYTES = 8 << 20
"""Bytes one page may hold: hundreds of times a long report."""


class PageWriter:
    """Streams one page's text into the log as deltas and into its file.

    Pieces written within `window` seconds are sent as one delta (or sooner, once `max_bytes`
    are waiting), so a document of 10,000 tokens is a few hundred events, not 10,000. A page
    holds at most `max_document_bytes`; text beyond that raises ToolLimitExceeded.
    """

    def __init__(
        self,
        log: EventLog,
        task_id: str,
        page_number: int,
        path: Path,
        *,
        window: float = 0.05,
        max_bytes: int = 2048,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
    ) -> None:
        self._log = log
        self._task_id = task_id
        self._page_number = page_number
        self._path = path
        self._window = window
        self._max_bytes = max_bytes
        self._max_document_bytes = max_document_bytes
        self._file_name = path.name
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._offset = 0
        self._sha256 = hashlib.sha256()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    async def open(self, title: str, step_index: int, file_name: str) -> None:
        """Start the page: announce it and create its file empty."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._path.write_bytes(b"")
        self._file_name = file_name
        started = task_pb2.PageStarted(
            page_number=self._page_number, title=title, step_index=step_index, file_name=file_name
        )
        await self._log.append(self._task_id, task_pb2.TaskEvent(page_started=started))
        self._flusher = asyncio.create_task(self._flush_after_window())

    async def write(self, text: str) -> None:
        """Add text to the page; it reaches watchers within the window."""
        self._raise_failure()
        if not text:
            return
        size = len(text.encode())
        if self._offset + self._pending_bytes + size > self._max_document_bytes:
            raise ToolLimitExceeded(
                f"the document {self._file_name!r} would be larger than the document size"
                f" limit ({self._max_document_bytes:,} bytes)"
            )
        self._pending.append(text)
        self._pending_bytes += size
        if self._pending_bytes >= self._max_bytes:
            await self._flush()
        else:
            self._wake.set()

    async def finish(self) -> tuple[int, str]:
        """Flush what is left and deliver the page; return its size and SHA-256."""
        await self._stop_flusher()
        self._raise_failure()
        await self._flush()
        digest = self._sha256.hexdigest()
        finished = task_pb2.PageFinished(
            page_number=self._page_number, size_bytes=self._offset, sha256=digest
        )
        await self._log.append(self._task_id, task_pb2.TaskEvent(page_finished=finished))
        return self._offset, digest

    async def abandon(self) -> None:
        """Mark the page abandoned: its step was interrupted and no file is delivered.

        When the task has ended, its lease moved on or the store is away, the page is left
        to whoever ends or resumes the task: both close every open page.
        """
        await self._stop_flusher()
        finished = task_pb2.PageFinished(page_number=self._page_number, abandoned=True)
        async with self._lock:  # after a delta still being appended
            with contextlib.suppress(TaskEnded, LeaseLost, StoreUnavailable):
                await self._log.append(self._task_id, task_pb2.TaskEvent(page_finished=finished))

    async def _flush_after_window(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._window)
            self._wake.clear()
            flush = asyncio.ensure_future(self._flush())
            # Its failure is kept even when the flusher is stopped while it runs, so it is
            # never an error nobody retrieved.
            flush.add_done_callback(self._keep_failure)
            try:
                # Shielded: stopping the flusher must not cut a delta out of the page.
                await asyncio.shield(flush)
            except Exception:  # the store is away, the task ended or its lease moved on
                return  # raised to the writer at its next write or finish

    def _keep_failure(self, flush: asyncio.Future[None]) -> None:
        if not flush.cancelled() and (error := flush.exception()) is not None:
            self._failure = self._failure or error

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None

    async def _flush(self) -> None:
        async with self._lock:
            if not self._pending:
                return
            taken = len(self._pending)
            text = "".join(self._pending[:taken])
            data = text.encode()
            delta = task_pb2.PageDelta(
                page_number=self._page_number, offset=self._offset, text=text
            )
            # Stored first: when the append fails, the text stays pending and nothing moves on,
            # so the page's stream, its file and its offsets never disagree.
            await self._log.append(self._task_id, task_pb2.TaskEvent(page_delta=delta))
            del self._pending[:taken]  # pieces written meanwhile stay for the next delta
            self._pending_bytes -= len(data)
            with self._path.open("ab") as file:
                file.write(data)
            self._sha256.update(data)
            self._offset += len(data)
