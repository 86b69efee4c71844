"""Model versions keep the artifact's sha256 digest when the spec declares it: lineage (earlier progressions of the
same thing under any model id) matches it beside the artifact URI and the source commit, so a copy of the same
bytes under another URI is recognised. Rows from before keep NULL (the digest is still in their ``spec_yaml``).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02 01:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("artifact_digest", sa.String(71), nullable=True))
        batch.create_index("ix_model_versions_artifact_digest", ["artifact_digest"])


def downgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_index("ix_model_versions_artifact_digest")
        batch.drop_column("artifact_digest")
