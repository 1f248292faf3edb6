"""Confining python runs: `confine` (the executor's half) and `boot` (the child's half, run
by path with the standard library only); `mcp_boot` confines a stdio MCP server the same way."""

from mitosis.executor.tools.sandbox.confine import (
    Sandbox,
    SandboxConfig,
    SandboxLimits,
    SandboxUnavailable,
)

__all__ = ["Sandbox", "SandboxConfig", "SandboxLimits", "SandboxUnavailable"]
