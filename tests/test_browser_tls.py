"""The browser UI over HTTPS: headless Chromium → Envoy (TLS, HTTP/2) → TLS executor → planner.

Chromium trusts the gateway's test certificate by its public key alone
(`--ignore-certificate-errors-spki-list`): the pin names exactly that certificate, so the
browser still refuses every other one; a second Chromium without the pin shows it refuses
this one too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Error, async_playwright

from mitosis.client import AsyncClient
from mitosis.executor.server import Executor
from mitosis.v1 import task_pb2

from . import browser as kit
from .browser import CHROMIUM_ARGS, UI
from .certs import TestAuthority, spki_sha256
from .gateway import Gateway

# The TLS chain's fixtures: a test CA, a planner and an executor serving TLS.
from .support.tls_stack import authority, planner, start, tls_executor, tls_gateway

chromium = kit.chromium
browser = kit.browser
web_dist = kit.web_dist
__all__ = ["authority", "browser", "chromium", "planner", "start", "tls_executor", "web_dist"]

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def https_gateway(
    tmp_path: Path, authority: TestAuthority, tls_executor: Executor, web_dist: Path
) -> AsyncIterator[Gateway]:
    """Envoy serving the UI over HTTPS, in front of the TLS executor."""
    gateway = await tls_gateway(tmp_path, authority, tls_executor, static_dir=web_dist)
    yield gateway
    await gateway.astop()


@pytest.fixture
async def pinned_browser(chromium: str, https_gateway: Gateway) -> AsyncIterator[Browser]:
    """Headless Chromium that trusts the gateway's certificate, and only that one."""
    certificate = https_gateway.envoy.settings.tls_cert
    assert certificate is not None
    pin = f"--ignore-certificate-errors-spki-list={spki_sha256(certificate)}"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium, args=[*CHROMIUM_ARGS, pin]
        )
        try:
            yield launched
        finally:
            await launched.close()


async def test_a_task_runs_in_the_browser_over_https_and_http2(
    pinned_browser: Browser, https_gateway: Gateway, authority: TestAuthority
) -> None:
    context = await pinned_browser.new_context()
    ui = UI(await context.new_page(), https_gateway.url)
    try:
        await ui.open("/")
        task_id = await ui.submit("Explain tides.")
        state = await ui.wait_for_task_end()
        protocol = await ui.page.evaluate(
            "performance.getEntriesByType('navigation')[0].nextHopProtocol"
        )
    finally:
        await context.close()
    async with AsyncClient(f"localhost:{https_gateway.port}", tls_ca=authority.cert) as client:
        task = await client.get_task(task_id)

    assert https_gateway.url.startswith("https://")
    assert state == "succeeded"
    assert task.state == task_pb2.Task.STATE_SUCCEEDED
    assert protocol == "h2"
    assert not ui.page_errors, ui.page_errors


async def test_a_browser_that_does_not_trust_the_certificate_refuses_the_page(
    browser: Browser, https_gateway: Gateway
) -> None:
    page = await browser.new_page()
    with pytest.raises(Error, match="ERR_CERT_AUTHORITY_INVALID"):
        await page.goto(https_gateway.url + "/")
    await page.close()
