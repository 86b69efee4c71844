"""Lifecycle vocabulary shared by the workflow, the activities and the API.

Everything here is pure and deterministic: the workflow imports it through
``workflow.unsafe.imports_passed_through()``. The segregation-of-duties rule
(:func:`decision_refusal`) lives here once, so the API's fast 403 and the
workflow's Update validator cannot disagree.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import date, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from engine.policy import MonitoringAction, Role


class EventType(StrEnum):
    """Audit event types. Refusals are recorded by the API (a refused Update never enters history)."""

    progression_started = "progression.started"
    stage_entered = "stage.entered"
    check_evaluated = "check.evaluated"
    stage_blocked = "stage.blocked"
    gate_opened = "gate.opened"
    decision_received = "decision.received"
    decision_refused = "decision.refused"
    gate_escalated = "gate.escalated"
    changes_requested = "changes.requested"
    evidence_submitted = "evidence.submitted"
    stage_passed = "stage.passed"
    stage_reopened = "stage.reopened"
    deployment = "deployment.recorded"
    progression_approved = "progression.approved"
    progression_in_production = "progression.in_production"
    progression_rejected = "progression.rejected"
    progression_withdrawn = "progression.withdrawn"
    progression_failed = "progression.failed"
    revalidation_due = "revalidation.due"
    revalidation_completed = "revalidation.completed"
    notification_sent = "notification.sent"
    feature_updated = "feature.updated"
    feature_proposed = "feature.proposed"
    feature_proposal_approved = "feature.proposal_approved"
    feature_proposal_rejected = "feature.proposal_rejected"
    feature_proposal_refused = "feature.proposal_refused"
    user_created = "user.created"
    token_issued = "token.issued"
    enrollment_created = "enrollment.created"
    enrollment_refused = "enrollment.refused"
    user_email_changed = "user.email_changed"
    credential_confirmed = "credential.confirmed"
    role_grant_proposed = "role_grant.proposed"
    role_grant_approved = "role_grant.approved"
    model_intent_change_proposed = "model.intent_change_proposed"
    model_intent_change_rejected = "model.intent_change_rejected"
    model_intent_changed = "model.intent_changed"
    model_intent_downgrade_refused = "model.intent_downgrade_refused"
    policy_published = "policy.published"
    finding_raised = "finding.raised"
    finding_remediation_submitted = "finding.remediation_submitted"
    finding_closed = "finding.closed"
    finding_reopened = "finding.reopened"
    finding_reminder = "finding.reminder"
    finding_overdue = "finding.overdue"
    finding_escalated = "finding.escalated"
    finding_risk_accepted = "finding.risk_accepted"
    finding_refused = "finding.refused"
    exception_requested = "exception.requested"
    exception_granted = "exception.granted"
    exception_lapsed = "exception.lapsed"
    exception_refused = "exception.refused"
    model_flagged = "model.flagged"
    stage_unblocked = "stage.unblocked"
    monitoring_stored = "monitoring.stored"  # the API stored a period's results (before delivering them)
    monitoring_refused = "monitoring.refused"
    monitoring_received = "monitoring.received"  # the production workflow evaluated them
    monitoring_breach = "monitoring.breach"
    monitoring_overdue = "monitoring.overdue"
    revalidation_triggered = "revalidation.triggered"
    retirement_requested = "retirement.requested"
    retirement_override = "retirement.override"
    retirement_declined = "retirement.declined"
    model_retired = "model.retired"


class ResolvedFeature(BaseModel):
    """A spec feature looked up in the feature catalog; ``known`` is False for an unregistered name."""

    name: str
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    known: bool = True


class Status(StrEnum):
    running = "running"
    blocked = "blocked"
    awaiting_approval = "awaiting_approval"
    changes_requested = "changes_requested"
    approved = "approved"
    in_production = "in_production"
    rejected = "rejected"
    withdrawn = "withdrawn"
    retired = "retired"
    failed = "failed"  # the workflow failed (e.g. the model's owner or intent disagreed at registration)


FINAL_STATUSES = frozenset({Status.rejected, Status.withdrawn, Status.retired, Status.failed})
# Roles that decide gates: held only by people who obtained their own credential and were granted
# the role by two admins (maker-checker); never by an admin.
DECIDING_ROLES = frozenset({Role.model_validator, Role.model_risk_officer})


class StageStatus(StrEnum):
    pending = "pending"
    running = "running"
    blocked = "blocked"
    awaiting_approval = "awaiting_approval"
    changes_requested = "changes_requested"
    passed = "passed"
    rejected = "rejected"
    withdrawn = "withdrawn"


class DecisionKind(StrEnum):
    approve = "approve"
    reject = "reject"
    request_changes = "request_changes"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Actor(Model):
    """The authenticated person behind a request. Built by the API from the token, never from a body."""

    user_id: str
    username: str
    display_name: str | None = None
    roles: list[Role]
    team: str | None = None
    # The credential the request was made with (API token id or SSO session id) and who issued it.
    credential_id: str | None = None
    credential_issued_by: str | None = None


class EvidenceRef(Model):
    name: str
    sha256: str
    filename: str | None = None
    size: int = 0
    media_type: str = "application/octet-stream"
    added_by: str | None = None
    added_at: datetime | None = None


class CheckResult(Model):
    stage: str
    check_id: str
    description: str
    expr: str
    passed: bool
    reason: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    evaluator: str = ""
    evaluated_at: datetime | None = None


class DecisionRecord(Model):
    decision_id: str
    stage: str
    decision: DecisionKind
    actor_id: str
    actor_username: str
    role: Role | None = None  # the gate role this person counted under (approve only)
    comment: str
    at: datetime
    # True once new evidence reset the gate's approvals: kept for the record, no longer counted.
    superseded: bool = False
    credential_id: str | None = None  # the token / SSO session the decision was made with
    credential_issued_by: str | None = None
    # The basis the decision was made on (see ``compute_basis``), and whether it is still the stage's.
    basis: str | None = None
    basis_matches: bool | None = None
    conditions: list[str] = Field(default_factory=list)  # finding ids raised with this approval


class PriorOutcome(Model):
    """An earlier progression of the same artifact or source commit (any model id), with its outcome."""

    progression_id: str
    model_id: str
    version_id: str
    business_intent: str
    status: str
    match: list[str] = Field(default_factory=list)  # "artifact", "source_commit", "artifact_digest"
    risk_tier: int | None = None  # the tier it was governed by (None in results recorded before it was read)


class ApprovalProgress(Model):
    role: Role
    count: int
    approved_by: list[str] = Field(default_factory=list)  # user ids, distinct
    sla: str | None = None
    due_at: datetime | None = None
    escalate_to: Role | None = None
    escalated: bool = False

    @property
    def satisfied(self) -> bool:
        return len(self.approved_by) >= self.count


class StageState(Model):
    name: str
    status: StageStatus = StageStatus.pending
    action: str | None = None
    entered_at: datetime | None = None
    completed_at: datetime | None = None
    gate_opened_at: datetime | None = None
    attempt: int = 0  # bumps when new evidence re-runs the stage
    checks: list[CheckResult] = Field(default_factory=list)
    approvals: list[ApprovalProgress] = Field(default_factory=list)
    decisions: list[DecisionRecord] = Field(default_factory=list)
    # Evidence names the stage reads (its checks' ``evidence.<name>`` and ``requires_evidence``; "*": all).
    reads: list[str] | None = None
    # The basis an approval of this stage binds to now (gate open or passed); a decision sends it back.
    basis: str | None = None
    # Evidence items whose change produced the current basis (said in a ``stale_basis`` refusal).
    basis_changed: list[str] = Field(default_factory=list)


class FindingSummary(Model):
    """What a progression knows of one of its model's findings (see ``engine.findings``)."""

    finding_id: str
    severity: str
    status: str  # open, remediation_submitted, closed, risk_accepted
    title: str
    condition: bool = False  # raised as a condition of an approval
    stage: str | None = None
    version_id: str | None = None
    due_at: datetime | None = None
    overdue: bool = False


