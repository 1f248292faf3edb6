"""Prometheus metrics of both services, each service in a registry of its own.

Where each number comes from:
- RPCs: `RpcMetrics`, a server interceptor (grpc_server_* names, as go-grpc-prometheus has them).
- Events, task and step state changes, the steps' model usage: `EventMetrics`, an observer
  of the executor's EventLog, so they count exactly what this process stored.
- Tasks by state: read from the store when scraped (`TaskCounts`), so they are right after a
  restart and agree between executors that share a store.
- Watchers: read from the EventHub when scraped.
- Tool runs: `MeteredTools`, a StepTools wrapper the runner puts around each step's tools.
- The planner's model: `MeteredPlanningModel`, a wrapper around its PlanningModel.

Labels take only values from a fixed set (our methods, event kinds, states, tools), never
a caller's text, so a hostile caller cannot grow the number of series.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from mitosis.executor.hub import EventHub
from mitosis.executor.store import Store
from mitosis.executor.tools import ToolError, ToolLimitExceeded
from mitosis.executor.workspace import PathEscapeError
from mitosis.handlers import Behaviour, Continuation, ServerInterceptor, wrap_handler
from mitosis.models.base import (
    ModelUsage,
    PlanningModel,
    StepTools,
    cited_sources,
    offered_tools,
    use_tool,
)
from mitosis.models.openai_model import OpenAIModel
from mitosis.tool_specs import BUILTIN_TOOLS, ToolSpec, WebSource
from mitosis.v1 import plan_pb2, task_pb2

if TYPE_CHECKING:
    from mitosis.handlers import Handler

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


class EventMetrics:
    """Counts what the executor's EventLog stores; `observe` is an EventLog observer."""

    def __init__(self, registry: CollectorRegistry, model: ModelMetrics) -> None:
        self._model = model
        self.events = Counter(
            "mitosis_events_appended",
            "Events stored in tasks' logs by this process, by kind.",
            ["kind"],
            registry=registry,
        )
        self.task_states = Counter(
            "mitosis_task_state_changes",
            "Tasks that entered a state, as stored by this process (ended tasks: succeeded,"
            " failed, cancelled).",
            ["state"],
            registry=registry,
        )
        self.step_states = Counter(
            "mitosis_step_state_changes",
            "Steps that entered a state, as stored by this process.",
            ["state"],
            registry=registry,
        )
        for kind in task_pb2.TaskEvent.DESCRIPTOR.oneofs_by_name["kind"].fields:
            if kind.name != "heartbeat":  # never stored
                self.events.labels(kind.name)
        for label in state_labels(Task.State):
            self.task_states.labels(label)
        for label in state_labels(Step.State):
            self.step_states.labels(label)

    def observe(self, task_id: str, events: Sequence[task_pb2.TaskEvent]) -> None:
        """Count a batch of events just stored for a task."""
        for event in events:
            kind = event.WhichOneof("kind")
            if kind is None:
                continue
            self.events.labels(kind).inc()
            if kind == "task_state_changed":
                self.task_states.labels(state_label(event.task_state_changed.state)).inc()
            elif kind == "step_state_changed":
                change = event.step_state_changed
                self.step_states.labels(state_label(change.state, Step.State)).inc()
                # A step's usage is stored once, when it ends, summed over its attempts.
                if change.HasField("usage"):
                    self._model.count("step", change.usage)


class ToolMetrics:
    """Tool runs by tool and outcome, and how long they took."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter(
            "mitosis_tool_runs",
            "Tool runs by tool and outcome: ok; failed (the tool's own error, a timeout"
            " included); limit (a size limit was reached); refused (a path out of the"
            " workspace); cancelled; error (anything else).",
            ["tool", "outcome"],
            registry=registry,
        )
        self.seconds = Histogram(
            "mitosis_tool_run_seconds",
            "How long tool runs took (write_document includes the model writing it).",
            ["tool"],
            buckets=SLOW_BUCKETS,
            registry=registry,
        )
        for tool in (spec.name for spec in BUILTIN_TOOLS):
            for outcome in TOOL_OUTCOMES:
                self.runs.labels(tool, outcome)

    def metered(self, tools: StepTools) -> StepTools:
        """Return the tools, each run counted and timed."""
        return MeteredTools(tools, self)

    async def run(self, tool: str, call: Awaitable[str]) -> str:
        """Await a tool's call, counting its outcome and timing it."""
        start = time.perf_counter()
        outcome = "error"
        try:
            result = await call
            outcome = "ok"
            return result
        except ToolLimitExceeded:
            outcome = "limit"
            raise
        except ToolError:
            outcome = "failed"
            raise
        except PathEscapeError:
            outcome = "refused"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self.runs.labels(tool, outcome).inc()
            self.seconds.labels(tool).observe(time.perf_counter() - start)


