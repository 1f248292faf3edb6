"""Domain errors of both services, each naming the gRPC status it maps to."""

from __future__ import annotations

import grpc


class MitosisError(Exception):
    """An error a caller caused or can act on; its message is shown to them as is."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


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
