"""The HTTP surface without running progressions: auth on every route, error shapes, limits,
OpenAPI, users and tokens, idempotency, features, policies and dry runs, operations, uvicorn."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter

from api.app import create_app
from api.idempotency import fingerprint
from engine.database import upgrade
from engine.db import (
    AuditEvent,
    CatalogModel,
    EvidenceBlob,
    IdempotencyRecord,
    PolicyVersion,
    User,
    make_engine,
    make_sessionmaker,
    utcnow,
)
from testing.api import CREDIT, ApiEnv, api_env, make_settings, registry, serve_http, spec_text, upload

PUBLIC = {"/healthz", "/readyz", "/metrics"}


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> AsyncIterator[ApiEnv]:
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue, worker=False,
                       max_request_bytes=64 * 1024) as e:
        yield e


def _concrete(path: str) -> str:
    values = {"progression_id": "p@1", "model_id": "m", "intent": "credit-underwriting", "name": "f",
              "user_id": "u", "token_id": "t"}
    for key, value in values.items():
        path = path.replace("{" + key + "}", value)
    return path


async def test_every_route_needs_a_token(env: ApiEnv) -> None:
    paths = env.app.openapi()["paths"]
    checked = 0
    for path, ops in paths.items():
        for method in ops:
            url = _concrete(path)
            resp = await env.http.request(method.upper(), url)
            if path in PUBLIC:
                assert resp.status_code in (200, 503), (method, path, resp.status_code)
                continue
            if path == "/api/v1/enroll":  # the person holds no credential yet: the one-time code is the proof
                assert resp.status_code == 422, resp.text
                continue
            assert resp.status_code == 401, (method, path, resp.status_code, resp.text)
            assert resp.json()["code"] == "unauthenticated"
            assert resp.headers["www-authenticate"] == "Bearer"
            bad = await env.http.request(method.upper(), url, headers={"Authorization": "Bearer prg_nope"})
            assert bad.status_code == 401, (method, path)
            checked += 1
    assert checked >= 20  # every endpoint of the design table plus users/tokens


async def test_errors_are_json_with_stable_codes(env: ApiEnv) -> None:
    r = await env.http.get("/api/v1/nowhere", headers=env.auth("ann"))
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = await env.http.delete("/api/v1/inbox", headers=env.auth("ann"))
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"
    r = await env.http.post("/api/v1/users", json={"username": "x"}, headers=env.auth("adam"))
    body = r.json()
    assert r.status_code == 422 and body["code"] == "validation_error"
    assert any(d["field"] == "body.roles" for d in body["details"])
    r = await env.http.get("/api/v1/progressions?limit=0", headers=env.auth("ann"))
    assert r.status_code == 422 and r.json()["details"][0]["field"] == "query.limit"

    @env.app.get("/boom-test")
    async def boom() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    # ServerErrorMiddleware re-raises after answering (for servers' logs): read the answer a server sends.
    transport = httpx.ASGITransport(app=env.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        r = await http.get("/boom-test")
    assert r.status_code == 500 and r.json()["code"] == "internal_error"
    assert "secret" not in r.text and "Traceback" not in r.text


async def test_body_size_limit_answers_413(env: ApiEnv) -> None:
    _, files = upload(CREDIT, extra={"huge": ("huge.bin", b"x" * 100_000)})
    before = await env.count(EvidenceBlob)
    r = await env.http.post("/api/v1/progressions", files=files, headers=env.auth("dana"))
    assert r.status_code == 413 and r.json()["code"] == "request_too_large"
    assert await env.count(EvidenceBlob) == before


async def test_openapi_documents_models_and_errors(env: ApiEnv) -> None:
    spec = env.app.openapi()
    assert "ErrorBody" in spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            codes = set(op["responses"])
            assert any(c.startswith("2") for c in codes), (method, path)
            if path not in PUBLIC:
                assert {"401", "403", "422", "500"} <= codes, (method, path, codes)
    start = spec["paths"]["/api/v1/progressions"]["post"]
    assert "multipart/form-data" in start["requestBody"]["content"] and "409" in start["responses"]
    assert "201" in start["responses"]


async def test_users_tokens_and_idempotent_create(env: ApiEnv) -> None:
    # An auditor: an admin may issue their tokens (a deciding role is enrolled: tests/api/test_four_eyes.py).
    body = {"username": "nina", "roles": ["auditor"], "team": "audit", "display_name": "Nina"}
    r = await env.http.post("/api/v1/users", json=body, headers=env.auth("dana"))
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    key = {"Idempotency-Key": f"k-{uuid.uuid4()}"}
    first = await env.http.post("/api/v1/users", json=body, headers={**env.auth("adam"), **key})
    assert first.status_code == 201, first.text
    token = first.json()["token"]["token"]
    again = await env.http.post("/api/v1/users", json=body, headers={**env.auth("adam"), **key})
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers.get("idempotent-replayed") == "true"
    assert await env.count(User, User.username == "nina") == 1
    other = await env.http.post("/api/v1/users", json={**body, "username": "nino"},
                                headers={**env.auth("adam"), **key})
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"
    assert await env.count(User, User.username == "nino") == 0

    me = await env.http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["username"] == "nina" and "export_audit" in me.json()["actions"]
    uid = first.json()["user"]["id"]
    tok = await env.http.post(f"/api/v1/users/{uid}/tokens", json={"name": "ci"}, headers=env.auth("adam"))
    assert tok.status_code == 201
    listed = await env.http.get(f"/api/v1/users/{uid}/tokens", headers=env.auth("adam"))
    assert len(listed.json()) == 2 and all("token" not in t for t in listed.json())
    gone = await env.http.delete(f"/api/v1/users/{uid}/tokens/{first.json()['token']['id']}",
                                 headers=env.auth("adam"))
    assert gone.status_code == 200 and gone.json()["revoked_at"]
    assert (await env.http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})).status_code == 401
    second = tok.json()["token"]
    assert (await env.http.get("/api/v1/me", headers={"Authorization": f"Bearer {second}"})).status_code == 200
    # Unknown fields (e.g. trying to name someone else) are rejected, not ignored.
    r = await env.http.post("/api/v1/users", json={**body, "username": "z", "created_by": "root"},
                            headers=env.auth("adam"))
    assert r.status_code == 422


async def test_idempotency_in_flight_answers_409(env: ApiEnv) -> None:
    key = f"k-{uuid.uuid4()}"
    body = {"username": "olga", "roles": ["auditor"]}

    async with env.sessionmaker() as session:  # a first request still running (status NULL)
        session.add(IdempotencyRecord(user_id=env.user_ids["adam"], key=key, method="POST", path="/api/v1/users",
                                      request_hash=fingerprint("user", {**body, "team": None, "display_name": "",
                                                                        "email": None}),
                                      status_code=None, created_at=utcnow()))
        await session.commit()
    r = await env.http.post("/api/v1/users", json=body, headers={**env.auth("adam"), "Idempotency-Key": key})
    assert r.status_code == 409 and r.json()["code"] == "idempotency_in_flight"
    assert await env.count(User, User.username == "olga") == 0


async def test_features_admin_writes_and_audit(env: ApiEnv) -> None:
    r = await env.http.get("/api/v1/features", headers=env.auth("dana"))
    assert r.status_code == 200 and r.json()["total"] > 0
    names = {f["name"] for f in r.json()["items"]}
    assert "bureau_score" in names
    body = {"description": "Applicant age in years", "tags": ["protected_attribute", "pii"]}
    r = await env.http.put("/api/v1/features/applicant_age_test", json=body, headers=env.auth("dana"))
    assert r.status_code == 403
    r = await env.http.put("/api/v1/features/applicant_age_test", json=body, headers=env.auth("adam"))
    assert r.status_code == 200 and r.json()["tags"] == ["pii", "protected_attribute"]
    async with env.sessionmaker() as session:
        ev = (await session.execute(select(AuditEvent).where(AuditEvent.event_type == "feature.updated"))).scalars()
        assert [e.payload["name"] for e in ev] == ["applicant_age_test"]
    tagged = await env.http.get("/api/v1/features?tag=protected_attribute", headers=env.auth("ann"))
    assert "applicant_age_test" in {f["name"] for f in tagged.json()["items"]}


async def test_policies_versions_and_dry_run(env: ApiEnv) -> None:
    r = await env.http.get("/api/v1/policies", headers=env.auth("dana"))
    intents = {p["intent"] for p in r.json()}
    assert {"credit-underwriting", "fraud-detection", "marketing-propensity", "internal-analytics"} <= intents
    r = await env.http.get("/api/v1/policies/credit-underwriting", headers=env.auth("dana"))
    detail = r.json()
    assert [s["name"] for s in detail["route"]][:3] == ["registration", "validation", "risk_review"]
    assert detail["hash"].startswith("sha256:") and len(detail["versions"]) == 1 and detail["versions"][0]["active"]
    # Recording versions is idempotent: a second start of the app adds nothing.
    async with env.app.router.lifespan_context(env.app):
        pass
    assert await env.count(PolicyVersion) == len(registry().all())
    assert (await env.http.get("/api/v1/policies/credit-underwritting", headers=env.auth("dana"))).json()[
        "message"].endswith("(did you mean 'credit-underwriting'?)")

    before = (await env.count(AuditEvent), await env.count(CatalogModel), await env.count(EvidenceBlob))
    evidence = {name: (CREDIT / rel).read_text() for name, rel in
                {"metrics": "evidence/metrics.json", "fairness": "evidence/fairness.json",
                 "model_card": "docs/model_card.md", "monitoring_plan": "docs/monitoring_plan.md"}.items()}
    r = await env.http.post("/api/v1/policies/credit-underwriting/dry-run",
                            json={"spec": spec_text(CREDIT), "evidence": evidence}, headers=env.auth("dana"))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["checks_failing"] == 0 and out["fix_first"] is None and out["checks_passing"] > 5
    assert {"stage": "risk_review", "role": "model_risk_officer", "count": 2, "sla": "10d"} in out["approvals_needed"]
    # A protected attribute fails its check now, with a reason, and is what to fix first.
    r = await env.http.post("/api/v1/policies/credit-underwriting/dry-run",
                            json={"spec": spec_text(CREDIT, features=["bureau_score", "age"])},
                            headers=env.auth("dana"))
    out = r.json()
    assert out["checks_failing"] > 0 and out["fix_first"] is not None
    failing = {c["id"] for s in out["route"] for c in s["checks"] if not c["passed"]}
    assert "no-protected-attributes" in failing
    # Multipart works too (the CLI uploads a repository).
    _, files = upload(CREDIT)
    r = await env.http.post("/api/v1/policies/credit-underwriting/dry-run", files=files, headers=env.auth("vera"))
    assert r.status_code == 200 and r.json()["checks_failing"] == 0
    # A malformed spec names field and line; nothing is stored.
    bad = spec_text(CREDIT).replace("business_intent: credit-underwriting", "business_intent: credit-underwritting")
    r = await env.http.post("/api/v1/policies/credit-underwriting/dry-run", json={"spec": bad},
                            headers=env.auth("dana"))
    assert r.status_code == 422 and r.json()["code"] == "invalid_spec"
    assert r.json()["message"].startswith("progression.yaml:") and "model.business_intent" in r.json()["message"]
    assert (await env.count(AuditEvent), await env.count(CatalogModel), await env.count(EvidenceBlob)) == before


async def test_operations_endpoints(env: ApiEnv) -> None:
    assert (await env.http.get("/healthz")).json() == {"status": "ok"}
    r = await env.http.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    await env.http.get("/api/v1/inbox", headers=env.auth("rita"))
    m = await env.http.get("/metrics")
    assert m.status_code == 200 and m.headers["content-type"].startswith("text/plain")
    assert 'route="/api/v1/inbox"' in m.text and "progression_http_request_duration_seconds" in m.text
    assert "progression_gates_escalated" in m.text


async def test_readyz_503_when_temporal_unreachable(sqlite_url: str, tmp_path: Path) -> None:
    await upgrade(sqlite_url)
    engine = make_engine(sqlite_url)
    dead = await Client.connect("127.0.0.1:1", lazy=True, data_converter=pydantic_data_converter)
    app = create_app(make_settings(tmp_path, sqlite_url, "unused"), temporal_client=dead,
                     sessionmaker=make_sessionmaker(engine), registry=registry())
    try:
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
                r = await http.get("/readyz")
                assert r.status_code == 503 and r.json()["database"] == "ok"
                assert r.json()["temporal"] != "ok"
    finally:
        await engine.dispose()


async def test_real_uvicorn_server(env: ApiEnv) -> None:
    async with serve_http(env.app) as base_url, httpx.AsyncClient(base_url=base_url) as http:
        assert (await http.get("/healthz")).status_code == 200
        me: Any = (await http.get("/api/v1/me", headers=env.auth("rita"))).json()
        assert me["username"] == "rita" and me["roles"] == ["model_risk_officer"]
        assert (await http.get("/api/v1/me")).status_code == 401
