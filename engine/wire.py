"""The HTTP API's response bodies that its clients read too (the SDK, the CLI, the web UI's templates).

One definition, imported by ``api`` (which serves them) and ``client`` (which parses them): pure pydantic, no
behaviour, so the client never imports the API. Request bodies and admin-only payloads stay in ``api.schemas``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.lifecycle import ResolvedFeature
from engine.policy import Role

# The server's default limits (``engine.settings``: max_yaml_bytes, max_request_bytes); clients refuse a file
# over them before reading it.
SPEC_MAX_BYTES = 256 * 1024
REQUEST_MAX_BYTES = 5 * 1024 * 1024


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
    submitted_by_username: str | None = None
    submitted_by_display_name: str | None = None
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
    next_offset: int | None = Field(description="offset paging (kept for old clients; prefer next_cursor)")
    next_cursor: str | None = Field(default=None, description=(
        "pass as ?cursor= for the next page (keyset: stable while progressions start); null on the last page"))


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


class TodoItem(BaseModel):
    """One thing waiting on the caller (``GET /api/v1/todo``)."""

    kind: Literal["gate", "evidence", "changes_requested", "finding_remediation", "finding_verification",
                  "intent_change"]
    title: str  # in words, for a person
    model_id: str
    progression_id: str | None = None
    finding_id: str | None = None
    stage: str | None = None
    since: datetime | None = None  # waiting since
    due_at: datetime | None = None  # an SLA or a due date
    overdue: bool = False
    command: str | None = None  # the CLI command that does it
    url: str  # the web page where it is done


class Todo(BaseModel):
    """Everything waiting on the caller, most urgent first: overdue, then by due date, then oldest."""

    items: list[TodoItem]
    total: int


class Inbox(BaseModel):
    items: list[InboxItem]
    total: int = Field(description="open gates waiting on the caller's roles (before the per-gate rules of the "
                                   "page), counted up to 1,000")
    total_more: bool = Field(default=False, description="more open gates than ``total`` (counting stops at 1,000)")
    limit: int = 50
    next_cursor: str | None = Field(default=None, description=(
        "pass as ?cursor= for the next page (keyset: stable while gates open); null on the last page"))


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
    production_version: str | None = Field(default=None, description="the version in production now, if any")
    production_progression_id: str | None = None
    versions_count: int = 0
    revalidation_overdue: bool = False


class IntentChangeOut(BaseModel):
    id: str
    model_id: str
    from_intent: str
    to_intent: str
    reason: str
    status: Literal["pending", "approved", "rejected"]
    proposed_by: str = Field(description="the proposing model risk officer's username")
    proposed_at: datetime
    decided_by: str | None = Field(default=None, description="who approved or rejected it")
    decided_at: datetime | None = None
    decision_reason: str | None = None


class ModelDetail(ModelOut):
    versions: list[VersionOut]
    pending_intent_change: IntentChangeOut | None = Field(
        default=None, description="a proposed change of intent waiting for a second model risk officer")


class ModelPage(BaseModel):
    items: list[ModelOut]
    total: int
    limit: int
    offset: int
    next_offset: int | None


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


class EvidenceProblem(BaseModel):
    """One way an evidence item breaks its policy's contract (``engine.contracts``). ``path`` is a JSON path
    inside the item (``$`` is the whole item, ``$#Section`` a document's section); ``field`` names it as the
    spec would (``evidence.fairness.groups``); ``code`` is stable (missing_field, wrong_type, out_of_range,
    not_allowed, unknown_field, not_structured, not_a_document, too_short, missing_section, ...)."""

    evidence: str
    path: str
    field: str
    code: str
    expected: str
    got: str
    message: str


class EvidenceContractOut(BaseModel):
    """``GET /api/v1/policies/{intent}/evidence``: what one evidence item must look like."""

    model_config = ConfigDict(populate_by_name=True)

    name: str
    kind: Literal["data", "document"]
    description: str
    path: str = Field(description="where `progression init` puts it in a new repository")
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema",
                                               description="JSON Schema (draft 2020-12) of a data item")
    sections: list[str] = Field(default_factory=list, description="headings a document must have")
    min_length: int | None = None
    example: Any = None
    frozen_after: str | None = None
    read_by_stages: list[str] = Field(default_factory=list)
    needed_by: str | None = Field(default=None, description="the first stage that reads it")


class EvidenceContracts(BaseModel):
    intent: str
    policy_hash: str
    title: str = ""
    risk_tier: int | None = None
    requires_artifact_digest: bool = Field(default=False, description="the spec must carry version.artifact_digest")
    contracts: list[EvidenceContractOut]


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
    features: list[FeatureNote] = Field(default_factory=list,
                                        description="the spec's features the policy forbids or conditions")
    evidence_problems: list[EvidenceProblem] = Field(
        default_factory=list, description="evidence that breaks its contract; a start refuses it (422)")
    unchanged_examples: list[str] = Field(
        default_factory=list, description="evidence items still equal to the policy's example (a warning)")


class AuditEventOut(BaseModel):
    seq: int
    event_id: str
    event_type: str
    occurred_at: datetime
    recorded_at: datetime
    actor_id: str | None
    actor_username: str | None = Field(default=None, description="the actor's username (None: not a user)")
    actor_display_name: str | None = None
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


class AuditFilter(BaseModel):
    """Which audit events: every field given must match. One spelling for the API's query parameters, the
    service, the engine's query, the web explorer's form, the CLI's options and the SDK's keywords."""

    model_config = ConfigDict(extra="forbid")

    progression: str | None = None  # progression id
    model: str | None = None  # model id
    actor: str | None = None  # a username or a user id (an unknown one is refused: 422 unknown_user)
    event_type: str | None = None  # one type or a comma-separated list
    since: datetime | None = None  # occurred_at >= since
    until: datetime | None = None  # occurred_at < until

    def event_types(self) -> list[str] | None:
        if self.event_type is None:
            return None
        return [t.strip() for t in self.event_type.split(",") if t.strip()]

    def query_params(self) -> dict[str, str]:
        """The filter as the API's query parameters (ISO-8601 times), leaving out what is not set."""
        return {name: value.isoformat() if isinstance(value, datetime) else str(value)
                for name, value in self.model_dump().items() if value is not None}


class ChainVerification(BaseModel):
    """Result of :func:`engine.audit.verify_chain` (``GET /api/v1/audit/verify``).

    ``problem`` starts with a kind: ``edited`` (content does not match its hash), ``broken_link``
    (prev_hash is not the previous event's hash: an event was inserted, removed or moved),
    ``missing`` (a seq is absent: deleted), ``beyond_head`` (rows after the chain head: inserted),
    ``head_mismatch`` (the head row disagrees with the last event), ``unchained`` (written with
    chain=False).
    """

    ok: bool
    events_checked: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    first_bad_event_id: str | None = None
    problem: str | None = None


# ---- the feature catalog (engine.catalog holds the rules) ---------------------------------------------


class CatalogEntry(BaseModel):
    """One feature as a catalog version holds it."""

    name: str
    description: str = ""
    tags: list[str] = Field(default_factory=list)
    owner: str | None = None

    def resolved(self) -> ResolvedFeature:
        return ResolvedFeature(name=self.name, description=self.description, tags=list(self.tags), known=True)


class CatalogSnapshot(BaseModel):
    """A whole catalog version: what ``GET /features/versions/{n}`` answers and what the SDK keeps offline."""

    version: int
    catalog_hash: str
    features: list[CatalogEntry]

    def resolve(self, names: Sequence[str]) -> list[ResolvedFeature]:
        """A spec's names looked up in this version, in order; unknown names come back ``known=False``."""
        index = {f.name: f for f in self.features}
        return [index[n].resolved() if n in index else ResolvedFeature(name=n, known=False) for n in names]


ProposalKind = Literal["create", "change"]
ProposalStatus = Literal["pending", "applied", "rejected", "superseded"]
Verdict = Literal["allowed", "forbidden", "requires", "unknown"]


class PolicyRule(BaseModel):
    """One policy check that bears on the feature."""

    stage: str
    check_id: str
    description: str
    effect: Literal["forbidden", "requires"]
    requires_evidence: list[str] = Field(default_factory=list)


class FeatureVerdict(BaseModel):
    """What one intent's policy says of one feature."""

    intent: str
    verdict: Verdict
    summary: str
    rules: list[PolicyRule] = Field(default_factory=list)



class FeatureUse(BaseModel):
    """A model version whose spec lists the feature."""

    model_id: str
    version_id: str
    business_intent: str


class FeatureOut(BaseModel):
    name: str
    description: str
    tags: list[str]
    owner: str | None = None
    updated_at: datetime | None = None
    updated_by: str | None = None
    policies: list[FeatureVerdict] = Field(default_factory=list, description="what each intent's policy says of it")
    used_by: list[FeatureUse] = Field(default_factory=list, description="model versions whose spec lists it")
    pending_proposals: int = 0


class FeatureList(BaseModel):
    items: list[FeatureOut]
    total: int
    catalog_version: int = Field(0, description="the catalog version these features are (0: none recorded yet)")
    catalog_hash: str | None = None


class ProposalApproval(BaseModel):
    actor_id: str
    username: str
    at: datetime
    comment: str = ""
    credential: str | None = None


class FeatureProposalOut(BaseModel):
    id: str
    feature: str
    kind: ProposalKind
    status: ProposalStatus
    description: str
    tags: list[str]
    owner: str | None = None
    previous: CatalogEntry | None = None
    tags_added: list[str] = Field(default_factory=list)
    tags_removed: list[str] = Field(default_factory=list)
    approvals_needed: int
    approvals: list[ProposalApproval] = Field(default_factory=list)
    comment: str = ""
    proposed_by: str
    proposed_at: datetime
    decided_at: datetime | None = None
    decided_by: str | None = None
    decision_comment: str = ""
    applied_version: int | None = None


class FeatureProposalList(BaseModel):
    items: list[FeatureProposalOut]
    total: int


class FeatureNote(BaseModel):
    """One of a spec's features that its policy forbids or makes require evidence (in a dry run)."""

    name: str
    verdict: FeatureVerdict


DryRunResult.model_rebuild()
