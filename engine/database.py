"""Schema migrations (Alembic) run from code: the API, the worker and the tests call these.

``alembic upgrade head`` from the project root does the same from the shell; the URL then
comes from ``PROGRESSION_DATABASE_URL`` or ``-x url=...``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import insert, inspect, make_url, select
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from engine.db import AuditChainHead
from engine.errors import NoDatabase
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


SQLITE_HINT = "start the stack with `make run` or set PROGRESSION_DATA_DIR"
SERVER_HINT = "run the migrations (`python -m launch.serve migrate`) or set PROGRESSION_DATABASE_URL"


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL; None for other databases and in-memory SQLite."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


async def require_database(url: str, *, server: bool = True) -> None:
    """Refuse (:class:`NoDatabase`) when the application database at ``url`` does not exist or was never
    migrated. Creates nothing: a command that made its own SQLite file would write where no stack reads.

    ``server=False`` checks only a SQLite file (a worker at start must not fail on a database outage).
    """
    path = sqlite_file(url)
    if path is not None:
        if not path.is_file():
            raise NoDatabase(f"no database at {path}; {SQLITE_HINT}")
        if not await asyncio.to_thread(_sqlite_has_schema, path):
            raise NoDatabase(f"no Progression schema in {path}; {SQLITE_HINT}")
        return
    if not server or url.startswith("sqlite"):
        return
    shown = make_url(url).render_as_string(hide_password=True)
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            migrated = await conn.run_sync(lambda sync: inspect(sync).has_table("alembic_version"))
    except (SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise NoDatabase(f"no database at {shown} ({reason}); {SERVER_HINT}") from None
    finally:
        await engine.dispose()
    if not migrated:
        raise NoDatabase(f"no Progression schema in {shown}; {SERVER_HINT}")


def _sqlite_has_schema(path: Path) -> bool:
    # The file exists (checked by the caller), so connecting opens it and creates nothing.
    conn = sqlite3.connect(path, timeout=30)
    try:
        row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'").fetchone()
        return row is not None
    finally:
        conn.close()
