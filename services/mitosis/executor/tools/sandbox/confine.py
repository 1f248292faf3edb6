"""The python tool's sandbox, from the executor's side: which mode, which uid, the workspace.

What a script may do depends on what the machine lets the executor do (the mode is chosen
once, by trying each in turn, and logged):

- "isolated" (the executor is root and may create namespaces): the script runs as a uid of
  its own (one per run, from a range, so RLIMIT_NPROC holds and concurrent runs do not
  share a process budget), with no network (a new, empty network namespace), in a PID
  namespace (it sees only its own processes, and all of them die when the run ends), and a
  mount namespace where everything is read-only except the workspace and where the
  executor's data folder (other tasks, the store) is hidden.
- "uid" (root, but namespaces are not permitted, as in a default Docker container): the own
  uid, the limits, and every process of that uid killed when the run ends; the network and
  the rest of the filesystem are as open as they are to any unprivileged local user.
- "plain" (the executor is not root): the limits (RLIMIT_NPROC counted against the
  executor's own user) and the process group killed; the executor is made non-dumpable so a
  script of the same user cannot read its /proc/<pid>/environ.

In every mode the script gets a clean environment, CPU, memory, file-size, process and
open-file limits, no way to gain privileges (no_new_privs), and dies with the executor.
`mitosis.executor.tools.sandbox.boot` is the half that runs in the child.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import json
import logging
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Container, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mitosis.executor.tools.sandbox import boot as sandbox_boot
from mitosis.executor.tools.workspace import HIDDEN_DIR, Workspace

logger = logging.getLogger(__name__)

MODES = ("isolated", "uid", "plain")
"""The sandbox modes, strongest first; "auto" takes the strongest this machine allows."""

TMP_DIR = f"{HIDDEN_DIR}/tmp"
"""The script's TMPDIR, inside the workspace but out of its file listings."""

_BOOT = Path(sandbox_boot.__file__)
_PROBE_TIMEOUT = 30.0
_KILL_ROUNDS = 100
_KILL_PAUSE = 0.02


@dataclass(frozen=True)
class SandboxLimits:
    """The resource limits of one python run (CPU time follows from its timeout)."""

    memory_bytes: int = 1 << 30
    """Address space per process (RLIMIT_AS)."""
    file_size_bytes: int = 64 << 20
    """Largest file a script may write (RLIMIT_FSIZE)."""
    processes: int = 64
    """Processes and threads one run may have at once (RLIMIT_NPROC)."""
    open_files: int = 256
    """Open files per process (RLIMIT_NOFILE)."""


@dataclass(frozen=True)
class SandboxConfig:
    """How python tool runs are confined."""

    mode: str = "auto"
    """"auto", or one of MODES to insist on (the executor then refuses to start without it)."""
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    uid_base: int = 1_900_000_000
    """First uid (and gid) of the range runs take their own uid from: above every range
    systemd and Debian hand out, below 2^31."""
    uid_count: int = 65536
    hidden: tuple[Path, ...] = ()
    """Folders a script must not see in "isolated" mode (the executor's data folder)."""
    python: Path | None = None
    """The interpreter scripts run with; by default the executor's base interpreter
    (outside any virtual environment, so scripts get the standard library only)."""


class SandboxUnavailable(Exception):
    """The mode a configuration insists on cannot work on this machine."""


@dataclass(frozen=True)
class SandboxRun:
    """One run's sandbox: what to start, and the uid whose processes are the run's."""

    command: list[str]
    environment: dict[str, str]
    uid: int | None


