"""Looking for processes a python tool run may have left behind, from the test's side."""

from __future__ import annotations

import os
import random
import textwrap
from pathlib import Path

from .waiting import eventually


def processes_with(text: str) -> list[int]:
    """Return the ids of live processes whose command line contains `text` (zombies and this
    process left out)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            command = Path(f"/proc/{name}/cmdline").read_bytes()
            state = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X") and text.encode() in command:
            found.append(int(name))
    return found


async def until_gone(text: str) -> list[int]:
    """Give processes killed a moment (5 s) to go; return those with `text` still alive."""
    try:
        await eventually(lambda: not processes_with(text), timeout=5, what=f"no {text!r}")
    except TimeoutError:
        return processes_with(text)
    return []


def uid_base() -> int:
    """Return the first of 256 uids no other test session uses (sessions share the machine)."""
    return 1_950_000_000 + random.randrange(100_000) * 256


def script(code: str) -> str:
    """`code` as a program: dedented, one trailing newline."""
    return textwrap.dedent(code).strip() + "\n"


def sleeper(marker: str) -> str:
    """Return code that starts a child sleeping for ever, `marker` on its command line."""
    return f"""
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)", "{marker}"])
print("started", flush=True)
"""
