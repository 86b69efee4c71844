"""Database fixtures of the unit tier."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from engine.db import make_engine, make_sessionmaker
from testing.databases import migrated_database


@pytest.fixture
async def sm(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Sessions on a database at head (nothing seeded), on SQLite and PostgreSQL (SQLite: a copy of a
    template migrated once per process, see ``testing.databases``)."""
    await migrated_database(database_url)
    engine = make_engine(database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()
