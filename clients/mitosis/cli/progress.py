"""A task as the watcher sees it: its events folded into steps, pages and tool output."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mitosis.v1 import task_pb2

LOG_TAIL = 10
"""How many tool output lines a view keeps."""

ENDED_BADLY = frozenset({task_pb2.Task.STATE_FAILED, task_pb2.Task.STATE_CANCELLED})


@dataclass
class PageProgress:
    """One document, as it is written."""

    number: int
    title: str
    file_name: str
    step_index: int
    text: str = ""
    finished: bool = False
    abandoned: bool = False
    size_bytes: int = 0
    sha256: str = ""


class TaskProgress:
    """Folds a task's events, in seq order, into what a view shows."""

    def __init__(self, task: task_pb2.Task) -> None:
        self.task = task_pb2.Task()
        self.task.CopyFrom(task)
        self.pages: dict[int, PageProgress] = {}
        self.logs: deque[task_pb2.LogLine] = deque(maxlen=LOG_TAIL)
        self.last_seq = 0
        self.final: task_pb2.TaskStateChanged | None = None

    @property
    def current_page(self) -> PageProgress | None:
        """The newest page still being written, if any."""
        open_pages = [page for page in self.pages.values() if not page.finished]
        return open_pages[-1] if open_pages else None

    def page(self, number: int) -> PageProgress:
        """The page with that number; a placeholder if its start came before this watch."""
        if number not in self.pages:
            self.pages[number] = PageProgress(number, f"page {number} (continued)", "", -1)
        return self.pages[number]

    def apply(self, event: task_pb2.TaskEvent) -> None:
        """Take one event into account."""
        self.last_seq = max(self.last_seq, event.seq)
        kind = event.WhichOneof("kind")
        task = self.task
        if kind == "task_state_changed":
            change = event.task_state_changed
            task.state = change.state
            if change.message and change.state in ENDED_BADLY:
                task.error = change.message
            self.final = change
        elif kind == "plan_ready":
            del task.steps[:]
            task.steps.extend(event.plan_ready.steps)
            task.model = event.plan_ready.model or task.model
            task.plan_summary = event.plan_ready.summary
        elif kind == "step_state_changed":
            self._apply_step(event.step_state_changed)
        elif kind == "page_started":
            started = event.page_started
            self.pages[started.page_number] = PageProgress(
                started.page_number, started.title, started.file_name, started.step_index
            )
        elif kind == "page_delta":
            self.page(event.page_delta.page_number).text += event.page_delta.text
        elif kind == "page_finished":
            finished = event.page_finished
            page = self.page(finished.page_number)
            page.finished, page.abandoned = True, finished.abandoned
            page.size_bytes, page.sha256 = finished.size_bytes, finished.sha256
        elif kind == "log_line":
            self.logs.append(event.log_line)
        elif kind == "artifact_ready":
            task.artifacts.append(event.artifact_ready.artifact)

    def _apply_step(self, change: task_pb2.StepStateChanged) -> None:
        steps = self.task.steps
        while len(steps) <= change.step_index:  # a step from before this watch's plan
            steps.add(index=len(steps), title="(unknown step)")
        step = steps[change.step_index]
        step.state = change.state
        step.attempts = max(step.attempts, change.attempt)
        if change.message and change.state == task_pb2.Step.STATE_FAILED:
            step.error = change.message
