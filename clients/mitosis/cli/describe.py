"""Tasks described for people, as rich Text (never markup), for `get`, `ls` and summaries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from google.protobuf import json_format
from rich.text import Text

from mitosis.cli.labels import (
    STATE_STYLES,
    STEP_MARKS,
    counted,
    describe_model,
    step_label,
    step_state_name,
    task_state_name,
)
from mitosis.cli.untrusted import clean, clean_line
from mitosis.v1 import task_pb2

TEXT_WIDTH = 60
"""How much of a task's text `ls` shows."""


def state_text(state: task_pb2.Task.State.ValueType) -> Text:
    """Return the task state's name, coloured by how it ended."""
    name = task_state_name(state)
    return Text(name, style=STATE_STYLES.get(name, ""))


def step_line(step: task_pb2.Step) -> Text:
    """Return one step: mark, number, title, tool, attempts and its error."""
    state = step_state_name(step.state)
    line = Text("  ")
    line.append(STEP_MARKS.get(step.state, "?"), style=STATE_STYLES.get(state, ""))
    line.append(f" {step_label(step.index)}  {clean_line(step.title)}  [{clean_line(step.tool)}]")
    if step.attempts:
        line.append(f"  attempt {step.attempts}", style="dim")
    if step.usage.model_calls:
        line.append(f"  {usage_text(step.usage)}", style="dim")
    if step.error:
        line.append(f"  {clean_line(step.error)}", style="red")
    return line


def source_line(source: task_pb2.WebSource) -> Text:
    """Return one of a step's sources: read or found, title and URL (as text, never a link)."""
    mark = "read " if source.read else "found"
    title = clean_line(source.title) or "-"
    return Text(f"        {mark} {title}  {clean_line(source.url)}", style="dim")


def usage_text(usage: task_pb2.Usage) -> str:
    """Return what model calls cost: calls, tokens in and out, time waited."""
    calls = counted(usage.model_calls, "model call")
    return (
        f"{calls}, {usage.input_tokens:,} tokens in, {usage.output_tokens:,} out,"
        f" {usage.latency_ms / 1000:.1f} s"
    )


def artifact_line(artifact: task_pb2.Artifact) -> Text:
    """Return one delivered file: path, size, media type and SHA-256."""
    return Text(
        f"{clean_line(artifact.path)}  {counted(artifact.size_bytes, 'byte')}  "
        f"{clean_line(artifact.media_type) or '-'}  sha256 {clean_line(artifact.sha256)}"
    )


def summary_lines(task: task_pb2.Task) -> list[Text]:
    """Return the end-of-watch summary: final state, steps, delivered files, error."""
    lines = [Text.assemble("task ", clean_line(task.task_id), " ", state_text(task.state))]
    lines += [step_line(step) for step in task.steps]
    if task.artifacts:
        lines.append(Text("files:"))
        lines += [
            Text(f"  {clean_line(a.path)}  ({counted(a.size_bytes, 'byte')})")
            for a in task.artifacts
        ]
    total = total_usage(task)
    if total.model_calls:
        lines.append(Text(f"model usage: {usage_text(total)}"))
    if task.revisions:
        lines.append(Text(f"plan revisions: {task.revisions}"))
    if task.error:
        lines.append(Text(f"error: {clean_line(task.error)}", style="red"))
    return lines


def total_usage(task: task_pb2.Task) -> task_pb2.Usage:
    """Return what the task's model calls cost, all steps together."""
    total = task_pb2.Usage()
    for step in task.steps:
        total.model_calls += step.usage.model_calls
        total.input_tokens += step.usage.input_tokens
        total.output_tokens += step.usage.output_tokens
        total.latency_ms += step.usage.latency_ms
    return total


def run_result(task: task_pb2.Task, saved: Sequence[Path] = ()) -> dict[str, object]:
    """Return what `run --json` ends with: the task's state, error, files, usage, and where
    --out saved the files (proto3 JSON names and values, as the events use)."""
    result: dict[str, object] = {
        "taskId": task.task_id,
        "state": task_pb2.Task.State.Name(task.state),
        "files": [json_format.MessageToDict(artifact) for artifact in task.artifacts],
        "usage": json_format.MessageToDict(
            total_usage(task), always_print_fields_with_no_presence=True
        ),
    }
    if task.error:
        result["error"] = task.error
    if saved:
        result["saved"] = [str(path) for path in saved]
    return result


def task_lines(task: task_pb2.Task) -> list[Text]:
    """Return everything `get` shows about a task."""
    lines = [
        Text(f"task:     {clean_line(task.task_id)}"),
        Text.assemble("state:    ", state_text(task.state)),
        Text(f"model:    {describe_model(task.model)}"),
    ]
    if task.HasField("create_time"):
        lines.append(Text(f"created:  {task.create_time.ToJsonString()}"))
    lines.append(Text(f"last seq: {task.last_seq}"))
    text_lines = clean(task.text).splitlines() or [""]
    lines += [
        Text(("text:     " if i == 0 else "          ") + t) for i, t in enumerate(text_lines)
    ]
    if task.plan_summary:
        lines.append(Text(f"plan:     {clean_line(task.plan_summary)}"))
    if task.tools:
        lines.append(Text(f"tools:    {', '.join(clean_line(tool) for tool in task.tools)}"))
    if task.steps:
        lines.append(Text("steps:"))
        for step in task.steps:
            lines.append(step_line(step))
            lines += [source_line(source) for source in step.sources]
    if task.pages:
        lines.append(Text("pages:"))
        lines += [_page_line(page) for page in task.pages]
    if task.artifacts:
        lines.append(Text("files:"))
        lines += [Text("  ") + artifact_line(a) for a in task.artifacts]
    if task.error:
        lines.append(Text(f"error:    {clean_line(task.error)}", style="red"))
    return lines


def task_row(task: task_pb2.Task) -> Text:
    """Return one line of `ls`: id, state, creation time and the start of the text."""
    text = clean_line(task.text)
    if len(text) > TEXT_WIDTH:
        text = text[: TEXT_WIDTH - 1] + "…"
    created = task.create_time.ToJsonString()[:16] if task.HasField("create_time") else "-"
    state = task_state_name(task.state)
    return Text.assemble(
        f"{clean_line(task.task_id)}  ",
        (f"{state:<9}", STATE_STYLES.get(state, "")),
        f"  {created:<16}  {text}",
    )


def _page_line(page: task_pb2.Page) -> Text:
    status = "abandoned" if page.abandoned else "" if page.finished else "writing"
    line = Text(
        f"  page {page.page_number}  {clean_line(page.title)} ({clean_line(page.file_name)})"
        f"  {counted(page.size_bytes, 'byte')}"
    )
    if status:
        line.append(f"  {status}", style="dim")
    return line
