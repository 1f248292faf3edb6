"""`mitosis-executor`: serve TaskService."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mitosis.executor.events.hub import EventHub
from mitosis.executor.events.live_feed import RedisFeed
from mitosis.executor.events.log import EventLog
from mitosis.executor.health import (
    HealthProbe,
    model_check,
    planner_check,
    space_check,
    store_check,
)
from mitosis.executor.metrics import ExecutorMetrics
from mitosis.executor.running.planned_agent import PlannedToolAgent
from mitosis.executor.running.planner_client import PlannerClient
from mitosis.executor.running.quotas import Limits
from mitosis.executor.running.runner import RunnerConfig, TaskRunner
from mitosis.executor.servicer import TaskServicer, add_task_service
from mitosis.executor.store.base import Store, StoreUnavailable
from mitosis.executor.store.opening import open_store
from mitosis.executor.store.redis import RedisStore
from mitosis.executor.store.retention import Retention, add_retention_arguments
from mitosis.executor.tasks import Tasks
from mitosis.executor.tools.catalogue import ExecutorTools
from mitosis.executor.tools.mcp import ToolsConfigError, load_tools_config
from mitosis.executor.tools.sandbox.confine import SandboxUnavailable
from mitosis.executor.tools.web_search import PROVIDERS, SearchSettings, search_settings
from mitosis.models.base import StepAgent
from mitosis.models.choice import OPENAI, add_model_arguments, openai_settings
from mitosis.models.offline import OfflineModel
from mitosis.models.openai_model import OpenAIModel
from mitosis.rpc.auth import ApiKeyInterceptor, KeysFileError, add_key_arguments, load_keys
from mitosis.rpc.logs import (
    RequestIdInterceptor,
    TaskEventLines,
    add_logging_arguments,
    configure_logging,
)
from mitosis.rpc.metrics_server import MetricsServer, add_metrics_arguments, start_metrics_server
from mitosis.rpc.serving import Serving, serve_until_signalled
from mitosis.rpc.tls import (
    TlsConfigError,
    add_tls_arguments,
    channel_credentials,
    server_credentials,
)
from mitosis.v1 import planner_service_pb2, task_service_pb2
from mitosis.words import counted

logger = logging.getLogger("mitosis.executor")

SERVICE_NAME = task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name
PLANNER_SERVICE = planner_service_pb2.DESCRIPTOR.services_by_name["PlannerService"].full_name


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Return the executor's settings from flags, then MITOSIS_* variables, then defaults."""
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="mitosis-executor",
        description="Serve mitosis.v1.TaskService: run tasks and stream their events.",
    )
    parser.add_argument(
        "--listen",
        default=env("MITOSIS_EXECUTOR_LISTEN", "127.0.0.1:50051"),
        help="address to serve on (env MITOSIS_EXECUTOR_LISTEN; default %(default)s)",
    )
    parser.add_argument(
        "--planner",
        default=env("MITOSIS_PLANNER", "127.0.0.1:50052"),
        help="PlannerService address (env MITOSIS_PLANNER; default %(default)s)",
    )
    parser.add_argument(
        "--planner-deadline",
        type=float,
        default=float(env("MITOSIS_PLANNER_DEADLINE", "300")),
        help="seconds a plan may take (a model's retries included; default %(default)s)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env("MITOSIS_DATA_DIR", "data")),
        help="folder of the SQLite store and the task workspaces (env MITOSIS_DATA_DIR;"
        " default %(default)s)",
    )
    parser.add_argument(
        "--store",
        default=env("MITOSIS_STORE", ""),
        help="where tasks and events live: sqlite:PATH, or redis://host:port/db (env"
        " MITOSIS_STORE; default: SQLite at DATA_DIR/mitosis.sqlite3)",
    )
    add_model_arguments(parser, os.environ)
    add_retention_arguments(parser, os.environ)
    parser.add_argument(
        "--offline-pace",
        type=float,
        default=float(env("MITOSIS_OFFLINE_PACE", "0.02")),
        help="seconds the offline model waits between pieces of a document, so people can"
        " watch it write; 0 turns pacing off (env MITOSIS_OFFLINE_PACE; default %(default)s)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=float(env("MITOSIS_HEARTBEAT_INTERVAL", "10")),
        help="seconds of quiet before WatchTask sends a heartbeat (default %(default)s)",
    )
    parser.add_argument(
        "--tool-timeout",
        type=float,
        default=float(env("MITOSIS_TOOL_TIMEOUT", "60")),
        help="seconds a python step may run before it is killed (default %(default)s)",
    )
    parser.add_argument(
        "--max-revisions",
        type=int,
        default=int(env("MITOSIS_MAX_REVISIONS", "2")),
        help="times the plan may be revised after a step fails twice; 0 fails the task at once"
        " (env MITOSIS_MAX_REVISIONS; default %(default)s)",
    )
    parser.add_argument(
        "--max-running",
        type=int,
        default=int(env("MITOSIS_MAX_RUNNING", "8")),
        help="tasks this executor runs at once; more wait their turn (default %(default)s)",
    )
    parser.add_argument(
        "--lease-ttl",
        type=float,
        default=float(env("MITOSIS_LEASE_TTL", "10")),
        help="seconds a task's lease lasts unrenewed: how soon another executor takes over"
        " the tasks of one that died (default %(default)s)",
    )
    parser.add_argument(
        "--max-tasks-per-key",
        type=int,
        default=int(env("MITOSIS_MAX_TASKS_PER_KEY", str(Limits.tasks_per_key))),
        help="unfinished tasks one API key may have at once; CreateTask past it is"
        " RESOURCE_EXHAUSTED (env MITOSIS_MAX_TASKS_PER_KEY; default %(default)s)",
    )
    parser.add_argument(
        "--max-watchers-per-task",
        type=int,
        default=int(env("MITOSIS_MAX_WATCHERS_PER_TASK", str(Limits.watchers_per_task))),
        help="WatchTask streams one task may have open on this executor (default %(default)s)",
    )
    parser.add_argument(
        "--max-watchers-per-key",
        type=int,
        default=int(env("MITOSIS_MAX_WATCHERS_PER_KEY", str(Limits.watchers_per_key))),
        help="WatchTask streams one API key may have open on this executor (default %(default)s)",
    )
    tools = parser.add_argument_group(
        "the python tool's sandbox, fetch_url, web_search and MCP servers"
    )
    tools.add_argument(
        "--sandbox",
        choices=["auto", "isolated", "uid", "plain"],
        default=env("MITOSIS_SANDBOX", "auto"),
        help="how python steps are confined: auto takes the strongest this machine allows;"
        " isolated (root with namespaces: own uid, no network, only the workspace writable),"
        " uid (root without namespaces: own uid and limits), plain (limits only); naming a"
        " mode refuses to start without it (env MITOSIS_SANDBOX; default %(default)s)",
    )
    tools.add_argument(
        "--tool-memory-mib",
        type=int,
        default=int(env("MITOSIS_TOOL_MEMORY_MIB", "1024")),
        help="MiB of memory each process of a python step may use (default %(default)s)",
    )
    tools.add_argument(
        "--tool-file-size-mib",
        type=int,
        default=int(env("MITOSIS_TOOL_FILE_SIZE_MIB", "64")),
        help="MiB of the largest file a python step may write (default %(default)s)",
    )
    tools.add_argument(
        "--tool-processes",
        type=int,
        default=int(env("MITOSIS_TOOL_PROCESSES", "64")),
        help="processes and threads a python step may have at once (default %(default)s)",
    )
    tools.add_argument(
        "--sandbox-uid-base",
        type=int,
        default=int(env("MITOSIS_SANDBOX_UID_BASE", "1900000000")),
        help="first of the 65,536 uids python steps run as, one per run, when the executor"
        " is root (default %(default)s)",
    )
    tools.add_argument(
        "--fetch-url",
        action="store_true",
        default=env("MITOSIS_FETCH_URL", "") == "1",
        help="let steps fetch public web pages (http(s), text only; loopback, private,"
        " link-local and metadata addresses refused; env MITOSIS_FETCH_URL=1; default off)",
    )
    tools.add_argument(
        "--fetch-max-bytes",
        type=int,
        default=int(env("MITOSIS_FETCH_MAX_BYTES", str(2 << 20))),
        help="bytes of a page fetch_url reads at most (default %(default)s)",
    )
    tools.add_argument(
        "--fetch-timeout",
        type=float,
        default=float(env("MITOSIS_FETCH_TIMEOUT", "20")),
        help="seconds one fetch_url call may take, redirects included (default %(default)s)",
    )
    tools.add_argument(
        "--web-search",
        choices=PROVIDERS,
        default=env("MITOSIS_WEB_SEARCH") or None,
        help="offer steps a web_search tool through this provider: searxng (self-hosted, no"
        " key; needs --web-search-url), tavily (key in TAVILY_API_KEY) or brave (key in"
        " BRAVE_API_KEY) (env MITOSIS_WEB_SEARCH; default off)",
    )
    tools.add_argument(
        "--web-search-url",
        default=env("MITOSIS_WEB_SEARCH_URL", ""),
        help="the search provider's base URL, e.g. http://127.0.0.1:8888 for a SearXNG"
        " (env MITOSIS_WEB_SEARCH_URL; default: Tavily's or Brave's own API)",
    )
    tools.add_argument(
        "--web-search-results",
        type=int,
        default=int(env("MITOSIS_WEB_SEARCH_RESULTS", "5")),
        help="results one web_search returns at most (env MITOSIS_WEB_SEARCH_RESULTS;"
        " default %(default)s)",
    )
    tools.add_argument(
        "--tools-config",
        type=Path,
        default=env("MITOSIS_TOOLS_CONFIG") or None,
        help="TOML or JSON file naming MCP servers (mcpServers: command/args/env for stdio,"
        " url/headers for streamable HTTP; allowedTools, timeout, maxOutputChars) whose tools"
        " steps may use (env MITOSIS_TOOLS_CONFIG; default none)",
    )
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max-document-bytes",
        type=int,
        default=int(env("MITOSIS_MAX_DOCUMENT_BYTES", str(8 << 20))),
        help="bytes one written document may hold; more fails its step (default %(default)s)",
    )
    limits.add_argument(
        "--max-artifact-bytes",
        type=int,
        default=int(env("MITOSIS_MAX_ARTIFACT_BYTES", str(64 << 20))),
        help="bytes one delivered file may have; a larger one fails its step (default %(default)s)",
    )
    limits.add_argument(
        "--max-events-per-task",
        type=int,
        default=int(env("MITOSIS_MAX_EVENTS_PER_TASK", "200000")),
        help="events one task may record; a task that would exceed it fails, with room kept"
        " for its ending (default %(default)s)",
    )
    add_key_arguments(parser, os.environ)
    add_tls_arguments(parser, os.environ)
    parser.add_argument(
        "--planner-key",
        default=env("MITOSIS_PLANNER_KEY", ""),
        help="API key the executor sends to the planner (env MITOSIS_PLANNER_KEY; the"
        " environment is the better place for it: flags show in the process list)",
    )
    parser.add_argument(
        "--planner-ca",
        type=Path,
        default=env("MITOSIS_PLANNER_CA") or None,
        help="call the planner over TLS, trusting this PEM CA (env MITOSIS_PLANNER_CA)",
    )
    parser.add_argument(
        "--planner-client-cert",
        type=Path,
        default=env("MITOSIS_PLANNER_CLIENT_CERT") or None,
        help="PEM certificate the executor shows the planner (mutual TLS; with --planner-ca;"
        " env MITOSIS_PLANNER_CLIENT_CERT)",
    )
    parser.add_argument(
        "--planner-client-key",
        type=Path,
        default=env("MITOSIS_PLANNER_CLIENT_KEY") or None,
        help="the PEM private key of --planner-client-cert (env MITOSIS_PLANNER_CLIENT_KEY)",
    )
    parser.add_argument(
        "--grace", type=float, default=5.0, help="seconds to finish calls on SIGTERM"
    )
    parser.add_argument(
        "--health-check-interval",
        type=float,
        default=float(env("MITOSIS_HEALTH_CHECK_INTERVAL", "5")),
        help="seconds between checks of the store and the planner; TaskService reports"
        " NOT_SERVING while either is unreachable (env MITOSIS_HEALTH_CHECK_INTERVAL;"
        " default %(default)s)",
    )
    add_metrics_arguments(parser, os.environ, example_port=9464)
    add_logging_arguments(parser, os.environ)
    return parser.parse_args(argv)