class ExceptionSummary(Model):
    """What a progression knows of one of its model's exceptions (waivers)."""

    exception_id: str
    kind: str  # check, finding, pma
    status: str  # pending_approval, active, lapsed
    version_id: str
    check_id: str | None = None
    finding_id: str | None = None
    expires_at: datetime


class GovernanceSnapshot(Model):
    """The model's findings and exceptions as the database holds them, sent to its running progressions
    whenever one changes; ``as_of`` (the audit chain's last seq when read) orders snapshots."""

    model_id: str
    as_of: int
    findings: list[FindingSummary] = Field(default_factory=list)
    exceptions: list[ExceptionSummary] = Field(default_factory=list)


class Breach(Model):
    """A rule that held over one period's results."""

    rule_id: str
    description: str
    expr: str
    severity: str
    action: MonitoringAction
    period: date
    result_id: str
    reason: str = ""
    inputs: dict[str, Any] = Field(default_factory=dict)


class RuleOutcome(Model):
    rule_id: str
    breached: bool
    reason: str
    inputs: dict[str, Any] = Field(default_factory=dict)


class MonitoringState(Model):
    """What the production workflow knows of its monitoring (carried across continue-as-new in the state)."""

    periods: list[date] = Field(default_factory=list)  # periods received (the newest KEEP_PERIODS)
    results: dict[str, date] = Field(default_factory=dict)  # result id -> period (the newest KEEP_PERIODS)
    last_result_at: datetime | None = None
    last_overdue_at: datetime | None = None  # when missing results last raised a finding
    raised: list[str] = Field(default_factory=list)  # "<rule id>@<period>": findings raised (once per rule/period)
    breaches: list[Breach] = Field(default_factory=list)  # the newest breaches, for the read side
    trigger: Breach | None = None  # a revalidate breach the main loop has not acted on yet
    triggered_by: Breach | None = None  # the breach that opened the current revalidation gate
    tier: int | None = None  # the materiality tier the cadence was computed for


