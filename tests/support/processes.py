"""Start the services as real subprocesses, the way `make run` does, on free ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .waiting import eventually_sync

BIN = Path(sys.executable).parent
_PORT = re.compile(r"serving on port (\d+)")


@dataclass
class Service:
    """A service running as a subprocess, its log in a file."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        """Send the signal and return the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def start_service(
    command: str, log: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 20
) -> Service:
    """Start `command` with `--listen=127.0.0.1:0` and return once it says its port."""
    start = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        process = subprocess.Popen(
            [str(BIN / command), "--listen=127.0.0.1:0", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            # The offline model unless a test says otherwise, whatever the developer's shell has.
            env={**os.environ, "MITOSIS_MODEL": "offline", **(env or {})},
        )

    def said_port() -> int | None:
        found = _PORT.findall(log.read_bytes()[start:].decode(errors="replace"))
        if found:
            return int(found[-1])
        if process.poll() is not None:
            raise RuntimeError(f"{command} exited with {process.returncode}:\n{log.read_text()}")
        return None

    try:
        port = eventually_sync(said_port, timeout=timeout, what=f"{command} says its port")
    except TimeoutError:
        process.kill()
        raise RuntimeError(
            f"{command} did not start within {timeout} s:\n{log.read_text()}"
        ) from None
    return Service(process, port, log)


def start_planner(folder: Path, *args: str, env: dict[str, str] | None = None) -> Service:
    """`mitosis-planner` on a free port, its log `folder/planner.log`."""
    return start_service("mitosis-planner", folder / "planner.log", *args, env=env)


def start_executor(
    folder: Path,
    planner: Service,
    *args: str,
    name: str = "executor",
    pace: float | str = 0.01,
    heartbeat: float | str = 0.5,
    env: dict[str, str] | None = None,
) -> Service:
    """`mitosis-executor` on a free port (or `--listen` in `args`) with the offline model
    paced by `pace`, its data in `folder/data` and its log `folder/<name>.log`."""
    return start_service(
        "mitosis-executor",
        folder / f"{name}.log",
        f"--planner={planner.target}",
        f"--data-dir={folder / 'data'}",
        f"--offline-pace={pace}",
        f"--heartbeat-interval={heartbeat}",
        *args,
        env=env,
    )
