"""Runs tasks: plan, then each step with its tool, recording every happening as an event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mitosis.errors import FailedPrecondition, NotFound, Unavailable
from mitosis.executor.events.hub import Overflowed, Subscription
from mitosis.executor.events.log import EventLimitExceeded, EventLog
from mitosis.executor.running.control import approve_plan, cancel_task, end_task, steps_of
from mitosis.executor.running.planner_client import PlanError
from mitosis.executor.store.base import LeaseLost, StoreUnavailable, TaskEnded
from mitosis.executor.store.retention import delete_task_folders
from mitosis.executor.tools.catalogue import ExecutorTools
from mitosis.executor.tools.fetch import FetchSettings
from mitosis.executor.tools.pages import DEFAULT_MAX_DOCUMENT_BYTES
from mitosis.executor.tools.recorded import RecordedTools, executor_line
from mitosis.executor.tools.sandbox.confine import Sandbox, SandboxConfig, SandboxLimits
from mitosis.executor.tools.workspace import FileInfo, FileStamp, Workspace
from mitosis.models.base import (
    OFFLINE_FALLBACK_NOTE,
    FatalModelError,
    ModelUsage,
    StepAgent,
    StepFailure,
    StepTools,
)
from mitosis.projection import TERMINAL_STATES
from mitosis.rpc.logs import task_context
from mitosis.tool_errors import PathEscapeError, ToolError, ToolLimitExceeded
from mitosis.tool_specs import WebSource
from mitosis.v1 import plan_pb2, task_pb2
from mitosis.words import counted

logger = logging.getLogger(__name__)

DELETE_ANY_END = 2**63 - 1
"""A cutoff later than any task's end (ns): deleting by request takes a task whenever it ended."""

Task = task_pb2.Task
Step = task_pb2.Step
Event = task_pb2.TaskEvent


class PlanSource(Protocol):
    """Where plans come from: the planner service, or a planning model in tests."""

    async def create_plan(self, task_text: str) -> plan_pb2.Plan:
        """Return a plan for the task, or raise PlanError."""
        ...

    async def revise_plan(
        self, task_text: str, plan: plan_pb2.Plan, failed_step_index: int, failure: str
    ) -> plan_pb2.Plan:
        """Return the steps to run instead of the failed one and the rest, or raise PlanError."""
        ...


@dataclass(frozen=True)
class RunnerConfig:
    """How the runner runs steps."""

    data_dir: Path
    tool_timeout: float = 60.0
    attempts_per_step: int = 2
    max_revisions: int = 2
    page_window: float = 0.05
    max_running: int = 8
    """Tasks run at once; more wait their turn (leased, PENDING) so the loop stays responsive."""
    lease_ttl: float = 10.0
    """Seconds a task's lease lasts unrenewed: how long a dead executor's tasks wait."""
    owner: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    )
    """This executor's name on the leases it holds."""
    sandbox: str = "auto"
    """How python runs are confined: "auto" (the strongest this machine allows), or
    "isolated", "uid" or "plain" to insist on one (see mitosis.executor.tools.sandbox.confine)."""
    tool_memory_bytes: int = SandboxLimits.memory_bytes
    """Address space each process of a python run may use."""
    tool_file_size_bytes: int = SandboxLimits.file_size_bytes
    """Largest file a python run may write."""
    tool_processes: int = SandboxLimits.processes
    """Processes and threads a python run may have at once."""
    sandbox_uid_base: int = SandboxConfig.uid_base
    """First of the 65,536 uids python runs take their own from (as root)."""
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    """Bytes one page may hold."""
    max_artifact_bytes: int = 64 << 20
    """Bytes one delivered file may have."""
    max_files_per_step: int = 1000
    """Files one step may create or change (each is hashed and delivered)."""
    max_step_bytes: int = 256 << 20
    """Bytes the files one step delivers may hold together."""
    fetch_url: bool = False
    """Whether steps may fetch public web pages (the model must offer the tool too)."""
    fetch_max_bytes: int = FetchSettings.max_bytes
    fetch_timeout: float = FetchSettings.timeout

    def sandbox_config(self) -> SandboxConfig:
        """Return the python sandbox's settings: the data folder is hidden from scripts."""
        limits = SandboxLimits(
            memory_bytes=self.tool_memory_bytes,
            file_size_bytes=self.tool_file_size_bytes,
            processes=self.tool_processes,
        )
        return SandboxConfig(
            mode=self.sandbox,
            limits=limits,
            uid_base=self.sandbox_uid_base,
            hidden=(self.data_dir,),
        )

    def fetch_settings(self) -> FetchSettings | None:
        """Return fetch_url's limits, or None when it is turned off."""
        if not self.fetch_url:
            return None
        return FetchSettings(max_bytes=self.fetch_max_bytes, timeout=self.fetch_timeout)


