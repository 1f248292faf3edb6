"""What the planner and the executor ask of a model."""

from __future__ import annotations

from collections.abc import AsyncIterator
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
