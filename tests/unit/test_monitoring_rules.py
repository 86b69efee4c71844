"""Life after production, the pure rules: the policy's monitoring section checked at load time (file, line,
field), a period's results checked before anything is stored, CEL rules over them, tier cadence, retirement."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import yaml

from engine.errors import InvalidPolicy, InvalidSpec
from engine.lifecycle import Actor, ProgressionState, Status
from engine.loading import PolicyRegistry, load_spec, materiality_problem, policy_from_text
from engine.monitoring import (
    metrics_refusal,
    period_refusal,
    poster_refusal,
    retirement_refusal,
    rule_thresholds,
    series_value,
)
from engine.monitoring_eval import evaluate_rules
from engine.policy import Role, policy_hash
from engine.settings import PROJECT_ROOT
from engine.spec import spec_digest
from testing.monitoring import MONITOR, credit_metrics

CREDIT_POLICY = (PROJECT_ROOT / "policies" / "credit-underwriting.yaml").read_text()


def _credit(text: str = CREDIT_POLICY):  # type: ignore[no-untyped-def]
    return policy_from_text(text, filename="credit-underwriting.yaml").policy


def _line(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


@pytest.mark.parametrize(("before", "after", "says"), [
    ("expr: psi.max() > 0.25", "expr: psi.max( > 0.25", "does not compile"),
    ("expr: auc < 0.65", "expr: gini < 0.65", "unknown metric 'gini'"),
    ("expr: volume == 0.0", "expr: volume + 1.0", "returns float, not a boolean"),
    ("expr: fairness_ratio < 0.80", "expr: fairness_ratio.median() < 0.80", "does not evaluate on sample figures"),
])
def test_a_bad_monitoring_rule_is_refused_at_load_time_naming_file_line_and_field(
        before: str, after: str, says: str) -> None:
    text = CREDIT_POLICY.replace(before, after)
    with pytest.raises(InvalidPolicy) as info:
        _credit(text)
    message = info.value.message
    assert message.startswith(f"credit-underwriting.yaml:{_line(text, after)}: monitoring.rules["), message
    assert says in message


@pytest.mark.parametrize(("before", "after", "says"), [
    ("      severity: medium\n      action: finding", "      severity: severe\n      action: finding",
     "severity 'severe' is not in the findings severities"),
    ("      action: revalidate\n    - id: fairness-breach", "      action: retire\n    - id: fairness-breach",
     "action"),
    ("posted_by", "posted_by", ""),  # unchanged: the default names the monitor identity only
])
def test_monitoring_section_values_are_checked(before: str, after: str, says: str) -> None:
    text = CREDIT_POLICY.replace(before, after, 1)
    if not says:
        assert _credit(text).monitoring.posted_by == [Role.monitor]  # type: ignore[union-attr]
        return
    with pytest.raises(InvalidPolicy) as info:
        _credit(text)
    assert says in info.value.message


def test_a_human_role_posts_results_only_where_the_policy_names_it() -> None:
    text = CREDIT_POLICY.replace("  overdue_severity: medium\n",
                                 "  overdue_severity: medium\n  posted_by: [monitor, model_validator]\n")
    rules = _credit(text).monitoring
    validator = Actor(user_id="u", username="v", roles=[Role.model_validator], team="validation")
    developer = Actor(user_id="d", username="d", roles=[Role.model_developer], team="retail-risk")
    assert poster_refusal(rules, validator) is None
    assert poster_refusal(rules, developer) is not None


def test_an_admin_is_never_a_monitoring_poster() -> None:
    text = CREDIT_POLICY.replace("  overdue_severity: medium\n", "  overdue_severity: medium\n  posted_by: [admin]\n")
    with pytest.raises(InvalidPolicy) as info:
        _credit(text)
    assert "an admin never posts monitoring results" in info.value.message


def test_rules_over_results_breach_as_the_policy_says() -> None:
    rules = _credit().monitoring
    assert rules is not None
    calm = {o.rule_id: o.breached for o in evaluate_rules(rules, credit_metrics())}
    assert calm == {"psi-drift": False, "fairness-breach": False, "auc-decay": False, "no-volume": False}
    bad = evaluate_rules(rules, credit_metrics(psi=0.26, auc=0.6, volume=0, fairness=0.7))
    assert all(o.breached for o in bad)
    drift = next(o for o in bad if o.rule_id == "psi-drift")
    assert drift.inputs["psi"]["bureau_score"] == 0.26 and "psi.max() > 0.25" in drift.reason
    assert rule_thresholds(rules)["psi"] == [("psi-drift", 0.25)]
    assert rule_thresholds(rules)["auc"] == [("auc-decay", 0.65)]
    assert series_value({"a": 0.1, "b": 0.3}) == 0.3 and series_value(True) is None


@pytest.mark.parametrize(("metrics", "code"), [
    ({}, "invalid_metrics"),
    ({**credit_metrics(), "gini": 0.4}, "unknown_metric"),
    ({k: v for k, v in credit_metrics().items() if k != "volume"}, "missing_metric"),
    ({**credit_metrics(), "auc": "0.7"}, "invalid_metric"),
    ({**credit_metrics(), "auc": True}, "invalid_metric"),
    ({**credit_metrics(), "auc": math.nan}, "invalid_metric"),
    ({**credit_metrics(), "auc": math.inf}, "invalid_metric"),
    ({**credit_metrics(), "psi": 0.2}, "invalid_metric"),
    ({**credit_metrics(), "psi": {}}, "invalid_metric"),
    ({**credit_metrics(), "psi": {"a": -math.inf}}, "invalid_metric"),
    ({**credit_metrics(), "psi": {"bad name!": 0.1}}, "invalid_metric"),
    ({**credit_metrics(), "psi": {f"f{i}": 0.1 for i in range(2001)}}, "invalid_metric"),
    ({**credit_metrics(), "auc": [0.7]}, "invalid_metric"),
])
def test_hostile_results_are_refused_before_anything_is_stored(metrics: dict[str, object], code: str) -> None:
    refusal = metrics_refusal(_credit().monitoring, metrics)
    assert refusal is not None and refusal.code == code and refusal.http_status == 422, refusal


def test_results_need_a_monitoring_section_a_past_period_and_a_named_poster() -> None:
    assert metrics_refusal(None, credit_metrics()).code == "no_monitoring_rules"  # type: ignore[union-attr]
    assert metrics_refusal(_credit().monitoring, credit_metrics()) is None
    assert period_refusal(date(2026, 12, 2), date(2026, 12, 1)).code == "period_in_future"  # type: ignore[union-attr]
    assert period_refusal(date(2026, 12, 1), date(2026, 12, 1)) is None
    rules = _credit().monitoring
    assert poster_refusal(rules, MONITOR) is None
    for roles in ([Role.model_developer], [Role.model_risk_officer], [Role.admin], [Role.auditor]):
        human = Actor(user_id="u", username="h", roles=roles, team="t")
        assert poster_refusal(rules, human).code == "not_a_monitoring_poster"  # type: ignore[union-attr]


def test_the_tier_scales_period_and_depth_and_old_policies_keep_their_hash(tmp_path: Path) -> None:
    policy = _credit()
    assert policy.revalidation_for(1).days == 365 and policy.revalidation_for(3).days == 730
    assert [a.role for a in policy.revalidation_approvals(1)] == [Role.model_validator]
    assert policy.retirement_approvals()[0].role == Role.model_risk_officer
    without = policy.model_copy(update={"monitoring": None, "cadence": [], "retirement": None})
    # sections at their defaults stay out of the hash: a policy that does not use them keeps the hash it had
    head = CREDIT_POLICY[: CREDIT_POLICY.index("\nmonitoring:") + 1]  # (a document example says "Ongoing monitoring")
    assert policy_hash(without) == policy_hash(_credit(head))


def _production(**changes: object) -> ProgressionState:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    state = ProgressionState(progression_id="m@1", model_id="m", model_name="M", team="retail-risk",
                             business_intent="credit-underwriting", risk_tier=1, version_id="1", target="production",
                             policy_hash="sha256:x", stages=[], submitted_by="u-dev",
                             submitted_by_username="dana", started_at=now, updated_at=now,
                             status=Status.in_production)
    return state.model_copy(update=changes)


def test_retirement_is_asked_by_the_owning_team_without_unresolved_dependents() -> None:
    owner = Actor(user_id="u-dev", username="dana", roles=[Role.model_developer], team="retail-risk")
    other = Actor(user_id="u-o", username="sam", roles=[Role.model_developer], team="payments")
    officer = Actor(user_id="u-r", username="rita", roles=[Role.model_risk_officer], team="retail-risk")
    assert retirement_refusal(_production(), owner, dependents=[], override_id=None) is None
    assert retirement_refusal(_production(), other, dependents=[], override_id=None).code == "not_model_owner"  # type: ignore[union-attr]
    assert retirement_refusal(_production(), officer, dependents=[], override_id=None).code == "not_model_owner"  # type: ignore[union-attr]
    blocked = retirement_refusal(_production(), owner, dependents=["x@1"], override_id=None)
    assert blocked is not None and blocked.code == "dependency_in_production"
    assert retirement_refusal(_production(), owner, dependents=["x@1"], override_id="RO-1") is None
    assert retirement_refusal(_production(status=Status.awaiting_approval), owner, dependents=[],
                              override_id=None).code == "not_in_production"  # type: ignore[union-attr]
    assert retirement_refusal(_production(status=Status.retired), owner, dependents=[],
                              override_id=None).code == "progression_closed"  # type: ignore[union-attr]


# ---- the materiality tier set at start -------------------------------------------------------------


def _credit_spec(**changes: object) -> str:
    data = yaml.safe_load((PROJECT_ROOT / "examples" / "retail-credit-scorecard" / "progression.yaml").read_text())
    data.update(changes)
    return yaml.safe_dump(data, sort_keys=False)


def test_a_materiality_tier_in_the_spec_is_checked_against_the_policy() -> None:
    reg = PolicyRegistry.from_dir(PROJECT_ROOT / "policies")
    unset = load_spec(_credit_spec(), registry=reg)
    three = load_spec(_credit_spec(materiality_tier=3), registry=reg)  # risk officers approve on credit's route
    assert unset.materiality_tier is None and three.materiality_tier == 3
    assert spec_digest(unset) != spec_digest(three)  # every decision binds to the tier
    assert "materiality_tier" not in json.dumps(unset.model_dump(mode="json", exclude_none=True))
    for bad in (0, 4, "3", True):
        with pytest.raises(InvalidSpec) as err:
            load_spec(_credit_spec(materiality_tier=bad), registry=reg)
        assert any(d["field"] == "materiality_tier" and d["line"] for d in err.value.details), (bad, err.value.details)


def test_a_developer_cannot_make_her_model_less_material_where_no_risk_officer_approves() -> None:
    """The attack: tier 3 on a tier-1 policy buys a two-year revalidation cadence; with no model risk officer on
    the route nobody independent agrees to it. Refused at load (so the dry run says so too); a tier at least as
    material as the policy's is the developer's to set; a tier beyond the policy's tiers is refused."""
    text = (PROJECT_ROOT / "policies" / "credit-underwriting.yaml").read_text()
    no_officer = text.replace("      - role: model_risk_officer\n        count: 2\n",
                              "      - role: model_validator\n        count: 1\n")
    assert no_officer != text
    policy = policy_from_text(no_officer).policy
    spec = load_spec(_credit_spec(materiality_tier=3))
    problem = materiality_problem(spec, policy)
    assert problem is not None and problem[0] == "tier_needs_risk_officer" and "risk_tier 1" in problem[1]
    assert materiality_problem(load_spec(_credit_spec(materiality_tier=1)), policy) is None
    assert materiality_problem(spec, policy_from_text(text).policy) is None
    two_tiers = policy_from_text(text.replace("risk_tier: 1\n", "risk_tier: 2\n", 1).replace(
        "  - tier: 3\n    revalidation: 730d\n    approvals: [{role: model_validator, count: 1, sla: 10d, "
        "escalate_to: model_risk_officer}]\n", "")).policy
    assert max(c.tier for c in two_tiers.cadence) == 2
    out_of_range = materiality_problem(spec, two_tiers)
    assert out_of_range is not None and out_of_range[0] == "tier_out_of_range"
