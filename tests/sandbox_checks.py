"""Looking for processes a python tool run may have left behind, from the test's side."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path


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
    """Give processes killed a moment to go; return those with `text` still alive."""
    for _ in range(100):
        if not (left := processes_with(text)):
            return []
        await asyncio.sleep(0.05)
    return left


def uid_base() -> int:
    """Return the first of 256 uids no other test session uses (sessions share the machine)."""
    return 1_950_000_000 + random.randrange(100_000) * 256
