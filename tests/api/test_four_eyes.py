"""Issue 13, "Nobody gets around the four eyes": each attack of the issue, end to end through the API on
the real Temporal dev server (worker, database, tokens all real). Every test here failed on the code
before the issue (the old answer is named in each test) and passes now.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowUpdateInput,
    WorkflowUpdateFailedError,
)
from temporalio.common import WorkflowIDReusePolicy
from temporalio.service import RPCError

from api import idempotency
from engine.db import ApiToken, AuditEvent, DecisionRow, ProgressionRow, User
from engine.identity import InvalidIdentity, actor_for, create_user
from engine.lifecycle import DecisionKind
from testing.api import (
    CREDIT,
    MARKETING,
    ApiEnv,
    api_env,
    at_gate,
    audit_events,
    decide,
    get_state,
    page_as,
    serve_http,
    spec_text,
    start,
    start_past_the_api,
    started_at_gate,
    unique_version,
    upload,
    wait_audit,
    wait_for,
    wait_read_model,
)
from testing.polling import within
from tests.api.test_api_identity import SSO_ISSUER, make_jwks, sso_settings, sso_token
from workflows.contract import (
    UPDATE_DECIDE,
    UPDATE_WITHDRAW,
    DecideInput,
    WithdrawInput,
)


async def person(env: ApiEnv, username: str, roles: list[str], team: str | None) -> None:
    """A person created on the operator's bootstrap path (as the make-run seed does)."""
    async with env.sessionmaker() as session:
        user, token = await create_user(session, username=username, roles=roles, team=team)
        await session.commit()
    env.tokens[username], env.user_ids[username] = token, user.id


async def at_risk_review(env: ApiEnv, validator: str = "vera", **kw: Any) -> str:
    pid, _ = await started_at_gate(env, "dana", **kw)
    r = await decide(env, validator, pid, "validation", "approve", "independent validation complete")
    assert r.status_code == 200, r.text
    await wait_for(env, pid, at_gate("risk_review"))
    return pid


# ---- attack 1: an admin acting as anyone ------------------------------------------------------------


