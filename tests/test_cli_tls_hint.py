"""A plain-text `mitosis` against a TLS executor says to give --tls-ca, not just "Socket closed"."""

from __future__ import annotations

import asyncio

import pytest

from mitosis.cli.main import main
from mitosis.cli.status import ExitStatus
from tests.support.executors import StartExecutor
from tests.support.tls_stack import authority, planner, start

__all__ = ["authority", "planner", "start"]  # fixtures


async def test_a_plaintext_cli_against_tls_hints_at_tls_ca(
    start: StartExecutor, capsys: pytest.CaptureFixture[str]
) -> None:
    executor = await start()
    env = {"MITOSIS_TARGET": f"127.0.0.1:{executor.port}"}
    argv = ["ls", "--reconnect-deadline", "1"]
    assert await asyncio.to_thread(main, argv, env) == ExitStatus.UNAVAILABLE
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach the TaskService at 127.0.0.1:{executor.port}: ")
    assert "if the server uses TLS, give the CA that signed its certificate (--tls-ca FILE" in err
