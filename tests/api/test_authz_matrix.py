"""The authorization matrix: every role x every route x (own team, other team), asserted cell by cell.

Principals: one single-role user per role in team ``retail-risk`` (the team that owns the target
model: "own") and one in team ``payments`` ("other"), plus an anonymous caller. The target is a
credit progression of retail-risk waiting at its validation gate (submitted by dana, who is not
one of the principals, so no one here is the submitter). A cell whose answer is a success that
changes state (a decision, evidence, a withdrawal) acts on a fresh progression of its own, so
cells never depend on one another.

The table ``ROUTES`` is checked against ``app.routes``: a route the app serves that is missing
here fails the test. Web UI routes are in the table too (GET pages per role and team after a
real sign-in; POST forms: the CSRF token and sign-in are enforced for everyone). Object-level
access (another team's progression, model, evidence, audit events) answers 404 to developers
and never leaks in lists. Mass assignment (actor, role, team, submitted_by, user_id in bodies,
form parts or headers) is rejected or has no effect. The number of cells asserted is printed and
written to ``test-artifacts/authz-matrix.json``.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import iter_route_contexts
from sqlalchemy import select
from starlette.routing import Mount
from temporalio.client import Client

from engine.db import AuditEvent, CatalogModel, DecisionRow, IntentChange, RoleGrant, User, utcnow
from engine.identity import create_user, issue_token
from engine.settings import PROJECT_ROOT
from testing.api import (
    CREDIT,
    ApiEnv,
    api_env,
    at_gate,
    spec_text,
    start,
    started_at_gate,
    unique_version,
    upload,
    wait_for,
)

ROLES = {"developer": "model_developer", "validator": "model_validator", "risk_officer": "model_risk_officer",
         "auditor": "auditor", "admin": "admin"}
TEAMS = {"own": "retail-risk", "other": "payments"}
ARTIFACT = PROJECT_ROOT / "test-artifacts" / "authz-matrix.json"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')

Expect = tuple[int, str | None]  # (status, stable code or None)


@dataclass
class Ctx:
    env: ApiEnv
    pid: str
    model_id: str
    victim_id: str
    browsers: dict[str, httpx.AsyncClient]

    async def fresh(self) -> str:
        """A new retail-risk progression at its validation gate, for a cell whose success changes state."""
        pid, resp = await start(self.env)
        assert resp.status_code == 201, resp.text
        await wait_for(self.env, pid, at_gate("validation"))
        return pid


Send = Callable[[Ctx, str | None, bool], Awaitable[httpx.Response]]  # (ctx, user or None, expected success)


@dataclass
class Route:
    send: Send
    expect: Callable[[str, str], Expect]  # (role, scope) -> expectation; role "anonymous" included
    check: Callable[[Ctx, str, str, httpx.Response], None] | None = None


def user_of(role: str, scope: str) -> str:
    return f"{role}-{scope}"


def api(method: str, path: str, *, body: Any = None, fresh: bool = False,
        files: Callable[[], Any] | None = None) -> Send:
    async def send(ctx: Ctx, who: str | None, succeeds: bool) -> httpx.Response:
        pid = await ctx.fresh() if fresh and succeeds else ctx.pid
        url = path.format(pid=pid, model=ctx.model_id, victim=ctx.victim_id, token=await _victim_token(ctx, who))
        headers = ctx.env.auth(who) if who else {}
        payload = body() if callable(body) else body
        return await ctx.env.http.request(method, url, json=payload, files=files() if files else None,
                                          headers=headers)
    return send


async def _victim_token(ctx: Ctx, who: str | None) -> str:
    """A fresh token of the victim user for each DELETE cell (so an admin's success is not a 404 next time)."""
    async with ctx.env.sessionmaker() as session:
        user = await session.get(User, ctx.victim_id)
        assert user is not None
        row, _ = await issue_token(session, user, name=f"victim-{uuid.uuid4().hex[:6]}")
        await session.commit()
        return row.id


def everyone(status: int, code: str | None = None) -> Callable[[str, str], Expect]:
    return lambda role, scope: (401, "unauthenticated") if role == "anonymous" else (status, code)


def public(status: int = 200) -> Callable[[str, str], Expect]:
    return lambda role, scope: (status, None)


def by_role(table: dict[str, Expect | tuple[Expect, Expect]]) -> Callable[[str, str], Expect]:
    def expect(role: str, scope: str) -> Expect:
        if role == "anonymous":
            return 401, "unauthenticated"
        value = table[role]
        if isinstance(value[0], tuple):
            return value[0] if scope == "own" else value[1]  # type: ignore[return-value]
        return value  # type: ignore[return-value]
    return expect


OK, CREATED, ACCEPTED = (200, None), (201, None), (202, None)
FORBIDDEN = (403, "forbidden")
HIDDEN = (404, "not_found")
NOT_GATE = (403, "not_a_gate_role")
NOT_POSTER = (403, "not_a_monitoring_poster")  # no shipped policy lets a person post monitoring results


def intent_officers(success: Expect) -> Callable[[str, str], Expect]:
    return by_role({"developer": (FORBIDDEN, HIDDEN), "validator": FORBIDDEN,
                    "risk_officer": ((403, "own_team"), success), "auditor": FORBIDDEN, "admin": FORBIDDEN})


READ_OBJECT = by_role({"developer": (OK, HIDDEN), "validator": OK, "risk_officer": OK, "auditor": OK, "admin": OK})
AUDITORS = by_role({"developer": FORBIDDEN, "validator": FORBIDDEN, "risk_officer": OK, "auditor": OK, "admin": OK})
ADMIN_ONLY = by_role({"developer": FORBIDDEN, "validator": FORBIDDEN, "risk_officer": FORBIDDEN,
                      "auditor": FORBIDDEN, "admin": OK})


def _sees(ctx: Ctx, role: str, scope: str) -> bool:
    return not (role == "developer" and scope == "other")


def check_listed(key: str) -> Callable[[Ctx, str, str, httpx.Response], None]:
    def check(ctx: Ctx, role: str, scope: str, resp: httpx.Response) -> None:
        ids = {item[key] for item in resp.json()["items"]}
        target = ctx.pid if key == "id" and "@" in next(iter(ids), "@") else ctx.model_id
        assert (target in ids) == _sees(ctx, role, scope), (role, scope, target, ids)
    return check


def check_audit(ctx: Ctx, role: str, scope: str, resp: httpx.Response) -> None:
    items = resp.json()["items"]
    assert bool(items) == _sees(ctx, role, scope), (role, scope, len(items))
    assert all(e["progression_id"] == ctx.pid for e in items)


def check_inbox(ctx: Ctx, role: str, scope: str, resp: httpx.Response) -> None:
    listed = ctx.pid in {i["progression_id"] for i in resp.json()["items"]}
    # Only a validator of another team may decide the validation gate (own team: segregation of duties).
    assert listed == (role == "validator" and scope == "other"), (role, scope, listed)


def check_me(ctx: Ctx, role: str, scope: str, resp: httpx.Response) -> None:
    me = resp.json()
    assert me["username"] == user_of(role, scope) and me["team"] == TEAMS[scope] and me["roles"] == [ROLES[role]]


def new_spec_files() -> Any:
    return upload(CREDIT)[1]


FAIRNESS_UPDATE = (CREDIT / "evidence" / "fairness.json").read_bytes().replace(b'"as_of"', b'"note": "rerun", "as_of"')


def dry_run_body() -> dict[str, Any]:
    return {"spec": spec_text(version={"id": unique_version()})}


def monitoring_body() -> dict[str, Any]:
    return {"period": dt.date.today().isoformat(),
            "metrics": {"psi": {"bureau_score": 0.1}, "auc": 0.75, "default_rate": 0.02, "volume": 1000,
                        "fairness_ratio": 0.9}}


def new_user_body() -> dict[str, Any]:
    return {"username": f"u-{uuid.uuid4().hex[:8]}", "roles": ["auditor"], "team": "audit"}


APPROVE = {"stage": "validation", "decision": "approve", "comment": "matrix"}


async def _fresh_user(ctx: Ctx) -> str:
    async with ctx.env.sessionmaker() as session:
        user, _ = await create_user(session, username=f"g-{uuid.uuid4().hex[:8]}", roles=["auditor"], team="audit")
        await session.commit()
        return user.id


def confirm_token() -> Send:
    """Each cell confirms a fresh re-issued token of the victim (enrolled by someone who is none of the callers)."""
    async def send(ctx: Ctx, who: str | None, succeeds: bool) -> httpx.Response:
        async with ctx.env.sessionmaker() as session:
            user = await session.get(User, ctx.victim_id)
            assert user is not None
            row, _ = await issue_token(session, user, name="reissued", issued_by="enrollment:some-other-admin")
            row.confirmation_required = True
            user.email_changed_by = None  # the address-change cells ran as these admins (maker-checker: elsewhere)
            await session.commit()
            url = f"/api/v1/users/{ctx.victim_id}/tokens/{row.id}/confirm"
        return await ctx.env.http.post(url, headers=ctx.env.auth(who) if who else {})
    return send


def propose_grant() -> Send:
    """Each cell proposes a deciding role for a user of its own (so an admin's success is not a conflict next)."""
    async def send(ctx: Ctx, who: str | None, succeeds: bool) -> httpx.Response:
        url = f"/api/v1/users/{await _fresh_user(ctx)}/role-grants"
        return await ctx.env.http.post(url, json={"role": "model_validator", "reason": "matrix"},
                                       headers=ctx.env.auth(who) if who else {})
    return send


def approve_grant() -> Send:
    """Each cell approves a grant of its own, proposed by another admin (maker-checker: never the caller)."""
    async def send(ctx: Ctx, who: str | None, succeeds: bool) -> httpx.Response:
        user_id = await _fresh_user(ctx)
        async with ctx.env.sessionmaker() as session:
            grant = RoleGrant(id=str(uuid.uuid4()), user_id=user_id, role="model_validator", status="pending",
                              reason="matrix", proposed_by="another-admin", proposed_at=utcnow())
            session.add(grant)
            await session.commit()
        return await ctx.env.http.post(f"/api/v1/role-grants/{grant.id}/approve",
                                       headers=ctx.env.auth(who) if who else {})
    return send


def change_intent() -> Send:
    """Each cell proposes a change of intent of a retail-risk model of its own (the target model stays credit)."""
    async def send(ctx: Ctx, who: str | None, succeeds: bool) -> httpx.Response:
        model_id = f"matrix-{uuid.uuid4().hex[:8]}"
        async with ctx.env.sessionmaker() as session:
            session.add(CatalogModel(id=model_id, name="Matrix", team="retail-risk",
                                     business_intent="credit-underwriting"))
            await session.commit()
        return await ctx.env.http.post(f"/api/v1/models/{model_id}/intent",
                                       json={"business_intent": "marketing-propensity", "reason": "matrix"},
                                       headers=ctx.env.auth(who) if who else {})
    return send

def on_intent_change(verb: str) -> Send:
    """Each cell approves or rejects a change of intent of a retail-risk model of its own, proposed by another
    model risk officer."""
    async def send(ctx: Ctx, who: str | None, succeeds: bool) -> httpx.Response:
        model_id = f"matrix-{uuid.uuid4().hex[:8]}"
        change = IntentChange(id=str(uuid.uuid4()), model_id=model_id, from_intent="credit-underwriting",
                              to_intent="marketing-propensity", reason="matrix", status="pending",
                              proposed_by="another-officer", proposed_by_username="another-officer",
                              proposed_at=utcnow())
        async with ctx.env.sessionmaker() as session:
            session.add(CatalogModel(id=model_id, name="Matrix", team="retail-risk",
                                     business_intent="credit-underwriting"))
            await session.flush()
            session.add(change)
            await session.commit()
        return await ctx.env.http.post(f"/api/v1/models/{model_id}/intent-changes/{change.id}/{verb}",
                                       json={"reason": "matrix"}, headers=ctx.env.auth(who) if who else {})
    return send


def _finding_body(ctx: Ctx) -> dict[str, Any]:
    return {"model_id": ctx.model_id, "version_id": ctx.pid.split("@")[1], "stage": "validation", "severity": "low",
            "title": "matrix finding"}


def _exception_body(ctx: Ctx) -> dict[str, Any]:
    return {"model_id": ctx.model_id, "version_id": ctx.pid.split("@")[1], "kind": "pma", "magnitude": 0.5,
            "reason": "matrix", "expires_at": (utcnow() + timedelta(days=30)).isoformat()}


def on_finding(method: str, suffix: str = "", body: Any = None, *, remediated: bool = False) -> Send:
    """Each cell acts on a finding of its own on the target model, raised by the other team's validator (and,
    with ``remediated``, remediated by the owning team's developer)."""
    async def send(ctx: Ctx, who: str | None, succeeds: bool) -> httpx.Response:
        raised = await ctx.env.http.post("/api/v1/findings", json=_finding_body(ctx),
                                         headers=ctx.env.auth(user_of("validator", "other")))
        assert raised.status_code == 201, raised.text
        fid = raised.json()["finding_id"]
        if remediated:
            done = await ctx.env.http.post(f"/api/v1/findings/{fid}/remediation", json={"note": "matrix"},
                                           headers=ctx.env.auth(user_of("developer", "own")))
            assert done.status_code == 200, done.text
        return await ctx.env.http.request(method, f"/api/v1/findings/{fid}{suffix}", json=body,
                                          headers=ctx.env.auth(who) if who else {})
    return send


def on_exception(method: str, suffix: str = "", body: Any = None) -> Send:
    """Each cell acts on an exception of its own (a PMA requested by the other team's risk officer)."""
    async def send(ctx: Ctx, who: str | None, succeeds: bool) -> httpx.Response:
        made = await ctx.env.http.post("/api/v1/exceptions", json=_exception_body(ctx),
                                       headers=ctx.env.auth(user_of("risk_officer", "other")))
        assert made.status_code == 201, made.text
        return await ctx.env.http.request(method, f"/api/v1/exceptions/{made.json()['exception_id']}{suffix}",
                                          json=body, headers=ctx.env.auth(who) if who else {})
    return send


def with_body(method: str, path: str, body: Callable[[Ctx], Any]) -> Send:
    async def send(ctx: Ctx, who: str | None, succeeds: bool) -> httpx.Response:
        return await ctx.env.http.request(method, path, json=body(ctx), headers=ctx.env.auth(who) if who else {})
    return send


def on_proposal(method: str, suffix: str = "", body: Any = None) -> Send:
    """Each cell acts on a proposal of its own: a new feature (no data owner, so only admins decide) proposed by
    the other team's validator."""
    async def send(ctx: Ctx, who: str | None, succeeds: bool) -> httpx.Response:
        made = await ctx.env.http.post("/api/v1/features/proposals", json={
            "feature": f"matrix_{uuid.uuid4().hex[:8]}", "description": "m", "comment": "matrix"},
            headers=ctx.env.auth(user_of("validator", "other")))
        assert made.status_code == 201, made.text
        return await ctx.env.http.request(method, f"/api/v1/features/proposals/{made.json()['id']}{suffix}",
                                          json=body, headers=ctx.env.auth(who) if who else {})
    return send


def _proposal_body(ctx: Ctx) -> dict[str, Any]:
    return {"feature": f"matrix_{uuid.uuid4().hex[:8]}", "description": "m", "comment": "matrix"}


NOT_OWNER = (403, "not_feature_owner")
FEATURE_DECIDERS = by_role({"developer": NOT_OWNER, "validator": (NOT_OWNER, (403, "own_proposal")),
                            "risk_officer": NOT_OWNER, "auditor": FORBIDDEN, "admin": OK})
NOT_REVIEWER = (403, "not_a_reviewer")
NOT_EXCEPTION_ROLE = (403, "not_an_exception_role")
OWN_TEAM = (403, "own_team")

ROUTES: dict[str, Route] = {
    # Findings and exceptions (issue 18): raised, verified and granted by reviewers independent of the owning
    # team, remediated by the owning team; admins and auditors do none of it; developers see their team's only.
    "POST /api/v1/findings": Route(with_body("POST", "/api/v1/findings", _finding_body), by_role({
        "developer": (NOT_REVIEWER, HIDDEN), "validator": (OWN_TEAM, CREATED), "risk_officer": (OWN_TEAM, CREATED),
        "auditor": NOT_REVIEWER, "admin": NOT_REVIEWER})),
    "GET /api/v1/findings": Route(api("GET", "/api/v1/findings"), everyone(200)),
    "GET /api/v1/findings/export": Route(api("GET", "/api/v1/findings/export"), everyone(200)),
    "GET /api/v1/findings/metrics": Route(api("GET", "/api/v1/findings/metrics"), everyone(200)),
    "GET /api/v1/findings/{finding_id}": Route(on_finding("GET"), READ_OBJECT),
    "POST /api/v1/findings/{finding_id}/remediation": Route(
        on_finding("POST", "/remediation", {"note": "matrix"}), by_role({
            "developer": (OK, HIDDEN), "validator": (403, "not_owning_team"), "risk_officer": (403, "not_owning_team"),
            "auditor": (403, "not_owning_team"), "admin": (403, "not_owning_team")})),
    "POST /api/v1/findings/{finding_id}/verification": Route(
        on_finding("POST", "/verification", {"outcome": "close", "comment": "matrix"}, remediated=True), by_role({
            "developer": ((403, "own_remediation"), HIDDEN), "validator": (OWN_TEAM, OK),
            "risk_officer": (OWN_TEAM, OK), "auditor": NOT_REVIEWER, "admin": NOT_REVIEWER})),
    # credit: exceptions are granted by risk officers; the requester cannot approve their own (maker-checker)
    "POST /api/v1/exceptions": Route(with_body("POST", "/api/v1/exceptions", _exception_body), by_role({
        "developer": (NOT_EXCEPTION_ROLE, HIDDEN), "validator": NOT_EXCEPTION_ROLE,
        "risk_officer": (OWN_TEAM, CREATED), "auditor": NOT_EXCEPTION_ROLE, "admin": NOT_EXCEPTION_ROLE})),
    "GET /api/v1/exceptions": Route(api("GET", "/api/v1/exceptions"), everyone(200)),
    "GET /api/v1/exceptions/{exception_id}": Route(on_exception("GET"), READ_OBJECT),
    "POST /api/v1/exceptions/{exception_id}/approval": Route(on_exception("POST", "/approval", {}), by_role({
        "developer": (NOT_EXCEPTION_ROLE, HIDDEN), "validator": NOT_EXCEPTION_ROLE,
        "risk_officer": (OWN_TEAM, (403, "own_exception")), "auditor": NOT_EXCEPTION_ROLE,
        "admin": NOT_EXCEPTION_ROLE})),
    "POST /api/v1/progressions": Route(api("POST", "/api/v1/progressions", files=new_spec_files), by_role({
        "developer": (CREATED, (403, "not_your_team")), "validator": FORBIDDEN, "risk_officer": FORBIDDEN,
        "auditor": FORBIDDEN, "admin": CREATED})),
    "GET /api/v1/progressions": Route(api("GET", "/api/v1/progressions?limit=500"), everyone(200),
                                      check_listed("id")),
    "GET /api/v1/progressions/{progression_id}": Route(api("GET", "/api/v1/progressions/{pid}"), READ_OBJECT),
    # Same readers as the progression itself (the report names evidence digests and approvers).
    "GET /api/v1/progressions/{progression_id}/verify": Route(api("GET", "/api/v1/progressions/{pid}/verify"),
                                                              READ_OBJECT),
    "POST /api/v1/progressions/{progression_id}/decisions": Route(
        api("POST", "/api/v1/progressions/{pid}/decisions", body=APPROVE, fresh=True), by_role({
            "developer": (NOT_GATE, HIDDEN), "validator": ((403, "own_team"), OK), "risk_officer": NOT_GATE,
            "auditor": NOT_GATE, "admin": NOT_GATE})),
    "POST /api/v1/progressions/{progression_id}/evidence": Route(
        api("POST", "/api/v1/progressions/{pid}/evidence", fresh=True,
            # New fairness figures that meet the policy's contract (a file breaking it is refused: 422).
            files=lambda: [("evidence.fairness", ("fairness.json", FAIRNESS_UPDATE, "application/json"))]),
        # Independent validators attach validation reports (DESIGN: users); the API and the workflow's update
        # validator share that rule (engine.lifecycle.evidence_refusal).
        by_role({"developer": (OK, HIDDEN), "validator": OK, "risk_officer": FORBIDDEN,
                 "auditor": FORBIDDEN, "admin": OK})),
    "POST /api/v1/progressions/{progression_id}/withdraw": Route(
        api("POST", "/api/v1/progressions/{pid}/withdraw", body={"reason": "matrix"}, fresh=True),
        by_role({"developer": (OK, HIDDEN), "validator": FORBIDDEN, "risk_officer": FORBIDDEN, "auditor": FORBIDDEN,
                 "admin": OK})),
    "GET /api/v1/inbox": Route(api("GET", "/api/v1/inbox"), everyone(200), check_inbox),
    "GET /api/v1/models": Route(api("GET", "/api/v1/models?limit=500"), everyone(200), check_listed("id")),
    "GET /api/v1/models/{model_id}": Route(api("GET", "/api/v1/models/{model}"), READ_OBJECT),
    "GET /api/v1/policies": Route(api("GET", "/api/v1/policies"), everyone(200)),
    "GET /api/v1/policies/{intent}": Route(api("GET", "/api/v1/policies/credit-underwriting"), everyone(200)),
    "POST /api/v1/policies/{intent}/dry-run": Route(
        api("POST", "/api/v1/policies/credit-underwriting/dry-run", body=dry_run_body), everyone(200)),
    "GET /api/v1/policies/{intent}/evidence": Route(
        api("GET", "/api/v1/policies/credit-underwriting/evidence"), everyone(200)),
    "POST /api/v1/dry-run": Route(api("POST", "/api/v1/dry-run", body=dry_run_body), everyone(200)),
    "GET /api/v1/todo": Route(api("GET", "/api/v1/todo"), everyone(200)),
    "GET /api/v1/schemas/progression.json": Route(api("GET", "/api/v1/schemas/progression.json"), everyone(200)),
    "GET /api/v1/features": Route(api("GET", "/api/v1/features"), everyone(200)),
    # The catalog (issue 22): everyone reads and (but auditors) proposes; the data owner or an admin decides.
    "GET /api/v1/features/{name}": Route(api("GET", "/api/v1/features/zip_code"), everyone(200)),
    "GET /api/v1/features/versions/current": Route(api("GET", "/api/v1/features/versions/current"), everyone(200)),
    "GET /api/v1/features/versions/{version}": Route(api("GET", "/api/v1/features/versions/1"), everyone(200)),
    "GET /api/v1/features/proposals": Route(api("GET", "/api/v1/features/proposals"), everyone(200)),
    "GET /api/v1/features/proposals/{proposal_id}": Route(on_proposal("GET"), everyone(200)),
    "POST /api/v1/features/proposals": Route(with_body("POST", "/api/v1/features/proposals", _proposal_body),
                                             by_role({"developer": CREATED, "validator": CREATED,
                                                      "risk_officer": CREATED, "auditor": FORBIDDEN,
                                                      "admin": CREATED})),
    "POST /api/v1/features/proposals/{proposal_id}/approval": Route(
        on_proposal("POST", "/approval", {"comment": "m"}), FEATURE_DECIDERS),
    "POST /api/v1/features/proposals/{proposal_id}/rejection": Route(
        on_proposal("POST", "/rejection", {"comment": "m"}), FEATURE_DECIDERS),
    "PUT /api/v1/features/{name}": Route(
        api("PUT", "/api/v1/features/matrix_feature", body={"description": "m", "tags": []}), ADMIN_ONLY),
    "GET /api/v1/audit/events": Route(api("GET", "/api/v1/audit/events?progression={pid}"), everyone(200),
                                      check_audit),
    "GET /api/v1/audit/export": Route(api("GET", "/api/v1/audit/export?progression={pid}"), AUDITORS),
    "GET /api/v1/audit/verify": Route(api("GET", "/api/v1/audit/verify"), AUDITORS),
    "GET /api/v1/me": Route(api("GET", "/api/v1/me"), everyone(200), check_me),
    "GET /api/v1/users": Route(api("GET", "/api/v1/users"), ADMIN_ONLY),
    "POST /api/v1/users": Route(api("POST", "/api/v1/users", body=new_user_body), by_role({
        "developer": FORBIDDEN, "validator": FORBIDDEN, "risk_officer": FORBIDDEN, "auditor": FORBIDDEN,
        "admin": CREATED})),
    "GET /api/v1/users/{user_id}/tokens": Route(api("GET", "/api/v1/users/{victim}/tokens"), ADMIN_ONLY),
    "POST /api/v1/users/{user_id}/tokens": Route(api("POST", "/api/v1/users/{victim}/tokens", body={"name": "m"}),
                                                 by_role({"developer": FORBIDDEN, "validator": FORBIDDEN,
                                                          "risk_officer": FORBIDDEN, "auditor": FORBIDDEN,
                                                          "admin": CREATED})),
    "DELETE /api/v1/users/{user_id}/tokens/{token_id}": Route(
        api("DELETE", "/api/v1/users/{victim}/tokens/{token}"), ADMIN_ONLY),
    # Credentials and role grants (issue 13): only admins create enrollments and propose or approve grants;
    # the person redeems their code with no other credential (an unknown code is 404 for anyone).
    "POST /api/v1/users/{user_id}/enrollments": Route(api("POST", "/api/v1/users/{victim}/enrollments"), by_role({
        "developer": FORBIDDEN, "validator": FORBIDDEN, "risk_officer": FORBIDDEN, "auditor": FORBIDDEN,
        "admin": CREATED})),
    "POST /api/v1/enroll": Route(api("POST", "/api/v1/enroll", body={"code": "enr_not-a-code", "username": "sam"}),
                                 lambda role, scope: (404, "enrollment_invalid")),
    # Only admins change a person's registered address (the old address is told) and confirm a re-issued
    # credential (a second admin: tests/api/test_enrollment_by_mail.py has the maker-checker cells).
    "PUT /api/v1/users/{user_id}/email": Route(api("PUT", "/api/v1/users/{victim}/email", body=lambda: {
        "email": f"sam-{uuid.uuid4().hex[:6]}@bank.example", "reason": "matrix"}), ADMIN_ONLY),
    "POST /api/v1/users/{user_id}/tokens/{token_id}/confirm": Route(confirm_token(), ADMIN_ONLY),
    "GET /api/v1/role-grants": Route(api("GET", "/api/v1/role-grants"), ADMIN_ONLY),
    "POST /api/v1/users/{user_id}/role-grants": Route(propose_grant(), by_role({
        "developer": FORBIDDEN, "validator": FORBIDDEN, "risk_officer": FORBIDDEN, "auditor": FORBIDDEN,
        "admin": CREATED})),
    "POST /api/v1/role-grants/{grant_id}/approve": Route(approve_grant(), ADMIN_ONLY),
    # A model's intent is changed by two model risk officers independent of the owning team, nobody else: one
    # proposes (202, nothing changes yet), a second approves (tests/api/test_intent_change.py: the maker-checker).
    "POST /api/v1/models/{model_id}/intent": Route(change_intent(), intent_officers(ACCEPTED)),
    "GET /api/v1/models/{model_id}/intent-changes": Route(api("GET", "/api/v1/models/{model}/intent-changes"),
                                                          READ_OBJECT),
    "POST /api/v1/models/{model_id}/intent-changes/{change_id}/approve": Route(on_intent_change("approve"),
                                                                              intent_officers(OK)),
    "POST /api/v1/models/{model_id}/intent-changes/{change_id}/reject": Route(on_intent_change("reject"),
                                                                             intent_officers(OK)),
    # Life after production (issue 20). The matrix's model is at its validation gate, not in production.
    "GET /api/v1/models/{model_id}/monitoring": Route(api("GET", "/api/v1/models/{model}/monitoring"), READ_OBJECT),
    "POST /api/v1/models/{model_id}/monitoring": Route(
        api("POST", "/api/v1/models/{model}/monitoring", body=monitoring_body), by_role({
            "developer": NOT_POSTER, "validator": NOT_POSTER, "risk_officer": NOT_POSTER, "auditor": NOT_POSTER,
            "admin": NOT_POSTER})),
    "POST /api/v1/models/{model_id}/retire": Route(
        api("POST", "/api/v1/models/{model}/retire", body={"reason": "matrix"}), by_role({
            "developer": ((409, "not_in_production"), HIDDEN), "validator": FORBIDDEN, "risk_officer": FORBIDDEN,
            "auditor": FORBIDDEN, "admin": FORBIDDEN})),
    "POST /api/v1/models/{model_id}/retirement-override": Route(
        api("POST", "/api/v1/models/{model}/retirement-override", body={"reason": "matrix"}), by_role({
            "developer": FORBIDDEN, "validator": FORBIDDEN,
            "risk_officer": ((403, "own_team"), (409, "no_dependents")), "auditor": FORBIDDEN,
            "admin": FORBIDDEN})),
    "GET /healthz": Route(api("GET", "/healthz"), public()),
    "GET /readyz": Route(api("GET", "/readyz"), public()),
    "GET /metrics": Route(api("GET", "/metrics"), public()),
    "GET /openapi.json": Route(api("GET", "/openapi.json"), public()),
    "GET /docs": Route(api("GET", "/docs"), public()),
    "GET /docs/oauth2-redirect": Route(api("GET", "/docs/oauth2-redirect"), public()),
    "GET /redoc": Route(api("GET", "/redoc"), public()),
}


# ---- web UI: the same table, through a signed-in browser session -------------------------------


def ui(method: str, path: str) -> Send:
    async def send(ctx: Ctx, who: str | None, succeeds: bool) -> httpx.Response:
        client = ctx.browsers[who or "anonymous"]
        url = path.format(pid=ctx.pid, model=ctx.model_id)
        if method == "GET":
            return await client.get(url)
        if method == "POST":
            return await client.post(url, data={"comment": "x"})  # no CSRF token: refused before anything happens
        return await client.request(method, url)
    return send


LOGIN = (303, None)  # anonymous: redirected to the sign-in page


def page(table: dict[str, Expect | tuple[Expect, Expect]] | None = None, anonymous: Expect = LOGIN,
         everyone_else: Expect = OK) -> Callable[[str, str], Expect]:
    def expect(role: str, scope: str) -> Expect:
        if role == "anonymous":
            return anonymous
        value = (table or {}).get(role, everyone_else)
        if isinstance(value[0], tuple):
            return value[0] if scope == "own" else value[1]  # type: ignore[return-value]
        return value  # type: ignore[return-value]
    return expect


UI_OBJECT = page({"developer": (OK, HIDDEN)})
UI_POST = page(anonymous=LOGIN, everyone_else=(403, "csrf_failed"))
UI_ROUTES: dict[str, Route] = {
    "GET /": Route(ui("GET", "/"), page(anonymous=(307, None), everyone_else=(307, None))),
    "GET /ui/": Route(ui("GET", "/ui/"), page(everyone_else=(303, None))),
    "GET /ui/login": Route(ui("GET", "/ui/login"), page(anonymous=OK, everyone_else=(303, None))),
    "POST /ui/login": Route(ui("POST", "/ui/login"), page(anonymous=(403, "csrf_failed"),
                                                          everyone_else=(403, "csrf_failed"))),
    "POST /ui/logout": Route(ui("POST", "/ui/logout"), page(anonymous=(403, "csrf_failed"),
                                                            everyone_else=(403, "csrf_failed"))),
    "GET /ui/inbox": Route(ui("GET", "/ui/inbox"), page()),
    "GET /ui/progressions": Route(ui("GET", "/ui/progressions"), page()),
    "GET /ui/progressions/{progression_id}": Route(ui("GET", "/ui/progressions/{pid}"), UI_OBJECT),
    "POST /ui/progressions/{progression_id}/decisions": Route(ui("POST", "/ui/progressions/{pid}/decisions"),
                                                              UI_POST),
    "GET /ui/progressions/{progression_id}/evidence/{name}": Route(
        ui("GET", "/ui/progressions/{pid}/evidence/metrics"), UI_OBJECT),
    "POST /ui/progressions/{progression_id}/evidence": Route(ui("POST", "/ui/progressions/{pid}/evidence"), UI_POST),
    "POST /ui/progressions/{progression_id}/withdraw": Route(ui("POST", "/ui/progressions/{pid}/withdraw"), UI_POST),
    "GET /ui/start": Route(ui("GET", "/ui/start"), page({"validator": FORBIDDEN, "risk_officer": FORBIDDEN,
                                                         "auditor": FORBIDDEN})),
    "POST /ui/start": Route(ui("POST", "/ui/start"), UI_POST),
    "GET /ui/models": Route(ui("GET", "/ui/models"), page()),
    "GET /ui/features": Route(ui("GET", "/ui/features"), page()),
    "GET /ui/features/{name}": Route(ui("GET", "/ui/features/zip_code"), page()),
    "POST /ui/features/proposals": Route(ui("POST", "/ui/features/proposals"), UI_POST),
    "POST /ui/features/proposals/{proposal_id}/{act}": Route(ui("POST", "/ui/features/proposals/fp-none/approval"),
                                                             UI_POST),
    "GET /ui/models/{model_id}": Route(ui("GET", "/ui/models/{model}"), UI_OBJECT),
    "GET /ui/policies": Route(ui("GET", "/ui/policies"), page()),
    "GET /ui/todo": Route(ui("GET", "/ui/todo"), page()),
    "GET /ui/policies/dry-run": Route(ui("GET", "/ui/policies/dry-run"), page()),
    "GET /ui/policies/{intent}": Route(ui("GET", "/ui/policies/credit-underwriting"), page()),
    "POST /ui/policies/dry-run": Route(ui("POST", "/ui/policies/dry-run"), UI_POST),
    "GET /ui/audit": Route(ui("GET", "/ui/audit?progression={pid}"), page()),
    "GET /ui/audit/export": Route(ui("GET", "/ui/audit/export?progression={pid}"),
                                  page({"developer": FORBIDDEN, "validator": FORBIDDEN})),
    "POST /ui/audit/verify": Route(ui("POST", "/ui/audit/verify"), UI_POST),
    "GET /ui/static": Route(ui("GET", "/ui/static/app.css"), page(anonymous=OK)),
    "GET /ui/findings": Route(ui("GET", "/ui/findings"), page()),
    "GET /ui/findings/export": Route(ui("GET", "/ui/findings/export"), page()),
    "GET /ui/findings/escalated": Route(ui("GET", "/ui/findings/escalated"), page()),
    "GET /ui/findings/{finding_id}": Route(ui("GET", "/ui/findings/F-none"), page(everyone_else=HIDDEN)),
    "POST /ui/findings/{finding_id}/remediation": Route(ui("POST", "/ui/findings/F-none/remediation"), UI_POST),
    "POST /ui/findings/{finding_id}/verification": Route(ui("POST", "/ui/findings/F-none/verification"), UI_POST),
    "GET /ui/models/{model_id}/findings": Route(ui("GET", "/ui/models/{model}/findings"), UI_OBJECT),
    "GET /ui/models/{model_id}/monitoring": Route(ui("GET", "/ui/models/{model}/monitoring"), UI_OBJECT),
    "POST /ui/models/{model_id}/retire": Route(ui("POST", "/ui/models/{model}/retire"), UI_POST),
    "POST /ui/models/{model_id}/retirement-override": Route(ui("POST", "/ui/models/{model}/retirement-override"),
                                                            UI_POST),
    "POST /ui/progressions/{progression_id}/conditional-approval": Route(
        ui("POST", "/ui/progressions/{pid}/conditional-approval"), UI_POST),
    "GET /ui/progressions/{progression_id}/charts/{key}.svg": Route(
        ui("GET", "/ui/progressions/{pid}/charts/fairness.svg"), UI_OBJECT),
    # Any other /ui/ address: an HTML 404 page for everyone, signed in or not (it names nothing that exists).
    **{f"{method} /ui/{{path:path}}": Route(ui(method, "/ui/no-such-page"), page(anonymous=HIDDEN,
                                                                                 everyone_else=HIDDEN))
       for method in ("GET", "POST", "PUT", "PATCH", "DELETE")},
}


def served_routes(app: Any) -> set[str]:
    """Every METHOD path the app serves (HEAD folded into GET; a static mount counts as one GET)."""
    out: set[str] = set()
    for ctx in iter_route_contexts(app.routes):
        route = ctx.original_route
        if isinstance(route, Mount):
            out.add(f"GET {route.path}")
            continue
        for method in sorted((ctx.methods or set()) - {"HEAD"}):
            out.add(f"{method} {ctx.path}")
    return out


@pytest.fixture
async def ctx(sqlite_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> AsyncIterator[Ctx]:
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue) as env:
        async with env.sessionmaker() as session:
            for role, role_value in ROLES.items():
                for scope, team in TEAMS.items():
                    user, token = await create_user(session, username=user_of(role, scope), roles=[role_value],
                                                    team=team, email=f"{user_of(role, scope)}@bank.example")
                    env.tokens[user.username], env.user_ids[user.username] = token, user.id
            await session.commit()
        pid, _ = await started_at_gate(env)
        browsers: dict[str, httpx.AsyncClient] = {}
        try:
            for who in [user_of(r, s) for r in ROLES for s in TEAMS] + ["anonymous"]:
                client = httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url="http://api.test",
                                           follow_redirects=False, timeout=60)
                browsers[who] = client
                if who != "anonymous":
                    login = await client.get("/ui/login")
                    token = CSRF_RE.search(login.text)
                    assert token, login.text[:300]
                    signed = await client.post("/ui/login", data={"token": env.tokens[who], "next": "/ui/models",
                                                                  "csrf_token": token.group(1)})
                    assert signed.status_code == 303, signed.text[:300]
            yield Ctx(env=env, pid=pid, model_id=pid.split("@")[0], victim_id=env.user_ids["sam"], browsers=browsers)
        finally:
            for client in browsers.values():
                await client.aclose()


