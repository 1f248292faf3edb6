"""Web research: web_search against fake providers speaking SearXNG's, Tavily's and Brave's wire
formats, fetch_url's readable text, and a task that searches, reads two pages served locally and
writes a document citing them, run against the fake OpenAI server. Nothing leaves loopback."""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import grpc
import pytest

from mitosis.executor.server import Executor, parse_args, start_executor
from mitosis.executor.tools.fetch import FetchSettings, IPAddress, fetch_page, public_only
from mitosis.executor.tools.web_search import SearchSettings, format_results, web_search
from mitosis.planner.server import parse_args as parse_planner_args
from mitosis.planner.server import start_planner
from mitosis.tool_errors import ToolError
from mitosis.v1 import task_pb2, task_service_pb2
from mitosis.v1.task_service_pb2_grpc import TaskServiceStub
from tests.fake_openai import Call, FakeOpenAI, Text, ToolCalls, plan_reply, plan_step
from tests.support.watch import watch_all

KEY = "test-key-123"

PAGES = {
    "/solar.html": (
        "Home solar batteries in 2026",
        "<nav>Home | Shop | Login</nav><script>alert('x')</script>"
        "<article><h1>Home solar batteries in 2026</h1>"
        + "<p>A home battery stores the day's solar power for the evening. </p>" * 6
        + "<p>Typical systems hold 10 to 15 kWh.</p></article><footer>Copyright</footer>",
    ),
    "/prices.html": (
        "What batteries cost",
        "<article><h1>What batteries cost</h1>"
        + "<p>Installed prices fell to about 700 dollars per kWh this year. </p>" * 5
        + "</article>",
    ),
}


class Handler(BaseHTTPRequestHandler):
    """A search provider (SearXNG, Tavily and Brave, by path and method) and two pages."""

    server: SearchServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        self.server.requests.append(f"GET {self.path}")
        if url.path in PAGES:
            title, body = PAGES[url.path]
            html = f"<html><head><title>{title}</title></head><body>{body}</body></html>"
            self._send(200, "text/html; charset=utf-8", html.encode())
        elif url.path == "/search":  # SearXNG: /search?q=...&format=json
            if query.get("format") != ["json"]:
                self._send(403, "text/html", b"<html>format not allowed</html>")
                return
            results = [
                {"url": u, "title": t, "content": f"About {t}.", "engine": "fake"}
                for u, t in self.server.results()
            ]
            self._json({"query": query["q"][0], "number_of_results": 2, "results": results})
        elif url.path == "/res/v1/web/search":  # Brave
            if self.headers.get("X-Subscription-Token") != KEY:
                self._send(401, "application/json", b'{"error": "unauthorized"}')
                return
            results = [
                {"url": u, "title": t, "description": f"About {t}."}
                for u, t in self.server.results()
            ]
            self._json({"type": "search", "web": {"type": "search", "results": results}})
        else:
            self._send(404, "text/plain", b"not found")

    def do_POST(self) -> None:  # Tavily: POST /search with a bearer key
        length = int(self.headers.get("content-length", "0"))
        body = json.loads(self.rfile.read(length))
        self.server.requests.append(f"POST {self.path} {body['query']}")
        if self.headers.get("Authorization") != f"Bearer {KEY}":
            self._send(401, "application/json", b'{"detail": {"error": "Unauthorized"}}')
            return
        results = [
            {"title": t, "url": u, "content": f"About {t}.", "score": 0.9}
            for u, t in self.server.results()
        ]
        self._json({"query": body["query"], "results": results, "response_time": 0.1})

    def _json(self, data: object) -> None:
        self._send(200, "application/json", json.dumps(data).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class SearchServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def results(self) -> list[tuple[str, str]]:
        return [(f"{self.url}{path}", title) for path, (title, _) in PAGES.items()]


@pytest.fixture
def provider() -> Iterator[SearchServer]:
    server = SearchServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def loopback_allowed(server: SearchServer) -> FetchSettings:
    """fetch_url's guard as it is, with exactly this test server counted as public."""
    port = server.server_address[1]

    def policy(address: IPAddress, at: int) -> str | None:
        if address == ipaddress.ip_address("127.0.0.1") and at == port:
            return None
        return public_only(address, at)

    return FetchSettings(policy=policy)


@pytest.mark.parametrize("provider_name", ["searxng", "tavily", "brave"])
async def test_web_search_speaks_each_providers_wire_format(
    provider: SearchServer, provider_name: str
) -> None:
    settings = SearchSettings(provider=provider_name, url=provider.url, api_key=KEY)
    results = await web_search("home solar batteries", settings)
    assert [(r.url, r.title) for r in results] == provider.results()
    assert results[0].snippet == "About Home solar batteries in 2026."
    shown = format_results("home solar batteries", results)
    assert shown.startswith(f"1. Home solar batteries in 2026\n   {provider.url}/solar.html")
    expected = {
        "searxng": "GET /search?q=home+solar+batteries&format=json",
        "tavily": "POST /search home solar batteries",
        "brave": "GET /res/v1/web/search?q=home+solar+batteries&count=5",
    }[provider_name]
    assert provider.requests == [expected]


@pytest.mark.parametrize("provider_name", ["tavily", "brave"])
async def test_a_refused_key_is_a_tool_error_naming_the_variable(
    provider: SearchServer, provider_name: str
) -> None:
    settings = SearchSettings(provider=provider_name, url=provider.url, api_key="wrong")
    variable = {"tavily": "TAVILY_API_KEY", "brave": "BRAVE_API_KEY"}[provider_name]
    with pytest.raises(ToolError, match=f"refused the key \\(401\\); check {variable}"):
        await web_search("x", settings)


def test_a_keyed_provider_without_a_key_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="needs a key in BRAVE_API_KEY"):
        SearchSettings(provider="brave", url="https://api.search.brave.com")


