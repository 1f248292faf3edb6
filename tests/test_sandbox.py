"""Hostile python tool runs: each fails or is refused, and leaves nothing behind.

Every test ends the same way: the run's result is a failure (or the script reports a
refusal), this process (standing in for the executor) goes on, no process of the run is
left (by uid, and by the workspace path on command lines), and nothing was written outside
the workspace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import socket
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from mitosis.executor.tools.builtin import run_python
from mitosis.executor.tools.sandbox.confine import (
    Sandbox,
    SandboxConfig,
    SandboxLimits,
    SandboxUnavailable,
    mount_plan,
    processes_of,
)
from mitosis.executor.tools.workspace import Workspace
from mitosis.tool_errors import ToolError
from mitosis.v1 import task_pb2
from tests.support.sandbox import processes_with, script, sleeper, uid_base, until_gone

STDOUT = task_pb2.LogLine.SOURCE_STDOUT
SECRET = "sk-test-secret"
PROCESSES = 24
UIDS = 256
SYSTEM_PYTHON = Path("/usr/bin/python3")


class Output:
    """A line sink that keeps stdout."""

    def __init__(self) -> None:
        self.stdout: list[str] = []
        self.arrived: asyncio.Queue[str] = asyncio.Queue()

    async def __call__(self, source: int, texts: Sequence[str]) -> None:
        if source == STDOUT:
            for text in texts:
                self.stdout.append(text)
                self.arrived.put_nowait(text)


def make_sandbox(mode: str, **settings: object) -> Sandbox:
    limits = SandboxLimits(memory_bytes=256 << 20, processes=PROCESSES)
    config = SandboxConfig(mode=mode, limits=limits, uid_base=uid_base(), uid_count=UIDS)
    return Sandbox(dataclasses.replace(config, **settings))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An executor's data folder: a store file and another task's workspace beside ours."""
    data = tmp_path_factory.mktemp("data")
    (data / "mitosis.sqlite3").write_text("every task of every key")
    other = data / "tasks" / "other" / "workspace"
    other.mkdir(parents=True)
    (other / "secret.txt").write_text("another task's file")
    return data


@pytest.fixture(scope="module")
def isolated(data_dir: Path) -> Sandbox:
    """The sandbox as an executor running as root with namespaces has it."""
    try:
        return make_sandbox("isolated", hidden=(data_dir,))
    except SandboxUnavailable as error:
        pytest.skip(f"this machine cannot isolate: {error}")


