"""Stored events as bytes, serialised once: what the hub fans out and WatchTask sends.

An event is encoded when it is appended (or read as stored bytes), and a WatchTaskResponse
is the concatenation of its events' bytes, each behind its field tag and length — so a
thousand watchers of one event cost one serialisation, and a catch-up copies the bytes the
store holds without parsing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mitosis.projection import is_terminal_event
from mitosis.v1 import task_pb2, task_service_pb2

_EVENTS_TAG = b"\x0a"  # WatchTaskResponse.events: field 1, length-delimited


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """One event of a task's log, with its bytes."""

    seq: int
    data: bytes
    terminal: bool = False
    """Whether it ends the task (only the last event of a log can)."""
    heartbeat: bool = False
    """A heartbeat: not stored; `seq` is the newest stored seq the watcher has."""

    @classmethod
    def of(cls, event: task_pb2.TaskEvent) -> EncodedEvent:
        """Encode an event."""
        return cls(
            event.seq,
            event.SerializeToString(),
            terminal=is_terminal_event(event),
            heartbeat=event.WhichOneof("kind") == "heartbeat",
        )

    @classmethod
    def stored(cls, seq: int, data: bytes, *, last: bool) -> EncodedEvent:
        """An event as the store holds it; only the `last` one read is parsed (to tell an end)."""
        terminal = last and is_terminal_event(task_pb2.TaskEvent.FromString(data))
        return cls(seq, data, terminal=terminal)

    def event(self) -> task_pb2.TaskEvent:
        """Parse the event."""
        return task_pb2.TaskEvent.FromString(self.data)


def stored_batch(rows: Sequence[tuple[int, bytes]]) -> list[EncodedEvent]:
    """Events read from a store as (seq, bytes) rows, in order."""
    last = len(rows) - 1
    return [EncodedEvent.stored(seq, data, last=i == last) for i, (seq, data) in enumerate(rows)]


def watch_response(events: Sequence[EncodedEvent]) -> bytes:
    """The bytes of a WatchTaskResponse carrying `events`, without re-encoding them."""
    parts: list[bytes] = []
    for event in events:
        parts += (_EVENTS_TAG, _varint(len(event.data)), event.data)
    return b"".join(parts)


def serialize_watch_response(message: bytes | task_service_pb2.WatchTaskResponse) -> bytes:
    """WatchTask's response serialiser: bytes made by `watch_response` go out as they are."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
