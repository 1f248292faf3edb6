"""Checks on what callers send, shared by both services."""

from __future__ import annotations

import math

from google.protobuf import struct_pb2

from mitosis.errors import InvalidArgument
from mitosis.models.base import TOOLS
from mitosis.v1 import plan_pb2

MAX_TASK_TEXT_BYTES = 64 * 1024
"""The longest task text accepted, in UTF-8 bytes."""

MAX_PLAN_STEPS = 20
"""The most steps an edited plan (ApprovePlan) may have."""

SHOWN_CHARS = 80
"""How much of a caller's value an error message quotes."""

MAX_STATUS_MESSAGE_CHARS = 512
"""The longest status message sent: percent-encoded, 512 characters stay under 8 KiB."""


def validate_task_text(text: str) -> str:
    """Return the task text stripped, or raise InvalidArgument."""
    stripped = text.strip()
    if not stripped:
        raise InvalidArgument("the task text is empty: say in plain words what to do")
    size = len(stripped.encode())
    if size > MAX_TASK_TEXT_BYTES:
        raise InvalidArgument(
            f"the task text is {size:,} bytes; the limit is {MAX_TASK_TEXT_BYTES:,} bytes"
        )
    return stripped


def validate_plan(plan: plan_pb2.Plan) -> None:
    """Raise InvalidArgument unless an edited plan's steps can run."""
    if len(plan.steps) > MAX_PLAN_STEPS:
        raise InvalidArgument(f"a plan has at most {MAX_PLAN_STEPS} steps, not {len(plan.steps)}")
    for number, step in enumerate(plan.steps, start=1):
        if step.tool not in TOOLS:
            raise InvalidArgument(
                f"step {number} uses the unknown tool {shown(step.tool)}; tools: {', '.join(TOOLS)}"
            )
        if not step.title.strip():
            raise InvalidArgument(f"step {number} has no title")
    validate_plan_arguments(plan)


def validate_plan_arguments(plan: plan_pb2.Plan) -> None:
    """Raise InvalidArgument when a step's arguments are not JSON: NaN or an infinity.

    Arguments are read as JSON (by the agents, in prompts, by JSON clients), and JSON has no
    such numbers; let through, they would fail the task later with an internal error.
    """
    for number, step in enumerate(plan.steps, start=1):
        pending: list[tuple[str, struct_pb2.Value]] = [
            (key, value) for key, value in step.arguments.fields.items()
        ]
        while pending:
            key, value = pending.pop()
            kind = value.WhichOneof("kind")
            if kind == "number_value" and not math.isfinite(value.number_value):
                raise InvalidArgument(
                    f"step {number} has the argument {shown(key)} = {value.number_value}:"
                    " arguments are JSON values, and JSON has no NaN or infinity"
                )
            if kind == "struct_value":
                pending += [(key, inner) for inner in value.struct_value.fields.values()]
            elif kind == "list_value":
                pending += [(key, inner) for inner in value.list_value.values]


def shown(value: str, limit: int = SHOWN_CHARS) -> str:
    """Return a caller's value quoted for an error message, shortened if it is long.

    Status messages travel in a trailer, and gRPC clients drop trailers over 8-16 KiB:
    a message that echoed a huge value whole would reach the caller as RESOURCE_EXHAUSTED.
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}… ({len(value):,} characters)"


def status_message(message: str) -> str:
    """Return an error message short enough for a status trailer, shortened if need be.

    gRPC clients refuse trailers over 8 KiB (soft) to 16 KiB (hard) and report
    RESOURCE_EXHAUSTED instead of the real status; a non-ASCII character takes up to 12
    bytes once percent-encoded.
    """
    if len(message) <= MAX_STATUS_MESSAGE_CHARS:
        return message
    return message[: MAX_STATUS_MESSAGE_CHARS - 40] + f"… ({len(message):,} characters in all)"
