"""The planner's Prometheus metrics: its RPCs and the plans its model makes."""

from __future__ import annotations

import time
from collections.abc import Awaitable

from prometheus_client import CollectorRegistry, Histogram

from mitosis.metrics import SLOW_BUCKETS, ModelMetrics, RpcMetrics, new_registry
from mitosis.models.base import (
    ModelUsage,
    PlanningModel,
)
from mitosis.models.openai_model import OpenAIModel
from mitosis.v1 import plan_pb2


class PlannerMetrics:
    """The planner's metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = new_registry() if registry is None else registry
        self.rpcs = RpcMetrics(self.registry)
        self.model = ModelMetrics(self.registry)
        self.plans = Histogram(
            "mitosis_plan_seconds",
            "How long the model took to make (create_plan) or revise (revise_plan) a plan,"
            " by outcome (ok, error), a repair attempt included.",
            ["method", "outcome"],
            buckets=SLOW_BUCKETS,
            registry=self.registry,
        )

    def metered(self, model: PlanningModel) -> PlanningModel:
        """Return the model, each plan timed and its model usage counted."""
        return MeteredPlanningModel(model, self)


class MeteredPlanningModel:
    """A PlanningModel that times each plan and counts the model calls behind it."""

    def __init__(self, model: PlanningModel, metrics: PlannerMetrics) -> None:
        self._model = model
        self._metrics = metrics

    @property
    def name(self) -> str:
        return self._model.name

    async def create_plan(self, task_text: str) -> plan_pb2.Plan:
        usage = ModelUsage()
        if isinstance(self._model, OpenAIModel):  # the model that reports its usage
            call = self._model.create_plan(task_text, usage=usage)
        else:
            call = self._model.create_plan(task_text)
        return await self._timed("create_plan", call, usage)

    async def revise_plan(
        self, task_text: str, plan: plan_pb2.Plan, failed_step_index: int, failure: str
    ) -> plan_pb2.Plan:
        usage = ModelUsage()
        args = (task_text, plan, failed_step_index, failure)
        if isinstance(self._model, OpenAIModel):
            call = self._model.revise_plan(*args, usage=usage)
        else:
            call = self._model.revise_plan(*args)
        return await self._timed("revise_plan", call, usage)

    async def _timed(
        self, method: str, call: Awaitable[plan_pb2.Plan], usage: ModelUsage
    ) -> plan_pb2.Plan:
        start = time.perf_counter()
        outcome = "error"
        try:
            plan = await call
            outcome = "ok"
            return plan
        finally:
            self._metrics.plans.labels(method, outcome).observe(time.perf_counter() - start)
            self._metrics.model.count("plan", usage)
