"""Findings and exceptions through the HTTP API: a real app, worker, Temporal dev server and SQLite.

Each attack is a request that must be refused with a stable code, recorded as an audit event, and change
nothing; the journeys around them show the same requests succeeding for the right person.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.client import Client

from engine.db import AuditEvent, ExceptionRow, FindingRow
from engine.db import utcnow as now
from engine.loading import PolicyRegistry
from testing.api import POLICIES, ApiEnv, api_env, at_gate, decide, start, wait_for
from testing.findings import eventually


@pytest.fixture
async def env(database_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> AsyncIterator[ApiEnv]:
    """SQLite and PostgreSQL (``postgres`` marker): the register's queries and the workflows' writes on both."""
    async with api_env(database_url, tmp_path, temporal_client, task_queue) as e:
        yield e


async def _post(env: ApiEnv, who: str, path: str, body: dict[str, Any]) -> Any:
    return await env.http.post(f"/api/v1{path}", json=body, headers=env.auth(who))


async def _get(env: ApiEnv, who: str, path: str) -> Any:
    resp = await env.http.get(f"/api/v1{path}", headers=env.auth(who))
    assert resp.status_code == 200, resp.text
    return resp.json()


async def _refused(env: ApiEnv, event_type: str) -> list[AuditEvent]:
    async with env.sessionmaker() as session:
        return list((await session.scalars(select(AuditEvent).where(AuditEvent.event_type == event_type)
                                           .order_by(AuditEvent.seq))).all())


async def _findings(env: ApiEnv, model: str, n: int) -> list[dict[str, Any]]:
    async def probe() -> list[dict[str, Any]]:
        return list((await _get(env, "ann", f"/findings?model={model}"))["items"])
    return list(await eventually(probe, lambda items: len(items) >= n))


async def test_conditions_block_production_until_an_independent_reviewer_closes_them(env: ApiEnv) -> None:
    pid, resp = await start(env)
    assert resp.status_code == 201, resp.text
    model = pid.split("@")[0]
    await wait_for(env, pid, at_gate("validation"))

    # approve_with_conditions needs conditions, and only it carries them; a severity outside the scale is refused
    bad = await _post(env, "vera", f"/progressions/{pid}/decisions", {
        "stage": "validation", "decision": "approve_with_conditions", "comment": "ok"})
    assert bad.status_code == 422 and bad.json()["code"] == "conditions_required"
    bad = await _post(env, "vera", f"/progressions/{pid}/decisions", {
        "stage": "validation", "decision": "approve_with_conditions", "comment": "ok",
        "conditions": [{"severity": "critical", "title": "x"}]})
    assert bad.status_code == 422 and bad.json()["code"] == "unknown_severity", bad.text

    ok = await _post(env, "vera", f"/progressions/{pid}/decisions", {
        "stage": "validation", "decision": "approve_with_conditions", "comment": "validated, with conditions",
        "conditions": [{"severity": "high", "title": "No challenger model"},
                       {"severity": "medium", "title": "Out-of-time sample too short"}]})
    assert ok.status_code == 200, ok.text
    conditions = ok.json()["stages"][1]["decisions"][-1]["conditions"]
    assert len(conditions) == 2
    items = await _findings(env, model, 2)
    by_severity = {f["severity"]: f for f in items}
    high = by_severity["high"]["finding_id"]
    assert all(f["condition"] and f["status"] == "open" and f["progression_id"] == pid for f in items)

    await wait_for(env, pid, at_gate("risk_review"))
    for who in ("rita", "rob"):
        assert (await decide(env, who, pid, "risk_review")).status_code == 200
    # credit: an open high finding keeps the model out of production, condition or not
    held = await wait_for(env, pid, lambda s: s["current_stage"] == "production" and s["status"] == "blocked")
    assert any(high in m and "blocks stage production" in m for m in held["missing"])
    assert held["waiting_on"] == ["model_developer"]

    # attacks on the finding's lifecycle
    attempts = [
        ("sam", "remediation", {"note": "not my model"}, 404, "not_found"),          # another team: hidden
        ("vera", "remediation", {"note": "I'll fix it"}, 403, "not_owning_team"),    # a reviewer cannot remediate
        ("adam", "remediation", {"note": "admin"}, 403, "not_owning_team"),
        ("vera", "verification", {"outcome": "close", "comment": "nothing submitted"}, 409, "no_remediation"),
    ]
    for who, action, body, status, code in attempts:
        resp = await _post(env, who, f"/findings/{high}/{action}", body)
        assert (resp.status_code, resp.json()["code"]) == (status, code), (who, action, resp.text)

    resp = await _post(env, "dario", f"/findings/{high}/remediation",
                       {"note": "challenger trained", "evidence_refs": ["sha256:" + "b" * 64]})
    assert resp.status_code == 200 and resp.json()["status"] == "remediation_submitted", resp.text
    again = await _post(env, "dana", f"/findings/{high}/remediation", {"note": "twice"})
    assert again.status_code == 409 and again.json()["code"] == "finding_not_open"
    for who, status, code in (("dario", 403, "own_remediation"), ("dana", 403, "not_a_reviewer"),
                              ("val2", 403, "own_team"), ("rory", 403, "own_team"), ("adam", 403, "not_a_reviewer"),
                              ("ann", 403, "not_a_reviewer")):
        resp = await _post(env, who, f"/findings/{high}/verification", {"outcome": "close", "comment": "fine"})
        assert (resp.status_code, resp.json()["code"]) == (status, code), (who, resp.text)
    # sent back, remediated again, then closed by an independent validator
    back = await _post(env, "vera", f"/findings/{high}/verification", {"outcome": "reopen", "comment": "no backtest"})
    assert back.status_code == 200 and back.json()["status"] == "open"
    assert (await _post(env, "dario", f"/findings/{high}/remediation", {"note": "backtest added"})).status_code == 200
    closed = await _post(env, "vera", f"/findings/{high}/verification", {"outcome": "close", "comment": "verified"})
    assert closed.status_code == 200 and closed.json()["status"] == "closed"

    # the medium condition does not block: the model goes live with it open
    live = await wait_for(env, pid, lambda s: s["status"] == "in_production")
    assert not any("blocks stage" in m for m in live["missing"])

    refused = await _refused(env, "finding.refused")
    # every refusal but the hidden one (404: the finding's existence does not leak) is in the audit trail
    assert len(refused) == (len(attempts) - 1) + 1 + 6
    assert {e.payload["code"] for e in refused} >= {"own_remediation", "own_team", "not_owning_team"}
    async with env.sessionmaker() as session:
        row = await session.get(FindingRow, high)
        assert row is not None and row.status == "closed"

    # the register: filters, paging, CSV with ageing, developer to-dos (own team only), metrics
    register = await _get(env, "ann", f"/findings?model={model}&status=closed")
    assert [f["finding_id"] for f in register["items"]] == [high]
    open_items = await _get(env, "dana", "/findings?open=true")
    assert [f["severity"] for f in open_items["items"]] == ["medium"]
    assert (await _get(env, "sam", "/findings"))["total"] == 0  # another team's findings stay hidden
    page = await _get(env, "ann", f"/findings?model={model}&limit=1")
    assert page["total"] == 2 and page["next_offset"] == 1
    export = await env.http.get(f"/api/v1/findings/export?model={model}", headers=env.auth("ann"))
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert export.headers["content-type"].startswith("text/csv")
    assert {r["finding_id"] for r in rows} == {f["finding_id"] for f in items} and rows[0]["age_days"] == "0"
    metrics = await _get(env, "rita", "/findings/metrics")
    assert metrics["open_by_severity"] == {"medium": 1} and metrics["overdue"] == 0
    prometheus = (await env.http.get("/metrics")).text
    assert 'progression_findings_open{severity="medium"} 1.0' in prometheus
    assert "progression_findings_overdue 0.0" in prometheus and "progression_exceptions_expiring_30d 0.0" in prometheus

    kinds = [e.event_type for e in await _model_events(env, model)]
    for expected in ("finding.raised", "finding.remediation_submitted", "finding.reopened", "finding.closed"):
        assert expected in kinds


async def _model_events(env: ApiEnv, model: str) -> list[AuditEvent]:
    async with env.sessionmaker() as session:
        return list((await session.scalars(select(AuditEvent).where(AuditEvent.model_id == model)
                                           .order_by(AuditEvent.seq))).all())


async def test_exception_on_a_failing_check_needs_a_second_risk_officer(env: ApiEnv) -> None:
    pid, resp = await start(env, skip=("monitoring_plan",))
    assert resp.status_code == 201, resp.text
    model, version = pid.split("@")
    await wait_for(env, pid, at_gate("validation"))
    assert (await decide(env, "vera", pid, "validation")).status_code == 200
    await wait_for(env, pid, at_gate("risk_review"))
    for who in ("rita", "rob"):
        assert (await decide(env, who, pid, "risk_review")).status_code == 200
    await wait_for(env, pid, lambda s: s["current_stage"] == "staging" and s["status"] == "blocked")

    base = {"model_id": model, "version_id": version, "kind": "check", "check_id": "monitoring-plan",
            "reason": "monitoring plan in review with the MRM committee"}
    expires = (now() + timedelta(days=30)).isoformat()
    attacks = [
        ("adam", {**base, "expires_at": expires}, 403, "not_an_exception_role"),   # an admin grants nothing
        ("vera", {**base, "expires_at": expires}, 403, "not_an_exception_role"),   # credit: risk officers only
        ("rory", {**base, "expires_at": expires}, 403, "own_team"),                 # risk officer of the owning team
        ("dana", {**base, "expires_at": expires}, 403, "not_an_exception_role"),   # the developer herself
        ("rita", base, 422, "expiry_required"),                                      # no expiry
        ("rita", {**base, "expires_at": (now() + timedelta(days=91)).isoformat()}, 422, "expiry_beyond_maximum"),
        ("rita", {**base, "expires_at": (now() - timedelta(days=1)).isoformat()}, 422, "expiry_in_past"),
        ("rita", {**base, "check_id": "no-such-check", "expires_at": expires}, 422, "unknown_check"),
        ("rita", {**base, "kind": "pma", "check_id": None, "expires_at": expires}, 422, "magnitude_required"),
    ]
    for who, body, status, code in attacks:
        resp = await _post(env, who, "/exceptions", body)
        assert (resp.status_code, resp.json()["code"]) == (status, code), (who, resp.text)
    naive = await _post(env, "rita", "/exceptions", {**base, "expires_at": "2027-01-01T00:00:00"})
    assert naive.status_code == 422 and naive.json()["code"] == "validation_error"  # a date needs its time zone
    assert await env.count(ExceptionRow) == 0  # nothing half written

    granted = await _post(env, "rita", "/exceptions", {**base, "expires_at": expires})
    assert granted.status_code == 201, granted.text
    exc = granted.json()
    assert exc["status"] == "pending_approval" and exc["needs_checker"]
    x = exc["exception_id"]
    # not in force yet: staging stays blocked
    assert (await wait_for(env, pid, lambda s: True))["status"] == "blocked"
    for who, status, code in (("rita", 403, "own_exception"), ("adam", 403, "not_an_exception_role"),
                              ("rory", 403, "own_team"), ("vera", 403, "not_an_exception_role")):
        resp = await _post(env, who, f"/exceptions/{x}/approval", {"comment": "ok"})
        assert (resp.status_code, resp.json()["code"]) == (status, code), (who, resp.text)
    approved = await _post(env, "rob", f"/exceptions/{x}/approval", {"comment": "agreed, 30 days"})
    assert approved.status_code == 200 and approved.json()["status"] == "active", approved.text
    twice = await _post(env, "rob", f"/exceptions/{x}/approval", {"comment": "again"})
    assert twice.status_code == 409 and twice.json()["code"] == "exception_not_pending"

    live = await wait_for(env, pid, lambda s: s["status"] == "in_production")
    assert live["stages"][3]["status"] == "passed"
    listed = await _get(env, "dana", f"/exceptions?model={model}&status=active")
    assert [e["exception_id"] for e in listed["items"]] == [x]
    assert (await _get(env, "rita", "/exceptions?expiring_within_days=31"))["total"] == 1
    assert (await _get(env, "rita", "/findings/metrics"))["exceptions_expiring_30d"] == 1
    refused = await _refused(env, "exception.refused")
    assert len(refused) == len(attacks) + 5
    kinds = [e.event_type for e in await _model_events(env, model)]
    assert kinds.index("exception.requested") < kinds.index("exception.granted") < kinds.index("stage.unblocked")


async def test_raising_a_finding_directly_and_who_may(env: ApiEnv) -> None:
    pid, resp = await start(env)
    assert resp.status_code == 201
    model, version = pid.split("@")
    await wait_for(env, pid, at_gate("validation"))
    body = {"model_id": model, "version_id": version, "stage": "validation", "severity": "low",
            "title": "Model card lacks a limitations example"}
    for who, status, code in (("dana", 403, "not_a_reviewer"), ("adam", 403, "not_a_reviewer"),
                              ("val2", 403, "own_team"), ("ann", 403, "not_a_reviewer"), ("sam", 404, "not_found")):
        resp = await _post(env, who, "/findings", body)
        assert (resp.status_code, resp.json()["code"]) == (status, code), (who, resp.text)
    resp = await _post(env, "rita", "/findings", {**body, "due_at": (now() - timedelta(days=1)).isoformat()})
    assert resp.status_code == 422 and resp.json()["code"] == "due_in_past"
    resp = await _post(env, "rita", "/findings", {**body, "version_id": "9.9.9"})
    assert resp.status_code == 422 and resp.json()["code"] == "unknown_version"
    assert await env.count(FindingRow) == 0

    raised = await _post(env, "vera", "/findings", body)
    assert raised.status_code == 201, raised.text
    finding = raised.json()
    assert finding["status"] == "open" and not finding["condition"]
    due = finding["due_at"]
    assert due > (now() + timedelta(days=179)).isoformat() and due < (now() + timedelta(days=181)).isoformat()
    assert (await _get(env, "dana", f"/findings/{finding['finding_id']}"))["title"] == body["title"]
    hidden = await env.http.get(f"/api/v1/findings/{finding['finding_id']}", headers=env.auth("sam"))
    assert hidden.status_code == 404
    # the gate shows the finding raised at it
    state = await wait_for(env, pid, lambda s: any(f["finding_id"] == finding["finding_id"] for f in s["findings"]))
    assert state["status"] == "awaiting_approval"  # a low finding blocks nothing


async def test_an_approval_of_a_gate_a_finding_blocks_is_refused_and_recorded(
        sqlite_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> None:
    """A policy whose open high findings also block the risk review gate (the shipped ones block production)."""
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    credit = policies / "credit-underwriting.yaml"
    credit.write_text(credit.read_text().replace(
        "    - stage: production\n      severities: [high]\n",
        "    - stage: production\n      severities: [high]\n    - stage: risk_review\n      severities: [high]\n"))
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue,
                       policies=PolicyRegistry.from_dir(policies)) as env:
        pid, resp = await start(env)
        assert resp.status_code == 201, resp.text
        model, version = pid.split("@")
        await wait_for(env, pid, at_gate("validation"))
        raised = await _post(env, "vera", "/findings", {"model_id": model, "version_id": version, "severity": "high",
                                                        "stage": "validation", "title": "No challenger model"})
        assert raised.status_code == 201, raised.text
        fid = raised.json()["finding_id"]
        await wait_for(env, pid, lambda s: any(f["finding_id"] == fid for f in s["findings"]))
        assert (await decide(env, "vera", pid, "validation")).status_code == 200
        await wait_for(env, pid, at_gate("risk_review"))
        refused = await decide(env, "rita", pid, "risk_review")
        assert refused.status_code == 409 and refused.json()["code"] == "blocking_findings", refused.text
        assert fid in refused.json()["message"]
        recorded = await _refused(env, "decision.refused")
        assert [e.payload["code"] for e in recorded] == ["blocking_findings"]
        # remediated and closed: the same approval goes through
        assert (await _post(env, "dana", f"/findings/{fid}/remediation", {"note": "built"})).status_code == 200
        assert (await _post(env, "rob", f"/findings/{fid}/verification",
                            {"outcome": "close", "comment": "ok"})).status_code == 200
        await wait_for(env, pid, lambda s: [f["status"] for f in s["findings"]] == ["closed"])
        assert (await decide(env, "rita", pid, "risk_review")).status_code == 200
