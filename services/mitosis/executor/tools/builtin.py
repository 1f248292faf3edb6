"""The tools a plan step may run in its task's workspace: python, list_files, read_file."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import math
import os
import signal
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

from mitosis.executor.tools.sandbox.boot import SETUP_FAILED
from mitosis.executor.tools.sandbox.confine import Sandbox, SandboxRun, SandboxUnavailable
from mitosis.executor.tools.workspace import Workspace
from mitosis.tool_errors import PathEscapeError, ToolError
from mitosis.v1 import task_pb2

LineSink = Callable[[int, Sequence[str]], Awaitable[None]]
"""Receives a tool's output lines, in order, as many at a time as were read together (one
or more, at most LINES_AT_ONCE): a `LogLine.Source` value and the lines' texts."""

LINES_AT_ONCE = 100
"""Most lines passed on in one call: a chatty script's lines are stored a hundred to an
append (one transaction), and no one append holds the event loop for long."""

SCRIPT_NAME = "step.py"
"""The file in the workspace's hidden folder that holds the script being run."""

MAX_LINE_CHARS = 4096
"""Longer output lines are split into pieces of this many characters."""

_CPU_GRACE_SECONDS = 5
_READ_CHUNK = 1 << 16
_EXIT_POLL_SECONDS = 0.05
_DRAIN_SECONDS = 5.0
_SIGNAL_HINTS: dict[int, str] = {
    signal.SIGXCPU: "its CPU time limit was reached",
    signal.SIGKILL: "perhaps the system ran out of memory",
}


async def run_python(
    code: str,
    workspace: Workspace,
    on_lines: LineSink,
    *,
    timeout: float = 60.0,  # noqa: ASYNC109 - the timeout ends the script, not only the wait
    sandbox: Sandbox | None = None,
) -> None:
    """Run `code` with Python in the workspace, passing its output lines to `on_lines`.

    The script runs confined by `sandbox` (by default one with the default settings, in
    the strongest mode this machine allows): its own session, a clean environment, resource
    limits, and, where possible, its own uid, no network and only the workspace writable.
    When it ends, times out or the caller is cancelled, it is killed with every process it
    started. Raises ToolError if the script exits with a non-zero status or times out.
    """
    sandbox = sandbox or default_sandbox()
    script = _write_script(workspace, code)
    cpu_seconds = math.ceil(timeout) + _CPU_GRACE_SECONDS
    try:
        async with sandbox.run(workspace, script, cpu_seconds) as run:
            returncode, stderr_line = await _run_process(run, workspace, on_lines, timeout)
    except SandboxUnavailable as error:
        raise ToolError(str(error)) from None
    if returncode is None:
        raise ToolError(f"python timed out after {timeout:g} s and was killed")
    _check_status(returncode, stderr_line, sandbox)


async def _run_process(
    run: SandboxRun, workspace: Workspace, on_lines: LineSink, seconds: float
) -> tuple[int | None, str]:
    """Start the sandboxed script and pass its output on; return its exit status (None if it
    timed out) and the last line it wrote on stderr."""
    process = await asyncio.create_subprocess_exec(
        *run.command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=workspace.root,
        env=run.environment,
        start_new_session=True,
    )
    stderr_tail = _LastLine(on_lines)
    pumps = [
        asyncio.create_task(
            _pump(_stream(process.stdout), task_pb2.LogLine.SOURCE_STDOUT, on_lines)
        ),
        asyncio.create_task(
            _pump(_stream(process.stderr), task_pb2.LogLine.SOURCE_STDERR, stderr_tail)
        ),
    ]
    try:
        exited = await _exited_within(process, pumps, seconds)
        # Kill what the script left running: its children would hold the pipes open.
        _kill_group(process)
        await _drain(pumps)
    finally:
        await _clean_up(process, pumps)
    return (process.returncode if exited else None), stderr_tail.text


def list_files(workspace: Workspace) -> list[str]:
    """Return the sorted paths of the workspace's files."""
    return sorted(workspace.snapshot())


def read_file(workspace: Workspace, path: str, *, max_bytes: int = 1 << 20) -> str:
    """Return the UTF-8 text of a workspace file of at most `max_bytes` bytes."""
    try:
        with workspace.open_for_read(path) as file:
            data = file.read(max_bytes + 1)
    except PathEscapeError as error:
        raise ToolError(f"read_file refused the path: {error}") from None
    except FileNotFoundError:
        raise ToolError(
            f"read_file found no file {path!r} in the workspace; list_files shows what exists"
        ) from None
    except OSError as error:
        raise ToolError(f"read_file could not read {path!r}: {error.strerror}") from None
    if len(data) > max_bytes:
        raise ToolError(f"read_file refused {path!r}: it is larger than {max_bytes} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ToolError(
            f"read_file refused {path!r}: it is not UTF-8 text (bad byte at offset {error.start})"
        ) from None


class _LastLine:
    """A line sink that passes lines on and remembers the last non-blank one."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink
        self.text = ""

    async def __call__(self, source: int, texts: Sequence[str]) -> None:
        for text in reversed(texts):
            if text.strip():
                self.text = text.strip()
                break
        await self._sink(source, texts)


@functools.cache
def default_sandbox() -> Sandbox:
    """Return the sandbox of runs that were given none: default settings, made once."""
    return Sandbox()


def _write_script(workspace: Workspace, code: str) -> Path:
    """Write the code to the workspace's hidden folder and return the file's path."""
    try:
        return workspace.write_hidden(SCRIPT_NAME, code.encode("utf-8"))
    except OSError as error:
        raise ToolError(f"could not write the script into the workspace: {error}") from None


def _stream(reader: asyncio.StreamReader | None) -> asyncio.StreamReader:
    """Return a pipe's reader, which exists because the pipe was asked for."""
    assert reader is not None
    return reader


