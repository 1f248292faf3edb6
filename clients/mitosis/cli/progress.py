"""A task as the watcher sees it: its events folded into steps, pages and tool output."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mitosis.projection import apply_event
from mitosis.v1 import task_pb2

LOG_TAIL = 10
"""How many tool output lines a view keeps."""


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
        apply_event(self.task, event)
        kind = event.WhichOneof("kind")
        if kind == "task_state_changed":
            self.final = event.task_state_changed
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
