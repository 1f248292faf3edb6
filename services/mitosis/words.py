"""Words for people, shared by both services: counts with their nouns in the right number."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """Return "1 step", "2 steps", "0 files": the count with its noun in the right number."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
