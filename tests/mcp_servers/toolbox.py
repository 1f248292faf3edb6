"""A small MCP server for the tests, written with the official SDK (`MCPServer`).

Run as a stdio server (`python tests/mcp_servers/toolbox.py`), or served over streamable HTTP by
the tests through `app()`. Its tools: `echo` (returns its text), `shout` (not on the test's
allow-list), `big` (a long output), `hang` (never answers), `crash` (the process exits at once),
`where` (the working folder and what the environment holds), `fail` (a tool error).
With TOOLBOX_START_SECONDS in its environment, it waits that long before it serves.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from mcp.server.mcpserver import MCPServer

server = MCPServer("toolbox")


@server.tool()
def echo(text: str) -> str:
    """Return the text as it was given."""
    return f"echo: {text}"


@server.tool()
def shout(text: str) -> str:
    """Return the text in capitals."""
    return text.upper()


@server.tool()
def big(lines: int) -> str:
    """Return that many numbered lines."""
    return "\n".join(f"line {number} of the big output" for number in range(1, lines + 1))


@server.tool()
async def hang() -> str:
    """Never answer."""
    await asyncio.sleep(3600)
    return "never"


@server.tool()
def crash() -> str:
    """End the server's process at once, as a crash would."""
    print("toolbox: crashing on purpose", file=sys.stderr, flush=True)
    os._exit(3)


@server.tool()
def where() -> str:
    """Say where the server runs and what it sees of the environment."""
    names = ",".join(sorted(os.environ))
    return f"cwd={os.getcwd()}\nenv={names}\nsecret={os.environ.get('MITOSIS_TEST_SECRET', '')}"


@server.tool()
def fail() -> str:
    """Fail, as a tool does when it cannot do what it was asked."""
    raise ValueError("the fail tool always fails")


if __name__ == "__main__":
    # A server that is slow to start (TOOLBOX_START_SECONDS), as a heavy one is.
    time.sleep(float(os.environ.get("TOOLBOX_START_SECONDS", "0")))
    server.run("stdio")
