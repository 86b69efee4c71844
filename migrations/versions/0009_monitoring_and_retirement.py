"""Monitoring results of models in production, and risk officers' overrides of retirement dependencies.

Revision ID: 0009
Revises: 0006
Create Date: 2026-12-01 15:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "monitoring_results",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("model_id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.String(64), nullable=False),
        sa.Column("progression_id", sa.String(140), nullable=False),
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("period", sa.String(10), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("posted_by", sa.String(36), nullable=False),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.JSON(), nullable=True),
        sa.UniqueConstraint("model_id", "period", name="uq_monitoring_model_period"),
    )
    for column in ("model_id", "progression_id", "team"):
        op.create_index(f"ix_monitoring_results_{column}", "monitoring_results", [column])
    op.create_table(
        "retirement_overrides",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("model_id", sa.String(64), nullable=False),
        sa.Column("dependents", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("granted_by", sa.String(36), nullable=False),
        sa.Column("granted_by_username", sa.String(128), nullable=False),
        sa.Column("credential_id", sa.String(200), nullable=True),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_retirement_overrides_model_id", "retirement_overrides", ["model_id"])


def downgrade() -> None:
    op.drop_table("retirement_overrides")
    op.drop_table("monitoring_results")
