"""How a tool use fails: raised by the executor's tools, caught by the step agents (models),
counted by the metrics — so models need not import the executor to know them."""

from __future__ import annotations

from mitosis.errors import ResourceExhausted


class ToolError(Exception):
    """A tool run that failed, with a message saying what went wrong."""


class ToolLimitExceeded(ToolError, ResourceExhausted):
    """A tool's result would exceed a size limit; the message names the limit and its value."""


class PathEscapeError(ValueError):
    """A path a tool was given does not name a place inside the workspace."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(
            f"{path!r} is not a workspace path: {reason}; "
            "use a relative path inside the workspace with '/' separators, like 'data/out.csv'"
        )
        self.path = path
        self.reason = reason
