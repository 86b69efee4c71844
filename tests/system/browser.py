"""The browser tests' shared parts: Debian's Chromium driven by Playwright for Python, people signed in through
the form, screenshots. The ``live`` fixture (tests/system/conftest.py) serves the real app with uvicorn on a free
loopback port, with a real worker on the Temporal dev server and SQLite in tmp_path.

Nothing is downloaded: Playwright drives /usr/bin/chromium (``apt-get install chromium``), never a browser of its
own (no ``playwright install``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.client import Client

from engine.settings import PROJECT_ROOT
from testing.api import ApiEnv, api_env, serve_http
from testing.polling import eventually

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = PROJECT_ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# The browser tests' modules: ``pytestmark = needs_chromium``.
needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="Debian's chromium is not installed at /usr/bin/chromium "
                                           "(apt-get install -y chromium); CI installs it")

if CHROMIUM.exists():
    from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
else:  # pragma: no cover - the browser tests are skipped
    Browser = BrowserContext = Page = object  # type: ignore[misc,assignment]


async def sign_in(page: Page, token: str) -> None:
    """Sign in through the form on the page shown (the login page, or a page that asks again)."""
    await page.get_by_label("API token").fill(token)
    await page.get_by_role("button", name="Sign in").click()


@dataclass
class Live:
    env: ApiEnv
    base: str
    browser: Browser

    async def person(self, who: str, *, width: int = 1280, height: int = 900) -> Page:
        """A fresh browser context (own cookies) for ``who``, signed in through the form."""
        context: BrowserContext = await self.browser.new_context(viewport={"width": width, "height": height},
                                                                 accept_downloads=True)
        page = await context.new_page()
        await page.goto(f"{self.base}/ui/")
        await expect(page).to_have_url(f"{self.base}/ui/login")
        await sign_in(page, self.env.tokens[who])
        await expect(page.get_by_text("Signed in as")).to_be_visible()
        return page


@asynccontextmanager
async def live_browser(sqlite_url: str, tmp_path: Path, temporal_client: Client, task_queue: str
                       ) -> AsyncIterator[Live]:
    """The app served by uvicorn with a worker, and Chromium."""
    ARTIFACTS.mkdir(exist_ok=True)
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue, worker=True) as env, \
            serve_http(env.app) as base, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield Live(env=env, base=base, browser=browser)
        finally:
            await browser.close()


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def reload_until(page: Page, text: str) -> None:
    """Reload until ``text`` is on the page (the workflow moves on asynchronously)."""

    async def shown() -> bool:
        if await page.get_by_text(text, exact=False).count():
            return True
        await page.reload()
        return False

    await eventually(shown, f"{text!r} on {page.url}", max_interval=0.2)
