"""Plans for runner tests: a scripted planner and the plan steps it gives."""

from __future__ import annotations

from google.protobuf import struct_pb2

from mitosis.executor.running.planner_client import PlanError
from mitosis.v1 import plan_pb2


class ScriptedPlanner:
    """Gives the same plan for every task, or fails."""

    def __init__(
        self, *steps: plan_pb2.PlanStep, error: str = "", revision: plan_pb2.Plan | None = None
    ) -> None:
        self.plan = plan_pb2.Plan(steps=steps, model="scripted", summary="A scripted plan.")
        self.error = error
        self.revision = revision or plan_pb2.Plan()
        self.revisions: list[tuple[int, str]] = []

    async def create_plan(self, task_text: str) -> plan_pb2.Plan:
        if self.error:
            raise PlanError(self.error)
        return self.plan

    async def revise_plan(
        self, task_text: str, plan: plan_pb2.Plan, failed_step_index: int, failure: str
    ) -> plan_pb2.Plan:
        self.revisions.append((failed_step_index, failure))
        if not self.revision.steps:
            raise PlanError("the scripted planner has no revision")
        return self.revision


def python_step(code: str, title: str = "Run a script") -> plan_pb2.PlanStep:
    arguments = struct_pb2.Struct()
    arguments.update({"code": code})
    return plan_pb2.PlanStep(title=title, tool="python", rationale="r", arguments=arguments)
