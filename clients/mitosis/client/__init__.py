"""The Python client of Mitosis: every Python caller watches tasks through it, exactly once.

`AsyncClient` (asyncio) and `Client` (blocking) call TaskService; their `watch` resumes from
the last `seq` delivered whenever a stream breaks, so each event arrives once and in order.
`ClientSettings.load()` finds the target, the API key and the TLS CA as the CLI does
(environment, then ~/.config/mitosis/config.toml); `Client.from_settings(...)` uses them.
"""

from mitosis.client.aio import BOUNDED_STATE, RESUMABLE_CODES, AsyncClient, StateCallback
from mitosis.client.artifacts import artifact_destination
from mitosis.client.errors import (
    AlreadyExistsError,
    ArtifactExistsError,
    ConfigurationError,
    DeadlineExceededError,
    FailedPreconditionError,
    IntegrityError,
    InternalError,
    InvalidArgumentError,
    MitosisError,
    NotFoundError,
    OutOfRangeError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
    UnsafePathError,
    error_from_rpc,
)
from mitosis.client.resume import (
    TERMINAL_STATES,
    Admission,
    Backoff,
    SeqCursor,
    SequenceGapError,
    is_heartbeat,
    is_terminal,
)
from mitosis.client.settings import ClientSettings
from mitosis.client.sync import Client

__all__ = [
    "BOUNDED_STATE",
    "RESUMABLE_CODES",
    "TERMINAL_STATES",
    "Admission",
    "AlreadyExistsError",
    "ArtifactExistsError",
    "AsyncClient",
    "Backoff",
    "Client",
    "ClientSettings",
    "ConfigurationError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "IntegrityError",
    "InternalError",
    "InvalidArgumentError",
    "MitosisError",
    "NotFoundError",
    "OutOfRangeError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "SeqCursor",
    "SequenceGapError",
    "StateCallback",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
    "UnsafePathError",
    "artifact_destination",
    "error_from_rpc",
    "is_heartbeat",
    "is_terminal",
]
