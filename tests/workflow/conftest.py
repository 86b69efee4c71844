"""The workflow tier's default environment: a fresh SQLite copy, the evidence store and the activities."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from testing.workflow import Env, app_env


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    async with app_env(sqlite_url, tmp_path) as e:
        yield e
