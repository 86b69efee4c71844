"""progression.yaml loading: every problem names the file, the field and the line."""

from __future__ import annotations

import pytest

from engine.errors import InvalidSpec
from engine.loading import PolicyRegistry, YamlProblem, load_spec, safe_load_yaml
from engine.settings import PROJECT_ROOT

ROOT = PROJECT_ROOT

SPEC = """\
apiVersion: progression/v1
kind: ModelProgression
model:
  id: retail-credit-scorecard
  name: Retail credit scorecard
  team: retail-risk
  business_intent: credit-underwriting
version:
  id: 3.2.0
  source: git+https://git.example/retail/scorecard@4f2a9c1
  artifact: s3://models/retail-credit-scorecard/3.2.0/
features: [bureau_score, utilization_ratio, months_since_delinquency]
evidence:
  metrics: evidence/metrics.json
  fairness: evidence/fairness.json
  model_card: docs/model_card.md
target: production
"""


@pytest.fixture(scope="module")
def registry() -> PolicyRegistry:
    return PolicyRegistry.from_dir(ROOT / "policies")


# The credit policy requires the artifact's digest; SPEC leaves it out so its line numbers stay put.
DIGEST_LINE = "  artifact_digest: sha256:85da4379852f18b3855de31e35760fa9acad8aeb1992f5d13235250e4b17390b\n"
SPEC_WITH_DIGEST = SPEC.replace("features: [", DIGEST_LINE + "features: [", 1)


def refusal(text: str | bytes, **kwargs: object) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as info:
        load_spec(text, **kwargs)  # type: ignore[arg-type]
    exc = info.value
    assert exc.code == "invalid_spec"
    assert exc.details and exc.message.startswith(f"{exc.details[0]['file']}:")
    return exc


def test_valid_spec_loads(registry: PolicyRegistry) -> None:
    spec = load_spec(SPEC_WITH_DIGEST, registry=registry)
    assert spec.model.business_intent == "credit-underwriting"
    assert spec.features == ["bureau_score", "utilization_ratio", "months_since_delinquency"]
    assert spec.evidence["model_card"] == "docs/model_card.md"
    assert spec.progression_id == "retail-credit-scorecard@3.2.0"


def test_policy_requiring_an_artifact_digest_names_the_field(registry: PolicyRegistry) -> None:
    exc = refusal(SPEC, registry=registry)
    assert exc.details[0]["field"] == "version.artifact_digest" and exc.details[0]["line"] == 8
    assert "credit-underwriting policy requires the artifact's digest" in exc.message
    exc = refusal(SPEC_WITH_DIGEST.replace("sha256:85da", "md5:85da"))
    assert exc.details[0]["field"] == "version.artifact_digest"
    # without a registry (or under a policy that does not require it) the digest is optional
    assert load_spec(SPEC).version.artifact_digest is None


def test_unknown_key_names_key_and_line() -> None:
    exc = refusal(SPEC.replace("  team: retail-risk\n", "  team: retail-risk\n  colour: blue\n"))
    assert exc.message == ("progression.yaml:7: model.colour: unknown key 'colour'; "
                           "allowed: id, name, team, business_intent")
    assert exc.details == [{"file": "progression.yaml", "line": 7, "field": "model.colour",
                            "message": "unknown key 'colour'; allowed: id, name, team, business_intent",
                            "type": "extra_forbidden"}]


def test_misspelt_key_gets_a_suggestion() -> None:
    exc = refusal(SPEC.replace("target:", "targt:"))
    assert exc.message == "progression.yaml:17: targt: unknown key 'targt' (did you mean 'target'?)"


def test_missing_intent_points_at_parent_mapping() -> None:
    exc = refusal(SPEC.replace("  business_intent: credit-underwriting\n", ""))
    assert exc.message == "progression.yaml:3: model.business_intent: required field is missing"
    assert exc.details[0]["type"] == "missing"


def test_wrong_type_names_expected_type() -> None:
    exc = refusal(SPEC.replace("features: [bureau_score, utilization_ratio, months_since_delinquency]",
                               "features: bureau_score"))
    assert exc.message == "progression.yaml:12: features: expected a list (got a string)"


def test_number_where_string_expected_suggests_quoting() -> None:
    exc = refusal(SPEC.replace("  id: 3.2.0", "  id: 3.2"))
    assert exc.message == 'progression.yaml:9: version.id: expected a string (got a number); quote it: "3.2"'


@pytest.mark.parametrize(
    ("path", "reason"),
    [("../secrets/metrics.json", "path '../secrets/metrics.json' leaves the repository"),
     ("evidence/../../x.json", "path 'evidence/../../x.json' leaves the repository"),
     ("/etc/passwd", "path '/etc/passwd' is absolute; evidence paths are relative to the repository")],
)
def test_evidence_path_outside_repository_names_the_entry(path: str, reason: str) -> None:
    exc = refusal(SPEC.replace("evidence/fairness.json", path))
    assert exc.message == f"progression.yaml:15: evidence.fairness: {reason}"
    assert exc.details[0]["type"] == "path_outside_repository"


def test_every_problem_is_listed_first_one_in_message() -> None:
    text = SPEC.replace("  team: retail-risk\n", "  team: Retail Risk\n").replace("target: production",
                                                                                 "target: prod\nowner: me")
    exc = refusal(text)
    assert [(d["line"], d["field"]) for d in exc.details] == [(6, "model.team"), (17, "target"), (18, "owner")]
    assert exc.message.startswith("progression.yaml:6: model.team: 'Retail Risk' must be a lowercase slug")


