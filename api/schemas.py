"""Request and response bodies of the HTTP API (pydantic v2, documented in /openapi.json).

Request bodies forbid unknown fields: a body that tries to name the actor
(``actor``, ``submitted_by``, ...) is rejected with 422 instead of being silently
ignored, so a client never believes it acted as someone else.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Lineage and ProgressionDetail (GET /progressions/{id}) live with the state, so the SDK reads them too.
from engine.lifecycle import ConditionIn, DecisionKind, Lineage, ProgressionDetail, ProgressionState  # noqa: F401
from engine.policy import Role

# Paging offsets beyond this are refused (422): the databases overflow on offsets past 64 bits.
MAX_OFFSET = 1_000_000_000


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- progressions -----------------------------------------------------------------------------


class DecisionRequest(Body):
    stage: str = Field(min_length=1, max_length=64)
    # approve_with_conditions: approves and raises ``conditions`` (findings of the model) in one act.
    decision: DecisionKind | Literal["approve_with_conditions"]
    conditions: list[ConditionIn] = Field(default_factory=list, max_length=20)
    comment: str = Field(default="", max_length=10_000)
    # The basis the decider saw: ``stages[i].basis`` of the progression they read. A decision on a basis
    # that is no longer current is refused (409 stale_basis); without it the decision binds to the basis
    # current when the workflow accepts it.
    basis: str | None = Field(default=None, pattern=r"^sha256:[0-9a-f]{64}$")


class EvidenceCheck(BaseModel):
    name: str
    sha256: str
    status: Literal["ok", "missing", "corrupted"]
    actual_sha256: str | None = None


class ApprovalCheck(BaseModel):
    stage: str
    decision_id: str
    actor: str
    basis: str | None  # what the approval bound to
    current_basis: str | None  # the stage's basis recomputed from the recorded state
    matches: bool
    deployed: bool | None = None  # among the approvals the deployment carried (None: not deployed)


class ProgressionVerification(BaseModel):
    """``GET /progressions/{id}/verify``: evidence re-hashed from the store, every counted approval's
    basis recomputed, and the deployment's approvals compared with them."""

    progression_id: str
    ok: bool
    status: str
    spec_digest: str | None
    spec_matches: bool | None  # the stored progression.yaml still hashes to the pinned spec digest
    evidence: list[EvidenceCheck]
    approvals: list[ApprovalCheck]
    deployment: dict[str, Any] | None = None
    problems: list[str]


class WithdrawRequest(Body):
    reason: str = Field(min_length=1, max_length=10_000)


class ProgressionSummary(BaseModel):
    id: str
    model_id: str
    version_id: str
    team: str
    business_intent: str
    risk_tier: int
    status: str
    current_stage: str | None
    waiting_on: list[str]
    submitted_by: str
    gate_opened_at: datetime | None
    sla_due_at: datetime | None
    escalated: bool
    revalidation_due_at: datetime | None
    revalidation_overdue: bool
    started_at: datetime
    updated_at: datetime


class ProgressionPage(BaseModel):
    items: list[ProgressionSummary]
    total: int
    limit: int
    offset: int
    next_offset: int | None


ProgressionOut = ProgressionState


# ---- inbox ------------------------------------------------------------------------------------


class InboxItem(BaseModel):
    progression_id: str
    model_id: str
    model_name: str
    version_id: str
    team: str
    business_intent: str
    risk_tier: int
    stage: str
    roles: list[Role] = Field(description="the caller's roles this gate is waiting on")
    approvals: list[dict[str, Any]]
    gate_opened_at: datetime | None
    waiting_seconds: float | None
    sla_due_at: datetime | None
    seconds_to_sla: float | None = Field(description="negative when the SLA has passed")
    escalated: bool
    submitted_by: str


class Inbox(BaseModel):
    items: list[InboxItem]
    total: int


# ---- catalog ----------------------------------------------------------------------------------


class VersionOut(BaseModel):
    version_id: str
    source: str
    artifact: str
    features: list[str]
    created_at: datetime
    progression_id: str | None = None
    status: str | None = None
    current_stage: str | None = None
    waiting_on: list[str] = Field(default_factory=list)
    revalidation_due_at: datetime | None = None
    revalidation_overdue: bool = False


class ModelOut(BaseModel):
    id: str
    name: str
    team: str
    business_intent: str
    created_at: datetime
    updated_at: datetime
    latest_version: str | None = None
    latest_status: str | None = None
    versions_count: int = 0
    revalidation_overdue: bool = False


class ModelDetail(ModelOut):
    versions: list[VersionOut]


