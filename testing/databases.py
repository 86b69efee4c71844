"""Databases for tests, benchmarks and the crash harness: fresh PostgreSQL databases and prepared SQLite files.

Migrating with Alembic costs about half a second of CPU a run; a test that only needs a database at
head gets a copy of a template migrated (and seeded with the feature catalog) once per process instead.
Tests of the migrations themselves call ``engine.database.upgrade`` on an empty file, as before.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from engine.database import sqlite_file, upgrade
from engine.db import make_engine, make_sessionmaker
from engine.features import seed_features
from engine.settings import PROJECT_ROOT
from testing.people import People, create_people

PG_ADMIN_DSN = os.environ.get("PROGRESSION_TEST_PG_DSN",
                              os.environ.get("PROGRESSION_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"))
FEATURES = PROJECT_ROOT / "policies" / "features.yaml"


# ---- PostgreSQL ----------------------------------------------------------------------------------


def create_pg_database(prefix: str = "progression_test") -> str:
    """A new, empty database on the local server (unique name, so parallel runs never collide)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_url(name: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


@contextlib.contextmanager
def fresh_database(kind: str, prefix: str = "progression_test") -> Iterator[str]:
    """A fresh, empty database (a SQLite file in a temporary directory or a new PostgreSQL database), dropped after."""
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-") as tmp:
            yield f"sqlite+aiosqlite:///{Path(tmp) / 'progression.db'}"
        return
    if kind != "postgresql":
        raise ValueError(f"unknown database kind {kind!r}")
    name = create_pg_database(prefix)
    try:
        yield pg_url(name)
    finally:
        drop_pg_database(name)


# ---- a database at head with the feature catalog ------------------------------------------------


_templates: dict[bool, Path] = {}


async def _seed_catalog(sm: async_sessionmaker[AsyncSession]) -> None:
    async with sm() as session:
        await seed_features(session, FEATURES)
        await session.commit()


async def _sqlite_template(*, seeded: bool) -> Path:
    """One SQLite file per process and kind, migrated to head (and seeded with the feature catalog when
    ``seeded``); removed when the process exits. The seeded one starts as a copy of the migrated one."""
    if seeded not in _templates:
        directory = Path(tempfile.mkdtemp(prefix="progression-template-"))
        atexit.register(shutil.rmtree, directory, True)
        path = directory / "template.db"
        url = f"sqlite+aiosqlite:///{path}"
        if seeded:
            shutil.copyfile(await _sqlite_template(seeded=False), path)
            engine = make_engine(url)
            try:
                await _seed_catalog(make_sessionmaker(engine))
            finally:
                await engine.dispose()  # the last connection closes: nothing left in a journal beside the file
        else:
            await upgrade(url)
        _templates[seeded] = path
    return _templates[seeded]


def _new_sqlite_file(url: str) -> Path | None:
    """The SQLite file ``url`` names if it does not exist yet (its directory created), else None."""
    target = sqlite_file(url)
    if target is None or target.exists():
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


async def migrated_database(url: str) -> None:
    """Bring ``url`` to head, nothing seeded: a new SQLite file is a copy of the migrated template (the same
    schema and ``alembic_version`` that ``engine.database.upgrade`` writes), anything else is migrated."""
    target = _new_sqlite_file(url)
    if target is not None:
        shutil.copyfile(await _sqlite_template(seeded=False), target)
        return
    await upgrade(url)


async def prepare_database(url: str) -> None:
    """Bring ``url`` to head with the feature catalog seeded.

    A SQLite file that does not exist yet is copied from the template; anything else (PostgreSQL, an
    existing file) is migrated and seeded in place.
    """
    target = _new_sqlite_file(url)
    if target is not None:
        shutil.copyfile(await _sqlite_template(seeded=True), target)
        return
    await upgrade(url)
    engine = make_engine(url)
    try:
        await _seed_catalog(make_sessionmaker(engine))
    finally:
        await engine.dispose()


async def prepare_database_with_people(url: str, people: People) -> tuple[dict[str, str], dict[str, str]]:
    """``prepare_database``, then create ``people`` (see ``testing.people``); returns (username -> token,
    username -> user id). The engine is disposed before returning: a SQLite file alone then holds everything."""
    await prepare_database(url)
    engine = make_engine(url)
    try:
        async with make_sessionmaker(engine)() as session:
            tokens, ids = await create_people(session, people)
            await session.commit()
    finally:
        await engine.dispose()
    return tokens, ids
