"""Tools: python runs confined and streams its output; list_files and read_file stay inside."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from mitosis.executor.events.hub import EventHub
from mitosis.executor.events.log import EventLog
from mitosis.executor.store.sqlite import SqliteStore
from mitosis.executor.tools.builtin import (
    LINES_AT_ONCE,
    MAX_LINE_CHARS,
    list_files,
    read_file,
    run_python,
)
from mitosis.executor.tools.recorded import RecordedTools
from mitosis.executor.tools.workspace import HIDDEN_DIR, Workspace
from mitosis.tool_errors import ToolError
from mitosis.v1 import task_pb2
from tests.support.sandbox import processes_with, script, sleeper

STDOUT = task_pb2.LogLine.SOURCE_STDOUT
STDERR = task_pb2.LogLine.SOURCE_STDERR


class Lines:
    """A line sink that keeps every line, and lets a test wait for the next one."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []
        self.arrived: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        self.calls: list[int] = []
        """How many lines each call passed on."""

    async def __call__(self, source: int, texts: Sequence[str]) -> None:
        self.calls.append(len(texts))
        for text in texts:
            self.lines.append((source, text))
            self.arrived.put_nowait((source, text))

    def of(self, source: int) -> list[str]:
        return [text for line_source, text in self.lines if line_source == source]


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path / "ws")


SLEEP_FOREVER = """
import time
print("sleeping", flush=True)
time.sleep(1000)
"""


async def test_streams_stdout_and_stderr_line_by_line_in_order(workspace: Workspace) -> None:
    lines = Lines()
    code = script(
        """
        import sys
        print("out 1")
        print("err 1", file=sys.stderr)
        print("out 2")
        print("err 2", file=sys.stderr)
        print()
        print("out 3")
        """
    )
    await run_python(code, workspace, lines)

    assert lines.of(STDOUT) == ["out 1", "out 2", "", "out 3"]
    assert lines.of(STDERR) == ["err 1", "err 2"]


async def test_lines_written_together_are_passed_on_together(workspace: Workspace) -> None:
    """A chatty script's lines come many to a call (one append each, in the executor), in
    order, and never more than LINES_AT_ONCE to one."""
    lines = Lines()
    code = script(
        """
        import sys
        sys.stdout.write("".join(f"line {n}\\n" for n in range(1000)))
        """
    )
    await run_python(code, workspace, lines)

    assert lines.of(STDOUT) == [f"line {n}" for n in range(1000)]
    assert max(lines.calls) <= LINES_AT_ONCE
    assert len(lines.calls) < 100


async def test_long_lines_are_split_and_odd_output_is_kept(workspace: Workspace) -> None:
    lines = Lines()
    code = script(
        """
        import sys
        print("x" * 10000)
        sys.stdout.buffer.write(b"bad \\xff byte\\r\\n")
        sys.stdout.write("\\u00e9t\\u00e9\\n")
        sys.stdout.write("no newline at the end")
        """
    )
    await run_python(code, workspace, lines)

    assert lines.of(STDOUT) == [
        "x" * MAX_LINE_CHARS,
        "x" * MAX_LINE_CHARS,
        "x" * (10000 - 2 * MAX_LINE_CHARS),
        "bad \ufffd byte",
        "\u00e9t\u00e9",
        "no newline at the end",
    ]


async def test_nonzero_exit_raises_with_last_stderr_line(workspace: Workspace) -> None:
    lines = Lines()
    with pytest.raises(ToolError) as caught:
        await run_python("print('before')\n1 / 0\n", workspace, lines)

    assert str(caught.value) == "python exited with status 1: ZeroDivisionError: division by zero"
    assert lines.of(STDOUT) == ["before"]
    assert "Traceback (most recent call last):" in lines.of(STDERR)


async def test_nonzero_exit_without_stderr(workspace: Workspace) -> None:
    with pytest.raises(ToolError) as caught:
        await run_python("raise SystemExit(3)\n", workspace, Lines())
    assert str(caught.value) == "python exited with status 3"


async def test_timeout_kills_the_script_and_its_children(workspace: Workspace) -> None:
    marker = f"{workspace.root}/sleeper"
    code = script(sleeper(marker) + "while True:\n    pass\n")
    with pytest.raises(ToolError, match=r"^python timed out after 1 s and was killed$"):
        await run_python(code, workspace, Lines(), timeout=1)

    assert processes_with(str(workspace.root)) == []


async def test_children_left_running_die_when_the_script_exits(workspace: Workspace) -> None:
    lines = Lines()
    # The sleeper keeps the output pipes open: run_python must not wait for it to end.
    await run_python(script(sleeper(f"{workspace.root}/sleeper")), workspace, lines, timeout=30)

    assert lines.of(STDOUT) == ["started"]
    assert processes_with(str(workspace.root)) == []


async def test_cancellation_kills_the_script_and_its_children(workspace: Workspace) -> None:
    lines = Lines()
    code = script(sleeper(f"{workspace.root}/sleeper") + SLEEP_FOREVER)
    run = asyncio.create_task(run_python(code, workspace, lines, timeout=60))
    assert await lines.arrived.get() == (STDOUT, "started")
    assert await lines.arrived.get() == (STDOUT, "sleeping")

    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    assert processes_with(str(workspace.root)) == []


