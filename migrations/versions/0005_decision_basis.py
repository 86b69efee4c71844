"""Decisions: ``basis``, the hash of what the decider saw (spec, evidence, check results, policy).

An approval binds to its basis: it counts only while the stage's basis is the one it approved.
Decisions recorded before this revision have none (NULL).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 08:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("basis", sa.String(length=80), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("basis")