async def test_attack1_admin_cannot_mint_a_deciders_token_and_decisions_name_the_credential(env: ApiEnv) -> None:
    adam = env.auth("adam")
    # Old: 201 and a working token for Rita in the admin's hands.
    r = await env.http.post(f"/api/v1/users/{env.user_ids['rita']}/tokens", json={"name": "x"}, headers=adam)
    assert r.status_code == 403 and r.json()["code"] == "self_enrollment_required", r.text
    # Old: one admin created a risk officer (with a token) alone; now the role waits for a second admin.
    r = await env.http.post("/api/v1/users", json={"username": "ronja", "roles": ["model_risk_officer"],
                                                   "team": "model-risk", "email": "ronja@bank.example"},
                            headers=adam)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["token"] is None and created["user"]["roles"] == []
    grant = created["user"]["grants"][0]
    assert grant["status"] == "pending" and grant["proposed_by"] == "adam"
    ronja = created["user"]["id"]
    r = await env.http.post(f"/api/v1/role-grants/{grant['id']}/approve", headers=adam)
    assert r.status_code == 403 and r.json()["code"] == "same_admin"
    r = await env.http.post(f"/api/v1/users/{ronja}/tokens", json={}, headers=adam)  # pending deciding role
    assert r.status_code == 403 and r.json()["code"] == "self_enrollment_required"
    await person(env, "ada", ["admin"], "platform")
    r = await env.http.post(f"/api/v1/role-grants/{grant['id']}/approve", headers=env.auth("ada"))
    assert r.status_code == 200 and r.json()["approved_by"] == "ada", r.text
    # The person enrolls themself: the code is mailed to them; the admin sees only where it went.
    r, code = await env.enrollment_code("adam", ronja, "ronja@bank.example")
    assert "token" not in r.json() and "code" not in r.json() and code not in r.text
    assert r.json()["sent_to"] == "r***@bank.example" and r.json()["reissue"] is False
    redeemed = await env.http.post("/api/v1/enroll", json={"code": code, "username": "ronja", "name": "laptop"})
    assert redeemed.status_code == 201 and redeemed.json()["issued_by"] == "enrollment:adam"
    assert redeemed.json()["awaiting_confirmation"] is False
    again = await env.http.post("/api/v1/enroll", json={"code": code, "username": "ronja"})
    assert again.status_code == 404 and again.json()["code"] == "enrollment_invalid"
    env.tokens["ronja"], env.user_ids["ronja"] = redeemed.json()["token"], ronja
    me = (await env.http.get("/api/v1/me", headers=env.auth("ronja"))).json()
    assert me["roles"] == ["model_risk_officer"]
    # Who granted what is visible to admins (API) ...
    users = {u["username"]: u for u in (await env.http.get("/api/v1/users", headers=adam)).json()}
    assert [(g["role"], g["proposed_by"], g["approved_by"]) for g in users["ronja"]["grants"]] == [
        ("model_risk_officer", "adam", "ada")]
    assert [(g["role"], g["proposed_by"]) for g in users["rita"]["grants"]] == [("model_risk_officer", "bootstrap")]
    # ... and in the audit trail, with the credential the admin acted with.
    async with env.sessionmaker() as session:
        types = [e.event_type for e in (await session.scalars(select(AuditEvent).where(
            AuditEvent.event_type.in_(["role_grant.proposed", "role_grant.approved", "enrollment.created",
                                       "token.issued"])).order_by(AuditEvent.seq))).all()]
    assert types == ["role_grant.proposed", "role_grant.approved", "enrollment.created", "token.issued"]
    # Admins never hold a deciding role, whoever proposes it.
    r = await env.http.post("/api/v1/users", json={"username": "both", "roles": ["admin", "model_validator"],
                                                   "team": "platform"}, headers=adam)
    assert r.status_code == 422 and r.json()["code"] == "admin_cannot_decide"
    r = await env.http.post(f"/api/v1/users/{env.user_ids['adam']}/role-grants", json={"role": "model_validator"},
                            headers=env.auth("ada"))
    assert r.status_code == 409 and r.json()["code"] == "admin_cannot_decide"
    r = await env.http.post(f"/api/v1/users/{env.user_ids['adam']}/role-grants", json={"role": "auditor"},
                            headers=adam)
    assert r.status_code == 403 and r.json()["code"] == "own_role_grant"
    # A second admin account of the same admin (a sock puppet) would defeat maker-checker: the admin role is
    # approved by another admin, and no admin obtains a token of an admin account either.
    r = await env.http.post("/api/v1/users", json={"username": "adam2", "roles": ["admin"], "team": "platform"},
                            headers=adam)
    assert r.status_code == 201 and r.json()["token"] is None and r.json()["user"]["roles"] == []
    r = await env.http.post(f"/api/v1/users/{r.json()['user']['id']}/tokens", json={}, headers=adam)
    assert r.status_code == 403 and r.json()["code"] == "self_enrollment_required"
    r = await env.http.post(f"/api/v1/users/{env.user_ids['ada']}/tokens", json={}, headers=adam)
    assert r.status_code == 403 and r.json()["code"] == "self_enrollment_required"

    # Every decision and its audit event record the credential and who issued it.
    pid = await at_risk_review(env)
    assert (await decide(env, "ronja", pid, "risk_review", "approve", "accepted")).status_code == 200
    async with env.sessionmaker() as session:
        rows = {r.actor_username: r for r in (await session.scalars(
            select(DecisionRow).where(DecisionRow.progression_id == pid))).all()}
        ronja_token = (await session.scalars(select(ApiToken).where(ApiToken.user_id == ronja))).one()
    assert rows["ronja"].credential_id == f"token:{ronja_token.id}"
    assert rows["ronja"].credential_issued_by == "enrollment:adam"
    assert rows["vera"].credential_issued_by == "bootstrap"
    received = await wait_audit(env, pid, "decision.received",
                                where=lambda e: e.payload.get("actor") == "ronja")
    event = next(e for e in received if e.payload["actor"] == "ronja")
    assert event.payload["credential_id"] == f"token:{ronja_token.id}"
    assert event.payload["credential_issued_by"] == "enrollment:adam"


async def test_deciders_sso_only_refuses_api_tokens(sqlite_url: str, tmp_path: Path, temporal_client: Client,
                                                    task_queue: str) -> None:
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue, deciders_sso_only=True) as env:
        pid, _ = await started_at_gate(env, "dana")
        r = await decide(env, "vera", pid, "validation")
        assert r.status_code == 403 and r.json()["code"] == "sso_required"
        assert (await get_state(env, pid))["status"] == "awaiting_approval"


# ---- attack 2: one person, two gates --------------------------------------------------------------------


