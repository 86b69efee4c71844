"""CEL checks over a spec, its evidence and its resolved features."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from engine import checks
from engine.checks import (
    EVALUATOR,
    build_context,
    compile_expr,
    evaluate_check,
    evaluate_stage,
    evidence_value,
)
from engine.lifecycle import CheckResult, ResolvedFeature
from engine.loading import PolicyRegistry, load_feature_catalog, load_spec, resolve_features
from engine.policy import StageDef
from engine.settings import PROJECT_ROOT
from engine.spec import ProgressionSpec

ROOT = PROJECT_ROOT
NOW = datetime(2026, 5, 4, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def registry() -> PolicyRegistry:
    return PolicyRegistry.from_dir(ROOT / "policies")


@pytest.fixture(scope="module")
def catalog() -> list[ResolvedFeature]:
    return load_feature_catalog(ROOT / "policies" / "features.yaml")


def make_spec(features: list[str] | None = None, intent: str = "credit-underwriting") -> ProgressionSpec:
    return ProgressionSpec.model_validate({
        "apiVersion": "progression/v1", "kind": "ModelProgression",
        "model": {"id": "m", "name": "M", "team": "t", "business_intent": intent},
        "version": {"id": "1.0.0", "source": "git+https://git.example/m@abc1234", "artifact": "s3://m/1"},
        "features": features or [], "evidence": {"metrics": "evidence/metrics.json"},
    })


def stage(*exprs: str, name: str = "validation") -> StageDef:
    return StageDef.model_validate({"name": name, "checks": [
        {"id": f"c{i}", "description": f"check {i}", "expr": e} for i, e in enumerate(exprs)]})


def run(exprs: list[str], evidence: dict[str, Any], features: list[ResolvedFeature] | None = None,
        first: bool = False) -> list[CheckResult]:
    spec = make_spec([f.name for f in features or []])
    return evaluate_stage(stage(*exprs), spec=spec, evidence=evidence, features=features or [],
                          is_first_stage=first, now=NOW)


METRICS = {"auc": 0.78, "ks": 0.42, "sample": {"validation": 96000}}


def test_pass_records_inputs_and_evaluator() -> None:
    [result] = run(["evidence.metrics.auc >= 0.70"], {"metrics": METRICS})
    assert result.passed and result.reason == "met: check 0 — evidence.metrics.auc = 0.78"  # the value shown
    assert result.inputs == {"evidence.metrics.auc": 0.78}
    assert result.evaluator == EVALUATOR == "common-expression-language 0.10.0"
    assert (result.stage, result.check_id, result.expr, result.evaluated_at) == (
        "validation", "c0", "evidence.metrics.auc >= 0.70", NOW)


def test_fail_with_reason_naming_the_values() -> None:
    [result] = run(["evidence.metrics.auc >= 0.80"], {"metrics": METRICS})
    assert not result.passed
    assert result.reason == "not met: check 0 — evidence.metrics.auc = 0.78"


def test_missing_evidence_detected_before_evaluation() -> None:
    [result] = run(["evidence.fairness.groups.all(g, evidence.fairness.groups[g].air >= 0.8)"],
                   {"metrics": METRICS})
    assert not result.passed and result.reason == "evidence.fairness is missing"
    assert result.inputs == {"evidence.fairness.groups": checks.MISSING}


def test_missing_nested_key_inside_json() -> None:
    [top, nested] = run(["evidence.metrics.gini >= 0.5", "evidence.metrics.sample.out_of_time > 1000"],
                        {"metrics": METRICS})
    assert (top.passed, top.reason) == (False, "evidence.metrics.gini is missing")
    assert (nested.passed, nested.reason) == (False, "evidence.metrics.sample.out_of_time is missing")


def test_missing_key_inside_one_element_of_a_map() -> None:
    fairness = {"groups": {"female": {"air": 0.95}, "age_62_plus": {"ratio": 1.1}}}
    [result] = run(["evidence.fairness.groups.all(g, evidence.fairness.groups[g].air >= 0.8)"],
                   {"fairness": fairness})
    assert result.reason == "evidence.fairness.groups.age_62_plus.air is missing"


def test_non_boolean_result_fails() -> None:
    [number, text] = run(["evidence.metrics.auc", "'yes'"], {"metrics": METRICS})
    assert not number.passed and number.reason == "expression returned float 0.78, not a boolean"
    assert not text.passed and text.reason == "expression returned str 'yes', not a boolean"


def test_runtime_errors_never_raise() -> None:
    results = run(["evidence.metrics.auc + 1 > 0", "evidence.metrics.sample > 3", "nosuchfunc(1)",
                   "evidence.notes.auc > 0.5", "1 / 0 == 1"],
                  {"metrics": METRICS, "notes": "free text"})
    assert [r.passed for r in results] == [False] * 5
    assert results[0].reason.startswith("evaluation error: Unsupported operation: float + int")
    assert results[1].reason.startswith("evaluation error: No such overload")
    assert results[2].reason.startswith("evaluation error: Undefined variable or function: 'nosuchfunc'")
    assert results[3].reason == "evidence.notes is text, not structured data (is the file valid JSON or YAML?)"
    assert results[4].reason.startswith("evaluation error: division by zero")


def test_expression_that_does_not_compile_fails_not_raises() -> None:
    [result] = run(["evidence.metrics.auc >="], {"metrics": METRICS})
    assert not result.passed and result.reason.startswith("expression does not compile: Syntax error")


def test_has_guard_makes_evidence_optional() -> None:
    expr = "features.all(f, !('pii' in f.tags) || has(evidence.pii_justification))"
    pii = ResolvedFeature(name="email", tags=["pii"])
    plain = ResolvedFeature(name="bureau_score", tags=["bureau"])
    [ok] = run([expr], {}, [plain])
    [bad] = run([expr], {}, [plain, pii])
    [justified] = run([expr], {"pii_justification": "Used to match applications to bureau files."}, [pii])
    assert ok.passed and justified.passed
    assert not bad.passed and bad.reason == "not met: check 0 — offending: email (pii)"


def test_unknown_feature_fails_features_registered(catalog: list[ResolvedFeature]) -> None:
    features = resolve_features(["bureau_score", "shoe_size", "star_sign"], catalog)
    results = run([], {}, features, first=True)
    assert [(r.check_id, r.passed) for r in results] == [("features-registered", False)]
    assert results[0].reason == "not registered in the feature catalog: shoe_size, star_sign"
    assert results[0].inputs["unknown"] == ["shoe_size", "star_sign"]
    assert [r.check_id for r in run(["true"], {}, features, first=False)] == ["c0"]


def test_registered_features_pass(catalog: list[ResolvedFeature]) -> None:
    [result] = run([], {}, resolve_features(["bureau_score", "age"], catalog), first=True)
    assert result.passed and result.reason == "met: Every feature is registered in the feature catalog (2 features)"


def test_protected_attribute_fails_credit_but_passes_marketing(
        registry: PolicyRegistry, catalog: list[ResolvedFeature]) -> None:
    names = ["bureau_score", "utilization_ratio", "age"]
    features = resolve_features(names, catalog)
    evidence = {"metrics": {"auc": 0.74, "top_decile_lift": 2.0}}
    credit = registry.get("credit-underwriting")
    marketing = registry.get("marketing-propensity")
    assert credit is not None and marketing is not None
    credit_validation = credit.policy.stage("validation")
    marketing_validation = marketing.policy.stage("validation")
    assert credit_validation is not None and marketing_validation is not None

    credit_results = evaluate_stage(credit_validation, spec=make_spec(names), evidence=evidence, features=features,
                                    is_first_stage=False, now=NOW)
    by_id = {r.check_id: r for r in credit_results}
    blocked = by_id["no-protected-attributes"]
    assert not blocked.passed
    assert blocked.reason == ("not met: No feature tagged protected_attribute (ECOA / Reg B) — offending: "
                              "age (demographic, protected_attribute, restricted:credit-underwriting)")
    assert {"name": "age", "tags": ["demographic", "protected_attribute", "restricted:credit-underwriting"],
            "known": True} in blocked.inputs["features"]

    marketing_results = evaluate_stage(marketing_validation, spec=make_spec(names, "marketing-propensity"),
                                       evidence=evidence, features=features, is_first_stage=False, now=NOW)
    assert all(r.passed for r in marketing_results), [r.reason for r in marketing_results if not r.passed]


def load_example(directory: Path, registry: PolicyRegistry) -> tuple[ProgressionSpec, dict[str, Any]]:
    spec = load_spec((directory / "progression.yaml").read_bytes(), registry=registry)
    evidence = {name: evidence_value((directory / rel).read_bytes(), rel, None) for name, rel in spec.evidence.items()}
    return spec, evidence


@pytest.mark.parametrize("example", ["retail-credit-scorecard", "card-fraud-detector", "marketing-propensity"])
def test_examples_pass_every_check_of_their_route(
        example: str, registry: PolicyRegistry, catalog: list[ResolvedFeature]) -> None:
    spec, evidence = load_example(ROOT / "examples" / example, registry)
    loaded = registry.get(spec.model.business_intent)
    assert loaded is not None
    features = resolve_features(spec.features, catalog)
    results: list[CheckResult] = []
    for i, stage_def in enumerate(loaded.policy.route_for(spec.target)):
        results += evaluate_stage(stage_def, spec=spec, evidence=evidence, features=features,
                                  is_first_stage=i == 0, now=NOW)
    failed = [(r.stage, r.check_id, r.reason) for r in results if not r.passed]
    assert failed == []
    assert results[0].check_id == "features-registered"
    assert len(results) == 1 + sum(len(s.checks) for s in loaded.policy.stages)
    json.dumps([r.model_dump(mode="json") for r in results])  # inputs are JSON for the audit chain


def test_credit_example_with_weak_evidence_is_blocked_with_reasons(
        registry: PolicyRegistry, catalog: list[ResolvedFeature]) -> None:
    spec, evidence = load_example(ROOT / "examples" / "retail-credit-scorecard", registry)
    evidence["metrics"] = {**evidence["metrics"], "psi": 0.31,
                           "characteristic_psi": {**evidence["metrics"]["characteristic_psi"], "debt_to_income": 0.4}}
    evidence["fairness"]["groups"]["black"]["adverse_impact_ratio"] = 0.71
    credit = registry.get("credit-underwriting")
    assert credit is not None and (validation := credit.policy.stage("validation")) is not None
    results = evaluate_stage(validation, spec=spec, evidence=evidence,
                             features=resolve_features(spec.features, catalog), is_first_stage=False, now=NOW)
    failed = {r.check_id: r.reason for r in results if not r.passed}
    assert failed == {
        "stability": "not met: Population stability index of the score is below 0.25 — evidence.metrics.psi = 0.31",
        "characteristic-stability": "not met: Every characteristic's PSI is below 0.25 — offending: debt_to_income",
        "adverse-impact": "not met: Adverse impact ratio is at least 0.80 for every protected group (four-fifths "
                          "rule) — offending: black",
    }


def test_large_inputs_are_truncated_with_digest() -> None:
    card = "# Model card\n" + "x" * 10_000
    [result] = run(["size(evidence.model_card) >= 1500"], {"model_card": card})
    assert result.passed
    recorded = result.inputs["evidence.model_card"]
    assert recorded["truncated"] is True and recorded["length"] == len(card) and len(recorded["preview"]) == 500


def test_evidence_value_by_kind() -> None:
    assert evidence_value(b'{"auc": 0.7}', "evidence/metrics.json", None) == {"auc": 0.7}
    assert evidence_value(b'{"auc": 0.7}', None, "application/json") == {"auc": 0.7}
    assert evidence_value(b"as_of: 2026-03-31\nauc: 0.7\n", "m.yaml", None) == {"as_of": "2026-03-31", "auc": 0.7}
    assert evidence_value(b"# Card\n", "docs/model_card.md", "text/markdown") == "# Card\n"
    assert evidence_value(b"{not json", "m.json", None) == "{not json"
    data = b"\x89PNG\xff\x00"
    assert evidence_value(data, "plot.png", "image/png") == {"sha256": hashlib.sha256(data).hexdigest(), "size": 6}


def test_context_variables(catalog: list[ResolvedFeature]) -> None:
    spec = make_spec(["bureau_score", "nope"])
    context = build_context(spec, {"metrics": METRICS}, resolve_features(spec.features, catalog), now=NOW)
    assert set(context) == {"spec", "model", "version", "evidence", "features", "feature_names", "target", "now"}
    assert context["feature_names"] == ["bureau_score", "nope"]
    assert context["features"][1] == {"name": "nope", "description": "", "tags": [], "known": False}
    assert context["model"]["business_intent"] == "credit-underwriting" and context["target"] == "production"
    assert context["spec"]["apiVersion"] == "progression/v1"
    results = run(["model.id == 'm' && version.id == '1.0.0' && target == 'production'",
                   "now > timestamp('2026-01-01T00:00:00Z')", "'bureau_score' in feature_names"], {}, [])
    assert [r.passed for r in results] == [True, True, False]


def test_compile_cache_reuses_programs() -> None:
    assert compile_expr("1 + 1 == 2") is compile_expr("1 + 1 == 2")
    with pytest.raises(checks.ExpressionError):
        compile_expr("1 +")


def test_a_macro_over_a_map_with_an_erroring_element_has_one_answer() -> None:
    """Found by the one-evaluator property test (issue 22): the evaluator iterates a map in hash order, so with an
    erroring element beside a deciding one the same evidence passed in the notebook and failed in the workflow."""
    decided = {"a": {"r": 0.9}, "b": {"r": "n/a"}, "c": {"r": "x"}}
    outcomes = {(r.passed, r.reason) for r in (
        evaluate_check("s", "c", "d", "evidence.m.exists(g, evidence.m[g].r >= 0.8)", {"evidence": {"m": decided}})
        for _ in range(200))}
    assert outcomes == {(True, "met: d")}  # CEL: a true element decides `exists`, errors are absorbed
    failing = {"a": {"r": 0.5}, "b": {"r": "n/a"}, "c": {"r": 0.9}}
    outcomes = {(r.passed, r.reason) for r in (
        evaluate_check("s", "c", "d", "evidence.m.all(g, evidence.m[g].r >= 0.8)", {"evidence": {"m": failing}})
        for _ in range(200))}
    assert outcomes == {(False, "not met: d")}
    errors = {"a": {"x": 0.5}, "b": {"r": "n/a"}, "c": {"r": 0.9}}
    outcomes = {(r.passed, r.reason) for r in (
        evaluate_check("s", "c", "d", "evidence.m.all(g, evidence.m[g].r >= 0.8)", {"evidence": {"m": errors}})
        for _ in range(200))}
    assert outcomes == {(False, "evidence.m.a.r is missing")}  # only errors: always the same one
