"""Where `mitosis` writes: results to stdout, the rest to stderr, styled only on a terminal."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, TextIO

from rich.console import Console
from rich.text import Text

from mitosis.cli.plain import JsonView, PlainView
from mitosis.cli.progress import TaskProgress
from mitosis.cli.render import LiveView
from mitosis.cli.untrusted import clean_line
from mitosis.v1 import task_pb2


class Mode(enum.Enum):
    """How a watch is shown."""

    LIVE = "live"
    PLAIN = "plain"
    JSON = "json"


class View(Protocol):
    """Shows a watch: told about each event and each connection state."""

    progress: TaskProgress

    def __enter__(self) -> View: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def on_event(self, event: task_pb2.TaskEvent) -> None: ...

    def on_state(self, state: str) -> None: ...


def _console(file: TextIO, env: Mapping[str, str]) -> Console:
    # Rich reads NO_COLOR, TERM, COLUMNS... from the environment main() was given.
    return Console(file=file, highlight=False, soft_wrap=True, emoji=False, _environ=env)


@dataclass
class Terminal:
    """The two streams, their consoles, and the chosen mode."""

    stdout: TextIO
    stderr: TextIO
    out: Console
    err: Console
    mode: Mode

    @classmethod
    def open(
        cls, stdout: TextIO, stderr: TextIO, env: Mapping[str, str], *, json: bool, plain: bool
    ) -> Terminal:
        """Pick the mode: JSON if asked, live only when both streams are interactive terminals
        (rich's test: a TTY, or TTY_COMPATIBLE=1 / FORCE_COLOR; not TERM=dumb, not
        TTY_INTERACTIVE=0)."""
        out, err = _console(stdout, env), _console(stderr, env)
        if json:
            mode = Mode.JSON
        elif plain or not (out.is_interactive and err.is_interactive):
            mode = Mode.PLAIN
        else:
            mode = Mode.LIVE
        return cls(stdout, stderr, out, err, mode)

    def view(self, progress: TaskProgress) -> View:
        """Return the view of a watch for this mode."""
        if self.mode is Mode.LIVE:
            return LiveView(self.err, progress)
        if self.mode is Mode.JSON:
            return JsonView(self.stdout, self.stderr, progress)
        return PlainView(self.stdout, self.stderr, progress)

    def note(self, message: str) -> None:
        """Tell the person something on stderr."""
        self.err.print(Text(message, style="dim" if self.mode is Mode.LIVE else ""))

    def error(self, message: str) -> None:
        """Print one red line to stderr."""
        self.err.print(Text(f"error: {clean_line(message)}", style="bold red"))
