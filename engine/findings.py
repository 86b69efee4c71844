"""Findings, conditions and exceptions: the pure rules shared by the API and the workflows.

A **finding** is raised on a model (tied to the version and stage where it was found) by a validator or
a risk officer who does not belong to the owning team. Lifecycle::

    open --(owner submits remediation)--> remediation_submitted --(verifier closes)--> closed
                                                     \\--(verifier sends back)--> open
    open --(exception on the finding)--> risk_accepted --(exception lapses)--> open

An **exception** (waiver) lets a version proceed despite a failing check, or accepts the risk of a finding,
until its mandatory expiry; a post-model adjustment is an exception of kind ``pma``. On tier 1 (or where the
policy says so) a second person approves it before it takes effect (maker-checker).

Every rule here is a function returning a :class:`~engine.lifecycle.Refusal` or ``None``, so the API's fast
answer and the workflow Update validators cannot disagree. Nothing here reads a clock, a file or a database.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import StrEnum

from pydantic import Field

from engine.lifecycle import (
    Actor,
    ConditionIn,
    ExceptionSummary,
    FindingSummary,
    Model,
    ProgressionState,
    Refusal,
)
from engine.policy import ExceptionRules, FindingRules, GovernancePolicy, Role

FINDING_WORKFLOW = "FindingWorkflow"
EXCEPTION_WORKFLOW = "ExceptionWorkflow"
SIGNAL_GOVERNANCE = "governance_changed"
SIGNAL_FINDING_WAIVER = "finding_waiver"
UPDATE_FINDING_READY = "ready"
UPDATE_REMEDIATE = "submit_remediation"
UPDATE_VERIFY = "verify_remediation"
UPDATE_APPROVE_EXCEPTION = "approve_exception"
QUERY_FINDING = "finding"
QUERY_EXCEPTION = "exception"

# Roles that raise findings, verify remediations and grant exceptions.
REVIEW_ROLES = frozenset({Role.model_validator, Role.model_risk_officer})


class FindingStatus(StrEnum):
    open = "open"
    remediation_submitted = "remediation_submitted"
    closed = "closed"
    risk_accepted = "risk_accepted"


# Statuses in which a finding bears on the model (blocks, counts as open in the register).
OPEN_STATUSES = frozenset({FindingStatus.open, FindingStatus.remediation_submitted})


class ExceptionKind(StrEnum):
    check = "check"  # a failing check of one version
    finding = "finding"  # the risk of an open finding is accepted
    pma = "pma"  # a post-model adjustment (magnitude and rationale)


class ExceptionStatus(StrEnum):
    pending_approval = "pending_approval"  # maker-checker: waits for the second person
    active = "active"
    lapsed = "lapsed"  # expired: what it waived is back in force; renewals are new exceptions


class VerifyOutcome(StrEnum):
    close = "close"
    reopen = "reopen"


def finding_workflow_id(finding_id: str) -> str:
    return f"finding-{finding_id}"


def exception_workflow_id(exception_id: str) -> str:
    return f"exception-{exception_id}"


class FindingRecord(Model):
    """A finding as the workflow, the database and the API know it."""

    finding_id: str
    model_id: str
    team: str  # the owning team: remediates; never verifies
    business_intent: str
    version_id: str | None = None
    progression_id: str | None = None
    stage: str | None = None
    severity: str
    title: str = Field(min_length=1, max_length=300)
    description: str = Field(default="", max_length=10_000)
    evidence_refs: list[str] = Field(default_factory=list)
    due_at: datetime
    status: FindingStatus = FindingStatus.open
    condition: bool = False  # raised as a condition of an approval
    decision_id: str | None = None
    raised_by: str
    raised_by_username: str
    raised_at: datetime
    remediated_by: str | None = None
    remediation_note: str | None = None
    remediation_evidence: list[str] = Field(default_factory=list)
    remediated_at: datetime | None = None
    verified_by: str | None = None
    verified_at: datetime | None = None
    closed_at: datetime | None = None
    reminded: bool = False
    overdue: bool = False
    escalated_to: Role | None = None
    waived_by: str | None = None  # the active exception accepting its risk

    def summary(self) -> FindingSummary:
        return FindingSummary(finding_id=self.finding_id, severity=self.severity, status=self.status.value,
                              title=self.title, condition=self.condition, stage=self.stage,
                              version_id=self.version_id, due_at=self.due_at, overdue=self.overdue)


class ExceptionRecord(Model):
    exception_id: str
    kind: ExceptionKind
    model_id: str
    team: str
    business_intent: str
    version_id: str  # scope: one model version
    progression_id: str | None = None
    check_id: str | None = None  # kind check
    finding_id: str | None = None  # kind finding
    reason: str = Field(min_length=1, max_length=10_000)
    magnitude: float | None = Field(default=None, allow_inf_nan=False)  # kind pma
    expires_at: datetime
    status: ExceptionStatus
    needs_checker: bool
    requested_by: str
    requested_by_username: str
    requested_at: datetime
    approved_by: str | None = None
    approved_by_username: str | None = None
    approved_at: datetime | None = None
    lapsed_at: datetime | None = None
    # The credentials the maker and the checker acted with, and who issued them (as decisions record theirs):
    # an auditor sees when one administrator issued both halves of a maker-checker grant.
    requested_credential_id: str | None = None
    requested_credential_issued_by: str | None = None
    approved_credential_id: str | None = None
    approved_credential_issued_by: str | None = None

    def summary(self) -> ExceptionSummary:
        return ExceptionSummary(exception_id=self.exception_id, kind=self.kind.value, status=self.status.value,
                                version_id=self.version_id, check_id=self.check_id, finding_id=self.finding_id,
                                expires_at=self.expires_at)


# ---- workflow inputs ------------------------------------------------------------------------


class FindingInput(Model):
    finding: FindingRecord
    rules: FindingRules


class RemediationInput(Model):
    actor: Actor
    note: str = Field(min_length=1, max_length=10_000)
    evidence_refs: list[str] = Field(default_factory=list, max_length=50)
    request_id: str


class VerifyInput(Model):
    actor: Actor
    outcome: VerifyOutcome
    comment: str = Field(min_length=1, max_length=10_000)
    request_id: str


class FindingWaiver(Model):
    """Signal from an exception workflow: its waiver of the finding took effect (active) or lapsed."""

    exception_id: str
    active: bool


class ExceptionInput(Model):
    exception: ExceptionRecord
    rules: ExceptionRules


class ApproveExceptionInput(Model):
    actor: Actor
    comment: str = Field(default="", max_length=10_000)
    request_id: str


# ---- who may do what --------------------------------------------------------------------------


def _reviewer_refusal(actor: Actor, team: str, what: str) -> Refusal | None:
    """A validator or risk officer independent of the owning team (admins never review)."""
    if not REVIEW_ROLES.intersection(actor.roles):
        return Refusal(code="not_a_reviewer", http_status=403,
                       message=f"{what} is for a model_validator or model_risk_officer; you hold "
                               f"{', '.join(sorted(r.value for r in actor.roles)) or 'no role'}")
    if actor.team is None:
        return Refusal(code="no_team", http_status=403,
                       message="you belong to no team, so your independence from the owning team cannot be shown")
    if actor.team == team:
        return Refusal(code="own_team", http_status=403,
                       message=f"your team {team!r} owns this model; segregation of duties forbids {what}")
    return None


def raise_refusal(actor: Actor, *, team: str, severity: str, rules: FindingRules | None) -> Refusal | None:
    """Why ``actor`` may not raise a finding of ``severity`` on a model of ``team``."""
    if refusal := _reviewer_refusal(actor, team, "raising a finding"):
        return refusal
    return severity_refusal(severity, rules)


def severity_refusal(severity: str, rules: FindingRules | None) -> Refusal | None:
    if rules is None:
        return Refusal(code="findings_not_configured", http_status=409,
                       message="the model's policy has no findings section (severity scale, due dates)")
    if severity not in rules.severities:
        return Refusal(code="unknown_severity", http_status=422,
                       message=f"severity {severity!r} is not in the policy's scale ({', '.join(rules.severities)})")
    return None


def conditions_refusal(conditions: Iterable[ConditionIn], rules: FindingRules | None,
                       now: datetime) -> Refusal | None:
    for i, condition in enumerate(conditions):
        if refusal := severity_refusal(condition.severity, rules):
            return Refusal(code=refusal.code, http_status=refusal.http_status,
                           message=f"conditions[{i}].severity: {refusal.message}")
        if rules is not None and (refusal := due_refusal(rules, condition.severity, condition.due_at, now,
                                                         field=f"conditions[{i}].due_at")):
            return refusal
    return None


def due_refusal(rules: FindingRules, severity: str, due_at: datetime | None, now: datetime, *,
                field: str = "due_at") -> Refusal | None:
    """A due date is in the future and no later than the policy's period for the severity: a reviewer may ask for
    remediation sooner, never later (a date a century away would silence the reminders and the escalation)."""
    if due_at is None:
        return None
    if due_at <= now:
        return Refusal(code="due_in_past", http_status=422,
                       message=f"{field}: {due_at.isoformat()} is not in the future")
    latest = default_due(rules, severity, now)
    if due_at > latest:
        return Refusal(code="due_beyond_policy", http_status=422,
                       message=f"{field}: {due_at.isoformat()} is later than the policy allows for a {severity} "
                               f"finding ({rules.due[severity]}, i.e. {latest.isoformat()}); a later date needs an "
                               "exception")
    return None


def remediation_refusal(finding: FindingRecord, actor: Actor) -> Refusal | None:
    """Only a model developer of the owning team submits a remediation, on an open finding."""
    if finding.status != FindingStatus.open:
        return Refusal(code="finding_not_open", http_status=409,
                       message=f"finding {finding.finding_id} is {finding.status.value}; a remediation is "
                               "submitted on an open finding")
    if Role.model_developer not in actor.roles or actor.team != finding.team:
        return Refusal(code="not_owning_team", http_status=403,
                       message=f"only a model_developer of team {finding.team!r} (the owning team) submits a "
                               f"remediation of finding {finding.finding_id}")
    return None


def verification_refusal(finding: FindingRecord, actor: Actor) -> Refusal | None:
    """A validator or risk officer who did not submit the remediation and is not of the owning team."""
    if finding.status != FindingStatus.remediation_submitted:
        return Refusal(code="no_remediation", http_status=409,
                       message=f"finding {finding.finding_id} is {finding.status.value}; only a submitted "
                               "remediation is verified")
    if actor.user_id == finding.remediated_by:
        return Refusal(code="own_remediation", http_status=403,
                       message="you submitted this remediation; someone else verifies it")
    return _reviewer_refusal(actor, finding.team, "verifying this remediation")


def grant_refusal(actor: Actor, *, team: str, policy: GovernancePolicy, kind: ExceptionKind,
                  expires_at: datetime | None, now: datetime, check_id: str | None = None,
                  finding: FindingRecord | None = None, magnitude: float | None = None,
                  version_id: str | None = None) -> Refusal | None:
    """Why ``actor`` may not request (and, without maker-checker, grant) this exception."""
    rules = policy.exceptions
    if rules is None:
        return Refusal(code="exceptions_not_allowed", http_status=409,
                       message=f"the {policy.intent} policy names nobody who may grant exceptions")
    if not set(rules.grant_roles).intersection(actor.roles):
        return Refusal(code="not_an_exception_role", http_status=403,
                       message=f"exceptions under the {policy.intent} policy are granted by "
                               f"{' or '.join(r.value for r in rules.grant_roles)}")
    if refusal := _reviewer_refusal(actor, team, "waiving its checks or findings"):
        return refusal
    if kind == ExceptionKind.check and not check_id:
        return Refusal(code="scope_required", http_status=422, message="check_id: an exception on a check names it")
    if kind == ExceptionKind.check and check_id not in {c.id for s in policy.stages for c in s.checks}:
        return Refusal(code="unknown_check", http_status=422,
                       message=f"check_id: the {policy.intent} policy has no check {check_id!r}")
    if kind == ExceptionKind.finding:
        if finding is None:
            return Refusal(code="scope_required", http_status=422,
                           message="finding_id: an exception on a finding names an open finding of the model")
        if finding.status not in OPEN_STATUSES:
            return Refusal(code="finding_not_open", http_status=409,
                           message=f"finding {finding.finding_id} is {finding.status.value}")
        # A waiver accepts the finding's risk for the model: it must be scoped to the version the finding was
        # found on, or an exception "for" one version would silence another version's finding.
        if finding.version_id and version_id and finding.version_id != version_id:
            return Refusal(code="version_mismatch", http_status=422,
                           message=f"version_id: finding {finding.finding_id} was found on version "
                                   f"{finding.version_id}; an exception on it is scoped to that version, not "
                                   f"{version_id}")
    if kind == ExceptionKind.pma and magnitude is None:
        return Refusal(code="magnitude_required", http_status=422,
                       message="magnitude: a post-model adjustment records its magnitude")
    return expiry_refusal(rules, expires_at, now)


def expiry_refusal(rules: ExceptionRules, expires_at: datetime | None, now: datetime) -> Refusal | None:
    if expires_at is None:
        return Refusal(code="expiry_required", http_status=422,
                       message="expires_at: every exception has an expiry date")
    if expires_at <= now:
        return Refusal(code="expiry_in_past", http_status=422,
                       message=f"expires_at: {expires_at.isoformat()} is not in the future")
    if expires_at - now > rules.max_expiry_delta:
        return Refusal(code="expiry_beyond_maximum", http_status=422,
                       message=f"expires_at: the policy allows exceptions of at most {rules.max_expiry}; "
                               "a longer need is a new exception when this one lapses")
    return None


def exception_approval_refusal(exception: ExceptionRecord, actor: Actor,
                               rules: ExceptionRules | None) -> Refusal | None:
    """The checker of maker-checker: a different person holding a grant role, independent of the owning team."""
    if exception.status == ExceptionStatus.lapsed:
        return Refusal(code="exception_lapsed", http_status=409,
                       message=f"exception {exception.exception_id} lapsed; a renewal is a new exception")
    if exception.status != ExceptionStatus.pending_approval:
        return Refusal(code="exception_not_pending", http_status=409,
                       message=f"exception {exception.exception_id} is {exception.status.value}")
    if actor.user_id == exception.requested_by:
        return Refusal(code="own_exception", http_status=403,
                       message="you requested this exception; maker-checker needs a second person to approve it")
    if rules is None or not set(rules.grant_roles).intersection(actor.roles):
        roles = " or ".join(r.value for r in rules.grant_roles) if rules else "nobody"
        return Refusal(code="not_an_exception_role", http_status=403,
                       message=f"exceptions are approved by {roles}")
    return _reviewer_refusal(actor, exception.team, "approving its exception")


# ---- what findings and exceptions do to a progression ----------------------------------------------


def default_due(rules: FindingRules, severity: str, now: datetime) -> datetime:
    return now + rules.due_delta(severity)


def active_exceptions(exceptions: Iterable[ExceptionSummary], version_id: str,
                      now: datetime | None) -> list[ExceptionSummary]:
    """Active exceptions scoped to ``version_id``; with ``now``, also not past their expiry."""
    return [e for e in exceptions if e.status == ExceptionStatus.active.value and e.version_id == version_id
            and (now is None or e.expires_at > now)]


def waived_checks(state: ProgressionState, now: datetime | None) -> dict[str, str]:
    """check id -> id of the active exception that waives it for this version (``now``: see above)."""
    return {e.check_id: e.exception_id for e in active_exceptions(state.exceptions, state.version_id, now)
            if e.kind == ExceptionKind.check.value and e.check_id}


# The ``stage`` of findings raised by monitoring a version in production: they bear on that version, and do not
# keep another version (often their remediation) from production.
MONITORING_STAGE = "monitoring"


def blocking_findings(state: ProgressionState, rules: FindingRules | None, stage: str) -> list[FindingSummary]:
    """Open findings of the model that keep ``stage`` from completing under the policy's blocking rules."""
    if rules is None:
        return []
    found: list[FindingSummary] = []
    for block in rules.blocks:
        if block.stage != stage:
            continue
        for f in state.findings:
            if f.stage == MONITORING_STAGE and f.version_id != state.version_id:
                continue
            if f.status in OPEN_STATUSES and f.severity in block.severities \
                    and not (block.unless_condition and f.condition) and f not in found:
                found.append(f)
    return found


def blocking_refusal(state: ProgressionState, rules: FindingRules | None, stage: str) -> Refusal | None:
    blocking = blocking_findings(state, rules, stage)
    if not blocking:
        return None
    listed = ", ".join(f"{f.finding_id} ({f.severity}: {f.title})" for f in blocking)
    return Refusal(code="blocking_findings", http_status=409,
                   message=f"stage {stage!r} cannot be approved while these findings are open: {listed}; they are "
                           "remediated and closed, or waived by an exception, first")


def bearing_findings(state: ProgressionState, rules: FindingRules | None, stage: str) -> list[FindingSummary]:
    """Open findings shown on a gate: those raised at the stage and those its blocking rules name."""
    raised_here = [f for f in state.findings if f.status in OPEN_STATUSES and f.stage == stage]
    return raised_here + [f for f in blocking_findings(state, rules, stage) if f not in raised_here]


def overdue(due_at: datetime, now: datetime) -> bool:
    return now >= due_at


def reminder_at(finding: FindingRecord, rules: FindingRules) -> datetime | None:
    delta: timedelta | None = rules.remind_delta
    return finding.due_at - delta if delta is not None else None
