"""A private `redis-server` for tests, on a free port, in a folder of the test's own.

Tests never use a Redis somebody else started. `RedisServer` starts Debian's
`redis-server` (`.ci/run` installs it when missing), waits until it answers PING, and stops
it; `restart()` stops it and starts it again on the same port and folder, so with
`aof=True` the data survives, as it would on a production Redis restart.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .ports import free_port
from .waiting import eventually_sync


class RedisServer:
    """One redis-server subprocess; its log is `folder/redis.log`."""

    def __init__(self, folder: Path, *, aof: bool = False, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.binary = binary
        self.folder = folder
        self.aof = aof
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.folder / "redis.log"

    def start(self, timeout: float = 10) -> None:
        """Start the server and return once it answers PING."""
        if self.process is not None:
            raise RuntimeError("redis-server is already running")
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.folder),
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        if self.aof:
            # Every write reaches the file before the reply: a restart loses nothing.
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        process = self.process

        def answers() -> bool:
            if process.poll() is not None:
                self.process = None
                raise RuntimeError(f"redis-server exited at start:\n{self.log.read_text()}")
            return self._answers()

        try:
            eventually_sync(answers, timeout=timeout, interval=0.02, what="redis-server answers")
        except TimeoutError:
            self.stop()
            raise RuntimeError(
                f"redis-server did not answer within {timeout} s:\n{self.log.read_text()}"
            ) from None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                # -LOADING while the data set loads; +PONG once it serves.
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10) -> None:
        """Stop the server (SIGTERM: a clean shutdown that flushes the AOF)."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def running_redis(folder: Path, *, aof: bool = False) -> Iterator[RedisServer]:
    """A started `RedisServer`, stopped at the end."""
    server = RedisServer(folder, aof=aof)
    server.start()
    try:
        yield server
    finally:
        server.stop()
