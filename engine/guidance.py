"""Who acts next and what is missing, in words: computed from a progression's state, never stored by the workflow.

The workflow keeps the facts (stages, checks, approvals, decisions); this pure function turns them into the
``waiting_on``, ``missing`` and ``next_action`` a person reads. It runs where a state leaves the workflow (query
and Update results) and where the read model is written (the ``record`` activities), so the prose can change
without touching durable code or replaying histories.
"""

from __future__ import annotations

from typing import Any

from engine.lifecycle import (
    FINAL_STATUSES,
    DecisionKind,
    ProgressionState,
    StageState,
    StageStatus,
    Status,
    open_gate_roles,
)
from engine.policy import Role

FAILED_ACTION = ("nothing: the progression failed; the owning team may start this version again once the cause "
                 "is fixed")


def words(name: str) -> str:
    """A role or stage name as people say it: ``model_risk_officer`` -> ``model risk officer``."""
    return name.replace("_", " ")


def _a(role: Role) -> str:
    return f"a {words(role.value)}"


def _more(n: int, role: str) -> str:
    return f"{n} more {words(role)} approval" + ("s" if n != 1 else "")


def guidance(state: ProgressionState) -> dict[str, Any]:
    """``waiting_on``, ``missing`` and ``next_action`` for the state as it stands."""
    if state.status == Status.failed:
        return {"waiting_on": [], "missing": [], "next_action": FAILED_ACTION}
    stage = state.stage(state.current_stage) if state.current_stage else None
    waiting: list[Role] = []
    missing: list[str] = []
    if state.status in FINAL_STATUSES:
        action = f"nothing: the progression is {state.status.value}"
    elif stage is None:
        if state.status == Status.in_production and state.revalidation_due_at:
            action = f"nothing until revalidation is due on {state.revalidation_due_at.date().isoformat()}"
        else:
            action = f"nothing: the progression is {words(state.status.value)}"
    elif stage.status == StageStatus.blocked:
        waiting = [Role.model_developer]
        missing = [f"check {c.check_id} failed: {c.reason}" for c in stage.checks if not c.passed]
        action = f"a model developer of team {state.team} submits evidence that fixes the failing checks " \
                 f"of stage {words(stage.name)}"
    elif stage.status == StageStatus.changes_requested:
        waiting = [Role.model_developer]
        last = next((d for d in reversed(stage.decisions) if d.decision == DecisionKind.request_changes), None)
        if last:
            missing = [f"changes requested by {last.actor_username}: {last.comment}"]
        action = f"a model developer of team {state.team} answers the change request on stage " \
                 f"{words(stage.name)} with new evidence"
    elif stage.status == StageStatus.awaiting_approval:
        waiting = open_gate_roles(stage)
        missing = [_more(a.count - len(a.approved_by), a.role.value) for a in stage.approvals if not a.satisfied]
        escalated = [a for a in stage.approvals if a.escalated and not a.satisfied]
        who = " and ".join(_a(r) for r in waiting)
        action = f"{who} decide{'s' if len(waiting) == 1 else ''} on stage {words(stage.name)}"
        if escalated:
            action += " (past SLA, escalated to " + ", ".join(
                words((a.escalate_to or a.role).value) for a in escalated) + ")"
    else:
        action = f"the engine is running the checks of stage {words(stage.name)}"
    if state.revalidation_overdue:
        missing.append("revalidation is overdue")
    if stage is not None and state.status not in FINAL_STATUSES:
        breach = state.monitoring.triggered_by if state.monitoring is not None else None
        if stage.name == "revalidation" and breach is not None:
            missing.append(f"monitoring breach {breach.rule_id} ({breach.severity}, period "
                           f"{breach.period.isoformat()}) opened this revalidation early: {breach.reason}")
        if stage.name == "retirement" and state.retirement is not None:
            request = state.retirement
            missing.append(f"retirement asked by {request.requested_by_username}: {request.reason}"
                           + (f" (replacement {request.replacement})" if request.replacement else ""))
    action, waiting = _findings_guidance(state, stage, action, waiting, missing)
    return {"waiting_on": waiting, "missing": missing, "next_action": action}


def _findings_guidance(state: ProgressionState, stage: StageState | None, action: str, waiting: list[Role],
                       missing: list[str]) -> tuple[str, list[Role]]:
    """Open findings that block the current stage (``blocked_by``, set by the workflow from the pinned
    policy) and the model's flags, in words."""
    blocking = [f for f in state.findings if f.finding_id in state.blocked_by] \
        if stage is not None and state.status not in FINAL_STATUSES else []
    for f in blocking:
        missing.append(f"finding {f.finding_id} ({f.severity}: {f.title}) is {words(f.status)} and blocks stage "
                       f"{words(stage.name) if stage else ''}")
    if blocking and stage is not None and stage.status == StageStatus.running:
        waiting = [Role.model_developer]
        action = (f"a model developer of team {state.team} remediates the findings blocking stage "
                  f"{words(stage.name)} and an independent reviewer closes them (or an exception waives them)")
    missing.extend(f"flagged: {flag}" for flag in state.flags)
    return action, waiting


def guided(state: ProgressionState) -> ProgressionState:
    """A copy of the state with its guidance filled in (the state itself is left as it is)."""
    return state.model_copy(update=guidance(state))
