"""Alembic environment: one history for SQLite (embedded) and PostgreSQL (production).

The URL comes, in order, from ``-x url=...``, from ``sqlalchemy.url`` set on the Config
(``engine.database.alembic_config``), or from ``engine.settings``. Migrations run with a
synchronous driver: aiosqlite becomes pysqlite; psycopg 3 is sync-capable as it is.
"""

from __future__ import annotations

from logging.config import fileConfig
from typing import Any

from alembic import context
from sqlalchemy import create_engine, pool

from engine.database import sync_url
from engine.db import Base, UTCDateTime

config = context.config

# Only the CLI (alembic.ini) configures logging; programmatic runs keep the caller's logging.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        from engine.settings import get_settings

        url = get_settings().resolved_database_url
    return sync_url(url)


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    # UTCDateTime only adds a result processor; in the schema it is a timezone-aware DateTime.
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure_kwargs(url: str) -> dict[str, Any]:
    return {
        "target_metadata": target_metadata,
        "compare_type": True,
        "render_as_batch": url.startswith("sqlite"),  # SQLite cannot ALTER most things in place
        "render_item": _render_item,
    }


def run_migrations_offline() -> None:
    url = _url()
    context.configure(
        url=url, literal_binds=True, dialect_opts={"paramstyle": "named"}, **_configure_kwargs(url)
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = _url()
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, **_configure_kwargs(url))
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
