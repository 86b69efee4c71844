"""One loader: the route (dry run), the start and the policy dry run parse progression.yaml through
``engine.loading.load_spec`` and answer every malformed spec identically (status, code, message, line, details);
evidence that breaks its policy's contract is named by JSON path the same way by the route and refused by the
start and by new evidence; the contracts are published."""

from __future__ import annotations

import json
from typing import Any

import pytest

from engine.db import EvidenceBlob, ProgressionRow
from testing.api import CREDIT, ApiEnv, at_gate, start, upload, wait_for
from testing.specs import MALFORMED_SPECS


def _files(spec: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    _, files = upload(CREDIT)
    return [("spec", ("progression.yaml", spec, "application/yaml")), *files[1:]]


def _answer(resp: Any) -> tuple[int, str, str, Any]:
    body = resp.json()
    return resp.status_code, body["code"], body["message"], body.get("details")


async def test_route_and_start_answer_every_malformed_spec_alike(env: ApiEnv) -> None:
    assert len(MALFORMED_SPECS) >= 25
    for name, spec in MALFORMED_SPECS.items():
        route = await env.http.post("/api/v1/dry-run", files=_files(spec), headers=env.auth("dana"))
        started = await env.http.post("/api/v1/progressions", files=_files(spec), headers=env.auth("dana"))
        assert _answer(route) == _answer(started), name
        status, code, message, details = _answer(route)
        assert (status, code) == (422, "invalid_spec"), (name, route.text)
        assert message.startswith("progression.yaml:"), (name, message)
        assert isinstance(details, list) and details[0]["line"] is not None, (name, details)
        if name != "intent_unknown" and "intent" not in name:
            # The policy's dry run reads the spec with the same loader too.
            under = await env.http.post("/api/v1/policies/credit-underwriting/dry-run", files=_files(spec),
                                        headers=env.auth("dana"))
            assert _answer(under) == _answer(route), name
    assert await env.count(ProgressionRow) == 0
    assert await env.count(EvidenceBlob) == 0


@pytest.mark.parametrize("case, line, field, fragment", [
    ("unknown_key_modle", 4, "modle", "did you mean 'model'"),
    ("intent_typo", 8, "model.business_intent", "did you mean 'credit-underwriting'"),
    ("yaml_syntax_error", 8, "", "mapping values are not allowed"),
])
async def test_the_issue_cases_name_line_field_and_fix(env: ApiEnv, case: str, line: int, field: str,
                                                       fragment: str) -> None:
    resp = await env.http.post("/api/v1/dry-run", files=_files(MALFORMED_SPECS[case]), headers=env.auth("dana"))
    status, code, message, details = _answer(resp)
    assert (status, code) == (422, "invalid_spec")
    assert message.startswith(f"progression.yaml:{line}: ") and fragment in message
    assert details[0]["field"] == field and details[0]["line"] == line


# ---- evidence contracts -------------------------------------------------------------------------


def _with_evidence(name: str, filename: str, content: bytes) -> list[tuple[str, tuple[str, bytes, str]]]:
    return _upload_with(name, filename, content)[1]


def _upload_with(name: str, filename: str, content: bytes) -> tuple[str, list[tuple[str, tuple[str, bytes, str]]]]:
    pid, files = upload(CREDIT)
    return pid, [f if f[0] != f"evidence.{name}" else (f[0], (filename, content, "application/octet-stream"))
                 for f in files]


async def test_the_contracts_are_published(env: ApiEnv) -> None:
    resp = await env.http.get("/api/v1/policies/credit-underwriting/evidence", headers=env.auth("dana"))
    assert resp.status_code == 200, resp.text
    contracts = {c["name"]: c for c in resp.json()["contracts"]}
    assert set(contracts) == {"metrics", "fairness", "model_card", "monitoring_plan"}
    fairness = contracts["fairness"]
    assert fairness["kind"] == "data" and fairness["needed_by"] == "validation"
    groups = fairness["schema"]["properties"]["groups"]["additionalProperties"]
    assert groups["required"] == ["basis", "adverse_impact_ratio"]
    assert contracts["model_card"]["sections"] == ["Intended use", "Training data", "Performance", "Limitations"]
    assert contracts["monitoring_plan"]["needed_by"] == "staging"
    assert contracts["metrics"]["example"]["out_of_time"]["auc"] == 0.768
    missing = await env.http.get("/api/v1/policies/payroll/evidence", headers=env.auth("dana"))
    assert missing.status_code == 404


async def test_the_issue_fairness_file_is_named_by_json_path_in_route_and_start(env: ApiEnv) -> None:
    wrong = json.dumps({"adverse_impact_ratio": {"sex": 0.91}}).encode()
    files = _with_evidence("fairness", "evidence/fairness.json", wrong)
    route = await env.http.post("/api/v1/dry-run", files=files, headers=env.auth("dana"))
    assert route.status_code == 200, route.text
    problems = route.json()["evidence_problems"]
    assert [(p["evidence"], p["path"], p["code"]) for p in problems] == [("fairness", "$.groups", "missing_field")]
    assert "one entry per tested group" in problems[0]["expected"] and problems[0]["got"] == "nothing"
    started = await env.http.post("/api/v1/progressions", files=files, headers=env.auth("dana"))
    assert started.status_code == 422 and started.json()["code"] == "evidence_contract"
    assert started.json()["details"]["problems"] == problems
    assert started.json()["message"] == problems[0]["message"]
    assert await env.count(ProgressionRow) == 0 and await env.count(EvidenceBlob) == 0


async def test_wrong_types_and_a_missing_basis_each_get_a_path(env: ApiEnv) -> None:
    fairness = json.loads((CREDIT / "evidence" / "fairness.json").read_text())
    del fairness["groups"]["female"]["basis"]
    fairness["groups"]["black"]["adverse_impact_ratio"] = "0.82"
    files = _with_evidence("fairness", "evidence/fairness.json", json.dumps(fairness).encode())
    route = (await env.http.post("/api/v1/dry-run", files=files, headers=env.auth("dana"))).json()
    found = {(p["path"], p["code"]) for p in route["evidence_problems"]}
    assert found == {("$.groups.female.basis", "missing_field"), ("$.groups.black.adverse_impact_ratio",
                                                                   "wrong_type")}


async def test_a_model_card_without_its_sections_is_refused_by_section(env: ApiEnv) -> None:
    card = ("# Model card\n\n## Intended use\n" + "Scores applicants. " * 100 + "\n").encode()
    files = _with_evidence("model_card", "docs/model_card.md", card)
    started = await env.http.post("/api/v1/progressions", files=files, headers=env.auth("dana"))
    assert started.status_code == 422, started.text
    problems = started.json()["details"]["problems"]
    assert [p["path"] for p in problems] == ["$#Training data", "$#Performance", "$#Limitations"]
    assert {p["code"] for p in problems} == {"missing_section"}


async def test_forged_evidence_that_fits_the_contract_is_still_blocked_by_the_checks(env: ApiEnv) -> None:
    """Attack: a developer shapes weak metrics exactly as the contract asks. The contract is a floor; the
    policy's checks still run and block the progression at validation."""
    metrics = json.loads((CREDIT / "evidence" / "metrics.json").read_text())
    metrics["auc"], metrics["out_of_time"]["auc"] = 0.52, 0.51
    pid, files = _upload_with("metrics", "evidence/metrics.json", json.dumps(metrics).encode())
    route = (await env.http.post("/api/v1/dry-run", files=files, headers=env.auth("dana"))).json()
    assert route["evidence_problems"] == []
    assert route["fix_first"]["id"] == "discrimination"
    started = await env.http.post("/api/v1/progressions", files=files, headers=env.auth("dana"))
    assert started.status_code == 201, started.text
    state = await wait_for(env, pid, lambda s: s["status"] == "blocked")
    assert state["current_stage"] == "validation"
    assert not at_gate("validation")(state)


async def test_new_evidence_breaking_its_contract_is_refused_and_stores_nothing(env: ApiEnv) -> None:
    pid, resp = await start(env, skip=("monitoring_plan",))
    assert resp.status_code == 201, resp.text
    blobs = await env.count(EvidenceBlob)
    resp = await env.http.post(f"/api/v1/progressions/{pid}/evidence", headers=env.auth("dana"),
                               files=[("evidence.monitoring_plan", ("monitoring_plan.json", b'{"psi": 0.1}',
                                                                    "application/json"))])
    assert resp.status_code == 422 and resp.json()["code"] == "evidence_contract", resp.text
    assert resp.json()["details"]["problems"][0]["code"] == "not_a_document"
    assert await env.count(EvidenceBlob) == blobs


@pytest.mark.parametrize("repo", ["retail-credit-scorecard", "card-fraud-detector", "marketing-propensity"])
async def test_the_example_repositories_meet_their_contracts_and_are_not_the_templates(env: ApiEnv,
                                                                                    repo: str) -> None:
    _, files = upload(CREDIT.parent / repo)
    route = await env.http.post("/api/v1/dry-run", files=files, headers=env.auth("dana"))
    assert route.status_code == 200, route.text
    assert route.json()["evidence_problems"] == [] and route.json()["unchanged_examples"] == []
