"""The scaffold (``progression init``), the published JSON Schema of progression.yaml, the evidence contracts as a
pure engine API, and the CLI's local refusals (oversized files, no wrapping off a terminal, no <bool> in help)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import typer
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from client.cli import app
from client.cli.common import out
from client.cli.render import add_row, columns
from client.repo import read_repository
from engine.checks import evidence_value
from engine.contracts import contract_definition_problems, evidence_problems, published_contracts
from engine.errors import InvalidPolicy
from engine.loading import PolicyRegistry, load_spec, policy_from_text
from engine.scaffold import SCHEMA_FILE, progression_schema, scaffold, schema_text
from engine.settings import PROJECT_ROOT
from engine.wire import SPEC_MAX_BYTES, EvidenceContracts
from engine.yaml_safe import safe_load_yaml

REGISTRY = PolicyRegistry.from_dir(PROJECT_ROOT / "policies")


def _contracts(intent: str) -> EvidenceContracts:
    loaded = REGISTRY.get(intent)
    assert loaded is not None
    return EvidenceContracts(intent=intent, policy_hash=loaded.hash, title=loaded.policy.title,
                             risk_tier=loaded.policy.risk_tier,
                             requires_artifact_digest=loaded.policy.requires_artifact_digest,
                             contracts=published_contracts(loaded.policy))


@pytest.mark.parametrize("intent", REGISTRY.intents())
def test_the_scaffold_is_a_valid_spec_with_evidence_that_meets_its_contracts(intent: str) -> None:
    files = scaffold(_contracts(intent), model_id="my-model", model_name="My model", team="retail-risk",
                     schema=schema_text(REGISTRY.intents()))
    text = files["progression.yaml"]
    assert text.startswith(f"# yaml-language-server: $schema={SCHEMA_FILE}\n")
    spec = load_spec(text, registry=REGISTRY)  # the one loader accepts it, intent and digest included
    assert spec.model.business_intent == intent
    loaded = REGISTRY.get(intent)
    assert loaded is not None
    assert set(spec.evidence) == {n for n, r in loaded.policy.evidence.items() if r.is_contract}
    values = {name: evidence_value(files[path].encode(), path, None) for name, path in spec.evidence.items()}
    assert evidence_problems(loaded.policy, values) == []
    # The editor's schema accepts it too.
    data, _ = safe_load_yaml(text, filename="progression.yaml")
    Draft202012Validator(json.loads(files[SCHEMA_FILE])).validate(data)


def test_the_credit_scaffold_has_the_model_card_sections_and_every_contract() -> None:
    files = scaffold(_contracts("credit-underwriting"), model_id="m", model_name="M", team="t", schema="{}")
    assert {"evidence/metrics.json", "evidence/fairness.json", "docs/model_card.md",
            "docs/monitoring_plan.md"} <= set(files)
    for section in ("Intended use", "Training data", "Performance", "Limitations"):
        assert f"## {section}" in files["docs/model_card.md"]
    assert "artifact_digest: sha256:" in files["progression.yaml"]


def test_the_published_schema_file_is_current() -> None:
    """schemas/progression.schema.json is what the endpoint serves, less this installation's intents."""
    assert (PROJECT_ROOT / "schemas" / "progression.schema.json").read_text() == schema_text()
    with_intents = progression_schema(["b", "a"])
    assert with_intents["$defs"]["ModelInfo"]["properties"]["business_intent"]["enum"] == ["a", "b"]
    Draft202012Validator.check_schema(with_intents)


# ---- contracts at policy load ----------------------------------------------------------------


def _policy_with(evidence_yaml: str, expr: str = "evidence.metrics.auc >= 0.7") -> str:
    return f"""apiVersion: progression/v1
kind: GovernancePolicy
intent: demo
title: Demo
risk_tier: 3
stages:
  - name: validation
    checks:
      - id: auc
        description: AUC
        expr: {expr}
evidence:
{evidence_yaml}"""


def _problems(text: str) -> list[dict[str, object]]:
    with pytest.raises(InvalidPolicy) as info:
        policy_from_text(text, filename="demo.yaml")
    return list(info.value.details or [])