async def test_attack2_one_person_cannot_decide_validation_and_risk_review(env: ApiEnv) -> None:
    await person(env, "bo", ["model_validator", "model_risk_officer"], "model-risk")
    pid = await at_risk_review(env, validator="bo")
    # Old: 200, and with one more risk officer the "independent validation plus two" was two people.
    r = await decide(env, "bo", pid, "risk_review", "approve", "accepted")
    assert r.status_code == 403 and r.json()["code"] == "not_independent", r.text
    assert "validation" in r.json()["message"]
    refused = await audit_events(env, pid, "decision.refused")
    assert [e.payload["code"] for e in refused] == ["not_independent"]
    # The workflow's validator applies the same rule (a client going around the API fast check).
    handle = env.temporal.get_workflow_handle(pid)
    async with env.sessionmaker() as session:
        bo = await session.get(User, env.user_ids["bo"])
        assert bo is not None
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await within(handle.execute_update(UPDATE_DECIDE, DecideInput(
            stage="risk_review", decision=DecisionKind.approve, comment="direct", actor=actor_for(bo),
            decision_id=f"direct-{uuid.uuid4()}")), "a direct decision")
    assert getattr(info.value.cause, "type", None) == "not_independent"
    state = await get_state(env, pid)
    review = next(s for s in state["stages"] if s["name"] == "risk_review")
    assert review["approvals"][0]["approved_by"] == [] and review["decisions"] == []
    assert (await decide(env, "rita", pid, "risk_review")).status_code == 200
    assert (await decide(env, "rob", pid, "risk_review")).status_code == 200
    await wait_for(env, pid, lambda s: s["status"] == "in_production")


# ---- attack 3: no team, no rule --------------------------------------------------------------------------


async def test_attack3_a_decider_without_a_team_is_refused(env: ApiEnv) -> None:
    with pytest.raises(InvalidIdentity) as info:
        async with env.sessionmaker() as session:
            await create_user(session, username="nemo", roles=["model_validator"], team=None)
    assert info.value.code == "team_required"
    r = await env.http.post("/api/v1/users", json={"username": "nemo", "roles": ["model_validator"]},
                            headers=env.auth("adam"))
    assert r.status_code == 422 and r.json()["code"] == "team_required"
    # A teamless decider anyway (an SSO identity without a team claim, a team removed later): refused.
    await person(env, "nemo", ["model_validator"], "retail-risk")
    async with env.sessionmaker() as session:
        nemo = await session.get(User, env.user_ids["nemo"])
        assert nemo is not None
        nemo.team = None
        await session.commit()
    pid, _ = await started_at_gate(env, "dana")
    items = (await env.http.get("/api/v1/inbox", headers=env.auth("nemo"))).json()["items"]
    assert pid not in [i["progression_id"] for i in items]  # not offered either
    r = await decide(env, "nemo", pid, "validation")  # old: 200 (own-team rule skipped for team None)
    assert r.status_code == 403 and r.json()["code"] == "no_team", r.text
    assert (await get_state(env, pid))["status"] == "awaiting_approval"


# ---- attack 4: escape from production duties ---------------------------------------------------------------


async def test_attack4_a_model_in_production_cannot_be_withdrawn(env: ApiEnv) -> None:
    pid = await at_risk_review(env)
    assert (await decide(env, "rita", pid, "risk_review")).status_code == 200
    assert (await decide(env, "rob", pid, "risk_review")).status_code == 200
    state = await wait_for(env, pid, lambda s: s["status"] == "in_production")
    due = state["revalidation_due_at"]
    for who in ("dana", "adam"):  # old: 200 withdrawn, revalidation timer cancelled, the model still deployed
        r = await env.http.post(f"/api/v1/progressions/{pid}/withdraw", json={"reason": "no more reviews"},
                                headers=env.auth(who))
        assert r.status_code == 409 and r.json()["code"] == "in_production", r.text
        assert "retire" in r.json()["message"]
    # The workflow's validator refuses it too.

    async with env.sessionmaker() as session:
        dana = await session.get(User, env.user_ids["dana"])
        assert dana is not None
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await within(env.temporal.get_workflow_handle(pid).execute_update(
            UPDATE_WITHDRAW, WithdrawInput(reason="direct", actor=actor_for(dana), request_id="direct")),
            "a direct withdrawal")
    assert getattr(info.value.cause, "type", None) == "in_production"
    state = await get_state(env, pid)
    assert state["status"] == "in_production" and state["revalidation_due_at"] == due
    assert await audit_events(env, pid, "progression.withdrawn") == []


