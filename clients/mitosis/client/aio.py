"""The asyncio client of TaskService, with the exactly-once resuming watch every caller uses."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from mitosis.client.artifacts import ArtifactWriter, artifact_destination, refuse_existing
from mitosis.client.errors import (
    ConfigurationError,
    DeadlineExceededError,
    InternalError,
    MitosisError,
    UnavailableError,
    error_from_rpc,
    error_info,
)
from mitosis.client.resume import (
    TERMINAL_STATES,
    Admission,
    Backoff,
    SeqCursor,
    SequenceGapError,
    is_terminal,
)
from mitosis.client.settings import ClientSettings, checked_api_key
from mitosis.v1 import plan_pb2, task_pb2, task_service_pb2, task_service_pb2_grpc

if TYPE_CHECKING:
    from mitosis.v1.task_service_pb2_grpc import TaskServiceAsyncStub

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")

StateCallback = Callable[[str], None]
"""Told about the watch's connection: "connecting", "live", "live (bounded calls: ...)",
"reconnecting (attempt N, ...)"."""

# Codes after which a watch resumes. The watch sets no deadline, so DEADLINE_EXCEEDED can
# only come from a proxy's route timeout; CANCELLED here was not caused by us.
RESUMABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)


SERVER_RESTARTING = "SERVICE_STOPPING"
"""The ErrorInfo reason a server ends its streams with when it stops (to restart, mostly)."""


def _watch_break(error: grpc.aio.AioRpcError, restarting: bool) -> tuple[str, bool]:
    """Why a watch's stream broke, in words, and whether the server is known to restart:
    after it said so, failing to connect is its restart, not a transport error to show."""
    info = error_info(error.trailing_metadata())
    if info is not None and info.reason == SERVER_RESTARTING:
        return "the server is restarting", True
    if restarting and error.code() == grpc.StatusCode.UNAVAILABLE:
        return "the server is restarting; waiting for it to be back", True
    return f"{error.code().name}: {error.details()}", False


def tls_credentials(ca_file: Path) -> grpc.ChannelCredentials:
    """TLS channel credentials that trust the CA certificate(s) in a PEM file."""
    try:
        pem = ca_file.read_bytes()
    except OSError as error:
        raise ConfigurationError(
            f"cannot read the TLS CA file {ca_file}: {error.strerror}"
        ) from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise ConfigurationError(f"the TLS CA file {ca_file} holds no PEM certificate")
    return grpc.ssl_channel_credentials(root_certificates=pem)


class _StreamBrokenError(Exception):
    """The watch stream stopped being useful without a gRPC error."""


class _StreamEndedError(_StreamBrokenError):
    """The watch stream ended with OK before a terminal event was delivered."""


class _FirstMessageLateError(_StreamBrokenError):
    """A live watch's first message did not come in time: the path may buffer responses."""


BOUNDED_STATE = "live (bounded calls: the network path holds back streamed responses)"
"""The watch state once it has switched to bounded calls."""


