"""Headless Chromium (Debian's, driven by Playwright) in front of a real Envoy: helpers.

The browser is the system's own: `MITOSIS_CHROMIUM`, else `chromium` on PATH (Debian's
package installs /usr/bin/chromium; CI installs it). Playwright never downloads one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

ROOT = Path(__file__).resolve().parent.parent
WEB_DIST = ROOT / "clients" / "web" / "dist"
ARTIFACTS = ROOT / "test-artifacts"

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

TERMINAL_STATES = ("succeeded", "failed", "cancelled")


def chromium_path() -> str | None:
    """The Chromium to drive: $MITOSIS_CHROMIUM, else the system's chromium, else None."""
    configured = os.environ.get("MITOSIS_CHROMIUM")
    if configured:
        return configured
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


@pytest.fixture
def web_dist() -> Path:
    """The built UI; the browser tests need it (`make test` builds it first)."""
    if not (WEB_DIST / "index.html").exists():
        pytest.fail(f"the UI is not built: run `make web` (no {WEB_DIST / 'index.html'})")
    return WEB_DIST


@pytest.fixture
def chromium() -> str:
    """The Chromium binary; the test is skipped only when none is installed."""
    path = chromium_path()
    if path is None or not Path(path).exists():
        pytest.skip(
            "no Chromium binary: install Debian's chromium (apt-get install chromium)"
            " or point MITOSIS_CHROMIUM at one"
        )
    return path


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[Browser]:
    """A headless Chromium (the system's, never one Playwright downloads)."""
    path = chromium
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


class UI:
    """One tab of the Mitosis UI, with what the tests look at."""

    def __init__(self, page: Page, base_url: str) -> None:
        self.page = page
        self.base_url = base_url
        self.console: list[str] = []
        self.page_errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type}: {message.text}")

    async def open(self, path: str = "/", *, watchdog_s: float | None = None) -> None:
        """Open a path of the UI with the test hook (`?debug=1`) on."""
        query = "?debug=1" + (f"&watchdog={watchdog_s:g}" if watchdog_s else "")
        await self.page.goto(self.base_url + path + query)

    async def submit(self, text: str) -> str:
        """Type a task in the form, run it and return its id from the URL it opens."""
        await self.page.fill("#task-text", text)
        await self.page.get_by_role("button", name="Run task").click()
        await self.page.wait_for_url(re.compile(r"/tasks/[0-9a-f]+$"))
        return self.page.url.rsplit("/", 1)[1]

    async def wait_for_task_end(self, timeout_s: float = 60) -> str:
        """Wait until the task's state badge shows a terminal state; return it."""
        selector = ", ".join(f'.task-state[data-state="{s}"]' for s in TERMINAL_STATES)
        await self.page.wait_for_selector(selector, timeout=timeout_s * 1000)
        state = await self.page.get_attribute(".task-state", "data-state")
        assert state is not None
        return state

    async def connection_text(self) -> str:
        return (await self.page.text_content(".conn")) or ""

    async def debug(self) -> dict[str, Any]:
        """The app's test hook: applied seqs, latencies, connection states, ..."""
        hook = await self.page.evaluate("() => window.__mitosis")
        assert hook, "the test hook is missing: open the UI with ?debug=1"
        return dict(hook)

    async def wait_until_applied(self, seq: int, timeout_s: float = 30) -> None:
        """Wait until the page has applied the event `seq`."""
        await self.page.wait_for_function(
            "seq => (window.__mitosis?.seqs ?? []).includes(seq)",
            arg=seq,
            timeout=timeout_s * 1000,
        )

    async def step_states(self) -> list[str]:
        return cast(
            list[str],
            await self.page.eval_on_selector_all(
                "ol.steps > li.step", "items => items.map(li => li.dataset.state)"
            ),
        )

    async def step_titles(self) -> list[str]:
        return cast(
            list[str],
            await self.page.eval_on_selector_all(
                "ol.steps .step-title", "items => items.map(e => e.textContent)"
            ),
        )

    async def page_tabs(self) -> list[str]:
        return cast(
            list[str],
            await self.page.eval_on_selector_all(
                ".pager-tab", "tabs => tabs.map(t => t.textContent)"
            ),
        )

    async def open_page(self, number: int) -> None:
        """Turn the terminal to page `number` with its tab."""
        await self.page.click(f'.pager-tab[data-page="{number}"]')
        await self.page.wait_for_function(
            "n => document.querySelector('.page-title')?.textContent?.startsWith(`Page ${n} —`)",
            arg=number,
        )

    async def page_source(self) -> str:
        """The current page's text exactly as written (the terminal's source view)."""
        toggle = self.page.locator(".source-toggle")
        if await toggle.get_attribute("aria-pressed") != "true":
            await toggle.click()
        await self.page.wait_for_selector(".page-source:not([hidden])")
        # One more frame so the source view has drawn the current page.
        await self.page.evaluate("() => new Promise(r => requestAnimationFrame(() => r(null)))")
        return cast(str, await self.page.eval_on_selector(".page-source", "e => e.textContent"))

    async def show_rendered(self) -> None:
        toggle = self.page.locator(".source-toggle")
        if await toggle.get_attribute("aria-pressed") == "true":
            await toggle.click()
        await self.page.wait_for_selector(".page-body:not([hidden])")

    async def log_lines(self) -> list[str]:
        return cast(
            list[str],
            await self.page.eval_on_selector_all(
                ".log .line-text", "lines => lines.map(l => l.textContent)"
            ),
        )

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        await self.page.screenshot(path=str(path), full_page=True)
        return path


def latency_summary(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and max of the create_time → on-screen latencies, in milliseconds."""
    ordered = sorted(latencies)
    if not ordered:
        return {}
    p99_index = min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))
    return {
        "events": len(ordered),
        "p50_ms": statistics.median(ordered),
        "p99_ms": ordered[p99_index],
        "max_ms": ordered[-1],
    }


def record_latency(name: str, latencies: list[float]) -> dict[str, float]:
    """Write the latency summary of one test to test-artifacts/ and return it (no assert)."""
    summary = latency_summary(latencies)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"latency-{name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{name}: create_time → on screen: {summary}")
    return summary