class Sandbox:
    """Confines python runs in the strongest mode the machine allows (chosen once)."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.python = _interpreter(self.config.python)
        self.mode, self.downgrades = _choose_mode(
            self.config.mode, self.python, self.config.uid_base, self.config.uid_count
        )
        if self.mode == "plain" and os.geteuid() != 0:
            _make_undumpable()

    def describe(self) -> str:
        """Say in one line how scripts are confined here, for the executor's log."""
        what = {
            "isolated": "own uid, no network, own PID and mount namespaces, only the"
            " workspace writable",
            "uid": "own uid and limits; network and world-readable files are not closed off",
            "plain": "limits and process group only; not root, so no own uid, network or"
            " filesystem isolation",
        }[self.mode]
        return f"python tool sandbox: {self.mode} ({what})"

    @contextlib.asynccontextmanager
    async def run(
        self, workspace: Workspace, script: Path, cpu_seconds: int
    ) -> AsyncIterator[SandboxRun]:
        """Prepare the workspace and a uid for one run; afterwards, kill what is left of it.

        On leaving, every process of the run's uid is killed (and waited for), the workspace
        is handed back to the executor's user, and the uid is free again.
        """
        if self.mode == "uid" and (closed := _first_closed_folder(workspace.root.parent)):
            raise SandboxUnavailable(
                f"the python tool cannot run: its uid cannot reach the workspace, because"
                f" {closed} is closed to other users (chmod o+x {closed} opens it)"
            )
        own_uid = self.mode in ("isolated", "uid")
        uid = await _UIDS.take(self.config.uid_base, self.config.uid_count) if own_uid else None
        try:
            await asyncio.to_thread(_prepare, workspace, uid, self.config)
            yield SandboxRun(
                command=boot_command(
                    self.mode, self.python, self.config, workspace, script, cpu_seconds, uid
                ),
                environment=environment(workspace),
                uid=uid,
            )
        finally:
            await asyncio.shield(self._release(workspace, uid))

    async def _release(self, workspace: Workspace, uid: int | None) -> None:
        try:
            if uid is not None:
                await kill_processes_of(uid)
            await asyncio.to_thread(_hand_back, workspace, self.config)
        finally:
            if uid is not None:
                _UIDS.give_back(uid)


def boot_command(
    mode: str,
    python: Path,
    config: SandboxConfig,
    workspace: Workspace,
    script: Path,
    cpu_seconds: int,
    uid: int | None,
) -> list[str]:
    """Return the command that sets the sandbox up in the child and runs the script."""
    limits = config.limits
    processes = limits.processes
    if mode == "plain":  # RLIMIT_NPROC counts every process of the executor's user
        processes += _threads_of(os.getuid())
    spec: dict[str, object] = {
        "mode": mode,
        "uid": uid,
        "gid": uid,
        "python": str(python),
        "script": str(script),
        "workspace": str(workspace.root),
        "limits": {
            "cpu_seconds": cpu_seconds,
            "memory_bytes": limits.memory_bytes,
            "file_size_bytes": limits.file_size_bytes,
            "processes": processes,
            "open_files": limits.open_files,
        },
    }
    if mode == "isolated":
        hide, binds = mount_plan(workspace.root, _prefix(python), config.hidden)
        spec["hide"] = [str(path) for path in hide]
        spec["binds"] = [
            {"source": str(source), "target": str(source), "writable": writable}
            for source, writable in binds
        ]
    return [sys.executable, "-I", "-S", str(_BOOT), json.dumps(spec)]


