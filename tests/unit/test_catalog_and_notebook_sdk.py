"""The feature catalog's rules (engine.catalog) and the notebook SDK (``progression``) offline: what each policy says
of a feature, who may approve a change, catalog versions, local verdicts, HTML/text tables, evidence writers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from engine.catalog import (
    approval_refusal,
    approvals_needed,
    catalog_hash,
    feature_verdict,
    snapshot_content,
    snapshot_from_content,
)
from engine.lifecycle import ResolvedFeature
from engine.loading import load_feature_catalog
from engine.settings import PROJECT_ROOT
from engine.wire import CatalogEntry, CatalogSnapshot
from progression import (
    EvidenceFormatError,
    LocalPolicy,
    PolicyMismatch,
    write_evidence,
    write_metrics,
    write_model_card,
    write_proxy_analysis,
)
from testing.workflow import CREDIT, MARKETING, registry

FEATURES = PROJECT_ROOT / "policies" / "features.yaml"


def _catalog() -> CatalogSnapshot:
    entries = [CatalogEntry(name=f.name, description=f.description, tags=f.tags)
               for f in load_feature_catalog(FEATURES)]
    return snapshot_from_content(3, snapshot_content(entries))


def _policy(intent: str = "credit-underwriting") -> LocalPolicy:
    loaded = registry().get(intent)
    assert loaded is not None
    return LocalPolicy(loaded, _catalog())


def _feature(name: str) -> ResolvedFeature:
    return next(f for f in load_feature_catalog(FEATURES) if f.name == name)


# ---- engine.catalog ----------------------------------------------------------------------------


def test_verdicts_come_from_the_policies_own_checks() -> None:
    credit = registry().get("credit-underwriting").policy  # type: ignore[union-attr]
    marketing = registry().get("marketing-propensity").policy  # type: ignore[union-attr]
    age = feature_verdict(credit, _feature("age"))
    assert age.verdict == "forbidden" and {r.check_id for r in age.rules} == {"feature-restricted",
                                                                              "no-protected-attributes"}
    zip_code = feature_verdict(credit, _feature("zip_code"))
    assert zip_code.verdict == "requires"
    assert {r.check_id: r.requires_evidence for r in zip_code.rules} == {
        "pii-justified": ["pii_justification"], "proxy-analysed": ["proxy_analysis"]}
    assert feature_verdict(credit, _feature("bureau_score")).verdict == "allowed"
    email = feature_verdict(marketing, _feature("email"))
    assert email.verdict == "requires" and email.rules[0].requires_evidence == ["consent_basis"]
    assert feature_verdict(credit, ResolvedFeature(name="nope", known=False)).verdict == "unknown"
    # a restricted:* tag forbids everywhere, even where no check reads tags
    anywhere = ResolvedFeature(name="x", tags=["restricted:*"])
    assert feature_verdict(registry().get("internal-analytics").policy, anywhere).verdict == "forbidden"  # type: ignore[union-attr]


def test_two_approvals_only_for_removing_a_sensitive_tag() -> None:
    assert approvals_needed(["pii", "proxy"], ["pii"]) == 2
    assert approvals_needed(["protected_attribute"], []) == 2
    assert approvals_needed(["restricted:credit-underwriting", "demographic"], ["demographic"]) == 2
    assert approvals_needed(["pii"], ["pii", "proxy"]) == 1  # adding one makes the catalog stricter
    assert approvals_needed(None, ["anything"]) == 1
    assert approvals_needed(["pii"], []) == 1


def test_who_may_approve() -> None:
    base = dict(proposal_status="pending", proposer_id="u-dev", feature="zip_code", earlier_approvers=[])
    own = approval_refusal(**base, approver_id="u-dev", approver_username="dana", approver_is_admin=True,
                           feature_owner="dana")
    assert own is not None and own.code == "own_proposal"
    stranger = approval_refusal(**base, approver_id="u-x", approver_username="x", approver_is_admin=False,
                                feature_owner="olga")
    assert stranger is not None and stranger.code == "not_feature_owner"
    no_owner = approval_refusal(**base, approver_id="u-o", approver_username="olga", approver_is_admin=False,
                                feature_owner=None)
    assert no_owner is not None and no_owner.code == "not_feature_owner"
    assert approval_refusal(**base, approver_id="u-o", approver_username="olga", approver_is_admin=False,
                            feature_owner="olga") is None
    assert approval_refusal(**base, approver_id="u-a", approver_username="adam", approver_is_admin=True,
                            feature_owner="olga") is None
    twice = approval_refusal(**{**base, "earlier_approvers": ["u-o"]}, approver_id="u-o", approver_username="olga",
                             approver_is_admin=False, feature_owner="olga")
    assert twice is not None and twice.code == "already_approved"
    closed = approval_refusal(**{**base, "proposal_status": "applied"}, approver_id="u-a", approver_username="adam",
                              approver_is_admin=True, feature_owner=None)
    assert closed is not None and closed.code == "proposal_closed"


def test_catalog_hash_ignores_tag_order_and_sees_every_change() -> None:
    a = snapshot_content([CatalogEntry(name="f", tags=["b", "a"])])
    b = snapshot_content([CatalogEntry(name="f", tags=["a", "b", "a"])])
    assert catalog_hash(a) == catalog_hash(b)
    assert catalog_hash(a) != catalog_hash(snapshot_content([CatalogEntry(name="f", tags=["a"])]))
    assert catalog_hash(a) != catalog_hash(snapshot_content([CatalogEntry(name="f", tags=["a", "b"], owner="o")]))


# ---- the notebook SDK, offline -----------------------------------------------------------------------


def _example_evidence(repo: Path) -> dict[str, object]:
    spec = yaml.safe_load((repo / "progression.yaml").read_text())
    out: dict[str, object] = {}
    for name, rel in spec["evidence"].items():
        text = (repo / rel).read_text()
        out[name] = json.loads(text) if rel.endswith(".json") else text
    return out


def test_the_notebook_learns_before_training_what_the_credit_policy_says() -> None:
    credit = _policy()
    report = credit.features(["age", "zip_code", "bureau_score", "shoe_size"])
    assert report.forbidden == ["age"]
    assert report.requires == {"zip_code": ["pii_justification", "proxy_analysis"]}
    assert report.unknown == ["shoe_size"]
    text, html = str(report), report._repr_html_()
    assert "age" in text and "forbidden" in text and "<table" in html and "proxy_analysis" in html


def test_local_verdict_in_memory() -> None:
    credit = _policy()
    evidence = _example_evidence(CREDIT)
    features = yaml.safe_load((CREDIT / "progression.yaml").read_text())["features"]
    clean = credit.evaluate(spec=CREDIT / "progression.yaml", evidence=evidence)
    assert clean.passes and clean.failing == [] and clean.missing_evidence == []
    weaker = dict(evidence, metrics={**evidence["metrics"], "auc": 0.61})  # type: ignore[dict-item]
    weak = credit.evaluate(spec=CREDIT / "progression.yaml", evidence=weaker, features=[*features, "zip_code"])
    failing = {(stage, check) for stage, check, _ in weak.failing}
    assert failing == {("validation", "discrimination"), ("validation", "pii-justified"),
                       ("validation", "proxy-analysed")}
    assert "validation" not in weak.stages_passing and "registration" in weak.stages_passing
    assert weak.missing_evidence == ["pii_justification", "proxy_analysis"]
    html = weak._repr_html_()
    assert "discrimination" in html and "FAIL" in html and "evidence.metrics.auc = 0.61" in html
    text = str(weak)
    assert "would be blocked" in text and "zip_code requires evidence: pii_justification, proxy_analysis" in text
    # no spec at all: the evidence the route reads and is not given is missing
    bare = credit.evaluate(features=["bureau_score"], evidence={"metrics": evidence["metrics"]})
    assert {"fairness", "model_card", "monitoring_plan"} <= set(bare.missing_evidence)


def test_offline_after_one_fetch(tmp_path: Path) -> None:
    credit = _policy()
    saved = credit.save(tmp_path / "credit.json")
    again = LocalPolicy.load(saved)
    assert again.policy_hash == credit.policy_hash and again.catalog == credit.catalog
    data = json.loads(saved.read_text())
    data["policy_yaml"] = data["policy_yaml"].replace("0.70", "0.50")  # a weaker policy, same claimed hash
    saved.write_text(json.dumps(data))
    with pytest.raises(PolicyMismatch):
        LocalPolicy.load(saved)


def test_evidence_writers_write_what_start_submits(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(MARKETING, repo)
    spec_before = (repo / "progression.yaml").read_text()
    metrics = json.loads((MARKETING / "evidence/metrics.json").read_text())
    metrics["auc"] = 0.64
    path = write_metrics(repo, metrics)
    declared = yaml.safe_load(spec_before)["evidence"]["metrics"]
    assert path == (repo / declared).resolve() and json.loads(path.read_text())["auc"] == 0.64
    card = write_model_card(repo, "# Card\n" + "Intended use. " * 80)
    assert card.read_text().startswith("# Card")
    new = write_proxy_analysis(repo, "No proxies.")
    spec = yaml.safe_load((repo / "progression.yaml").read_text())
    assert spec["evidence"]["proxy_analysis"] == "docs/proxy_analysis.md" and new.is_file()
    assert spec_before.splitlines()[0] == (repo / "progression.yaml").read_text().splitlines()[0]  # comments kept
    with pytest.raises(EvidenceFormatError):
        write_metrics(repo, [1, 2])  # type: ignore[arg-type]
    with pytest.raises(EvidenceFormatError):
        write_evidence(repo, "Bad-Name", {})
    marketing = LocalPolicy(registry().get("marketing-propensity"), _catalog())  # type: ignore[arg-type]
    from_repo = marketing.evaluate_repository(repo)
    in_memory = marketing.evaluate(spec=repo / "progression.yaml", evidence=_example_evidence(repo))

    def checks(verdict: object) -> list[tuple[str, str, bool, str]]:
        return [(s.name, c.id, c.passed, c.reason) for s in verdict.result.route for c in s.checks]  # type: ignore[attr-defined]

    assert checks(from_repo) == checks(in_memory)
    passed = ("validation", "discrimination", True, "met: Holdout AUC is at least 0.60 — evidence.metrics.auc = 0.64")
    assert passed in checks(from_repo)
