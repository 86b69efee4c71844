"""The governance snapshot of a model (its findings and exceptions) as its progressions receive it.

Read by the registration of a progression (its first snapshot) and after every change of a finding or an
exception (``activities.findings``), so both see the same selection.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from engine.db import AuditChainHead, ExceptionRow, FindingRow
from engine.findings import ExceptionRecord, ExceptionStatus, FindingRecord
from engine.lifecycle import GovernanceSnapshot


async def governance_snapshot(session: AsyncSession, model_id: str) -> GovernanceSnapshot:
    """The model's findings (closed ones too: a progression must learn that a condition it raised was closed even
    if it never saw it open) and exceptions (all but lapsed ones), as of the audit chain's head: a progression
    applies only a snapshot newer than the one it holds."""
    as_of = int(await session.scalar(select(func.max(AuditChainHead.last_seq))) or 0)
    findings = (await session.scalars(select(FindingRow).where(FindingRow.model_id == model_id)
                                      .order_by(FindingRow.raised_at, FindingRow.id))).all()
    exceptions = (await session.scalars(select(ExceptionRow).where(
        ExceptionRow.model_id == model_id, ExceptionRow.status != ExceptionStatus.lapsed.value
    ).order_by(ExceptionRow.requested_at, ExceptionRow.id))).all()
    return GovernanceSnapshot(
        model_id=model_id, as_of=as_of,
        findings=[FindingRecord.model_validate(r.record).summary() for r in findings],
        exceptions=[ExceptionRecord.model_validate(r.record).summary() for r in exceptions])