def plan_of(task: Task) -> plan_pb2.Plan:
    """Return the task's steps as the plan an agent reads."""
    steps = [
        plan_pb2.PlanStep(
            title=step.title,
            tool=step.tool,
            rationale=step.rationale,
            instructions=step.instructions,
            arguments=step.arguments,
        )
        for step in task.steps
    ]
    return plan_pb2.Plan(steps=steps, model=task.model, summary=task.plan_summary)


class _TaskFailed(Exception):
    """The task cannot go on; the message is its error."""


class TaskRunner:
    """Owns the running tasks of this executor: starts, cancels and resumes them."""

    def __init__(
        self,
        log: EventLog,
        planner: PlanSource,
        agent: StepAgent,
        config: RunnerConfig,
        wrap_tools: Callable[[StepTools], StepTools] | None = None,
        tools: ExecutorTools | None = None,
    ) -> None:
        self._log = log
        self._store = log.store
        self._planner = planner
        self._agent = agent
        self._config = config
        self._running: dict[str, asyncio.Task[None]] = {}
        self._start_again: set[str] = set()
        self._store_waits: set[str] = set()
        """Tasks whose run stopped because the store could not take their events (warned)."""
        """Tasks asked to start while a run of theirs was ending (an approval, for one)."""
        self._slots = asyncio.Semaphore(config.max_running)
        self._wrap_tools = wrap_tools
        """Put around each step's tools (metrics count the tool runs through it)."""
        self.sandbox = Sandbox(config.sandbox_config())
        """How python runs are confined here (its mode is chosen once, when made)."""
        self._fetch = config.fetch_settings()
        self.tools = tools or ExecutorTools(fetch=self._fetch)
        """The catalogue: what steps may use beyond the plan tools (started by the caller)."""

    def workspace(self, task_id: str) -> Workspace:
        """Return the task's workspace folder, where its tools work and its files lie."""
        return Workspace(self._config.data_dir / "tasks" / task_id / "workspace")

    def start(self, task_id: str) -> None:
        """Run the task in the background, from wherever its log says it is."""
        if task_id in self._running:
            self._start_again.add(task_id)  # that run may have looked before a change
            return
        with task_context(task_id):  # the run's task copies it: all its lines carry the id
            runner = asyncio.create_task(self._run(task_id), name=f"task {task_id}")
        self._running[task_id] = runner
        runner.add_done_callback(lambda done: self._ran(task_id, done))

    def _ran(self, task_id: str, runner: asyncio.Task[None]) -> None:
        """Forget the finished run; a run that died of an error nobody handled is logged."""
        self._running.pop(task_id, None)
        if not runner.cancelled() and (error := runner.exception()) is not None:
            logger.error("task %s: its run stopped on an error", task_id, exc_info=error)
        if task_id in self._start_again:
            self._start_again.discard(task_id)
            if not runner.cancelled():
                self.start(task_id)

    async def resume_unfinished(self) -> list[str]:
        """Start every task the store says has not ended that no other executor holds.

        Starting takes the task's lease first, so of several executors only one runs it.
        """
        task_ids = await self._store.unfinished_task_ids()
        for task_id in task_ids:
            self.start(task_id)
        return task_ids

    async def claim_forever(self) -> None:
        """Take over unfinished tasks whose executor stopped renewing their lease."""
        while True:
            await asyncio.sleep(self._config.lease_ttl / 2)
            try:
                await self.resume_unfinished()
            except Exception:  # the loop must outlive any one failure
                logger.exception("cannot look for tasks to take over; trying again")

    async def cancel(self, task_id: str, reason: str = "cancelled by request") -> None:
        """End the task CANCELLED, closing its open page and steps; FailedPrecondition when
        it has ended already.

        One conditional append does it, wherever the task runs: the executor running it sees
        the end in the task's own feed and stops its step, and anything it would still
        append is refused by the store. A run here is waited for, so its tool is stopped
        when this returns.
        """
        await cancel_task(self._log, task_id, reason)
        run = self._running.get(task_id)
        if run is not None:
            run.cancel()
            await asyncio.wait([run])

    async def delete(self, task_id: str) -> None:
        """Delete the task's record, events and files; a task that has not ended is first
        ended CANCELLED through the one end routine (its watchers see that end), so its run
        stops before its files go. Deleting a task that is already gone does nothing."""
        try:
            await self.cancel(task_id, "deleted by request")
        except FailedPrecondition:
            pass  # it had ended already
        except KeyError:
            return  # deleted meanwhile
        await asyncio.to_thread(delete_task_folders, self._config.data_dir, [task_id])
        # Any end time qualifies: the task has ended, whenever that was.
        await self._store.delete_ended([task_id], DELETE_ANY_END)

    async def approve(self, task_id: str, plan: plan_pb2.Plan | None) -> None:
        """Run a plan that waits for approval, as proposed or as edited in `plan`;
        FailedPrecondition in any other state (a cancel that came first, for one)."""
        await approve_plan(self._log, task_id, plan)
        self.start(task_id)

    async def shutdown(self) -> None:
        """Stop every running task without ending it: the next start resumes them."""
        runners = list(self._running.values())
        for runner in runners:
            runner.cancel()
        await asyncio.gather(*runners, return_exceptions=True)

    async def _run(self, task_id: str) -> None:
        owner = self._config.owner
        try:
            task = await self._store.get_task(task_id)
        except StoreUnavailable as error:
            logger.warning(
                "task %s: cannot look at it, the store is unreachable (%s)", task_id, error
            )
            return  # the claim loop tries again
        if task is None or task.state in _IDLE_STATES:
            return
        # Listening before the lease is taken: an end appended from now on is seen.
        with self._log.hub.subscribe(task_id, from_seq=task.last_seq) as feed:
            try:
                if not await self._take(task_id):
                    return  # another executor runs it, or there is nothing to run
            except StoreUnavailable as error:
                logger.warning(
                    "task %s: cannot take it now, the store is unreachable (%s)", task_id, error
                )
                return  # the claim loop tries again
            logger.info("task %s: running it here (lease %s)", task_id, owner)
            run = asyncio.current_task()
            assert run is not None
            watchers = [
                asyncio.create_task(self._keep_lease(task_id, run)),
                asyncio.create_task(self._stop_when_ended(task_id, feed, run)),
            ]
            try:
                await self._run_leased(task_id)
            finally:
                for watcher in watchers:
                    watcher.cancel()
                self._log.fence(task_id, None)
                with contextlib.suppress(Unavailable):
                    await self._store.release_lease(task_id, owner)

    async def _take(self, task_id: str) -> bool:
        """Take the task's lease to run it; False when another executor holds it, or when
        the task has nothing to run (it waits for approval, has ended, or is gone)."""
        owner = self._config.owner
        if not await self._store.acquire_lease(task_id, owner, self._config.lease_ttl):
            return False
        task = await self._store.get_task(task_id)
        if task is None or task.state in _IDLE_STATES:
            await self._store.release_lease(task_id, owner)
            return False
        self._log.fence(task_id, owner)
        return True

    async def _keep_lease(self, task_id: str, run: asyncio.Task[None]) -> None:
        """Renew the lease while the task runs; stop the run if the lease is lost."""
        owner, ttl = self._config.owner, self._config.lease_ttl
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                if not await self._store.renew_lease(task_id, owner, ttl):
                    logger.warning(
                        "task %s: lease lost, another executor took it over; stopping it here",
                        task_id,
                    )
                    run.cancel()
                    return
            except Unavailable as error:
                logger.warning("task %s: cannot renew its lease: %s", task_id, error)

    async def _stop_when_ended(
        self, task_id: str, feed: Subscription, run: asyncio.Task[None]
    ) -> None:
        """Stop the run when the task's feed shows it ended: someone cancelled it (here, or
        on another executor through the store's live feed). Its own end stops this first."""
        while True:
            try:
                events = await feed.next_batch(self._config.lease_ttl)
            except Overflowed:  # the feed dropped events: the store says how things stand
                task = await self._store.get_task(task_id)
                ended = task is None or task.state in TERMINAL_STATES
            else:
                ended = any(event.terminal for event in events)
            if ended:
                logger.info("task %s: it was ended elsewhere; stopping its run here", task_id)
                run.cancel()
                return

    async def _run_leased(self, task_id: str) -> None:
        try:
            async with self._slots:
                await self._execute(task_id)
        except TaskEnded:
            logger.info("task %s: it was ended elsewhere; its run here stopped", task_id)
        except LeaseLost as error:
            logger.warning("task %s: stopped, another executor took it over (%s)", task_id, error)
        except StoreUnavailable as error:
            # The claim loop tries again every few seconds: one warning, not one a try.
            if task_id in self._store_waits:
                logger.debug("task %s: still waiting for the store (%s)", task_id, error)
            else:
                self._store_waits.add(task_id)
                logger.warning(
                    "task %s: waiting, the store cannot take its events (%s); it resumes from"
                    " its log once the store can",
                    task_id,
                    error,
                )
            return
        except EventLimitExceeded as error:
            logger.warning("task %s: %s", task_id, error)
            await self._end(task_id, Task.STATE_FAILED, str(error))
        except Exception:
            logger.exception("task %s failed unexpectedly", task_id)
            reason = "internal error in the executor; its log has the details"
            await self._end(task_id, Task.STATE_FAILED, reason)
        if task_id in self._store_waits:
            self._store_waits.discard(task_id)
            logger.info("task %s: the store takes its events again; it went on", task_id)

    async def _end(self, task_id: str, state: Task.State.ValueType, reason: str) -> None:
        """End the task from its run; an end someone else appended first stands."""
        try:
            await end_task(self._log, task_id, state, reason, fenced=True)
        except TaskEnded:
            logger.info("task %s: it was ended elsewhere before its run could end it", task_id)

    async def _execute(self, task_id: str) -> None:
        task = await self._require(task_id)
        if task.state in _IDLE_STATES:
            return  # nothing to run (it may have ended while this executor took its lease)
        if not task.steps:
            if not await self._plan(task):
                return
            task = await self._require(task_id)
        elif task.pages or any(step.attempts for step in task.steps):
            await self._recover(task)
        workspace = self.workspace(task_id)
        index = 0
        while index < len(task.steps):
            step = task.steps[index]
            if step.state in (Step.STATE_PENDING, Step.STATE_RUNNING):
                try:
                    await self._run_step(task, step, workspace)
                except _TaskFailed as failed:
                    await self._end(task_id, Task.STATE_FAILED, str(failed))
                    return
                task = await self._require(task_id)  # a revision may have replaced the rest
            index += 1
        delivered = len(task.artifacts)
        plural = "s" if task.revisions > 1 else ""
        revised = f" after {task.revisions} plan revision{plural}" if task.revisions else ""
        delivered_files = counted(delivered, "file")
        await self._end(task_id, Task.STATE_SUCCEEDED, f"delivered {delivered_files}{revised}")

    async def _plan(self, task: Task) -> bool:
        await self._set_state(task.task_id, Task.STATE_PLANNING)
        try:
            plan = await self._planner.create_plan(task.text)
        except PlanError as error:
            await self._end(task.task_id, Task.STATE_FAILED, f"no plan could be made: {error}")
            return False
        ready = task_pb2.PlanReady(
            steps=steps_of(plan),
            model=plan.model,
            summary=plan.summary,
            tools=self.tools.catalogue.names,
        )
        if plan.summary.startswith(OFFLINE_FALLBACK_NOTE):
            await self._note(
                task.task_id, -1, "the model gave no valid plan: the offline planner's plan runs"
            )
        # With approval asked for, the task waits here; ApprovePlan starts it again.
        next_state = Task.STATE_AWAITING_APPROVAL if task.require_approval else Task.STATE_RUNNING
        change = task_pb2.TaskStateChanged(state=next_state)
        await self._log.append(
            task.task_id, Event(plan_ready=ready), Event(task_state_changed=change)
        )
        return next_state == Task.STATE_RUNNING

    async def _recover(self, task: Task) -> None:
        """Close what a previous executor left open when it died mid-step."""
        for page in task.pages:
            if not page.finished and not page.abandoned:
                abandoned = task_pb2.PageFinished(page_number=page.page_number, abandoned=True)
                await self._log.append(task.task_id, Event(page_finished=abandoned))
        if task.state != Task.STATE_RUNNING:
            await self._set_state(task.task_id, Task.STATE_RUNNING)
        await self._note(task.task_id, -1, "resuming the task at its first unfinished step")

    async def _run_step(self, task: Task, step: Step, workspace: Workspace) -> None:
        """Run the step, retrying once, then revising the plan; raise _TaskFailed at the end."""
        attempt = step.attempts
        resumed = step.state == Step.STATE_RUNNING
        usage = ModelUsage(
            step.usage.model_calls,
            step.usage.input_tokens,
            step.usage.output_tokens,
            step.usage.latency_ms,
        )
        failure = ""
        for failures in range(self._config.attempts_per_step):
            attempt += 1
            message = ""
            if failures:
                message = f"retrying after: {failure}"
            elif resumed:
                message = "restarted: the executor stopped during the previous attempt"
            await self._set_step(task.task_id, step.index, Step.STATE_RUNNING, attempt, message)
            before = await asyncio.to_thread(workspace.snapshot)  # files: off the loop
            recorded = RecordedTools(
                self._log,
                task.task_id,
                step.index,
                workspace,
                tool_timeout=self._config.tool_timeout,
                page_window=self._config.page_window,
                sandbox=self.sandbox,
                fetch=self._fetch,
                max_document_bytes=self._config.max_document_bytes,
                tools=self.tools,
            )
            tools: StepTools = recorded
            if self._wrap_tools is not None:
                tools = self._wrap_tools(tools)
            try:
                try:
                    await self._agent.run_step(task.text, plan_of(task), step.index, tools, usage)
                finally:
                    await recorded.aclose()
                delivered = await asyncio.to_thread(self._deliverables, workspace, before)
            except FatalModelError as error:
                failure = str(error)
                await self._set_step(
                    task.task_id, step.index, Step.STATE_FAILED, attempt, failure, usage
                )
                message = f"step {step.index + 1} ({step.title}) failed: {failure}"
                raise _TaskFailed(message) from error
            except (StepFailure, ToolError, PathEscapeError) as error:
                failure = str(error)
                await self._note(task.task_id, step.index, f"attempt {attempt} failed: {failure}")
                continue
            await self._deliver(task.task_id, step.index, delivered)
            await self._set_step(
                task.task_id,
                step.index,
                Step.STATE_SUCCEEDED,
                attempt,
                usage=usage,
                sources=recorded.sources(),
            )
            return
        await self._set_step(task.task_id, step.index, Step.STATE_FAILED, attempt, failure, usage)
        await self._revise(task, step, failure)

    async def _revise(self, task: Task, step: Step, failure: str) -> None:
        """Replace the steps after a failed one with the planner's revision, within the cap."""
        failed = f"step {step.index + 1} ({step.title}) failed: {failure}"
        current = await self._require(task.task_id)
        if current.revisions >= self._config.max_revisions:
            if self._config.max_revisions:
                failed += f" (the plan was already revised {counted(current.revisions, 'time')})"
            raise _TaskFailed(failed)
        await self._note(task.task_id, step.index, "asking the planner to revise the plan")
        try:
            revision = await self._planner.revise_plan(
                current.text, plan_of(current), step.index, failure
            )
        except PlanError as error:
            raise _TaskFailed(f"{failed}; the plan could not be revised: {error}") from error
        if not revision.steps:
            raise _TaskFailed(f"{failed}; the planner offered no other way")
        revised = task_pb2.PlanRevised(
            from_step_index=step.index + 1,
            steps=steps_of(revision, first_index=step.index + 1),
            reason=failed,
            revision=current.revisions + 1,
        )
        await self._log.append(task.task_id, Event(plan_revised=revised))

    def _deliverables(self, workspace: Workspace, before: dict[str, FileStamp]) -> list[FileInfo]:
        """Describe the files a step created or changed (in a thread: it reads them all).

        Sizes are checked from the file system before a byte is read, so a step cannot make
        the executor hash gigabytes of sparse files; ToolLimitExceeded names the limit met.
        """
        now = workspace.snapshot()
        changed = sorted(rel for rel, stamp in now.items() if before.get(rel) != stamp)
        config = self._config
        if len(changed) > config.max_files_per_step:
            raise ToolLimitExceeded(
                f"the step made {len(changed):,} files, more than a step may deliver"
                f" ({config.max_files_per_step:,})"
            )
        for rel in changed:
            if now[rel].size > config.max_artifact_bytes:
                raise ToolLimitExceeded(
                    f"the file {rel!r} is {now[rel].size:,} bytes, more than the artifact size"
                    f" limit ({config.max_artifact_bytes:,} bytes)"
                )
        total = sum(now[rel].size for rel in changed)
        if total > config.max_step_bytes:
            raise ToolLimitExceeded(
                f"the step's files hold {total:,} bytes, more than a step may deliver"
                f" ({config.max_step_bytes:,} bytes)"
            )
        try:
            return [workspace.describe(rel) for rel in changed]
        except (FileNotFoundError, PathEscapeError) as error:
            raise ToolError(f"a file changed while it was being delivered: {error}") from error
        except OSError as error:
            raise ToolError(f"cannot deliver the step's files: {error.strerror}") from error

    async def _deliver(self, task_id: str, step_index: int, infos: list[FileInfo]) -> None:
        events = []
        for info in infos:
            artifact = task_pb2.Artifact(
                path=info.path,
                size_bytes=info.size_bytes,
                sha256=info.sha256,
                media_type=info.media_type,
                step_index=step_index,
            )
            events.append(Event(artifact_ready=task_pb2.ArtifactReady(artifact=artifact)))
        if events:
            await self._log.append(task_id, *events)

    async def _require(self, task_id: str) -> Task:
        task = await self._store.get_task(task_id)
        if task is None:
            raise NotFound(f"task {task_id!r} does not exist")
        return task

    async def _set_state(
        self, task_id: str, state: Task.State.ValueType, message: str = ""
    ) -> None:
        change = task_pb2.TaskStateChanged(state=state, message=message)
        await self._log.append(task_id, Event(task_state_changed=change))

    async def _set_step(
        self,
        task_id: str,
        step_index: int,
        state: Step.State.ValueType,
        attempt: int,
        message: str = "",
        usage: ModelUsage | None = None,
        sources: Sequence[WebSource] = (),
    ) -> None:
        change = task_pb2.StepStateChanged(
            step_index=step_index, state=state, attempt=attempt, message=message
        )
        change.sources.extend(
            task_pb2.WebSource(url=source.url, title=source.title, read=source.read)
            for source in sources
        )
        if usage is not None and usage.model_calls:
            change.usage.CopyFrom(
                task_pb2.Usage(
                    model_calls=usage.model_calls,
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    latency_ms=usage.latency_ms,
                )
            )
        await self._log.append(task_id, Event(step_state_changed=change))

    async def _note(self, task_id: str, step_index: int, text: str) -> None:
        await self._log.append(task_id, executor_line(step_index, text))


_IDLE_STATES = {Task.STATE_AWAITING_APPROVAL, *TERMINAL_STATES}
"""States in which a task has nothing to run."""