def _code(resp: httpx.Response) -> str | None:
    if resp.headers.get("content-type", "").startswith("application/json"):
        body = resp.json()
        return body.get("code") if isinstance(body, dict) else None
    match = re.search(r'code: ([a-z_]+)</span>', resp.text)  # the error page shows the same stable code
    return match.group(1) if match else None


@pytest.mark.slow  # the whole matrix: every role x route x team
async def test_every_role_route_and_team_cell(ctx: Ctx) -> None:
    table = {**ROUTES, **UI_ROUTES}
    served = served_routes(ctx.env.app)
    assert not served - set(table), f"routes missing from the matrix: {sorted(served - set(table))}"
    assert not set(table) - served, f"matrix rows for routes the app does not serve: {sorted(set(table) - served)}"

    cells = 0
    problems: list[str] = []
    principals = [(role, scope) for role in ROLES for scope in TEAMS] + [("anonymous", "own")]
    for key, route in table.items():
        for role, scope in principals:
            status, code = route.expect(role, scope)
            who = None if role == "anonymous" else user_of(role, scope)
            resp = await route.send(ctx, who, 200 <= status < 300)
            got = _code(resp) if code else None
            if resp.status_code != status or (code and got != code):
                problems.append(f"{key} as {role}/{scope}: expected {status} {code or ''}, got {resp.status_code} "
                                f"{got or ''} {resp.text[:200]!r}")
            elif route.check is not None and 200 <= status < 300:
                try:
                    route.check(ctx, role, scope, resp)
                except AssertionError as exc:
                    problems.append(f"{key} as {role}/{scope}: {exc}")
            cells += 1
    assert not problems, "\n".join(problems)
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps({"routes": len(table), "principals": len(principals), "cells": cells},
                                   indent=2) + "\n")
    print(f"\nauthorization matrix: {cells} cells ({len(table)} routes x {len(principals)} principals) asserted")
    # The target progression was never decided by anyone in the matrix (refusals only).
    async with ctx.env.sessionmaker() as session:
        decisions = (await session.scalars(select(DecisionRow).where(DecisionRow.progression_id == ctx.pid))).all()
    assert decisions == []


