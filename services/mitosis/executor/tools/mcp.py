"""Tools from MCP servers, through the official `mcp` SDK: configured, listed, called, confined.

The tools configuration file (`--tools-config`, TOML or JSON) names servers in the common
`mcpServers` shape: `command`, `args`, `env` for a stdio server, `url`, `headers` for a
streamable-HTTP one; and per server `allowedTools` (an allow-list; all tools without it),
`timeout` (seconds one call may take once the server has started, default 60; starting may
take START_SECONDS more) and `maxOutputChars` (default 20,000).
`${VAR}` in `env` and `headers` values is taken from the executor's environment, so keys stay
out of the file.

At start the executor lists every server's tools; each becomes a catalogue entry named
`server__tool`. During a step, a server is connected at its first call and stays connected for
the step's later calls; it is closed when the step ends. A call that takes longer than the
server's time limit, or a server that dies, fails that call with a ToolError (never the
executor); the connection is dropped and made anew for the next call.

A stdio server runs confined as the python tool is in "plain" mode (`mcp_boot`): a clean
environment (PATH, HOME and TMPDIR in the workspace's hidden folder, LANG, and the `env` the
configuration gives: nothing inherited, so none of the executor's keys), the task's workspace
as its working folder, no_new_privs, CPU, address-space, file-size, process and open-file
limits, a parent-death signal, its own session (killed with its process group at the end).
It does not get its own uid or namespaces: it has the network (servers usually need it) and
the executor user's view of the filesystem.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import string
import sys
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx2
import mcp_types
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from mitosis.executor.tools.sandbox import mcp_boot
from mitosis.executor.tools.sandbox.confine import SandboxLimits, _threads_of
from mitosis.executor.tools.workspace import HIDDEN_DIR, Workspace
from mitosis.tool_errors import ToolError
from mitosis.tool_specs import ToolSpec

logger = logging.getLogger(__name__)

SEPARATOR = "__"
"""Between a server's name and its tool's in the catalogue: `search__find`."""

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BOOT = Path(mcp_boot.__file__)
_STDERR_FILE = "mcp-{name}.stderr"
_CLOSE_SECONDS = 10.0
START_SECONDS = 30.0
"""Seconds a server may take to start and answer `initialize`, before and apart from the
time limit of its calls (a Python server's imports alone take seconds on a loaded machine)."""

LineLog = Callable[[int, str], Awaitable[None]]
"""Receives a log line for watchers: a `LogLine.Source` value and the text."""


class ToolsConfigError(Exception):
    """The tools configuration file cannot be used; the message says where and why."""


@dataclass(frozen=True)
class McpLimits:
    """The confinement of a stdio server's process."""

    cpu_seconds: int = 600
    memory_bytes: int = 4 << 30
    """Address space per process: more than the python tool's, as runtimes such as Node.js
    reserve much address space they never use."""
    file_size_bytes: int = SandboxLimits.file_size_bytes
    processes: int = SandboxLimits.processes
    open_files: int = 1024


@dataclass(frozen=True)
class McpServerConfig:
    """One MCP server of the tools configuration."""

    name: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    url: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    allowed_tools: tuple[str, ...] | None = None
    timeout: float = 60.0
    max_output_chars: int = 20000
    limits: McpLimits = field(default_factory=McpLimits)

    @property
    def transport(self) -> str:
        """ "stdio" or "http"."""
        return "stdio" if self.command else "http"


def load_tools_config(path: Path, env: Mapping[str, str]) -> list[McpServerConfig]:
    """Return the MCP servers a TOML or JSON tools configuration file names."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ToolsConfigError(f"cannot read the tools configuration {path}: {error}") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as error:
        raise ToolsConfigError(f"{path} is not valid {path.suffix or 'TOML'}: {error}") from None
    servers = data.get("mcpServers", {}) if isinstance(data, dict) else None
    if not isinstance(servers, dict):
        raise ToolsConfigError(f"{path}: mcpServers must be a table of servers")
    return [_server(path, name, entry, env) for name, entry in servers.items()]


def _server(path: Path, name: str, entry: object, env: Mapping[str, str]) -> McpServerConfig:
    where = f"{path}: mcpServers.{name}"
    if not _NAME.match(name) or SEPARATOR in name:
        raise ToolsConfigError(f"{where}: a server's name is letters, digits, - and single _ only")
    if not isinstance(entry, dict):
        raise ToolsConfigError(f"{where} must be a table")
    command, url = entry.get("command", ""), entry.get("url", "")
    if bool(command) == bool(url) or not isinstance(command, str) or not isinstance(url, str):
        raise ToolsConfigError(f"{where} needs either command (stdio) or url (streamable HTTP)")
    if url and not url.startswith(("http://", "https://")):
        raise ToolsConfigError(f"{where}: url must be http:// or https://")
    allowed = entry.get("allowedTools")
    if allowed is not None and (
        not isinstance(allowed, list) or not all(isinstance(item, str) for item in allowed)
    ):
        raise ToolsConfigError(f"{where}: allowedTools must be a list of tool names")
    try:
        timeout = float(entry.get("timeout", 60))
        max_output = int(entry.get("maxOutputChars", 20000))
        memory = int(entry.get("memoryMiB", McpLimits.memory_bytes >> 20)) << 20
    except (TypeError, ValueError):
        raise ToolsConfigError(f"{where}: timeout, maxOutputChars, memoryMiB are numbers") from None
    if timeout <= 0 or max_output < 100:
        raise ToolsConfigError(f"{where}: timeout must be > 0 and maxOutputChars >= 100")
    return McpServerConfig(
        name=name,
        command=command,
        args=tuple(str(arg) for arg in entry.get("args", ())),
        env=_expanded(entry.get("env", {}), env, f"{where}.env"),
        url=url,
        headers=_expanded(entry.get("headers", {}), env, f"{where}.headers"),
        allowed_tools=tuple(allowed) if allowed is not None else None,
        timeout=timeout,
        max_output_chars=max_output,
        limits=McpLimits(memory_bytes=memory),
    )


def _expanded(value: object, env: Mapping[str, str], where: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ToolsConfigError(f"{where} must be a table of strings")
    return {
        str(key): string.Template(str(text)).safe_substitute(env) for key, text in value.items()
    }


# Connections ------------------------------------------------------------------------------


@dataclass
class _Request:
    tool: str
    arguments: Mapping[str, object] | None
    """None asks for the tool list instead of a call."""
    answer: asyncio.Future[Any]


class _Connection:
    """One live connection to a server, owned by its own asyncio task: the SDK's task groups
    stay inside that task, and cancelling it (a time limit) kills a stdio server's process."""

    def __init__(self, config: McpServerConfig, workspace: Workspace) -> None:
        self.config = config
        self.workspace = workspace
        self._requests: asyncio.Queue[_Request | None] = asyncio.Queue()
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Done once the server has started and answered `initialize`."""
        self._task = asyncio.create_task(self._serve(), name=f"mcp server {config.name}")
        # Its failure reaches the caller through `request`; never "exception not retrieved".
        self._task.add_done_callback(lambda task: task.cancelled() or task.exception())
        self.stderr_path = workspace.root / HIDDEN_DIR / _STDERR_FILE.format(name=config.name)

    @property
    def alive(self) -> bool:
        return not self._task.done()

    async def request(self, tool: str, arguments: Mapping[str, object] | None) -> Any:
        await self._started(tool)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._requests.put(_Request(tool, arguments, answer))
        done, _ = await asyncio.wait(
            [answer, self._task], timeout=self.config.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if answer.done():
            return answer.result()
        answer.cancel()
        if self._task in done:  # the connection ended before answering: the server died
            raise self._death()
        await self.abort()
        raise ToolError(
            f"the MCP server {self.config.name} did not answer {tool} within "
            f"{self.config.timeout:g} s (its time limit); it was stopped and starts again "
            "for the next call"
        )

    async def _started(self, tool: str) -> None:
        """Wait for the server to start (up to START_SECONDS): the time limit of a call
        counts from there, not from the server's start-up."""
        if not self._ready.done():
            await asyncio.wait(
                [self._ready, self._task],
                timeout=START_SECONDS,
                return_when=asyncio.FIRST_COMPLETED,
            )
        if self._ready.done():
            return
        if self._task.done():  # it ended while starting: the server died or would not start
            raise self._death()
        await self.abort()
        raise ToolError(
            f"the MCP server {self.config.name} did not start within {START_SECONDS:g} s, so"
            f" {tool} was not asked; it starts again for the next call"
        )

    async def close(self) -> None:
        if self._task.done():
            return
        await self._requests.put(None)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), _CLOSE_SECONDS / 2)
        if not self._task.done():
            self._task.cancel()
        await asyncio.wait([self._task], timeout=_CLOSE_SECONDS)

    async def abort(self) -> None:
        """End the connection now, in the middle of a call (a stdio server is killed)."""
        self._task.cancel()
        await asyncio.wait([self._task], timeout=_CLOSE_SECONDS)

    def _death(self) -> _Dead:
        """The error of a connection that ended on its own: how the server died."""
        error = self._task.exception() if not self._task.cancelled() else None
        return _Dead(self._died(error))

    def _died(self, error: BaseException | None) -> str:
        why = f": {_describe(error)}" if error is not None else ""
        last = _last_line(self.stderr_path)
        said = f" (its last words on stderr: {last})" if last else ""
        return f"the MCP server {self.config.name} stopped{why}{said}"

    async def _serve(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            client = await stack.enter_async_context(await self._client(stack))
            self._ready.set_result(None)
            while (request := await self._requests.get()) is not None:
                try:
                    if request.arguments is None:
                        result: Any = await _all_tools(client)
                    else:
                        result = await client.call_tool(request.tool, dict(request.arguments))
                except Exception as error:  # the connection is broken: end it
                    if not request.answer.done():
                        request.answer.set_exception(_Dead(self._died(error)))
                    return
                if not request.answer.done():
                    request.answer.set_result(result)

    async def _client(self, stack: contextlib.AsyncExitStack) -> Client:
        config = self.config
        if config.transport == "http":
            http = await stack.enter_async_context(
                httpx2.AsyncClient(headers=dict(config.headers), timeout=config.timeout)
            )
            return Client(streamable_http_client(config.url, http_client=http))
        errlog = stack.enter_context(_stderr_file(self.stderr_path))
        return Client(stdio_client(self._parameters(), errlog=errlog))

    def _parameters(self) -> StdioServerParameters:
        """The command that starts the server confined (see mcp_boot), in the workspace."""
        config = self.config
        home = self.workspace.root / HIDDEN_DIR / "mcp" / config.name
        (home / "tmp").mkdir(parents=True, exist_ok=True)
        environment = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(home),
            "TMPDIR": str(home / "tmp"),
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            **config.env,
        }
        limits = config.limits
        spec = {
            "command": config.command,
            "args": list(config.args),
            "env": environment,
            "limits": {
                "cpu_seconds": limits.cpu_seconds,
                "memory_bytes": limits.memory_bytes,
                "file_size_bytes": limits.file_size_bytes,
                # RLIMIT_NPROC counts every process of the executor's user, as in "plain" mode.
                "processes": limits.processes + _threads_of(os.getuid()),
                "open_files": limits.open_files,
            },
        }
        return StdioServerParameters(
            command=sys.executable,
            args=["-I", "-S", str(_BOOT), json.dumps(spec)],
            env={},
            cwd=str(self.workspace.root),
        )


class _Dead(ToolError):
    """The server's connection ended; the message says how."""


@contextlib.contextmanager
def _stderr_file(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    file: IO[str] = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by the stack
    try:
        yield file
    finally:
        file.close()


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in error.exceptions)
    return f"{type(error).__name__}: {error}".splitlines()[0]


async def _all_tools(client: Client) -> list[mcp_types.Tool]:
    tools: list[mcp_types.Tool] = []
    cursor: str | None = None
    while True:
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            return tools


# The servers ---------------------------------------------------------------------------


class McpServers:
    """The configured servers and the tools each offers (listed once, at start)."""

    def __init__(self, configs: Sequence[McpServerConfig], scratch: Path) -> None:
        self.configs = {config.name: config for config in configs}
        self._scratch = scratch
        self._specs: list[ToolSpec] = []
        self._tools: dict[str, tuple[McpServerConfig, str]] = {}
        self.problems: list[str] = []

    async def start(self) -> None:
        """List every server's tools; a server that cannot be listed offers none (logged)."""
        for config in self.configs.values():
            connection = _Connection(config, Workspace(self._scratch / config.name))
            try:
                tools = await connection.request("tools/list", None)
            except ToolError as error:
                self.problems.append(str(error))
                logger.warning("MCP server %s offers no tools: %s", config.name, error)
                continue
            finally:
                await connection.close()
            self._add(config, tools)

    def _add(self, config: McpServerConfig, tools: list[mcp_types.Tool]) -> None:
        listed = {tool.name: tool for tool in tools}
        allowed = config.allowed_tools if config.allowed_tools is not None else tuple(listed)
        for missing in sorted(set(allowed) - set(listed)):
            logger.warning("MCP server %s has no tool %r to allow", config.name, missing)
        for name in allowed:
            tool = listed.get(name)
            full = f"{config.name}{SEPARATOR}{name}"
            if tool is None or full in self._tools:
                continue
            if not _NAME.match(full):
                logger.warning(
                    "MCP tool %s is left out: names are at most 64 of [A-Za-z0-9_-]", full
                )
                continue
            schema = dict(tool.input_schema or {})
            schema.setdefault("type", "object")
            schema.setdefault("properties", {})
            self._specs.append(
                ToolSpec(
                    name=full,
                    description=f"(from the MCP server {config.name}) {tool.description or name}",
                    parameters=schema,
                    server=config.name,
                    strict=False,
                )
            )
            self._tools[full] = (config, name)
        logger.info(
            "MCP server %s (%s): %d tools offered: %s",
            config.name,
            config.transport,
            sum(spec.server == config.name for spec in self._specs),
            ", ".join(spec.name for spec in self._specs if spec.server == config.name) or "none",
        )

    def specs(self) -> tuple[ToolSpec, ...]:
        """The catalogue entries of the servers' allowed tools."""
        return tuple(self._specs)

    def calls(self, workspace: Workspace, log: LineLog) -> McpCalls:
        """Return the connections of one step, in its task's workspace."""
        return McpCalls(self._tools, workspace, log)


class McpCalls:
    """One step's calls to MCP servers: a connection per server, made at its first call."""

    def __init__(
        self,
        tools: Mapping[str, tuple[McpServerConfig, str]],
        workspace: Workspace,
        log: LineLog,
    ) -> None:
        self._tools = tools
        self._workspace = workspace
        self._log = log
        self._connections: dict[str, _Connection] = {}

    def offers(self, name: str) -> bool:
        return name in self._tools

    async def call(self, name: str, arguments: Mapping[str, object]) -> str:
        """Call the tool, logging the call and its result; raise ToolError when it fails."""
        from mitosis.v1 import task_pb2  # the log's sources

        config, tool = self._tools[name]
        where = f"mcp {config.name}/{tool}"
        shown = json.dumps(arguments, ensure_ascii=False)
        await self._log(task_pb2.LogLine.SOURCE_EXECUTOR, f"{where}: call {_short(shown, 300)}")
        connection = self._connections.get(config.name)
        if connection is None or not connection.alive:
            connection = _Connection(config, self._workspace)
            self._connections[config.name] = connection
        try:
            result: mcp_types.CallToolResult = await connection.request(tool, arguments)
        except ToolError as error:
            await connection.close()
            await self._log(task_pb2.LogLine.SOURCE_STDERR, f"{where}: failed: {error}")
            if isinstance(error, _Dead):
                raise ToolError(f"{error}; it starts again for the next call") from None
            raise
        text = _text_of(result)
        capped = text[: config.max_output_chars]
        if len(text) > len(capped):
            capped += (
                f"\n… (output cut at {config.max_output_chars:,} of {len(text):,} characters, "
                f"the {config.name} server's output cap)"
            )
        if result.is_error:
            await self._log(task_pb2.LogLine.SOURCE_STDERR, f"{where}: error: {_short(text, 500)}")
            raise ToolError(f"{name} reported an error: {capped}")
        lines = capped.splitlines() or ["(no output)"]
        await self._log(
            task_pb2.LogLine.SOURCE_EXECUTOR,
            f"{where}: result, {len(text):,} characters in {len(lines)} lines",
        )
        for line in lines[:8]:
            await self._log(task_pb2.LogLine.SOURCE_STDOUT, f"  {_short(line, 500)}")
        if len(lines) > 8:
            await self._log(task_pb2.LogLine.SOURCE_STDOUT, f"  … {len(lines) - 8} more lines")
        return capped

    async def aclose(self) -> None:
        """Close every connection of the step (a stdio server's process ends)."""
        connections, self._connections = list(self._connections.values()), {}
        await asyncio.gather(*(connection.close() for connection in connections))


def _text_of(result: mcp_types.CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, mcp_types.TextContent):
            parts.append(block.text)
        else:
            kind = getattr(block, "mime_type", None) or getattr(block, "type", "content")
            parts.append(f"[{kind} left out: only text is passed on]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts)


def _short(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