class MeteredTools:
    """StepTools that count and time every tool run of the tools they wrap."""

    def __init__(self, tools: StepTools, metrics: ToolMetrics) -> None:
        self._tools = tools
        self._metrics = metrics

    async def write_document(self, file_name: str, title: str, text: AsyncIterator[str]) -> str:
        call = self._tools.write_document(file_name, title, text)
        return await self._metrics.run("write_document", call)

    async def python(self, code: str) -> str:
        return await self._metrics.run("python", self._tools.python(code))

    async def list_files(self) -> str:
        return await self._metrics.run("list_files", self._tools.list_files())

    async def read_file(self, path: str) -> str:
        return await self._metrics.run("read_file", self._tools.read_file(path))

    def offered(self) -> Sequence[ToolSpec]:
        return offered_tools(self._tools)

    def sources(self) -> Sequence[WebSource]:
        return cited_sources(self._tools)

    async def call(self, name: str, arguments: Mapping[str, object]) -> str:
        # The catalogue's further tools (fetch_url, web_search, MCP tools), each by its name.
        return await self._metrics.run(name, use_tool(self._tools, name, arguments))

    async def log(self, text: str) -> None:
        await self._tools.log(text)  # the agent's own line, not a tool run


class TaskCounts:
    """A collector of unfinished tasks by state, read from the store before each scrape.

    The store is the truth: the numbers are right after a restart, and every executor on a
    shared store reports the same (aggregate with max, not sum). Reading costs one query
    for the unfinished ids and one per unfinished task. When the store cannot be read the
    metric is left out of the scrape rather than shown stale.
    """

    def __init__(self, store: Store, timeout: float = 5.0) -> None:
        self._store = store
        self._timeout = timeout
        self._counts: dict[str, int] | None = None

    async def refresh(self) -> None:
        """Count the store's unfinished tasks by state."""
        try:
            async with asyncio.timeout(self._timeout):
                counts = dict.fromkeys(map(state_label, UNFINISHED_STATES), 0)
                for task_id in await self._store.unfinished_task_ids():
                    task = await self._store.get_task(task_id)
                    if task is not None and task.state in UNFINISHED_STATES:  # it may have ended
                        counts[state_label(task.state)] += 1
        except Exception as error:  # a scrape must answer even when the store does not
            logger.warning("metrics: cannot count tasks in the store: %s", error or repr(error))
            self._counts = None
            return
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        if self._counts is None:
            return
        family = GaugeMetricFamily(
            "mitosis_tasks",
            "Unfinished tasks in the store by state, read when scraped.",
            labels=["state"],
        )
        for state, count in self._counts.items():
            family.add_metric([state], count)
        yield family


class WatcherCounts:
    """A collector of this executor's watchers, read from its EventHub."""

    def __init__(self, hub: EventHub) -> None:
        self._hub = hub

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "mitosis_watchers",
            "WatchTask streams connected to this executor and live.",
            value=self._hub.watcher_total(),
        )
        yield GaugeMetricFamily(
            "mitosis_watched_tasks",
            "Tasks with at least one watcher on this executor.",
            value=len(self._hub.watched()),
        )
        yield CounterMetricFamily(
            "mitosis_watcher_overflows",
            "Times a slow watcher's buffer overflowed and it caught up from the store.",
            value=self._hub.overflows,
        )


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


class ExecutorMetrics:
    """The executor's metrics, in a registry of their own."""

    def __init__(
        self, store: Store, hub: EventHub, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = new_registry() if registry is None else registry
        self.rpcs = RpcMetrics(self.registry)
        self.model = ModelMetrics(self.registry)
        self.events = EventMetrics(self.registry, self.model)
        self.tools = ToolMetrics(self.registry)
        self._tasks = TaskCounts(store)
        self.registry.register(self._tasks)
        self.registry.register(WatcherCounts(hub))

    def observe(self, task_id: str, events: Sequence[task_pb2.TaskEvent]) -> None:
        """An EventLog observer: count the events just stored."""
        self.events.observe(task_id, events)

    def track_dependencies(self, reachable: Mapping[str, bool]) -> None:
        """Report the health probe's view of the store and the planner."""
        self.registry.register(DependencyStates(reachable))

    async def refresh(self) -> None:
        """Read what is counted from the store; run before each scrape."""
        await self._tasks.refresh()


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