def test_a_contract_that_lets_a_read_field_be_missing_is_refused_at_load() -> None:
    """Attack: a contract that declares auc but does not require it would call evidence without it valid."""
    optional = """  metrics:
    kind: data
    description: Metrics
    path: evidence/metrics.json
    schema: {type: object, properties: {auc: {type: number}}}
    example: {auc: 0.8}
"""
    [problem] = _problems(_policy_with(optional))
    assert problem["type"] == "contract_optional_field" and problem["field"] == "evidence.metrics.schema"
    assert "declared but not required" in str(problem["message"]) and problem["line"] is not None
    nullable = optional.replace("schema: {type: object,", "schema: {type: object, required: [auc],").replace(
        "auc: {type: number}", "auc: {type: [number, 'null']}")
    [problem] = _problems(_policy_with(nullable))
    assert problem["type"] == "contract_optional_field" and "may be null" in str(problem["message"])
    untyped = nullable.replace("auc: {type: [number, 'null']}", "auc: {}")
    assert "may be null" in str(_problems(_policy_with(untyped))[0]["message"])
    required = optional.replace("schema: {type: object,", "schema: {type: object, required: [auc],")
    loaded = policy_from_text(_policy_with(required), filename="demo.yaml")
    assert contract_definition_problems(loaded.policy) == []


def test_an_invalid_schema_and_an_example_breaking_it_are_refused_at_load() -> None:
    bad_schema = """  metrics:
    kind: data
    description: Metrics
    path: evidence/metrics.json
    schema: {type: objekt, required: [auc]}
    example: {auc: 0.8}
"""
    assert _problems(_policy_with(bad_schema))[0]["type"] == "invalid_schema"
    bad_example = bad_schema.replace("objekt", "object").replace("{auc: 0.8}", "{auc: high}")
    bad_example = bad_example.replace("required: [auc]}", "required: [auc], properties: {auc: {type: number}}}")
    [problem] = _problems(_policy_with(bad_example))
    assert problem["type"] == "example_breaks_contract" and "evidence.metrics.auc" in str(problem["message"])
    doc = """  card:
    kind: document
    description: Card
    path: docs/card.md
    sections: [Purpose]
    example: "# Card\\n## Use\\n"
"""
    [problem] = _problems(_policy_with(doc, expr="size(evidence.card) > 1"))
    assert problem["type"] == "example_breaks_contract" and "Purpose" in str(problem["message"])


def test_contract_errors_give_json_path_expected_and_got() -> None:
    loaded = REGISTRY.get("credit-underwriting")
    assert loaded is not None
    [problem] = evidence_problems(loaded.policy, {"fairness": {"adverse_impact_ratio": {"sex": 0.91}}})
    assert (problem.path, problem.field, problem.code) == ("$.groups", "evidence.fairness.groups", "missing_field")
    assert problem.got == "nothing" and "required" in problem.expected
    assert evidence_problems(loaded.policy, {"metrics": "not json"})[0].code == "not_structured"
    assert evidence_problems(loaded.policy, {"model_card": {"a": 1}})[0].code == "not_a_document"


# ---- the CLI's local rules -------------------------------------------------------------------


def test_an_oversized_spec_is_refused_before_it_is_read(tmp_path: Path) -> None:
    spec = tmp_path / "progression.yaml"
    with spec.open("wb") as fh:  # a sparse 10 MB file: reading it would take time, its size does not
        fh.truncate(10 * 1024 * 1024)
    with pytest.raises(OSError) as info:
        read_repository(tmp_path)
    assert info.value.filename == str(spec) and str(SPEC_MAX_BYTES) in str(info.value.strerror)
    result = CliRunner().invoke(app, ["route", str(tmp_path)], env={"PROGRESSION_URL": "http://127.0.0.1:9"})
    assert result.exit_code == 2 and str(spec) in result.output and "Traceback" not in result.output


def test_help_shows_no_bool_placeholders() -> None:
    for command in (["status", "--help"], ["route", "--help"], ["init", "--help"], ["todo", "--help"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 0 and "<bool>" not in result.output, result.output
    assert "--check" in CliRunner().invoke(app, ["route", "--help"]).output


def test_output_off_a_terminal_is_never_wrapped() -> None:
    long_id = "retail-credit-scorecard@" + "9" * 150
    runner = CliRunner()

    def show() -> None:
        table = columns("progression", "status")
        add_row(table, long_id, "awaiting_approval")
        out().print(table)

    one = typer.Typer()
    one.command()(show)
    result = runner.invoke(one, [], env={"COLUMNS": "80", **{k: v for k, v in os.environ.items() if k == "PATH"}})
    assert long_id in result.output and all(len(line) > 80 for line in result.output.splitlines()[1:2])
