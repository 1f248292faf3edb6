"""Processes the benchmark starts: its servers, Envoy, Redis, the real services.

Every one of them is stopped by the benchmark (an `AsyncExitStack` in bench.run) and also
dies with it (PR_SET_PDEATHSIG) if the benchmark itself is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitosis.gateway import EnvoyProcess, GatewaySettings

BIN = Path(sys.executable).parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
Child = asyncio.subprocess.Process


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- /proc ----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" that ends the command name, utime and stime are fields 12 and 13 (0-based).
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """The process's resident set size now (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def machine_ticks() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    busy = user + nice + system + irq + softirq
    return busy / CLOCK_TICKS, steal / CLOCK_TICKS


class Machine:
    """Cores busy on the whole machine over a window (every process, not only ours)."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._busy0, self._steal0 = machine_ticks()
        self.cores = 0.0
        self.steal = 0.0

    def stop(self) -> Machine:
        wall = time.perf_counter() - self._t0
        busy, steal = machine_ticks()
        if wall > 0:
            self.cores = (busy - self._busy0) / wall
            self.steal = (steal - self._steal0) / wall
        return self


class Usage:
    """CPU time and peak RSS of a process over a window, RSS sampled every 50 ms."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss_before = rss_bytes(pid)
        self.rss_peak = self.rss_before
        self._cpu0 = cpu_seconds(pid)
        self._t0 = time.perf_counter()
        self.cpu = 0.0
        self.wall = 0.0
        self._sampler: asyncio.Task[None] | None = None

    def start(self) -> Usage:
        """Restart the CPU window now (RSS before stays as measured at creation)."""
        self._cpu0 = cpu_seconds(self.pid)
        self._t0 = time.perf_counter()
        self._sampler = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        while True:
            self.rss_peak = max(self.rss_peak, rss_bytes(self.pid))
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self.cpu = cpu_seconds(self.pid) - self._cpu0
        self.wall = time.perf_counter() - self._t0
        self.rss_peak = max(self.rss_peak, rss_bytes(self.pid))
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler

    @property
    def cores(self) -> float:
        """Average cores busy over the window."""
        return self.cpu / self.wall if self.wall > 0 else 0.0

    @property
    def rss_extra(self) -> int:
        return self.rss_peak - self.rss_before


# --- bench servers (bench/servers.py) --------------------------------------------------------


class BenchServer:
    """A `python -m bench.servers KIND` process, driven over its stdin/stdout."""

    def __init__(self, kind: str, workdir: Path) -> None:
        self.kind = kind
        self.workdir = workdir
        self.port = 0
        self.pid = 0
        self._process: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self._profiler: subprocess.Popen[bytes] | None = None

    async def start(self, within: float = 30) -> BenchServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / f"{self.kind}.log").open("ab")
        command = [sys.executable, "-m", "bench.servers", self.kind]
        if self.kind == "mitosis":
            command += ["--data-dir", str(self.workdir / "data")]
        self._process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            limit=1 << 20,
        )
        log.close()
        hello = await asyncio.wait_for(self._readline(), within)
        self.port, self.pid = int(hello["port"]), int(hello["pid"])
        return self

    async def _readline(self) -> dict[str, Any]:
        assert self._process is not None
        assert self._process.stdout is not None
        line = await self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"bench server {self.kind} exited; see {self.workdir}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"bench server {self.kind}: {answer['error']}")
        return answer

    async def call(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send one command and return its answer."""
        assert self._process is not None
        assert self._process.stdin is not None
        async with self._lock:
            self._process.stdin.write(json.dumps({"op": op, **fields}).encode() + b"\n")
            await self._process.stdin.drain()
            return await self._readline()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def profile(self, out: Path, rate: int = 250) -> None:
        """Record the server with py-spy (speedscope JSON) until it stops."""
        spy = shutil.which("py-spy") or str(BIN / "py-spy")
        command = [spy, "record", "--pid", str(self.pid), "--rate", str(rate)]
        command += ["--format", "speedscope", "--output", str(out), "--nonblocking"]
        self._profiler = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(Exception):
                assert process.stdin is not None
                process.stdin.write(b'{"op": "quit"}\n')
                await process.stdin.drain()
                process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._profiler is not None:
            # py-spy writes its file when the process it records exits.
            try:
                await asyncio.to_thread(self._profiler.wait, 30)
            except subprocess.TimeoutExpired:
                self._profiler.send_signal(signal.SIGINT)
                await asyncio.to_thread(self._profiler.wait, 10)
            self._profiler = None


# --- Envoy ----------------------------------------------------------------------------------


class Envoy:
    """Envoy from the project's own configuration (mitosis.gateway) in front of one server."""

    def __init__(self, upstream_port: int, workdir: Path) -> None:
        settings = GatewaySettings(
            listen_host="127.0.0.1",
            listen_port=0,
            executors=(("127.0.0.1", upstream_port),),
            static_dir=None,
            admin_port=0,
        )
        self.process = EnvoyProcess(settings, workdir, die_with_parent=True)

    async def start(self) -> Envoy:
        await self.process.start_async()
        return self

    @property
    def port(self) -> int:
        assert self.process.port is not None
        return self.process.port

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    async def stop(self) -> None:
        await self.process.stop_async()


# --- Redis and the real services -------------------------------------------------------------


async def _spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> Child:
    """Start a command with its output in `log`; it dies with this process."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,
        )


async def _terminate(process: Child | None, grace: float = 10) -> None:
    if process is None or process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), grace)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class Redis:
    """A private redis-server on a free port, no persistence (like tests/redis_server.py)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.process: Child | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, within: float = 10) -> Redis:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process = await _spawn(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
             "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""],
            self.workdir / "redis.log",
        )  # fmt: skip
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.process.returncode is not None:
                raise RuntimeError(f"redis-server exited; see {self.workdir / 'redis.log'}")
            if await asyncio.to_thread(_pong, self.port):
                return self
            await asyncio.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING")

    async def stop(self) -> None:
        await _terminate(self.process)
        self.process = None


_PORT = re.compile(rb"serving on port (\d+)")


@dataclass
class Service:
    """mitosis-planner or mitosis-executor as a subprocess, the way `make run` starts them."""

    process: Child
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    async def start(cls, command: str, log: Path, *args: str, within: float = 30) -> Service:
        process = await _spawn(
            [str(BIN / command), "--listen=127.0.0.1:0", *args],
            log,
            env={**os.environ, "MITOSIS_MODEL": "offline"},
        )
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = _PORT.findall(await asyncio.to_thread(log.read_bytes))
            if found:
                return cls(process, int(found[-1]))
            if process.returncode is not None:
                raise RuntimeError(f"{command} exited with {process.returncode}; see {log}")
            await asyncio.sleep(0.05)
        process.kill()
        raise RuntimeError(f"{command} did not start within {within} s; see {log}")

    async def stop(self) -> None:
        await _terminate(self.process)
