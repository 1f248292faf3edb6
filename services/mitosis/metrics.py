"""Prometheus metrics both services share; each service keeps its own in a registry of its own
(mitosis.executor.metrics, mitosis.planner.metrics).

Where each number comes from:
- RPCs: `RpcMetrics`, a server interceptor (grpc_server_* names, as go-grpc-prometheus has them).
- Model calls: `ModelMetrics`; dependencies' health: `DependencyStates`.
- The executor's own (mitosis.executor.metrics): events, task and step state changes and the
  steps' model usage (`EventMetrics`, an observer of its EventLog, so they count exactly what
  this process stored); tasks by state, read from the store when scraped (`TaskCounts`), so
  they are right after a restart and agree between executors that share a store; watchers,
  read from the EventHub; tool runs (`MeteredTools`, around each step's tools).
- The planner's (mitosis.planner.metrics): `MeteredPlanningModel`, around its PlanningModel.

Labels take only values from a fixed set (our methods, event kinds, states, tools), never
a caller's text, so a hostile caller cannot grow the number of series.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from mitosis.models.base import (
    ModelUsage,
)
from mitosis.rpc.interceptors import Behaviour, Continuation, ServerInterceptor, wrap_handler
from mitosis.v1 import task_pb2

if TYPE_CHECKING:
    from mitosis.rpc.interceptors import Handler

logger = logging.getLogger(__name__)

Task = task_pb2.Task
Step = task_pb2.Step

UNFINISHED_STATES = (
    Task.STATE_PENDING,
    Task.STATE_PLANNING,
    Task.STATE_RUNNING,
    Task.STATE_AWAITING_APPROVAL,
)
TOOL_OUTCOMES = ("ok", "failed", "limit", "refused", "cancelled", "error")
# Model calls and plans take seconds to minutes; tools up to their timeout.
SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def new_registry() -> CollectorRegistry:
    """Return a registry with the process's own metrics (CPU, memory, open files, Python)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def state_label(state: int, enum: Any = Task.State) -> str:
    """Return a state's label: Task.STATE_RUNNING is "running"."""
    name: str = enum.Name(state)
    return name.removeprefix("STATE_").lower()


def state_labels(enum: Any) -> list[str]:
    """Return the labels of an enum's states, STATE_UNSPECIFIED left out."""
    return [state_label(state, enum) for state in enum.values() if state]


class RpcMetrics(ServerInterceptor):
    """Counts calls by method and status code, and times them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self.started = Counter(
            "grpc_server_started", "RPCs started on the server.", labels, registry=registry
        )
        self.handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            [*labels, "grpc_code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status (a stream's whole life for streams).",
            labels,
            buckets=RPC_BUCKETS,
            registry=registry,
        )

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None:
            # The caller chose the name: count it under "unknown" rather than as a label.
            unknown = ("unknown", "unknown", "unknown")
            self.started.labels(*unknown).inc()
            self.handled.labels(*unknown, grpc.StatusCode.UNIMPLEMENTED.name).inc()
            return handler
        service, _, method = details.method.lstrip("/").partition("/")
        labels = (_rpc_type(handler), service, method)
        return wrap_handler(handler, lambda behaviour: self._counted(labels, behaviour, handler))

    def _counted(
        self, labels: tuple[str, str, str], behaviour: Behaviour, handler: Handler
    ) -> Behaviour:
        if handler.response_streaming:

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                start = self._start(labels)
                try:
                    async for response in _responses(behaviour(request, context)):
                        yield response
                except BaseException as error:
                    self._finish(labels, start, _code_of(error, context))
                    raise
                self._finish(labels, start, _code_of(None, context))

            return streaming

        async def unary(request: Any, context: Any) -> Any:
            start = self._start(labels)
            try:
                response = await behaviour(request, context)
            except BaseException as error:
                self._finish(labels, start, _code_of(error, context))
                raise
            self._finish(labels, start, _code_of(None, context))
            return response

        return unary

    def _start(self, labels: tuple[str, str, str]) -> float:
        self.started.labels(*labels).inc()
        return time.perf_counter()

    def _finish(self, labels: tuple[str, str, str], start: float, code: str) -> None:
        self.handled.labels(*labels, code).inc()
        self.seconds.labels(*labels).observe(time.perf_counter() - start)


async def _responses(result: Any) -> AsyncIterator[Any]:
    """Yield what a streaming method yields: it is an async generator, or a coroutine that
    writes with `context.write` (the health service's Watch is one)."""
    if isinstance(result, AsyncIterator):
        async for response in result:
            yield response
    else:
        await result


def _rpc_type(handler: Handler) -> str:
    if handler.request_streaming:
        return "bidi_stream" if handler.response_streaming else "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _code_of(error: BaseException | None, context: Any) -> str:
    """Return the status an RPC ends with, by how its behaviour ended."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED.name  # the caller went away, or its deadline passed
    code = context.code()
    if code is not None and code != grpc.StatusCode.OK:
        return str(code.name)  # set by abort() or set_code()
    if error is not None:
        return grpc.StatusCode.UNKNOWN.name  # what gRPC answers for an unhandled exception
    return grpc.StatusCode.OK.name


class ModelMetrics:
    """What model calls cost, by use: "plan" (the planner) or "step" (the executor)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "mitosis_model_calls", "Calls made to the model.", ["use"], registry=registry
        )
        self.tokens = Counter(
            "mitosis_model_tokens",
            "Tokens sent to (input) and produced by (output) the model.",
            ["use", "direction"],
            registry=registry,
        )
        self.seconds = Counter(
            "mitosis_model_seconds",
            "Time spent waiting for the model, summed over calls (per call: divide by calls).",
            ["use"],
            registry=registry,
        )

    def count(self, use: str, usage: ModelUsage | task_pb2.Usage) -> None:
        """Add one record of usage."""
        if not usage.model_calls:
            return
        self.calls.labels(use).inc(usage.model_calls)
        self.tokens.labels(use, "input").inc(usage.input_tokens)
        self.tokens.labels(use, "output").inc(usage.output_tokens)
        self.seconds.labels(use).inc(usage.latency_ms / 1000)


class DependencyStates:
    """A collector of whether the services this one needs were reachable at the last check."""

    def __init__(self, reachable: Mapping[str, bool]) -> None:
        self._reachable = reachable

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "mitosis_dependency_up",
            "1 when the dependency (store, planner) answered its last health check.",
            labels=["dependency"],
        )
        for name, up in self._reachable.items():
            family.add_metric([name], 1 if up else 0)
        yield family
