"""Event payloads shaped like Mitosis's own: page deltas of ~100 B and ~2 KB, and log lines.

Every server in the benchmark emits the same sequence of shapes, as a `TaskEvent` (the gRPC
servers) or as the same fields in a JSON object (the Socket.IO peer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mitosis.v1 import task_pb2

_PROSE = (
    "Home solar batteries store what the panels make at noon for the evening peak. "
    "A 10 kWh unit covers a typical household's night; prices fell by a third since 2021, "
    "and most warranties now run ten years or 6,000 cycles, whichever comes first. "
)
DELTA_SMALL = (_PROSE * 2)[:100]
"""A page delta of 100 bytes: a few words of a document as the model writes it."""
DELTA_LARGE = (_PROSE * 12)[:2048]
"""A page delta of 2 KiB: the coalescing limit of a page's text (executor/tools/pages.py)."""
LOG_LINE = "step 2 python: read 1,024 rows from sales.csv; wrote summary.md (3.1 KiB) in 0.04 s"
"""A tool's output line (~85 bytes)."""

MIX = ("small", "log", "small", "large", "small", "log", "small", "small", "log", "large")
"""The repeating mix: 5 small deltas, 3 log lines, 2 large deltas (~480 bytes of text each)."""


@dataclass(frozen=True)
class Shape:
    """What the n-th event of a stream carries."""

    kind: str
    """"page_started", "page_delta", "log_line" or "done" (the terminal state change)."""
    text: str = ""
    offset: int = 0


class Shapes:
    """The sequence of shapes of one stream: a page opens, then the mix repeats, then done.

    Tracks the page's byte offset, as the executor does for its deltas.
    """

    def __init__(self) -> None:
        self.count = 0
        self._offset = 0

    def next(self) -> Shape:
        """The shape of the next event."""
        self.count += 1
        if self.count == 1:
            return Shape("page_started")
        name = MIX[(self.count - 2) % len(MIX)]
        if name == "log":
            return Shape("log_line", LOG_LINE)
        text = DELTA_SMALL if name == "small" else DELTA_LARGE
        shape = Shape("page_delta", text, self._offset)
        self._offset += len(text.encode())
        return shape


DONE = Shape("done")


def task_event(shape: Shape) -> task_pb2.TaskEvent:
    """The shape as a TaskEvent (seq, task_id and create_time left for the server to set)."""
    if shape.kind == "page_started":
        return task_pb2.TaskEvent(
            page_started=task_pb2.PageStarted(
                page_number=1, title="Market brief", step_index=1, file_name="brief.md"
            )
        )
    if shape.kind == "page_delta":
        return task_pb2.TaskEvent(
            page_delta=task_pb2.PageDelta(page_number=1, offset=shape.offset, text=shape.text)
        )
    if shape.kind == "log_line":
        return task_pb2.TaskEvent(
            log_line=task_pb2.LogLine(
                step_index=1, source=task_pb2.LogLine.SOURCE_STDOUT, text=shape.text
            )
        )
    return task_pb2.TaskEvent(
        task_state_changed=task_pb2.TaskStateChanged(state=task_pb2.Task.STATE_SUCCEEDED)
    )


def json_event(shape: Shape, task_id: str, seq: int, create_ns: int) -> dict[str, Any]:
    """The shape as the JSON object a Socket.IO server would emit (proto3 JSON field names)."""
    event: dict[str, Any] = {"taskId": task_id, "seq": seq, "createTimeNs": create_ns}
    if shape.kind == "page_started":
        event["pageStarted"] = {
            "pageNumber": 1,
            "title": "Market brief",
            "stepIndex": 1,
            "fileName": "brief.md",
        }
    elif shape.kind == "page_delta":
        event["pageDelta"] = {"pageNumber": 1, "offset": shape.offset, "text": shape.text}
    elif shape.kind == "log_line":
        event["logLine"] = {"stepIndex": 1, "source": "SOURCE_STDOUT", "text": shape.text}
    else:
        event["taskStateChanged"] = {"state": "STATE_SUCCEEDED"}
    return event
