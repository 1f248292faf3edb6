"""PlannerService on the wire: validates requests and asks the planning model.

A MitosisError raised below becomes its status in mitosis.rpc.interceptors.ErrorStatusInterceptor.
"""

from __future__ import annotations

import grpc

from mitosis.errors import InvalidArgument
from mitosis.models.base import PlanningModel
from mitosis.v1 import plan_pb2, planner_service_pb2, planner_service_pb2_grpc
from mitosis.validation import validate_plan_arguments, validate_task_text
from mitosis.words import counted

Context = grpc.aio.ServicerContext[object, object]


class PlannerServicer(planner_service_pb2_grpc.PlannerServiceServicer):
    """Serves PlannerService from a planning model."""

    def __init__(self, model: PlanningModel) -> None:
        self._model = model

    async def CreatePlan(
        self, request: planner_service_pb2.CreatePlanRequest, context: Context
    ) -> plan_pb2.Plan:
        return await self._model.create_plan(validate_task_text(request.task_text))

    async def RevisePlan(
        self, request: planner_service_pb2.RevisePlanRequest, context: Context
    ) -> plan_pb2.Plan:
        text = validate_task_text(request.task_text)
        if not 0 <= request.failed_step_index < len(request.plan.steps):
            raise InvalidArgument(
                f"failed_step_index {request.failed_step_index} is not a step of the plan"
                f" ({counted(len(request.plan.steps), 'step')})"
            )
        validate_plan_arguments(request.plan)
        return await self._model.revise_plan(
            text, request.plan, request.failed_step_index, request.failure
        )
