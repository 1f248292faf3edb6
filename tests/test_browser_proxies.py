"""The browser UI through a proxy that buffers whole responses (mitmproxy's defaults).

Such a proxy delivers a streamed response only once it ends: a live WatchTask shows
nothing until the task is over. The UI finds that out by itself (its live call's first
message does not come while GetTask answers), switches to bounded WatchTask calls, says so
in its header, and shows every event once while the task runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser

from mitosis.client import AsyncClient
from mitosis.v1 import task_pb2
from tests import browser as kit
from tests.browser import UI, record_latency
from tests.gateway import Gateway, start_gateway_async
from tests.support.executors import StartExecutor
from tests.support.proxies import SETUPS, Proxy, program_path, start_proxy

# Fixtures from tests/browser.py: headless Chromium and the built UI.
browser = kit.browser
chromium = kit.chromium
web_dist = kit.web_dist

BRIEF = "Write a short market brief on home solar batteries"
TERMINAL = (task_pb2.Task.STATE_SUCCEEDED, task_pb2.Task.STATE_FAILED)


@pytest.fixture
async def gateway(
    start_executor_on: StartExecutor, tmp_path: Path, web_dist: Path
) -> AsyncIterator[Gateway]:
    """Envoy serving the UI in front of an executor whose tasks last ~10 s (paced)."""
    executor = await start_executor_on("--offline-pace=0.05", "--heartbeat-interval=1")
    gateway = await start_gateway_async(tmp_path, executor.port, web_dist)
    yield gateway
    await gateway.astop()


@pytest.fixture
def mitmproxy(gateway: Gateway, tmp_path: Path) -> Iterator[Proxy]:
    setup = SETUPS["mitmproxy"]
    if program_path(setup.program) is None:
        pytest.skip("mitmproxy is not installed (make setup installs it)")
    with start_proxy(setup, gateway.port, tmp_path / "mitmproxy") as proxy:
        yield proxy


async def test_through_a_buffering_proxy_the_ui_switches_to_bounded_calls_and_stays_live(
    browser: Browser, gateway: Gateway, mitmproxy: Proxy
) -> None:
    context = await browser.new_context()
    ui = UI(await context.new_page(), mitmproxy.url)
    try:
        await ui.open("/")
        task_id = await ui.submit(BRIEF)
        await ui.page.wait_for_function(
            "() => document.querySelector('.conn')?.textContent?.includes('bounded calls')",
            timeout=30_000,
        )
        async with AsyncClient(gateway.target) as direct:
            before = await direct.get_task(task_id)
            assert before.state not in TERMINAL, "the task ended too soon: slow it down more"
            # An event stored after this moment reaches the page while the task still runs.
            await ui.wait_until_applied(before.last_seq + 1)
            during = await direct.get_task(task_id)
            assert during.state not in TERMINAL

            assert await ui.wait_for_task_end() == "succeeded"
            final = await direct.get_task(task_id)
        hook = await ui.debug()
        assert hook["seqs"] == list(range(1, final.last_seq + 1))
        assert hook["duplicates"] == 0
        assert not ui.page_errors, ui.page_errors
        record_latency("browser-through-mitmproxy", hook["latencies"])
    finally:
        await context.close()
