"""The pure rules of findings and exceptions (engine.findings) and the policies' findings/exceptions sections,
which are refused at load time naming file, line and field."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.findings import (
    ExceptionKind,
    ExceptionRecord,
    ExceptionStatus,
    FindingRecord,
    FindingStatus,
    blocking_findings,
    default_due,
    exception_approval_refusal,
    grant_refusal,
    raise_refusal,
    remediation_refusal,
    reminder_at,
    verification_refusal,
    waived_checks,
)
from engine.lifecycle import Actor, ExceptionSummary, FindingSummary, ProgressionState
from engine.loading import PolicyRegistry
from engine.policy import GovernancePolicy, Role, policy_hash
from testing.workflow import POLICIES
from tests.make_histories import HISTORIES
from tests.unit.test_policies import line_of, refused

CREDIT = (POLICIES / "credit-underwriting.yaml").read_text()
NOW = datetime(2026, 12, 1, tzinfo=UTC)

DEV = Actor(user_id="dev", username="dana", roles=[Role.model_developer], team="retail-risk")
TEAMMATE = Actor(user_id="dev2", username="dario", roles=[Role.model_developer], team="retail-risk")
VAL = Actor(user_id="val", username="vera", roles=[Role.model_validator], team="validation")
RISK = Actor(user_id="risk", username="rita", roles=[Role.model_risk_officer], team="model-risk")
RISK2 = Actor(user_id="risk2", username="rob", roles=[Role.model_risk_officer], team="model-risk")
TEAM_RISK = Actor(user_id="tr", username="rory", roles=[Role.model_risk_officer, Role.model_developer],
                  team="retail-risk")
ADMIN = Actor(user_id="adm", username="adam", roles=[Role.admin], team="platform")
NO_TEAM = Actor(user_id="nt", username="nobody", roles=[Role.model_validator])


@pytest.fixture(scope="module")
def policies() -> PolicyRegistry:
    return PolicyRegistry.from_dir(POLICIES)


def _finding(**kw: object) -> FindingRecord:
    base: dict[str, object] = dict(finding_id="F-1", model_id="m", team="retail-risk",
                                   business_intent="credit-underwriting", severity="high", title="t",
                                   due_at=NOW + timedelta(days=30), raised_by="val", raised_by_username="vera",
                                   raised_at=NOW)
    return FindingRecord.model_validate({**base, **kw})


def _code(refusal: object) -> str | None:
    return getattr(refusal, "code", None)


def test_who_raises_findings(policies: PolicyRegistry) -> None:
    rules = policies.get("credit-underwriting").policy.findings  # type: ignore[union-attr]
    assert raise_refusal(VAL, team="retail-risk", severity="high", rules=rules) is None
    assert raise_refusal(RISK, team="retail-risk", severity="low", rules=rules) is None
    for actor, code in ((DEV, "not_a_reviewer"), (ADMIN, "not_a_reviewer"), (TEAM_RISK, "own_team"),
                        (NO_TEAM, "no_team")):
        assert _code(raise_refusal(actor, team="retail-risk", severity="high", rules=rules)) == code
    assert _code(raise_refusal(VAL, team="retail-risk", severity="critical", rules=rules)) == "unknown_severity"
    assert _code(raise_refusal(VAL, team="retail-risk", severity="high", rules=None)) == "findings_not_configured"


def test_lifecycle_transitions_and_segregation_of_duties() -> None:
    open_ = _finding()
    assert remediation_refusal(open_, DEV) is None and remediation_refusal(open_, TEAMMATE) is None
    for actor in (VAL, RISK, ADMIN, TEAM_RISK.model_copy(update={"team": "payments"})):
        assert _code(remediation_refusal(open_, actor)) == "not_owning_team"
    assert _code(verification_refusal(open_, VAL)) == "no_remediation"

    submitted = _finding(status=FindingStatus.remediation_submitted, remediated_by="dev")
    assert _code(remediation_refusal(submitted, DEV)) == "finding_not_open"
    assert verification_refusal(submitted, VAL) is None and verification_refusal(submitted, RISK) is None
    for actor, code in ((DEV, "own_remediation"), (TEAMMATE, "not_a_reviewer"), (TEAM_RISK, "own_team"),
                        (ADMIN, "not_a_reviewer"), (NO_TEAM, "no_team")):
        assert _code(verification_refusal(submitted, actor)) == code, actor.username
    # a reviewer who (somehow) submitted the remediation still cannot close it
    by_reviewer = _finding(status=FindingStatus.remediation_submitted, remediated_by="val")
    assert _code(verification_refusal(by_reviewer, VAL)) == "own_remediation"
    for status in (FindingStatus.closed, FindingStatus.risk_accepted):
        assert _code(verification_refusal(_finding(status=status, remediated_by="dev"), VAL)) == "no_remediation"


def test_default_due_dates_and_reminders(policies: PolicyRegistry) -> None:
    rules = policies.get("credit-underwriting").policy.findings  # type: ignore[union-attr]
    assert rules is not None
    assert [default_due(rules, s, NOW) - NOW for s in ("high", "medium", "low")] == [
        timedelta(days=30), timedelta(days=90), timedelta(days=180)]
    assert reminder_at(_finding(), rules) == NOW + timedelta(days=16)  # 14 days before the due date


def _state(findings: list[FindingSummary] | None = None, exceptions: list[ExceptionSummary] | None = None
           ) -> ProgressionState:
    return ProgressionState(progression_id="m@1", model_id="m", model_name="M", team="retail-risk",
                            business_intent="credit-underwriting", risk_tier=1, version_id="1", target="production",
                            policy_hash="sha256:x", stages=[], submitted_by="dev", submitted_by_username="dana",
                            started_at=NOW, updated_at=NOW, findings=findings or [], exceptions=exceptions or [])


def test_credit_blocking_rules(policies: PolicyRegistry) -> None:
    rules = policies.get("credit-underwriting").policy.findings  # type: ignore[union-attr]
    high = FindingSummary(finding_id="h", severity="high", status="open", title="h", condition=True)
    medium = FindingSummary(finding_id="m", severity="medium", status="remediation_submitted", title="m")
    medium_condition = FindingSummary(finding_id="mc", severity="medium", status="open", title="mc", condition=True)
    low = FindingSummary(finding_id="l", severity="low", status="open", title="l")
    closed_high = FindingSummary(finding_id="ch", severity="high", status="closed", title="ch")
    accepted_high = FindingSummary(finding_id="ah", severity="high", status="risk_accepted", title="ah")
    state = _state([high, medium, medium_condition, low, closed_high, accepted_high])
    # any open high blocks production (condition or not); medium only as a condition; low never
    assert [f.finding_id for f in blocking_findings(state, rules, "production")] == ["h", "m"]
    assert blocking_findings(state, rules, "validation") == []
    fraud = policies.get("fraud-detection").policy.findings  # type: ignore[union-attr]
    assert [f.finding_id for f in blocking_findings(state, fraud, "production")] == ["h"]
    marketing = policies.get("marketing-propensity").policy.findings  # type: ignore[union-attr]
    assert blocking_findings(state, marketing, "production") == []


def test_waivers_are_scoped_to_the_version_and_expire() -> None:
    def waiver(status: str = "active", version: str = "1", expires: timedelta = timedelta(days=10)) -> ExceptionSummary:
        return ExceptionSummary(exception_id=f"X-{status}-{version}", kind="check", status=status, version_id=version,
                                check_id="monitoring-plan", expires_at=NOW + expires)
    assert waived_checks(_state(exceptions=[waiver()]), NOW) == {"monitoring-plan": "X-active-1"}
    for other in (waiver("pending_approval"), waiver("lapsed"), waiver(version="2"),
                  waiver(expires=timedelta(seconds=-1))):
        assert waived_checks(_state(exceptions=[other]), NOW) == {}, other


def test_who_grants_and_approves_exceptions(policies: PolicyRegistry) -> None:
    credit = policies.get("credit-underwriting").policy  # type: ignore[union-attr]
    marketing = policies.get("marketing-propensity").policy  # type: ignore[union-attr]
    assert credit.exceptions_need_checker and not marketing.exceptions_need_checker  # tier 1 vs tier 3
    ok = dict(team="retail-risk", policy=credit, kind=ExceptionKind.check, check_id="monitoring-plan", now=NOW,
              expires_at=NOW + timedelta(days=90))
    assert grant_refusal(RISK, **ok) is None  # type: ignore[arg-type]
    cases = [
        (ADMIN, {}, "not_an_exception_role"), (VAL, {}, "not_an_exception_role"), (DEV, {}, "not_an_exception_role"),
        (TEAM_RISK, {}, "own_team"), (RISK, {"expires_at": None}, "expiry_required"),
        (RISK, {"expires_at": NOW + timedelta(days=90, seconds=1)}, "expiry_beyond_maximum"),
        (RISK, {"expires_at": NOW}, "expiry_in_past"), (RISK, {"check_id": None}, "scope_required"),
        (RISK, {"check_id": "nope"}, "unknown_check"),
        (RISK, {"kind": ExceptionKind.pma, "check_id": None}, "magnitude_required"),
        (RISK, {"kind": ExceptionKind.finding, "check_id": None}, "scope_required"),
        (RISK, {"kind": ExceptionKind.finding, "finding": _finding(status=FindingStatus.closed)}, "finding_not_open"),
    ]
    for actor, change, code in cases:
        assert _code(grant_refusal(actor, **{**ok, **change})) == code, (actor.username, change)  # type: ignore[arg-type]
    assert grant_refusal(VAL, **{**ok, "policy": marketing, "check_id": "model-card-present"}) is None  # type: ignore[arg-type]

    pending = ExceptionRecord(exception_id="X-1", kind=ExceptionKind.check, model_id="m", team="retail-risk",
                              business_intent="credit-underwriting", version_id="1", check_id="monitoring-plan",
                              reason="r", expires_at=NOW + timedelta(days=30), status=ExceptionStatus.pending_approval,
                              needs_checker=True, requested_by="risk", requested_by_username="rita", requested_at=NOW)
    rules = credit.exceptions
    assert exception_approval_refusal(pending, RISK2, rules) is None
    for actor, code in ((RISK, "own_exception"), (ADMIN, "not_an_exception_role"), (VAL, "not_an_exception_role"),
                        (TEAM_RISK, "own_team")):
        assert _code(exception_approval_refusal(pending, actor, rules)) == code
    for status, code in ((ExceptionStatus.lapsed, "exception_lapsed"),
                         (ExceptionStatus.active, "exception_not_pending")):
        assert _code(exception_approval_refusal(pending.model_copy(update={"status": status}), RISK2, rules)) == code


def test_policies_pinned_before_the_sections_keep_their_hash() -> None:
    """A progression pinned its policy's hash before findings/exceptions existed: the same policy, read by the
    new model (sections absent), hashes the same (the hash leaves the new sections out while unset)."""
    history = json.loads((HISTORIES / "v4-basis-and-failure" / "retail-credit-scorecard@3.2.0.json").read_text())
    start = history["events"][0]["workflowExecutionStartedEventAttributes"]
    inp = json.loads(base64.b64decode(start["input"]["payloads"][0]["data"]))
    pinned = GovernancePolicy.model_validate(inp["policy"])
    assert pinned.findings is None and pinned.exceptions is None
    assert policy_hash(pinned) == inp["policy_hash"]


# ---- broken sections are refused at load time ----------------------------------------------------------


@pytest.mark.parametrize(("old", "new", "field", "message"), [
    ("due: {high: 30d, medium: 90d, low: 180d}", "due: {high: 30d, medium: 90d}", "findings",
     "due gives no default due date for severities: low"),
    ("due: {high: 30d, medium: 90d, low: 180d}", "due: {high: 30d, medium: 90d, low: 6 months}", "findings",
     "invalid duration '6 months'"),
    ("      severities: [medium]\n", "      severities: [urgent]\n", "findings",
     "blocks: stage 'production' names unknown severities ['urgent']"),
    ("  grant_roles: [model_risk_officer]", "  grant_roles: [admin]", "exceptions.grant_roles",
     "roles ['admin'] cannot grant exceptions"),
    ("  max_expiry: 90d", "  max_expiry: forever", "exceptions.max_expiry", "invalid duration 'forever'"),
    ("  escalate_to: model_risk_officer\n  blocks:", "  escalate_to: cro\n  blocks:", "findings.escalate_to",
     "'cro' is not allowed"),
])
def test_broken_findings_and_exceptions_sections(tmp_path: Path, old: str, new: str, field: str,
                                                 message: str) -> None:
    assert old in CREDIT, old
    text = CREDIT.replace(old, new)
    exc = refused(tmp_path, text)
    # the line of the field itself; for a rule across the section, the line of the section's key
    needle = "\nfindings:" if field == "findings" else new.strip().split("\n")[0]
    line = line_of(text, needle) + (1 if field == "findings" else 0)
    assert exc.message.startswith(f"credit-underwriting.yaml:{line}: {field}"), exc.message
    assert message in exc.message, exc.message


def test_blocking_rule_on_a_stage_the_policy_does_not_have(tmp_path: Path) -> None:
    text = CREDIT.replace("    - stage: production\n      severities: [high]",
                          "    - stage: prod\n      severities: [high]")
    exc = refused(tmp_path, text)
    assert "findings.blocks names stage 'prod', which the policy does not have" in exc.message
    assert exc.message.startswith("credit-underwriting.yaml:")
