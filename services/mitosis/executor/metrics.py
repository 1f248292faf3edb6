"""The executor's Prometheus metrics: what its EventLog stores, its tool runs, the tasks by
state (read from the store when scraped) and its watchers (read from the EventHub)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from mitosis.executor.events.hub import EventHub
from mitosis.executor.store.base import Store
from mitosis.metrics import (
    SLOW_BUCKETS,
    TOOL_OUTCOMES,
    UNFINISHED_STATES,
    DependencyStates,
    ModelMetrics,
    RpcMetrics,
    new_registry,
    state_label,
    state_labels,
)
from mitosis.models.base import (
    StepTools,
    cited_sources,
    offered_tools,
    use_tool,
)
from mitosis.tool_errors import PathEscapeError, ToolError, ToolLimitExceeded
from mitosis.tool_specs import BUILTIN_TOOLS, ToolSpec, WebSource
from mitosis.v1 import task_pb2

logger = logging.getLogger(__name__)

Task = task_pb2.Task
Step = task_pb2.Step


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