async def test_failing_line_sink_stops_the_script(workspace: Workspace) -> None:
    async def broken_sink(source: int, text: str) -> None:
        raise RuntimeError("the event log is gone")

    code = script(SLEEP_FOREVER)
    with pytest.raises(RuntimeError, match="the event log is gone"):
        await run_python(code, workspace, broken_sink, timeout=60)

    assert processes_with(str(workspace.root)) == []


async def test_environment_is_clean(workspace: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MITOSIS_TEST_SECRET", "hunter2")
    lines = Lines()
    await run_python("import json, os\nprint(json.dumps(dict(os.environ)))\n", workspace, lines)

    environment = json.loads(lines.of(STDOUT)[0])
    assert "MITOSIS_TEST_SECRET" not in environment
    assert "hunter2" not in lines.of(STDOUT)[0]
    assert environment["PATH"] == "/usr/bin:/bin"
    assert environment["HOME"] == str(workspace.root)
    assert environment["TMPDIR"] == str(workspace.root / HIDDEN_DIR / "tmp")
    assert environment["LANG"] == "C.UTF-8"


async def test_runs_in_the_workspace_with_empty_stdin(workspace: Workspace) -> None:
    lines = Lines()
    before = workspace.snapshot()
    code = script(
        """
        import os, sys
        print(os.getcwd())
        print(repr(sys.stdin.read()))
        with open("result.txt", "w") as file:
            file.write("42")
        """
    )
    await run_python(code, workspace, lines)

    assert lines.of(STDOUT) == [str(workspace.root), "''"]
    assert (workspace.root / "result.txt").read_text() == "42"
    assert (workspace.root / HIDDEN_DIR / "step.py").exists()
    assert workspace.changed_files(before) == ["result.txt"]


async def test_memory_limit_applies(workspace: Workspace) -> None:
    with pytest.raises(ToolError, match=r"MemoryError \(each process of a run may use at most"):
        await run_python("block = bytearray(2 << 30)\n", workspace, Lines())


async def test_file_size_limit_applies(workspace: Workspace) -> None:
    code = "with open('big.bin', 'wb') as file:\n    file.write(bytes(65 << 20))\n"
    with pytest.raises(
        ToolError, match=r"File too large.*\(a file may be at most 67,108,864 bytes\)"
    ):
        await run_python(code, workspace, Lines())


def test_list_files(workspace: Workspace) -> None:
    (workspace.root / "b").mkdir()
    (workspace.root / "b" / "z.txt").write_text("z")
    (workspace.root / "a.txt").write_text("a")
    (workspace.root / HIDDEN_DIR).mkdir()
    (workspace.root / HIDDEN_DIR / "step.py").write_text("")
    assert list_files(workspace) == ["a.txt", "b/z.txt"]


def test_read_file(workspace: Workspace) -> None:
    (workspace.root / "notes.md").write_text("# Notes\n\u00e9\n", encoding="utf-8")
    assert read_file(workspace, "notes.md") == "# Notes\n\u00e9\n"


def test_read_file_at_the_size_limit(workspace: Workspace) -> None:
    (workspace.root / "ten.txt").write_text("0123456789")
    assert read_file(workspace, "ten.txt", max_bytes=10) == "0123456789"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("../outside.txt", "refused the path: '../outside.txt' is not a workspace path"),
        ("missing.txt", "found no file 'missing.txt' in the workspace; list_files"),
        ("big.txt", "refused 'big.txt': it is larger than 10 bytes"),
        ("latin1.txt", "refused 'latin1.txt': it is not UTF-8 text"),
        ("folder", "could not read 'folder'"),
    ],
)
def test_read_file_errors(workspace: Workspace, path: str, message: str) -> None:
    (workspace.root / "big.txt").write_text("01234567890")
    (workspace.root / "latin1.txt").write_bytes("caf\u00e9".encode("latin-1"))
    (workspace.root / "folder").mkdir()
    with pytest.raises(ToolError) as caught:
        read_file(workspace, path, max_bytes=10)
    assert message in str(caught.value)


def test_read_file_refuses_symlink_out(workspace: Workspace, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("secret")
    (workspace.root / "link.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(ToolError, match="symlink"):
        read_file(workspace, "link.txt")


async def test_list_files_logs_its_lines_a_hundred_to_an_append(
    workspace: Workspace, tmp_path: Path
) -> None:
    for n in range(250):
        (workspace.root / f"f{n:03}.txt").write_text("x")
    store = SqliteStore(tmp_path / "store.sqlite3")
    try:
        await store.create_task(task_pb2.Task(task_id="0123456789abcdef", text="t"))
        tools = RecordedTools(
            EventLog(store, EventHub()),
            "0123456789abcdef",
            0,
            workspace,
            tool_timeout=5,
            page_window=0,
        )
        commits = store._commits
        await tools.list_files()
        appends = store._commits - commits
        events = await store.read_events("0123456789abcdef", 0, 1000)
    finally:
        await store.close()

    assert appends == 3  # 251 lines: the count, then one per file
    texts = [event.log_line.text for event in events]
    assert texts[:2] == ["250 files in the workspace", "        1 B  f000.txt"]
    assert len(texts) == 251
