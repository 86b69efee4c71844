"""Shared fixtures: real Temporal servers (dev and time-skipping) and real databases.

The servers are started once per session (per xdist worker) by ``testing.temporal``; every test keeps
apart from the others by its own task queue, workflow ids and database.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from testing.databases import create_pg_database, drop_pg_database, pg_url
from testing.interrupt import tear_down_on_sigterm
from testing.temporal import dev_server, time_skipping_server


def pytest_configure(config: pytest.Config) -> None:
    """A terminated run still stops the servers its fixtures started (``testing.interrupt``)."""
    tear_down_on_sigterm()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test on the PostgreSQL server carries the ``postgres`` marker (``make test-fast`` leaves them out)."""
    for item in items:
        if "postgres_url" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    """One Temporal dev server for the whole session; each test uses its own task queue."""
    async with dev_server() as env:
        yield env


@pytest.fixture
async def time_skipping_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server of the test's own, for long timers (SLA days, yearly revalidation); ~0.2 s to start.

    Not shared: a test may leave workflows behind on the server with timers (a monitoring finding outlives its
    progression by design; a model stays in production), and after such a test, with its worker gone, the next
    test's ``sleep`` over a year failed ("Timeout expired"; even with those workflows terminated). A fresh server per
    test gives every test a clean clock and no one else's workflows (tests/workflow/test_time_skipping_isolation.py)."""
    async with time_skipping_server() as env:
        yield env


@pytest.fixture
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def task_queue() -> str:
    return f"tq-{uuid.uuid4()}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the local server (trust auth); dropped afterwards."""
    name = create_pg_database()
    try:
        yield pg_url(name)
    finally:
        drop_pg_database(name)


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return f"sqlite+aiosqlite:///{tmp_path / 'progression.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run a database test on both backends: the embedded default and production's."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url")
    else:
        yield request.getfixturevalue("postgres_url")
