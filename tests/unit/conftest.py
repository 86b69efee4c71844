"""Database fixtures of the unit tier."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from engine.database import upgrade
from engine.db import make_engine, make_sessionmaker


@pytest.fixture
async def sm(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a database just migrated to head (nothing seeded), on SQLite and PostgreSQL."""
    await upgrade(database_url)
    engine = make_engine(database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()
