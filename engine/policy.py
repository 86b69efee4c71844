"""The governance policy model (one YAML file per business intent under ``policies/``).

``engine.loading`` parses and validates the YAML (with line numbers) and compiles
every CEL expression; this module is the pure data model that also travels in
the workflow input, so it must stay deterministic and side-effect free.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from engine.durations import parse_duration
from engine.spec import EvidenceName, Slug, StrictModel


class Role(StrEnum):
    model_developer = "model_developer"
    model_validator = "model_validator"
    model_risk_officer = "model_risk_officer"
    auditor = "auditor"
    admin = "admin"
    # A service identity of the bank's monitoring jobs: posts monitoring results and nothing else.
    monitor = "monitor"


# Roles that may sit on an approval gate.
GATE_ROLES = frozenset({Role.model_validator, Role.model_risk_officer})

StageName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]
CheckId = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]{0,62}$")]


def _duration(value: str | None) -> str | None:
    if value is not None:
        parse_duration(value)
    return value


class CheckDef(StrictModel):
    id: CheckId
    description: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    expr: Annotated[str, StringConstraints(min_length=1, max_length=4000)]


class ApprovalRule(StrictModel):
    role: Role
    count: int = Field(default=1, ge=1, le=10)
    sla: str | None = None
    escalate_to: Role | None = None

    _check_sla = field_validator("sla")(classmethod(lambda cls, v: _duration(v)))

    @field_validator("role")
    @classmethod
    def _gate_role(cls, value: Role) -> Role:
        if value not in GATE_ROLES:
            allowed = ", ".join(sorted(r.value for r in GATE_ROLES))
            raise ValueError(f"role {value.value!r} cannot approve a gate; use one of {allowed}")
        return value

    @property
    def sla_delta(self) -> timedelta | None:
        return parse_duration(self.sla) if self.sla else None


class StageDef(StrictModel):
    name: StageName
    description: str | None = None
    checks: list[CheckDef] = Field(default_factory=list)
    approvals: list[ApprovalRule] = Field(default_factory=list)
    action: Literal["deploy"] | None = None
    # Evidence the stage reads besides what its checks reference (e.g. a document its approvers read):
    # a change to it re-opens the stage. See ``engine.checks.evidence_reads``.
    requires_evidence: list[EvidenceName] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _unique_ids(self) -> StageDef:
        ids = [c.id for c in self.checks]
        dupes = {i for i in ids if ids.count(i) > 1}
        if dupes:
            raise ValueError(f"check ids must be unique within a stage: {sorted(dupes)}")
        roles = [a.role for a in self.approvals]
        if len(roles) != len(set(roles)):
            raise ValueError("each role may appear once in a stage's approvals")
        return self


EvidenceKind = Literal["data", "document"]


class EvidenceRule(StrictModel):
    """Per evidence item: ``frozen_after`` names the stage after whose passing the item may not change;
    ``kind`` makes it an evidence *contract* (see ``engine.contracts``): ``data`` is a JSON/YAML file checked
    against ``schema`` (a JSON Schema, draft 2020-12), ``document`` a text (Markdown) file with the required
    ``sections`` (headings) and at least ``min_length`` characters. ``example`` must satisfy the contract
    (checked when the policy loads); ``progression init`` writes it as the template."""

    frozen_after: StageName | None = None
    kind: EvidenceKind | None = None
    description: Annotated[str, StringConstraints(min_length=1, max_length=2000)] | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    sections: list[Annotated[str, StringConstraints(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=50)
    min_length: int | None = Field(default=None, ge=1, le=10_000_000)
    example: Any = None
    # Where the scaffold puts the file (``progression init``), relative to the repository.
    path: Annotated[str, StringConstraints(min_length=1, max_length=500)] | None = None

    @model_validator(mode="after")
    def _contract_complete(self) -> EvidenceRule:
        if self.kind is None:
            if any(v not in (None, []) for v in (self.description, self.json_schema, self.sections,
                                                 self.min_length, self.example, self.path)):
                raise ValueError("an evidence contract needs a kind: data or document")
            return self
        if self.description is None or self.example is None or self.path is None:
            raise ValueError("an evidence contract needs a description, a path and an example")
        if self.kind == "data" and self.json_schema is None:
            raise ValueError("a data contract needs a schema (JSON Schema)")
        if self.kind == "data" and (self.sections or self.min_length is not None):
            raise ValueError("sections and min_length belong to document contracts")
        if self.kind == "document" and self.json_schema is not None:
            raise ValueError("a document contract has sections and min_length, not a schema")
        return self

    @property
    def is_contract(self) -> bool:
        return self.kind is not None


Severity = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]


class FindingBlock(StrictModel):
    """Open findings of ``severities`` keep ``stage`` from completing (its gate cannot be approved)."""

    stage: StageName
    severities: list[Severity] = Field(min_length=1)
    # A finding raised as a condition of an approval does not block (e.g. credit: medium only as a condition).
    unless_condition: bool = False


class FindingRules(StrictModel):
    """The policy's ``findings:`` section: severity scale, default due dates, reminders, blocking rules."""

    severities: list[Severity] = Field(min_length=1, max_length=10)  # most severe first
    due: dict[Severity, str]  # default remediation period per severity
    remind_before: str | None = None  # a reminder to the owning team this long before the due date
    escalate_to: Role = Role.model_risk_officer  # whose inbox an overdue finding lands in
    blocks: list[FindingBlock] = Field(default_factory=list)
    # A condition of an approval that misses its due date flags the model in production for revalidation.
    overdue_condition_flags_model: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> FindingRules:
        if len(set(self.severities)) != len(self.severities):
            raise ValueError("severities must be unique")
        for severity, period in self.due.items():
            if severity not in self.severities:
                raise ValueError(f"due names severity {severity!r}, which is not in severities "
                                 f"({', '.join(self.severities)})")
            parse_duration(period)
        missing = [s for s in self.severities if s not in self.due]
        if missing:
            raise ValueError(f"due gives no default due date for severities: {', '.join(missing)}")
        if self.remind_before is not None:
            parse_duration(self.remind_before)
        for block in self.blocks:
            unknown = [s for s in block.severities if s not in self.severities]
            if unknown:
                raise ValueError(f"blocks: stage {block.stage!r} names unknown severities {unknown} "
                                 f"(severities: {', '.join(self.severities)})")
        return self

    def due_delta(self, severity: str) -> timedelta:
        return parse_duration(self.due[severity])

    @property
    def remind_delta(self) -> timedelta | None:
        return parse_duration(self.remind_before) if self.remind_before else None


