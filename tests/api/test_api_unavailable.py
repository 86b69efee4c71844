"""A database that is away answers 503 with Retry-After (retryable), never a 500."""

from __future__ import annotations

from pathlib import Path

import httpx
from temporalio.client import Client

from api.app import create_app
from engine.database import upgrade
from engine.db import make_engine, make_sessionmaker
from testing.api import make_settings


async def test_database_away_is_503_with_retry_after(sqlite_url: str, tmp_path: Path, temporal_client: Client,
                                                     task_queue: str) -> None:
    await upgrade(sqlite_url)
    healthy = make_engine(sqlite_url)
    # Port 1 on loopback: nothing listens, so every connection is refused, as during an outage.
    away = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/progression?connect_timeout=2")
    app = create_app(make_settings(tmp_path, sqlite_url, task_queue), temporal_client=temporal_client,
                     sessionmaker=make_sessionmaker(healthy))
    try:
        async with app.router.lifespan_context(app):
            app.state.progression.sessionmaker = make_sessionmaker(away)  # the database goes away
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api.test") as http:
                response = await http.get("/api/v1/inbox", headers={"Authorization": "Bearer prg_whatever"})
                ready = await http.get("/readyz")
    finally:
        await healthy.dispose()
        await away.dispose()
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "service_unavailable"
    assert response.json()["details"] == {"dependency": "database"}
    assert response.headers["Retry-After"] == "5"
    assert ready.status_code == 503
