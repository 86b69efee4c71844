"""Red-team attacks on findings, conditions and exceptions (issue 18), through the HTTP API and the web UI.

A test that FAILS here is a hole that was proved; a test that passes is an attack correctly refused.
Uses the SQLite ``env`` of tests/api/conftest.py and the web browsers of tests/api/test_web_ui.py.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from engine.db import AuditEvent, ExceptionRow, FindingRow
from engine.db import utcnow as now
from engine.identity import create_user
from testing.api import ApiEnv, at_gate, decide, get_state, start, unique_version, wait_for
from testing.findings import eventually
from testing.workflow import settled
from tests.api import test_web_ui
from tests.api.test_web_ui import Browser, signed_in

people = test_web_ui.people


async def _post(env: ApiEnv, who: str, path: str, body: dict[str, Any]) -> Any:
    return await env.http.post(f"/api/v1{path}", json=body, headers=env.auth(who))


async def _events(env: ApiEnv, event_type: str) -> list[AuditEvent]:
    async with env.sessionmaker() as session:
        return list((await session.scalars(select(AuditEvent).where(AuditEvent.event_type == event_type)
                                           .order_by(AuditEvent.seq))).all())


# ---- holes ------------------------------------------------------------------------------------------------


async def test_redteam_exception_scoped_to_one_version_waives_a_finding_of_another_version(env: ApiEnv) -> None:
    """Attack (developer + a friendly risk officer): the high finding that keeps version v2 out of production is
    waived by an exception whose scope is version v1. The exception names a version, but the finding's waiver
    (status risk_accepted) is model-wide, and nothing checks that the finding belongs to the scoped version."""
    v1, v2 = unique_version(), unique_version()
    pid1, resp1 = await start(env, version=v1)
    pid2, resp2 = await start(env, version=v2)
    assert resp1.status_code == 201 and resp2.status_code == 201, (resp1.text, resp2.text)
    model = pid1.split("@")[0]
    await wait_for(env, pid2, at_gate("validation"))
    raised = await _post(env, "vera", "/findings", {"model_id": model, "version_id": v2, "stage": "validation",
                                                    "severity": "high", "title": "No challenger model (v2)"})
    assert raised.status_code == 201, raised.text
    fid = raised.json()["finding_id"]
    await wait_for(env, pid2, lambda s: any(f["finding_id"] == fid for f in s["findings"]))

    resp = await _post(env, "rita", "/exceptions", {
        "model_id": model, "version_id": v1, "kind": "finding", "finding_id": fid,
        "reason": "accepted for v1", "expires_at": (now() + timedelta(days=30)).isoformat()})
    if resp.status_code == 201:  # the hole: show its effect, then fail
        x = resp.json()["exception_id"]
        approved = await _post(env, "rob", f"/exceptions/{x}/approval", {"comment": "ok"})
        assert approved.status_code == 200, approved.text

        async def status() -> str:
            r = await env.http.get(f"/api/v1/findings/{fid}", headers=env.auth("ann"))
            return str(r.json()["status"])
        after = await eventually(status, lambda s: s == "risk_accepted")
        await wait_for(env, pid2, lambda s: all(f["status"] != "open" for f in s["findings"]
                                                if f["finding_id"] == fid))
        # ... and v2 walks into production with its own open high finding (credit: high blocks production)
        assert (await decide(env, "vera", pid2, "validation")).status_code == 200
        await wait_for(env, pid2, at_gate("risk_review"))
        for who in ("rita", "rob"):
            assert (await decide(env, who, pid2, "risk_review")).status_code == 200
        live = await wait_for(env, pid2, lambda s: s["status"] in ("in_production", "blocked"))
        raise AssertionError(
            f"an exception scoped to version {v1} put finding {fid} of version {v2} in status {after}; "
            f"v2 then reached status {live['status']} at stage {live['current_stage']}")
    assert resp.status_code == 422, resp.text


async def test_redteam_colluding_validator_sets_a_condition_due_date_a_century_away(env: ApiEnv) -> None:
    """Attack (validator colluding with the developer's team): approve with a medium condition due in 2126, so the
    durable deadline never fires: no reminder, no escalation, no revalidation flag. Only past dates are refused
    (engine.findings.conditions_refusal / services.findings.raise_finding); there is no upper bound."""
    pid, resp = await start(env)
    assert resp.status_code == 201, resp.text
    await wait_for(env, pid, at_gate("validation"))
    far = (now() + timedelta(days=365 * 100)).isoformat()
    ok = await _post(env, "vera", f"/progressions/{pid}/decisions", {
        "stage": "validation", "decision": "approve_with_conditions", "comment": "validated",
        "conditions": [{"severity": "medium", "title": "Out-of-time sample too short", "due_at": far}]})
    assert ok.status_code == 422, (
        f"a condition due in 100 years (policy default for medium: 90d) was accepted: {ok.status_code}")


async def test_redteam_web_register_with_a_huge_offset_is_not_a_500(env: ApiEnv, people: dict[str, Browser]) -> None:
    """Bad input: the JSON register bounds ``offset`` (le=MAX_OFFSET); the web register only clamps it at 0
    (api/web/findings.py findings_page: ``offset=max(offset, 0)``), so SQLite gets an integer it cannot hold."""
    ann = await signed_in(people, "ann")
    api = await env.http.get("/api/v1/findings?offset=100000000000000000000000", headers=env.auth("ann"))
    assert api.status_code == 422, api.text
    try:
        page = await ann.get("/ui/findings?offset=100000000000000000000000")
        status = page.status_code
    except Exception as exc:  # noqa: BLE001 - an unhandled error is the 500 an ASGI server would answer
        status, page = 500, exc
    assert status < 500, f"web register with a huge offset: {status} {page!r}"


# ---- attacks correctly refused -------------------------------------------------------------------------


async def test_redteam_refused_exception_scopes_and_inputs(env: ApiEnv) -> None:
    """Exceptions that name a finding of no/another model, a check of another intent's policy, a version of no
    progression, an expiry without a time zone or beyond the maximum, a non-finite PMA magnitude: refused and
    (but for body validation errors) recorded as exception.refused; nothing written."""
    pid, resp = await start(env)
    assert resp.status_code == 201, resp.text
    model, version = pid.split("@")
    await wait_for(env, pid, at_gate("validation"))
    expires = (now() + timedelta(days=30)).isoformat()
    base = {"model_id": model, "version_id": version, "reason": "r", "expires_at": expires}
    attacks = [
        ({**base, "kind": "finding", "finding_id": "F-000000000000"}, 422, "scope_required"),
        ({**base, "kind": "finding"}, 422, "scope_required"),
        ({**base, "kind": "check", "check_id": "precision"}, 422, "unknown_check"),  # a fraud-detection check
        ({**base, "kind": "check", "check_id": "stability", "version_id": "0.0.0-nope"}, 422, "unknown_version"),
        ({**base, "kind": "check", "check_id": "stability",
          "expires_at": (now() + timedelta(days=90, minutes=5)).isoformat()}, 422, "expiry_beyond_maximum"),
        ({**base, "kind": "pma", "magnitude": None}, 422, "magnitude_required"),
    ]
    for body, status, code in attacks:
        r = await _post(env, "rita", "/exceptions", body)
        assert (r.status_code, r.json()["code"]) == (status, code), (body, r.text)
    for body in ({**base, "kind": "pma", "magnitude": "Infinity"}, {**base, "kind": "pma", "magnitude": 1.0,
                                                                   "expires_at": "2027-01-01T00:00:00"},
                 {**base, "kind": "pma", "magnitude": 1.0, "requested_by": "someone-else"}):
        r = await _post(env, "rita", "/exceptions", body)
        assert r.status_code == 422, (body, r.text)
    assert await env.count(ExceptionRow) == 0
    assert len(await _events(env, "exception.refused")) == len(attacks)


async def test_redteam_refused_finding_inputs_and_conditions(env: ApiEnv) -> None:
    """Past-due conditions, conditions on a rejection or change request, a finding on a stage the policy lacks,
    an over-long title, a finding with a forged raiser: refused with 4xx; the developer cannot raise one."""
    pid, resp = await start(env)
    assert resp.status_code == 201, resp.text
    model, version = pid.split("@")
    await wait_for(env, pid, at_gate("validation"))
    past = (now() - timedelta(minutes=1)).isoformat()
    r = await _post(env, "vera", f"/progressions/{pid}/decisions", {
        "stage": "validation", "decision": "approve_with_conditions", "comment": "ok",
        "conditions": [{"severity": "medium", "title": "t", "due_at": past}]})
    assert r.status_code == 422 and r.json()["code"] == "due_in_past", r.text
    r = await _post(env, "vera", f"/progressions/{pid}/decisions", {
        "stage": "validation", "decision": "request_changes", "comment": "ok",
        "conditions": [{"severity": "medium", "title": "t"}]})
    assert r.status_code == 422 and r.json()["code"] == "conditions_need_approval", r.text
    body = {"model_id": model, "version_id": version, "severity": "low", "title": "t"}
    for who, extra, status in (("vera", {"stage": "nowhere"}, 422), ("vera", {"title": "x" * 301}, 422),
                               ("vera", {"raised_by": "someone"}, 422), ("dana", {}, 403),
                               ("vera", {"due_at": "2030-01-01T00:00:00"}, 422)):
        r = await _post(env, who, "/findings", {**body, **extra})
        assert r.status_code == status, (who, extra, r.text)
    assert await env.count(FindingRow) == 0
    state = await wait_for(env, pid, lambda s: True)
    assert state["status"] == "awaiting_approval"  # nothing was decided by the refused attempts


async def test_redteam_unauthenticated_findings_endpoints(env: ApiEnv) -> None:
    for method, path in (("GET", "/api/v1/findings"), ("GET", "/api/v1/findings/export"),
                         ("GET", "/api/v1/findings/metrics"), ("GET", "/api/v1/exceptions"),
                         ("GET", "/api/v1/findings/F-x"), ("POST", "/api/v1/findings"),
                         ("POST", "/api/v1/exceptions"), ("POST", "/api/v1/findings/F-x/remediation"),
                         ("POST", "/api/v1/findings/F-x/verification"), ("POST", "/api/v1/exceptions/X-x/approval")):
        r = await env.http.request(method, path, json={})
        assert r.status_code == 401, (method, path, r.status_code, r.text)
    for path in ("/ui/findings", "/ui/findings/export", "/ui/findings/escalated", "/ui/findings/F-x"):
        r = await env.http.get(path)
        assert r.status_code in (303, 401), (path, r.status_code)


async def test_redteam_admin_redeems_enrollments_and_grants_a_maker_checker_exception_alone(env: ApiEnv) -> None:
    """Attack (admin with too much power): the admin creates enrollment codes for two risk officers, redeems them
    himself, and requests + approves (maker-checker) a tier-1 exception on a failing check. Unlike decisions
    (credential_id / credential_issued_by), the exception record and its audit events carry no credential, so
    nothing in the exception's trail shows that both 'people' used admin-issued credentials."""
    pid, resp = await start(env, skip=("monitoring_plan",))
    assert resp.status_code == 201, resp.text
    model, version = pid.split("@")
    async with env.sessionmaker() as session:  # a second admin, who confirms the re-issued credentials
        _, env.tokens["adam2"] = await create_user(session, username="adam2", roles=["admin"], team="platform")
        await session.commit()
    stolen: dict[str, str] = {}
    for who in ("rita", "rob"):
        # The code goes to the person's mailbox now, never to adam; this test keeps its old shape (the admin
        # somehow holding the redeemed credential) to prove what the exception's trail records.
        r, code = await env.enrollment_code("adam", env.user_ids[who], f"{who}@bank.example")
        assert "code" not in r.json()
        redeemed = await env.http.post("/api/v1/enroll", json={"code": code, "username": who,
                                                               "name": "adam's laptop"})
        assert redeemed.status_code == 201, redeemed.text
        stolen[who] = redeemed.json()["token"]
        confirmed = await env.http.post(f"/api/v1/users/{env.user_ids[who]}/tokens/{redeemed.json()['id']}/confirm",
                                        headers=env.auth("adam2"))
        assert confirmed.status_code == 200, confirmed.text
    await wait_for(env, pid, at_gate("validation"))
    asked = await env.http.post("/api/v1/exceptions", headers={"Authorization": f"Bearer {stolen['rita']}"}, json={
        "model_id": model, "version_id": version, "kind": "check", "check_id": "monitoring-plan", "reason": "r",
        "expires_at": (now() + timedelta(days=30)).isoformat()})
    assert asked.status_code == 201, asked.text
    x = asked.json()["exception_id"]
    ok = await env.http.post(f"/api/v1/exceptions/{x}/approval", json={"comment": "fine"},
                             headers={"Authorization": f"Bearer {stolen['rob']}"})
    assert ok.status_code == 200 and ok.json()["status"] == "active", ok.text
    granted = await eventually(lambda: _events(env, "exception.granted"), lambda es: len(es) == 1)
    record = ok.json()
    trail = {"record": {k: v for k, v in record.items() if "credential" in k},
             "event": {k: v for k, v in granted[0].payload.items() if "credential" in k or "issued" in k}}
    assert trail["record"] and trail["event"], (
        f"a maker-checker exception granted with two admin-redeemed credentials records no credential: {trail}")


@pytest.mark.parametrize("late_snapshot", [False, True], ids=["control", "stale-snapshot-delivered-late"])
async def test_redteam_condition_erased_by_a_snapshot_read_before_it(
        sqlite_url: str, tmp_path: Any, temporal_client: Any, task_queue: str, late_snapshot: bool) -> None:
    """Race (snapshot ordering by ``as_of``): a governance snapshot read by a concurrent finding/exception save
    *before* an approve_with_conditions, delivered *after* it, carries an ``as_of`` newer than the one the
    progression holds (its own audit events advanced the chain) and replaces ``state.findings`` wholesale,
    dropping the condition the decision appended in memory; the gate it blocks then completes."""
    import shutil

    from activities.governance import governance_snapshot
    from engine.findings import SIGNAL_GOVERNANCE
    from engine.loading import PolicyRegistry
    from testing.api import POLICIES, api_env

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
        model = pid.split("@")[0]
        await wait_for(env, pid, at_gate("validation"))
        assert (await decide(env, "vera", pid, "validation")).status_code == 200
        await wait_for(env, pid, at_gate("risk_review"))
        assert (await decide(env, "rob", pid, "risk_review")).status_code == 200
        async with env.sessionmaker() as session:  # what a concurrent save reads now, before the condition
            stale = await governance_snapshot(session, model)
        ok = await _post(env, "rita", f"/progressions/{pid}/decisions", {
            "stage": "risk_review", "decision": "approve_with_conditions", "comment": "with a condition",
            "conditions": [{"severity": "high", "title": "No challenger model"}]})
        assert ok.status_code == 200, ok.text
        handle = env.temporal.get_workflow_handle(pid)
        if late_snapshot:  # control: without it, the condition keeps the gate from completing
            await handle.signal(SIGNAL_GOVERNANCE, stale)  # ... delivered late
        await settled(handle)  # whatever the decision (and the late snapshot) lead to has happened
        state = await get_state(env, pid)
        rr = next(s for s in state["stages"] if s["name"] == "risk_review")
        open_high = [f for f in (await env.http.get(f"/api/v1/findings?model={model}&open=true",
                                                    headers=env.auth("ann"))).json()["items"]
                     if f["severity"] == "high"]
        assert open_high, "the condition was never written"
        assert rr["status"] != "passed", (
            f"risk_review passed with open high condition {open_high[0]['finding_id']} blocking it "
            f"(stale snapshot as_of={stale.as_of}); now at {state['current_stage']} / {state['status']}")


async def test_redteam_check_exception_of_one_version_does_not_unblock_another(env: ApiEnv) -> None:
    """A check waiver is scoped to its version: v1's active exception on monitoring-plan leaves v2 blocked."""
    pids = []
    for _ in range(2):
        pid, resp = await start(env, skip=("monitoring_plan",))
        assert resp.status_code == 201, resp.text
        pids.append(pid)
    for pid in pids:
        await wait_for(env, pid, at_gate("validation"))
        assert (await decide(env, "vera", pid, "validation")).status_code == 200
        await wait_for(env, pid, at_gate("risk_review"))
        for who in ("rita", "rob"):
            assert (await decide(env, who, pid, "risk_review")).status_code == 200
        await wait_for(env, pid, lambda s: s["current_stage"] == "staging" and s["status"] == "blocked")
    model, v1 = pids[0].split("@")
    asked = await _post(env, "rita", "/exceptions", {
        "model_id": model, "version_id": v1, "kind": "check", "check_id": "monitoring-plan", "reason": "r",
        "expires_at": (now() + timedelta(days=30)).isoformat()})
    assert asked.status_code == 201, asked.text
    assert (await _post(env, "rob", f"/exceptions/{asked.json()['exception_id']}/approval", {})).status_code == 200
    await wait_for(env, pids[0], lambda s: s["status"] == "in_production")
    other = await wait_for(env, pids[1], lambda s: any(e["version_id"] == v1 for e in s["exceptions"]))
    assert other["status"] == "blocked" and other["current_stage"] == "staging"
