"""The executor's catalogue of tools: the built-ins it turned on and its MCP servers' tools.

Built once when the executor starts (`ExecutorTools.start` lists the MCP servers' tools) and
read by every step's tools (`RecordedTools`), by the runner (the tool names a task shows) and by
the log at start. The tools' descriptions are data in `mitosis.tool_specs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mitosis.executor.tools.fetch import FetchSettings
from mitosis.executor.tools.mcp import McpServerConfig, McpServers
from mitosis.executor.tools.web_search import SearchSettings
from mitosis.tool_specs import FETCH_URL, WEB_SEARCH, Catalogue, ToolSpec


@dataclass
class ExecutorTools:
    """What the step agent may use beyond the plan tools, and how each is set up."""

    fetch: FetchSettings | None = None
    """fetch_url's limits; None turns it off."""
    search: SearchSettings | None = None
    """web_search's provider; None turns it off."""
    mcp_servers: list[McpServerConfig] = field(default_factory=list)
    scratch: Path = Path("data") / "mcp"
    """Where MCP servers run while their tools are listed, before any task."""
    mcp: McpServers | None = None
    catalogue: Catalogue = field(default_factory=Catalogue)

    def __post_init__(self) -> None:
        self.catalogue = Catalogue.of(self._builtin())

    def _builtin(self) -> list[ToolSpec]:
        builtin: list[ToolSpec] = []
        if self.fetch is not None:
            builtin.append(FETCH_URL)
        if self.search is not None:
            builtin.append(WEB_SEARCH)
        return builtin

    async def start(self) -> None:
        """List the MCP servers' tools and add them to the catalogue."""
        self.mcp = McpServers(self.mcp_servers, self.scratch)
        await self.mcp.start()
        self.catalogue = Catalogue.of(self._builtin(), self.mcp.specs())

    def describe(self) -> str:
        """Say in one line which tools steps may use, for the executor's log."""
        return "tools: " + ", ".join(self.catalogue.names)
