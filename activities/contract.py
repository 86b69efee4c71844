"""The activities' contract: their names and their pydantic inputs and results, nothing else.

The workflow schedules activities by these names with these models; the implementations (progression.py,
notify.py, promotion.py) take and return them. No database, HTTP or CEL here, so the workflow can import it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.findings import ExceptionRecord, FindingRecord
from engine.lifecycle import (
    CheckResult,
    DecisionRecord,
    EventType,
    EvidenceRef,
    GovernanceSnapshot,
    PriorOutcome,
    ProgressionState,
    RuleOutcome,
)
from engine.policy import FindingRules, MonitoringRules, Role, StageDef
from engine.spec import ProgressionSpec

# Activity names (``@activity.defn(name=...)``): what the workflow's history records for each.
REGISTER_PROGRESSION = "register_progression"
RECORD_FAILURE = "record_failure"
EVALUATE_CHECKS = "evaluate_checks"
RECORD = "record"
DEPLOY = "deploy"
SAVE_FINDING = "save_finding"  # findings and exceptions (workflows/finding.py)
SAVE_EXCEPTION = "save_exception"
EVALUATE_MONITORING = "evaluate_monitoring"  # the policy's monitoring rules over one period's results
START_FINDINGS = "start_findings"  # findings raised by monitoring: their own workflows, not children

# The heartbeat timeout of every scheduled activity that waits on I/O (all but ``evaluate_monitoring``, pure CEL
# over one period's numbers, and ``record``, a local activity): the activity heartbeats every few seconds while it
# runs (``activities.heartbeat``), so an attempt lost with its worker (SIGKILL, OOM, a lost host) is timed out and
# retried on another worker after this, not after its start-to-close timeout (60 s; 5 min for checks and
# deployment). 30 s leaves a beat or two of slack on a loaded worker (the SDK sends at most every 24 s).
HEARTBEAT_TIMEOUT = timedelta(seconds=30)


NotificationKind = Literal["gate_opened", "escalated", "decided", "finished", "reopened", "finding", "exception",
                           "flagged", "monitoring", "retirement"]


class Notification(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: str  # stable across retries; also the id of the notification.sent audit event
    kind: NotificationKind
    progression_id: str
    model_id: str
    stage: str | None = None
    roles: list[Role] = Field(default_factory=list)  # who should act or know
    message: str


class Deployment(BaseModel):
    """What to promote; ``deployment_key`` is the same on every retry of one deployment."""

    model_config = ConfigDict(extra="forbid")

    deployment_key: str
    progression_id: str
    model_id: str
    version_id: str
    artifact: str
    stage: str
    business_intent: str
    policy_hash: str
    artifact_digest: str | None = None  # sha256:<hex> of the artifact the approvals bound to
    approval_bases: list[str] = []  # the basis hash of every approval that allowed this deployment
    action: Literal["deploy", "undeploy"] = "deploy"  # undeploy: the model was retired


class DeploymentReceipt(BaseModel):
    deployment_id: str
    target: str
    details: dict[str, Any] = {}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AuditEventIn(_Model):
    """An audit event built by the workflow; ``progression_id``/``model_id`` come from the state."""

    event_id: str
    event_type: EventType
    occurred_at: datetime
    actor_id: str | None = None
    stage: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class RegisterInput(_Model):
    state: ProgressionState
    spec: ProgressionSpec
    spec_yaml: str
    events: list[AuditEventIn]


class RegisterResult(_Model):
    created: bool  # False when a retry found the rows already written
    # Earlier rejections of the same artifact or source commit (any model id).
    prior_rejections: list[PriorOutcome] = Field(default_factory=list)
    # The model's findings and exceptions when the progression registered (its first governance snapshot).
    governance: GovernanceSnapshot | None = None


class RecordFailureInput(_Model):
    """A failed workflow: the state (status failed, with the reason) and its progression.failed event."""

    state: ProgressionState
    spec: ProgressionSpec
    events: list[AuditEventIn]


class CheckSubject(_Model):
    """What a check run needs of the progression (patch ``lean-payloads``): whose evidence, not the whole state."""

    progression_id: str
    model_id: str
    evidence: dict[str, EvidenceRef]


class EvaluateChecksInput(_Model):
    # Before the patch ``lean-payloads``: the whole state (evidence refs; also synced to the read model, which the
    # next ``record`` writes anyway). Since: ``subject`` instead, and the results leave out the texts the workflow
    # already has (``lean_results``).
    state: ProgressionState | None = None
    subject: CheckSubject | None = None
    spec: ProgressionSpec
    stage: StageDef
    is_first_stage: bool
    now: datetime  # workflow time, so results do not depend on when a retry runs
    event_id_prefix: str  # check events get f"{prefix}/{check_id}"
    events_before: list[AuditEventIn] = Field(default_factory=list)  # e.g. stage.entered, appended first


class EvaluateChecksResult(_Model):
    # With a ``subject`` (patch ``lean-payloads``): a check of the stage definition comes back with its
    # ``description`` and ``expr`` empty (the workflow has them in the stage definition; the ``check.evaluated``
    # audit events carry them in full); see ``lean_results`` / ``full_results``.
    results: list[CheckResult]


def lean_results(stage: StageDef, results: list[CheckResult]) -> list[CheckResult]:
    """The results without the texts the stage definition holds (the built-in checks keep theirs)."""
    defs = {c.id: c for c in stage.checks}
    return [r.model_copy(update={"description": "", "expr": ""})
            if (d := defs.get(r.check_id)) is not None and (d.description, d.expr) == (r.description, r.expr) else r
            for r in results]


def full_results(stage: StageDef, results: list[CheckResult]) -> list[CheckResult]:
    """``lean_results`` undone: the stage definition's texts put back (what the state and its snapshot keep)."""
    defs = {c.id: c for c in stage.checks}
    return [r.model_copy(update={"description": d.description, "expr": d.expr})
            if (d := defs.get(r.check_id)) is not None and not r.description and not r.expr else r
            for r in results]