# ---- attack 5: squatting, and failures that nobody sees ------------------------------------------------------


async def test_attack5_only_the_owning_team_starts_a_version_of_its_model(env: ApiEnv) -> None:
    first, resp = await start(env, "dana")
    assert resp.status_code == 201
    await wait_read_model(env, first, lambda r: True)
    version = unique_version()
    # Old: 201, then the workflow FAILED (model_mismatch) and the version was burned for its owner.
    pid, resp = await start(env, "sam", version=version, model={"team": "payments"})
    assert resp.status_code == 404 and resp.json()["code"] == "not_model_owner", resp.text
    assert await env.count(ProgressionRow, ProgressionRow.id == pid) == 0
    assert not await _workflow_exists(env, pid)
    # A credit model declared as marketing: refused before anything starts (old: 201, then FAILED).
    other, resp = await start(env, "dana", model={"business_intent": "marketing-propensity"})
    assert resp.status_code == 409 and resp.json()["code"] == "intent_mismatch", resp.text
    assert "POST /api/v1/models/retail-credit-scorecard/intent" in resp.json()["message"]
    assert not await _workflow_exists(env, other)
    # The rightful owner starts that version.
    pid2, resp = await start(env, "dana", version=version)
    assert resp.status_code == 201 and pid2 == pid, resp.text


async def test_attack5_a_failed_workflow_is_visible_and_its_version_can_start_again(env: ApiEnv) -> None:
    first, resp = await start(env, "dana")
    assert resp.status_code == 201
    await wait_read_model(env, first, lambda r: True)
    # A start that gets past the API anyway (a race between two starts, a client of Temporal itself):
    # another team's spec for the model reaches registration, which refuses it.
    state = await get_state(env, first)
    version = unique_version()
    text = spec_text(CREDIT, version={"id": version}, model={"team": "payments"})
    handle = await start_past_the_api(env, text, "sam", state["evidence"],
                                      id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY)
    pid = handle.id
    # Old: no row, no event, the version burned. Now: status failed with the reason, and an audit event.
    row = await wait_read_model(env, pid, lambda r: r.status == "failed")
    assert "model_mismatch" in row.state["failure"]
    failed = await audit_events(env, pid, "progression.failed")
    assert len(failed) == 1 and failed[0].payload["code"] == "model_mismatch"
    shown = await get_state(env, pid)
    assert shown["status"] == "failed" and "model_mismatch" in shown["failure"]
    listed = (await env.http.get("/api/v1/progressions", params={"status": "failed"}, headers=env.auth("ann"))).json()
    assert pid in [p["id"] for p in listed["items"]]
    description = await handle.describe()
    assert description.status is not None and description.status.name == "FAILED"
    # The owner starts that version again: 201, and the new run replaces the failed read model.
    pid2, resp = await start(env, "dana", version=version)
    assert resp.status_code == 201 and pid2 == pid, resp.text
    again = await wait_for(env, pid, at_gate("validation"))
    assert again["submitted_by"] == env.user_ids["dana"] and again["team"] == "retail-risk"
    row = await wait_read_model(env, pid, lambda r: r.status == "awaiting_approval")
    assert row.submitted_by == env.user_ids["dana"] and row.team == "retail-risk"
    # Nobody else restarts a running version.
    _, resp = await start(env, "dana", version=version)
    assert resp.status_code == 409 and resp.json()["code"] == "progression_exists"


async def _workflow_exists(env: ApiEnv, pid: str) -> bool:
    try:
        await env.temporal.get_workflow_handle(pid).describe()
        return True
    except RPCError:
        return False


# ---- attack 6: re-rolling a rejection --------------------------------------------------------------------------


