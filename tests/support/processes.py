"""Start the services as real subprocesses, the way `make run` does, on free ports."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _PORT.findall(log.read_bytes()[start:].decode(errors="replace"))
        if found:
            return Service(process, int(found[-1]), log)
        if process.poll() is not None:
            raise RuntimeError(f"{command} exited with {process.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{command} did not start within {timeout} s:\n{log.read_text()}")