class ExceptionRules(StrictModel):
    """The policy's ``exceptions:`` section: who may waive, for how long at most, maker-checker."""

    grant_roles: list[Role] = Field(min_length=1)
    max_expiry: str
    # A second person approves before the exception takes effect; unset: required on tier 1.
    maker_checker: bool | None = None

    @field_validator("grant_roles")
    @classmethod
    def _deciding_roles(cls, value: list[Role]) -> list[Role]:
        wrong = [r.value for r in value if r not in GATE_ROLES]
        if wrong:
            allowed = ", ".join(sorted(r.value for r in GATE_ROLES))
            raise ValueError(f"roles {wrong} cannot grant exceptions; use one of {allowed}")
        return value

    _check_expiry = field_validator("max_expiry")(classmethod(lambda cls, v: _duration(v)))

    @property
    def max_expiry_delta(self) -> timedelta:
        return parse_duration(self.max_expiry)


MetricName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,62}$")]


class MetricKind(StrEnum):
    number = "number"  # one figure per period (AUC, default rate, volume, a fairness ratio)
    by_feature = "by_feature"  # one figure per feature (PSI per characteristic): a map name -> number


class MetricDef(StrictModel):
    kind: MetricKind = MetricKind.number
    description: str = Field(default="", max_length=500)


class MonitoringAction(StrEnum):
    revalidate = "revalidate"  # the production workflow opens its revalidation gate now
    finding = "finding"  # a finding is raised on the model (once per rule and period)


class MonitoringRule(StrictModel):
    """A CEL expression over one period's results (the metrics by name); ``True`` is a breach."""

    id: CheckId
    description: Annotated[str, StringConstraints(min_length=1, max_length=500)]
    expr: Annotated[str, StringConstraints(min_length=1, max_length=4000)]
    severity: Severity
    action: MonitoringAction


