"""Tools from MCP servers, against real servers written with the SDK (tests/mcp_servers): a stdio
one run as a confined subprocess and a streamable-HTTP one on a free port. Listed, allowed,
called, timed out, crashed and restarted, capped, and every call and result logged."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from mitosis.executor.tools.mcp import (
    McpServerConfig,
    McpServers,
    ToolsConfigError,
    load_tools_config,
)
from mitosis.executor.tools.workspace import Workspace
from mitosis.tool_errors import ToolError
from mitosis.v1 import task_pb2

TOOLBOX = Path(__file__).parent / "mcp_servers" / "toolbox.py"
ALLOWED = ["echo", "big", "hang", "crash", "where", "fail"]


class Lines:
    """Collects the log lines a step's MCP calls write."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    async def __call__(self, source: int, text: str) -> None:
        self.lines.append((source, text))

    def texts(self) -> list[str]:
        return [text for _, text in self.lines]


def stdio_config(**options: object) -> McpServerConfig:
    settings: dict[str, object] = {
        "name": "box",
        "command": sys.executable,
        "args": ("-I", str(TOOLBOX)),
        "allowed_tools": tuple(ALLOWED),
        "timeout": 20.0,
    }
    settings.update(options)
    return McpServerConfig(**settings)  # type: ignore[arg-type]


async def started(config: McpServerConfig, tmp_path: Path) -> McpServers:
    servers = McpServers([config], tmp_path / "scratch")
    await servers.start()
    return servers


async def test_a_stdio_servers_allowed_tools_are_listed_and_called(tmp_path: Path) -> None:
    servers = await started(stdio_config(), tmp_path)
    assert [spec.name for spec in servers.specs()] == [f"box__{name}" for name in ALLOWED]
    echo = servers.specs()[0]
    assert echo.server == "box"
    assert echo.parameters["properties"] == {"text": {"title": "Text", "type": "string"}}
    lines = Lines()
    calls = servers.calls(Workspace(tmp_path / "workspace"), lines)
    try:
        assert await calls.call("box__echo", {"text": "hello"}) == "echo: hello"
    finally:
        await calls.aclose()
    # The call and its result stream to watchers, naming the server and the tool.
    assert lines.lines == [
        (task_pb2.LogLine.SOURCE_EXECUTOR, 'mcp box/echo: call {"text": "hello"}'),
        (task_pb2.LogLine.SOURCE_EXECUTOR, "mcp box/echo: result, 11 characters in 1 lines"),
        (task_pb2.LogLine.SOURCE_STDOUT, "  echo: hello"),
    ]
    assert not calls.offers("box__shout")  # not on the allow-list


async def test_a_stdio_server_runs_in_the_workspace_with_a_clean_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MITOSIS_TEST_SECRET", "executor-only")
    servers = await started(stdio_config(env={"GIVEN": "yes"}), tmp_path)
    workspace = Workspace(tmp_path / "workspace")
    calls = servers.calls(workspace, Lines())
    try:
        answer = await calls.call("box__where", {})
    finally:
        await calls.aclose()
    cwd, env, secret = answer.splitlines()
    assert cwd == f"cwd={workspace.root}"
    assert set(env.removeprefix("env=").split(",")) <= {
        "GIVEN",
        "HOME",
        "LANG",
        "LC_CTYPE",
        "PATH",
        "PYTHONIOENCODING",
        "TMPDIR",
    }
    assert secret == "secret="  # nothing of the executor's environment


async def test_a_hanging_server_times_out_and_the_next_call_works(tmp_path: Path) -> None:
    servers = await started(stdio_config(timeout=2.0), tmp_path)
    lines = Lines()
    calls = servers.calls(Workspace(tmp_path / "workspace"), lines)
    try:
        started_at = time.monotonic()
        with pytest.raises(ToolError, match=r"did not answer hang within 2 s \(its time limit\)"):
            await calls.call("box__hang", {})
        assert time.monotonic() - started_at < 10
        assert await calls.call("box__echo", {"text": "again"}) == "echo: again"
    finally:
        await calls.aclose()
    assert any(
        source == task_pb2.LogLine.SOURCE_STDERR and text.startswith("mcp box/hang: failed")
        for source, text in lines.lines
    )


async def test_a_slow_start_does_not_count_against_a_calls_time_limit(tmp_path: Path) -> None:
    """The time limit is the call's: a server slower to start than that still answers."""
    config = stdio_config(timeout=1.0, env={"TOOLBOX_START_SECONDS": "2"})
    servers = await started(config, tmp_path)
    assert servers.problems == []
    calls = servers.calls(Workspace(tmp_path / "workspace"), Lines())
    try:
        assert await calls.call("box__echo", {"text": "late"}) == "echo: late"
    finally:
        await calls.aclose()


