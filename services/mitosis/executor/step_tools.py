"""The tools as an agent sees them during one step: every use is recorded in the log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

from mitosis.executor.eventlog import EventLog
from mitosis.executor.fetch import FetchSettings, fetch_url
from mitosis.executor.pages import DEFAULT_MAX_DOCUMENT_BYTES, PageWriter
from mitosis.executor.sandbox import Sandbox
from mitosis.executor.tools import ToolError, read_file, run_python
from mitosis.executor.workspace import Workspace
from mitosis.v1 import task_pb2

Event = task_pb2.TaskEvent
Source = task_pb2.LogLine

READ_FILE_PREVIEW_LINES = 12
"""Lines of a file that `read_file` shows in the log."""

OUTPUT_RETURNED_CHARS = 8192
"""How much of a script's output goes back to the agent (the log keeps all of it)."""


class RecordedTools:
    """StepTools for one step of one task, in its workspace."""

    def __init__(
        self,
        log: EventLog,
        task_id: str,
        step_index: int,
        workspace: Workspace,
        *,
        tool_timeout: float,
        page_window: float,
        sandbox: Sandbox | None = None,
        fetch: FetchSettings | None = None,
        max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES,
    ) -> None:
        """`sandbox` confines python (None: the default one); `fetch` None turns fetch_url
        off."""
        self._log = log
        self._task_id = task_id
        self._step_index = step_index
        self._workspace = workspace
        self._tool_timeout = tool_timeout
        self._page_window = page_window
        self._sandbox = sandbox
        self._fetch = fetch
        self._max_document_bytes = max_document_bytes

    async def write_document(self, file_name: str, title: str, text: AsyncIterator[str]) -> str:
        path = self._workspace.resolve(file_name)
        task = await self._log.store.get_task(self._task_id)
        page_number = (len(task.pages) if task is not None else 0) + 1
        page = PageWriter(
            self._log,
            self._task_id,
            page_number,
            path,
            window=self._page_window,
            max_document_bytes=self._max_document_bytes,
        )
        try:
            await page.open(title, self._step_index, file_name)
        except OSError as error:
            raise _unwritable(file_name, error) from None
        try:
            async for piece in text:
                await page.write(piece)
            size, _ = await page.finish()
        except OSError as error:
            await page.abandon()
            raise _unwritable(file_name, error) from None
        except BaseException:
            await page.abandon()
            raise
        return f"wrote {file_name} as page {page_number} ({size:,} bytes)"

    async def python(self, code: str) -> str:
        output: list[str] = []

        async def on_line(source: int, text: str) -> None:
            output.append(text)
            kind = cast("task_pb2.LogLine.Source.ValueType", source)
            line = task_pb2.LogLine(step_index=self._step_index, source=kind, text=text)
            await self._log.append(self._task_id, Event(log_line=line))

        await run_python(
            code, self._workspace, on_line, timeout=self._tool_timeout, sandbox=self._sandbox
        )
        return "\n".join(output)[-OUTPUT_RETURNED_CHARS:]

    async def fetch_url(self, url: str) -> str:
        if self._fetch is None:
            raise ToolError("fetch_url is turned off in this executor")
        await self.log(f"fetching {url}")
        text, media_type = await fetch_url(url, self._fetch)
        await self.log(f"fetched {url}: {len(text):,} characters of {media_type}")
        return text

    async def list_files(self) -> str:
        stamps = await asyncio.to_thread(self._workspace.snapshot)  # sizes without reading
        files = sorted(stamps)
        lines = [f"{stamps[p].size:>9,} B  {p}" for p in files]
        await self.log(f"{len(files)} files in the workspace")
        for line in lines:
            await self.log(line)
        return "\n".join(lines) or "(the workspace is empty)"

    async def read_file(self, path: str) -> str:
        text = read_file(self._workspace, path)
        lines = text.splitlines()
        await self.log(f"read {path}: {len(lines)} lines")
        for line in lines[:READ_FILE_PREVIEW_LINES]:
            await self.log(f"  {line}")
        if len(lines) > READ_FILE_PREVIEW_LINES:
            await self.log(f"  … {len(lines) - READ_FILE_PREVIEW_LINES} more lines")
        return text

    async def log(self, text: str) -> None:
        await self._log.append(self._task_id, executor_line(self._step_index, text))


def _unwritable(file_name: str, error: OSError) -> ToolError:
    """Return the step's error for a document file the file system refused."""
    return ToolError(f"write_document cannot write {file_name!r}: {error.strerror}")


def executor_line(step_index: int, text: str) -> task_pb2.TaskEvent:
    """Return a log line from the executor itself (-1: about the task as a whole)."""
    line = task_pb2.LogLine(step_index=step_index, source=Source.SOURCE_EXECUTOR, text=text)
    return Event(log_line=line)