def environment(workspace: Workspace) -> dict[str, str]:
    """Return the only variables a script sees: nothing inherited, so no secrets."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(workspace.root),
        "TMPDIR": str(workspace.root / TMP_DIR),
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
    }


def mount_plan(
    workspace: Path, python_prefix: Path, hidden: Iterable[Path]
) -> tuple[list[Path], list[tuple[Path, bool]]]:
    """Return the folders to hide behind empty tmpfs mounts and the (folder, writable) binds
    that bring back what a script needs from under them: the workspace and the interpreter.

    A folder others may not enter (like /root, which may hold the interpreter) is hidden too,
    so the run's uid can reach what is exposed inside it.
    """
    candidates = {Path(os.path.realpath(path)) for path in hidden if os.path.isdir(path)}
    for needed in (workspace, python_prefix):
        if (closed := _first_closed_folder(needed)) is not None:
            candidates.add(closed)
    # Keep the outermost ones only, and never hide the workspace from inside it.
    hide = sorted(
        path
        for path in candidates
        if not any(other in path.parents for other in candidates)
        and not path.is_relative_to(workspace)
        and path != Path("/")
    )
    binds = [(workspace, True)]
    if any(python_prefix.is_relative_to(path) for path in hide):
        binds.append((python_prefix, False))
    return hide, binds


def processes_of(uids: Container[int]) -> list[int]:
    """Return the ids of the live processes whose real or saved uid is in `uids` (zombies
    left out)."""
    pids = []
    for name in _proc_entries():
        status = _read_status(name)
        if status is None or status.get("State", "").startswith(("Z", "X")):
            continue
        ids = [int(value) for value in status.get("Uid", "").split()[:3]]
        if len(ids) == 3 and (ids[0] in uids or ids[2] in uids):
            pids.append(int(name))
    return pids


async def kill_processes_of(uid: int) -> None:
    """Kill every process of `uid` and wait until none is left.

    A fork bomb may fork between a scan and the kills; after a few rounds the kill is done
    by a helper running as `uid` with kill(-1), which the kernel applies to every process of
    the uid at once (a fork racing it fails).
    """
    for round_number in range(_KILL_ROUNDS):
        pids = await asyncio.to_thread(processes_of, {uid})
        if not pids:
            return
        if round_number >= 3:
            await _kill_all_as(uid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(_KILL_PAUSE * min(round_number, 5))
    logger.error("processes of sandbox uid %d survived %d rounds of SIGKILL", uid, _KILL_ROUNDS)


def _kill_now(uid: int) -> None:
    """Kill every process of `uid`, blocking (for the probe, before any event loop runs)."""
    for _ in range(_KILL_ROUNDS):
        pids = processes_of({uid})
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(_KILL_PAUSE)


class _UidPool:
    """The uids runs are using now, in this executor; a new run takes a free one at random
    (random, so executors sharing a machine rarely pick the same, and never one that still
    has processes)."""

    def __init__(self) -> None:
        self._taken: set[int] = set()

    async def take(self, base: int, count: int) -> int:
        for _ in range(100):
            uid = base + random.randrange(count)
            if uid in self._taken:
                continue
            self._taken.add(uid)
            if not await asyncio.to_thread(processes_of, {uid}):
                return uid
            self._taken.discard(uid)
        raise RuntimeError(f"no free sandbox uid in {base}..{base + count - 1}")

    def give_back(self, uid: int) -> None:
        self._taken.discard(uid)


_UIDS = _UidPool()


def _prepare(workspace: Workspace, uid: int | None, config: SandboxConfig) -> None:
    """Create the script's TMPDIR and, with an own uid, give the workspace to that uid."""
    tmp = workspace.root / TMP_DIR
    _remove_tree(tmp)
    hidden = workspace.root / HIDDEN_DIR
    hidden.mkdir(exist_ok=True)
    tmp.mkdir()
    if uid is not None:
        _chown_tree(workspace.root, uid, uid, config)
        os.chmod(workspace.root, 0o700)


def _hand_back(workspace: Workspace, config: SandboxConfig) -> None:
    """Give the workspace back to the executor's user and drop the script's temporary files."""
    _remove_tree(workspace.root / TMP_DIR)
    if os.geteuid() == 0:
        _chown_tree(workspace.root, os.geteuid(), os.getegid(), config)


def _chown_tree(root: Path, uid: int, gid: int, config: SandboxConfig) -> None:
    """Change the owner of the workspace's entries, never following a symlink.

    Only entries of the executor or of sandbox uids change hands, and of the executor's
    files only those with one link: a hard link a script made to a file outside the
    workspace keeps its owner.
    """
    low, high = config.uid_base, config.uid_base + config.uid_count
    executor = os.geteuid()
    for folder, folders, files in os.walk(root):
        for name in [".", *folders, *files]:
            path = os.path.join(folder, name)
            try:
                info = os.lstat(path)
            except FileNotFoundError:
                continue
            ours = info.st_uid == executor and (stat.S_ISDIR(info.st_mode) or info.st_nlink == 1)
            if ours or low <= info.st_uid < high:
                with contextlib.suppress(FileNotFoundError):
                    os.lchown(path, uid, gid)


def _remove_tree(path: Path) -> None:
    """Remove a folder a script may have filled; symlinks in it are removed, not followed."""
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        if path.is_symlink() or not path.is_dir():
            path.unlink()
            return
        shutil.rmtree(path)


async def _kill_all_as(uid: int) -> None:
    """Run kill(-1, SIGKILL) as `uid`: every process of the uid is signalled at once."""
    code = (
        "import os\n"
        f"os.setgroups([]); os.setresgid({uid}, {uid}, {uid}); os.setresuid({uid}, {uid}, {uid})\n"
        "try:\n    os.kill(-1, 9)\nexcept ProcessLookupError:\n    pass\n"
    )
    helper = await asyncio.create_subprocess_exec(sys.executable, "-I", "-S", "-c", code, env={})
    await helper.wait()