async def test_fetch_url_returns_the_readable_text_and_title(provider: SearchServer) -> None:
    page = await fetch_page(f"{provider.url}/solar.html", loopback_allowed(provider))
    assert page.title == "Home solar batteries in 2026"
    assert "Typical systems hold 10 to 15 kWh." in page.text
    assert "<" not in page.text
    assert "alert" not in page.text
    assert "Shop" not in page.text


async def test_the_guard_still_refuses_loopback(provider: SearchServer) -> None:
    with pytest.raises(ToolError, match="is a loopback address"):
        await fetch_page(f"{provider.url}/solar.html", FetchSettings(timeout=5))


# End to end ---------------------------------------------------------------------------------


@pytest.fixture
async def research(
    fake_openai: FakeOpenAI, provider: SearchServer, tmp_path: Path
) -> AsyncIterator[tuple[TaskServiceStub, Executor]]:
    model = ["--model=openai", "--model-retries=1", "--model-timeout=5"]
    planner = await start_planner(parse_planner_args(["--listen=127.0.0.1:0", *model]))
    executor = await start_executor(
        parse_args(
            [
                "--listen=127.0.0.1:0",
                f"--planner=127.0.0.1:{planner.port}",
                f"--data-dir={tmp_path}",
                "--fetch-url",
                "--web-search=searxng",
                f"--web-search-url={provider.url}",
                *model,
            ]
        )
    )
    executor.runner.tools.fetch = loopback_allowed(provider)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{executor.port}") as channel:
        yield TaskServiceStub(channel), executor
    await executor.stop(None)
    await planner.stop(None)


async def test_a_task_searches_reads_two_pages_and_writes_a_cited_document(
    fake_openai: FakeOpenAI,
    provider: SearchServer,
    research: tuple[TaskServiceStub, Executor],
    tmp_path: Path,
) -> None:
    stub, _ = research
    solar, prices = (f"{provider.url}{path}" for path in PAGES)
    brief = {"file_name": "brief.md", "title": "Brief", "instructions": "Summarise, citing."}
    fake_openai.script(
        plan_reply(
            {
                "summary": "Research, then write.",
                "steps": [
                    plan_step(
                        "Research and write the brief",
                        "write_document",
                        file_name="brief.md",
                        doc_title="Brief",
                    )
                ],
            }
        ),
        ToolCalls([Call("web_search", {"query": "home solar batteries"})]),
        ToolCalls([Call("fetch_url", {"url": solar})]),
        ToolCalls([Call("fetch_url", {"url": prices})]),
        ToolCalls([Call("write_document", brief)]),
        Text(pieces=["# Brief\n\n", "Batteries hold 10 to 15 kWh [1] ", "and cost less [2].\n"]),
        Text("Done."),
    )
    created = await stub.CreateTask(task_service_pb2.CreateTaskRequest(text="Solar brief"))
    events = await watch_all(stub, created.task_id)
    task = await stub.GetTask(task_service_pb2.GetTaskRequest(task_id=created.task_id))

    assert task.state == task_pb2.Task.STATE_SUCCEEDED, task.error
    assert list(task.tools) == [
        "write_document",
        "python",
        "list_files",
        "read_file",
        "fetch_url",
        "web_search",
    ]
    sources = [(s.url, s.title, s.read) for s in task.steps[0].sources]
    assert sources == [
        (solar, "Home solar batteries in 2026", True),
        (prices, "What batteries cost", True),
    ]
    document = (tmp_path / "tasks" / task.task_id / "workspace" / "brief.md").read_text()
    assert document == (
        "# Brief\n\nBatteries hold 10 to 15 kWh [1] and cost less [2].\n"
        "\n\n## Sources\n\n"
        f"1. [Home solar batteries in 2026](<{solar}>)\n"
        f"2. [What batteries cost](<{prices}>)\n"
    )
    # The writer was given the numbered sources and the pages' readable text.
    writer = fake_openai.exchanges[5].text()
    assert f"[1] Home solar batteries in 2026 <{solar}>" in writer
    assert "Typical systems hold 10 to 15 kWh." in writer
    lines = [e.log_line.text for e in events if e.HasField("log_line")]
    assert "searching the web (searxng) for 'home solar batteries'" in lines
    assert any(line.startswith(f"fetched {prices}: What batteries cost") for line in lines)
    assert provider.requests[:3] == [
        "GET /search?q=home+solar+batteries&format=json",
        "GET /solar.html",
        "GET /prices.html",
    ]


def test_mitosis_get_lists_the_tools_and_each_steps_sources_as_text() -> None:
    from mitosis.cli.describe import task_lines

    task = task_pb2.Task(task_id="t", text="x", tools=["write_document", "search__find"])
    step = task.steps.add(index=0, title="Research", tool="write_document")
    step.sources.add(url="https://example.com/a", title="A page\x1b[31m", read=True)
    step.sources.add(url="https://example.com/b", title="B result")
    shown = "\n".join(line.plain for line in task_lines(task))
    assert "tools:    write_document, search__find" in shown
    assert "        read  A page" in shown
    assert "https://example.com/a" in shown
    assert "        found B result  https://example.com/b" in shown
    assert "\x1b" not in shown
