"""What runs in a stdio MCP server's process before the server: the python sandbox's limits.

The executor starts this file as `python -I -S mcp_boot.py SPEC` (SPEC is JSON: command, args,
env, limits). It uses the standard library only (and `boot.py` beside it, loaded by path):
it sets no_new_privs, the resource limits (CPU, address space, file size, processes, open
files) and a parent-death signal, exactly as a python tool run in "plain" mode gets them, then
executes the server's command with the clean environment SPEC gives, and nothing inherited.
A setup failure prints one line starting with "sandbox:" on stderr and exits 125.
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    """Confine this process as SPEC says, then become the MCP server."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import boot as sandbox_boot  # type: ignore[import-not-found]  # the python tool's child half

    spec = json.loads(sys.argv[1])
    try:
        sandbox_boot._restrict(spec)
        sandbox_boot._die_with_parent(None)
    except sandbox_boot.SetupError as error:
        sandbox_boot._fail(str(error))
    command = spec["command"]
    env = dict(spec["env"])
    try:
        os.execvpe(command, [command, *spec["args"]], env)
    except OSError as error:
        sandbox_boot._fail(f"could not start the MCP server {command!r}: {error.strerror}")


if __name__ == "__main__":
    main()
