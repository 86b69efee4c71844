"""Schema migrations (Alembic) run from code: the API, the worker and the tests call these.

``alembic upgrade head`` from the project root does the same from the shell; the URL then
comes from ``PROGRESSION_DATABASE_URL`` or ``-x url=...``.
"""

from __future__ import annotations

import asyncio

from alembic import command
from alembic.config import Config
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db import AuditChainHead
from engine.settings import PROJECT_ROOT

MIGRATIONS_DIR = PROJECT_ROOT / "migrations"
CHAIN_HEAD_ID = 1
GENESIS_HASH = "0" * 64


def sync_url(url: str) -> str:
    """The synchronous twin of an async SQLAlchemy URL (Alembic runs synchronously)."""
    if url.startswith("sqlite+aiosqlite"):
        return "sqlite" + url[len("sqlite+aiosqlite") :]
    if url.startswith("postgresql+asyncpg"):
        return "postgresql+psycopg" + url[len("postgresql+asyncpg") :]
    return url  # postgresql+psycopg (psycopg 3) is sync- and async-capable


def alembic_config(url: str) -> Config:
    """An Alembic Config for ``url`` that does not depend on the current directory or alembic.ini."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    # ConfigParser interpolates '%': escape it so URLs with percent-encoded passwords survive.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade_sync(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrate to ``revision`` without blocking the event loop (Alembic is synchronous)."""
    await asyncio.to_thread(upgrade_sync, url, revision)


async def ensure_chain_head(session: AsyncSession) -> None:
    """Create the single audit_chain_head row if it is missing (the migration already inserts it)."""
    exists = (
        await session.execute(select(AuditChainHead.id).where(AuditChainHead.id == CHAIN_HEAD_ID))
    ).first()
    if exists is None:
        await session.execute(
            insert(AuditChainHead).values(id=CHAIN_HEAD_ID, last_seq=0, last_hash=GENESIS_HASH)
        )
