"""The inbox: gates waiting on the caller, minus those the caller may not decide, oldest first."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, require
from engine.db import ProgressionRow, utcnow
from engine.lifecycle import FINAL_STATUSES, StageState, gate_refusal
from engine.wire import Inbox, InboxItem


async def inbox(*, session: AsyncSession, principal: Principal, limit: int = 200) -> Inbox:
    """Judges every open gate from the read model's small ``gate`` record, never the whole snapshot;
    reads the other columns only for the page it returns."""
    require(principal, Action.read_inbox)
    now = utcnow()
    actor = principal.actor
    # The rules of engine.lifecycle.decision_refusal that read the progression's columns: closed,
    # own submission, own team. The gate's own rules follow, per gate, with gate_refusal.
    conds = [ProgressionRow.status.not_in([s.value for s in FINAL_STATUSES]),
             ProgressionRow.gate.is_not(None),
             ProgressionRow.submitted_by != principal.id]
    if principal.team is not None:
        conds.append(ProgressionRow.team != principal.team)
    else:  # no team, no independence to show (decision_refusal: no_team): no gate is the caller's
        conds.append(ProgressionRow.id.is_(None))
    wanted = {r.value for r in principal.roles}
    open_gates: list[tuple[datetime, str, dict[str, Any]]] = []
    for pid, waiting_on, gate in (await session.execute(
            select(ProgressionRow.id, ProgressionRow.waiting_on, ProgressionRow.gate).where(*conds))).all():
        if not wanted.intersection(waiting_on or []):
            continue  # none of the caller's roles is still needed there (waiting_on: the unsatisfied roles)
        try:
            stage = gate["stage"]
            opened = datetime.fromisoformat(stage["gate_opened_at"]) if stage.get("gate_opened_at") else now
            # What is left of gate_refusal after the role check above reads the caller's own decisions on
            # this gate; only a gate holding one needs the full check now (validating every gate's record
            # is most of the inbox's time at 10,000 gates).
            if (any(d.get("actor_id") == actor.user_id for d in stage.get("decisions", []))
                    and gate_refusal(StageState.model_validate(stage), actor) is not None):
                continue
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        open_gates.append((opened, pid, gate))
    open_gates.sort(key=lambda g: (g[0], g[1]))
    page = [(opened, pid, StageState.model_validate(gate["stage"]), gate) for opened, pid, gate in open_gates[:limit]]
    rows = {row.id: row for row in (await session.execute(
        select(ProgressionRow.id, ProgressionRow.model_id, ProgressionRow.version_id, ProgressionRow.team,
               ProgressionRow.business_intent, ProgressionRow.risk_tier, ProgressionRow.sla_due_at,
               ProgressionRow.escalated).where(ProgressionRow.id.in_([g[1] for g in page])))).all()}
    items: list[InboxItem] = []
    for opened, pid, stage, gate in page:
        row = rows.get(pid)
        if row is None:
            continue
        roles = [a.role for a in stage.approvals if not a.satisfied and a.role in principal.roles]
        due = [a.due_at for a in stage.approvals if a.due_at is not None and a.role in roles]
        sla_due = min(due) if due else row.sla_due_at
        items.append(InboxItem(
            progression_id=pid, model_id=row.model_id, model_name=gate.get("model_name") or row.model_id,
            version_id=row.version_id, team=row.team, business_intent=row.business_intent,
            risk_tier=row.risk_tier, stage=stage.name, roles=roles,
            approvals=[a.model_dump(mode="json") for a in stage.approvals],
            gate_opened_at=opened, waiting_seconds=(now - opened).total_seconds(),
            sla_due_at=sla_due, seconds_to_sla=(sla_due - now).total_seconds() if sla_due else None,
            escalated=any(a.escalated for a in stage.approvals) or row.escalated,
            submitted_by=gate.get("submitted_by_username") or ""))
    return Inbox(items=items, total=len(open_gates))
