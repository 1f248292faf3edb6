"""The errors of the Mitosis client: one hierarchy, so callers never see gRPC exceptions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""The trailer that carries a google.rpc.Status with the error's details."""


class MitosisError(Exception):
    """A call to Mitosis failed. `code` is the gRPC status, or None for a client-side check.

    `reason` is the server's google.rpc.ErrorInfo reason when it sent one, such as
    "TASK_QUOTA_EXCEEDED" or "API_KEY_UNKNOWN" (domain "mitosis.dev"), for a program to act
    on; `metadata` holds its details, such as the "limit". None and {} otherwise.
    """

    code: grpc.StatusCode | None = None

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.reason = reason
        self.metadata = dict(metadata or {})


class NotFoundError(MitosisError):
    """The task (or artifact) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class InvalidArgumentError(MitosisError):
    """The server refused a request as malformed."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class OutOfRangeError(MitosisError):
    """A value is beyond what exists, e.g. `after_seq` past the task's newest event."""

    code = grpc.StatusCode.OUT_OF_RANGE


class FailedPreconditionError(MitosisError):
    """The request is not possible in the resource's state, e.g. cancelling an ended task."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class AlreadyExistsError(MitosisError):
    """The resource already exists."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDeniedError(MitosisError):
    """The caller may not do this."""

    code = grpc.StatusCode.PERMISSION_DENIED


class UnauthenticatedError(MitosisError):
    """The caller has no valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED


class UnavailableError(MitosisError):
    """The server cannot be reached, or reconnecting failed for longer than allowed."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceededError(MitosisError):
    """A call did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ResourceExhaustedError(MitosisError):
    """The server is out of some resource (quota, memory, message size)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class UnimplementedError(MitosisError):
    """The server does not implement the call."""

    code = grpc.StatusCode.UNIMPLEMENTED


class InternalError(MitosisError):
    """The server (or a proxy) broke an invariant."""

    code = grpc.StatusCode.INTERNAL


class IntegrityError(MitosisError):
    """A downloaded file does not match the size or SHA-256 the task recorded for it."""


class UnsafePathError(MitosisError):
    """An artifact path would be written outside the chosen folder, or its name carries
    control characters (terminal escapes, bidi overrides) that would mislead a person."""


class ArtifactExistsError(MitosisError):
    """A file a download would write exists already, and overwriting was not asked for."""

    def __init__(self, path: str) -> None:
        super().__init__(f"{path} exists already; refusing to overwrite it")
        self.path = path


class ConfigurationError(MitosisError):
    """The client's settings (config file, environment, TLS CA file) cannot be used."""


_BY_CODE: dict[grpc.StatusCode, type[MitosisError]] = {
    cls.code: cls
    for cls in (
        NotFoundError,
        InvalidArgumentError,
        OutOfRangeError,
        FailedPreconditionError,
        AlreadyExistsError,
        PermissionDeniedError,
        UnauthenticatedError,
        UnavailableError,
        DeadlineExceededError,
        ResourceExhaustedError,
        UnimplementedError,
        InternalError,
    )
    if cls.code is not None
}


def error_from_rpc(error: grpc.aio.AioRpcError) -> MitosisError:
    """Return the MitosisError for a failed gRPC call: its code, the server's words, and the
    reason of the ErrorInfo in its details, if any."""
    code = error.code()
    info = error_info(error.trailing_metadata())
    return _BY_CODE.get(code, MitosisError)(
        error.details() or code.name,
        code=code,
        reason=info.reason if info else None,
        metadata=info.metadata if info else None,
    )


def error_info(trailers: Iterable[Any] | None) -> error_details_pb2.ErrorInfo | None:
    """Return the first google.rpc.ErrorInfo in a call's status details, or None.

    `trailers` holds (key, value) pairs (grpc-stubs types AioRpcError's wrongly).
    """
    for key, value in trailers or ():
        if key != STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        try:
            status = status_pb2.Status.FromString(value)
        except DecodeError:
            return None  # a proxy's garbage must not hide the status itself
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info
    return None


def transport_hint(message: str, *, tls: bool) -> str | None:
    """Return what to check when a connection failed the way a TLS mismatch makes it fail,
    or None: a plain-text client's first bytes make a TLS server close the socket, and a
    TLS client's handshake fails against a plain-text server."""
    text = message.lower()
    if not tls and ("socket closed" in text or "connection reset" in text):
        return (
            "if the server uses TLS, give the CA that signed its certificate"
            " (--tls-ca FILE, MITOSIS_TLS_CA, or tls_ca in the config file)"
        )
    if tls and any(word in text for word in ("ssl", "handshake", "wrong_version_number")):
        return (
            "the TLS handshake failed: check that the server uses TLS and that the CA file"
            " (--tls-ca) signed its certificate"
        )
    return None