class MonitoringRules(StrictModel):
    """The policy's ``monitoring:`` section: the metrics a period's results carry, the rules over them, and
    what missing results mean (no results for ``overdue_after`` periods raises a finding)."""

    period: str = "30d"  # results are expected once per period
    metrics: dict[MetricName, MetricDef] = Field(min_length=1, max_length=100)
    rules: list[MonitoringRule] = Field(default_factory=list, max_length=100)
    overdue_after: int | None = Field(default=2, ge=1, le=24)  # periods without results; None: never overdue
    overdue_severity: Severity = "medium"
    # Who may post results: the monitoring service identity; a human role only where the policy says so.
    posted_by: list[Role] = Field(default_factory=lambda: [Role.monitor], min_length=1)

    _check_period = field_validator("period")(classmethod(lambda cls, v: _duration(v)))

    @field_validator("posted_by")
    @classmethod
    def _no_admin(cls, value: list[Role]) -> list[Role]:
        if Role.admin in value:
            raise ValueError("an admin never posts monitoring results (administrators administer)")
        return value

    @model_validator(mode="after")
    def _unique_rules(self) -> MonitoringRules:
        ids = [r.id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"monitoring rule ids must be unique: {dupes}")
        return self

    @property
    def period_delta(self) -> timedelta:
        return parse_duration(self.period)


class TierCadence(StrictModel):
    """Revalidation for one materiality tier: how often, and how deep (the revalidation gate's approvals)."""

    tier: int = Field(ge=1, le=3)
    revalidation: str | None = None
    approvals: list[ApprovalRule] = Field(default_factory=list, max_length=5)

    _check_revalidation = field_validator("revalidation")(classmethod(lambda cls, v: _duration(v)))


class RetirementRules(StrictModel):
    """The policy's ``retirement:`` section: who approves a decommissioning (the owner asks)."""

    approvals: list[ApprovalRule] = Field(min_length=1, max_length=5)


