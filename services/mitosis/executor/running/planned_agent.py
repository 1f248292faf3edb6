"""The agent that does exactly what the plan says: the planned tool, the planned arguments."""

from __future__ import annotations

from google.protobuf import json_format

from mitosis.models.base import (
    BadToolCall,
    ModelUsage,
    StepFailure,
    StepTools,
    WritingModel,
    offered_tools,
    use_tool,
)
from mitosis.tool_specs import PLAN_TOOL_NAMES, WRITE_DOCUMENT
from mitosis.v1 import plan_pb2


class PlannedToolAgent:
    """Runs each step's planned tool with its planned arguments; a model writes the documents.

    This is how the offline model executes: its plans carry every argument, so no model
    needs to choose tools at run time.
    """

    def __init__(self, writer: WritingModel) -> None:
        self._writer = writer

    @property
    def name(self) -> str:
        return self._writer.name

    async def run_step(
        self,
        task_text: str,
        plan: plan_pb2.Plan,
        step_index: int,
        tools: StepTools,
        usage: ModelUsage,
    ) -> None:
        step = plan.steps[step_index]
        arguments = json_format.MessageToDict(step.arguments)
        if step.tool == WRITE_DOCUMENT.name:
            file_name = _string(arguments, "file_name", step.tool)
            title = arguments.get("title")
            document = self._writer.write_document(task_text, step)
            await tools.write_document(
                file_name, title if isinstance(title, str) else step.title, document
            )
            return
        known = {*PLAN_TOOL_NAMES, *(spec.name for spec in offered_tools(tools))}
        if step.tool not in known:
            raise StepFailure(f"the plan asked for an unknown tool {step.tool!r}")
        try:
            await use_tool(tools, step.tool, arguments)
        except BadToolCall as error:
            raise StepFailure(f"the plan's {step.tool} step cannot run: {error}") from None


def _string(arguments: dict[str, object], key: str, tool: str) -> str:
    value = arguments.get(key)
    if not isinstance(value, str) or not value.strip():
        raise StepFailure(f"the plan gave the {tool} step no {key}")
    return value