@dataclass
class Executor:
    """A running executor: its server, its port and what it owns."""

    serving: Serving
    port: int
    runner: TaskRunner
    log: EventLog
    store: Store
    planner: PlannerClient
    background: list[asyncio.Task[None]]
    close_model: Callable[[], Awaitable[None]]
    metrics: ExecutorMetrics
    metrics_server: MetricsServer | None = None
    stopped: bool = False

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving (NOT_SERVING first), then stop the running tasks without ending them."""
        await self.serving.stop(grace)
        await self.stop_work()

    async def stop_work(self) -> None:
        """Stop the running tasks (they resume on the next start) and close connections."""
        self.stopped = True
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        for job in self.background:
            job.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.runner.shutdown()
        await self.planner.close()
        await self.close_model()
        await self.store.close()


async def start_executor(args: argparse.Namespace) -> Executor:
    """Build the executor from its settings, start serving and resume unfinished tasks."""
    keys = load_keys(args, args.listen, "executor")
    tls = server_credentials(args)
    planner_tls = channel_credentials(
        args.planner_ca, args.planner_client_cert, args.planner_client_key
    )
    store = open_store(args.store, args.data_dir, retain=args.retain)
    hub = EventHub()
    log = EventLog(store, hub, max_events_per_task=args.max_events_per_task)
    metrics = ExecutorMetrics(store, hub)
    log.observers += [metrics.observe, TaskEventLines()]
    planner = PlannerClient(
        args.planner,
        deadline=args.planner_deadline,
        key=args.planner_key or None,
        credentials=planner_tls,
    )
    agent, close_model = step_agent(args)
    config = RunnerConfig(
        data_dir=args.data_dir,
        tool_timeout=args.tool_timeout,
        max_revisions=args.max_revisions,
        lease_ttl=args.lease_ttl,
        max_running=args.max_running,
        sandbox=args.sandbox,
        tool_memory_bytes=args.tool_memory_mib << 20,
        tool_file_size_bytes=args.tool_file_size_mib << 20,
        tool_processes=args.tool_processes,
        sandbox_uid_base=args.sandbox_uid_base,
        max_document_bytes=args.max_document_bytes,
        max_artifact_bytes=args.max_artifact_bytes,
        fetch_url=args.fetch_url,
        fetch_max_bytes=args.fetch_max_bytes,
        fetch_timeout=args.fetch_timeout,
    )
    tools = ExecutorTools(
        fetch=config.fetch_settings(),
        search=_search(args),
        mcp_servers=load_tools_config(args.tools_config, os.environ) if args.tools_config else [],
        scratch=args.data_dir / "mcp",
    )
    await tools.start()
    runner = TaskRunner(log, planner, agent, config, wrap_tools=metrics.tools.metered, tools=tools)
    logger.info("%s", runner.sandbox.describe())
    logger.info("%s", tools.describe())
    limits = Limits(
        tasks_per_key=args.max_tasks_per_key,
        watchers_per_task=args.max_watchers_per_task,
        watchers_per_key=args.max_watchers_per_key,
    )
    tasks = Tasks(log, runner, agent.name, args.heartbeat_interval, limits)

    # Outermost first: every call gets its request id and is counted, refused ones too.
    interceptors = [RequestIdInterceptor(), metrics.rpcs]
    if keys:
        interceptors.append(ApiKeyInterceptor(keys))
    serving = Serving([SERVICE_NAME], interceptors)
    add_task_service(TaskServicer(tasks), serving.server)
    port = serving.listen(args.listen, tls)
    await serving.start()
    try:
        resumed = await runner.resume_unfinished()
    except StoreUnavailable as error:  # serve anyway: the claim loop resumes them later
        logger.warning("cannot resume unfinished tasks yet, the store is unreachable: %s", error)
        resumed = []
    retention = Retention(store, args.data_dir, args.retain)
    background = [
        asyncio.create_task(runner.claim_forever(), name="claim tasks"),
        asyncio.create_task(retention.run(), name="retention"),
    ]
    if isinstance(store, RedisStore):
        background.append(asyncio.create_task(RedisFeed(store, hub).run(), name="redis feed"))
    checks = {
        "store": store_check(store),
        "planner": planner_check(planner.channel, PLANNER_SERVICE, timeout=3.0),
        "data folder": space_check(args.data_dir),
    }
    if isinstance(agent, OpenAIModel):
        checks["model server"] = model_check(agent.probe)
    # Its first check warns at start when a dependency is away (once, until it changes).
    probe = HealthProbe(serving.health, [SERVICE_NAME], checks, interval=args.health_check_interval)
    metrics.track_dependencies(probe.reachable)
    background.append(asyncio.create_task(probe.run(), name="health probe"))
    metrics_server = None
    if args.metrics_listen:
        metrics_server = await start_metrics_server(
            args.metrics_listen, metrics.registry, metrics.refresh
        )
    logger.info(
        "executor serving on port %d (%s, %s); model %s; store %s; planner %s; resumed %s",
        port,
        "TLS" if tls else "plaintext",
        f"{len(keys.names)} API keys" if keys else "no API keys",
        agent.name,
        store.where,
        args.planner,
        counted(len(resumed), "task"),
    )
    return Executor(
        serving, port, runner, log, store, planner, background, close_model, metrics, metrics_server
    )


def step_agent(args: argparse.Namespace) -> tuple[StepAgent, Callable[[], Awaitable[None]]]:
    """Return the agent that runs steps for the chosen model, and how to close it."""
    if args.model == OPENAI:
        settings = openai_settings(args, os.environ)
        model = OpenAIModel(settings)
        return model, model.aclose
    return PlannedToolAgent(OfflineModel(pace=args.offline_pace)), _nothing_to_close


async def _nothing_to_close() -> None:
    return None


def _search(args: argparse.Namespace) -> SearchSettings | None:
    """Return web_search's provider from the flags, or None; SystemExit when it cannot work."""
    try:
        return search_settings(
            args.web_search or "",
            args.web_search_url,
            os.environ,
            max_results=args.web_search_results,
        )
    except ValueError as error:
        raise SystemExit(f"mitosis-executor: {error}") from None


async def serve(args: argparse.Namespace) -> None:
    """Serve until SIGTERM or SIGINT."""
    executor = await start_executor(args)
    await serve_until_signalled(executor.serving, args.grace, executor.stop_work)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the executor service."""
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        asyncio.run(serve(args))
    except (KeysFileError, TlsConfigError, SandboxUnavailable, ToolsConfigError) as error:
        raise SystemExit(f"mitosis-executor: {error}") from None
