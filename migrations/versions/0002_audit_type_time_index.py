"""Audit: indexes for time windows -- (event_type, occurred_at), and (occurred_at, seq).

Measured at 1,000,000 events (bench/audit.py). "Events of a type in a window": with only
``ix_audit_type_seq`` the planner walks every event of the type in ``seq`` order and filters the
window, 45-65 ms on SQLite; ``ix_audit_type_occurred`` range-scans the window instead, under 1 ms.
``ix_audit_occurred_seq`` replaces ``ix_audit_occurred``: with seq in the index, PostgreSQL sorts a
window's seqs from the index alone (engine.audit.list_events picks that plan for sparse windows).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 18:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_audit_type_occurred", "audit_events", ["event_type", "occurred_at"], unique=False)
    op.create_index("ix_audit_occurred_seq", "audit_events", ["occurred_at", "seq"], unique=False)
    op.drop_index("ix_audit_occurred", table_name="audit_events")


def downgrade() -> None:
    op.create_index("ix_audit_occurred", "audit_events", ["occurred_at"], unique=False)
    op.drop_index("ix_audit_occurred_seq", table_name="audit_events")
    op.drop_index("ix_audit_type_occurred", table_name="audit_events")