async def test_mass_assignment_has_no_effect(ctx: Ctx) -> None:
    env, pid = ctx.env, ctx.pid
    validator = user_of("validator", "other")
    forged = {"actor": "adam", "actor_id": env.user_ids["adam"], "role": "admin", "roles": ["admin"],
              "team": "payments", "submitted_by": env.user_ids["adam"], "user_id": env.user_ids["adam"]}
    before = await env.count(AuditEvent)
    for name, value in forged.items():
        for path, body in [(f"/api/v1/progressions/{pid}/decisions", {**APPROVE, name: value}),
                           (f"/api/v1/progressions/{pid}/withdraw", {"reason": "r", name: value}),
                           ("/api/v1/features/mass_feature", {"description": "d", name: value}),
                           ("/api/v1/policies/credit-underwriting/dry-run", {**dry_run_body(), name: value})]:
            method = "PUT" if "features" in path else "POST"
            who = "adam" if "features" in path else ("dana" if "withdraw" in path else validator)
            resp = await env.http.request(method, path, json=body, headers=env.auth(who))
            assert resp.status_code == 422, (path, name, resp.text)
            assert resp.json()["code"] == "validation_error" and name in resp.json()["message"], resp.text
        resp = await env.http.post("/api/v1/users", json={**new_user_body(), "id": "forced", name: value},
                                   headers=env.auth("adam"))
        assert resp.status_code == 422, resp.text
        # As form parts of a start: refused by name, nothing started.
        files = upload(CREDIT)[1] + [(name, (None, str(value).encode(), "text/plain"))]
        resp = await env.http.post("/api/v1/progressions", files=files, headers=env.auth("dana"))
        assert resp.status_code == 422 and resp.json()["code"] == "unknown_part", resp.text
    assert await env.count(AuditEvent) == before  # nothing of the above was recorded or acted on

    # A spec naming another submitter or a foreign field is refused; the team comes from the spec and is checked.
    text = spec_text(version={"id": unique_version()}) + "submitted_by: adam\n"
    resp = await env.http.post("/api/v1/progressions", files=upload(CREDIT, text=text)[1], headers=env.auth("dana"))
    assert resp.status_code == 422 and resp.json()["code"] == "invalid_spec", resp.text

    # Identity headers a proxy might set change nothing: the bearer token decides who acts.
    me = (await env.http.get("/api/v1/me", headers={**env.auth("dana"), "X-User": "adam", "X-Forwarded-User": "adam",
                                                     "X-Roles": "admin", "X-Team": "payments"})).json()
    assert me["username"] == "dana" and me["roles"] == ["model_developer"] and me["team"] == "retail-risk"
    # Query parameters naming an actor on an action are refused by name (strict queries), nothing is recorded;
    # without them the decision is recorded as the caller's.
    forged_query = await env.http.post(
        f"/api/v1/progressions/{pid}/decisions?actor=adam&user_id={env.user_ids['adam']}", json=APPROVE,
        headers=env.auth(validator))
    assert forged_query.status_code == 422 and forged_query.json()["code"] == "unknown_query_parameter"
    assert forged_query.json()["details"]["unknown"] == ["actor", "user_id"]
    assert await env.count(AuditEvent) == before
    ok = await env.http.post(f"/api/v1/progressions/{pid}/decisions", json=APPROVE, headers=env.auth(validator))
    assert ok.status_code == 200, ok.text
    async with env.sessionmaker() as session:
        rows = (await session.scalars(select(DecisionRow).where(DecisionRow.progression_id == pid))).all()
    assert [r.actor_id for r in rows] == [env.user_ids[validator]]
    state = (await env.http.get(f"/api/v1/progressions/{pid}", headers=env.auth("ann"))).json()
    assert state["submitted_by"] == env.user_ids["dana"]


