"""The tools as an agent sees them during one step: every use is recorded in the log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import cast

from mitosis.executor.events.log import EventLimitExceeded, EventLog
from mitosis.executor.tools.builtin import LINES_AT_ONCE, read_file, run_python
from mitosis.executor.tools.catalogue import ExecutorTools
from mitosis.executor.tools.fetch import FetchSettings, fetch_page
from mitosis.executor.tools.mcp import McpCalls
from mitosis.executor.tools.pages import DEFAULT_MAX_DOCUMENT_BYTES, PageWriter
from mitosis.executor.tools.sandbox.confine import Sandbox
from mitosis.executor.tools.web_search import format_results, web_search
from mitosis.executor.tools.workspace import Workspace
from mitosis.models.base import cited_sources, tool_argument
from mitosis.tool_errors import ToolError
from mitosis.tool_specs import FETCH_URL, WEB_SEARCH, ToolSpec, WebSource
from mitosis.v1 import task_pb2
from mitosis.words import counted

Event = task_pb2.TaskEvent
Source = task_pb2.LogLine

READ_FILE_PREVIEW_LINES = 12
"""Lines of a file that `read_file` shows in the log."""

OUTPUT_RETURNED_CHARS = 8192
"""How much of a script's output goes back to the agent (the log keeps all of it)."""

