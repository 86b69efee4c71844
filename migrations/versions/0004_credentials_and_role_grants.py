"""Credentials and role grants: who issued each token, one-time enrollments, maker-checker role
grants, and the credential each decision was made with.

Existing tokens get ``issued_by = NULL`` (issued before this was recorded); existing users' roles are
recorded as grants by ``bootstrap`` so ``progression users`` shows where every role came from.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 08:30:00
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("issued_by", sa.String(160), nullable=True))
    with op.batch_alter_table("decisions") as batch:
        batch.add_column(sa.Column("credential_id", sa.String(200), nullable=True))
        batch.add_column(sa.Column("credential_issued_by", sa.String(200), nullable=True))
    op.create_table(
        "enrollments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("code_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redeemed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("token_id", sa.String(36), nullable=True),
    )
    op.create_index("ix_enrollments_user_id", "enrollments", ["user_id"])
    grants = op.create_table(
        "role_grants",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_id", sa.String(36), sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(1000), nullable=False),
        sa.Column("proposed_by", sa.String(128), nullable=False),
        sa.Column("proposed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("approved_by", sa.String(128), nullable=True),
        sa.Column("approved_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_role_grants_user_id", "role_grants", ["user_id"])
    users = sa.table("users", sa.column("id", sa.String), sa.column("roles", sa.JSON))
    conn = op.get_bind()
    now = datetime.now(UTC)
    rows = []
    for uid, roles in conn.execute(sa.select(users.c.id, users.c.roles)).all():
        for role in (json.loads(roles) if isinstance(roles, str) else roles or []):
            rows.append({"id": str(uuid.uuid4()), "user_id": uid, "role": role, "status": "approved",
                         "reason": "held before role grants were recorded", "proposed_by": "bootstrap",
                         "proposed_at": now, "approved_by": "bootstrap", "approved_at": now})
    if rows:
        op.bulk_insert(grants, rows)


def downgrade() -> None:
    op.drop_index("ix_role_grants_user_id", "role_grants")
    op.drop_table("role_grants")
    op.drop_index("ix_enrollments_user_id", "enrollments")
    op.drop_table("enrollments")
    with op.batch_alter_table("decisions") as batch:
        batch.drop_column("credential_id")
        batch.drop_column("credential_issued_by")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("issued_by")
