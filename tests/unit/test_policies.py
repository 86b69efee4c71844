"""Shipped policies and the feature catalog load; broken policies are refused at load time."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.errors import InvalidPolicy
from engine.loading import (
    PolicyRegistry,
    load_feature_catalog,
    load_policy,
    load_spec,
    policy_from_text,
)
from engine.policy import Role
from engine.settings import PROJECT_ROOT

ROOT = PROJECT_ROOT
POLICIES = ROOT / "policies"
INTENTS = ["credit-underwriting", "fraud-detection", "internal-analytics", "marketing-propensity"]
CREDIT = (POLICIES / "credit-underwriting.yaml").read_text()


@pytest.fixture(scope="module")
def registry() -> PolicyRegistry:
    return PolicyRegistry.from_dir(POLICIES)


def test_every_shipped_policy_loads(registry: PolicyRegistry) -> None:
    assert registry.intents() == INTENTS
    for loaded in registry.all():
        assert loaded.path.name == f"{loaded.intent}.yaml"
        assert loaded.hash.startswith("sha256:") and registry.by_hash(loaded.hash) is loaded
        assert loaded.yaml_text == loaded.path.read_text()
        compiled = {(s.name, c.id) for s in loaded.policy.stages for c in s.checks}
        assert set(loaded.programs) == compiled and compiled
        assert loaded.policy.stages[-1].action == "deploy"
    assert registry.get("payroll") is None and registry.by_hash("sha256:0") is None


@pytest.mark.parametrize("intent", INTENTS)
def test_policy_starts_with_a_comment_naming_its_guidance(intent: str) -> None:
    text = (POLICIES / f"{intent}.yaml").read_text()
    header = text[: text.index("apiVersion:")]
    assert text.startswith("#") and all(line.startswith("#") or not line for line in header.splitlines())
    assert "SR 26-2" in header and "SR 11-7" in header and "tier" in header.lower()


def test_credit_policy_is_strict(registry: PolicyRegistry) -> None:
    credit = registry.get("credit-underwriting")
    assert credit is not None
    policy = credit.policy
    assert policy.risk_tier == 1 and policy.revalidation == "365d"
    assert [s.name for s in policy.stages] == ["registration", "validation", "risk_review", "staging", "production"]
    validation = policy.stage("validation")
    risk_review = policy.stage("risk_review")
    assert validation is not None and risk_review is not None
    assert {c.id for c in validation.checks} >= {"discrimination", "stability", "adverse-impact",
                                                 "no-protected-attributes"}
    gate = validation.approvals[0]
    assert (gate.role, gate.count, gate.sla, gate.escalate_to) == (Role.model_validator, 1, "5d",
                                                                   Role.model_risk_officer)
    assert [(a.role, a.count) for a in risk_review.approvals] == [(Role.model_risk_officer, 2)]
    assert "ECOA" in (POLICIES / "credit-underwriting.yaml").read_text()


def test_tiers_and_revalidation(registry: PolicyRegistry) -> None:
    tiers = {p.intent: (p.policy.risk_tier, p.policy.revalidation) for p in registry.all()}
    assert tiers == {"credit-underwriting": (1, "365d"), "fraud-detection": (2, "365d"),
                     "marketing-propensity": (3, "730d"), "internal-analytics": (3, None)}


def test_only_credit_and_fraud_forbid_protected_attributes(registry: PolicyRegistry) -> None:
    forbids = {p.intent for p in registry.all()
               if any("protected_attribute" in c.expr for s in p.policy.stages for c in s.checks)}
    assert forbids == {"credit-underwriting", "fraud-detection"}


def test_hash_ignores_comments_and_formatting() -> None:
    a = policy_from_text(CREDIT)
    b = policy_from_text("# another comment\n" + CREDIT.replace("risk_tier: 1", "risk_tier:   1"))
    c = policy_from_text(CREDIT.replace("auc >= 0.70", "auc >= 0.72"))
    assert a.hash == b.hash != c.hash


def test_feature_catalog_covers_every_example(registry: PolicyRegistry) -> None:
    catalog = {f.name: f for f in load_feature_catalog(POLICIES / "features.yaml")}
    for name, tags in {"age": "protected_attribute", "gender": "protected_attribute",
                       "marital_status": "protected_attribute", "zip_code": "proxy", "email": "pii",
                       "device_fingerprint": "pii"}.items():
        assert tags in catalog[name].tags
    assert "pii" in catalog["zip_code"].tags
    for spec_path in (ROOT / "examples").glob("*/progression.yaml"):
        spec = load_spec(spec_path.read_text(), registry=registry)
        assert set(spec.features) <= set(catalog), spec_path


def test_feature_catalog_duplicate_refused(tmp_path: Path) -> None:
    path = tmp_path / "features.yaml"
    path.write_text("features:\n  - name: a\n    tags: [pii]\n  - name: a\n")
    with pytest.raises(InvalidPolicy) as info:
        load_feature_catalog(path)
    assert info.value.message == "features.yaml:4: features[1].name: feature 'a' is listed twice"


# ---- broken policies are refused at load time, naming file, line and field ------------------


def refused(tmp_path: Path, text: str, *, extra: dict[str, str] | None = None) -> InvalidPolicy:
    (tmp_path / "credit-underwriting.yaml").write_text(text)
    (tmp_path / "features.yaml").write_text("features: []\n")  # never loaded as a policy
    for name, body in (extra or {}).items():
        (tmp_path / name).write_text(body)
    with pytest.raises(InvalidPolicy) as info:
        PolicyRegistry.from_dir(tmp_path)
    assert info.value.code == "invalid_policy"
    return info.value


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def test_non_compiling_cel_expression(tmp_path: Path) -> None:
    text = CREDIT.replace("expr: evidence.metrics.ks >= 0.30", "expr: evidence.metrics.ks >=")
    exc = refused(tmp_path, text)
    line = line_of(text, "expr: evidence.metrics.ks >=")
    assert exc.message.startswith(f"credit-underwriting.yaml:{line}: stages[1].checks[1].expr: stage 'validation' "
                                  "check 'separation': CEL expression does not compile: Syntax error")
    assert exc.details[0]["type"] == "cel_compile"


def test_cel_expression_with_unknown_variable(tmp_path: Path) -> None:
    text = CREDIT.replace("expr: evidence.metrics.psi < 0.25", "expr: evidnce.metrics.psi < 0.25")
    exc = refused(tmp_path, text)
    assert exc.message.startswith(f"credit-underwriting.yaml:{line_of(text, 'evidnce')}: stages[1].checks[4].expr:")
    assert "unknown variable 'evidnce'" in exc.message


def test_unknown_role(tmp_path: Path) -> None:
    text = CREDIT.replace("role: model_risk_officer", "role: chief_risk_officer")
    exc = refused(tmp_path, text)
    assert exc.message.startswith(f"credit-underwriting.yaml:{line_of(text, 'chief_risk')}: "
                                  "stages[2].approvals[0].role: 'chief_risk_officer' is not allowed; expected ")


def test_role_that_cannot_sit_on_a_gate(tmp_path: Path) -> None:
    text = CREDIT.replace("role: model_risk_officer", "role: auditor")
    exc = refused(tmp_path, text)
    assert exc.message == (f"credit-underwriting.yaml:{line_of(text, 'role: auditor')}: stages[2].approvals[0].role: "
                           "role 'auditor' cannot approve a gate; use one of model_risk_officer, model_validator")


def test_bad_duration(tmp_path: Path) -> None:
    text = CREDIT.replace("sla: 5d", "sla: five days")
    exc = refused(tmp_path, text)
    assert exc.message == (f"credit-underwriting.yaml:{line_of(text, 'five days')}: stages[1].approvals[0].sla: "
                           "invalid duration 'five days': use a number and one of s, m, h, d, w (e.g. 5d)")


def test_duplicate_intent(tmp_path: Path) -> None:
    exc = refused(tmp_path, CREDIT, extra={"zz-copy.yaml": CREDIT})
    assert exc.message == (f"zz-copy.yaml:{line_of(CREDIT, 'intent:')}: intent: intent 'credit-underwriting' is "
                           "already defined by credit-underwriting.yaml; one policy per intent")


def test_all_problems_of_all_files_surface_at_once(tmp_path: Path) -> None:
    broken_other = (POLICIES / "fraud-detection.yaml").read_text().replace("risk_tier: 2", "risk_tier: 9")
    exc = refused(tmp_path, CREDIT.replace("sla: 5d", "sla: 5x"), extra={"fraud.yaml": broken_other})
    assert {(d["file"], d["field"]) for d in exc.details} == {
        ("credit-underwriting.yaml", "stages[1].approvals[0].sla"), ("fraud.yaml", "risk_tier")}


def test_duplicate_stage_points_at_the_second(tmp_path: Path) -> None:
    text = CREDIT.replace("- name: staging", "- name: validation")
    exc = refused(tmp_path, text)
    line = text.index("- name: validation", text.index("- name: validation") + 1)
    assert exc.message == f"credit-underwriting.yaml:{text[:line].count(chr(10)) + 1}: stages[3].name: " \
                          "stage names must be unique"


def test_reserved_builtin_check_id(tmp_path: Path) -> None:
    exc = refused(tmp_path, CREDIT.replace("id: separation", "id: features-registered"))
    assert exc.details[0]["field"] == "stages[1].checks[1].id"
    assert "reserved" in exc.message


def test_escalation_needs_an_sla(tmp_path: Path) -> None:
    exc = refused(tmp_path, CREDIT.replace("        sla: 5d\n", ""))
    assert exc.details[0]["field"] == "stages[1].approvals[0].escalate_to"


def test_unknown_policy_key_and_yaml_error(tmp_path: Path) -> None:
    exc = refused(tmp_path, CREDIT.replace("risk_tier: 1", "risk_tier: 1\nowner: me"))
    assert exc.details[0]["field"] == "owner" and exc.details[0]["line"] == line_of(CREDIT, "risk_tier") + 1
    exc = refused(tmp_path, CREDIT.replace("title: Consumer", "title: [Consumer"))
    assert exc.details[0]["type"] == "yaml_syntax" and exc.details[0]["line"] is not None


def test_load_policy_single_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(CREDIT.replace("count: 2", "count: 0"))
    with pytest.raises(InvalidPolicy) as info:
        load_policy(path)
    assert info.value.message == (f"p.yaml:{line_of(CREDIT, 'count: 2')}: stages[2].approvals[0].count: "
                                  "input should be greater than or equal to 1")