async def test_attack6_a_rejection_follows_the_artifact(env: ApiEnv) -> None:
    rejected, resp = await start(env, "dana")
    assert resp.status_code == 201
    await wait_for(env, rejected, at_gate("validation"))
    r = await decide(env, "vera", rejected, "validation", "reject", "calibration does not hold out of time")
    assert r.status_code == 200
    await wait_read_model(env, rejected, lambda row: row.status == "rejected")

    # Same artifact and commit under a new version id: the rejection is shown and must be acknowledged.
    again, resp = await start(env, "dana")
    assert resp.status_code == 201
    state = await wait_for(env, again, at_gate("validation"))
    assert [p["progression_id"] for p in state["prior_rejections"]] == [rejected]
    lineage = state["lineage"]
    assert [(p["progression_id"], p["status"]) for p in lineage["model_versions"]] == [(rejected, "rejected")]
    assert lineage["same_artifact_or_commit"][0]["match"] == ["artifact", "source_commit", "artifact_digest"]
    assert rejected in await page_as(env, "vera", f"/ui/progressions/{again}")  # shown to the decider in the UI
    r = await decide(env, "vera", again, "validation", "approve", "looks sound")  # old: 200, no link at all
    assert r.status_code == 409 and r.json()["code"] == "prior_rejection_unacknowledged", r.text
    r = await decide(env, "vera", again, "validation", "approve",
                     f"{rejected} was rejected for calibration; the out-of-time analysis now holds")
    assert r.status_code == 200, r.text

    # Under a new model id declaring marketing (a weaker policy): refused before anything starts. (Before the
    # intent_downgrade control: 422 for the credit-restricted `age`, then 201 without it: a tier-3 walk for the
    # rejected scorecard, held only by the acknowledgement; tests/api/test_intent_change.py has the whole attack.)
    marketing = {"model": {"id": "rebadged-scorecard", "team": "retail-risk"},
                 "version": {"id": unique_version(), "source": "git+https://git.example/retail/scorecard@4f2a9c1",
                             "artifact": "s3://models/retail-credit-scorecard/3.2.0/"}}
    features = ["tenure_months", "product_count", "digital_engagement_score"]
    _, files = upload(MARKETING, text=spec_text(MARKETING, features=features, **marketing))
    resp = await env.http.post("/api/v1/progressions", files=files, headers=env.auth("dana"))
    assert resp.status_code == 409 and resp.json()["code"] == "intent_downgrade", resp.text
    assert resp.json()["details"]["earlier"]["business_intent"] == "credit-underwriting"
    # Under a new model id and the same policy: it starts, and the earlier rejection still has to be acknowledged.
    pid, resp = await start(env, "dana", model={"id": "rebadged-scorecard"})
    assert resp.status_code == 201, resp.text
    state = await wait_for(env, pid, at_gate("validation"))
    assert rejected in [p["progression_id"] for p in state["prior_rejections"]]
    r = await decide(env, "vera", pid, "validation", "approve", "ranking power is fine")  # old: in production
    assert r.status_code == 409 and r.json()["code"] == "prior_rejection_unacknowledged"


async def test_attack6_a_new_marketing_model_needs_a_real_consent_basis(env: ApiEnv) -> None:
    version, model_id = unique_version(), f"promo-{uuid.uuid4().hex[:6]}"
    text = spec_text(MARKETING, model={"id": model_id}, version={"id": version},
                     features=["age", "zip_code", "tenure_months"],
                     evidence={"metrics": "evidence/metrics.json", "model_card": "docs/model_card.md",
                               "consent_basis": "docs/consent.md"})
    _, files = upload(MARKETING, text=text, skip=("consent_basis",), extra={"consent_basis": ("consent.md", b"x")})
    pid = f"{model_id}@{version}"
    resp = await env.http.post("/api/v1/progressions", files=files, headers=env.auth("adam"))
    assert resp.status_code == 201, resp.text
    state = await wait_for(env, pid, lambda s: s["status"] == "blocked")  # old: the gate opened
    assert state["current_stage"] == "validation"
    assert any("pii-consent" in m for m in state["missing"]), state["missing"]


# ---- attack 7: twenty concurrent decisions --------------------------------------------------------------------


async def test_attack7_twenty_concurrent_decisions_by_one_officer_never_500(env: ApiEnv) -> None:
    await _twenty_concurrent_decisions(env)


async def test_attack7_on_postgresql(postgres_url: str, tmp_path: Path, temporal_client: Client,
                                     task_queue: str) -> None:
    async with api_env(postgres_url, tmp_path, temporal_client, task_queue) as env:
        await _twenty_concurrent_decisions(env)


