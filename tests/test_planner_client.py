"""The executor's client of the planner: a planner that restarts delays plans, not fails them."""

from __future__ import annotations

import asyncio

import pytest

from mitosis.executor.running.planner_client import PlanError, PlannerClient
from mitosis.planner.server import parse_args as parse_planner_args
from mitosis.planner.server import start_planner

from .support.ports import free_port

RETRY_BUDGET_S = 0.2 + 0.4 + 0.8 + 1.6
"""The longest that planner_client's retry policy (5 attempts, 0.2 s doubling) waits in all."""


async def test_a_plan_asked_while_the_planner_is_down_comes_once_it_is_back() -> None:
    address = f"127.0.0.1:{free_port()}"
    client = PlannerClient(address, deadline=30)
    asked = asyncio.create_task(client.create_plan("Explain tides."))
    # Longer than every retry of a call put together (at most 3 s): still waiting, not failed.
    done, _ = await asyncio.wait({asked}, timeout=RETRY_BUDGET_S + 0.5)
    assert not done, asked.exception()
    planner = await start_planner(parse_planner_args([f"--listen={address}", "--model=offline"]))
    try:
        plan = await asked
    finally:
        await client.close()
        await planner.stop()

    assert plan.steps


async def test_a_planner_that_does_not_come_back_fails_the_plan_after_the_connect_wait() -> None:
    address = f"127.0.0.1:{free_port()}"
    client = PlannerClient(address, deadline=30, connect_wait=0.5)
    try:
        with pytest.raises(PlanError, match=r"unreachable \(no connection within 0.5 s\)"):
            await client.create_plan("Explain tides.")
    finally:
        await client.close()
