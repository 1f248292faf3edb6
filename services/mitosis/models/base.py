"""What the planner and the executor ask of a model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from mitosis.v1 import plan_pb2

TOOLS = ("write_document", "python", "list_files", "read_file")
"""The tools a plan step may name."""


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


class FetchingTools(StepTools, Protocol):
    """StepTools that also fetch web pages: the executor's, which an agent offering
    `fetch_url` looks for (tools without it answer that it is not available)."""

    async def fetch_url(self, url: str) -> str:
        """Return the text of a public web page; a ToolError when the executor has it off,
        or the address, size, time or content type is refused."""
        ...


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
