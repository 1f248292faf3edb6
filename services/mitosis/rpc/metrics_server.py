"""The metrics endpoint: `GET /metrics` on a port of its own, served by the service's event loop.

An asyncio server rather than prometheus_client's threaded one: collectors that read the
store are awaited before each scrape, on the loop that owns the store's connections, and
stopping it is one call. It answers only `GET /metrics` (and `/`), one request per
connection, at most MAX_CONNECTIONS at once, each within REQUEST_TIMEOUT seconds; scrapes
arriving together share one read of the store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from mitosis.rpc.settings import add_setting

logger = logging.getLogger(__name__)

Refresh = Callable[[], Awaitable[None]]
"""Run before each scrape, to read what collectors report (the store's task counts)."""

REQUEST_TIMEOUT = 5.0
"""Seconds a whole exchange may take, from connecting to the last byte of the answer."""
MAX_REQUEST_BYTES = 16 * 1024
MAX_CONNECTIONS = 16
"""Scrapes answered at once; a connection past them is closed at once (no waiting room)."""


def add_metrics_arguments(
    parser: argparse.ArgumentParser, env: Mapping[str, str], example_port: int
) -> None:
    """Add --metrics-listen (env MITOSIS_METRICS_LISTEN); off unless given."""
    add_setting(
        parser,
        "--metrics-listen",
        "MITOSIS_METRICS_LISTEN",
        env,
        default="",
        default_text="off",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, for example"
        f" 127.0.0.1:{example_port}; the endpoint has no authentication: keep it on loopback"
        " or a private network",
    )


@dataclass
class MetricsServer:
    """A running metrics endpoint."""

    server: asyncio.Server
    port: int
    connections: set[asyncio.StreamWriter]

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        self.server.close()
        for writer in list(self.connections):
            writer.close()
        await self.server.wait_closed()


class _SharedRefresh:
    """Runs `refresh` once for all the scrapes that arrive while it runs."""

    def __init__(self, refresh: Refresh) -> None:
        self._refresh = refresh
        self._running: asyncio.Future[None] | None = None

    async def __call__(self) -> None:
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._refresh())
        # Shielded: a scrape that times out must not cancel the others' refresh.
        await asyncio.shield(self._running)


async def start_metrics_server(
    address: str, registry: CollectorRegistry, refresh: Refresh | None = None
) -> MetricsServer:
    """Serve the registry at http://ADDRESS/metrics (port 0 picks a free port)."""
    host, port = split_address(address)
    shared = _SharedRefresh(refresh) if refresh is not None else None
    connections: set[asyncio.StreamWriter] = set()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(connections) >= MAX_CONNECTIONS:
            writer.close()  # busy: a scraper retries at its next interval
            return
        connections.add(writer)
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await _answer(reader, writer, registry, shared)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass  # the client went away or never asked properly; nothing to tell it
        except Exception:
            logger.exception("metrics: cannot answer a scrape")
        finally:
            connections.discard(writer)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(answer, host, port, limit=MAX_REQUEST_BYTES)
    bound: int = server.sockets[0].getsockname()[1]
    logger.info("metrics at http://%s:%d/metrics", host if ":" not in host else f"[{host}]", bound)
    return MetricsServer(server, bound, connections)


def split_address(address: str) -> tuple[str, int]:
    """Return (host, port) of "HOST:PORT" or "[IPV6]:PORT"; raise ValueError otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, not {address!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


async def _answer(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    registry: CollectorRegistry,
    refresh: Refresh | None,
) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        await _reply(writer, 400, "text/plain", b"bad request\n")
        return
    method, target, _ = parts
    path = target.split("?", 1)[0]
    if path not in ("/metrics", "/"):
        await _reply(writer, 404, "text/plain", b"not found; metrics are at /metrics\n")
        return
    if method not in ("GET", "HEAD"):
        await _reply(writer, 405, "text/plain", b"only GET\n", allow="GET, HEAD")
        return
    headers = dict(_header(line) for line in header_lines if ":" in line)
    if refresh is not None:
        await refresh()
    encode, content_type = choose_encoder(headers.get("accept", ""))
    body = encode(registry)
    await _reply(writer, 200, content_type, body, head_only=method == "HEAD")


def _header(line: str) -> tuple[str, str]:
    name, _, value = line.partition(":")
    return name.strip().lower(), value.strip()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


async def _reply(
    writer: asyncio.StreamWriter,
    status: int,
    content_type: str,
    body: bytes,
    *,
    head_only: bool = False,
    allow: str = "",
) -> None:
    lines = [
        f"HTTP/1.1 {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if allow:
        lines.append(f"Allow: {allow}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(body)
    await writer.drain()