class AsyncClient:
    """A client of TaskService on grpc.aio. Use it as an async context manager, or close() it."""

    def __init__(
        self,
        target: str,
        *,
        max_reconnect_wait: float = 5.0,
        reconnect_deadline: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        api_key: str | None = None,
        tls_ca: Path | str | None = None,
        stall_timeout: float = 35.0,
        call_timeout: float = 10.0,
        probe_timeout: float = 2.0,
        bounded_wait: float = 0.5,
        rand: Callable[[], float] = random.random,
    ) -> None:
        """Prepare a client of the TaskService at `target` ("host:port"); connects lazily.

        `api_key` goes as `authorization: Bearer <key>` on every call, resumed watches
        included. `tls_ca` (a PEM file of the CA that signed the server's certificate) makes
        the channel TLS; without it the channel is plain text (h2c). `reconnect_deadline`
        bounds, in seconds, how long a watch keeps failing to reconnect (None: forever) and
        how long unary calls retry UNAVAILABLE (None: `call_timeout`). `stall_timeout` is how
        long a watch may receive nothing, not even a heartbeat. A live watch whose first
        message takes longer than `probe_timeout` while the server answers GetTask goes on
        with bounded calls that end `bounded_wait` seconds after their first event.
        """
        self.target = target
        self._max_reconnect_wait = max_reconnect_wait
        self._reconnect_deadline = reconnect_deadline
        if api_key is not None:
            key = checked_api_key(api_key, "api_key")
            metadata = (*metadata, ("authorization", f"Bearer {key}"))
        self._metadata = tuple(metadata)
        self._credentials = None if tls_ca is None else tls_credentials(Path(tls_ca))
        self._stall_timeout = stall_timeout
        self._call_timeout = call_timeout
        self._probe_timeout = probe_timeout
        self._bounded_wait = bounded_wait
        self.path_buffers = False
        """Whether a watch found that the path holds back streams; later watches start bounded."""
        self._rand = rand
        self._channel: grpc.aio.Channel | None = None
        self._stub: TaskServiceAsyncStub | None = None

    @classmethod
    def from_settings(cls, settings: ClientSettings, **options: Any) -> AsyncClient:
        """A client as `settings` say (see ClientSettings.load); `options` as for __init__."""
        return cls(settings.target, api_key=settings.api_key, tls_ca=settings.tls_ca, **options)

    def __repr__(self) -> str:
        secure = "TLS" if self._credentials is not None else "plain text"
        return f"<AsyncClient {self.target} ({secure})>"

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel; streams still open end with an error."""
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = self._stub = None

    def _service(self) -> TaskServiceAsyncStub:
        # The channel binds to the running loop, so it is made on first use, not in __init__.
        if self._stub is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials)
            self._stub = task_service_pb2_grpc.TaskServiceStub(self._channel)
        return self._stub

    async def create_task(
        self, text: str, *, require_approval: bool = False, request_id: str | None = None
    ) -> task_pb2.Task:
        """Create a task and start it; UNAVAILABLE is retried, as for every other call.

        The request carries a `request_id` (a new UUID unless given), so a retry of a call
        whose answer was lost returns the task the first attempt created instead of making
        a second one; pass the same `request_id` to retry across calls or processes. With
        `require_approval`, the task stops in STATE_AWAITING_APPROVAL once its plan is
        ready, until `approve_plan` or `cancel_task`.
        """
        request = task_service_pb2.CreateTaskRequest(
            text=text,
            require_approval=require_approval,
            request_id=request_id or str(uuid.uuid4()),
        )
        return await self._unary(self._service().CreateTask, request)

    async def get_task(self, task_id: str) -> task_pb2.Task:
        """Get a task with its steps, pages and delivered files."""
        request = task_service_pb2.GetTaskRequest(task_id=task_id)
        return await self._unary(self._service().GetTask, request)

    async def list_tasks(
        self,
        page_size: int = 0,
        page_token: str = "",
        *,
        view: task_pb2.Task.View.ValueType = task_pb2.Task.VIEW_BASIC,
    ) -> task_service_pb2.ListTasksResponse:
        """List tasks, newest first, one page at a time: by default without their steps,
        pages and files (VIEW_BASIC; VIEW_FULL has them, as `get_task` does). A page may hold
        fewer than `page_size` tasks while more follow: go on while `next_page_token` is set."""
        request = task_service_pb2.ListTasksRequest(
            page_size=page_size, page_token=page_token, view=view
        )
        return await self._unary(self._service().ListTasks, request)

    async def cancel_task(self, task_id: str) -> task_pb2.Task:
        """Cancel a running task; FailedPreconditionError if it has already ended."""
        request = task_service_pb2.CancelTaskRequest(task_id=task_id)
        return await self._unary(self._service().CancelTask, request)

    async def delete_task(self, task_id: str) -> None:
        """Delete a task with its events and files, cancelling it first if it runs;
        NotFoundError if there is no such task (or it was deleted already)."""
        request = task_service_pb2.DeleteTaskRequest(task_id=task_id)
        await self._unary(self._service().DeleteTask, request)

    async def approve_plan(self, task_id: str, plan: plan_pb2.Plan | None = None) -> task_pb2.Task:
        """Run a plan that awaits approval, as proposed or replaced by `plan`."""
        request = task_service_pb2.ApprovePlanRequest(task_id=task_id, plan=plan)
        return await self._unary(self._service().ApprovePlan, request, idempotent=False)

    async def _unary(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        *,
        idempotent: bool = True,
    ) -> _Response:
        """Call with a deadline; retry UNAVAILABLE (idempotent calls only) within the budget."""
        loop = asyncio.get_running_loop()
        budget = (
            self._call_timeout if self._reconnect_deadline is None else self._reconnect_deadline
        )
        backoff = Backoff(maximum=self._max_reconnect_wait, rand=self._rand)
        started = loop.time()
        while True:
            try:
                return await method(request, timeout=self._call_timeout, metadata=self._metadata)
            except grpc.aio.AioRpcError as error:
                remaining = budget - (loop.time() - started)
                if not idempotent or error.code() != grpc.StatusCode.UNAVAILABLE or remaining <= 0:
                    raise error_from_rpc(error) from None
            await asyncio.sleep(min(backoff.next_delay(), remaining))

    async def watch(
        self,
        task_id: str,
        after_seq: int = 0,
        *,
        include_heartbeats: bool = False,
        on_state: StateCallback | None = None,
        bounded: bool | None = None,
    ) -> AsyncGenerator[task_pb2.TaskEvent, None]:
        """Yield the task's events with `seq > after_seq`, each once and in order, to the end.

        Survives broken streams, proxies that end streams early and stalls by resuming from
        the last `seq` delivered; stops after the terminal event. Raises a MitosisError for
        errors that a retry cannot fix, and UnavailableError when reconnecting has failed for
        longer than `reconnect_deadline`.

        A path that holds back a live stream (a proxy that buffers whole responses) is found
        out by itself: when a live call's first message has not come within `probe_timeout`
        while GetTask answers, the watch goes on with bounded calls (`bounded=True` starts
        with them; None: when an earlier watch of this client found the path out), each a
        response that ends `bounded_wait` after its first event, and `on_state` says
        "live (bounded calls: ...)".
        """
        if bounded is None:
            bounded = self.path_buffers
        loop = asyncio.get_running_loop()
        cursor = SeqCursor(after_seq)
        backoff = Backoff(maximum=self._max_reconnect_wait, rand=self._rand)
        report = _StateReporter(on_state)
        failing_since: float | None = None
        attempt = 0
        restarting = False
        while True:
            report("connecting")
            call = self._service().WatchTask(
                self._watch_request(task_id, cursor.last, bounded), metadata=self._metadata
            )
            received = False
            try:
                while True:
                    probing = not (received or bounded)
                    message = await self._next_message(call, probing)
                    received = True
                    report(BOUNDED_STATE if bounded else "live")
                    failing_since, attempt, restarting = None, 0, False
                    for event in message.events:
                        admission = cursor.admit(event)
                        if admission is Admission.NEW:
                            backoff.reset()
                            yield event
                            if is_terminal(event):
                                return
                        elif admission is Admission.HEARTBEAT and include_heartbeats:
                            yield event
            except grpc.aio.AioRpcError as error:
                if error.code() not in RESUMABLE_CODES:
                    raise error_from_rpc(error) from None
                reason, restarting = _watch_break(error, restarting)
            except _FirstMessageLateError as late:
                if await self._answers(task_id):
                    # The server answers, the stream does not: the path buffers.
                    bounded = self.path_buffers = True
                    continue
                reason = str(late)
            except _StreamEndedError as ended:
                if bounded and received:
                    continue  # a bounded response ends by design: ask again from the cursor
                # The server ends at once when the caller has seen the terminal event already.
                if await self._has_ended_by(task_id, cursor.last):
                    return
                reason = str(ended)
            except (_StreamBrokenError, SequenceGapError) as broken:
                reason = str(broken)
            finally:
                call.cancel()
            now = loop.time()
            failing_since = now if failing_since is None else failing_since
            attempt += 1
            delay = backoff.next_delay()
            if self._reconnect_deadline is not None:
                remaining = self._reconnect_deadline - (now - failing_since)
                if remaining <= 0:
                    raise UnavailableError(
                        f"gave up watching task {task_id} after {now - failing_since:.1f} s "
                        f"without a working stream: {reason}"
                    )
                delay = min(delay, remaining)
            report(f"reconnecting (attempt {attempt}, waiting {delay:.1f} s: {reason})")
            await asyncio.sleep(delay)

    def _watch_request(
        self, task_id: str, after_seq: int, bounded: bool
    ) -> task_service_pb2.WatchTaskRequest:
        request = task_service_pb2.WatchTaskRequest(task_id=task_id, after_seq=after_seq)
        if bounded:
            request.max_wait.FromTimedelta(timedelta(seconds=self._bounded_wait))
        return request

    async def _answers(self, task_id: str) -> bool:
        """Return True if a unary call reaches the server now."""
        try:
            await self.get_task(task_id)
        except (UnavailableError, DeadlineExceededError):
            return False
        return True

    async def _has_ended_by(self, task_id: str, seq: int) -> bool:
        """Return True if the task has ended and its log holds nothing after `seq`."""
        try:
            task = await self.get_task(task_id)
        except (UnavailableError, DeadlineExceededError):
            return False  # cannot tell now; the resume will ask again
        return task.state in TERMINAL_STATES and task.last_seq <= seq

    async def _next_message(
        self,
        call: grpc.aio.UnaryStreamCall[
            task_service_pb2.WatchTaskRequest, task_service_pb2.WatchTaskResponse
        ],
        probing: bool,
    ) -> task_service_pb2.WatchTaskResponse:
        """Read one message; a stall or an end of stream is a _StreamBrokenError.

        `probing`: the first message of a live call, which the server sends at once.
        """
        wait = self._probe_timeout if probing else self._stall_timeout
        try:
            async with asyncio.timeout(wait):
                message = await call.read()
        except TimeoutError:
            if probing:
                raise _FirstMessageLateError(f"no first message within {wait:g} s") from None
            raise _StreamBrokenError(
                f"nothing received for {wait:g} s, not even a heartbeat"
            ) from None
        if not isinstance(message, task_service_pb2.WatchTaskResponse):  # grpc.aio.EOF
            raise _StreamEndedError("the stream ended before the task's final event")
        return message

    async def read_artifact(
        self, task_id: str, path: str, *, offset: int = 0
    ) -> AsyncGenerator[bytes, None]:
        """Yield the bytes of a delivered file from byte `offset` on, chunk by chunk, in order."""
        request = task_service_pb2.ReadArtifactRequest(
            task_id=task_id, path=path, read_offset=offset
        )
        call = self._service().ReadArtifact(request, metadata=self._metadata)
        try:
            while True:
                async with asyncio.timeout(self._stall_timeout):
                    chunk = await call.read()
                if not isinstance(chunk, task_service_pb2.ReadArtifactResponse):
                    return
                if chunk.offset != offset:
                    raise InternalError(
                        f"{path}: chunk at offset {chunk.offset}, expected {offset}"
                    )
                offset += len(chunk.data)
                yield chunk.data
        except TimeoutError:
            raise UnavailableError(
                f"{path}: nothing received for {self._stall_timeout:g} s"
            ) from None
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error) from None
        finally:
            call.cancel()

    async def download_artifacts(
        self, task_id: str, out_dir: Path | str, *, overwrite: bool = True
    ) -> list[Path]:
        """Write every artifact of the task under out_dir (making folders) and return the paths.

        Refuses, before writing anything, artifact paths that would leave out_dir
        (UnsafePathError) and, without `overwrite`, files that exist already
        (ArtifactExistsError, naming the first); checks each file's size and SHA-256
        against the task's artifact list before moving it into place (IntegrityError). A
        download that breaks resumes from the bytes already received (ReadArtifact's
        `read_offset`), for as long as unary calls retry (`reconnect_deadline`, else
        `call_timeout`) without receiving a byte.
        """
        task = await self.get_task(task_id)
        out = Path(out_dir)
        destinations = [artifact_destination(out, a.path) for a in task.artifacts]
        if not overwrite:
            refuse_existing(destinations)
        written: list[Path] = []
        for artifact, destination in zip(task.artifacts, destinations, strict=True):
            with ArtifactWriter(destination, artifact) as writer:
                await self._download(task_id, artifact.path, writer)
                written.append(writer.commit())
        return written

    async def _download(self, task_id: str, path: str, writer: ArtifactWriter) -> None:
        """Write one file's bytes, resuming a broken read from what the writer holds."""
        loop = asyncio.get_running_loop()
        budget = (
            self._call_timeout if self._reconnect_deadline is None else self._reconnect_deadline
        )
        backoff = Backoff(maximum=self._max_reconnect_wait, rand=self._rand)
        failing_since: float | None = None
        while True:
            try:
                async for data in self.read_artifact(task_id, path, offset=writer.size):
                    writer.write(data)
                    failing_since = None
                    backoff.reset()
                return
            except MitosisError as error:
                if error.code not in RESUMABLE_CODES:
                    raise
                now = loop.time()
                failing_since = now if failing_since is None else failing_since
                remaining = budget - (now - failing_since)
                if remaining <= 0:
                    raise
            await asyncio.sleep(min(backoff.next_delay(), remaining))


class _StateReporter:
    """Calls the on_state callback only when the state changes."""

    def __init__(self, callback: StateCallback | None) -> None:
        self._callback = callback
        self._state: str | None = None

    def __call__(self, state: str) -> None:
        if self._callback is not None and state != self._state:
            self._state = state
            self._callback(state)