async def test_token_issuance_and_role_grants_by_target_role(ctx: Ctx) -> None:
    """Who an admin may hand a token to, and who may grant what: one cell per principal as the target.

    An admin issues tokens only to people holding no deciding or admin role (the others enroll themselves);
    a deciding role is never granted to an admin, and a grant is approved by an admin other than its proposer.
    """
    env = ctx.env
    cells = 0
    for role in ROLES:
        for scope in TEAMS:
            target = env.user_ids[user_of(role, scope)]
            for admin in (user_of("admin", "own"), user_of("admin", "other")):
                if admin == user_of(role, scope):
                    continue
                resp = await env.http.post(f"/api/v1/users/{target}/tokens", json={"name": "m"},
                                           headers=env.auth(admin))
                expected = (403, "self_enrollment_required") if role in ("validator", "risk_officer", "admin") \
                    else (201, None)
                assert (resp.status_code, resp.json().get("code")) == expected, (role, scope, admin, resp.text)
                enrollment = await env.http.post(f"/api/v1/users/{target}/enrollments", headers=env.auth(admin))
                assert enrollment.status_code == 201, enrollment.text
                cells += 2
    # Deciding roles for admins: refused whoever proposes; for others, maker-checker.
    resp = await env.http.post(f"/api/v1/users/{env.user_ids[user_of('admin', 'own')]}/role-grants",
                               json={"role": "model_risk_officer"}, headers=env.auth(user_of("admin", "other")))
    assert resp.status_code == 409 and resp.json()["code"] == "admin_cannot_decide"
    target = env.user_ids[user_of("auditor", "other")]
    proposed = await env.http.post(f"/api/v1/users/{target}/role-grants", json={"role": "model_risk_officer"},
                                   headers=env.auth(user_of("admin", "own")))
    assert proposed.status_code == 201 and proposed.json()["status"] == "pending"
    for who, expected in [(user_of("admin", "own"), (403, "same_admin")),
                          (user_of("risk_officer", "other"), (403, "forbidden")),
                          (user_of("admin", "other"), (200, None))]:
        resp = await env.http.post(f"/api/v1/role-grants/{proposed.json()['id']}/approve", headers=env.auth(who))
        assert (resp.status_code, resp.json().get("code")) == expected, (who, resp.text)
        cells += 1
    print(f"\ntoken issuance and role grants: {cells} cells asserted")


