"""The developer's guided path, in process: `progression init` from the published contracts, `route --check` finds
no blocker, the start lands at a gate waiting on a validator; the to-do list of each person; the published schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.cli.progressions import blockers, github_annotation
from client.repo import read_repository
from engine.scaffold import SCHEMA_FILE, scaffold
from engine.wire import DryRunResult, EvidenceContracts
from testing.api import ApiEnv, at_gate, decide, started_at_gate, wait_for


async def _init(env: ApiEnv, intent: str, directory: Path, team: str = "retail-risk") -> Path:
    """What `progression init --intent INTENT DIR` writes, from the same two endpoints."""
    contracts = await env.http.get(f"/api/v1/policies/{intent}/evidence", headers=env.auth("dana"))
    schema = await env.http.get("/api/v1/schemas/progression.json", headers=env.auth("dana"))
    assert contracts.status_code == 200 and schema.status_code == 200, (contracts.text, schema.text)
    assert intent in schema.json()["$defs"]["ModelInfo"]["properties"]["business_intent"]["enum"]
    files = scaffold(EvidenceContracts.model_validate(contracts.json()), model_id=directory.name,
                     model_name="A new model", team=team, schema=json.dumps(schema.json()))
    for rel, text in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(text)
    return directory


@pytest.mark.parametrize("intent", ["credit-underwriting", "fraud-detection", "marketing-propensity",
                                    "internal-analytics"])
async def test_init_output_passes_route_check(env: ApiEnv, tmp_path: Path, intent: str) -> None:
    repo = await _init(env, intent, tmp_path / f"new-{intent}")
    assert (repo / SCHEMA_FILE).is_file()
    upload = read_repository(repo)
    assert upload.missing == {}
    resp = await env.http.post("/api/v1/dry-run", files=upload.multipart_files(), headers=env.auth("dana"))
    assert resp.status_code == 200, resp.text
    assert blockers(DryRunResult.model_validate(resp.json()), upload) == []
    # Not blockers, but said: every file is still the policy's example until the developer replaces it.
    assert sorted(resp.json()["unchanged_examples"]) == sorted(upload.evidence)


async def test_from_init_to_a_gate_waiting_on_a_validator(env: ApiEnv, tmp_path: Path) -> None:
    """Done when: a developer who never saw the policy gets from init to a progression waiting on a validator,
    and the route predicted what the start did."""
    repo = await _init(env, "credit-underwriting", tmp_path / "scorecard-next")
    upload = read_repository(repo)
    route = (await env.http.post("/api/v1/dry-run", files=upload.multipart_files(),
                                 headers=env.auth("dana"))).json()
    started = await env.http.post("/api/v1/progressions", files=upload.multipart_files(), headers=env.auth("dana"))
    assert started.status_code == 201, started.text
    pid = route["progression_id"]
    state = await wait_for(env, pid, at_gate("validation"))
    assert state["waiting_on"] == ["model_validator"]
    ran = {(s["name"], c["check_id"]): c["passed"] for s in state["stages"] for c in s["checks"]}
    predicted = {(s["name"], c["id"]): c["passed"] for s in route["route"] for c in s["checks"]}
    assert ran == {k: v for k, v in predicted.items() if k[0] in ("registration", "validation")}
    vera = (await env.http.get(f"/api/v1/progressions/{pid}", headers=env.auth("vera"))).json()
    assert vera["next_command"].startswith(f"progression decide {pid} approve --stage validation")


async def test_route_check_names_each_blocker_with_a_github_annotation(env: ApiEnv, tmp_path: Path) -> None:
    repo = await _init(env, "credit-underwriting", tmp_path / "broken")
    (repo / "evidence" / "fairness.json").write_text(json.dumps({"adverse_impact_ratio": {"sex": 0.91}}))
    (repo / "docs" / "monitoring_plan.md").unlink()
    upload = read_repository(repo)
    result = DryRunResult.model_validate((await env.http.post(
        "/api/v1/dry-run", files=upload.multipart_files(), headers=env.auth("dana"))).json())
    found = blockers(result, upload)
    annotations = [github_annotation(*b) for b in found]
    assert annotations[0] == ("::error file=evidence/fairness.json::evidence.fairness.groups: expected one entry "
                              "per tested group (group name -> its figures) (required), got nothing [missing_field]")
    assert any(a.startswith("::error file=progression.yaml,line=") and "monitoring_plan" in a for a in annotations)


async def test_todo_lists_what_waits_on_each_person_most_urgent_first(env: ApiEnv) -> None:
    pid, _ = await started_at_gate(env, "dana")
    later, _ = await started_at_gate(env, "dana")
    vera = (await env.http.get("/api/v1/todo", headers=env.auth("vera"))).json()
    # Both gates have the same SLA: the one due first (opened first) comes first.
    assert [(i["kind"], i["progression_id"]) for i in vera["items"]] == [("gate", pid), ("gate", later)]
    assert vera["items"][0]["due_at"] <= vera["items"][1]["due_at"]
    assert vera["items"][0]["command"].startswith(f"progression decide {pid} approve --stage validation")
    assert (await env.http.get("/api/v1/todo", headers=env.auth("dana"))).json()["items"] == []
    assert (await decide(env, "vera", pid, "validation", "request_changes", "add the 2025 sample")).status_code == 200
    await wait_for(env, pid, lambda s: s["status"] == "changes_requested")
    dana = (await env.http.get("/api/v1/todo", headers=env.auth("dana"))).json()
    assert [(i["kind"], i["progression_id"]) for i in dana["items"]] == [("changes_requested", pid)]
    for who in ("sam", "ann", "adam"):  # another team, the auditor, the admin: nothing is theirs
        assert (await env.http.get("/api/v1/todo", headers=env.auth(who))).json()["items"] == [], who
    assert (await env.http.get("/api/v1/todo")).status_code == 401
