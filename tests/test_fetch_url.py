"""fetch_url against real local HTTP servers: what it returns, and everything it refuses.

The address policy is injectable, so a test can treat exactly one local server (one
127.0.0.1 port) as if it were public; everything else on loopback stays refused.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mitosis.errors import ResourceExhausted
from mitosis.executor.events.hub import EventHub
from mitosis.executor.events.log import EventLog
from mitosis.executor.store.sqlite import SqliteStore
from mitosis.executor.tools.fetch import FetchSettings, IPAddress, fetch_url, public_only
from mitosis.executor.tools.recorded import RecordedTools
from mitosis.executor.tools.workspace import Workspace
from mitosis.tool_errors import ToolError
from mitosis.v1 import task_pb2


class Handler(BaseHTTPRequestHandler):
    """Pages by path: text, HTML, JSON, binary, big, slow, and redirects."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        path, _, query = self.path.partition("?")
        if path == "/text":
            self._send(200, "text/plain; charset=utf-8", "caf\u00e9 au lait\n".encode())
        elif path == "/latin1":
            self._send(200, "text/html; charset=iso-8859-1", "<p>caf\u00e9</p>".encode("latin-1"))
        elif path == "/idna":
            self._send(200, "text/plain; charset=idna", "caf\u00e9".encode())
        elif path == "/json":
            self._send(200, "application/json", b'{"answer": 42}')
        elif path == "/binary":
            self._send(200, "application/octet-stream", bytes(range(256)))
        elif path == "/missing":
            self._send(404, "text/plain", b"not here")
        elif path == "/big":
            self._send(200, "text/plain", b"x" * 100_000)
        elif path == "/big-undeclared":
            self._stream(200, "text/plain", [b"y" * 10_000] * 10)
        elif path == "/slow":
            self._stream(200, "text/plain", [b"z"] * 100, pause=0.2)
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", query)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, "text/plain", b"no such page")

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _stream(
        self, status: int, content_type: str, pieces: list[bytes], pause: float = 0.0
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for piece in pieces:
                self.wfile.write(piece)
                self.wfile.flush()
                time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading, as it should

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server:
    """A real HTTP server on a free loopback port, in a thread."""

    def __init__(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.requests = []  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests  # type: ignore[attr-defined, no-any-return]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def allowed() -> Iterator[Server]:
    """The server a test treats as public."""
    server = Server()
    yield server
    server.stop()


@pytest.fixture
def internal() -> Iterator[Server]:
    """Another local server, which must stay out of reach."""
    server = Server()
    yield server
    server.stop()


def settings_allowing(server: Server, **limits: float) -> FetchSettings:
    """Settings under which exactly 127.0.0.1:<server.port> counts as public."""
    local = ipaddress.ip_address("127.0.0.1")

    def policy(address: IPAddress, port: int) -> str | None:
        if address == local and port == server.port:
            return None
        return public_only(address, port)

    return FetchSettings(policy=policy, **limits)  # type: ignore[arg-type]


async def test_returns_the_text_of_a_page(allowed: Server) -> None:
    settings = settings_allowing(allowed)
    assert await fetch_url(f"{allowed.url}/text", settings) == ("caf\u00e9 au lait\n", "text/plain")
    assert await fetch_url(f"{allowed.url}/latin1", settings) == ("<p>caf\u00e9</p>", "text/html")
    # A charset Python knows but cannot decode pages with is read as UTF-8, not an error.
    assert await fetch_url(f"{allowed.url}/idna", settings) == ("caf\u00e9", "text/plain")
    assert await fetch_url(f"{allowed.url}/json", settings) == (
        '{"answer": 42}',
        "application/json",
    )


async def test_follows_a_redirect_within_the_allowed_server(allowed: Server) -> None:
    settings = settings_allowing(allowed)
    text, _ = await fetch_url(f"{allowed.url}/redirect?/text", settings)
    assert text == "caf\u00e9 au lait\n"
    assert allowed.requests == ["/redirect?/text", "/text"]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:{port}/text", "127.0.0.1 is a loopback address"),
        ("http://localhost:{port}/text", "localhost (127.0.0.1) is a loopback address"),
        ("http://[::1]:{port}/text", "::1 is a loopback address"),
        ("http://2130706433:{port}/text", "2130706433 (127.0.0.1) is a loopback address"),
        ("http://[::ffff:127.0.0.1]:{port}/", "is a private address"),
        ("http://10.1.2.3/", "10.1.2.3 is a private address"),
        ("http://192.168.0.1/", "192.168.0.1 is a private address"),
        ("http://172.16.5.4/", "172.16.5.4 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a cloud metadata address"),
        ("http://[fd00:ec2::254]/", "fd00:ec2::254 is a cloud metadata address"),
        ("http://169.254.1.1/", "169.254.1.1 is a link-local address"),
        ("http://100.64.0.1/", "100.64.0.1 is a shared (carrier-grade NAT) address"),
        ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
        ("http://0.0.0.0:{port}/", "0.0.0.0 is an unspecified address"),
        ("http://240.0.0.1/", "240.0.0.1 is a private address"),
        ("http://[64:ff9b::7f00:1]/", "64:ff9b::7f00:1 is not a public address"),
        ("http://[fec0::1]/", "fec0::1 is a site-local address"),
    ],
)
async def test_refuses_addresses_that_are_not_public(
    internal: Server, url: str, reason: str
) -> None:
    target = url.format(port=internal.port)
    with pytest.raises(ToolError) as caught:
        await fetch_url(target, FetchSettings(timeout=10))

    assert str(caught.value).startswith("fetch_url refused http://")
    assert str(caught.value).endswith(reason)
    assert internal.requests == []


