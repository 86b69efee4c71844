"""Read model: ``progressions.gate``, the open gate as the inbox reads it.

The inbox used to decode every candidate's whole state snapshot (about 15 KB each) to apply the
segregation-of-duties rule; ``gate`` holds only the open gate (stage without check results, the
model's name, the submitter's username), written by the worker with every snapshot. Existing rows
are filled from their snapshots here, so the inbox is complete right after the upgrade.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 19:00:00
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FINAL = ("rejected", "withdrawn", "retired")
BATCH = 500


def gate_from_snapshot(state: dict[str, Any]) -> dict[str, Any] | None:
    """Same shape as ``engine.lifecycle.gate_record``, on the stored JSON (kept here so the migration
    does not change when the application code does)."""
    name = state.get("current_stage")
    stage = next((s for s in state.get("stages", []) if s.get("name") == name), None) if name else None
    if stage is None or stage.get("status") != "awaiting_approval" or state.get("status") in FINAL:
        return None
    return {"stage": {k: v for k, v in stage.items() if k != "checks"}, "model_name": state.get("model_name"),
            "submitted_by_username": state.get("submitted_by_username")}


def upgrade() -> None:
    op.add_column("progressions", sa.Column("gate", sa.JSON(), nullable=True))
    progressions = sa.table("progressions", sa.column("id", sa.String), sa.column("state", sa.JSON),
                            sa.column("gate", sa.JSON), sa.column("status", sa.String))
    conn = op.get_bind()
    fill = progressions.update().where(progressions.c.id == sa.bindparam("pid")).values(gate=sa.bindparam("g"))
    last = ""
    while True:  # keyset batches: a large installation's snapshots (~15 KB each) never all in memory
        rows = conn.execute(sa.select(progressions.c.id, progressions.c.state)
                            .where(progressions.c.status.not_in(FINAL), progressions.c.id > last)
                            .order_by(progressions.c.id).limit(BATCH)).all()
        if not rows:
            return
        gates = [(pid, gate_from_snapshot(json.loads(state) if isinstance(state, str) else state or {}))
                 for pid, state in rows]
        if filled := [{"pid": pid, "g": gate} for pid, gate in gates if gate is not None]:
            conn.execute(fill, filled)
        last = rows[-1][0]


def downgrade() -> None:
    with op.batch_alter_table("progressions") as batch:
        batch.drop_column("gate")