async def _twenty_concurrent_decisions(env: ApiEnv) -> None:
    pid = await at_risk_review(env)
    async with serve_http(env.app) as base, httpx.AsyncClient(base_url=base, timeout=120) as http:
        async def one(i: int) -> httpx.Response:
            return await http.post(f"/api/v1/progressions/{pid}/decisions",
                                   json={"stage": "risk_review", "decision": "approve", "comment": f"ok {i}"},
                                   headers={**env.auth("rita"), "Idempotency-Key": f"burst-{i}-{uuid.uuid4()}"})
        answers = await asyncio.gather(*(one(i) for i in range(20)))
    statuses = sorted(r.status_code for r in answers)
    # Old: 16 x 500 (QueuePool limit of size 5 overflow 10 reached) after about 30 s.
    assert statuses == [200] + [409] * 19, [(r.status_code, r.text[:120]) for r in answers if r.status_code != 409]
    codes = {r.json()["code"] for r in answers if r.status_code == 409}
    assert codes <= {"decision_in_progress", "already_decided", "quorum_met_for_role"}, codes
    state = await get_state(env, pid)
    review = next(s for s in state["stages"] if s["name"] == "risk_review")
    assert review["approvals"][0]["approved_by"] == [env.user_ids["rita"]]
    assert await env.count(DecisionRow, DecisionRow.progression_id == pid, DecisionRow.stage == "risk_review") == 1


class HoldFirstDecide(Interceptor):
    """Holds the first ``decide`` Update this client sends until released: a request that seems lost."""

    def __init__(self) -> None:
        self.held, self.release, self.first = asyncio.Event(), asyncio.Event(), True

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        outer = self

        class Holding(OutboundInterceptor):
            async def start_workflow_update(self, input: StartWorkflowUpdateInput) -> Any:
                if input.update == UPDATE_DECIDE and outer.first:
                    outer.first = False
                    outer.held.set()
                    await outer.release.wait()
                return await super().start_workflow_update(input)

        return Holding(next)


async def test_a_retry_of_the_decision_in_flight_is_that_decision_not_a_refusal(
        sqlite_url: str, tmp_path: Path, temporal_client: Client, task_queue: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the crash harness: a decision's request seemed lost, its Idempotency-Key was taken over by the
    retry while the first request still waited on the workflow, and the retry (the same decision) got a final
    409 ``decision_in_progress``. Now both answer the one decision; "one person counts once" still holds."""
    holder = HoldFirstDecide()
    client = Client(**{**temporal_client.config(), "interceptors": [holder]})
    monkeypatch.setattr(idempotency, "STALE_AFTER", timedelta(0))  # the retry takes the key over at once
    async with api_env(sqlite_url, tmp_path, client, task_queue) as env:
        pid, _ = await started_at_gate(env)
        key = {"Idempotency-Key": f"retry-{uuid.uuid4()}"}
        first = asyncio.create_task(decide(env, "vera", pid, "validation", **key))
        await within(holder.held.wait(), "the first request to reach the Temporal client")
        retry = await decide(env, "vera", pid, "validation", **key)
        holder.release.set()
        answer = await within(first, "the first request's answer")
        assert retry.status_code == 200, retry.text
        assert answer.status_code == 200, answer.text
        assert await env.count(DecisionRow, DecisionRow.progression_id == pid, DecisionRow.stage == "validation") == 1
        assert await audit_events(env, pid, "decision.refused") == []
        other = await decide(env, "vera", pid, "validation", comment="a second decision")  # no key: a new one
        assert other.status_code == 409 and other.json()["code"] == "gate_not_open", other.text  # one approval


# ---- credentials: SSO sessions, the operator's bootstrap CLI ------------------------------------------------


async def test_sso_decisions_name_the_session_and_sso_only_accepts_them(sqlite_url: str, tmp_path: Path,
                                                                        temporal_client: Client,
                                                                        task_queue: str) -> None:
    key, jwks = make_jwks(tmp_path)
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue, deciders_sso_only=True,
                       **sso_settings(jwks)) as env:
        pid, _ = await started_at_gate(env, "dana")
        token = sso_token(key, preferred_username="sso.vic", roles=["model_validator"], team="validation",
                          sid="session-42")
        r = await env.http.post(f"/api/v1/progressions/{pid}/decisions", headers={"Authorization": f"Bearer {token}"},
                                json={"stage": "validation", "decision": "approve", "comment": "validated"})
        assert r.status_code == 200, r.text
        async with env.sessionmaker() as session:
            row = (await session.scalars(select(DecisionRow).where(DecisionRow.progression_id == pid))).one()
        assert row.credential_id == "sso:session-42" and row.credential_issued_by == SSO_ISSUER
        # An SSO identity claiming admin and a deciding role keeps only admin: admins never decide.
        both = sso_token(key, preferred_username="sso.boss", roles=["admin", "model_risk_officer"], team="platform")
        me = (await env.http.get("/api/v1/me", headers={"Authorization": f"Bearer {both}"})).json()
        assert me["roles"] == ["admin"] and "decide" not in me["actions"]
