"""Domain errors of both services, each naming the gRPC status it maps to.

A refusal a client may act on (which quota, which key problem) also carries a reason, sent
as a `google.rpc.ErrorInfo` in the status details (AIP-193), so a program need not parse
the message. The reasons are part of the contract: never rename one.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""The trailer that carries a google.rpc.Status, in gRPC's richer error model."""

ERROR_DOMAIN = "mitosis.dev"
"""`ErrorInfo.domain` of every reason below."""

TASK_QUOTA_EXCEEDED = "TASK_QUOTA_EXCEEDED"
"""The key has as many unfinished tasks as it may (metadata: `limit`)."""
TASK_WATCHER_QUOTA_EXCEEDED = "TASK_WATCHER_QUOTA_EXCEEDED"
"""The task has as many WatchTask streams open as it may (metadata: `limit`, `task_id`)."""
KEY_WATCHER_QUOTA_EXCEEDED = "KEY_WATCHER_QUOTA_EXCEEDED"
"""The key has as many WatchTask streams open as it may (metadata: `limit`)."""
API_KEY_MISSING = "API_KEY_MISSING"
"""The call carries no `authorization: Bearer` key and the service wants one."""
API_KEY_UNKNOWN = "API_KEY_UNKNOWN"
"""The call's key is not one the service knows."""
READ_OFFSET_OUT_OF_RANGE = "READ_OFFSET_OUT_OF_RANGE"
"""ReadArtifact's `read_offset` lies beyond the file (metadata: `size_bytes`)."""
MODEL_UNAVAILABLE = "MODEL_UNAVAILABLE"
"""The model server (OPENAI_BASE_URL) cannot be reached (metadata: `endpoint`)."""
DATA_FOLDER_FULL = "DATA_FOLDER_FULL"
"""The executor's data folder has no space left for the store (metadata: `folder`)."""
TASK_ENDED = "TASK_ENDED"
"""The task has ended, so it can no longer be cancelled or approved (metadata: `state`)."""
TASK_NOT_AWAITING_APPROVAL = "TASK_NOT_AWAITING_APPROVAL"
"""ApprovePlan on a task whose plan does not wait for approval (metadata: `state`)."""
AFTER_SEQ_OUT_OF_RANGE = "AFTER_SEQ_OUT_OF_RANGE"
"""WatchTask's `after_seq` lies beyond the task's newest event (metadata: `last_seq`)."""


class MitosisError(Exception):
    """An error a caller caused or can act on; its message is shown to them as is.

    `reason` (with `metadata`), when set, goes to the caller as a google.rpc.ErrorInfo.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(MitosisError):
    """The request is malformed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(MitosisError):
    """The task or file does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(MitosisError):
    """The request is well formed but the task is not in a state that allows it."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class OutOfRange(MitosisError):
    """A position (such as `after_seq`) lies beyond what exists."""

    code = grpc.StatusCode.OUT_OF_RANGE


class Unavailable(MitosisError):
    """A service the request needs (the store, the planner) cannot be reached; try again."""

    code = grpc.StatusCode.UNAVAILABLE


class ResourceExhausted(MitosisError):
    """A limit was reached (running tasks, watchers, sizes, events); the message names it."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(MitosisError):
    """The call carries no API key, or one the service does not know."""

    code = grpc.StatusCode.UNAUTHENTICATED


def error_status(
    code: grpc.StatusCode, message: str, reason: str | None, metadata: Mapping[str, str]
) -> tuple[tuple[str, bytes], ...]:
    """Return the trailing metadata that carries a refusal's ErrorInfo (none without reason).

    Sent beside the plain status code and message, so a client that ignores details loses
    nothing: the `grpc-status-details-bin` trailer holds a google.rpc.Status whose code and
    message repeat them, as the gRPC richer error model asks.
    """
    if reason is None:
        return ()
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
    status = status_pb2.Status(code=_RPC_CODES[code], message=message)
    status.details.add().Pack(info)
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


_RPC_CODES: dict[grpc.StatusCode, int] = {
    code: code_pb2.Code.Value(code.name) for code in grpc.StatusCode
}
"""grpc's codes as google.rpc.Code numbers (OK is 0, CANCELLED 1, …: the same names)."""
