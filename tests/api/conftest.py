"""The API tier's default environment: the app in-process over a fresh SQLite copy, a worker, Temporal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.client import Client

from testing.api import ApiEnv, api_env


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> AsyncIterator[ApiEnv]:
    """The app with its lifespan behind an ASGI client, a real worker on the test's task queue, the people."""
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue) as e:
        yield e
