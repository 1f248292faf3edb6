"""What both services share when they serve: health, reflection, graceful stop."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mitosis.errors import error_status
from mitosis.rpc.interceptors import (
    Behaviour,
    Continuation,
    ErrorStatusInterceptor,
    ServerInterceptor,
    is_ours,
    wrap_handler,
)
from mitosis.rpc.request_decoding import MalformedRequestInterceptor
from mitosis.rpc.settings import add_setting

if TYPE_CHECKING:
    from mitosis.rpc.interceptors import Handler

logger = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name

SERVICE_STOPPING = "SERVICE_STOPPING"
"""The ErrorInfo reason of a stream ended by a stop (most often to restart): call again to
resume (metadata: where, such as `after_seq` for WatchTask). Part of the contract, as the
reasons in mitosis.errors are."""

STREAMS_RESERVE = 1.0
"""Seconds of a stop's grace kept for ending the open streams with their status."""


@dataclass(frozen=True)
class StreamEnd:
    """How a response stream is ended from outside its method: a status and why."""

    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict[str, str] = field(default_factory=dict)


Ending = Callable[[Any], StreamEnd]
"""The status a stream ends with, from the response it sent last (None before the first)."""


def ending_when(behaviour: Behaviour, ended: Callable[[Any], Awaitable[Ending]]) -> Behaviour:
    """Return a streaming behaviour that ends with a status as soon as `ended` says so.

    `ended(request)` is awaited beside the stream; the status it returns is made from the
    response sent last, so it can say where to resume. The method runs in the call's own
    task as before (nothing added per message): when the end comes while the method waits,
    that wait is cancelled; while a response is being sent, the stream ends after it.
    """

    async def streaming(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        call = asyncio.current_task()
        assert call is not None
        stop = _Interruption(call)
        end = asyncio.ensure_future(ended(request))
        end.add_done_callback(stop.interrupt)
        responses: AsyncIterator[Any] = behaviour(request, context)
        last: Any = None
        try:
            while stop.ending is None:
                stop.waiting = True
                try:
                    response = await anext(responses)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not stop.cancelled:
                        raise  # the call itself was cancelled
                    break
                finally:
                    stop.waiting = False
                last = response
                yield response
            if stop.cancelled:
                call.uncancel()  # that cancellation was ours, and has done its work
            assert stop.ending is not None
            await _end_with(context, stop.ending(last))
        finally:
            end.remove_done_callback(stop.interrupt)
            end.cancel()
            aclose = getattr(responses, "aclose", None)
            if aclose is not None:
                await aclose()

    return streaming


async def _end_with(context: grpc.aio.ServicerContext[Any, Any], status: StreamEnd) -> None:
    """End the call with the status (AbortError), unless its caller is gone already."""
    if context.done():
        return  # nobody is left to tell
    trailer = error_status(status.code, status.message, status.reason, status.metadata)
    try:
        await context.abort(status.code, status.message, trailing_metadata=trailer)
    except grpc.aio.AbortError:
        raise
    except Exception:  # gRPC's own error when the caller left while we ended it
        logger.debug("a stream's caller left before its end could be sent", exc_info=True)


class _Interruption:
    """What ends a stream from outside: the status to end with, and the call to wake."""

    def __init__(self, call: asyncio.Task[Any]) -> None:
        self.call = call
        self.ending: Ending | None = None
        self.waiting = False
        """The method is being waited for (not a response being sent)."""
        self.cancelled = False

    def interrupt(self, end: asyncio.Future[Ending]) -> None:
        if end.cancelled() or end.exception() is not None:
            return
        self.ending = end.result()
        if self.waiting:
            self.cancelled = True
            self.call.cancel()


ResumeHint = Callable[[Any, Any], dict[str, str]]
"""Where a stream ended by a stop resumes: (request, last response or None) -> the request
fields to call again with, such as {"after_seq": "42"}."""


class StreamsEndOnStop(ServerInterceptor):
    """Ends the open response streams of our services with UNAVAILABLE when the service
    stops, saying that it restarts and where to resume, instead of gRPC's abrupt cancel."""

    def __init__(self, service: str, resume_hint: ResumeHint | None = None) -> None:
        self._service = service
        self._hint = resume_hint
        self._stopping = asyncio.Event()
        self._open = 0
        self._none_open = asyncio.Event()
        self._none_open.set()

    def end_streams(self) -> None:
        """End every open stream now, and every one opened from now on at once."""
        self._stopping.set()

    async def ended(self) -> None:
        """Return once no stream is open (after `end_streams`, they all end at once)."""
        await self._none_open.wait()

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or not handler.response_streaming or not is_ours(details.method):
            return handler
        return wrap_handler(
            handler, lambda behaviour: self._counted(ending_when(behaviour, self._stopped))
        )

    def _counted(self, behaviour: Behaviour) -> Behaviour:
        """The behaviour, counted among the open streams while it runs."""

        async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
            self._open += 1
            self._none_open.clear()
            try:
                async for response in behaviour(request, context):
                    yield response
            finally:
                self._open -= 1
                if self._open == 0:
                    self._none_open.set()

        return streaming

    async def _stopped(self, request: Any) -> Ending:
        await self._stopping.wait()
        return lambda last: self._restarting(request, last)

    def _restarting(self, request: Any, last: Any) -> StreamEnd:
        resume = self._hint(request, last) if self._hint is not None else {}
        message = f"the {self._service} is restarting; call again to resume"
        if resume:
            message += " with " + ", ".join(f"{name}={value}" for name, value in resume.items())
        return StreamEnd(grpc.StatusCode.UNAVAILABLE, message, SERVICE_STOPPING, resume)


class KeysSource(Protocol):
    """Keys that follow their file: reloaded when it changes or on SIGHUP."""

    async def follow(self) -> None:
        """Reload whenever the file changes, until cancelled."""

    def reload(self) -> bool:
        """Read the file again now; False when it was refused and the old keys stay."""


class Serving:
    """A grpc.aio server with health and reflection, for the named services."""

    def __init__(
        self,
        service_names: Iterable[str],
        interceptors: Sequence[ServerInterceptor] = (),
        *,
        keys: KeysSource | None = None,
        label: str = "service",
        resume_hint: ResumeHint | None = None,
    ) -> None:
        self.service_names = list(service_names)
        self.keys = keys
        self.streams = StreamsEndOnStop(label, resume_hint)
        self._following: asyncio.Task[None] | None = None
        self.server = grpc.aio.server(
            # Outermost first: errors become statuses innermost, next to the servicer; the
            # stop ends streams inside every interceptor, so what they set holds for it.
            interceptors=[
                *interceptors,
                MalformedRequestInterceptor(),
                ErrorStatusInterceptor(),
                self.streams,
            ],
            options=[
                # Watchers sit on quiet streams; keep their connections alive through NATs.
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_receive_message_length", 1 << 20),
            ],
        )
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]  # re-exported, untyped
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = [*self.service_names, HEALTH_SERVICE, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, self.server)

    def listen(self, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
        """Bind the address (port 0 picks a free port), with TLS when given; return the port."""
        if credentials is None:
            port = self.server.add_insecure_port(address)
        else:
            port = self.server.add_secure_port(address, credentials)
        if port == 0:
            raise OSError(f"cannot listen on {address}")
        return port

    async def start(self) -> None:
        """Start serving, report every service SERVING, and follow the keys file."""
        await self.server.start()
        for name in ["", *self.service_names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.keys is not None:
            self._following = asyncio.create_task(self.keys.follow(), name="keys file")

    async def stop(
        self, grace: float | None, before_streams_end: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Stop within `grace` seconds: NOT_SERVING first so balancers move on, then
        `before_streams_end` (the executor stops its steps), then the open streams end with
        UNAVAILABLE saying where to resume, then the server stops."""
        await self.health.enter_graceful_shutdown()
        loop = asyncio.get_running_loop()
        deadline = None if grace is None else loop.time() + grace
        if before_streams_end is not None:
            # A part of the grace is kept for the streams: their status must go out.
            work_deadline = None
            if grace is not None and deadline is not None:
                work_deadline = deadline - min(STREAMS_RESERVE, grace / 2)
            try:
                async with asyncio.timeout_at(work_deadline):
                    await before_streams_end()
            except TimeoutError:
                logger.warning("stopping: the work in flight did not stop within %s s", grace)
        self.streams.end_streams()
        if self._following is not None:
            self._following.cancel()
            await asyncio.gather(self._following, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(deadline):
                await self.streams.ended()
        left = None if deadline is None else max(0.0, deadline - loop.time())
        await self.server.stop(left)


async def serve_until_signalled(
    serving: Serving, grace: float, stop: Callable[[float], Awaitable[None]]
) -> None:
    """Serve until SIGTERM or SIGINT, then `stop(grace)`; on SIGHUP read the keys again."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    keys = serving.keys
    if keys is not None:
        loop.add_signal_handler(signal.SIGHUP, keys.reload)
    await stopping.wait()
    logger.info("stopping: NOT_SERVING, then up to %.0f s for the work and calls in flight", grace)
    await stop(grace)


def add_grace_argument(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Add --grace (env MITOSIS_GRACE): how long a stop may take."""
    add_setting(
        parser,
        "--grace",
        "MITOSIS_GRACE",
        env,
        type=float,
        default="5",
        help="seconds a stop on SIGTERM or SIGINT may take: the work in flight stops, open"
        " streams end with UNAVAILABLE saying where to resume, calls in flight finish",
    )
