"""The inbox: gates waiting on the caller, minus those the caller may not decide, oldest first."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, require
from api.schemas import Inbox, InboxItem
from engine.db import ProgressionRow, utcnow
from engine.lifecycle import FINAL_STATUSES, decision_refusal, gate_state

# The read model's columns a gate's state is rebuilt from (with its ``gate`` record).
_COLUMNS = (ProgressionRow.id, ProgressionRow.model_id, ProgressionRow.team, ProgressionRow.business_intent,
            ProgressionRow.risk_tier, ProgressionRow.version_id, ProgressionRow.target, ProgressionRow.policy_hash,
            ProgressionRow.status, ProgressionRow.submitted_by, ProgressionRow.started_at, ProgressionRow.updated_at,
            ProgressionRow.waiting_on, ProgressionRow.gate_opened_at, ProgressionRow.sla_due_at,
            ProgressionRow.escalated, ProgressionRow.gate)
_STATE_FIELDS = ("model_id", "team", "business_intent", "risk_tier", "version_id", "target", "policy_hash",
                 "status", "submitted_by", "started_at", "updated_at")


async def inbox(*, session: AsyncSession, principal: Principal, limit: int = 200) -> Inbox:
    require(principal, Action.read_inbox)
    now = utcnow()
    actor = principal.actor
    conds = [ProgressionRow.status.not_in([s.value for s in FINAL_STATUSES]),
             ProgressionRow.gate.is_not(None),
             ProgressionRow.submitted_by != principal.id]  # own submission: never in the inbox
    if principal.team is not None:
        conds.append(ProgressionRow.team != principal.team)  # own team: segregation of duties
    wanted = {r.value for r in principal.roles}
    items: list[InboxItem] = []
    # Only the open gate's record is read (a few hundred bytes), never the whole snapshot.
    for row in (await session.execute(select(*_COLUMNS).where(*conds))).all():
        if not wanted.intersection(row.waiting_on or []):
            continue
        try:
            state = gate_state({"progression_id": row.id, **{k: getattr(row, k) for k in _STATE_FIELDS}}, row.gate)
        except (ValueError, KeyError, TypeError):
            continue
        stage = state.stages[0]
        # The same rule the workflow's validator applies: leaves out own team, own submission, a
        # gate already approved by the caller, and roles already satisfied.
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
