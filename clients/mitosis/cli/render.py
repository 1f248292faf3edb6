"""The live view of a watch on a terminal: header, steps, the page being written, tool output.

Finished pages are printed above the live area, so the terminal keeps every page.
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.rule import Rule
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from mitosis.cli.describe import state_text
from mitosis.cli.labels import (
    STATE_STYLES,
    STEP_MARKS,
    counted,
    describe_model,
    source_name,
    step_label,
    step_state_name,
)
from mitosis.cli.progress import PageProgress, TaskProgress
from mitosis.cli.untrusted import clean, clean_line
from mitosis.v1 import task_pb2

PAGE_TAIL = 20
"""How many lines of the page being written the live area shows."""

TEXT_PREVIEW = 100
"""How many characters of the task's text the header shows."""


class LiveView:
    """A rich Live display of one task, updated from its events and connection states."""

    def __init__(self, console: Console, progress: TaskProgress) -> None:
        self.console = console
        self.progress = progress
        self.connection = "connecting"
        self._spinners: dict[int, Spinner] = {}
        self._live = Live(
            console=console, refresh_per_second=8, transient=True, redirect_stdout=False
        )

    def __enter__(self) -> LiveView:
        self._live.update(self.renderable())
        self._live.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._live.stop()

    def on_state(self, state: str) -> None:
        self.connection = state
        self._live.update(self.renderable())

    def on_event(self, event: task_pb2.TaskEvent) -> None:
        self.progress.apply(event)
        if event.WhichOneof("kind") == "page_finished":
            self.print_page(self.progress.page(event.page_finished.page_number))
        self._live.update(self.renderable())

    def print_page(self, page: PageProgress) -> None:
        """Print a whole page above the live area, under a rule with its number and title."""
        note = " (abandoned)" if page.abandoned else ""
        title = f"Page {page.number}: {clean_line(page.title)}{note}"
        self.console.print(Rule(Text(title, style="bold")))
        self.console.print(Text(clean(page.text).rstrip("\n")))
        if page.file_name and not page.abandoned:
            self.console.print(
                Text(
                    f"{clean_line(page.file_name)}, {counted(page.size_bytes, 'byte')}", style="dim"
                )
            )

    def renderable(self) -> RenderableType:
        """Return a fresh snapshot of the live area (the refresh thread only reads it)."""
        parts: list[RenderableType] = [self._header(), self._steps()]
        page = self.progress.current_page
        if page is not None:
            parts.append(_page_panel(page))
        if self.progress.logs:
            parts.append(_log_panel(list(self.progress.logs)))
        return Group(*parts)

    def _header(self) -> Text:
        task = self.progress.task
        text = clean_line(task.text)
        if len(text) > TEXT_PREVIEW:
            text = text[: TEXT_PREVIEW - 1] + "…"
        connection_style = "green" if self.connection == "live" else "yellow"
        return Text.assemble(
            ("Task ", "bold"),
            (clean_line(task.task_id), "bold"),
            "  ",
            state_text(task.state),
            "  model: ",
            describe_model(task.model),
            "  connection: ",
            (clean_line(self.connection), connection_style),
            "\n",
            (text, "dim"),
        )

    def _steps(self) -> Table:
        table = Table.grid(padding=(0, 1))
        for step in self.progress.task.steps:
            state = step_state_name(step.state)
            mark: RenderableType = Text(
                STEP_MARKS.get(step.state, "?"), style=STATE_STYLES.get(state, "")
            )
            if step.state == task_pb2.Step.STATE_RUNNING:
                mark = self._spinners.setdefault(step.index, Spinner("dots", style="cyan"))
            attempts = f"attempt {step.attempts}" if step.attempts else ""
            table.add_row(
                mark,
                Text(step_label(step.index)),
                Text(clean_line(step.title)),
                Text(f"[{clean_line(step.tool)}]", style="dim"),
                Text(attempts, style="dim"),
            )
        return table


def _page_panel(page: PageProgress) -> Panel:
    lines = clean(page.text[-200 * PAGE_TAIL :]).splitlines()[-PAGE_TAIL:]
    title = f"Page {page.number} — {clean_line(page.title)} ({clean_line(page.file_name)})"
    return Panel(Text("\n".join(lines)), title=Text(title), title_align="left")


def _log_panel(logs: list[task_pb2.LogLine]) -> Panel:
    text = Text()
    for i, log in enumerate(logs):
        style = "red" if log.source == task_pb2.LogLine.SOURCE_STDERR else ""
        text.append(f"{source_name(log.source)} | ", style="dim")
        text.append(clean_line(log.text), style=style)
        if i < len(logs) - 1:
            text.append("\n")
    return Panel(text, title="tool output", title_align="left")
