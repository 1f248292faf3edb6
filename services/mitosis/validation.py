"""Checks on what callers send, shared by both services."""

from __future__ import annotations

from mitosis.errors import InvalidArgument

MAX_TASK_TEXT_BYTES = 64 * 1024
"""The longest task text accepted, in UTF-8 bytes."""


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
