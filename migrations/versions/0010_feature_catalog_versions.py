"""Feature catalog versions (pinned by progressions), feature data owners, and feature change proposals.

Revision ID: 0010
Revises: 0006
Create Date: 2026-12-01 14:40:00

An existing catalog is recorded as version 1, so progressions registered from now on pin it; rows written
before keep ``catalog_version`` null and are pinned to the version current at their next check evaluation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("features", sa.Column("owner", sa.String(128), nullable=True))
    op.add_column("progressions", sa.Column("catalog_version", sa.Integer(), nullable=True))
    versions = op.create_table(
        "feature_catalog_versions",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("catalog_hash", sa.String(80), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=True),
        sa.Column("reason", sa.String(200), nullable=False),
    )
    op.create_table(
        "feature_proposals",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("feature", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("proposed", sa.JSON(), nullable=False),
        sa.Column("previous", sa.JSON(), nullable=True),
        sa.Column("based_on_version", sa.Integer(), nullable=False),
        sa.Column("approvals_needed", sa.Integer(), nullable=False),
        sa.Column("approvals", sa.JSON(), nullable=False),
        sa.Column("comment", sa.String(2000), nullable=False),
        sa.Column("proposed_by", sa.String(36), nullable=False),
        sa.Column("proposed_by_username", sa.String(128), nullable=False),
        sa.Column("proposed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(128), nullable=True),
        sa.Column("decision_comment", sa.String(2000), nullable=False),
        sa.Column("applied_version", sa.Integer(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
    )
    op.create_index("ix_feature_proposals_feature", "feature_proposals", ["feature"])
    op.create_index("ix_feature_proposals_status", "feature_proposals", ["status"])

    # The catalog as it stands becomes version 1 (same content form and hash as engine.catalog).
    rows = op.get_bind().execute(sa.text("SELECT name, description, tags FROM features")).all()
    if rows:
        content = {}
        for name, description, tags in sorted(rows):
            tag_list = json.loads(tags) if isinstance(tags, str) else list(tags or [])
            content[name] = {"description": description or "",
                             "tags": sorted({str(t).strip() for t in tag_list if str(t).strip()}), "owner": None}
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        op.bulk_insert(versions, [{
            "version": 1, "catalog_hash": "sha256:" + hashlib.sha256(canonical.encode()).hexdigest(),
            "content": content, "created_at": datetime.now(UTC), "created_by": "migration",
            "reason": "catalog recorded"}])


def downgrade() -> None:
    op.drop_table("feature_proposals")
    op.drop_table("feature_catalog_versions")
    op.drop_column("progressions", "catalog_version")
    op.drop_column("features", "owner")