async def test_cross_stage_independence(ctx: Ctx) -> None:
    """A person holding both gate roles decides one stage of the credit policy's independent pair, not both."""
    env = ctx.env
    async with env.sessionmaker() as session:
        user, token = await create_user(session, username="two-hats", roles=["model_validator", "model_risk_officer"],
                                        team="model-risk")
        await session.commit()
    env.tokens["two-hats"], env.user_ids["two-hats"] = token, user.id
    pid = await ctx.fresh()
    assert (await env.http.post(f"/api/v1/progressions/{pid}/decisions", json=APPROVE,
                                 headers=env.auth("two-hats"))).status_code == 200
    await wait_for(env, pid, at_gate("risk_review"))
    review = {"stage": "risk_review", "decision": "approve", "comment": "matrix"}
    resp = await env.http.post(f"/api/v1/progressions/{pid}/decisions", json=review, headers=env.auth("two-hats"))
    assert resp.status_code == 403 and resp.json()["code"] == "not_independent", resp.text
    ok = await env.http.post(f"/api/v1/progressions/{pid}/decisions", json=review,
                             headers=env.auth(user_of("risk_officer", "other")))
    assert ok.status_code == 200, ok.text
    own = await env.http.post(f"/api/v1/progressions/{pid}/decisions", json=review,
                              headers=env.auth(user_of("risk_officer", "own")))
    assert own.status_code == 403 and own.json()["code"] == "own_team"
