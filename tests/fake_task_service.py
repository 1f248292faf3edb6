"""A scripted fake TaskService on a real grpc.aio server, for the client and CLI tests.

Each WatchTask call takes the next behaviour from `script` (Serve when it is empty), so a
test decides exactly how each stream breaks. Events go `batch_size` to a message, as the
executor sends a backlog; a cut after a count of events may fall inside a batch. With
`api_key` set, every call must carry `authorization: Bearer <api_key>` (UNAUTHENTICATED
otherwise, in the executor's words), and `authorizations` records what each call carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc
from google.protobuf import empty_pb2

from mitosis.v1 import task_pb2, task_service_pb2, task_service_pb2_grpc

Task = task_pb2.Task
Step = task_pb2.Step
TaskEvent = task_pb2.TaskEvent
HEARTBEAT_GAP = 0.02


@dataclass
class Serve:
    """Send every remaining event, then end with OK."""


@dataclass
class AbortAfter:
    """Send `count` events, then fail with `code`."""

    count: int
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE


@dataclass
class EndAfter:
    """Send `count` events, then end with OK although the task has not ended."""

    count: int


@dataclass
class Replay:
    """Start `back` events before after_seq + 1 (duplicates), send `count` events, abort."""

    back: int
    count: int


@dataclass
class StallAfter:
    """Send `count` events and `heartbeats` heartbeats, then send nothing more, ever."""

    count: int
    heartbeats: int = 0


@dataclass
class SkipAfter:
    """Send `count` events, then leave one out (a gap) and send the rest."""

    count: int


@dataclass
class HoldLive:
    """A path that buffers streamed responses: a live call gets nothing, ever; a bounded call
    (max_wait set) gets up to `per_response` events and ends with OK, as such a path delivers
    it once it ends. Stays in the script for the calls after it."""

    per_response: int = 4


Behaviour = Serve | AbortAfter | EndAfter | Replay | StallAfter | SkipAfter | HoldLive


@dataclass
class FakeTask:
    """A task as the fake holds it: its final resource, its whole log and its files."""

    task: task_pb2.Task
    events: list[task_pb2.TaskEvent]
    files: dict[str, bytes] = field(default_factory=dict)


def numbered(task_id: str, kinds: list[dict[str, object]]) -> list[task_pb2.TaskEvent]:
    """Return events with seq 1, 2, 3 ... from their `kind` fields."""
    return [TaskEvent(task_id=task_id, seq=i, **kind) for i, kind in enumerate(kinds, 1)]  # type: ignore[arg-type]


def log_story(task_id: str, n: int) -> FakeTask:
    """A task whose log is n - 1 log lines and a final move to SUCCEEDED."""
    kinds: list[dict[str, object]] = [
        {"log_line": task_pb2.LogLine(source=task_pb2.LogLine.SOURCE_STDOUT, text=f"line {i}")}
        for i in range(1, n)
    ]
    kinds.append(
        {"task_state_changed": task_pb2.TaskStateChanged(state=Task.STATE_SUCCEEDED)},
    )
    task = Task(
        task_id=task_id, text="count lines", state=Task.STATE_SUCCEEDED, model="offline", last_seq=n
    )
    return FakeTask(task, numbered(task_id, kinds))


def awaiting_story(task_id: str, text: str) -> FakeTask:
    """A task made with require_approval whose plan waits for approval (and nobody approves)."""
    steps = [Step(index=0, title="Write it", tool="write_document", state=Step.STATE_PENDING)]
    kinds: list[dict[str, object]] = [
        {"task_state_changed": task_pb2.TaskStateChanged(state=Task.STATE_PLANNING)},
        {"plan_ready": task_pb2.PlanReady(steps=steps, model="offline", summary="One page.")},
        {"task_state_changed": task_pb2.TaskStateChanged(state=Task.STATE_AWAITING_APPROVAL)},
    ]
    task = Task(
        task_id=task_id,
        text=text,
        state=Task.STATE_AWAITING_APPROVAL,
        model="offline",
        steps=steps,
        last_seq=len(kinds),
        require_approval=True,
    )
    return FakeTask(task, numbered(task_id, kinds))


def document_story(task_id: str, text: str, outcome: Task.State.ValueType) -> FakeTask:
    """A realistic task: a plan of three steps, two documents (pages), tool output, an end."""
    titles = [("Outline", "outline.md"), ("Report", "report.md")]
    steps = [
        Step(
            index=i, title=f"Write the {t.lower()}", tool="write_document", state=Step.STATE_PENDING
        )
        for i, (t, _) in enumerate(titles)
    ]
    steps.append(Step(index=2, title="Check the numbers", tool="python", state=Step.STATE_PENDING))
    kinds: list[dict[str, object]] = [
        {"task_state_changed": task_pb2.TaskStateChanged(state=Task.STATE_PLANNING)},
        {"plan_ready": task_pb2.PlanReady(steps=steps, model="offline", summary="Two documents.")},
        {"task_state_changed": task_pb2.TaskStateChanged(state=Task.STATE_RUNNING)},
    ]
    files: dict[str, bytes] = {}
    artifacts: list[task_pb2.Artifact] = []
    for index, (title, file_name) in enumerate(titles):
        body = f"# {title}\n\nTask: {text}\n\nThis is the {title.lower()}, line one.\nLine two.\n"
        data = body.encode()
        artifact = task_pb2.Artifact(
            path=f"docs/{file_name}",
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            media_type="text/markdown",
            step_index=index,
        )
        files[artifact.path] = data
        artifacts.append(artifact)
        page = index + 1
        half = len(body) // 2
        kinds += [
            {
                "step_state_changed": task_pb2.StepStateChanged(
                    step_index=index, state=Step.STATE_RUNNING, attempt=1
                )
            },
            {
                "page_started": task_pb2.PageStarted(
                    page_number=page, title=title, step_index=index, file_name=artifact.path
                )
            },
            {"page_delta": task_pb2.PageDelta(page_number=page, offset=0, text=body[:half])},
            {
                "page_delta": task_pb2.PageDelta(
                    page_number=page, offset=len(body[:half].encode()), text=body[half:]
                )
            },
            {
                "page_finished": task_pb2.PageFinished(
                    page_number=page, size_bytes=len(data), sha256=artifact.sha256
                )
            },
            {"artifact_ready": task_pb2.ArtifactReady(artifact=artifact)},
            {
                "step_state_changed": task_pb2.StepStateChanged(
                    step_index=index, state=Step.STATE_SUCCEEDED, attempt=1
                )
            },
        ]
    kinds += [
        {
            "step_state_changed": task_pb2.StepStateChanged(
                step_index=2, state=Step.STATE_RUNNING, attempt=1
            )
        },
        {
            "log_line": task_pb2.LogLine(
                step_index=2, source=task_pb2.LogLine.SOURCE_STDOUT, text="hello from python"
            )
        },
        {
            "log_line": task_pb2.LogLine(
                step_index=2, source=task_pb2.LogLine.SOURCE_STDERR, text="a warning"
            )
        },
    ]
    message = ""
    last_step = Step.STATE_SUCCEEDED
    if outcome == Task.STATE_FAILED:
        message, last_step = "step 3 failed: boom", Step.STATE_FAILED
    elif outcome == Task.STATE_CANCELLED:
        message, last_step = "cancelled by CancelTask", Step.STATE_CANCELLED
    kinds += [
        {
            "step_state_changed": task_pb2.StepStateChanged(
                step_index=2, state=last_step, attempt=1, message=message
            )
        },
        {"task_state_changed": task_pb2.TaskStateChanged(state=outcome, message=message)},
    ]
    events = numbered(task_id, kinds)
    for step in steps:
        step.state, step.attempts = Step.STATE_SUCCEEDED, 1
    steps[2].state = last_step
    if last_step == Step.STATE_FAILED:
        steps[2].error = message
    task = Task(
        task_id=task_id,
        text=text,
        state=outcome,
        model="offline",
        steps=steps,
        artifacts=artifacts,
        error=message,
        last_seq=len(events),
    )
    return FakeTask(task, events, files)


class FakeTaskService(task_service_pb2_grpc.TaskServiceServicer):
    """Serves FakeTasks; WatchTask follows `script`; records what it was asked."""

    def __init__(self) -> None:
        self.tasks: dict[str, FakeTask] = {}
        self.script: list[Behaviour] = []
        self.watch_calls: list[int] = []
        self.watch_requests: list[task_service_pb2.WatchTaskRequest] = []
        self.batch_size = 3
        self.unary_failures: list[grpc.StatusCode] = []
        self.unary_calls = 0
        self.stalled = threading.Event()
        self.chunk_size = 7
        self.read_cuts: list[int | None] = []
        """Each ReadArtifact call takes the first: it breaks UNAVAILABLE after so many chunks."""
        self.read_offsets: list[int] = []
        self.create_requests: list[task_service_pb2.CreateTaskRequest] = []
        self._created: dict[str, str] = {}
        self.api_key: str | None = None
        self.authorizations: list[tuple[str, str | None]] = []

    async def _authorize(self, method: str, context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
        """Record the call's authorization metadata; refuse it as the executor would."""
        values = [v for k, v in context.invocation_metadata() or () if k == "authorization"]
        sent = str(values[0]) if values else None
        self.authorizations.append((method, sent))
        if self.api_key is None:
            return
        if sent is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "this service needs an API key (metadata authorization: Bearer <key>)",
            )
        if sent != f"Bearer {self.api_key}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "unknown API key")

    def add(self, fake: FakeTask) -> FakeTask:
        self.tasks[fake.task.task_id] = fake
        return fake

    async def _unary(self, method: str, context: grpc.aio.ServicerContext) -> None:  # type: ignore[type-arg]
        """Count a unary call; fail it if the test queued a failure."""
        await self._authorize(method, context)
        self.unary_calls += 1
        if self.unary_failures:
            await context.abort(self.unary_failures.pop(0), "scripted failure")

    async def _find(self, task_id: str, context: grpc.aio.ServicerContext) -> FakeTask:  # type: ignore[type-arg]
        if task_id not in self.tasks:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no task {task_id!r}")
        return self.tasks[task_id]

    async def CreateTask(self, request, context):
        self.create_requests.append(request)
        await self._unary("CreateTask", context)
        if request.request_id in self._created:  # a retry: the task it created (AIP-155)
            return self.tasks[self._created[request.request_id]].task
        if not request.text.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "text is required")
        outcome = Task.STATE_SUCCEEDED
        if "please fail" in request.text:
            outcome = Task.STATE_FAILED
        elif "please cancel" in request.text:
            outcome = Task.STATE_CANCELLED
        task_id = f"task-{len(self.tasks) + 1}"
        if request.require_approval:
            fake = self.add(awaiting_story(task_id, request.text))
        else:
            fake = self.add(document_story(task_id, request.text, outcome))
        if request.request_id:
            self._created[request.request_id] = fake.task.task_id
        return Task(
            task_id=fake.task.task_id, text=request.text, state=Task.STATE_PENDING, model="offline"
        )

    async def GetTask(self, request, context):
        await self._unary("GetTask", context)
        return (await self._find(request.task_id, context)).task

    async def ListTasks(self, request, context):
        await self._unary("ListTasks", context)
        tasks = [fake.task for fake in reversed(self.tasks.values())]
        if request.view != Task.VIEW_FULL:  # the basic view, as the executor's
            tasks = [Task(task_id=t.task_id, text=t.text, state=t.state) for t in tasks]
        start = int(request.page_token or 0)
        size = request.page_size or 50
        end = start + size
        token = str(end) if end < len(tasks) else ""
        return task_service_pb2.ListTasksResponse(tasks=tasks[start:end], next_page_token=token)

    async def CancelTask(self, request, context):
        await self._unary("CancelTask", context)
        fake = await self._find(request.task_id, context)
        if fake.task.state in (Task.STATE_SUCCEEDED, Task.STATE_FAILED, Task.STATE_CANCELLED):
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION, f"task {fake.task.task_id} has already ended"
            )
        fake.task.state = Task.STATE_CANCELLED
        return fake.task

    async def DeleteTask(self, request, context):
        await self._unary("DeleteTask", context)
        await self._find(request.task_id, context)
        del self.tasks[request.task_id]
        return empty_pb2.Empty()

    async def ApprovePlan(self, request, context):
        await self._unary("ApprovePlan", context)
        fake = await self._find(request.task_id, context)
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"task {fake.task.task_id} has no plan awaiting approval",
        )

    def _messages(
        self, events: list[task_pb2.TaskEvent]
    ) -> Iterator[task_service_pb2.WatchTaskResponse]:
        for start in range(0, len(events), self.batch_size):
            yield task_service_pb2.WatchTaskResponse(events=events[start : start + self.batch_size])

    async def WatchTask(
        self, request, context
    ) -> AsyncIterator[task_service_pb2.WatchTaskResponse]:
        await self._authorize("WatchTask", context)
        self.watch_calls.append(request.after_seq)
        self.watch_requests.append(request)
        fake = await self._find(request.task_id, context)
        if request.after_seq < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "after_seq must not be negative")
        if request.after_seq > len(fake.events):
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE, "after_seq is beyond the newest event"
            )
        behaviour = self.script[0] if self.script else Serve()
        if not isinstance(behaviour, HoldLive):
            behaviour = self.script.pop(0) if self.script else Serve()
        start = request.after_seq
        if isinstance(behaviour, Replay):
            start = max(0, start - behaviour.back)
        rest = fake.events[start:]
        match behaviour:
            case Serve():
                for message in self._messages(rest):
                    yield message
            case AbortAfter(count, code):
                for message in self._messages(rest[:count]):
                    yield message
                await context.abort(code, "the stream was cut")
            case Replay(_, count):
                for message in self._messages(rest[:count]):
                    yield message
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the stream was cut")
            case EndAfter(count):
                for message in self._messages(rest[:count]):
                    yield message
            case SkipAfter(count):
                for message in self._messages(rest[:count] + rest[count + 1 :]):
                    yield message
            case HoldLive(per_response):
                if not request.HasField("max_wait"):
                    await asyncio.sleep(3600)
                for message in self._messages(rest[:per_response]):
                    yield message
            case StallAfter(count, heartbeats):
                for message in self._messages(rest[:count]):
                    yield message
                latest = rest[:count][-1].seq if rest[:count] else start
                for _ in range(heartbeats):
                    await asyncio.sleep(HEARTBEAT_GAP)
                    beat = TaskEvent(
                        task_id=request.task_id, seq=latest, heartbeat=task_pb2.Heartbeat()
                    )
                    yield task_service_pb2.WatchTaskResponse(events=[beat])
                self.stalled.set()
                await asyncio.sleep(3600)

    async def ReadArtifact(self, request, context):
        await self._authorize("ReadArtifact", context)
        fake = await self._find(request.task_id, context)
        if request.path not in fake.files:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no artifact {request.path!r}")
        data = fake.files[request.path]
        self.read_offsets.append(request.read_offset)
        cut = self.read_cuts.pop(0) if self.read_cuts else None
        for sent, offset in enumerate(range(request.read_offset, len(data), self.chunk_size)):
            if sent == cut:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted cut")
            yield task_service_pb2.ReadArtifactResponse(
                offset=offset, data=data[offset : offset + self.chunk_size]
            )


@contextlib.contextmanager
def running(
    servicer: task_service_pb2_grpc.TaskServiceServicer,
    tls: grpc.ServerCredentials | None = None,
) -> Iterator[str]:
    """Serve `servicer` on 127.0.0.1:0 from a loop in a background thread; yield the target.

    With `tls` the port speaks TLS only.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-task-service", daemon=True)
    thread.start()

    async def start() -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server()
        task_service_pb2_grpc.add_TaskServiceServicer_to_server(servicer, server)
        if tls is None:
            port = server.add_insecure_port("127.0.0.1:0")
        else:
            port = server.add_secure_port("127.0.0.1:0", tls)
        await server.start()
        return server, port

    server, port = asyncio.run_coroutine_threadsafe(start(), loop).result()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(0), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