class RetirementRequest(Model):
    """The owner's request, as the retirement gate carries it."""

    request_id: str
    requested_by: str
    requested_by_username: str
    reason: str
    replacement: str | None = None
    requested_at: datetime
    dependents: list[str] = Field(default_factory=list)  # production models declaring this one a dependency
    override_id: str | None = None  # the risk officer's recorded override of those dependencies
    override_by: str | None = None


class ProgressionState(Model):
    """The whole state, returned by the ``state`` query and mirrored into the read model."""

    progression_id: str
    model_id: str
    model_name: str
    team: str
    business_intent: str
    risk_tier: int
    version_id: str
    target: str
    policy_hash: str
    status: Status = Status.running
    current_stage: str | None = None
    stages: list[StageState]
    submitted_by: str
    submitted_by_username: str
    started_at: datetime
    updated_at: datetime
    evidence: dict[str, EvidenceRef] = Field(default_factory=dict)
    waiting_on: list[Role] = Field(default_factory=list)  # who acts next (roles), empty when nobody
    next_action: str = ""  # human sentence: what happens next and who does it
    missing: list[str] = Field(default_factory=list)  # what is missing now, in words
    deployed_at: datetime | None = None
    revalidation_due_at: datetime | None = None
    revalidation_overdue: bool = False
    revalidations: int = 0
    # Groups of stages decided by different people (the policy's independent_stages).
    independent_stages: list[list[str]] = Field(default_factory=list)
    # Earlier rejections of the same artifact or source commit, found at registration: an approval
    # must acknowledge each by naming its progression id in the comment.
    prior_rejections: list[PriorOutcome] = Field(default_factory=list)
    failure: str | None = None  # why the workflow failed (status failed)
    spec_digest: str | None = None  # see engine.spec.spec_digest; part of every decision basis
    artifact: str | None = None
    artifact_digest: str | None = None
    frozen_after: dict[str, str] = Field(default_factory=dict)  # evidence item -> stage (pinned policy)
    # The model's findings and exceptions (patch ``findings``): what blocks a stage, which checks are waived.
    findings: list[FindingSummary] = Field(default_factory=list)
    exceptions: list[ExceptionSummary] = Field(default_factory=list)
    governance_as_of: int = -1
    # Conditions this progression raised that no snapshot has shown yet (their rows are being written): kept
    # in ``findings`` until a snapshot shows them, so a newer snapshot read before their rows cannot drop them.
    unseen_conditions: list[str] = Field(default_factory=list)
    # Why the model is flagged (a lapsed exception's check back in force, an overdue condition), in words.
    flags: list[str] = Field(default_factory=list)
    # Ids of the open findings that block the current stage under the pinned policy (patch ``findings``).
    blocked_by: list[str] = Field(default_factory=list)
    # Life after production (patch ``monitoring``): results received, breaches, the trigger of an early
    # revalidation; the owner's retirement request while its gate is open.
    monitoring: MonitoringState | None = None
    retirement: RetirementRequest | None = None
    retired_at: datetime | None = None
    seq: int = 0  # bumps on every change; the read model keeps only the newest snapshot

    def stage(self, name: str) -> StageState | None:
        return next((s for s in self.stages if s.name == name), None)


