"""The feature catalog (issue 22): search, what each policy says of a feature, proposals and their approvals,
and the catalog version a progression pins. Each attack is a test that failed on the old code (an admin's or
anyone's single write changed the catalog under running progressions)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.client import Client

from engine.db import AuditEvent, Feature, ProgressionRow
from testing.api import ApiEnv, api_env, spec_text, start, wait_audit, wait_for, wait_read_model
from testing.people import create_people
from testing.workflow import CREDIT

# Extra people: a data owner (a developer of another team) and a second one.
OWNERS = {"olga": (["model_developer"], "data-office"), "otto": (["model_validator"], "data-office")}


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> AsyncIterator[ApiEnv]:
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue) as e:
        async with e.sessionmaker() as session:
            tokens, ids = await create_people(session, OWNERS)
            await session.commit()
        e.tokens.update(tokens)
        e.user_ids.update(ids)
        yield e


async def _propose(env: ApiEnv, who: str, **body: Any) -> Any:
    return await env.http.post("/api/v1/features/proposals", json={"comment": "why not", **body},
                               headers=env.auth(who))


async def _approve(env: ApiEnv, who: str, pid: str) -> Any:
    return await env.http.post(f"/api/v1/features/proposals/{pid}/approval", json={"comment": "ok"},
                               headers=env.auth(who))


async def _events(env: ApiEnv, event_type: str) -> list[AuditEvent]:
    async with env.sessionmaker() as session:
        return list((await session.scalars(select(AuditEvent).where(AuditEvent.event_type == event_type)
                                           .order_by(AuditEvent.seq))).all())


async def _tags(env: ApiEnv, name: str) -> list[str]:
    async with env.sessionmaker() as session:
        row = await session.get(Feature, name, populate_existing=True)
        assert row is not None
        return list(row.tags)


async def _own(env: ApiEnv, name: str, owner: str) -> None:
    row = (await env.http.get(f"/api/v1/features/{name}", headers=env.auth("adam"))).json()
    r = await env.http.put(f"/api/v1/features/{name}", headers=env.auth("adam"),
                           json={"description": row["description"], "tags": row["tags"], "owner": owner})
    assert r.status_code == 200 and r.json()["owner"] == owner, r.text


async def test_search_and_what_each_policy_says(env: ApiEnv) -> None:
    r = await env.http.get("/api/v1/features", params={"q": "ZIP"}, headers=env.auth("dana"))
    assert r.status_code == 200
    body = r.json()
    assert [f["name"] for f in body["items"]] == ["zip_code"] and body["catalog_version"] >= 1
    credit = {v["intent"]: v for v in body["items"][0]["policies"]}["credit-underwriting"]
    assert credit["verdict"] == "requires"
    assert {e for rule in credit["rules"] for e in rule["requires_evidence"]} == {"pii_justification",
                                                                                 "proxy_analysis"}
    age = (await env.http.get("/api/v1/features/age", headers=env.auth("dana"))).json()
    verdicts = {v["intent"]: v["verdict"] for v in age["policies"]}
    assert verdicts["credit-underwriting"] == "forbidden" and verdicts["fraud-detection"] == "forbidden"
    assert verdicts["marketing-propensity"] == "allowed"
    # search by description and by tag; filter by verdict under one intent
    by_desc = await env.http.get("/api/v1/features", params={"q": "revolving"}, headers=env.auth("dana"))
    assert {f["name"] for f in by_desc.json()["items"]} == {"utilization_ratio", "revolving_balance"}
    by_tag = await env.http.get("/api/v1/features", params={"q": "velocity"}, headers=env.auth("dana"))
    assert {f["name"] for f in by_tag.json()["items"]} == {"hours_since_last_txn", "txn_count_24h"}
    forbidden = await env.http.get("/api/v1/features", params={"intent": "credit-underwriting",
                                                               "verdict": "forbidden"}, headers=env.auth("dana"))
    assert {f["name"] for f in forbidden.json()["items"]} == {"age", "gender", "marital_status", "ethnicity"}
    bad = await env.http.get("/api/v1/features", params={"intent": "nope"}, headers=env.auth("dana"))
    assert bad.status_code == 422 and bad.json()["code"] == "unknown_intent"


async def test_models_that_use_a_feature_stay_in_their_team(env: ApiEnv) -> None:
    pid, resp = await start(env, "dana")
    assert resp.status_code == 201, resp.text
    await wait_read_model(env, pid, lambda row: row.catalog_version is not None)
    version_id = pid.split("@", 1)[1]
    own = (await env.http.get("/api/v1/features/bureau_score", headers=env.auth("dana"))).json()
    assert {"model_id": "retail-credit-scorecard", "version_id": version_id,
            "business_intent": "credit-underwriting"} in own["used_by"]
    other = (await env.http.get("/api/v1/features/bureau_score", headers=env.auth("sam"))).json()
    assert other["used_by"] == []  # another team's developer does not learn the model exists


async def test_proposer_cannot_approve_own_proposal(env: ApiEnv) -> None:
    await _own(env, "loan_amount", "olga")
    r = await _propose(env, "olga", feature="loan_amount", tags=["application", "pii"])
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    refused = await _approve(env, "olga", pid)
    assert refused.status_code == 403 and refused.json()["code"] == "own_proposal"
    # not the owner, not an admin: refused too
    stranger = await _approve(env, "vera", pid)
    assert stranger.status_code == 403 and stranger.json()["code"] == "not_feature_owner"
    assert await _tags(env, "loan_amount") == ["application"]
    refusals = await _events(env, "feature.proposal_refused")
    assert [e.payload["code"] for e in refusals] == ["own_proposal", "not_feature_owner"]
    ok = await _approve(env, "adam", pid)
    assert ok.status_code == 200 and ok.json()["status"] == "applied", ok.text
    assert await _tags(env, "loan_amount") == ["application", "pii"]
    applied = await _events(env, "feature.updated")
    assert applied[-1].payload["proposal_id"] == pid and applied[-1].payload["approved_by"] == ["adam"]


async def test_an_admin_is_not_the_proposer_either(env: ApiEnv) -> None:
    r = await _propose(env, "adam", feature="bank_tenure_days", description="Days since the first account",
                       tags=["relationship"])
    assert r.status_code == 201 and r.json()["kind"] == "create"
    refused = await _approve(env, "adam", r.json()["id"])
    assert refused.status_code == 403 and refused.json()["code"] == "own_proposal"
    async with env.sessionmaker() as session:
        assert await session.get(Feature, "bank_tenure_days") is None


async def test_one_person_cannot_give_both_approvals_of_a_protected_tag_removal(env: ApiEnv) -> None:
    await _own(env, "gender", "olga")
    r = await _propose(env, "dana", feature="gender",
                       tags=["demographic", "restricted:credit-underwriting"])  # drops protected_attribute
    assert r.status_code == 201 and r.json()["approvals_needed"] == 2 and r.json()["tags_removed"] == [
        "protected_attribute"]
    pid = r.json()["id"]
    first = await _approve(env, "olga", pid)
    assert first.status_code == 200 and first.json()["status"] == "pending"
    again = await _approve(env, "olga", pid)
    assert again.status_code == 409 and again.json()["code"] == "already_approved"
    assert "protected_attribute" in await _tags(env, "gender")
    second = await _approve(env, "adam", pid)
    assert second.status_code == 200 and second.json()["status"] == "applied"
    assert [a["username"] for a in second.json()["approvals"]] == ["olga", "adam"]
    assert "protected_attribute" not in await _tags(env, "gender")


async def test_a_developer_cannot_remove_proxy_from_zip_code_to_get_a_model_through(env: ApiEnv) -> None:
    features = ["bureau_score", "utilization_ratio", "zip_code"]
    # The admin's direct write cannot do it either (it used to: one admin, one PUT).
    put = await env.http.put("/api/v1/features/zip_code", headers=env.auth("adam"),
                             json={"description": "Residential five-digit ZIP code", "tags": ["geographic", "pii"]})
    assert put.status_code == 409 and put.json()["code"] == "two_approvals_required"
    r = await _propose(env, "dana", feature="zip_code", tags=["geographic", "pii"])
    assert r.status_code == 201 and r.json()["approvals_needed"] == 2
    pid = r.json()["id"]
    assert (await _approve(env, "dana", pid)).json()["code"] == "own_proposal"
    assert (await _approve(env, "dario", pid)).json()["code"] == "not_feature_owner"  # her teammate
    assert (await _approve(env, "adam", pid)).json()["status"] == "pending"  # one approval is not enough
    assert "proxy" in await _tags(env, "zip_code")
    spec = spec_text(CREDIT, features=features)
    dry = await env.http.post("/api/v1/policies/credit-underwriting/dry-run", headers=env.auth("dana"),
                              files={"spec": ("progression.yaml", spec.encode())})
    failing = {c["id"] for s in dry.json()["route"] for c in s["checks"] if not c["passed"]}
    assert "proxy-analysed" in failing
    assert {n["name"]: n["verdict"]["verdict"] for n in dry.json()["features"]} == {"zip_code": "requires"}


async def test_a_catalog_change_after_a_progression_started_does_not_change_its_checks(env: ApiEnv) -> None:
    features = ["bureau_score", "utilization_ratio", "zip_code"]
    pid, resp = await start(env, "dana", features=features,
                            extra={"pii_justification": ("docs/pii.md", b"ZIP code justified " * 20)},
                            evidence={"pii_justification": "docs/pii.md"}, skip=("pii_justification",))
    assert resp.status_code == 201, resp.text
    await wait_for(env, pid, lambda s: s["status"] == "blocked")
    row = await wait_read_model(env, pid, lambda r: r.catalog_version is not None)
    pinned = row.catalog_version
    state = (await env.http.get(f"/api/v1/progressions/{pid}", headers=env.auth("dana"))).json()
    failed = {c["check_id"] for s in state["stages"] for c in s["checks"] if not c["passed"]}
    assert failed == {"proxy-analysed"}, failed

    await _own(env, "zip_code", "olga")
    p = (await _propose(env, "dana", feature="zip_code", tags=["geographic", "pii"])).json()
    assert (await _approve(env, "olga", p["id"])).json()["status"] == "pending"
    applied = (await _approve(env, "adam", p["id"])).json()
    assert applied["status"] == "applied" and applied["applied_version"] > pinned
    assert "proxy" not in await _tags(env, "zip_code")

    # New evidence re-runs the stage's checks: still against the pinned catalog, so still blocked.
    metrics = json.loads((CREDIT / "evidence/metrics.json").read_text())
    metrics["note"] = "re-run"
    r = await env.http.post(f"/api/v1/progressions/{pid}/evidence", headers=env.auth("dana"),
                            files=[("evidence.metrics", ("evidence/metrics.json", json.dumps(metrics).encode(),
                                                         "application/json"))])
    assert r.status_code in (200, 202), r.text
    events = await wait_audit(env, pid, "check.evaluated",
                              where=lambda e: e.payload["check_id"] == "proxy-analysed" and
                              e.payload["evidence"].get("metrics") != state["evidence"]["metrics"]["sha256"])
    latest = [e for e in events if e.payload["check_id"] == "proxy-analysed"][-1]
    assert latest.payload["passed"] is False and "zip_code" in latest.payload["reason"]
    async with env.sessionmaker() as session:
        assert (await session.get(ProgressionRow, pid, populate_existing=True)).catalog_version == pinned

    # Control: a progression started now pins the new version and that check passes.
    pid2, resp2 = await start(env, "dana", features=features,
                              extra={"pii_justification": ("docs/pii.md", b"ZIP code justified " * 20)},
                              evidence={"pii_justification": "docs/pii.md"}, skip=("pii_justification",))
    assert resp2.status_code == 201, resp2.text
    fresh = await wait_audit(env, pid2, "check.evaluated", where=lambda e: e.payload["check_id"] == "proxy-analysed")
    assert [e.payload["passed"] for e in fresh if e.payload["check_id"] == "proxy-analysed"] == [True]
    old = await env.http.get(f"/api/v1/features/versions/{pinned}", headers=env.auth("ann"))
    assert "proxy" in {f["name"]: f for f in old.json()["features"]}["zip_code"]["tags"]


async def test_proposal_refusals_and_validation(env: ApiEnv) -> None:
    nothing = await _propose(env, "dana", feature="zip_code", tags=["pii", "proxy", "geographic"])
    assert nothing.status_code == 422 and nothing.json()["code"] == "no_change"
    new = await _propose(env, "dana", feature="brand_new")
    assert new.status_code == 422 and new.json()["code"] == "description_required"
    bad = await _propose(env, "dana", feature="1bad", description="x")
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_feature_name"
    owner = await _propose(env, "dana", feature="zip_code", owner="nobody-here")
    assert owner.status_code == 422 and owner.json()["code"] == "unknown_owner"
    sneaky = await env.http.post("/api/v1/features/proposals", headers=env.auth("dana"),
                                 json={"feature": "zip_code", "tags": [], "comment": "x", "approvals_needed": 0})
    assert sneaky.status_code == 422  # a body cannot set its own approval count
    ann = await _propose(env, "ann", feature="zip_code", tags=["pii"])
    assert ann.status_code == 403  # auditors read only
    first = await _propose(env, "dana", feature="email", tags=["pii", "contact"])
    assert first.status_code == 201
    twin = await _propose(env, "dario", feature="email", tags=[])
    assert twin.status_code == 409 and twin.json()["code"] == "proposal_pending"
    # an approver who names themself owner in the proposal is not the owner yet
    hijack = await _propose(env, "sam", feature="phone_number", owner="sam", tags=[])
    # (two approvals: it also removes pii, which the credit policy's checks read)
    assert hijack.status_code == 201 and hijack.json()["approvals_needed"] == 2
    refused = await _approve(env, "sam", hijack.json()["id"])
    assert refused.json()["code"] == "own_proposal"
    by_dario = await _approve(env, "dario", hijack.json()["id"])
    assert by_dario.status_code == 403 and by_dario.json()["code"] == "not_feature_owner"
    rejected = await env.http.post(f"/api/v1/features/proposals/{first.json()['id']}/rejection",
                                   json={"comment": "contact is not a tag we use"}, headers=env.auth("adam"))
    assert rejected.status_code == 200 and rejected.json()["status"] == "rejected"
    closed = await _approve(env, "adam", first.json()["id"])
    assert closed.status_code == 409 and closed.json()["code"] == "proposal_closed"
    listing = await env.http.get("/api/v1/features/proposals", params={"status": "pending"},
                                 headers=env.auth("ann"))
    assert [p["feature"] for p in listing.json()["items"]] == ["phone_number"]
    assert len(await _events(env, "feature.proposed")) == 2
    assert len(await _events(env, "feature.proposal_rejected")) == 1


async def test_a_proposal_made_stale_by_a_newer_change_is_not_applied(env: ApiEnv) -> None:
    p = (await _propose(env, "dana", feature="loan_amount", description="Requested amount, net of fees")).json()
    put = await env.http.put("/api/v1/features/loan_amount", headers=env.auth("adam"),
                             json={"description": "Requested loan amount", "tags": ["application", "pii"]})
    assert put.status_code == 200
    stale = await _approve(env, "adam", p["id"])
    assert stale.status_code == 409 and stale.json()["code"] == "proposal_stale"
    assert (await env.http.get(f"/api/v1/features/proposals/{p['id']}", headers=env.auth("dana"))
            ).json()["status"] == "superseded"
    assert await _tags(env, "loan_amount") == ["application", "pii"]


async def _racing_approvals(env: ApiEnv) -> None:
    """One person sending many approvals at once, then a second person: one approval each, applied once."""
    await _own(env, "first_name", "olga")
    p = (await _propose(env, "dana", feature="first_name", tags=["pii"])).json()
    assert p["approvals_needed"] == 2
    answers = await asyncio.gather(*(_approve(env, "olga", p["id"]) for _ in range(12)))
    assert all(r.status_code < 500 for r in answers), [r.text for r in answers if r.status_code >= 500]
    after = (await env.http.get(f"/api/v1/features/proposals/{p['id']}", headers=env.auth("ann"))).json()
    assert [a["username"] for a in after["approvals"]] == ["olga"] and after["status"] == "pending"
    assert "proxy" in await _tags(env, "first_name")
    versions_before = (await env.http.get("/api/v1/features/versions/current", headers=env.auth("ann"))).json()
    done = await asyncio.gather(*(_approve(env, "adam", p["id"]) for _ in range(6)))
    assert all(r.status_code < 500 for r in done), [r.text for r in done if r.status_code >= 500]
    assert sum(r.status_code == 200 for r in done) >= 1
    final = (await env.http.get(f"/api/v1/features/proposals/{p['id']}", headers=env.auth("ann"))).json()
    assert final["status"] == "applied" and [a["username"] for a in final["approvals"]] == ["olga", "adam"]
    current = (await env.http.get("/api/v1/features/versions/current", headers=env.auth("ann"))).json()
    assert current["version"] == versions_before["version"] + 1  # applied exactly once
    assert await _tags(env, "first_name") == ["pii"]


async def test_racing_approvals_count_each_person_once(env: ApiEnv) -> None:
    await _racing_approvals(env)


async def test_racing_approvals_on_postgresql(postgres_url: str, tmp_path: Path, temporal_client: Client,
                                              task_queue: str) -> None:
    async with api_env(postgres_url, tmp_path, temporal_client, task_queue, worker=False) as e:
        async with e.sessionmaker() as session:
            tokens, ids = await create_people(session, OWNERS)
            await session.commit()
        e.tokens.update(tokens)
        e.user_ids.update(ids)
        await _racing_approvals(e)
