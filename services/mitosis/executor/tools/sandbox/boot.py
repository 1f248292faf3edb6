"""What runs in a python tool's child process before the script: the sandbox, set up from inside.

The executor starts this file as `python -I -S boot.py SPEC` (SPEC is JSON, see
`mitosis.executor.tools.sandbox.confine`), still as the executor's user, in a new session.
It uses the standard library only and ends by executing the script's interpreter, in one of
three modes:

- "isolated" (root with namespaces): new mount, PID, network, IPC and UTS namespaces. A
  first child is PID 1 of the new PID namespace; it hides folders behind empty tmpfs mounts,
  makes every mount read-only except the workspace, mounts a /proc that shows only the
  sandbox, drops to the run's uid and gid, and starts the script as its child. When PID 1
  exits (the script ended, or it was killed), the kernel kills every process left in the
  namespace, so nothing a script started outlives it. This process waits for PID 1 and
  exits as the script did.
- "uid" (root without namespaces): drops to the run's uid and gid, then runs the script.
- "plain" (not root): limits only, then runs the script.

Every mode sets no_new_privs, the resource limits (RLIMIT_NPROC among them) and a
parent-death signal, so the script dies with the executor even when that is killed with
SIGKILL. A setup failure prints one line starting with "sandbox:" on stderr and exits 125.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
from typing import Any

SETUP_FAILED = 125
"""The exit status when the sandbox could not be set up."""

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACES = CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000

MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
AT_FDCWD = -100
AT_RECURSIVE = 0x8000
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (added in Linux 5.12)

PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38

_HIDING_TMPFS = "mode=0755,size=64k,nr_inodes=256"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class SetupError(Exception):
    """A step of setting the sandbox up failed; the message says which."""


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def main() -> None:
    """Set the sandbox up as SPEC says, then become the script's interpreter."""
    spec: dict[str, Any] = json.loads(sys.argv[1])
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if spec["mode"] == "isolated":
            _run_isolated(spec)
        _die_with_parent(os.getppid())
        if spec["mode"] == "uid":
            _drop_privileges(spec["uid"], spec["gid"])
            _die_with_parent(os.getppid())  # changing credentials cleared it
        _restrict(spec)
        _exec_script(spec)
    except SetupError as error:
        _fail(str(error))


def _run_isolated(spec: dict[str, Any]) -> None:
    """Start PID 1 of new namespaces, wait for it, and end as the script ended."""
    _die_with_parent(os.getppid())
    _call(_libc.unshare(NAMESPACES), "create namespaces (unshare)")
    status_read, status_write = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(status_read)
        try:
            _be_init(spec, status_write)
        except SetupError as error:
            _fail(str(error))
        except BaseException as error:  # a child must never return into the parent's code
            _fail(f"unexpected {type(error).__name__}: {error}")
    os.close(status_write)
    _, init_status = os.waitpid(init, 0)
    with os.fdopen(status_read, "rb") as reader:
        reported = reader.read()
    if not reported:  # PID 1 failed before the script ended (or was killed)
        os._exit(_as_exit_code(init_status))
    _end_like(int(reported))


