"""The guided CLI end to end over real HTTP: `init` → `route --check` (exit 0) → `start` → the validator's
`todo` and the printed next command; `route --check --github` on broken repositories; route and start print the
same message for a malformed spec; output piped to a file is not wrapped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from testing.specs import MALFORMED_SPECS
from tests.api.test_cli import CLI, LiveAPI, follow, running_api

pytestmark = pytest.mark.slow  # a whole stack in a thread, like tests/api/test_cli.py


@pytest.fixture(scope="module")
def guided_api(temporal_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveAPI]:
    with running_api(temporal_env.client.service_client.config.target_host,
                     tmp_path_factory.mktemp("guided-api")) as api:
        yield api


@pytest.fixture
def run(guided_api: LiveAPI, tmp_path: Path) -> CLI:
    return CLI(guided_api, tmp_path)


def test_from_init_to_a_validator_with_only_what_the_tool_says(run: CLI, tmp_path: Path) -> None:
    repo = tmp_path / "new-scorecard"
    made = run.ok("dana", "init", "--intent", "credit-underwriting", repo)
    assert "Next: progression route --check" in made.stdout
    assert (repo / "progression.yaml").read_text().startswith("# yaml-language-server: $schema=")
    assert "## Training data" in (repo / "docs" / "model_card.md").read_text()
    again = run.run("dana", "init", "--intent", "credit-underwriting", repo)
    assert again.exit_code == 2 and "exists" in again.output  # never overwrites without --force

    checked = run.run("dana", "route", repo, "--check", "--github")
    assert checked.exit_code == 0, checked.output
    assert "::error" not in checked.stdout
    started = run.ok("dana", "start", repo)
    pid = "new-scorecard@0.1.0"
    assert f"Started {pid}" in started.stdout
    state = follow(run, "dana", pid)
    assert state["status"] == "awaiting_approval" and state["waiting_on"] == ["model_validator"]
    todo = run.json("victor", "todo")
    assert [i["progression_id"] for i in todo["items"]] == [pid]
    shown = run.ok("victor", "status", pid)
    assert f"Next: progression decide {pid} approve --stage validation" in shown.stdout


def test_route_check_github_annotates_contract_and_spec_problems(run: CLI, tmp_path: Path) -> None:
    repo = tmp_path / "broken"
    run.ok("dana", "init", "--intent", "credit-underwriting", repo)
    (repo / "evidence" / "fairness.json").write_text(json.dumps({"adverse_impact_ratio": {"sex": 0.91}}))
    result = run.run("dana", "route", repo, "--check", "--github")
    assert result.exit_code == 6, result.output
    assert "::error file=evidence/fairness.json::evidence.fairness.groups: expected" in result.stdout
    start = run.run("dana", "start", repo)
    assert start.exit_code == 2 and "[evidence_contract]" in start.output and "evidence.fairness.groups" in start.output

    spec = (repo / "progression.yaml").read_text()
    (repo / "progression.yaml").write_text(spec.replace("\nmodel:\n", "\nmodle:\n"))
    result = run.run("dana", "route", repo, "--check", "--github")
    assert result.exit_code == 2
    assert "::error file=progression.yaml,line=" in result.stdout and "did you mean 'model'" in result.stdout


@pytest.mark.parametrize("case", ["yaml_syntax_error", "unknown_key_modle", "intent_typo"])
def test_route_and_start_print_the_same_error(run: CLI, tmp_path: Path, case: str) -> None:
    repo = tmp_path / case
    run.ok("dana", "init", "--intent", "credit-underwriting", repo)
    (repo / "progression.yaml").write_bytes(MALFORMED_SPECS[case].replace(
        b"retail-credit-scorecard", b"new-model").replace(b"team: retail-risk", b"team: retail-risk"))
    route, start = run.run("dana", "route", repo), run.run("dana", "start", repo)
    assert route.exit_code == start.exit_code == 2
    first = [line for line in route.output.splitlines() if line.startswith("error:")]
    assert first and first == [line for line in start.output.splitlines() if line.startswith("error:")]
    assert "progression.yaml:" in first[0] and "[invalid_spec]" in first[0]


def test_the_inbox_piped_to_a_file_keeps_every_id_whole(run: CLI, tmp_path: Path) -> None:
    model = "a-model-whose-identifier-is-long-enough-to-not-fit-in-a-column"  # 62 characters
    repo = tmp_path / "long"
    run.ok("dana", "init", "--intent", "credit-underwriting", repo, "--model-id", model)
    run.ok("dana", "start", repo)
    pid = f"{model}@0.1.0"
    follow(run, "dana", pid)
    inbox = run.run("victor", "inbox", env={"COLUMNS": "80"})
    assert pid in inbox.stdout, inbox.stdout


def test_policies_shows_what_each_evidence_file_must_contain(run: CLI) -> None:
    shown = run.ok("dana", "policies", "credit-underwriting").stdout
    assert "fairness (data, evidence/fairness.json)" in shown and "required fields: groups" in shown
    assert "required sections: ## Intended use, ## Training data, ## Performance, ## Limitations" in shown
    body = run.json("dana", "policies", "credit-underwriting")
    fairness = next(c for c in body["evidence_contracts"] if c["name"] == "fairness")
    assert fairness["schema"]["required"] == ["groups"]
