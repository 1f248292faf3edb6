"""A real Envoy in front of real executors, for tests: `start_gateway` and the `gateway` fixture.

Envoy is rendered from the one template (envoy/envoy.yaml) by mitosis.gateway, listens on a
port it picks itself (read back through its admin interface, so no port race), and keeps that
port across `stop()` and `start()`. Its log is `envoy.log` in the gateway's folder under
tmp_path. Always stop it: the fixture does; `start_gateway` callers use `with` or `stop()`.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from mitosis.executor.server import Executor
from mitosis.gateway import DEFAULT_STATIC_DIR, EnvoyProcess, GatewaySettings

ALLOWED_ORIGIN = "http://localhost:5173"
"""An origin other than the gateway's own that the test gateways allow (CORS)."""


class Gateway:
    """Envoy in front of executors on 127.0.0.1."""

    def __init__(self, envoy: EnvoyProcess) -> None:
        self.envoy = envoy

    @property
    def port(self) -> int:
        """The public port (the same after a restart)."""
        assert self.envoy.port is not None, "the gateway has not started yet"
        return self.envoy.port

    @property
    def url(self) -> str:
        """The UI's origin, e.g. http://127.0.0.1:PORT (https with TLS; no trailing slash)."""
        return f"{self.envoy.settings.scheme}://127.0.0.1:{self.port}"

    @property
    def target(self) -> str:
        """The gRPC target, e.g. 127.0.0.1:PORT (native gRPC over h2c)."""
        return f"127.0.0.1:{self.port}"

    @property
    def admin_port(self) -> int | None:
        """Envoy's admin interface while it runs."""
        return self.envoy.admin_port

    @property
    def log_path(self) -> Path:
        """Envoy's own log."""
        return self.envoy.log_path

    @property
    def config_path(self) -> Path:
        """The rendered configuration."""
        return self.envoy.config_path

    @property
    def running(self) -> bool:
        return self.envoy.running

    def start(self) -> None:
        """Start Envoy (again) on the same port; returns once it serves."""
        self.envoy.start()

    def stop(self) -> None:
        """Stop Envoy (SIGTERM); open streams through it break. Safe to call twice."""
        self.envoy.stop()

    async def astart(self) -> None:
        """`start()` that keeps the event loop (and in-process executors) running."""
        await self.envoy.start_async()

    async def astop(self) -> None:
        """`stop()` for async tests."""
        await self.envoy.stop_async()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _prepare(
    tmp_path: Path,
    executor_port: int | Sequence[int],
    static_dir: Path | None,
    port: int,
    stream_idle_timeout_s: float,
    cors_origins: Sequence[str],
    overrides: dict[str, Any],
) -> Gateway:
    ports = [executor_port] if isinstance(executor_port, int) else list(executor_port)
    settings = GatewaySettings(
        listen_host="127.0.0.1",
        listen_port=port,
        executors=tuple(("127.0.0.1", p) for p in ports),
        static_dir=static_dir,
        cors_origins=tuple(cors_origins),
        admin_port=0,
        stream_idle_timeout_s=stream_idle_timeout_s,
        **overrides,
    )
    workdir = Path(tempfile.mkdtemp(prefix="gateway-", dir=tmp_path))
    return Gateway(EnvoyProcess(settings, workdir))


def start_gateway(
    tmp_path: Path,
    executor_port: int | Sequence[int],
    static_dir: Path | None,
    *,
    port: int = 0,
    stream_idle_timeout_s: float = 300,
    cors_origins: Sequence[str] = (ALLOWED_ORIGIN,),
    **settings: Any,
) -> Gateway:
    """Start Envoy in front of the executor(s) on 127.0.0.1 and return once it serves.

    `port` 0 lets Envoy pick a free port. `static_dir` None serves the "UI not built" page.
    Other GatewaySettings fields come as keywords (TLS: tls_cert, tls_key, executor_ca).
    Blocks while Envoy starts: from async tests with in-process executors use
    `start_gateway_async`, so the executors can answer Envoy's health checks meanwhile.
    """
    gateway = _prepare(
        tmp_path, executor_port, static_dir, port, stream_idle_timeout_s, cors_origins, settings
    )
    gateway.start()
    return gateway


async def start_gateway_async(
    tmp_path: Path,
    executor_port: int | Sequence[int],
    static_dir: Path | None,
    *,
    port: int = 0,
    stream_idle_timeout_s: float = 300,
    cors_origins: Sequence[str] = (ALLOWED_ORIGIN,),
    **settings: Any,
) -> Gateway:
    """`start_gateway` for async tests."""
    gateway = _prepare(
        tmp_path, executor_port, static_dir, port, stream_idle_timeout_s, cors_origins, settings
    )
    await gateway.astart()
    return gateway


@pytest.fixture
def gateway_static_dir() -> Path | None:
    """The UI the `gateway` fixture serves: the Vite build (override this fixture to change)."""
    return DEFAULT_STATIC_DIR


@pytest.fixture
async def gateway(
    tmp_path: Path, executor: Executor, gateway_static_dir: Path | None
) -> AsyncIterator[Gateway]:
    """Envoy on a free port in front of the `executor` fixture, serving `gateway_static_dir`."""
    started = await start_gateway_async(tmp_path, executor.port, gateway_static_dir)
    yield started
    await started.astop()