@functools.cache
def _choose_mode(
    wanted: str, python: Path, uid_base: int, uid_count: int
) -> tuple[str, tuple[str, ...]]:
    """Return the strongest mode that works here (or `wanted`), and why stronger ones do not."""
    if wanted != "auto" and wanted not in MODES:
        raise ValueError(f"sandbox mode must be auto or one of {', '.join(MODES)}, not {wanted!r}")
    candidates = MODES if wanted == "auto" else (wanted,)
    downgrades: list[str] = []
    for mode in candidates:
        problem = _try_mode(mode, python, uid_base, uid_count)
        if problem is None:
            if downgrades:  # the executor logs the mode it runs with in any case
                logger.warning(
                    "python tool sandbox: %s mode, because %s", mode, "; ".join(downgrades)
                )
            return mode, tuple(downgrades)
        downgrades.append(f"{mode} mode is not available: {problem}")
    raise SandboxUnavailable("; ".join(downgrades))


def _try_mode(mode: str, python: Path, uid_base: int, uid_count: int) -> str | None:
    """Run a small script in `mode`; None if it ran confined as expected, else the problem."""
    if mode != "plain":
        if os.geteuid() != 0:
            return "the executor does not run as root"
        if not _uids_mapped(uid_base, uid_count):
            return (
                f"uids {uid_base}..{uid_base + uid_count - 1} are not mapped in this user namespace"
            )
    with tempfile.TemporaryDirectory(prefix="mitosis-sandbox-probe-") as folder:
        os.chmod(folder, 0o755)  # the probe's uid must reach its workspace
        workspace = Workspace(Path(folder) / "workspace")
        script = workspace.write_hidden("probe.py", b"import json, os\nprint(os.getuid())\n")
        config = SandboxConfig(mode=mode, uid_base=uid_base, uid_count=uid_count)
        uid = uid_base + random.randrange(uid_count) if mode != "plain" else None
        _prepare(workspace, uid, config)
        try:
            done = subprocess.run(
                boot_command(mode, python, config, workspace, script, 10, uid),
                cwd=workspace.root,
                env=environment(workspace),
                capture_output=True,
                timeout=_PROBE_TIMEOUT,
                check=False,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            return f"a probe did not finish in {_PROBE_TIMEOUT:g} s"
        finally:
            if uid is not None:
                _kill_now(uid)
            _hand_back(workspace, config)
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    if done.returncode != 0:
        return lines[-1] if lines else f"a probe exited with status {done.returncode}"
    expected = str(uid if uid is not None else os.getuid())
    if done.stdout.decode().strip() != expected:
        return f"a probe ran as uid {done.stdout.decode().strip()}, not {expected}"
    return None


def _uids_mapped(base: int, count: int) -> bool:
    """Tell whether this user namespace maps the whole uid range (a rootless container may not)."""
    try:
        lines = Path("/proc/self/uid_map").read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        inside, _, length = (int(part) for part in line.split())
        if inside <= base and base + count <= inside + length:
            return True
    return False


def _interpreter(configured: Path | None) -> Path:
    """Return the interpreter scripts run with."""
    if configured is not None:
        return configured
    base = getattr(sys, "_base_executable", None) or sys.executable
    return Path(os.path.realpath(base))


def _prefix(python: Path) -> Path:
    """Return the installation folder of an interpreter (the parent of its bin folder)."""
    return python.parent.parent


def _first_closed_folder(path: Path) -> Path | None:
    """Return the outermost folder on the way to `path` (itself included) that others may
    not enter, or None when others can reach it."""
    for folder in [*reversed(path.parents), path]:
        try:
            mode = os.stat(folder).st_mode
        except OSError:
            return None
        if not mode & stat.S_IXOTH:
            return folder
    return None


def _make_undumpable() -> None:
    """Make this process's /proc files root's, so a script of the same user cannot read them."""
    import ctypes

    pr_set_dumpable = 4
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
        logger.warning(
            "could not make the executor non-dumpable: %s", os.strerror(ctypes.get_errno())
        )


def _threads_of(uid: int) -> int:
    """Return how many threads `uid` runs now: what RLIMIT_NPROC counts against."""
    total = 0
    for name in _proc_entries():
        status = _read_status(name)
        if status is not None and status.get("Uid", "").split()[:1] == [str(uid)]:
            total += int(status.get("Threads", "1"))
    return total


def _proc_entries() -> Sequence[str]:
    try:
        return [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError as error:
        if error.errno == errno.ENOENT:
            return []
        raise


def _read_status(pid: str) -> dict[str, str] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields
