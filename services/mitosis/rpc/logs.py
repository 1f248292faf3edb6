"""Logging for both services: one line per record, as text or JSON, with task and request ids.

The task id and the request id come from context variables: a task's run sets the task id
(`task_context`), and `RequestIdInterceptor` sets the request id of each call, from the
caller's `x-request-id` metadata (Envoy sends one) or a new one. asyncio copies context
variables into the tasks a coroutine starts, so everything a call or a run does logs them.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

import grpc

from mitosis.rpc.interceptors import Continuation, ServerInterceptor, is_ours, prepared
from mitosis.rpc.settings import add_setting
from mitosis.v1 import task_pb2
from mitosis.words import counted

if TYPE_CHECKING:
    from mitosis.rpc.interceptors import Handler

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_ID_HEADER = "x-request-id"

# A caller's id goes into every log line of its call: only short, plain ones are kept.
_ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

_task_id: ContextVar[str] = ContextVar("mitosis_task_id", default="")
_request_id: ContextVar[str] = ContextVar("mitosis_request_id", default="")


def current_task_id() -> str:
    """Return the id of the task whose run is logging ('' outside a task's run)."""
    return _task_id.get()


def current_request_id() -> str:
    """Return the id of the call being served ('' outside a call)."""
    return _request_id.get()


@contextmanager
def task_context(task_id: str) -> Iterator[None]:
    """Log everything done inside, and in the asyncio tasks started inside, with this task id.

    The request id is cleared inside: a task's run outlives the call that started it, and
    is no part of it (the task id is what ties them together).
    """
    task_token = _task_id.set(task_id)
    request_token = _request_id.set("")
    try:
        yield
    finally:
        _request_id.reset(request_token)
        _task_id.reset(task_token)


class ContextFilter(logging.Filter):
    """Puts the current task id and request id on each record (`extra=` ones are kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "task_id", ""):
            record.task_id = _task_id.get()
        if not getattr(record, "request_id", ""):
            record.request_id = _request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the ids, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("task_id", "request_id"):
            value = getattr(record, key, "")
            if value:
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def configure_logging(
    level: str, fmt: str = "text", stream: TextIO | None = None
) -> logging.Handler:
    """Log records at `level` and above to `stream` (stderr), one line each; return the handler.

    `fmt` is "text" (time, level, logger, message) or "json" (see JsonFormatter). Called
    again, it replaces the handler it installed before and leaves any other handler alone.
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(ContextFilter())
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for installed in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(installed)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


_HANDLER_NAME = "mitosis"


def add_logging_arguments(parser: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """Add --log-level (env MITOSIS_LOG_LEVEL) and --log-format (env MITOSIS_LOG_FORMAT)."""
    add_setting(
        parser,
        "--log-level",
        "MITOSIS_LOG_LEVEL",
        env,
        default="info",
        help="debug, info, warning or error",
    )
    add_setting(
        parser,
        "--log-format",
        "MITOSIS_LOG_FORMAT",
        env,
        choices=FORMATS,
        default="text",
        help="text: one readable line per record; json: one JSON object per line with time,"
        " level, logger, message, task_id, request_id and exc_info",
    )


class TaskEventLines:
    """An EventLog observer that logs each task's turning points: its states, its plan, the
    steps that end. Not its text, pages or tool output: those are the task's, in its log."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._logger = logger or logging.getLogger("mitosis.tasks")

    def __call__(self, task_id: str, events: Sequence[task_pb2.TaskEvent]) -> None:
        for event in events:
            line = _line_of(event)
            if line is not None:
                level, text = line
                # The id given, not taken from the context: CreateTask's first event is
                # appended by the call, outside any run.
                self._logger.log(level, "task %s: %s", task_id, text, extra={"task_id": task_id})


MAX_LOGGED_MESSAGE = 300


def _line_of(event: task_pb2.TaskEvent) -> tuple[int, str] | None:
    kind = event.WhichOneof("kind")
    if kind == "task_state_changed":
        change = event.task_state_changed
        state = task_pb2.Task.State.Name(change.state).removeprefix("STATE_").lower()
        level = logging.WARNING if change.state == task_pb2.Task.STATE_FAILED else logging.INFO
        return level, state + (f" ({_one_line(change.message)})" if change.message else "")
    if kind == "plan_ready":
        return logging.INFO, f"plan ready: {counted(len(event.plan_ready.steps), 'step')}"
    if kind == "plan_revised":
        revised = event.plan_revised
        return logging.INFO, (
            f"plan revised ({revised.revision}): {counted(len(revised.steps), 'step')} from step"
            f" {revised.from_step_index + 1}"
        )
    if kind == "step_state_changed":
        step = event.step_state_changed
        if step.state not in (task_pb2.Step.STATE_SUCCEEDED, task_pb2.Step.STATE_FAILED):
            return None
        state = task_pb2.Step.State.Name(step.state).removeprefix("STATE_").lower()
        level = logging.WARNING if step.state == task_pb2.Step.STATE_FAILED else logging.INFO
        why = f": {_one_line(step.message)}" if step.message else ""
        return level, f"step {step.step_index + 1} {state} (attempt {step.attempt}){why}"
    return None


def _one_line(text: str) -> str:
    """The text on one line and cut short: it may come from a tool or a model."""
    line = " ".join(text.split())
    if len(line) > MAX_LOGGED_MESSAGE:
        line = line[: MAX_LOGGED_MESSAGE - 1] + "…"
    return line


def request_id_of(metadata: Any) -> str:
    """Return the caller's `x-request-id` when it is a plain short id, else a new one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str):
            if _ACCEPTED_REQUEST_ID.fullmatch(value):
                return value
            break
    return str(uuid.uuid4())


class RequestIdInterceptor(ServerInterceptor):
    """Gives each call of our services a request id for its log lines, and returns it as
    trailing metadata.

    Trailing rather than initial metadata: a streaming method may send its own headers
    first (WatchTask does), and trailers reach the caller whatever the outcome. Health and
    reflection calls log nothing and are left alone.
    """

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler:
        handler = await continuation(details)
        if handler is None or not is_ours(details.method):
            return handler
        request_id = request_id_of(details.invocation_metadata)

        def prepare(context: Any) -> None:
            _request_id.set(request_id)
            context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))

        return prepared(handler, prepare)
