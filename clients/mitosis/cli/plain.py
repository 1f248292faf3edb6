"""Views of a watch for pipes and files: plain lines, one per event, or one JSON object per line."""

from __future__ import annotations

from types import TracebackType
from typing import TextIO

from google.protobuf import json_format, message

from mitosis.cli.labels import (
    counted,
    describe_model,
    source_name,
    step_label,
    step_state_name,
    task_state_name,
)
from mitosis.cli.progress import TaskProgress
from mitosis.cli.untrusted import clean, clean_line
from mitosis.v1 import task_pb2


def json_line(value: message.Message) -> str:
    """Return a message as one line of proto3 JSON (camelCase names, int64 as strings)."""
    return json_format.MessageToJson(value, indent=None)


class StateLines:
    """Writes connection changes to stderr, once the first connection has been made."""

    def __init__(self, err: TextIO) -> None:
        self._err = err
        self._was_live = False

    def on_state(self, state: str) -> None:
        if state == "live" and not self._was_live:
            self._was_live = True
            return
        if self._was_live or state != "connecting":
            self._err.write(f"connection: {state}\n")
            self._err.flush()


class JsonView(StateLines):
    """Writes each event to stdout as one JSON object per line."""

    def __init__(self, out: TextIO, err: TextIO, progress: TaskProgress) -> None:
        super().__init__(err)
        self._out = out
        self.progress = progress

    def __enter__(self) -> JsonView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._out.flush()

    def on_event(self, event: task_pb2.TaskEvent) -> None:
        self.progress.apply(event)
        self._out.write(json_line(event) + "\n")
        self._out.flush()


class PlainView(StateLines):
    """Writes one line per event to stdout, and page text as it arrives, so pages read whole."""

    def __init__(self, out: TextIO, err: TextIO, progress: TaskProgress) -> None:
        super().__init__(err)
        self._out = out
        self.progress = progress
        self._at_line_start = True

    def __enter__(self) -> PlainView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._end_line()
        self._out.flush()

    def on_event(self, event: task_pb2.TaskEvent) -> None:
        self.progress.apply(event)
        kind = event.WhichOneof("kind")
        if kind == "page_delta":
            self._write(clean(event.page_delta.text))
        else:
            prefix = f"[seq {event.seq}] "
            for i, line in enumerate(event_lines(event)):
                self._end_line()
                self._write(f"{prefix if i == 0 else ' ' * len(prefix)}{line}\n")
        self._out.flush()

    def _write(self, text: str) -> None:
        if text:
            self._out.write(text)
            self._at_line_start = text.endswith("\n")

    def _end_line(self) -> None:
        if not self._at_line_start:
            self._write("\n")


def event_lines(event: task_pb2.TaskEvent) -> list[str]:
    """Return the plain lines that tell of an event (none for heartbeats and page text)."""
    kind = event.WhichOneof("kind")
    if kind == "task_state_changed":
        change = event.task_state_changed
        note = f": {clean_line(change.message)}" if change.message else ""
        return [f"task {task_state_name(change.state)}{note}"]
    if kind == "plan_ready":
        plan = event.plan_ready
        lines = [
            f"plan ready: {counted(len(plan.steps), 'step')}, model {describe_model(plan.model)}"
        ]
        lines += [
            f"  {step_label(s.index)}: {clean_line(s.title)} [{clean_line(s.tool)}]"
            for s in plan.steps
        ]
        return lines
    if kind == "plan_revised":
        revised = event.plan_revised
        lines = [
            f"plan revised (revision {revised.revision}): {clean_line(revised.reason)}",
            f"  the steps from {step_label(revised.from_step_index)} on are now:",
        ]
        lines += [
            f"  {step_label(s.index)}: {clean_line(s.title)} [{clean_line(s.tool)}]"
            for s in revised.steps
        ]
        return lines
    if kind == "step_state_changed":
        step = event.step_state_changed
        note = f": {clean_line(step.message)}" if step.message else ""
        state = step_state_name(step.state)
        return [f"{step_label(step.step_index)} {state} (attempt {step.attempt}){note}"]
    if kind == "page_started":
        page = event.page_started
        return [
            f"page {page.page_number} started: {clean_line(page.title)} "
            f"({clean_line(page.file_name)})"
        ]
    if kind == "page_finished":
        done = event.page_finished
        if done.abandoned:
            return [f"page {done.page_number} abandoned"]
        return [
            f"page {done.page_number} finished: {counted(done.size_bytes, 'byte')}, "
            f"sha256 {clean_line(done.sha256)}"
        ]
    if kind == "log_line":
        log = event.log_line
        return [f"{source_name(log.source)} | {clean_line(log.text)}"]
    if kind == "artifact_ready":
        artifact = event.artifact_ready.artifact
        return [f"delivered {clean_line(artifact.path)} ({counted(artifact.size_bytes, 'byte')})"]
    return []