class Lineage(Model):
    """Where a version comes from: the model's other versions, and every other progression of the same
    artifact or source commit under any model id, with their outcomes (computed by the API when read)."""

    model_versions: list[PriorOutcome] = Field(default_factory=list)
    same_artifact_or_commit: list[PriorOutcome] = Field(default_factory=list)
    prior_rejections: list[PriorOutcome] = Field(
        default_factory=list, description="earlier rejections an approval must acknowledge (name each id)")


class Person(Model):
    """Who a user id is, for people to read: answers carry it beside the id they name."""

    id: str
    username: str
    display_name: str | None = None

    def label(self) -> str:
        """``display name (username)``, or the username alone."""
        return f"{self.display_name} ({self.username})" if self.display_name else self.username


class ActionOption(Model):
    """One action on a progression for the caller who asked (``engine.actions.allowed_actions``)."""

    action: Literal["decide", "add_evidence", "withdraw"]
    allowed: bool
    stage: str | None = None  # decide: the gate's stage
    evidence: str | None = None  # add_evidence: the item (one option per item: an upload slot)
    missing: bool = False  # add_evidence: the progression has no such item yet
    description: str | None = None  # add_evidence: what the item is (the policy's contract)
    decisions: list[DecisionKind] = Field(default_factory=list)  # decide: the decisions allowed now
    code: str | None = None  # why not: the refusal code the API would answer
    reason: str = ""  # why not (or, when allowed, what it does), in words
    unlock: str | None = None  # what would make it allowed
    command: str | None = None  # the CLI command that does it (allowed options only)


class ProgressionDetail(ProgressionState):
    """``GET /progressions/{id}``: the state plus its lineage, the people it names and, for the caller, the
    actions allowed now (never part of the workflow's state)."""

    lineage: Lineage | None = None
    people: dict[str, Person] = Field(default_factory=dict, description=(
        "user id -> username and display name of everyone the state names by id (submitter, deciders, "
        "who added evidence)"))
    actions: list[ActionOption] = Field(default_factory=list)
    next_command: str | None = Field(default=None, description="the CLI command of the caller's next step")


class ConditionIn(Model):
    """A finding raised as a condition of an approval."""

    severity: str = Field(min_length=1, max_length=32)
    title: str = Field(min_length=1, max_length=300)
    description: str = Field(default="", max_length=10_000)
    due_at: AwareDatetime | None = None  # default: the policy's period for the severity
    evidence_refs: list[str] = Field(default_factory=list, max_length=50)


class Refusal(Model):
    code: str
    message: str
    http_status: Literal[403, 404, 409, 422]


def gate_record(state: ProgressionState) -> dict[str, Any] | None:
    """The open gate as the read model keeps it for the inbox, or ``None`` when no gate is open.

    The stage without its check results, plus the two names the inbox shows: a few hundred bytes
    the inbox judges with :func:`gate_refusal`, without decoding whole snapshots.
    """
    stage = state.stage(state.current_stage) if state.current_stage else None
    if stage is None or stage.status != StageStatus.awaiting_approval or state.status in FINAL_STATUSES:
        return None
    return {"stage": stage.model_dump(mode="json", exclude={"checks"}), "model_name": state.model_name,
            "submitted_by_username": state.submitted_by_username}


def open_gate_roles(stage: StageState) -> list[Role]:
    return [a.role for a in stage.approvals if not a.satisfied]