@pytest.fixture
def workspace(data_dir: Path, request: pytest.FixtureRequest) -> Iterator[Workspace]:
    root = data_dir / "tasks" / request.node.name.replace("[", "-").strip("]") / "workspace"
    yield Workspace(root)
    shutil.rmtree(root.parent)


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A folder outside the workspace that scripts try to write into."""
    folder = Path("/tmp") / f"mitosis-outside-{tmp_path.name}-{os.getpid()}"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)  # open to anyone, so only the sandbox can stop a write
    yield folder
    shutil.rmtree(folder)


def existing(*paths: str | Path) -> list[str | Path]:
    """Return the paths that exist (symlinks included)."""
    return [path for path in paths if os.path.lexists(path)]


def assert_nothing_left(sandbox: Sandbox, workspace: Workspace) -> None:
    uids = range(sandbox.config.uid_base, sandbox.config.uid_base + sandbox.config.uid_count)
    assert processes_of(uids) == []
    assert processes_with(str(workspace.root)) == []


async def test_fork_bomb_is_held_to_the_process_limit_and_killed(
    isolated: Sandbox, workspace: Workspace
) -> None:
    code = script(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    )
    with pytest.raises(ToolError, match=r"^python timed out after 3 s and was killed$"):
        await run_python(code, workspace, Output(), timeout=3, sandbox=isolated)

    assert_nothing_left(isolated, workspace)


async def test_forking_stops_at_the_process_limit_with_a_clear_message(
    isolated: Sandbox, workspace: Workspace
) -> None:
    output = Output()
    code = script(
        """
        import os, time
        started = 0
        while True:
            if os.fork() == 0:
                time.sleep(100)
                os._exit(0)
            started += 1
            print(started, flush=True)
        """
    )
    with pytest.raises(ToolError) as caught:
        await run_python(code, workspace, output, timeout=30, sandbox=isolated)

    assert str(caught.value) == (
        "python exited with status 1: BlockingIOError: [Errno 11] Resource temporarily"
        f" unavailable (a run may have at most {PROCESSES} processes and threads)"
    )
    assert 0 < int(output.stdout[-1]) < PROCESSES
    assert_nothing_left(isolated, workspace)


async def test_allocating_without_bound_ends_in_memory_error(
    isolated: Sandbox, workspace: Workspace
) -> None:
    code = script(
        """
        blocks = []
        while True:
            blocks.append(bytearray(16 << 20))
        """
    )
    with pytest.raises(ToolError) as caught:
        await run_python(code, workspace, Output(), timeout=30, sandbox=isolated)

    assert str(caught.value) == (
        "python exited with status 1: MemoryError (each process of a run may use at most"
        " 268,435,456 bytes of memory)"
    )
    assert_nothing_left(isolated, workspace)


async def test_writes_outside_the_workspace_are_refused(
    isolated: Sandbox, workspace: Workspace, outside: Path, data_dir: Path
) -> None:
    targets = [
        outside / "absolute.txt",
        "../escaped.txt",
        "../../escaped.txt",
        "link-to-outside/through-symlink.txt",
        "/tmp/mitosis-sandbox-escape.txt",
        "/dev/shm/mitosis-sandbox-escape.txt",
        "/var/tmp/mitosis-sandbox-escape.txt",
        data_dir / "written-by-a-script.txt",
        data_dir / "tasks" / "other" / "workspace" / "planted.txt",
    ]
    output = Output()
    code = script(
        f"""
        import os
        os.symlink({str(outside)!r}, "link-to-outside")
        for target in {[str(target) for target in targets]!r}:
            try:
                with open(target, "w") as file:
                    file.write("escaped")
                print("WROTE", target)
            except OSError as error:
                print("refused", target, type(error).__name__)
        with open("inside.txt", "w") as file:
            file.write("fine")
        """
    )
    await run_python(code, workspace, output, sandbox=isolated)

    assert [line.split()[0] for line in output.stdout] == ["refused"] * len(targets)
    assert os.listdir(outside) == []
    assert (
        existing(
            "/tmp/mitosis-sandbox-escape.txt",
            "/dev/shm/mitosis-sandbox-escape.txt",
            "/var/tmp/mitosis-sandbox-escape.txt",
            data_dir / "written-by-a-script.txt",
            data_dir / "tasks" / "other" / "workspace" / "planted.txt",
            workspace.root.parent / "escaped.txt",
            workspace.root.parent.parent / "escaped.txt",
        )
        == []
    )
    assert (workspace.root / "inside.txt").read_text() == "fine"
    assert workspace.root.stat().st_uid == os.geteuid()  # handed back after the run
    assert (workspace.root / "inside.txt").stat().st_uid == os.geteuid()
    assert_nothing_left(isolated, workspace)


async def test_other_tasks_and_the_store_are_out_of_sight(
    isolated: Sandbox, workspace: Workspace, data_dir: Path
) -> None:
    output = Output()
    code = script(
        f"""
        for path in [{str(data_dir / "mitosis.sqlite3")!r},
                     {str(data_dir / "tasks" / "other" / "workspace" / "secret.txt")!r}]:
            try:
                print("READ", open(path).read())
            except OSError as error:
                print("refused", type(error).__name__)
        import os
        print(sorted(os.listdir({str(data_dir / "tasks")!r})))
        """
    )
    await run_python(code, workspace, output, sandbox=isolated)

    assert output.stdout == [
        "refused FileNotFoundError",
        "refused FileNotFoundError",
        f"[{workspace.root.parent.name!r}]",
    ]
    assert_nothing_left(isolated, workspace)


async def test_the_executors_environment_is_out_of_reach(
    isolated: Sandbox, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    output = Output()
    code = script(
        f"""
        import os
        print("environ", "{SECRET}" in repr(os.environ))
        for pid in [os.getppid(), {os.getpid()}, 1, "self"]:
            try:
                with open(f"/proc/{{pid}}/environ", "rb") as file:
                    print(pid, "{SECRET}".encode() in file.read())
            except OSError as error:
                print(pid, type(error).__name__)
        found = []
        for name in os.listdir("/proc"):
            try:
                with open(f"/proc/{{name}}/environ", "rb") as file:
                    found.append("{SECRET}".encode() in file.read())
            except OSError:
                pass
        print("anywhere", any(found))
        print("processes", sorted(int(name) for name in os.listdir("/proc") if name.isdigit()))
        """
    )
    await run_python(code, workspace, output, sandbox=isolated)

    assert SECRET not in "\n".join(output.stdout)
    assert output.stdout[0] == "environ False"
    # Its parent is PID 1 of its own namespace, which dropped to the run's uid (non-dumpable).
    assert output.stdout[1] == "1 PermissionError"
    assert output.stdout[2] in (f"{os.getpid()} FileNotFoundError", f"{os.getpid()} False")
    assert output.stdout[-2] == "anywhere False"
    assert output.stdout[-1] == "processes [1, 2]"  # it sees only itself and its PID 1
    assert_nothing_left(isolated, workspace)


async def test_no_network_even_to_a_local_listener(isolated: Sandbox, workspace: Workspace) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0)
    port = listener.getsockname()[1]
    output = Output()
    code = script(
        f"""
        import socket
        for host in ["127.0.0.1", "localhost", {socket.gethostname()!r}]:
            try:
                socket.create_connection((host, {port}), timeout=5).close()
                print("CONNECTED", host)
            except OSError as error:
                print("refused", host, error)
        """
    )
    try:
        await run_python(code, workspace, output, sandbox=isolated)
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()

    assert [line.split()[0] for line in output.stdout] == ["refused"] * 3
    assert "Network is unreachable" in output.stdout[0]
    assert_nothing_left(isolated, workspace)


async def test_a_connection_failure_names_the_missing_network(
    isolated: Sandbox, workspace: Workspace
) -> None:
    code = "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=5)\n"
    with pytest.raises(
        ToolError, match=r"Network is unreachable \(the python tool has no network\)"
    ):
        await run_python(code, workspace, Output(), sandbox=isolated)


@pytest.mark.parametrize("ending", ["exits", "times out", "is cancelled"])
async def test_grandchildren_that_escape_the_session_are_killed(
    isolated: Sandbox, workspace: Workspace, ending: str
) -> None:
    marker = f"{workspace.root}/escapee"
    output = Output()
    code = script(
        f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c",
                         "import time; time.sleep(1000)", {marker!r}])
            os._exit(0)
        time.sleep(1)
        print("escaped", flush=True)
        if {ending != "exits"}:
            time.sleep(1000)
        """
    )
    run = asyncio.create_task(
        run_python(
            code, workspace, output, timeout=5 if ending == "times out" else 60, sandbox=isolated
        )
    )
    assert await output.arrived.get() == "escaped"
    assert len(processes_with(marker)) == 1  # it really got away from the script's session
    if ending == "is cancelled":
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
    elif ending == "times out":
        with pytest.raises(ToolError, match="timed out"):
            await run
    else:
        await run

    assert_nothing_left(isolated, workspace)


