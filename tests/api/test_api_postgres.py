"""The whole credit journey through HTTP on PostgreSQL (production's database)."""

from __future__ import annotations

from pathlib import Path

from temporalio.client import Client

from testing.api import api_env
from tests.api.test_api_progressions import credit_journey


async def test_credit_journey_postgres(postgres_url: str, tmp_path: Path, temporal_client: Client,
                                       task_queue: str) -> None:
    async with api_env(postgres_url, tmp_path, temporal_client, task_queue) as env:
        await credit_journey(env)
