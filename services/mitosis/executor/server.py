"""`mitosis-executor`: serve TaskService."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
from mitosis.executor.tools.web_search import (
    KEY_VARIABLES,
    PROVIDERS,
    SearchSettings,
    search_settings,
)
from mitosis.models.base import StepAgent
from mitosis.models.choice import OPENAI, OPENAI_API_KEY, add_model_arguments, openai_settings
from mitosis.models.offline import OfflineModel
from mitosis.models.openai_model import OpenAIModel
from mitosis.projection import TERMINAL_STATES
from mitosis.rpc.auth import (
    ApiKeyInterceptor,
    KeysFileError,
    add_key_arguments,
    describe_keys,
    load_keys,
)
from mitosis.rpc.logs import (
    RequestIdInterceptor,
    TaskEventLines,
    add_logging_arguments,
    configure_logging,
)
from mitosis.rpc.metrics_server import MetricsServer, add_metrics_arguments, start_metrics_server
from mitosis.rpc.serving import Serving, add_grace_argument, serve_until_signalled
from mitosis.rpc.settings import EnvironmentOnly, add_environment_only, add_setting
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
KEYLESS_NAMED = 20
"""Tasks made without keys whose ids the start-up warning names at most."""
SEARCH_KEYS = [
    EnvironmentOnly(variable, f"{provider}'s key, for --web-search {provider}")
    for provider, variable in KEY_VARIABLES.items()
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Return the executor's settings from flags, then MITOSIS_* variables, then defaults."""
    return argument_parser(os.environ).parse_args(argv)


