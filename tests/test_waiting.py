"""eventually(): how tests wait for a state, and what they say when it never comes."""

from __future__ import annotations

import itertools

import pytest

from tests.support.waiting import eventually, eventually_sync


async def test_eventually_returns_the_first_truthy_answer() -> None:
    answers = iter([None, 0, "", "ready"])
    assert await eventually(lambda: next(answers), interval=0) == "ready"


async def test_eventually_awaits_an_async_condition() -> None:
    calls = itertools.count(1)

    async def third_time() -> int | None:
        n = next(calls)
        return n if n == 3 else None

    assert await eventually(third_time, interval=0) == 3


async def test_eventually_says_what_it_waited_for_and_what_it_saw_last() -> None:
    def refused() -> bool:
        raise ConnectionError("refused")

    expected = r"the server answers: did not hold within 0.05 s \(last seen: ConnectionError"
    with pytest.raises(TimeoutError, match=expected):
        await eventually(
            refused, timeout=0.05, what="the server answers", ignoring=(ConnectionError,)
        )


async def test_eventually_counts_an_ignored_error_as_not_yet_and_raises_any_other() -> None:
    answers = iter([ConnectionError("refused"), "up"])

    def probe() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert await eventually(probe, interval=0, ignoring=(ConnectionError,)) == "up"
    with pytest.raises(ValueError, match="broken"):
        await eventually(lambda: int("broken"))


def test_eventually_sync_waits_the_same_way_without_a_loop() -> None:
    answers = iter([False, False, True])
    assert eventually_sync(lambda: next(answers), interval=0) is True
    with pytest.raises(TimeoutError, match=r"never: did not hold within 0\.01 s"):
        eventually_sync(lambda: False, timeout=0.01, what="never")
