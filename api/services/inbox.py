"""The inbox: gates waiting on the caller, minus those the caller may not decide, oldest first."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, require
from api.schemas import Inbox, InboxItem
from engine.db import ProgressionRow, utcnow
from engine.lifecycle import FINAL_STATUSES, ProgressionState, StageStatus, decision_refusal


def _gate_view(snapshot: dict[str, Any]) -> ProgressionState:
    """The snapshot without what the inbox never reads (check results with their inputs, evidence refs):
    most of a snapshot's size, and most of the cost of validating it."""
    stages = [{**stage, "checks": []} for stage in snapshot.get("stages", [])]
    return ProgressionState.model_validate({**snapshot, "stages": stages, "evidence": {}})


async def inbox(*, session: AsyncSession, principal: Principal, limit: int = 200) -> Inbox:
    require(principal, Action.read_inbox)
    now = utcnow()
    actor = principal.actor
    conds = [ProgressionRow.status.not_in([s.value for s in FINAL_STATUSES]),
             ProgressionRow.gate_opened_at.is_not(None),
             ProgressionRow.submitted_by != principal.id]  # own submission: never in the inbox
    if principal.team is not None:
        conds.append(ProgressionRow.team != principal.team)  # own team: segregation of duties
    # Light columns first: only progressions waiting on one of the caller's roles need their snapshot.
    candidates = (await session.execute(
        select(ProgressionRow.id, ProgressionRow.waiting_on).where(*conds))).all()
    wanted = {r.value for r in principal.roles}
    ids = [pid for pid, waiting_on in candidates if wanted.intersection(waiting_on or [])]
    items: list[InboxItem] = []
    rows: list[ProgressionRow] = []
    for start in range(0, len(ids), 5000):  # bounded IN lists (SQLite's bound-parameter limit)
        chunk = ids[start:start + 5000]
        rows += (await session.execute(select(ProgressionRow).where(ProgressionRow.id.in_(chunk)))).scalars()
    for row in rows:
        try:
            state = _gate_view(row.state)
        except ValueError:
            continue
        for stage in state.stages:
            if stage.status != StageStatus.awaiting_approval:
                continue
            # The same rule the workflow's validator applies: leaves out own team, own
            # submission, a gate already approved by the caller, and roles already satisfied.
            if decision_refusal(state, actor, stage.name) is not None:
                continue
            roles = [a.role for a in stage.approvals if not a.satisfied and a.role in principal.roles]
            if not roles:
                continue
            due = [a.due_at for a in stage.approvals if a.due_at is not None and a.role in roles]
            sla_due = min(due) if due else row.sla_due_at
            opened = stage.gate_opened_at or row.gate_opened_at
            items.append(InboxItem(
                progression_id=state.progression_id, model_id=state.model_id, model_name=state.model_name,
                version_id=state.version_id, team=state.team, business_intent=state.business_intent,
                risk_tier=state.risk_tier, stage=stage.name, roles=roles,
                approvals=[a.model_dump(mode="json") for a in stage.approvals],
                gate_opened_at=opened,
                waiting_seconds=(now - opened).total_seconds() if opened else None,
                sla_due_at=sla_due, seconds_to_sla=(sla_due - now).total_seconds() if sla_due else None,
                escalated=any(a.escalated for a in stage.approvals) or row.escalated,
                submitted_by=state.submitted_by_username))
    items.sort(key=lambda i: (i.gate_opened_at is None, i.gate_opened_at or now, i.progression_id))
    return Inbox(items=items[:limit], total=len(items))
