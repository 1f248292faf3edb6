"""What the planner and the executor ask of a model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from mitosis.tool_specs import LIST_FILES, PLAN_TOOL_NAMES, PYTHON, READ_FILE, ToolSpec, WebSource
from mitosis.v1 import plan_pb2

TOOLS = PLAN_TOOL_NAMES
"""The tools a plan step may name (from the catalogue, `mitosis.tool_specs`)."""


OFFLINE_FALLBACK_NOTE = (
    "The model gave no valid plan, so this is the offline planner's plan for the task"
)
"""How a plan's summary starts when the offline planner stood in for the model (the executor
then says so in the task's log too)."""


class PlanningModel(Protocol):
    """Turns a task into a plan, and a failed plan into a revised one."""

    @property
    def name(self) -> str:
        """The model's name as the task record shows it, for example "offline"."""
        ...

    async def create_plan(self, task_text: str) -> plan_pb2.Plan:
        """Return a plan of 3 to 6 steps for the task; `plan.model` is set to `name`."""
        ...

    async def revise_plan(
        self, task_text: str, plan: plan_pb2.Plan, failed_step_index: int, failure: str
    ) -> plan_pb2.Plan:
        """Return the steps that replace the failed step and everything after it."""
        ...


class WritingModel(Protocol):
    """Writes the documents a plan's `write_document` steps ask for."""

    @property
    def name(self) -> str:
        """The model's name as the task record shows it."""
        ...

    def write_document(self, task_text: str, step: plan_pb2.PlanStep) -> AsyncIterator[str]:
        """Yield the document's Markdown in pieces, in order, as it is written."""
        ...


class StepFailure(Exception):
    """A step cannot be done; the message says why in a person's words. Retried once."""


class BadToolCall(StepFailure):
    """A tool call with a missing or malformed argument; the message says which."""


class FatalModelError(StepFailure):
    """The model cannot be used at all (a bad key, an unknown model): fail the task now."""


@dataclass
class ModelUsage:
    """What a step's model calls cost so far; agents add to it after every call."""

    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    latency_ms: int = 0

    def add(self, input_tokens: int, output_tokens: int, latency_ms: int) -> None:
        """Count one model call."""
        self.model_calls += 1
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.latency_ms += latency_ms


class StepTools(Protocol):
    """What an agent may do while it runs a step; each call is recorded in the task's log.

    Tool errors (a failing script, a path out of the workspace) come back as
    `ToolError`/`PathEscapeError` from the executor's tools module; an agent may pass the
    message back to its model, or let it fail the step.
    """

    async def write_document(self, file_name: str, title: str, text: AsyncIterator[str]) -> str:
        """Open a new page, stream `text` into it, deliver the file; return a one-line summary."""
        ...

    async def python(self, code: str) -> str:
        """Run a script in the workspace, its output streamed as log lines; return the output."""
        ...

    async def list_files(self) -> str:
        """Return the workspace's files, one per line with sizes."""
        ...

    async def read_file(self, path: str) -> str:
        """Return a workspace file's text."""
        ...

    async def log(self, text: str) -> None:
        """Record a line from the agent itself: its reasoning, its tool calls, its waits."""
        ...


class CatalogueTools(StepTools, Protocol):
    """StepTools that also offer the executor's further tools (fetch_url, web_search, the
    tools of MCP servers): the executor's. An agent finds them with `offered_tools`."""

    def offered(self) -> Sequence[ToolSpec]:
        """Return the tools offered beyond the plan tools, in the catalogue's order."""
        ...

    async def call(self, name: str, arguments: Mapping[str, object]) -> str:
        """Run one of the offered tools; a ToolError when it fails or is not offered."""
        ...

    def sources(self) -> Sequence[WebSource]:
        """Return the pages this step found and read so far, each once."""
        ...


def cited_sources(tools: StepTools) -> Sequence[WebSource]:
    """Return the sources a document written now cites, in the order of its numbers: the
    pages this step read, or when it read none, the search results it saw."""
    sources = getattr(tools, "sources", None)
    found: Sequence[WebSource] = tuple(sources()) if sources is not None else ()
    read = [source for source in found if source.read]
    return read or list(found)


def offered_tools(tools: StepTools) -> Sequence[ToolSpec]:
    """Return the further tools `tools` offers (none for tools without a catalogue)."""
    offered = getattr(tools, "offered", None)
    return tuple(offered()) if offered is not None else ()


async def use_tool(tools: StepTools, name: str, arguments: Mapping[str, object]) -> str:
    """Run any tool of the catalogue but write_document (which needs a writer): the one
    dispatch of tool calls, for every agent. Raises BadToolCall for a missing argument."""
    if name == PYTHON.name:
        return await tools.python(tool_argument(arguments, "code", name))
    if name == LIST_FILES.name:
        return await tools.list_files()
    if name == READ_FILE.name:
        return await tools.read_file(tool_argument(arguments, "path", name))
    offered = {spec.name for spec in offered_tools(tools)}
    call = getattr(tools, "call", None)
    if name not in offered or call is None:
        raise BadToolCall(f"{name} is not available in this executor")
    result: str = await call(name, arguments)
    return result


def tool_argument(arguments: Mapping[str, object], key: str, tool: str) -> str:
    """Return a tool call's non-empty string argument, or raise BadToolCall."""
    value = arguments.get(key)
    if not isinstance(value, str) or not value.strip():
        raise BadToolCall(f"{tool} needs {key} as a non-empty string")
    return value


class StepAgent(Protocol):
    """Carries out one step of a plan with the tools."""

    @property
    def name(self) -> str:
        """The model's name as the task record shows it."""
        ...

    async def run_step(
        self,
        task_text: str,
        plan: plan_pb2.Plan,
        step_index: int,
        tools: StepTools,
        usage: ModelUsage,
    ) -> None:
        """Do the step; raise StepFailure (or a tool's error) when it cannot be done."""
        ...
