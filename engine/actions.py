"""What the caller may do on a progression *now*, and for everything else why not and what would unlock it.

One pure function, :func:`allowed_actions`, over the progression's state and the caller. It applies the same rules
the API and the workflow's Update validators apply (``engine.lifecycle.decision_refusal``, ``evidence_refusal``,
``evidence_change_refusal``, ``withdraw_refusal``; ``engine.findings.blocking_refusal``) after the role table and
team rule of ``api.authz``, which the API hands in as :attr:`Caller.refused` (this module imports no outer layer).
So an action listed as allowed is one the API then accepts, and one listed as not allowed is refused with the same
code (``tests/api/test_allowed_actions.py`` proves it for every role and status).

Used by ``GET /api/v1/progressions/{id}`` (``actions``), the web UI (it shows only allowed actions: an upload
slot per evidence item, the decision form only to those allowed, and says why the rest are unavailable) and the
CLI (the exact command of the next step).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from pydantic import BaseModel, Field

from engine.findings import blocking_refusal
from engine.lifecycle import (
    FINAL_STATUSES,
    ActionOption,
    Actor,
    DecisionKind,
    ProgressionState,
    Refusal,
    StageStatus,
    Status,
    decision_refusal,
    evidence_change_refusal,
    evidence_refusal,
    withdraw_refusal,
)
from engine.policy import FindingRules, Role

# Stands for "a new file": any content that differs from what the progression holds.
_NEW_CONTENT = "new"


class Caller(BaseModel):
    """Who asks. ``refused`` holds the role-table and team refusals ``api.authz`` computed for this progression's
    team, by action (``decide``, ``add_evidence``, ``withdraw``); ``sso_required`` when this installation accepts
    decisions only from SSO sessions and the caller's credential is not one."""

    actor: Actor
    refused: dict[str, Refusal] = Field(default_factory=dict)
    sso_required: bool = False


def _who(role: Role | str) -> str:
    return str(role.value if isinstance(role, Role) else role).replace("_", " ")


def _unlock(code: str, state: ProgressionState, stage: str | None) -> str | None:
    gate = state.stage(stage) if stage else None
    roles = " or ".join(_who(a.role) for a in gate.approvals) if gate else "the gate's role"
    return {
        "not_a_gate_role": f"a {roles} decides this stage",
        "forbidden": "a person whose role allows it",
        "own_submission": f"a {roles} independent of team {state.team} decides",
        "own_team": f"a {roles} independent of team {state.team} decides",
        "no_team": "an administrator sets your team",
        "not_independent": "another person, who decided no other stage of its independence group, decides",
        "already_decided": "nothing from you: you count once; another person completes the gate",
        "quorum_met_for_role": "nothing from you: your role's approvals are complete",
        "gate_not_open": "the gate opens once the stage's checks pass",
        "progression_closed": "nothing: start a new version",
        "blocking_findings": "the blocking findings are remediated and closed, or waived by an exception",
        "sso_required": "sign in with SSO and decide from that session",
        "not_owner": f"the submitter or a model developer of team {state.team}",
        "not_your_team": f"a model developer of team {state.team}",
        "in_production": "retirement, decided by a model risk officer",
        "evidence_frozen": "nothing in this progression: start a new version",
        "evidence_locked": "nothing in this progression: start a new version",
        "spec_immutable": "nothing in this progression: start a new version",
    }.get(code)


def _refused(option: ActionOption, refusal: Refusal, state: ProgressionState) -> ActionOption:
    return option.model_copy(update={"allowed": False, "code": refusal.code, "reason": refusal.message,
                                     "unlock": _unlock(refusal.code, state, option.stage), "command": None})


def _decide_option(state: ProgressionState, caller: Caller, findings: FindingRules | None) -> ActionOption | None:
    stage = state.stage(state.current_stage) if state.current_stage else None
    if stage is None or state.status in FINAL_STATUSES:
        return None
    option = ActionOption(action="decide", allowed=False, stage=stage.name)
    if refusal := caller.refused.get("decide"):
        return _refused(option, refusal, state)
    if caller.sso_required:
        return _refused(option, Refusal(code="sso_required", http_status=403,
                                        message="decisions are accepted only from an SSO session here"), state)
    kinds: list[DecisionKind] = []
    first: Refusal | None = None
    for kind in (DecisionKind.approve, DecisionKind.request_changes, DecisionKind.reject):
        refusal = decision_refusal(state, caller.actor, stage.name, kind)
        if refusal is None and kind == DecisionKind.approve:
            refusal = blocking_refusal(state, findings, stage.name)
        if refusal is None:
            kinds.append(kind)
        elif first is None:
            first = refusal
    if not kinds:
        assert first is not None
        return _refused(option, first, state)
    pid = shlex.quote(state.progression_id)
    verb = "approve" if DecisionKind.approve in kinds else kinds[0].value.replace("_", "-")
    return option.model_copy(update={
        "allowed": True, "decisions": kinds,
        "reason": f"you may {', '.join(k.value.replace('_', ' ') for k in kinds)} on stage {stage.name}",
        "command": f"progression decide {pid} {verb} --stage {stage.name} -m 'your comment'"})


