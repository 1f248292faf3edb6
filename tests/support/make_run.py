"""`make run` and `make run-cluster` for tests: scripts/run.py as a subprocess on free ports.

Every address the runner would take by default (Envoy's 8080, the planner's, the executors',
Redis's, the metrics ports) and every folder it writes (MITOSIS_RUN_DIR, MITOSIS_DATA_DIR) is
the test's own, so it runs beside a developer's `make run`. The runner's output goes to a file.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from .ports import free_port
from .waiting import eventually_sync

ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 120.0
"""Generous: the services and Envoy start one after another on a busy machine."""


@dataclass
class Runner:
    """scripts/run.py running, with the addresses it was given."""

    process: subprocess.Popen[bytes]
    output: Path
    gateway: str
    planner: str
    executors: list[str]

    def text(self) -> str:
        """Everything the runner and its children printed so far."""
        return self.output.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait until the runner's output matches `pattern`; fail if it exits first."""

        def printed() -> re.Match[str] | None:
            found = re.search(pattern, self.text(), flags=re.MULTILINE)
            if not found and self.process.poll() is not None:
                pytest.fail(f"run.py exited with {self.process.returncode}:\n{self.text()}")
            return found

        try:
            return eventually_sync(printed, timeout=timeout, interval=0.1, what=repr(pattern))
        except TimeoutError:
            pytest.fail(f"no {pattern!r} in run.py's output after {timeout:g} s:\n{self.text()}")

    def pid_of(self, address: str) -> int:
        """The pid of the runner's child serving `address`."""
        flag = f"--listen={address}".encode()
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, NotADirectoryError):
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.process.pid and flag in cmdline:
                return int(entry.name)
        raise AssertionError(f"no child of run.py serves {address}")


@contextmanager
def running(
    tmp_path: Path, executors: int = 1, env: dict[str, str] | None = None
) -> Iterator[Runner]:
    """Start scripts/run.py (`--executors N`), yield it once its banner is out, then Ctrl-C it."""
    gateway, planner, redis = (f"127.0.0.1:{free_port()}" for _ in range(3))
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(executors)]
    output = tmp_path / "run.out"
    addresses_env = (
        {"MITOSIS_CLUSTER_LISTEN": ",".join(addresses), "MITOSIS_CLUSTER_REDIS": redis}
        if executors > 1
        else {"MITOSIS_EXECUTOR_LISTEN": addresses[0]}
    )
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "scripts" / "run.py"), "--executors", str(executors)],
            cwd=tmp_path,
            env={
                **os.environ,
                "MITOSIS_GATEWAY_LISTEN": gateway,
                "MITOSIS_PLANNER_LISTEN": planner,
                **addresses_env,
                "MITOSIS_RUN_DIR": str(tmp_path / "build"),
                "MITOSIS_DATA_DIR": str(tmp_path / "data"),
                "MITOSIS_METRICS_LISTEN": "",  # off: the runner's fixed metrics ports may be taken
                "MITOSIS_MODEL": "offline",
                **(env or {}),
            },
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    runner = Runner(process, output, gateway, planner, addresses)
    try:
        runner.wait_for("^Mitosis is running", STARTUP_S)
        yield runner
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
