"""Waiting for something to happen: `eventually` polls a condition until it holds.

The one way tests wait for a state they cannot be told about (a file appears, a process
exits, a loop has swept): never a bare sleep, never a hand-written deadline loop. On timeout
it raises `TimeoutError` naming what it waited for and what it saw last.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

TIMEOUT_S = 10.0
INTERVAL_S = 0.05


async def eventually(
    condition: Callable[[], T | Awaitable[T | None] | None],
    *,
    timeout: float = TIMEOUT_S,  # noqa: ASYNC109 (a deadline over many calls, not one await)
    interval: float = INTERVAL_S,
    what: str | None = None,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `condition` (plain or async) until it returns something truthy, and return that.

    An exception of a type in `ignoring` counts as "not yet"; any other is raised at once.
    Raises TimeoutError when the condition does not hold within `timeout` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        try:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
        except ignoring as problem:
            last = problem
        else:
            if result:
                return result
            last = result
        if loop.time() >= deadline:
            raise TimeoutError(_message(condition, what, timeout, last))
        await asyncio.sleep(interval)


def eventually_sync(
    condition: Callable[[], T | None],
    *,
    timeout: float = TIMEOUT_S,
    interval: float = INTERVAL_S,
    what: str | None = None,
    ignoring: tuple[type[BaseException], ...] = (),
) -> T:
    """`eventually` for code outside an event loop: blocks the thread while it waits."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = condition()
        except ignoring as problem:
            last = problem
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            raise TimeoutError(_message(condition, what, timeout, last))
        time.sleep(interval)


def _message(
    condition: Callable[..., object], what: str | None, timeout: float, last: object
) -> str:
    name = what or getattr(condition, "__qualname__", repr(condition))
    return f"{name}: did not hold within {timeout:g} s (last seen: {last!r})"
