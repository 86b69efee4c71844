"""Approval bases through HTTP (issue 12): stale decisions, frozen evidence, the immutable spec,
the artifact digest a policy requires, and ``GET /progressions/{id}/verify`` (with a tampered blob).

Real app, real worker, the Temporal dev server, SQLite.
"""

from __future__ import annotations

import hashlib
import json
import os

import yaml
from sqlalchemy import select

from engine.db import DecisionRow, EvidenceBlob
from engine.evidence import EvidenceStore
from testing.api import (
    CREDIT,
    ApiEnv,
    at_gate,
    audit_events,
    get_state,
    spec_text,
    start,
    started_at_gate,
    unique_version,
    upload,
    wait_audit,
    wait_for,
)


def basis_of(state: dict[str, object], stage: str) -> str:
    found = next(s for s in state["stages"] if s["name"] == stage)  # type: ignore[attr-defined]
    assert found["basis"] and found["basis"].startswith("sha256:"), found
    return str(found["basis"])


async def decide(env: ApiEnv, who: str, pid: str, stage: str, basis: str | None, decision: str = "approve"):  # type: ignore[no-untyped-def]
    body = {"stage": stage, "decision": decision, "comment": "reviewed"}
    if basis is not None:
        body["basis"] = basis
    return await env.http.post(f"/api/v1/progressions/{pid}/decisions", json=body, headers=env.auth(who))


async def add(env: ApiEnv, who: str, pid: str, files: list[tuple[str, tuple[str, bytes, str]]]):  # type: ignore[no-untyped-def]
    return await env.http.post(f"/api/v1/progressions/{pid}/evidence", files=files, headers=env.auth(who))


async def test_stale_basis_is_refused_and_recorded_then_the_current_one_counts(env: ApiEnv) -> None:
    pid, resp = await start(env, "dana")
    assert resp.status_code == 201, resp.text
    seen = basis_of(await wait_for(env, pid, at_gate("validation")), "validation")
    # while vera reads, the developer adds evidence the validation stage reads
    r = await add(env, "dana", pid, [("evidence.pii_justification", ("pii.md", b"# PII\n" * 40, "text/markdown"))])
    assert r.status_code == 200, r.text
    current = basis_of(await wait_for(env, pid, at_gate("validation")), "validation")
    assert current != seen

    r = await decide(env, "vera", pid, "validation", seen)
    assert r.status_code == 409 and r.json()["code"] == "stale_basis", r.text
    assert "pii_justification" in r.json()["message"]
    refused = await audit_events(env, pid, "decision.refused")
    assert [e.payload["code"] for e in refused] == ["stale_basis"]
    assert await env.count(DecisionRow, DecisionRow.progression_id == pid) == 0

    r = await decide(env, "vera", pid, "validation", "sha256:" + "0" * 63)  # not a basis at all
    assert r.status_code == 422

    r = await decide(env, "vera", pid, "validation", current)
    assert r.status_code == 200, r.text
    stage = next(s for s in r.json()["stages"] if s["name"] == "validation")
    assert stage["decisions"][0]["basis"] == current and stage["decisions"][0]["basis_matches"] is True
    [row] = [row for row in await _rows(env, pid)]
    assert row.basis == current


async def _rows(env: ApiEnv, pid: str) -> list[DecisionRow]:
    async with env.sessionmaker() as session:
        return list((await session.scalars(select(DecisionRow).where(DecisionRow.progression_id == pid))).all())


async def test_frozen_evidence_is_refused_before_any_blob_is_stored(env: ApiEnv) -> None:
    pid, state = await started_at_gate(env, "dana")
    assert (await decide(env, "vera", pid, "validation", basis_of(state, "validation"))).status_code == 200
    await wait_for(env, pid, at_gate("risk_review"))
    metrics = json.loads((CREDIT / "evidence/metrics.json").read_text())
    metrics["auc"] = 0.55
    data = json.dumps(metrics).encode()
    blobs = await env.count(EvidenceBlob)
    r = await add(env, "dana", pid, [("evidence.metrics", ("metrics.json", data, "application/json"))])
    assert r.status_code == 409 and r.json()["code"] == "evidence_frozen", r.text
    assert "'metrics'" in r.json()["message"] and "start a new version" in r.json()["message"]
    assert await env.count(EvidenceBlob) == blobs
    assert not EvidenceStore(env.settings.evidence_dir).exists(hashlib.sha256(data).hexdigest())
    after = await get_state(env, pid)
    assert after["current_stage"] == "risk_review" and after["evidence"] == state["evidence"]