async def test_a_crashing_server_fails_the_call_and_is_restarted(tmp_path: Path) -> None:
    servers = await started(stdio_config(), tmp_path)
    calls = servers.calls(Workspace(tmp_path / "workspace"), Lines())
    try:
        with pytest.raises(ToolError) as raised:
            await calls.call("box__crash", {})
        message = str(raised.value)
        assert message.startswith("the MCP server box stopped")
        assert "toolbox: crashing on purpose" in message
        assert message.endswith("it starts again for the next call")
        assert await calls.call("box__echo", {"text": "back"}) == "echo: back"
    finally:
        await calls.aclose()


async def test_output_is_capped_and_tool_errors_are_tool_errors(tmp_path: Path) -> None:
    servers = await started(stdio_config(max_output_chars=200), tmp_path)
    lines = Lines()
    calls = servers.calls(Workspace(tmp_path / "workspace"), lines)
    try:
        output = await calls.call("box__big", {"lines": 500})
        with pytest.raises(
            ToolError, match="box__fail reported an error: Error executing tool fail"
        ):
            await calls.call("box__fail", {})
    finally:
        await calls.aclose()
    head, note = output.rsplit("\n", 1)
    assert len(head) == 200
    assert note.startswith("… (output cut at 200 of ")
    assert note.endswith("characters, the box server's output cap)")
    assert "  … 1 more lines" in lines.texts() or len(lines.texts()) < 20


async def test_a_server_that_cannot_start_offers_no_tools_but_the_executor_goes_on(
    tmp_path: Path,
) -> None:
    broken = stdio_config(command="/nonexistent/mcp-server", args=())
    servers = await started(broken, tmp_path)
    assert servers.specs() == ()
    assert servers.problems
    assert "the MCP server box stopped" in servers.problems[0]


# Streamable HTTP ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def http_server() -> Iterator[str]:
    from tests.mcp_servers import toolbox

    port = free_port()
    app = toolbox.server.streamable_http_app(host="127.0.0.1")
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the MCP HTTP server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(10)


async def test_a_streamable_http_servers_tools_are_listed_and_called(
    http_server: str, tmp_path: Path
) -> None:
    config = McpServerConfig(
        name="web", url=http_server, allowed_tools=("echo", "big"), max_output_chars=100
    )
    servers = await started(config, tmp_path)
    assert [spec.name for spec in servers.specs()] == ["web__echo", "web__big"]
    lines = Lines()
    calls = servers.calls(Workspace(tmp_path / "workspace"), lines)
    try:
        assert await calls.call("web__echo", {"text": "over http"}) == "echo: over http"
        capped = await calls.call("web__big", {"lines": 50})
    finally:
        await calls.aclose()
    assert "output cut at 100 of" in capped
    assert lines.texts()[0] == 'mcp web/echo: call {"text": "over http"}'


# The configuration file --------------------------------------------------------------------------


def test_the_tools_configuration_reads_the_common_mcpservers_shape(tmp_path: Path) -> None:
    path = tmp_path / "tools.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "files": {
                        "command": "npx",
                        "args": ["-y", "@modelcontextprotocol/server-filesystem", "."],
                        "env": {"TOKEN": "${MY_TOKEN}"},
                        "allowedTools": ["read_file"],
                        "timeout": 5,
                    },
                    "docs": {
                        "url": "https://mcp.example/mcp",
                        "headers": {"Authorization": "Bearer ${DOCS_KEY}"},
                        "maxOutputChars": 5000,
                    },
                }
            }
        )
    )
    files, docs = load_tools_config(path, {"MY_TOKEN": "t0k", "DOCS_KEY": "k3y"})
    assert (files.transport, files.command, files.args) == (
        "stdio",
        "npx",
        ("-y", "@modelcontextprotocol/server-filesystem", "."),
    )
    assert files.env == {"TOKEN": "t0k"}
    assert files.allowed_tools == ("read_file",)
    assert files.timeout == 5
    assert (docs.transport, docs.url) == ("http", "https://mcp.example/mcp")
    assert docs.headers == {"Authorization": "Bearer k3y"}
    assert docs.max_output_chars == 5000
    toml = tmp_path / "tools.toml"
    toml.write_text('[mcpServers.a]\ncommand = "x"\n[mcpServers.b__c]\nurl = "http://h/"\n')
    with pytest.raises(ToolsConfigError, match=r"mcpServers\.b__c"):
        load_tools_config(toml, {})