class GovernancePolicy(StrictModel):
    api_version: Literal["progression/v1"] = Field(alias="apiVersion")
    kind: Literal["GovernancePolicy"]
    intent: Slug
    title: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    risk_tier: int = Field(ge=1, le=3)
    guidance: list[str] = Field(default_factory=list)
    stages: list[StageDef] = Field(min_length=1)
    revalidation: str | None = None
    # Groups of stages that must be decided by different people: nobody who decided one stage of a
    # group counts at another stage of it (e.g. independent validation vs. risk review).
    independent_stages: list[list[StageName]] = Field(default_factory=list)
    evidence: dict[EvidenceName, EvidenceRule] = Field(default_factory=dict, max_length=100)
    # The spec must carry ``version.artifact_digest`` (sha256 of the artifact that will be deployed).
    requires_artifact_digest: bool = False
    findings: FindingRules | None = None
    exceptions: ExceptionRules | None = None
    monitoring: MonitoringRules | None = None
    # Materiality-scaled revalidation: per tier (1 most material), its period and review depth. The tier is an
    # input of the progression (today the policy's risk_tier; a computed materiality tier later).
    cadence: list[TierCadence] = Field(default_factory=list, max_length=3)
    retirement: RetirementRules | None = None

    _check_revalidation = field_validator("revalidation")(classmethod(lambda cls, v: _duration(v)))

    @model_validator(mode="after")
    def _unique_stages(self) -> GovernancePolicy:
        names = [s.name for s in self.stages]
        if len(names) != len(set(names)):
            raise ValueError("stage names must be unique")
        for group in self.independent_stages:
            unknown = sorted(set(group) - set(names))
            if unknown:
                raise ValueError(f"independent_stages names stages the policy does not have: {unknown}")
            if len(set(group)) < 2:
                raise ValueError("each independent_stages group names at least two different stages")
        for item, rule in self.evidence.items():
            if rule.frozen_after is not None and rule.frozen_after not in names:
                raise ValueError(f"evidence {item!r}: frozen_after names stage {rule.frozen_after!r}, "
                                 f"which the policy does not have (stages: {', '.join(names)})")
        tiers = [c.tier for c in self.cadence]
        if len(tiers) != len(set(tiers)):
            raise ValueError("cadence names each tier once")
        for watch in self.monitoring.rules if self.monitoring else []:
            if watch.action == MonitoringAction.finding and self.findings is None:
                raise ValueError(f"monitoring rule {watch.id!r} raises a finding, but the policy has no findings "
                                 "section")
            if self.findings is not None and watch.severity not in self.findings.severities:
                raise ValueError(f"monitoring rule {watch.id!r}: severity {watch.severity!r} is not in the "
                                 f"findings severities ({', '.join(self.findings.severities)})")
        if self.monitoring and self.monitoring.overdue_after and self.findings is not None \
                and self.monitoring.overdue_severity not in self.findings.severities:
            raise ValueError(f"monitoring.overdue_severity {self.monitoring.overdue_severity!r} is not in the "
                             f"findings severities ({', '.join(self.findings.severities)})")
        for block in self.findings.blocks if self.findings else []:
            if block.stage not in names:
                raise ValueError(f"findings.blocks names stage {block.stage!r}, which the policy does not have "
                                 f"(stages: {', '.join(names)})")
        return self

    @property
    def exceptions_need_checker(self) -> bool:
        """Exceptions need a second person: as the policy says, else on tier 1."""
        rules = self.exceptions
        return rules.maker_checker if rules is not None and rules.maker_checker is not None else self.risk_tier == 1

    @property
    def revalidation_delta(self) -> timedelta | None:
        return parse_duration(self.revalidation) if self.revalidation else None

    def cadence_of(self, tier: int) -> TierCadence | None:
        return next((c for c in self.cadence if c.tier == tier), None)

    def revalidation_for(self, tier: int) -> timedelta | None:
        """The revalidation period of a model of materiality ``tier``: the tier's cadence, else the policy's."""
        cadence = self.cadence_of(tier)
        if cadence is not None and cadence.revalidation:
            return parse_duration(cadence.revalidation)
        return self.revalidation_delta

    def revalidation_approvals(self, tier: int) -> list[ApprovalRule]:
        """The revalidation gate's approvals for ``tier``: the tier's cadence, else the validation stage's, else
        one model risk officer."""
        cadence = self.cadence_of(tier)
        if cadence is not None and cadence.approvals:
            return list(cadence.approvals)
        validation = self.stage("validation")
        if validation is not None and validation.approvals:
            return list(validation.approvals)
        return [ApprovalRule(role=Role.model_risk_officer, count=1)]

    def retirement_approvals(self) -> list[ApprovalRule]:
        """Who approves a retirement: the policy's ``retirement`` section, else one model risk officer."""
        if self.retirement is not None:
            return list(self.retirement.approvals)
        return [ApprovalRule(role=Role.model_risk_officer, count=1)]

    def stage(self, name: str) -> StageDef | None:
        return next((s for s in self.stages if s.name == name), None)

    def route_for(self, target: str) -> list[StageDef]:
        """Stages a spec with this target walks: up to and including the target stage if the policy has it."""
        names = [s.name for s in self.stages]
        if target in names:
            return self.stages[: names.index(target) + 1]
        return list(self.stages)


def policy_hash(policy: GovernancePolicy) -> str:
    """Content hash of the policy's meaning (not its formatting or comments)."""
    data = policy.model_dump(mode="json", by_alias=True)
    # Fields added later are left out while at their default, so a policy that does not use them keeps
    # the hash it had (progressions pinned it).
    for key, default in (("evidence", {}), ("requires_artifact_digest", False), ("independent_stages", []),
                         ("findings", None), ("exceptions", None), ("monitoring", None), ("cadence", []),
                         ("retirement", None)):
        if data.get(key) == default:
            data.pop(key, None)
    for rule in (data.get("evidence") or {}).values():
        for key, default in (("kind", None), ("description", None), ("schema", None), ("sections", []),
                             ("min_length", None), ("example", None), ("path", None)):
            if rule.get(key) == default:
                rule.pop(key, None)
    for stage in data.get("stages", []):
        if stage.get("requires_evidence") == []:
            stage.pop("requires_evidence", None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