class RecordInput(_Model):
    """Events to append, the state to mirror, and optionally a decision row and evidence links."""

    state: ProgressionState
    events: list[AuditEventIn] = Field(default_factory=list)
    decision: DecisionRecord | None = None
    evidence: list[EvidenceRef] = Field(default_factory=list)
    notifications: list[Notification] = Field(default_factory=list)


class RecordResult(_Model):
    events_written: int
    read_model_updated: bool
    notifications_sent: int


class DeployInput(_Model):
    deployment: Deployment


class DeployResult(_Model):
    receipt: DeploymentReceipt


# ---- findings and exceptions (workflows/finding.py) ----


class SaveFindingInput(_Model):
    record: FindingRecord
    version: int
    at: datetime  # workflow time of the change
    events: list[AuditEventIn] = Field(default_factory=list)
    notifications: list[Notification] = Field(default_factory=list)


class SaveExceptionInput(_Model):
    record: ExceptionRecord
    version: int
    at: datetime
    events: list[AuditEventIn] = Field(default_factory=list)
    notifications: list[Notification] = Field(default_factory=list)


class SaveResult(_Model):
    written: bool
    progressions_told: int


# ---- monitoring (workflows/progression.py, patch ``monitoring``) ----


class EvaluateMonitoringInput(_Model):
    rules: MonitoringRules
    metrics: dict[str, float | dict[str, float]]


class EvaluateMonitoringResult(_Model):
    outcomes: list[RuleOutcome]


class StartFindingsInput(_Model):
    """Findings a production workflow raised (monitoring breaches, missing results): each gets its deadline
    workflow, started by id (a retry finds it), independent of the progression that outlives or not."""

    findings: list[FindingRecord]
    rules: FindingRules


class StartFindingsResult(_Model):
    started: int