def decision_refusal(
    state: ProgressionState, actor: Actor, stage_name: str, decision: DecisionKind | None = None
) -> Refusal | None:
    """Why ``actor`` may not decide on ``stage_name`` now, or ``None`` when they may.

    Order matters: the first failing rule is the one reported.
    """
    stage = state.stage(stage_name)
    if stage is None:
        return Refusal(code="unknown_stage", http_status=404,
                       message=f"progression {state.progression_id} has no stage {stage_name!r}")
    if state.status in FINAL_STATUSES:
        return Refusal(code="progression_closed", http_status=409,
                       message=f"progression {state.progression_id} is {state.status.value}")
    if stage.status != StageStatus.awaiting_approval:
        return Refusal(code="gate_not_open", http_status=409,
                       message=f"stage {stage_name!r} is {stage.status.value}, not awaiting approval")
    if refusal := _gate_role_refusal(stage, actor):
        return refusal
    if Role.admin in actor.roles:  # ... and holds the gate's role
        # Identity never grants an admin a deciding role; should a user row say so anyway (edited in the
        # database), the workflow refuses too, not only the API.
        return Refusal(code="admin_cannot_decide", http_status=403,
                       message="administrators administer but never decide on gates, whatever other role they hold")
    if actor.user_id == state.submitted_by:
        return Refusal(code="own_submission", http_status=403,
                       message="you submitted this progression; segregation of duties forbids deciding on it")
    if actor.team is None:
        return Refusal(code="no_team", http_status=403,
                       message="you belong to no team, so your independence from the owning team cannot be "
                               "shown; an admin must set your team before you decide")
    if actor.team is not None and actor.team == state.team:
        return Refusal(code="own_team", http_status=403,
                       message=f"your team {actor.team!r} owns model {state.model_id}; "
                               "segregation of duties forbids deciding on it")
    if refusal := independence_refusal(state, actor, stage_name):
        return refusal
    return gate_refusal(stage, actor, decision)


def independence_refusal(state: ProgressionState, actor: Actor, stage_name: str) -> Refusal | None:
    """Nobody who decided one stage of an ``independent_stages`` group decides another stage of it."""
    for group in state.independent_stages:
        if stage_name not in group:
            continue
        for other in group:
            other_stage = state.stage(other) if other != stage_name else None
            if other_stage is None:
                continue
            mine = [d for d in other_stage.decisions if d.actor_id == actor.user_id]
            if mine:
                return Refusal(code="not_independent", http_status=403,
                               message=f"you decided stage {other!r} ({mine[0].decision.value}); the policy "
                                       f"requires stages {', '.join(group)} to be decided by different people")
    return None


def acknowledgement_refusal(state: ProgressionState, decision: DecisionKind, comment: str) -> Refusal | None:
    """An approval of an artifact or commit that was rejected before must name each earlier rejection."""
    if decision != DecisionKind.approve or not state.prior_rejections:
        return None
    missing = [p.progression_id for p in state.prior_rejections if p.progression_id not in comment]
    if not missing:
        return None
    return Refusal(code="prior_rejection_unacknowledged", http_status=409,
                   message="the same artifact or source commit was rejected before as "
                           f"{', '.join(missing)}; an approval must acknowledge each earlier rejection by "
                           "naming its progression id in the comment (and say what changed)")


def comment_refusal(decision: DecisionKind, comment: str) -> Refusal | None:
    """A rejection or a change request says why (an approval may be silent)."""
    if decision == DecisionKind.approve or comment.strip():
        return None
    return Refusal(code="comment_required", http_status=409,
                   message="a comment is required to reject or to request changes: tell the developer why")


def _gate_role_refusal(stage: StageState, actor: Actor) -> Refusal | None:
    gate_roles = {a.role for a in stage.approvals}
    if not gate_roles.intersection(actor.roles):
        wanted = " or ".join(sorted(r.value for r in gate_roles))
        return Refusal(code="not_a_gate_role", http_status=403,
                       message=f"stage {stage.name!r} is decided by {wanted}; you hold none of these roles")
    return None