def _evidence_options(state: ProgressionState, caller: Caller, evidence_kinds: Mapping[str, str | None],
                      paths: Mapping[str, str]) -> list[ActionOption]:
    names = sorted(set(evidence_kinds) | set(state.evidence))
    options: list[ActionOption] = []
    base_refusal = caller.refused.get("add_evidence") or evidence_refusal(state, caller.actor)
    for name in names:
        option = ActionOption(action="add_evidence", allowed=False, evidence=name,
                              missing=name not in state.evidence, description=evidence_kinds.get(name))
        refusal = base_refusal or evidence_change_refusal(state, {name: _NEW_CONTENT})
        if refusal is not None:
            options.append(_refused(option, refusal, state))
            continue
        path = shlex.quote(paths.get(name, f"<{name} file>"))
        verb = "add the missing" if option.missing else "replace the"
        options.append(option.model_copy(update={
            "allowed": True, "reason": f"you may {verb} {name.replace('_', ' ')}; the stage's checks run again",
            "command": f"progression evidence add {shlex.quote(state.progression_id)} {name}={path}"}))
    return options


def _withdraw_option(state: ProgressionState, caller: Caller) -> ActionOption:
    option = ActionOption(action="withdraw", allowed=False)
    refusal = caller.refused.get("withdraw") or withdraw_refusal(state, caller.actor)
    if refusal is not None:
        return _refused(option, refusal, state)
    return option.model_copy(update={
        "allowed": True, "reason": "you may stop this progression (recorded with your reason)",
        "command": f"progression withdraw {shlex.quote(state.progression_id)} --reason 'why it stops'"})


def allowed_actions(state: ProgressionState, caller: Caller, *, findings: FindingRules | None = None,
                    evidence_kinds: Mapping[str, str | None] | None = None,
                    paths: Mapping[str, str] | None = None) -> list[ActionOption]:
    """Every action on the progression for ``caller``: the decision on the open gate (if a gate stage is current),
    one upload slot per evidence item (``evidence_kinds``: the pinned policy's contracts, name -> description,
    plus every item the progression holds), and withdrawal; each allowed, or refused with the code, the reason
    and what would unlock it. ``findings``: the pinned policy's findings rules (blocking findings). ``paths``:
    where the spec keeps each item (for the command)."""
    options: list[ActionOption] = []
    if (decide := _decide_option(state, caller, findings)) is not None:
        options.append(decide)
    options += _evidence_options(state, caller, evidence_kinds or {}, paths or {})
    options.append(_withdraw_option(state, caller))
    return options


def next_command(state: ProgressionState, options: list[ActionOption]) -> str | None:
    """The one command to run next, for the person who asked: a decision on an open gate; else the evidence the
    stage waits on (missing first); ``None`` when nothing waits on this person."""
    for option in options:
        if option.allowed and option.action == "decide":
            return option.command
    stage = state.stage(state.current_stage) if state.current_stage else None
    if state.status in (Status.blocked, Status.changes_requested) or (
            stage is not None and stage.status in (StageStatus.blocked, StageStatus.changes_requested)):
        uploads = [o for o in options if o.allowed and o.action == "add_evidence"]
        reads = set(stage.reads or []) if stage is not None else set()
        failing = {str(p) for c in (stage.checks if stage else []) if not c.passed
                   for p in c.inputs if str(p).startswith("evidence.")}
        wanted = [o for o in uploads if o.missing and (not reads or o.evidence in reads or "*" in reads)] \
            or [o for o in uploads if any(f.startswith(f"evidence.{o.evidence}") for f in failing)] \
            or [o for o in uploads if not reads or o.evidence in reads]
        if wanted:
            return wanted[0].command
    return None
