"""Words and marks for states, models and log sources, shared by every view."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from mitosis.cli.untrusted import clean_line
from mitosis.v1 import task_pb2

Task = task_pb2.Task
Step = task_pb2.Step

_V = TypeVar("_V", bound=int)

OFFLINE_MODEL = "offline"

STEP_MARKS: dict[Step.State.ValueType, str] = {
    Step.STATE_UNSPECIFIED: "·",
    Step.STATE_PENDING: "·",
    Step.STATE_RUNNING: "▸",
    Step.STATE_SUCCEEDED: "✓",
    Step.STATE_FAILED: "✗",
    Step.STATE_CANCELLED: "⊘",
}

STATE_STYLES: dict[str, str] = {
    "pending": "dim",
    "planning": "cyan",
    "running": "cyan",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
}


def task_state_name(state: Task.State.ValueType) -> str:
    """Return "succeeded" for STATE_SUCCEEDED, and so on."""
    return _enum_name(Task.State.Name, state)


def step_state_name(state: Step.State.ValueType) -> str:
    """Return "running" for STATE_RUNNING, and so on."""
    return _enum_name(Step.State.Name, state)


def source_name(source: task_pb2.LogLine.Source.ValueType) -> str:
    """Return "stdout", "stderr" or "executor"."""
    if source == task_pb2.LogLine.SOURCE_UNSPECIFIED:
        return "log"
    return _enum_name(task_pb2.LogLine.Source.Name, source, prefix="SOURCE_")


def describe_model(model: str) -> str:
    """Return the model's name, saying plainly what the offline model is."""
    if model == OFFLINE_MODEL:
        return "offline (deterministic, no network)"
    return clean_line(model) or "not chosen yet"


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """Return "1 step", "2 steps", "0 files": the count with its noun in the right number."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"


def step_label(index: int) -> str:
    """Return how a step is named to people: counting from 1."""
    return f"step {index + 1}"


def _enum_name(name_of: Callable[[_V], str], value: _V, prefix: str = "STATE_") -> str:
    try:
        name = name_of(value)
    except ValueError:
        return f"unknown ({value})"
    return name.removeprefix(prefix).lower().replace("_", " ")