def _be_init(spec: dict[str, Any], status_write: int) -> None:
    """As PID 1: build the filesystem view, drop privileges, run the script, reap, report."""
    _die_with_parent(None)
    _mount(None, "/", None, MS_REC | MS_PRIVATE, None, "make mounts private")
    sources = {
        bind["source"]: os.open(bind["source"], os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for bind in spec["binds"]
    }
    for folder in spec["hide"]:
        flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
        _mount("tmpfs", folder, "tmpfs", flags, _HIDING_TMPFS, f"hide {folder}")
    for bind in spec["binds"]:
        os.makedirs(bind["target"], exist_ok=True)
        source = f"/proc/self/fd/{sources[bind['source']]}"
        _mount(source, bind["target"], None, MS_BIND, None, f"expose {bind['target']}")
    for fd in sources.values():
        os.close(fd)
    _set_mount_attributes("/", AT_RECURSIVE, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0)
    for bind in spec["binds"]:
        if bind["writable"]:
            set_flags = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
            _set_mount_attributes(bind["target"], 0, set_flags, MOUNT_ATTR_RDONLY)
    proc_flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    _mount("proc", "/proc", "proc", proc_flags, None, "mount /proc for the new PID namespace")
    # The old working directory lies on the read-only mount under the workspace's bind.
    os.chdir(spec["workspace"])
    _drop_privileges(spec["uid"], spec["gid"])
    _die_with_parent(None)
    _restrict(spec)
    script = os.fork()
    if script == 0:
        os.close(status_write)
        try:
            _die_with_parent(1)
            _exec_script(spec)
        except SetupError as error:
            _fail(str(error))
        except BaseException as error:
            _fail(f"unexpected {type(error).__name__}: {error}")
    while True:  # reap whatever the script orphaned, until the script itself ends
        pid, status = os.waitpid(-1, 0)
        if pid == script:
            os.write(status_write, str(status).encode())
            os._exit(0)  # the kernel now kills everything left in the namespace


def _restrict(spec: dict[str, Any]) -> None:
    """Forbid gaining privileges (setuid binaries, file capabilities) and set the limits."""
    _call(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "set no_new_privs")
    limits = spec["limits"]
    cpu = limits["cpu_seconds"]
    _cap(resource.RLIMIT_CPU, cpu, cpu + 1)
    _cap(resource.RLIMIT_AS, limits["memory_bytes"], limits["memory_bytes"])
    _cap(resource.RLIMIT_FSIZE, limits["file_size_bytes"], limits["file_size_bytes"])
    _cap(resource.RLIMIT_NPROC, limits["processes"], limits["processes"])
    _cap(resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"])


def _exec_script(spec: dict[str, Any]) -> None:
    """Become the script's interpreter (the environment is already the clean one)."""
    python = spec["python"]
    try:
        os.execve(python, [python, "-I", "-u", "-X", "utf8", spec["script"]], os.environ)
    except OSError as error:
        raise SetupError(f"could not start {python}: {error.strerror}") from None


def _drop_privileges(uid: int, gid: int) -> None:
    """Become the run's own uid and gid, with no supplementary groups and no capabilities."""
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as error:
        raise SetupError(f"could not switch to uid {uid}: {error.strerror}") from None


def _die_with_parent(parent: int | None) -> None:
    """Be killed when the parent dies; exit now if it already has (`parent` no longer ours)."""
    _call(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "set the parent-death signal")
    if parent is not None and os.getppid() != parent:
        os._exit(SETUP_FAILED)


def _cap(which: int, soft: int, hard: int) -> None:
    """Lower a resource limit (never raise it above what the executor had)."""
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


def _mount(
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int,
    data: str | None,
    what: str,
) -> None:
    result = _libc.mount(
        _bytes(source), _bytes(target), _bytes(fstype), ctypes.c_ulong(flags), _bytes(data)
    )
    _call(result, what)


def _set_mount_attributes(path: str, flags: int, attr_set: int, attr_clr: int) -> None:
    attributes = _MountAttr(attr_set, attr_clr, 0, 0)
    result = _libc.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_int(AT_FDCWD),
        _bytes(path),
        ctypes.c_uint(flags),
        ctypes.byref(attributes),
        ctypes.c_size_t(ctypes.sizeof(attributes)),
    )
    _call(result, f"set mount attributes of {path} (mount_setattr)")


def _call(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SetupError(f"could not {what}: {os.strerror(errno)}")


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def _as_exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _end_like(status: int) -> None:
    """Exit the way a process with wait status `status` did: same code, or same signal."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        os._exit(128 + signum)  # a signal that does not end a process
    os._exit(os.waitstatus_to_exitcode(status))


def _fail(message: str) -> None:
    os.write(2, f"sandbox: {message}\n".encode())
    os._exit(SETUP_FAILED)


if __name__ == "__main__":
    main()