async def _pump(reader: asyncio.StreamReader, source: int, on_lines: LineSink) -> None:
    """Pass a pipe's output to `on_lines`, in order, until it closes: the complete lines of
    what was read together, LINES_AT_ONCE at most to a call."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while chunk := await reader.read(_READ_CHUNK):
        lines, pending = _split_lines(pending + decoder.decode(chunk))
        for first in range(0, len(lines), LINES_AT_ONCE):
            await on_lines(source, lines[first : first + LINES_AT_ONCE])
    rest = (pending + decoder.decode(b"", final=True)).removesuffix("\r")
    if rest:
        await on_lines(source, list(_pieces(rest)))


def _split_lines(text: str) -> tuple[list[str], str]:
    """Return the complete lines in `text` (long ones split) and the unfinished rest."""
    *complete, rest = text.split("\n")
    lines = [piece for line in complete for piece in _pieces(line.removesuffix("\r"))]
    while len(rest) > MAX_LINE_CHARS:
        lines.append(rest[:MAX_LINE_CHARS])
        rest = rest[MAX_LINE_CHARS:]
    return lines, rest


def _pieces(line: str) -> Iterable[str]:
    """Return a line cut into pieces of at most MAX_LINE_CHARS; an empty line stays one."""
    if not line:
        return [""]
    return [line[start : start + MAX_LINE_CHARS] for start in range(0, len(line), MAX_LINE_CHARS)]


async def _exited_within(
    process: asyncio.subprocess.Process, pumps: list[asyncio.Task[None]], seconds: float
) -> bool:
    """Wait until the script's own process exits; False if `seconds` pass first.

    `Process.wait()` would also wait for the pipes, which a child left running holds open,
    so this polls the exit status instead. A pump's failure (from `on_lines`) is raised.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while process.returncode is None:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        _raise_failures(pumps)
        running = [pump for pump in pumps if not pump.done()]
        pause = min(remaining, _EXIT_POLL_SECONDS)
        if running:
            await asyncio.wait(running, timeout=pause, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(pause)
    return True


async def _drain(pumps: list[asyncio.Task[None]]) -> None:
    """Let the pumps pass on the output left in the pipes, then raise any pump's failure."""
    await asyncio.wait(pumps, timeout=_DRAIN_SECONDS)
    _raise_failures(pumps)


def _raise_failures(pumps: list[asyncio.Task[None]]) -> None:
    """Raise the exception of the first pump that failed, if any did."""
    for pump in pumps:
        if pump.done() and not pump.cancelled() and (error := pump.exception()) is not None:
            raise error


async def _clean_up(process: asyncio.subprocess.Process, pumps: list[asyncio.Task[None]]) -> None:
    """Kill the process group, stop the pumps, and close the pipes so nothing leaks."""
    _kill_group(process)
    for pump in pumps:
        pump.cancel()
    await asyncio.gather(*pumps, return_exceptions=True)
    # Reading the pipes to their end lets asyncio close the transport (no ResourceWarning).
    for reader in (process.stdout, process.stderr):
        if reader is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_discard(reader), _DRAIN_SECONDS)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), _DRAIN_SECONDS)


async def _discard(reader: asyncio.StreamReader) -> None:
    """Read a pipe to its end, dropping what it holds."""
    while await reader.read(_READ_CHUNK):
        pass


def _kill_group(process: asyncio.subprocess.Process) -> None:
    """Send SIGKILL to the script's process group: the script and every child it started."""
    # ProcessLookupError: the group is already gone.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _check_status(returncode: int, last_stderr_line: str, sandbox: Sandbox) -> None:
    """Raise ToolError describing a failed exit, naming the last line on stderr."""
    if returncode == 0:
        return
    if returncode == SETUP_FAILED and last_stderr_line.startswith("sandbox:"):
        reason = last_stderr_line.removeprefix("sandbox:").strip()
        raise ToolError(f"the python tool's sandbox could not be set up: {reason}")
    what = (
        f"python exited with status {returncode}" if returncode > 0 else _signal_death(-returncode)
    )
    message = f"{what}: {last_stderr_line}" if last_stderr_line else what
    if hint := _limit_hint(last_stderr_line, sandbox):
        message += f" ({hint})"
    raise ToolError(message)


def _limit_hint(line: str, sandbox: Sandbox) -> str:
    """Return which confinement a script's last error line most likely met, or ""."""
    limits = sandbox.config.limits
    if "Resource temporarily unavailable" in line:
        return f"a run may have at most {limits.processes} processes and threads"
    if line.startswith("MemoryError"):
        return f"each process of a run may use at most {limits.memory_bytes:,} bytes of memory"
    if "File too large" in line:
        return f"a file may be at most {limits.file_size_bytes:,} bytes"
    if "Read-only file system" in line:
        return "only the workspace is writable"
    if "Network is unreachable" in line and sandbox.mode == "isolated":
        return "the python tool has no network"
    return ""


def _signal_death(signum: int) -> str:
    """Describe a death by signal, for example "python was killed by SIGXCPU (...)"."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    hint = _SIGNAL_HINTS.get(signum)
    return f"python was killed by {name} ({hint})" if hint else f"python was killed by {name}"