async def test_spec_identity_cannot_change_through_the_evidence_endpoint(env: ApiEnv) -> None:
    version = unique_version()
    pid, before = await started_at_gate(env, "dana", version=version)
    changes = {
        "version.artifact": {"version": {"id": version, "artifact": "s3://models/other/"}},
        "version.artifact_digest": {"version": {"id": version, "artifact_digest": "sha256:" + "1" * 64}},
        "version.source": {"version": {"id": version, "source": "git+https://git.example/x@abcdef1"}},
        "features": {"version": {"id": version}, "features": ["bureau_score"]},
    }
    for field, change in changes.items():
        text = spec_text(CREDIT, **change)
        r = await add(env, "dana", pid, [("spec", ("progression.yaml", text.encode(), "application/yaml"))])
        assert r.status_code == 409 and r.json()["code"] == "spec_immutable", (field, r.text)
        assert r.json()["message"].startswith(f"{field}:"), r.json()["message"]
    for name, field in (("spec", "spec"), ("artifact", "version.artifact"), ("features", "features"),
                        ("business_intent", "model.business_intent"), ("model_id", "model.id"),
                        ("version_id", "version.id")):
        r = await add(env, "dana", pid, [(f"evidence.{name}", ("x.yaml", b"forged: true\n", "application/yaml"))])
        assert r.status_code == 409 and r.json()["code"] == "spec_immutable", (name, r.text)
        assert r.json()["message"].startswith(f"{field}:")
    assert (await get_state(env, pid))["evidence"] == before["evidence"]


async def test_policy_requiring_an_artifact_digest_refuses_a_spec_without_one(env: ApiEnv) -> None:
    data = yaml.safe_load((CREDIT / "progression.yaml").read_text())
    data["version"] = {k: v for k, v in data["version"].items() if k != "artifact_digest"}
    data["version"]["id"] = unique_version()
    pid, files = upload(CREDIT, text=yaml.safe_dump(data, sort_keys=False))
    r = await env.http.post("/api/v1/progressions", files=files, headers=env.auth("dana"))
    assert r.status_code == 422, r.text
    assert "version.artifact_digest" in r.json()["message"]
    data["version"]["artifact_digest"] = "sha256:not-hex"
    pid, files = upload(CREDIT, text=yaml.safe_dump(data, sort_keys=False))
    r = await env.http.post("/api/v1/progressions", files=files, headers=env.auth("dana"))
    assert r.status_code == 422 and "version.artifact_digest" in r.text


async def test_verify_checks_bases_and_deployment_and_detects_a_tampered_blob(env: ApiEnv) -> None:
    pid, state = await started_at_gate(env, "dana")
    assert (await decide(env, "vera", pid, "validation", basis_of(state, "validation"))).status_code == 200
    state = await wait_for(env, pid, at_gate("risk_review"))
    for who in ("rita", "rob"):
        assert (await decide(env, who, pid, "risk_review", basis_of(state, "risk_review"))).status_code == 200
    final = await wait_for(env, pid, lambda s: s["status"] == "in_production")
    deployed = await _wait_deployment(env, pid)
    assert deployed.payload["artifact_digest"] == final["artifact_digest"]

    r = await env.http.get(f"/api/v1/progressions/{pid}/verify", headers=env.auth("ann"))
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["ok"] is True and report["problems"] == [] and report["spec_matches"] is True
    assert {e["status"] for e in report["evidence"]} == {"ok"}
    assert [(a["stage"], a["matches"], a["deployed"]) for a in report["approvals"]] == [
        ("validation", True, True), ("risk_review", True, True), ("risk_review", True, True)]

    # someone swaps the metrics file on disk behind the engine's back
    sha = final["evidence"]["metrics"]["sha256"]
    path = EvidenceStore(env.settings.evidence_dir).path(sha)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes().replace(b"0.78", b"0.55"))
    r = await env.http.get(f"/api/v1/progressions/{pid}/verify", headers=env.auth("ann"))
    report = r.json()
    assert report["ok"] is False
    [metrics] = [e for e in report["evidence"] if e["name"] == "metrics"]
    assert metrics["status"] == "corrupted" and metrics["actual_sha256"] != sha
    assert any("metrics" in p for p in report["problems"])

    # another team's developer cannot read it, as they cannot read the progression
    r = await env.http.get(f"/api/v1/progressions/{pid}/verify", headers=env.auth("sam"))
    assert r.status_code == 404


async def _wait_deployment(env: ApiEnv, pid: str):  # type: ignore[no-untyped-def]

    [event] = await wait_audit(env, pid, "deployment.recorded")
    return event


async def test_evidence_of_a_model_in_production_is_refused(env: ApiEnv) -> None:
    pid, state = await started_at_gate(env, "dana")
    await decide(env, "vera", pid, "validation", basis_of(state, "validation"))
    state = await wait_for(env, pid, at_gate("risk_review"))
    for who in ("rita", "rob"):
        await decide(env, who, pid, "risk_review", None)
    await wait_for(env, pid, lambda s: s["status"] == "in_production")
    plan = (CREDIT / "docs/monitoring_plan.md").read_bytes() + b"\nrevised\n"
    r = await add(env, "dana", pid, [("evidence.monitoring_plan", ("monitoring_plan.md", plan, "text/markdown"))])
    assert r.status_code == 409 and r.json()["code"] == "evidence_locked", r.text
    assert "in production" in r.json()["message"] and "start a new version" in r.json()["message"]