def argument_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The executor's flags, each with its environment variable and default."""
    parser = argparse.ArgumentParser(
        prog="mitosis-executor",
        description="Serve mitosis.v1.TaskService: run tasks and stream their events.",
    )
    add_setting(
        parser,
        "--listen",
        "MITOSIS_EXECUTOR_LISTEN",
        env,
        default="127.0.0.1:50051",
        help="address to serve on",
    )
    add_setting(
        parser,
        "--planner",
        "MITOSIS_PLANNER",
        env,
        default="127.0.0.1:50052",
        help="PlannerService address",
    )
    add_setting(
        parser,
        "--planner-deadline",
        "MITOSIS_PLANNER_DEADLINE",
        env,
        type=float,
        default="300",
        help="seconds a plan may take (a model's retries included)",
    )
    add_setting(
        parser,
        "--data-dir",
        "MITOSIS_DATA_DIR",
        env,
        type=Path,
        default="data",
        help="folder of the SQLite store and the task workspaces",
    )
    add_setting(
        parser,
        "--store",
        "MITOSIS_STORE",
        env,
        default="",
        default_text="SQLite at DATA_DIR/mitosis.sqlite3",
        help="where tasks and events live: sqlite:PATH, or redis://host:port/db",
    )
    add_model_arguments(parser, env)
    add_retention_arguments(parser, env)
    add_setting(
        parser,
        "--offline-pace",
        "MITOSIS_OFFLINE_PACE",
        env,
        type=float,
        default="0.02",
        help="seconds the offline model waits between pieces of a document, so people"
        " can watch it write; 0 turns pacing off",
    )
    add_setting(
        parser,
        "--heartbeat-interval",
        "MITOSIS_HEARTBEAT_INTERVAL",
        env,
        type=float,
        default="10",
        help="seconds of quiet before WatchTask sends a heartbeat",
    )
    add_setting(
        parser,
        "--tool-timeout",
        "MITOSIS_TOOL_TIMEOUT",
        env,
        type=float,
        default="60",
        help="seconds a python step may run before it is killed",
    )
    add_setting(
        parser,
        "--max-revisions",
        "MITOSIS_MAX_REVISIONS",
        env,
        type=int,
        default="2",
        help="times the plan may be revised after a step fails twice; 0 fails the task at once",
    )
    add_setting(
        parser,
        "--max-running",
        "MITOSIS_MAX_RUNNING",
        env,
        type=int,
        default="8",
        help="tasks this executor runs at once; more wait their turn",
    )
    add_setting(
        parser,
        "--lease-ttl",
        "MITOSIS_LEASE_TTL",
        env,
        type=float,
        default="10",
        help="seconds a task's lease lasts unrenewed: how soon another executor takes"
        " over the tasks of one that died",
    )
    add_setting(
        parser,
        "--max-tasks-per-key",
        "MITOSIS_MAX_TASKS_PER_KEY",
        env,
        type=int,
        default=str(Limits.tasks_per_key),
        help="unfinished tasks one API key may have at once; CreateTask past it is"
        " RESOURCE_EXHAUSTED",
    )
    add_setting(
        parser,
        "--max-watchers-per-task",
        "MITOSIS_MAX_WATCHERS_PER_TASK",
        env,
        type=int,
        default=str(Limits.watchers_per_task),
        help="WatchTask streams one task may have open on this executor",
    )
    add_setting(
        parser,
        "--max-watchers-per-key",
        "MITOSIS_MAX_WATCHERS_PER_KEY",
        env,
        type=int,
        default=str(Limits.watchers_per_key),
        help="WatchTask streams one API key may have open on this executor",
    )
    tools = parser.add_argument_group(
        "the python tool's sandbox, fetch_url, web_search and MCP servers"
    )
    add_setting(
        tools,
        "--sandbox",
        "MITOSIS_SANDBOX",
        env,
        choices=["auto", "isolated", "uid", "plain"],
        default="auto",
        help="how python steps are confined: auto takes the strongest this machine"
        " allows; isolated (root with namespaces: own uid, no network, only the"
        " workspace writable), uid (root without namespaces: own uid and limits),"
        " plain (limits only); naming a mode refuses to start without it",
    )
    add_setting(
        tools,
        "--tool-memory-mib",
        "MITOSIS_TOOL_MEMORY_MIB",
        env,
        type=int,
        default="1024",
        help="MiB of memory each process of a python step may use",
    )
    add_setting(
        tools,
        "--tool-file-size-mib",
        "MITOSIS_TOOL_FILE_SIZE_MIB",
        env,
        type=int,
        default="64",
        help="MiB of the largest file a python step may write",
    )
    add_setting(
        tools,
        "--tool-processes",
        "MITOSIS_TOOL_PROCESSES",
        env,
        type=int,
        default="64",
        help="processes and threads a python step may have at once",
    )
    add_setting(
        tools,
        "--sandbox-uid-base",
        "MITOSIS_SANDBOX_UID_BASE",
        env,
        type=int,
        default="1900000000",
        help="first of the 65,536 uids python steps run as, one per run, when the executor is root",
    )
    add_setting(
        tools,
        "--fetch-url",
        "MITOSIS_FETCH_URL",
        env,
        action="store_true",
        help="let steps fetch public web pages (http(s), text only; loopback, private,"
        " link-local and metadata addresses refused)",
    )
    add_setting(
        tools,
        "--fetch-max-bytes",
        "MITOSIS_FETCH_MAX_BYTES",
        env,
        type=int,
        default=str(2 << 20),
        help="bytes of a page fetch_url reads at most",
    )
    add_setting(
        tools,
        "--fetch-timeout",
        "MITOSIS_FETCH_TIMEOUT",
        env,
        type=float,
        default="20",
        help="seconds one fetch_url call may take, redirects included",
    )
    add_setting(
        tools,
        "--web-search",
        "MITOSIS_WEB_SEARCH",
        env,
        choices=PROVIDERS,
        default_text="off",
        help="offer steps a web_search tool through this provider: searxng"
        " (self-hosted, no key; needs --web-search-url), tavily (key in"
        " TAVILY_API_KEY) or brave (key in BRAVE_API_KEY)",
    )
    add_setting(
        tools,
        "--web-search-url",
        "MITOSIS_WEB_SEARCH_URL",
        env,
        default="",
        default_text="Tavily's or Brave's own API",
        help="the search provider's base URL, e.g. http://127.0.0.1:8888 for a SearXNG",
    )
    add_setting(
        tools,
        "--web-search-results",
        "MITOSIS_WEB_SEARCH_RESULTS",
        env,
        type=int,
        default="5",
        help="results one web_search returns at most",
    )
    add_setting(
        tools,
        "--tools-config",
        "MITOSIS_TOOLS_CONFIG",
        env,
        type=Path,
        help="TOML or JSON file naming MCP servers (mcpServers: command/args/env for"
        " stdio, url/headers for streamable HTTP; allowedTools, timeout,"
        " maxOutputChars) whose tools steps may use",
    )
    limits = parser.add_argument_group("limits")
    add_setting(
        limits,
        "--max-document-bytes",
        "MITOSIS_MAX_DOCUMENT_BYTES",
        env,
        type=int,
        default=str(8 << 20),
        help="bytes one written document may hold; more fails its step",
    )
    add_setting(
        limits,
        "--max-artifact-bytes",
        "MITOSIS_MAX_ARTIFACT_BYTES",
        env,
        type=int,
        default=str(64 << 20),
        help="bytes one delivered file may have; a larger one fails its step",
    )
    add_setting(
        limits,
        "--max-events-per-task",
        "MITOSIS_MAX_EVENTS_PER_TASK",
        env,
        type=int,
        default="200000",
        help="events one task may record; a task that would exceed it fails, with room"
        " kept for its ending",
    )
    add_key_arguments(parser, env)
    add_tls_arguments(parser, env)
    add_setting(
        parser,
        "--planner-key",
        "MITOSIS_PLANNER_KEY",
        env,
        default="",
        help="API key the executor sends to the planner; the environment is the better"
        " place for it: flags show in the process list",
    )
    add_setting(
        parser,
        "--planner-ca",
        "MITOSIS_PLANNER_CA",
        env,
        type=Path,
        default_text="none: plain text",
        help="call the planner over TLS, trusting this PEM CA",
    )
    add_setting(
        parser,
        "--planner-client-cert",
        "MITOSIS_PLANNER_CLIENT_CERT",
        env,
        type=Path,
        help="PEM certificate the executor shows the planner (mutual TLS; with --planner-ca)",
    )
    add_setting(
        parser,
        "--planner-client-key",
        "MITOSIS_PLANNER_CLIENT_KEY",
        env,
        type=Path,
        help="the PEM private key of --planner-client-cert",
    )
    add_grace_argument(parser, env)
    add_setting(
        parser,
        "--health-check-interval",
        "MITOSIS_HEALTH_CHECK_INTERVAL",
        env,
        type=float,
        default="5",
        help="seconds between checks of the store and the planner; TaskService reports"
        " NOT_SERVING while either is unreachable",
    )
    add_metrics_arguments(parser, env, example_port=9464)
    add_logging_arguments(parser, env)
    add_environment_only(parser, [OPENAI_API_KEY, *SEARCH_KEYS])
    return parser


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
        """Stop within `grace`: NOT_SERVING first, then the running steps (their tasks are
        not ended: the next start resumes them), then the open streams, which end saying
        where to resume; then close what the executor holds."""
        await self.serving.stop(grace, self.runner.shutdown)
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
    serving = Serving(
        [SERVICE_NAME], interceptors, keys=keys, label="executor", resume_hint=resume_point
    )
    add_task_service(TaskServicer(tasks), serving.server)
    port = serving.listen(args.listen, tls)
    await serving.start()
    try:
        resumed = await runner.resume_unfinished()
    except StoreUnavailable as error:  # serve anyway: the claim loop resumes them later
        logger.warning("cannot resume unfinished tasks yet, the store is unreachable: %s", error)
        resumed = []
    if keys:
        await warn_of_keyless_tasks(store)
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
        describe_keys(keys),
        agent.name,
        store.where,
        args.planner,
        counted(len(resumed), "task"),
    )
    return Executor(
        serving, port, runner, log, store, planner, background, close_model, metrics, metrics_server
    )