def test_intent_without_policy_suggests_closest(registry: PolicyRegistry) -> None:
    exc = refusal(SPEC.replace("business_intent: credit-underwriting", "business_intent: credit-underwritting"),
                  registry=registry)
    assert exc.message == ("progression.yaml:7: model.business_intent: no policy for intent "
                           "'credit-underwritting' (did you mean 'credit-underwriting'?)")
    assert exc.details[0]["type"] == "unknown_intent"


def test_intent_far_from_any_policy_lists_known_intents(registry: PolicyRegistry) -> None:
    exc = refusal(SPEC.replace("business_intent: credit-underwriting", "business_intent: payroll"),
                  registry=registry)
    assert exc.message == ("progression.yaml:7: model.business_intent: no policy for intent 'payroll' (known "
                           "intents: credit-underwriting, fraud-detection, internal-analytics, marketing-propensity)")


def test_intent_is_not_checked_without_registry() -> None:
    spec = load_spec(SPEC.replace("business_intent: credit-underwriting", "business_intent: payroll"))
    assert spec.model.business_intent == "payroll"


def test_yaml_syntax_error_names_line() -> None:
    exc = refusal(SPEC.replace("  team: retail-risk", " team: retail-risk"), filename="repo/progression.yaml")
    assert exc.message.startswith("repo/progression.yaml:6: ")
    assert "expected <block end>" in exc.message
    assert exc.details[0]["type"] == "yaml_syntax"


def test_alias_bomb_is_refused_before_expansion() -> None:
    bomb = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    exc = refusal(bomb)
    assert exc.message == "progression.yaml:1: anchors are not allowed (&a)"


def test_alias_without_anchor_is_refused() -> None:
    exc = refusal(SPEC + "extra: *nothing\n")
    assert exc.message.startswith("progression.yaml:18: ")
    assert "alias" in exc.message


def test_oversize_document_refused_before_parsing() -> None:
    exc = refusal(SPEC + "# padding\n" * 30_000)
    assert exc.message == f"progression.yaml: document is {len(SPEC) + 300_000} bytes; the limit is 262144"
    exc = refusal(SPEC, max_bytes=100)
    assert exc.details[0]["type"] == "too_large"


def test_duplicate_key_names_both_lines() -> None:
    exc = refusal(SPEC.replace("  team: retail-risk\n", "  team: retail-risk\n  team: fraud\n"))
    assert exc.message == "progression.yaml:7: model.team: duplicate key 'team' (first defined on line 6)"


def test_deep_nesting_refused() -> None:
    exc = refusal(SPEC + "deep: " + "[" * 80 + "]" * 80 + "\n")
    assert exc.message == "progression.yaml:18: nesting is deeper than 50 levels"


def test_invalid_utf8_names_line_and_offset() -> None:
    raw = SPEC.encode().replace(b"Retail credit scorecard", b"Retail \xff scorecard")
    exc = refusal(raw)
    offset = raw.index(b"\xff")
    assert exc.message == f"progression.yaml:5: not valid UTF-8 (byte 0xff at offset {offset})"


def test_second_document_refused() -> None:
    exc = refusal(SPEC + "---\nkind: Other\n")
    assert exc.message == "progression.yaml:18: only one YAML document is allowed (found a second '---' document)"


def test_non_string_key_refused() -> None:
    exc = refusal(SPEC.replace("evidence:\n", "evidence:\n  1: docs/one.md\n"))
    assert exc.message == "progression.yaml:14: evidence: key '1' is not a string; quote it"


def test_python_tags_refused() -> None:
    exc = refusal(SPEC + "x: !!python/object/apply:os.system [echo]\n")
    assert exc.message.startswith("progression.yaml:18: x: tag ")
    assert "not allowed" in exc.message


def test_empty_and_non_mapping_documents() -> None:
    assert refusal("").message == "progression.yaml:1: the document is empty; expected a ModelProgression mapping"
    assert refusal("- a\n").message.endswith("the document is a list, not a mapping; expected a ModelProgression "
                                             "mapping")


def test_duplicate_feature_points_at_second_occurrence() -> None:
    exc = refusal(SPEC.replace("months_since_delinquency]", "bureau_score]"))
    assert exc.message == "progression.yaml:12: features[2]: feature 'bureau_score' is listed twice"


def test_safe_load_yaml_line_map() -> None:
    data, lines = safe_load_yaml(SPEC, filename="p.yaml")
    assert data["model"]["business_intent"] == "credit-underwriting"
    assert lines[("model", "business_intent")] == 7
    assert lines[("evidence", "fairness")] == 15
    assert lines[("features", 2)] == 12
    with pytest.raises(YamlProblem):
        safe_load_yaml("a: &x 1\nb: *x\n", filename="p.yaml")


@pytest.mark.parametrize("example", sorted(p.name for p in (ROOT / "examples").iterdir()
                                            if (p / "progression.yaml").is_file()))  # not examples/notebooks
def test_every_example_spec_validates_against_the_registry(example: str, registry: PolicyRegistry) -> None:
    path = ROOT / "examples" / example / "progression.yaml"
    spec = load_spec(path.read_bytes(), filename=str(path), registry=registry)
    assert registry.get(spec.model.business_intent) is not None
    for relative in spec.evidence.values():
        assert (path.parent / relative).is_file(), relative
