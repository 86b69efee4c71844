"""Keyset paging of the inbox and of ``GET /progressions``: indexes on their sort orders.

The inbox pages open gates by (gate_opened_at, id) and the progressions listing by (started_at desc, id)
(api.cursors); with these indexes the database reads one page's rows in order instead of sorting every open
gate or progression for each request. On PostgreSQL, statistics on the inbox's role expression let the planner
see that the index is the cheap way (see ``upgrade``).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 15:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
# The brief asks for "0006" (re-chained at merge); on this branch (merge-trial) the head is "0010", and two
# heads would stop ``alembic upgrade head`` (every test database) here.
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATISTICS = "st_progressions_waiting_on_text"


def upgrade() -> None:
    op.create_index("ix_progressions_gate_opened_id", "progressions", ["gate_opened_at", "id"])
    op.create_index("ix_progressions_started_id", "progressions", ["started_at", "id"])
    bind = op.get_bind()
    if bind.dialect.name == "postgresql" and (bind.dialect.server_version_info or (0,)) >= (14,):
        # The inbox matches a role in ``waiting_on``'s JSON text (api.services.inbox.waiting_on_role). Without
        # statistics on that expression PostgreSQL guesses it matches a handful of rows, so it scans and sorts
        # every open gate instead of reading the first page off the keyset index: 180 ms instead of 1 ms at
        # 100,000 open gates (bench.inbox_sql). ANALYZE (autovacuum) fills them.
        op.execute(f"CREATE STATISTICS IF NOT EXISTS {STATISTICS} ON ((waiting_on::varchar)) FROM progressions")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP STATISTICS IF EXISTS {STATISTICS}")
    op.drop_index("ix_progressions_started_id", table_name="progressions")
    op.drop_index("ix_progressions_gate_opened_id", table_name="progressions")