async def test_concurrent_runs_have_their_own_uids_and_process_budgets(
    isolated: Sandbox, workspace: Workspace, data_dir: Path
) -> None:
    bomb_workspace = Workspace(data_dir / "tasks" / "bomb" / "workspace")
    bomb = script(
        """
        import os
        print(os.getuid(), flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    )
    busy = script(
        f"""
        import os, subprocess, sys, time
        time.sleep(1)  # the bomb has used its whole budget by now
        command = [sys.executable, "-c", "pass"]
        children = [subprocess.Popen(command) for _ in range({PROCESSES // 2})]
        print(os.getuid(), sum(child.wait() == 0 for child in children))
        """
    )
    bomb_output, busy_output = Output(), Output()
    try:
        bombing = asyncio.create_task(
            run_python(bomb, bomb_workspace, bomb_output, timeout=5, sandbox=isolated)
        )
        await run_python(busy, workspace, busy_output, timeout=60, sandbox=isolated)
        with pytest.raises(ToolError, match="timed out"):
            await bombing
    finally:
        shutil.rmtree(bomb_workspace.root.parent)

    busy_uid, succeeded = busy_output.stdout[0].split()
    assert succeeded == str(PROCESSES // 2)
    assert busy_uid != bomb_output.stdout[0]
    assert_nothing_left(isolated, workspace)


EXECUTOR = """
import asyncio, sys
from pathlib import Path
from mitosis.executor.tools.sandbox.confine import Sandbox, SandboxConfig
from mitosis.executor.tools.builtin import run_python
from mitosis.executor.tools.workspace import Workspace

async def show(source, texts):
    for text in texts:
        print(text, flush=True)

workspace, uid_base, uid_count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sandbox = Sandbox(SandboxConfig(uid_base=uid_base, uid_count=uid_count))
asyncio.run(run_python(sys.stdin.read(), Workspace(Path(workspace)), show, sandbox=sandbox))
"""


async def test_the_run_dies_with_a_killed_executor(isolated: Sandbox, data_dir: Path) -> None:
    """kill -9 of the executor leaves it no time to clean up: the parent-death signal and the
    PID namespace still end the script and what it started."""
    workspace = Workspace(data_dir / "tasks" / "orphaned" / "workspace")
    marker = f"{workspace.root}/orphan"
    code = script(sleeper(marker) + "time.sleep(1000)\n")
    config = isolated.config
    process = await asyncio.create_subprocess_exec(
        *[sys.executable, "-c", EXECUTOR, str(workspace.root)],
        *[str(config.uid_base), str(config.uid_count)],
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(code.encode())
        process.stdin.close()
        assert await process.stdout.readline() == b"started\n"
        assert len(processes_with(marker)) == 1
        process.send_signal(signal.SIGKILL)
        await process.wait()

        assert await until_gone(str(workspace.root)) == []
    finally:
        shutil.rmtree(workspace.root.parent)


def test_mount_plan_hides_the_data_folder_and_closed_folders(outside: Path) -> None:
    tmp_path = outside
    data = tmp_path / "data"
    workspace = data / "tasks" / "t" / "workspace"
    workspace.mkdir(parents=True)
    closed = tmp_path / "home"
    prefix = closed / "python"
    prefix.mkdir(parents=True)
    for folder in (data, data / "tasks", data / "tasks" / "t", workspace, prefix):
        folder.chmod(0o755)
    closed.chmod(0o700)

    hide, binds = mount_plan(workspace, prefix, [data, data / "tasks", tmp_path / "missing"])

    assert hide == [data, closed]
    assert binds == [(workspace, True), (prefix, False)]


# The uid mode: what a root executor without namespaces (a default Docker container) does.


@pytest.fixture(scope="module")
def uid_only() -> Sandbox:
    if os.geteuid() != 0 or not SYSTEM_PYTHON.exists():
        pytest.skip("the uid mode needs root and an interpreter other users may run")
    return make_sandbox("uid", python=SYSTEM_PYTHON.resolve())


@pytest.fixture
def open_workspace(outside: Path) -> Workspace:
    """A workspace other users can reach (the uid mode cannot hide closed folders)."""
    return Workspace(outside / "workspace")


async def test_uid_mode_holds_the_process_limit_and_kills_escapees(
    uid_only: Sandbox, open_workspace: Workspace
) -> None:
    marker = f"{open_workspace.root}/escapee"
    output = Output()
    code = script(
        f"""
        import os, sys, time
        if os.fork() == 0:
            os.setsid()
            os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(1000)",
                     {marker!r}])
        started = 1
        while True:
            if os.fork() == 0:
                time.sleep(100)
                os._exit(0)
            started += 1
            print(started, flush=True)
        """
    )
    with pytest.raises(ToolError, match=r"at most 24 processes and threads\)$"):
        await run_python(code, open_workspace, output, timeout=30, sandbox=uid_only)

    assert 0 < int(output.stdout[-1]) < PROCESSES
    assert_nothing_left(uid_only, open_workspace)


async def test_uid_mode_keeps_the_executors_environment_and_root_files_closed(
    uid_only: Sandbox, open_workspace: Workspace, monkeypatch: pytest.MonkeyPatch, outside: Path
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    output = Output()
    code = script(
        f"""
        import os
        print("environ", "{SECRET}" in repr(os.environ))
        for path in ["/proc/{os.getpid()}/environ", "/root/x", "/etc/escape.txt"]:
            try:
                open(path, "rb").read() if "environ" in path else open(path, "w")
                print("OPENED", path)
            except OSError as error:
                print("refused", type(error).__name__)
        """
    )
    await run_python(code, open_workspace, output, sandbox=uid_only)

    assert output.stdout == ["environ False"] + ["refused PermissionError"] * 3
    assert_nothing_left(uid_only, open_workspace)


def test_a_mode_the_machine_lacks_is_refused_when_insisted_on() -> None:
    if os.geteuid() == 0:
        with pytest.raises(SandboxUnavailable, match=r"uids \d+\.\.\d+ are not mapped"):
            make_sandbox("isolated", uid_base=2**32 - 2, uid_count=5)
        return
    with pytest.raises(SandboxUnavailable, match="the executor does not run as root"):
        make_sandbox("isolated")
