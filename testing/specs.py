"""Malformed ``progression.yaml`` documents: every case the loader's tests refuse, in one place.

``tests/unit/test_loading.py`` checks the loader's message for each kind of problem; ``tests/api/test_one_loader.py``
sends every case here to the route (dry run) and to the start and requires the same status, code, message, line
and details from both (one loader: ``engine.loading.load_spec``).
"""

from __future__ import annotations

from engine.settings import PROJECT_ROOT

CREDIT_SPEC = (PROJECT_ROOT / "examples" / "retail-credit-scorecard" / "progression.yaml").read_text()


def _with(old: str, new: str) -> bytes:
    assert old in CREDIT_SPEC, old
    return CREDIT_SPEC.replace(old, new, 1).encode()


MALFORMED_SPECS: dict[str, bytes] = {
    "yaml_syntax_error": _with("  team: retail-risk\n", "  team: retail-risk\n   bad: [unclosed\n"),
    "bad_indentation": _with("  team: retail-risk", " team: retail-risk"),
    "unknown_key_modle": _with("model:\n", "modle:\n"),
    "unknown_nested_key": _with("  team: retail-risk\n", "  team: retail-risk\n  colour: blue\n"),
    "misspelt_target": _with("target:", "targt:"),
    "missing_intent": _with("  business_intent: credit-underwriting\n", ""),
    "intent_typo": _with("business_intent: credit-underwriting", "business_intent: credit-underwritting"),
    "intent_unknown": _with("business_intent: credit-underwriting", "business_intent: payroll"),
    "wrong_type_features": _with("features:\n", "features: 7\nx_features:\n"),
    "number_for_string": _with("  id: 3.2.0", "  id: 3.2"),
    "path_outside_repository": _with("evidence/fairness.json", "../secrets/fairness.json"),
    "absolute_path": _with("evidence/fairness.json", "/etc/passwd"),
    "bad_slug": _with("  team: retail-risk\n", "  team: Retail Risk\n"),
    "alias": (CREDIT_SPEC + "extra: *nothing\n").encode(),
    "anchor": (CREDIT_SPEC + "extra: &a 1\n").encode(),
    "duplicate_key": _with("  team: retail-risk\n", "  team: retail-risk\n  team: fraud\n"),
    "deep_nesting": (CREDIT_SPEC + "deep: " + "[" * 80 + "]" * 80 + "\n").encode(),
    "invalid_utf8": CREDIT_SPEC.encode().replace(b"name: Retail credit scorecard", b"name: Retail \xff scorecard"),
    "second_document": (CREDIT_SPEC + "---\nkind: Other\n").encode(),
    "non_string_key": _with("  metrics: evidence/metrics.json\n",
                            "  1: docs/one.md\n  metrics: evidence/metrics.json\n"),
    "python_tag": (CREDIT_SPEC + "x: !!python/object/apply:os.system [echo]\n").encode(),
    "duplicate_feature": _with("  - revolving_balance\n", "  - revolving_balance\n  - bureau_score\n"),
    "missing_digest": _with("  artifact_digest: sha256:", "  x_artifact_digest: sha256:").replace(
        b"  x_artifact_digest: sha256:85da4379852f18b3855de31e35760fa9acad8aeb1992f5d13235250e4b17390b\n", b""),
    "empty_document": b"",
    "not_a_mapping": b"- just\n- a list\n",
    "wrong_api_version": _with("apiVersion: progression/v1", "apiVersion: progression/v2"),
}
