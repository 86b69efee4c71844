"""Keyset paging of the inbox and of ``GET /progressions``: indexes on their sort orders.

The inbox pages open gates by (gate_opened_at, id) and the progressions listing by (started_at desc, id)
(api.cursors); with these indexes the database reads one page's rows in order instead of sorting every open
gate or progression for each request.

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


def upgrade() -> None:
    op.create_index("ix_progressions_gate_opened_id", "progressions", ["gate_opened_at", "id"])
    op.create_index("ix_progressions_started_id", "progressions", ["started_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_progressions_started_id", table_name="progressions")
    op.drop_index("ix_progressions_gate_opened_id", table_name="progressions")