def gate_refusal(stage: StageState, actor: Actor, decision: DecisionKind | None = None) -> Refusal | None:
    """The rules of :func:`decision_refusal` that read only the open gate: the caller holds a gate
    role, has not approved it already, and (to approve) one of their roles still needs approvals.

    The inbox applies these to each gate's record; the rules on the progression's columns (closed,
    own submission, own team) it applies in SQL.
    """
    if refusal := _gate_role_refusal(stage, actor):
        return refusal
    if any(d.actor_id == actor.user_id for d in stage.decisions
           if d.decision == DecisionKind.approve and not d.superseded):
        return Refusal(code="already_decided", http_status=409,
                       message=f"you already approved stage {stage.name!r}; one person counts once")
    if decision == DecisionKind.approve and counting_role(stage, actor) is None:
        return Refusal(code="quorum_met_for_role", http_status=409,
                       message=f"the approvals your roles can give on stage {stage.name!r} are already complete")
    return None


def counting_role(stage: StageState, actor: Actor) -> Role | None:
    """The still-open gate role an approval by ``actor`` counts under (first unsatisfied one they hold)."""
    for progress in stage.approvals:
        if progress.role in actor.roles and not progress.satisfied:
            return progress.role
    return None


def _owner(state: ProgressionState, actor: Actor) -> bool:
    """The submitter, an admin, or a model developer of the owning team."""
    return (actor.user_id == state.submitted_by or Role.admin in actor.roles
            or (Role.model_developer in actor.roles and actor.team == state.team))


def evidence_refusal(state: ProgressionState, actor: Actor) -> Refusal | None:
    """Why ``actor`` may not add evidence now. Independent validators may attach validation reports."""
    if state.status in FINAL_STATUSES:
        return Refusal(code="progression_closed", http_status=409,
                       message=f"progression {state.progression_id} is {state.status.value}")
    if _owner(state, actor) or Role.model_validator in actor.roles:
        return None
    return Refusal(code="not_owner", http_status=403,
                   message=f"only the submitter, a model_developer of team {state.team!r} or a model_validator "
                           "may add evidence")


def withdraw_refusal(state: ProgressionState, actor: Actor) -> Refusal | None:
    """Why ``actor`` may not withdraw the progression: only the submitting team (or an admin) may."""
    if state.status in FINAL_STATUSES:
        return Refusal(code="progression_closed", http_status=409,
                       message=f"progression {state.progression_id} is {state.status.value}")
    if state.status == Status.in_production:
        return Refusal(code="in_production", http_status=409,
                       message=f"{state.model_id} {state.version_id} is in production and keeps its production "
                               "duties (revalidation); it cannot be withdrawn. Leaving production is retirement, "
                               "a governed step: ask a model risk officer to retire it (a rejected revalidation "
                               "retires the model)")
    if _owner(state, actor):
        return None
    return Refusal(code="not_owner", http_status=403,
                   message=f"only the submitter or a model_developer of team {state.team!r} may withdraw it")


# ---- what an approval binds to ------------------------------------------------------------

REVALIDATION_STAGE = "revalidation"
RETIREMENT_STAGE = "retirement"
# Gates a model in production may open: not part of the route a version walks to production.
POST_PRODUCTION_STAGES = frozenset({REVALIDATION_STAGE, RETIREMENT_STAGE})
READS_ALL = "*"
# Evidence names that would pose as spec fields: the spec is fixed when the progression starts.
SPEC_PARTS = {"spec": "spec", "model": "model", "model_id": "model.id", "version": "version",
              "version_id": "version.id", "source": "version.source", "artifact": "version.artifact",
              "artifact_digest": "version.artifact_digest", "features": "features",
              "business_intent": "model.business_intent", "target": "target"}


def _route(state: ProgressionState) -> list[StageState]:
    return [s for s in state.stages if s.name not in POST_PRODUCTION_STAGES]


def reads_of(state: ProgressionState, stage: StageState, names: Iterable[str]) -> set[str]:
    """Which of ``names`` the stage reads. Evidence that no stage of the route reads (a document
    for the reviewers) is read by every stage with an approval gate: a person reads it."""
    names = set(names)
    if stage.name in POST_PRODUCTION_STAGES or stage.reads is None or READS_ALL in stage.reads:
        return names
    assigned: set[str] = set()
    for other in _route(state):
        if other.reads is None or READS_ALL in other.reads:
            return {n for n in names if n in stage.reads} | (names if stage.approvals else set())
        assigned.update(other.reads)
    return {n for n in names if n in stage.reads or (stage.approvals and n not in assigned)}


