"""Enrollment codes go out of band: users have an e-mail address, an enrollment records where its code was sent
(masked) and whether it re-issues a credential, and a re-issued token waits for a second admin's confirmation
before its holder decides.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01 17:50:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | Sequence[str] | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("email", sa.String(254), nullable=True))
        batch.add_column(sa.Column("email_changed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("email_changed_by", sa.String(128), nullable=True))
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("sent_to", sa.String(254), nullable=False, server_default=""))
        batch.add_column(sa.Column("reissue", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("confirmation_required", sa.Boolean(), nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("confirmed_by", sa.String(128), nullable=True))
        batch.add_column(sa.Column("confirmed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("confirmed_at")
        batch.drop_column("confirmed_by")
        batch.drop_column("confirmation_required")
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("superseded_at")
        batch.drop_column("reissue")
        batch.drop_column("sent_to")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("email_changed_by")
        batch.drop_column("email_changed_at")
        batch.drop_column("email")
