"""The pure logic of exactly-once resume: a cursor over `seq`, and reconnect backoff."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable

from mitosis.projection import TERMINAL_STATES as TERMINAL_STATES
from mitosis.projection import is_terminal_event
from mitosis.v1 import task_pb2

# One definition of "the log has ended", shared with the executor.
is_terminal = is_terminal_event


def is_heartbeat(event: task_pb2.TaskEvent) -> bool:
    """Return True for a heartbeat, which is never stored and carries no new `seq`."""
    return event.WhichOneof("kind") == "heartbeat"


class Admission(enum.Enum):
    """What a SeqCursor decided about one event."""

    NEW = "new"
    """The next event in order: deliver it."""
    DUPLICATE = "duplicate"
    """Already delivered: drop it."""
    HEARTBEAT = "heartbeat"
    """A heartbeat: pass it through; the cursor does not move."""


class SequenceGapError(Exception):
    """An event skipped ahead of the cursor; the stream must be resumed from the cursor."""

    def __init__(self, last: int, got: int) -> None:
        super().__init__(f"expected seq {last + 1}, got {got}")
        self.last = last
        self.got = got


class SeqCursor:
    """Remembers the last `seq` delivered and admits only the next one, so none is seen twice."""

    def __init__(self, last: int = 0) -> None:
        self._last = last

    @property
    def last(self) -> int:
        """The `seq` of the last event delivered (the `after_seq` to resume from)."""
        return self._last

    def admit(self, event: task_pb2.TaskEvent) -> Admission:
        """Decide about an event; raise SequenceGapError if it skips ahead."""
        if is_heartbeat(event):
            return Admission.HEARTBEAT
        if event.seq <= self._last:
            return Admission.DUPLICATE
        if event.seq != self._last + 1:
            raise SequenceGapError(self._last, event.seq)
        self._last = event.seq
        return Admission.NEW


class Backoff:
    """Exponential backoff with full jitter: each delay is uniform in [0, min(max, initial·2ⁿ)]."""

    def __init__(
        self,
        initial: float = 0.2,
        maximum: float = 5.0,
        *,
        multiplier: float = 2.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self._rand = rand
        self._failures = 0

    @property
    def failures(self) -> int:
        """How many delays grew the backoff since the last reset (it stops at the cap)."""
        return self._failures

    def ceiling(self) -> float:
        """Return the upper bound of the next delay."""
        return min(self.maximum, self.initial * self.multiplier**self._failures)

    def next_delay(self) -> float:
        """Return how long to wait before the next attempt, and count the failure."""
        ceiling = self.ceiling()
        if ceiling < self.maximum:  # stop counting at the cap, so the power cannot overflow
            self._failures += 1
        return self._rand() * ceiling

    def reset(self) -> None:
        """Start over from the initial delay (after a success)."""
        self._failures = 0