def _covered_stages(state: ProgressionState, stage_name: str) -> list[StageState]:
    route = _route(state)
    names = [s.name for s in route]
    if stage_name in names:
        return route[: names.index(stage_name) + 1]
    return route  # revalidation: the whole route


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def basis_parts(state: ProgressionState, stage_name: str) -> dict[str, Any]:
    """What a decision on ``stage_name`` is made on: the spec and pinned policy, the evidence read by
    this stage and the stages before it (name -> sha256), and their check results (inputs hashed)."""
    covered = _covered_stages(state, stage_name)
    stage = state.stage(stage_name)
    names: set[str] = set()
    for s in covered + ([stage] if stage is not None and stage not in covered else []):
        names |= reads_of(state, s, state.evidence)
    return {
        "spec": state.spec_digest,
        "policy": state.policy_hash,
        "evidence": {n: state.evidence[n].sha256 for n in sorted(names)},
        "checks": [{"stage": s.name, "check_id": c.check_id, "passed": c.passed,
                    "inputs": hashlib.sha256(_canonical(c.inputs).encode()).hexdigest()}
                   for s in covered for c in s.checks],
    }


def basis_hash(parts: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(_canonical(parts).encode()).hexdigest()


def compute_basis(state: ProgressionState, stage_name: str) -> str:
    return basis_hash(basis_parts(state, stage_name))


def counted_approvals(stage: StageState) -> list[DecisionRecord]:
    """The approvals that count towards the stage's gate now (not superseded)."""
    return [d for d in stage.decisions if d.decision == DecisionKind.approve and not d.superseded]


def basis_refusal(state: ProgressionState, stage_name: str, seen: str | None) -> Refusal | None:
    """A decision made on a basis that is no longer the stage's (the evidence changed while the decider
    was reading). ``None`` when the decider sent no basis: it then binds to the current one."""
    stage = state.stage(stage_name)
    if seen is None or stage is None or stage.basis is None or seen == stage.basis:
        return None
    changed = ", ".join(stage.basis_changed) or "the evidence or check results"
    return Refusal(code="stale_basis", http_status=409,
                   message=f"stage {stage_name!r} changed since you read it ({changed} changed): the basis you "
                           f"decided on is {seen}, the current one is {stage.basis}; read the progression again "
                           "and decide on what is current")


def evidence_change_refusal(state: ProgressionState, changes: dict[str, str]) -> Refusal | None:
    """Why evidence ``changes`` (name -> sha256) may not be applied: a name posing as a spec field,
    a model already approved or in production, or an item frozen after a stage that has passed."""
    for name in sorted(changes):
        if name in SPEC_PARTS:
            field = SPEC_PARTS[name]
            return Refusal(code="spec_immutable", http_status=409,
                           message=f"{field}: the spec of progression {state.progression_id} (model id, version, "
                                   "source, artifact and its digest, features, business intent) cannot change "
                                   "within a progression; start a new version")
    changed = {n: h for n, h in changes.items() if n not in state.evidence or state.evidence[n].sha256 != h}
    if not changed:
        return None
    if state.status in (Status.in_production, Status.approved) or state.deployed_at is not None:
        what = "in production" if state.status == Status.in_production or state.deployed_at else "approved"
        return Refusal(code="evidence_locked", http_status=409,
                       message=f"{state.model_id} {state.version_id} is {what}: its evidence "
                               f"({', '.join(sorted(changed))}) can no longer change; start a new version")
    for name in sorted(changed):
        after = state.frozen_after.get(name)
        frozen_stage = state.stage(after) if after else None
        if frozen_stage is not None and frozen_stage.status == StageStatus.passed:
            return Refusal(code="evidence_frozen", http_status=409,
                           message=f"evidence {name!r} is frozen after stage {after!r}, which has passed: it "
                                   f"cannot change in progression {state.progression_id}; start a new version")
    return None


def refresh_bases(state: ProgressionState) -> None:
    """Recompute each gated stage's current basis and whether each decision still matches it."""
    for stage in state.stages:
        if not stage.approvals or stage.status in (StageStatus.pending, StageStatus.blocked):
            stage.basis = None
        else:
            stage.basis = compute_basis(state, stage.name)
        for d in stage.decisions:
            if d.basis is not None:
                d.basis_matches = d.basis == stage.basis and not d.superseded
