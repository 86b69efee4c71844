"""Every test in tests/system runs whole processes (stacks, CLI subprocesses, a browser, the crash harness,
fuzzing, benchmark smoke runs): all are ``slow``. ``make test`` runs them; ``make test-fast`` does not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client

from tests.system.browser import Live, live_browser

SYSTEM = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(SYSTEM):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
async def live(sqlite_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> AsyncIterator[Live]:
    """The browser tests' fixture: the app on uvicorn (a free port) with a worker, and Chromium."""
    async with live_browser(sqlite_url, tmp_path, temporal_client, task_queue) as live:
        yield live