async def test_refuses_a_redirect_from_an_allowed_server_to_loopback(
    allowed: Server, internal: Server
) -> None:
    settings = settings_allowing(allowed)
    for target in [f"{internal.url}/text", f"http://localhost:{internal.port}/text"]:
        with pytest.raises(ToolError, match=r"is a loopback address$"):
            await fetch_url(f"{allowed.url}/redirect?{target}", settings)

    assert internal.requests == []
    assert len(allowed.requests) == 2


async def test_refuses_a_redirect_to_another_scheme(allowed: Server) -> None:
    settings = settings_allowing(allowed)
    with pytest.raises(ToolError, match="fetches http:// and https:// URLs only, not 'file:"):
        await fetch_url(f"{allowed.url}/redirect?file:///etc/passwd", settings)


async def test_stops_after_the_redirect_limit(allowed: Server) -> None:
    settings = FetchSettings(policy=settings_allowing(allowed).policy, max_redirects=2)
    loop = f"{allowed.url}/redirect?/redirect?/redirect?/text"
    with pytest.raises(ToolError, match="stopped after 2 redirects"):
        await fetch_url(loop, settings)
    assert len(allowed.requests) == 3


@pytest.mark.parametrize("path", ["/big", "/big-undeclared"])
async def test_a_page_over_the_size_limit_is_refused(allowed: Server, path: str) -> None:
    settings = settings_allowing(allowed, max_bytes=50_000)
    with pytest.raises(ToolError) as caught:
        await fetch_url(f"{allowed.url}{path}", settings)

    assert isinstance(caught.value, ResourceExhausted)
    assert str(caught.value) == (
        f"fetch_url refused {allowed.url}{path}: the page is larger than its size limit"
        " (50,000 bytes)"
    )


async def test_a_slow_page_runs_into_the_time_limit(allowed: Server) -> None:
    settings = settings_allowing(allowed, timeout=1.0)
    with pytest.raises(ToolError) as caught:
        await fetch_url(f"{allowed.url}/slow", settings)
    assert (
        str(caught.value) == f"fetch_url gave up on {allowed.url}/slow after 1 s (its time limit)"
    )


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/binary", "fetch_url returns text only; {url}/binary is application/octet-stream"),
        ("/missing", "fetch_url got HTTP 404 Not Found from {url}/missing"),
    ],
)
async def test_non_text_and_errors_are_refused(allowed: Server, path: str, message: str) -> None:
    with pytest.raises(ToolError) as caught:
        await fetch_url(f"{allowed.url}{path}", settings_allowing(allowed))
    assert str(caught.value) == message.format(url=allowed.url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "fetches http:// and https:// URLs only"),
        ("ftp://example.com/x", "fetches http:// and https:// URLs only"),
        ("http:///path-only", "cannot use 'http:///path-only'"),
        ("http://no-such-host.invalid/", "no-such-host.invalid cannot be resolved"),
    ],
)
async def test_bad_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ToolError, match=message):
        await fetch_url(url, FetchSettings(timeout=10))


async def test_the_step_tool_is_off_unless_configured_and_logs_each_fetch(
    allowed: Server, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3")
    try:
        log = EventLog(store, EventHub())
        task = task_pb2.Task(task_id="0123456789abcdef", text="t")
        await store.create_task(task)
        workspace = Workspace(tmp_path / "workspace")

        def tools(fetch: FetchSettings | None) -> RecordedTools:
            return RecordedTools(
                log, task.task_id, 0, workspace, tool_timeout=5, page_window=0, fetch=fetch
            )

        with pytest.raises(ToolError, match=r"^fetch_url is turned off in this executor$"):
            await tools(None).fetch_url(f"{allowed.url}/text")
        text = await tools(settings_allowing(allowed)).fetch_url(f"{allowed.url}/text")
        events = await store.read_events(task.task_id, 0, 100)
    finally:
        await store.close()

    assert text == f"URL: {allowed.url}/text\n\ncaf\u00e9 au lait\n"
    assert [event.log_line.text for event in events] == [
        f"fetching {allowed.url}/text",
        f"fetched {allowed.url}/text: (no title), 13 characters of readable text from text/plain",
    ]
    assert allowed.requests == ["/text"]
