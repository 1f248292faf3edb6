"""A TLS chain for tests: a test CA, a planner that wants mutual TLS and a key, executors
serving TLS that call it, and Envoy serving HTTPS in front of them.

Fixtures (`authority`, `planner`, `start`, `tls_executor`) for test modules to import.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mitosis.executor.server import Executor, parse_args, start_executor
from mitosis.planner.server import Planner, start_planner
from mitosis.planner.server import parse_args as parse_planner_args
from mitosis.rpc.auth import key_line
from tests.certs import TestAuthority
from tests.gateway import Gateway, start_gateway_async
from tests.support.executors import StartExecutor

EXECUTOR_KEY = "mk_executor-test-key-000000000000000000000000"


@pytest.fixture
def authority(tmp_path: Path) -> TestAuthority:
    return TestAuthority(tmp_path / "pki")


@pytest.fixture
async def planner(tmp_path: Path, authority: TestAuthority) -> AsyncIterator[Planner]:
    """A planner that wants both a client certificate and the executor's key."""
    keys = tmp_path / "planner-keys"
    keys.write_text(key_line("executor", EXECUTOR_KEY) + "\n")
    server = authority.issue("planner", server=True)
    planner = await start_planner(
        parse_planner_args(
            [
                "--listen=127.0.0.1:0",
                "--model=offline",
                f"--api-keys={keys}",
                f"--tls-cert={server.cert}",
                f"--tls-key={server.key}",
                f"--tls-client-ca={authority.cert}",
            ]
        )
    )
    yield planner
    await planner.stop()


@pytest.fixture
async def start(
    tmp_path: Path, authority: TestAuthority, planner: Planner
) -> AsyncIterator[StartExecutor]:
    started: list[Executor] = []
    server = authority.issue("executor", server=True)

    async def start(*flags: str) -> Executor:
        executor = await start_executor(
            parse_args(
                [
                    "--listen=127.0.0.1:0",
                    f"--planner=localhost:{planner.port}",
                    f"--data-dir={tmp_path / 'data'}",
                    "--offline-pace=0",
                    "--model=offline",
                    f"--tls-cert={server.cert}",
                    f"--tls-key={server.key}",
                    *flags,
                ]
            )
        )
        started.append(executor)
        return executor

    yield start
    for executor in started:
        await executor.stop(None)


@pytest.fixture
async def tls_executor(start: StartExecutor, authority: TestAuthority) -> Executor:
    """An executor serving TLS that calls the planner over mutual TLS, with its key."""
    client = authority.issue("executor-client", server=False)
    return await start(
        f"--planner-ca={authority.cert}",
        f"--planner-client-cert={client.cert}",
        f"--planner-client-key={client.key}",
        f"--planner-key={EXECUTOR_KEY}",
    )


async def tls_gateway(
    tmp_path: Path,
    authority: TestAuthority,
    executor: Executor,
    static_dir: Path | None = None,
    **settings: object,
) -> Gateway:
    """Envoy serving HTTPS from its own certificate, calling the executor over TLS."""
    server = authority.issue("gateway", server=True)
    return await start_gateway_async(
        tmp_path,
        executor.port,
        static_dir,
        **{"tls_cert": server.cert, "tls_key": server.key, "executor_ca": authority.cert}
        | settings,
    )