class ModelPage(BaseModel):
    items: list[ModelOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None


# ---- policies ---------------------------------------------------------------------------------


class PolicyVersionOut(BaseModel):
    policy_hash: str
    title: str
    risk_tier: int
    active: bool
    published_at: datetime


class PolicySummary(BaseModel):
    intent: str
    title: str
    risk_tier: int
    hash: str
    stages: list[str]
    revalidation: str | None


class CheckOut(BaseModel):
    id: str
    description: str
    expr: str
    builtin: bool = False


class ApprovalOut(BaseModel):
    role: Role
    count: int
    sla: str | None = None
    escalate_to: Role | None = None


class StageRouteOut(BaseModel):
    name: str
    description: str | None = None
    checks: list[CheckOut]
    approvals: list[ApprovalOut]
    action: str | None = None


class PolicyDetail(PolicySummary):
    guidance: list[str]
    route: list[StageRouteOut]
    yaml: str
    versions: list[PolicyVersionOut]


class DryRunRequest(Body):
    spec: str = Field(min_length=1, description="the progression.yaml text")
    evidence: dict[str, Any] = Field(
        default_factory=dict, description="evidence by name: parsed JSON values, or text (used as is)")


class DryRunCheck(BaseModel):
    id: str
    description: str
    passed: bool
    reason: str


class DryRunStage(BaseModel):
    name: str
    checks: list[DryRunCheck]
    approvals: list[ApprovalOut]
    action: str | None = None
    passes_now: bool


class DryRunResult(BaseModel):
    intent: str
    policy_hash: str
    progression_id: str
    target: str
    route: list[DryRunStage]
    checks_passing: int
    checks_failing: int
    approvals_needed: list[dict[str, Any]]
    unknown_features: list[str]
    missing_evidence: list[str]
    fix_first: DryRunCheck | None = Field(description="the first failing check on the route, if any")
    fix_first_stage: str | None = None


# ---- features ---------------------------------------------------------------------------------


class FeatureIn(Body):
    description: str = Field(default="", max_length=1000)
    tags: list[str] = Field(default_factory=list, max_length=50)


class FeatureOut(BaseModel):
    name: str
    description: str
    tags: list[str]
    updated_at: datetime | None = None
    updated_by: str | None = None


class FeatureList(BaseModel):
    items: list[FeatureOut]
    total: int


# ---- audit ------------------------------------------------------------------------------------


class AuditEventOut(BaseModel):
    seq: int
    event_id: str
    event_type: str
    occurred_at: datetime
    recorded_at: datetime
    actor_id: str | None
    progression_id: str | None
    model_id: str | None
    stage: str | None
    payload: dict[str, Any]
    prev_hash: str
    hash: str


class AuditPage(BaseModel):
    items: list[AuditEventOut]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page (also to poll for newer events later)")
    has_more: bool = Field(description="more matching events exist after this page right now")
    limit: int


class ChainVerificationOut(BaseModel):
    ok: bool
    events_checked: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    first_bad_event_id: str | None = None
    problem: str | None = None


# ---- users ------------------------------------------------------------------------------------


class UserCreate(Body):
    username: str = Field(min_length=1, max_length=128)
    roles: list[Role] = Field(min_length=1)
    team: str | None = Field(default=None, max_length=64)
    display_name: str = Field(default="", max_length=200)


class TokenCreate(Body):
    name: str = Field(default="", max_length=100)


class RoleGrantOut(BaseModel):
    id: str
    user_id: str
    username: str | None = None
    role: str
    status: Literal["pending", "approved"]
    reason: str
    proposed_by: str
    proposed_at: datetime
    approved_by: str | None = None
    approved_at: datetime | None = None


class RoleGrantCreate(Body):
    role: Role
    reason: str = Field(default="", max_length=1000)


class UserOut(BaseModel):
    id: str
    username: str
    display_name: str
    team: str | None
    roles: list[str]
    active: bool
    external: bool
    created_at: datetime
    grants: list[RoleGrantOut] = Field(default_factory=list, description="who proposed and approved each role")


class TokenOut(BaseModel):
    id: str
    prefix: str
    name: str
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    issued_by: str | None = Field(default=None, description="admin, enrollment:<admin> or bootstrap")


class NewToken(TokenOut):
    token: str = Field(description="the secret; shown only in this answer")


class UserCreated(BaseModel):
    user: UserOut
    token: NewToken | None = Field(description="none for a person with a deciding or admin role pending: they "
                                               "get their own token by enrollment once the role is approved")
    next_steps: list[str] = Field(default_factory=list)


class EnrollmentCreated(BaseModel):
    id: str
    user_id: str
    code: str = Field(description="one-time code for the person (out of band); shown only in this answer")
    expires_at: datetime
    created_by: str


class EnrollRequest(Body):
    code: str = Field(min_length=1, max_length=200)
    name: str = Field(default="", max_length=100)


class IntentChange(Body):
    business_intent: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=2000)


class Me(UserOut):
    actions: list[str]
    reads_all_teams: bool


# ---- operations -------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    database: str
    temporal: str
