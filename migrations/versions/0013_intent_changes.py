"""A change of a model's business intent is proposed by one model risk officer and applied when a second approves
it: the proposals, their decisions, and at most one open proposal per model (a partial unique index).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 01:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    op.create_table(
        "intent_changes",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("model_id", sa.String(64), sa.ForeignKey("models.id"), nullable=False),
        sa.Column("from_intent", sa.String(64), nullable=False),
        sa.Column("to_intent", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(2000), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("proposed_by", sa.String(36), nullable=False),
        sa.Column("proposed_by_username", sa.String(128), nullable=False),
        sa.Column("proposed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(36), nullable=True),
        sa.Column("decided_by_username", sa.String(128), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_reason", sa.String(2000), nullable=True),
    )
    op.create_index("ix_intent_changes_model_id", "intent_changes", ["model_id"])
    op.create_index("uq_intent_changes_one_pending", "intent_changes", ["model_id"], unique=True,
                    sqlite_where=PENDING, postgresql_where=PENDING)


def downgrade() -> None:
    op.drop_index("uq_intent_changes_one_pending", table_name="intent_changes")
    op.drop_index("ix_intent_changes_model_id", table_name="intent_changes")
    op.drop_table("intent_changes")
