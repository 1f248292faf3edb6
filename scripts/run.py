"""Start the planner and the executor on their embedded defaults; Ctrl-C stops both."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
PLANNER = os.environ.get("MITOSIS_PLANNER_LISTEN", "127.0.0.1:50052")
EXECUTOR = os.environ.get("MITOSIS_EXECUTOR_LISTEN", "127.0.0.1:50051")


def wait_for_port(address: str, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Return once something accepts connections at address; fail if the process died."""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with status {process.returncode}")
        try:
            with socket.create_connection((host, int(port)), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {address} after {timeout:.0f} s")


def main() -> int:
    env = {**os.environ, "MITOSIS_PLANNER": PLANNER}
    processes: list[subprocess.Popen[bytes]] = []

    def stop(*_: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        planner = subprocess.Popen([BIN / "mitosis-planner", f"--listen={PLANNER}"], env=env)
        processes.append(planner)
        wait_for_port(PLANNER, planner)
        executor = subprocess.Popen([BIN / "mitosis-executor", f"--listen={EXECUTOR}"], env=env)
        processes.append(executor)
        wait_for_port(EXECUTOR, executor)
    except BaseException:
        stop()
        raise
    print(
        f"\nMitosis is running (offline model): executor {EXECUTOR}, planner {PLANNER}.\n"
        "In another terminal:  .venv/bin/mitosis run"
        ' "Write a short market brief on home solar batteries"\n'
        "Ctrl-C stops both services.\n",
        flush=True,
    )
    while all(process.poll() is None for process in processes):
        time.sleep(0.2)
    stop()  # when one service stops, stop the other too
    codes = [process.wait() for process in processes]
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