async def warn_of_keyless_tasks(store: Store) -> None:
    """Say so at start when keys are on and tasks made without keys have not ended: they
    belong to no key, so only admin keys see them (docs/SECURITY.md), and they run on here
    to their end. Their ids are named (the newest ones), for an admin to look at."""
    try:
        count = await store.count_unfinished("")
        page = await store.list_tasks(KEYLESS_NAMED, None, owner="") if count else None
    except StoreUnavailable:
        return
    if page is not None:
        ids = [task.task_id for task in page.tasks if task.state not in TERMINAL_STATES]
        logger.warning(
            "unfinished tasks made without API keys: %d; only admin keys see them (a key line"
            " ending in 'admin', mitosis-keygen --admin), and they run on to their end; the"
            " newest: %s",
            count,
            ", ".join(ids) or "none among the newest tasks made without keys",
        )


def resume_point(request: object, last: object) -> dict[str, str]:
    """Where a stream the stop ended resumes: WatchTask after the last seq it sent,
    ReadArtifact from the next byte."""
    if isinstance(request, task_service_pb2.WatchTaskRequest):
        seq = request.after_seq
        if isinstance(last, bytes):  # WatchTask's responses go out pre-encoded
            last = task_service_pb2.WatchTaskResponse.FromString(last)
        if isinstance(last, task_service_pb2.WatchTaskResponse):
            seq = max([seq, *(event.seq for event in last.events)])
        return {"after_seq": str(seq)}
    if isinstance(request, task_service_pb2.ReadArtifactRequest):
        offset = request.read_offset
        if isinstance(last, task_service_pb2.ReadArtifactResponse):
            offset = last.offset + len(last.data)
        return {"read_offset": str(offset)}
    return {}


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
    await serve_until_signalled(executor.serving, args.grace, executor.stop)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the executor service."""
    args = parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        asyncio.run(serve(args))
    except (KeysFileError, TlsConfigError, SandboxUnavailable, ToolsConfigError) as error:
        raise SystemExit(f"mitosis-executor: {error}") from None
