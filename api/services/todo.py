"""The caller's to-do list: every gate, progression and finding that waits on them, most urgent first.

Built from the same rules the actions themselves answer with: the inbox (gates the caller may decide), the
progressions of the caller's team blocked on evidence or a change request (``engine.actions`` decides whether the
caller may add that evidence), and the findings the caller may remediate or verify
(``engine.findings.remediation_refusal`` / ``verification_refusal``), and for a model risk officer the proposed
changes of a model's intent that wait on a second officer (any but the proposer, independent of the model's team).
"""

from __future__ import annotations

import shlex
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.authz import Action, Principal, allowed, require
from api.deps import AppState
from api.services.inbox import inbox
from api.services.progressions import actions_for
from engine.db import CatalogModel, FindingRow, IntentChange, ProgressionRow, utcnow
from engine.findings import FindingRecord, FindingStatus, remediation_refusal, verification_refusal
from engine.lifecycle import ProgressionState, Status
from engine.wire import Todo, TodoItem

UI = "/ui"
LIMIT = 500


def _urgency(item: TodoItem, now: datetime) -> tuple[int, float, float]:
    due = item.due_at.timestamp() if item.due_at else float("inf")
    since = item.since.timestamp() if item.since else now.timestamp()
    return (0 if item.overdue else 1, due, since)


async def todo(*, session: AsyncSession, app: AppState, principal: Principal) -> Todo:
    require(principal, Action.read_self)
    now = utcnow()
    items: list[TodoItem] = []
    if allowed(principal, Action.decide):
        for gate in (await inbox(session=session, principal=principal, secret=app.settings.secret_key,
                                     limit=LIMIT)).items:
            pid = gate.progression_id
            items.append(TodoItem(
                kind="gate", model_id=gate.model_id, progression_id=pid, stage=gate.stage,
                title=f"Decide stage {gate.stage.replace('_', ' ')} of {gate.model_name} {gate.version_id}",
                since=gate.gate_opened_at, due_at=gate.sla_due_at,
                overdue=gate.escalated or (gate.seconds_to_sla is not None and gate.seconds_to_sla < 0),
                command=f"progression decide {shlex.quote(pid)} approve --stage {gate.stage} -m 'your comment'",
                url=f"{UI}/progressions/{pid}"))
    if principal.team is not None and allowed(principal, Action.add_evidence):
        rows = (await session.scalars(select(ProgressionRow).where(
            ProgressionRow.team == principal.team,
            ProgressionRow.status.in_([Status.blocked.value, Status.changes_requested.value]))
            .order_by(ProgressionRow.updated_at).limit(LIMIT))).all()
        for row in rows:
            state = ProgressionState.model_validate(row.state)
            options = actions_for(app, principal, state)
            upload = next((o for o in options if o.action == "add_evidence" and o.allowed), None)
            if upload is None:
                continue
            changes = state.status == Status.changes_requested
            stage = (state.current_stage or "").replace("_", " ")
            items.append(TodoItem(
                kind="changes_requested" if changes else "evidence", model_id=state.model_id,
                progression_id=state.progression_id, stage=state.current_stage,
                title=(f"Answer the change request on stage {stage} of {state.model_name} {state.version_id}"
                       if changes else f"Fix the evidence blocking stage {stage} of {state.model_name} "
                                       f"{state.version_id}: " + "; ".join(state.missing[:2])),
                since=row.updated_at,
                command=f"progression status {shlex.quote(state.progression_id)}",
                url=f"{UI}/progressions/{state.progression_id}"))
    actor = principal.actor
    if allowed(principal, Action.remediate_finding) or allowed(principal, Action.verify_finding):
        rows_f = (await session.scalars(select(FindingRow).where(
            FindingRow.status.in_([FindingStatus.open.value, FindingStatus.remediation_submitted.value]))
            .order_by(FindingRow.due_at).limit(LIMIT))).all()
        for frow in rows_f:
            finding = FindingRecord.model_validate(frow.record)
            fid = shlex.quote(finding.finding_id)
            if allowed(principal, Action.remediate_finding) and remediation_refusal(finding, actor) is None:
                items.append(TodoItem(
                    kind="finding_remediation", model_id=finding.model_id, finding_id=finding.finding_id,
                    title=f"Remediate finding {finding.finding_id} ({finding.severity}): {finding.title}",
                    since=frow.raised_at, due_at=frow.due_at, overdue=frow.overdue,
                    command=f"progression findings remediate {fid} -m 'what was done'",
                    url=f"{UI}/findings/{finding.finding_id}"))
            elif allowed(principal, Action.verify_finding) and verification_refusal(finding, actor) is None:
                items.append(TodoItem(
                    kind="finding_verification", model_id=finding.model_id, finding_id=finding.finding_id,
                    title=f"Verify the remediation of finding {finding.finding_id} ({finding.severity}): "
                          f"{finding.title}",
                    since=frow.updated_at, due_at=frow.due_at, overdue=frow.overdue,
                    command=f"progression findings close {fid} -m 'why it is resolved'",
                    url=f"{UI}/findings/{finding.finding_id}"))
    if allowed(principal, Action.change_intent) and principal.team is not None:
        proposals = (await session.execute(
            select(IntentChange, CatalogModel.name).join(CatalogModel, CatalogModel.id == IntentChange.model_id)
            .where(IntentChange.status == "pending", IntentChange.proposed_by != principal.id,
                   CatalogModel.team != principal.team)
            .order_by(IntentChange.proposed_at).limit(LIMIT))).all()
        for change, model_name in proposals:
            items.append(TodoItem(
                kind="intent_change", model_id=change.model_id,
                title=f"Approve or reject the change of {model_name}'s intent from {change.from_intent} to "
                      f"{change.to_intent}, proposed by {change.proposed_by_username}: {change.reason}",
                since=change.proposed_at, url=f"{UI}/models/{change.model_id}"))
    items.sort(key=lambda i: _urgency(i, now))
    return Todo(items=items, total=len(items))
