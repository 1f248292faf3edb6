"""Free TCP ports on 127.0.0.1 for the processes tests start."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port nothing listens on right now (the caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
