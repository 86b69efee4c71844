"""Issue 22's "done when", end to end over real HTTP: a data scientist in a notebook learns before training that `age`
is forbidden and `zip_code` needs a proxy analysis for credit, checks her metrics in memory, writes the evidence
files, and `progression route` and `progression start` then do exactly what the notebook predicted. Also the
`progression features` commands, with a developer's attempt to approve her own removal of `proxy`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.lifecycle import ProgressionDetail, Status
from engine.wire import DryRunResult
from progression import LocalPolicy, write_metrics, write_pii_justification, write_proxy_analysis
from testing.polling import eventually_sync
from tests.api.test_cli import CLI, LiveAPI, live_api, make_repo  # noqa: F401 - live_api is a fixture

pytestmark = pytest.mark.slow  # the live API in a thread, like tests/api/test_cli.py


@pytest.fixture
def cli(live_api: LiveAPI, tmp_path: Path) -> Iterator[CLI]:  # noqa: F811
    yield CLI(live_api, tmp_path)


def test_the_notebook_predicts_what_start_does(live_api: LiveAPI, cli: CLI, tmp_path: Path) -> None:  # noqa: F811
    credit = LocalPolicy.fetch("credit-underwriting", url=live_api.url, token=live_api.tokens["dana"])
    before = credit.features(["age", "zip_code", "bureau_score"])
    assert before.forbidden == ["age"] and before.requires == {"zip_code": ["pii_justification", "proxy_analysis"]}

    repo = make_repo(tmp_path, version=f"4.0.0-{uuid.uuid4().hex[:8]}", edit={"features": [
        "bureau_score", "utilization_ratio", "months_since_delinquency", "zip_code"]})
    metrics = json.loads((repo / "evidence/metrics.json").read_text())
    in_memory = credit.evaluate(spec=repo / "progression.yaml", evidence={"metrics": metrics})
    assert ("validation", "proxy-analysed") in {(s, c) for s, c, _ in in_memory.failing}
    assert {"proxy_analysis", "pii_justification"} <= set(in_memory.missing_evidence)

    write_metrics(repo, metrics)
    write_proxy_analysis(repo, "# Proxy analysis\nzip_code against race and national origin: no proxy effect.\n")
    write_pii_justification(repo, "# PII\nzip_code is used for regional economic adjustment only.\n")
    predicted = credit.evaluate_repository(repo)
    assert predicted.passes, str(predicted)

    routed = DryRunResult.model_validate({k: v for k, v in cli.json("dana", "route", repo).items()
                                          if k in DryRunResult.model_fields})
    assert routed == predicted.result

    started = ProgressionDetail.model_validate(cli.json("dana", "start", repo))

    def settled() -> ProgressionDetail | None:
        state = ProgressionDetail.model_validate(cli.json("dana", "status", started.progression_id))
        return state if state.status != Status.running else None

    state = eventually_sync(settled, f"{started.progression_id} waits on a person")
    assert state.status == Status.awaiting_approval and state.current_stage == "validation"
    expected = {s.name: [(c.id, c.passed, c.reason) for c in s.checks] for s in predicted.result.route}
    for stage in state.stages:
        if stage.checks:
            assert [(c.check_id, c.passed, c.reason) for c in stage.checks] == expected[stage.name]


def test_features_commands_and_a_self_approval(cli: CLI) -> None:
    found = cli.json("dana", "features", "search", "zip")
    assert [f["name"] for f in found["items"]] == ["zip_code"]
    shown = cli.ok("dana", "features", "show", "age").stdout
    assert "credit-underwriting: forbidden" in shown and "No feature tagged protected_attribute" in shown
    proposal = cli.json("dana", "features", "propose", "zip_code", "--remove-tag", "proxy", "-m", "not a proxy")
    assert proposal["approvals_needed"] == 2 and proposal["tags_removed"] == ["proxy"]
    own = cli.run("dana", "features", "approve", proposal["id"], "-m", "mine")
    assert own.exit_code == 3 and "you proposed this change" in own.output
    other = cli.run("rita", "features", "approve", proposal["id"])
    assert other.exit_code == 3 and "only an admin" in other.output
    pending = cli.ok("alice", "features", "proposals").stdout
    assert proposal["id"] in pending and "0/2" in pending
    assert "proxy" in cli.json("alice", "features", "show", "zip_code")["tags"]