PAGE_RETURNED_CHARS = 20000
"""How much of a fetched page's readable text goes back to the agent."""


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
        tools: ExecutorTools | None = None,
    ) -> None:
        """`sandbox` confines python (None: the default one); `fetch` None turns fetch_url
        off; `tools` is the executor's catalogue (web_search, MCP servers), None for none."""
        self._log = log
        self._task_id = task_id
        self._step_index = step_index
        self._workspace = workspace
        self._tool_timeout = tool_timeout
        self._page_window = page_window
        self._sandbox = sandbox
        self._tools = tools or ExecutorTools(fetch=fetch)
        self._fetch = fetch if tools is None else tools.fetch
        self._max_document_bytes = max_document_bytes
        self._sources: dict[str, WebSource] = {}
        self._mcp: McpCalls | None = None
        if self._tools.mcp is not None:
            self._mcp = self._tools.mcp.calls(workspace, self._line)

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
        cited = cited_sources(self)
        try:
            async for piece in text:
                await page.write(piece)
            if cited:
                await page.write(sources_section(cited))
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

        async def on_lines(source: int, texts: Sequence[str]) -> None:
            output.extend(texts)
            await self._lines(source, texts)

        await run_python(
            code, self._workspace, on_lines, timeout=self._tool_timeout, sandbox=self._sandbox
        )
        return "\n".join(output)[-OUTPUT_RETURNED_CHARS:]

    def offered(self) -> Sequence[ToolSpec]:
        """The tools beyond the plan tools: fetch_url, web_search, the MCP servers' tools."""
        return self._tools.catalogue.extra()

    def sources(self) -> Sequence[WebSource]:
        return list(self._sources.values())

    async def call(self, name: str, arguments: Mapping[str, object]) -> str:
        if name == FETCH_URL.name and self._fetch is not None:
            return await self.fetch_url(tool_argument(arguments, "url", name))
        if name == WEB_SEARCH.name and self._tools.search is not None:
            return await self.web_search(tool_argument(arguments, "query", name))
        if self._mcp is not None and self._mcp.offers(name):
            return await self._mcp.call(name, arguments)
        raise ToolError(f"{name} is not available in this executor")

    async def fetch_url(self, url: str) -> str:
        if self._fetch is None:
            raise ToolError("fetch_url is turned off in this executor")
        await self.log(f"fetching {url}")
        page = await fetch_page(url, self._fetch)
        await self.log(
            f"fetched {url}: {page.title or '(no title)'}, {len(page.text):,} characters of "
            f"readable text from {page.media_type}"
        )
        self._found(WebSource(url=url, title=page.title or url, read=True))
        text = page.text[:PAGE_RETURNED_CHARS]
        if len(page.text) > len(text):
            text += f"\n… ({len(page.text) - len(text):,} more characters left out)"
        head = f"Title: {page.title}\nURL: {url}\n\n" if page.title else f"URL: {url}\n\n"
        return head + text

    async def web_search(self, query: str) -> str:
        settings = self._tools.search
        if settings is None:
            raise ToolError("web_search is turned off in this executor")
        await self.log(f"searching the web ({settings.provider}) for {query!r}")
        results = await web_search(query, settings)
        for result in results:
            self._found(WebSource(url=result.url, title=result.title))
        await self._executor_lines(
            [
                f"{len(results)} results for {query!r}",
                *(f"  {n}. {result.title} <{result.url}>" for n, result in enumerate(results, 1)),
            ]
        )
        return format_results(query, results)

    def _found(self, source: WebSource) -> None:
        known = self._sources.get(source.url)
        if known is None or (source.read and not known.read):
            self._sources[source.url] = source

    async def aclose(self) -> None:
        """Close what the step opened: its MCP servers' connections."""
        if self._mcp is not None:
            await self._mcp.aclose()

    async def _line(self, source: int, text: str) -> None:
        await self._lines(source, [text])

    async def _lines(self, source: int, texts: Sequence[str]) -> None:
        """Store a tool's output lines read together (python's, an MCP server's)."""
        kind = cast("task_pb2.LogLine.Source.ValueType", source)
        await self._append_lines(
            [
                Event(log_line=task_pb2.LogLine(step_index=self._step_index, source=kind, text=t))
                for t in texts
            ]
        )

    async def _executor_lines(self, texts: Sequence[str]) -> None:
        """Store the executor's own lines about one tool use."""
        await self._append_lines([executor_line(self._step_index, text) for text in texts])

    async def _append_lines(self, events: Sequence[Event]) -> None:
        """Store log lines LINES_AT_ONCE to an append; at the task's events limit, those
        that still fit first, one by one, as if they had come alone."""
        for first in range(0, len(events), LINES_AT_ONCE):
            together = events[first : first + LINES_AT_ONCE]
            try:
                await self._log.append(self._task_id, *together)
            except EventLimitExceeded:
                if len(together) == 1:
                    raise
                for event in together:  # the first that does not fit raises the limit again
                    await self._log.append(self._task_id, event)
                raise

    async def list_files(self) -> str:
        stamps = await asyncio.to_thread(self._workspace.snapshot)  # sizes without reading
        files = sorted(stamps)
        lines = [f"{stamps[p].size:>9,} B  {p}" for p in files]
        await self._executor_lines([f"{counted(len(files), 'file')} in the workspace", *lines])
        return "\n".join(lines) or "(the workspace is empty)"

    async def read_file(self, path: str) -> str:
        text = read_file(self._workspace, path)
        lines = text.splitlines()
        preview = [f"read {path}: {counted(len(lines), 'line')}"]
        preview += [f"  {line}" for line in lines[:READ_FILE_PREVIEW_LINES]]
        if len(lines) > READ_FILE_PREVIEW_LINES:
            preview.append(f"  … {len(lines) - READ_FILE_PREVIEW_LINES} more lines")
        await self._executor_lines(preview)
        return text

    async def log(self, text: str) -> None:
        await self._log.append(self._task_id, executor_line(self._step_index, text))


def _unwritable(file_name: str, error: OSError) -> ToolError:
    """Return the step's error for a document file the file system refused."""
    return ToolError(f"write_document cannot write {file_name!r}: {error.strerror}")


def sources_section(sources: Sequence[WebSource]) -> str:
    """Return the Markdown list of sources a document ends with, numbered as cited."""
    lines = [
        f"{number}. [{_escaped(source.title or source.url)}](<{source.url}>)"
        for number, source in enumerate(sources, 1)
    ]
    return "\n\n## Sources\n\n" + "\n".join(lines) + "\n"


def _escaped(text: str) -> str:
    """Return a title as Markdown link text: brackets and markup characters escaped."""
    return "".join(
        f"\\{char}" if char in "\\`*_[]<>#|" else char for char in " ".join(text.split())
    )


def executor_line(step_index: int, text: str) -> task_pb2.TaskEvent:
    """Return a log line from the executor itself (-1: about the task as a whole)."""
    line = task_pb2.LogLine(step_index=step_index, source=Source.SOURCE_EXECUTOR, text=text)
    return Event(log_line=line)
