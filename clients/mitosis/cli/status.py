"""The exit statuses of `mitosis`."""

from __future__ import annotations

import enum

from mitosis.client import (
    AlreadyExistsError,
    ConfigurationError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    MitosisError,
    NotFoundError,
    OutOfRangeError,
    UnauthenticatedError,
    UnavailableError,
)
from mitosis.v1 import task_pb2


class ExitStatus(enum.IntEnum):
    """What `mitosis` exits with; `run` and `watch` exit with how the task ended."""

    SUCCESS = 0
    TASK_FAILED = 1
    USAGE = 2
    TASK_CANCELLED = 3
    NOT_FOUND = 4
    INVALID_ARGUMENT = 5
    UNAVAILABLE = 6
    ERROR = 7
    UNAUTHENTICATED = 8
    AWAITING_APPROVAL = 9
    INTERRUPTED = 130


DESCRIPTIONS: dict[ExitStatus, str] = {
    ExitStatus.SUCCESS: "done; for run and watch: the task succeeded",
    ExitStatus.TASK_FAILED: "run/watch: the task failed",
    ExitStatus.USAGE: "the command line, or the config file, is wrong",
    ExitStatus.TASK_CANCELLED: "run/watch: the task was cancelled",
    ExitStatus.NOT_FOUND: "no such task or file",
    ExitStatus.INVALID_ARGUMENT: "the server refused the request (invalid, or not possible now)",
    ExitStatus.UNAVAILABLE: "the server could not be reached, or stopped answering",
    ExitStatus.ERROR: "any other error (a download failing its SHA-256 check, a file that"
    " exists in --out without --force)",
    ExitStatus.UNAUTHENTICATED: "the server wants an API key, or refused the one given",
    ExitStatus.AWAITING_APPROVAL: "run --approve: the plan waits for `mitosis approve` (or cancel)",
    ExitStatus.INTERRUPTED: "interrupted by Ctrl-C; the task keeps running",
}

_BY_TASK_STATE: dict[task_pb2.Task.State.ValueType, ExitStatus] = {
    task_pb2.Task.STATE_SUCCEEDED: ExitStatus.SUCCESS,
    task_pb2.Task.STATE_FAILED: ExitStatus.TASK_FAILED,
    task_pb2.Task.STATE_CANCELLED: ExitStatus.TASK_CANCELLED,
    task_pb2.Task.STATE_AWAITING_APPROVAL: ExitStatus.AWAITING_APPROVAL,
}

_BY_ERROR: list[tuple[type[MitosisError], ExitStatus]] = [
    (NotFoundError, ExitStatus.NOT_FOUND),
    (InvalidArgumentError, ExitStatus.INVALID_ARGUMENT),
    (OutOfRangeError, ExitStatus.INVALID_ARGUMENT),
    (FailedPreconditionError, ExitStatus.INVALID_ARGUMENT),
    (AlreadyExistsError, ExitStatus.INVALID_ARGUMENT),
    (UnavailableError, ExitStatus.UNAVAILABLE),
    (DeadlineExceededError, ExitStatus.UNAVAILABLE),
    (UnauthenticatedError, ExitStatus.UNAUTHENTICATED),
    (ConfigurationError, ExitStatus.USAGE),
]


def status_for_task(state: task_pb2.Task.State.ValueType) -> ExitStatus:
    """Return the exit status for a task that ended in `state`."""
    return _BY_TASK_STATE.get(state, ExitStatus.ERROR)


def status_for_error(error: MitosisError) -> ExitStatus:
    """Return the exit status for a failed call."""
    for cls, status in _BY_ERROR:
        if isinstance(error, cls):
            return status
    return ExitStatus.ERROR


def epilog() -> str:
    """Return the table of exit statuses for --help."""
    rows = [f"  {int(s):>3}  {DESCRIPTIONS[s]}" for s in ExitStatus]
    return "exit status:\n" + "\n".join(rows)
