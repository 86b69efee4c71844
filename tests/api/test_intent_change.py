"""A model's business intent decides which policy governs its next versions: changing it is two model risk
officers' decision, not one's.

The attack: a developer who wants a weak credit model live finds one friendly risk officer (independent of the
team, so the old control let him) to re-classify the credit scorecard as ``marketing-propensity`` (risk tier 3:
no risk officer gate, no maker-checker); the next version then walks a far lighter policy. Now that officer's
request is a proposal (202) that changes nothing until a second officer approves that very proposal; the
proposer cannot approve it, with any of their credentials; the approval names the proposal it approves, so a
proposal withdrawn and replaced by a weaker one is not approved by it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import select

from engine.audit import verify_chain
from engine.db import AuditEvent, CatalogModel, IntentChange, ProgressionRow, User
from engine.identity import issue_token
from testing.api import (
    ApiEnv,
    audit_events,
    page_as,
    spec_text,
    start_past_the_api,
    started_at_gate,
    unique_version,
    wait_read_model,
)
from testing.api import start as start_version

MODEL = "retail-credit-scorecard"
WEAKER = "marketing-propensity"


async def _registered(env: ApiEnv) -> None:
    """The credit model in the catalog, as its first version registers it."""
    await started_at_gate(env, "dana")


async def propose(env: ApiEnv, who: str, intent: str = WEAKER, reason: str = "re-classified") -> httpx.Response:
    return await env.http.post(f"/api/v1/models/{MODEL}/intent", json={"business_intent": intent, "reason": reason},
                               headers=env.auth(who))


async def decide(env: ApiEnv, who: str, change_id: str, verb: str = "approve", *,
                 headers: dict[str, str] | None = None) -> httpx.Response:
    return await env.http.post(f"/api/v1/models/{MODEL}/intent-changes/{change_id}/{verb}",
                               json={"reason": f"{verb} after review"}, headers=headers or env.auth(who))


async def intent_of(env: ApiEnv) -> str:
    async with env.sessionmaker() as session:
        model = await session.get(CatalogModel, MODEL)
        assert model is not None
        return model.business_intent


async def intent_events(env: ApiEnv) -> list[tuple[str, dict[str, Any]]]:
    async with env.sessionmaker() as session:
        rows = (await session.scalars(select(AuditEvent).where(AuditEvent.model_id == MODEL,
                                                               AuditEvent.event_type.like("model.intent%"))
                                      .order_by(AuditEvent.seq))).all()
        return [(e.event_type, e.payload) for e in rows]


def code(resp: httpx.Response) -> str:
    return str(resp.json().get("code"))


async def test_attack_one_risk_officer_alone_cannot_move_a_model_to_a_weaker_policy(env: ApiEnv) -> None:
    await _registered(env)
    resp = await propose(env, "rita")
    assert resp.status_code == 202, resp.text
    change = resp.json()
    assert change["status"] == "pending" and change["from_intent"] == "credit-underwriting"
    assert change["to_intent"] == WEAKER and change["proposed_by"] == "rita"
    # Nothing changed: the model is still credit, and a version declared as marketing is still refused.
    assert await intent_of(env) == "credit-underwriting"
    _, started = await start_version(env, "dana", version=unique_version(), model={"business_intent": WEAKER})
    assert started.status_code == 409 and code(started) == "intent_mismatch", started.text
    detail = (await env.http.get(f"/api/v1/models/{MODEL}", headers=env.auth("ann"))).json()
    assert detail["business_intent"] == "credit-underwriting"
    assert detail["pending_intent_change"]["id"] == change["id"]

    # It waits on a second officer: in Rob's to-do list (not in the proposer's, the owning team's officer's or the
    # admin's), and on the model's page.
    for who, listed in [("rob", True), ("rita", False), ("rory", False), ("adam", False)]:
        todo = (await env.http.get("/api/v1/todo", headers=env.auth(who))).json()["items"]
        assert [i["model_id"] for i in todo if i["kind"] == "intent_change"] == ([MODEL] if listed else []), who
    page = await page_as(env, "rob", f"/ui/models/{MODEL}")
    assert 'id="pending-intent-change"' in page and f"intent-changes/{change['id']}/approve" in page

    # The proposer cannot approve it, not even with a second credential of their own.
    own = await decide(env, "rita", change["id"])
    assert own.status_code == 403 and code(own) == "own_proposal", own.text
    async with env.sessionmaker() as session:
        rita = await session.get(User, env.user_ids["rita"])
        assert rita is not None
        _, second_token = await issue_token(session, rita, name="rita-laptop")
        await session.commit()
    again = await decide(env, "rita", change["id"], headers={"Authorization": f"Bearer {second_token}"})
    assert again.status_code == 403 and code(again) == "own_proposal", again.text
    # Nor can an admin, the owning team's risk officer, a validator or the developer.
    for who, expected in [("adam", "forbidden"), ("rory", "own_team"), ("vera", "forbidden"),
                          ("dana", "forbidden")]:
        refused = await decide(env, who, change["id"])
        assert refused.status_code == 403 and code(refused) == expected, (who, refused.text)
    assert await intent_of(env) == "credit-underwriting"
    assert [t for t, _ in await intent_events(env)] == ["model.intent_change_proposed"]

    # A second, independent risk officer approves: now the next version runs under the new policy.
    approved = await decide(env, "rob", change["id"])
    assert approved.status_code == 200, approved.text
    assert approved.json()["business_intent"] == WEAKER and approved.json()["pending_intent_change"] is None
    events = await intent_events(env)
    assert [t for t, _ in events] == ["model.intent_change_proposed", "model.intent_changed"]
    changed = events[-1][1]
    assert (changed["proposed_by"], changed["approved_by"], changed["change_id"]) == ("rita", "rob", change["id"])
    todo = (await env.http.get("/api/v1/todo", headers=env.auth("rob"))).json()["items"]
    assert [i for i in todo if i["kind"] == "intent_change"] == []
    # The next version is judged under the marketing policy now (its evidence contract asks for marketing's lift).
    _, started = await start_version(env, "dana", version=unique_version(), model={"business_intent": WEAKER})
    assert started.status_code == 422 and code(started) == "evidence_contract", started.text
    assert "top_decile_lift" in started.text
    # Decided once: approving or rejecting it again is refused.
    twice = await decide(env, "rob", change["id"], "reject")
    assert twice.status_code == 409 and code(twice) == "intent_change_not_pending", twice.text
    async with env.sessionmaker() as session:
        assert (await verify_chain(session)).ok


async def test_attack_an_approval_binds_to_the_proposal_it_names_not_to_its_replacement(env: ApiEnv) -> None:
    """Rob reads Rita's proposal (to a tier-2 policy) and approves it by id; meanwhile Rita withdrew it and
    proposed marketing (tier 3). Rob's approval must not land on the replacement."""
    await _registered(env)
    first = (await propose(env, "rita", "fraud-detection", "a fraud use as well")).json()
    withdrawn = await decide(env, "rita", first["id"], "reject")  # the proposer may withdraw their own
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "rejected", withdrawn.text
    second = await propose(env, "rita", WEAKER)
    assert second.status_code == 202, second.text
    stale = await decide(env, "rob", first["id"])
    assert stale.status_code == 409 and code(stale) == "intent_change_not_pending", stale.text
    assert await intent_of(env) == "credit-underwriting"
    # One open proposal per model: another is refused while this one waits.
    crowd = await propose(env, "rob", "fraud-detection")
    assert crowd.status_code == 409 and code(crowd) == "intent_change_pending", crowd.text
    assert crowd.json()["details"]["change_id"] == second.json()["id"]
    history = (await env.http.get(f"/api/v1/models/{MODEL}/intent-changes", headers=env.auth("ann"))).json()
    assert [(c["to_intent"], c["status"], c["decided_by"]) for c in history] == [
        ("fraud-detection", "rejected", "rita"), (WEAKER, "pending", None)]


async def test_two_officers_proposing_at_once_leave_one_proposal(env: ApiEnv) -> None:
    await _registered(env)
    answers = await asyncio.gather(propose(env, "rita"), propose(env, "rob", "fraud-detection"))
    assert sorted(r.status_code for r in answers) == [202, 409], [r.text for r in answers]
    async with env.sessionmaker() as session:
        pending = (await session.scalars(select(IntentChange).where(IntentChange.model_id == MODEL,
                                                                    IntentChange.status == "pending"))).all()
    assert len(pending) == 1
    assert [t for t, _ in await intent_events(env)] == ["model.intent_change_proposed"]


async def test_bad_intent_changes_are_refused_with_a_code_and_change_nothing(env: ApiEnv) -> None:
    await _registered(env)
    unknown = await propose(env, "rita", "astrology")
    assert unknown.status_code == 422 and code(unknown) == "unknown_intent", unknown.text
    same = await propose(env, "rita", "credit-underwriting")
    assert same.status_code == 409 and code(same) == "intent_unchanged", same.text
    missing = await decide(env, "rob", "no-such-change")
    assert missing.status_code == 404 and code(missing) == "not_found", missing.text
    no_reason = await env.http.post(f"/api/v1/models/{MODEL}/intent", json={"business_intent": WEAKER},
                                    headers=env.auth("rita"))
    assert no_reason.status_code == 422, no_reason.text
    assert await intent_of(env) == "credit-underwriting" and await intent_events(env) == []


# ---- intent shopping: the same model under a new model id and a weaker intent ----------------------------------


async def test_attack_the_same_artifact_under_a_new_model_id_and_a_weaker_intent_is_refused(env: ApiEnv) -> None:
    """Dana's credit scorecard is under validation as credit-underwriting (tier 1). She submits the very same
    artifact as a new model, ``retail-scorecard-lite``, declared marketing-propensity (tier 3: no risk officer).
    Before: 201, and the model walked the light policy. Now: 409 ``intent_downgrade``, nothing started, the attempt
    audited; the same under another team's developer, or with only the source commit in common."""
    first, _ = await started_at_gate(env, "dana")
    lite = {"id": "retail-scorecard-lite", "business_intent": WEAKER}
    pid, refused = await start_version(env, "dana", model=lite)
    assert refused.status_code == 409 and code(refused) == "intent_downgrade", refused.text
    details = refused.json()["details"]
    assert details["earlier"]["progression_id"] == first and details["earlier"]["risk_tier"] == 1
    assert details["earlier"]["match"] == ["artifact", "source_commit", "artifact_digest"]
    assert details["declared_risk_tier"] == 3
    assert f"POST /api/v1/models/{MODEL}/intent" in refused.json()["message"]
    assert not await _exists(env, pid)
    async with env.sessionmaker() as session:
        assert await session.get(CatalogModel, "retail-scorecard-lite") is None
        audited = (await session.scalars(select(AuditEvent).where(
            AuditEvent.event_type == "model.intent_downgrade_refused"))).all()
    assert [(e.model_id, e.payload["model_id"], e.payload["by"]) for e in audited] == [
        (MODEL, "retail-scorecard-lite", "dana")]
    # The artifact copied elsewhere, the source commit the same: refused too.
    moved_spec = spec_text(version={"id": unique_version(), "artifact": "s3://elsewhere/lite/1.0/"}, model=lite)
    _, moved = await start_version(env, "dana", text=moved_spec)
    assert moved.status_code == 409 and code(moved) == "intent_downgrade", moved.text
    assert moved.json()["details"]["earlier"]["match"] == ["source_commit", "artifact_digest"]
    # The same bytes under a new URI and a new commit: the artifact's digest still tells.
    copied = spec_text(version={"id": unique_version(), "artifact": "s3://elsewhere/lite/2.0/",
                                "source": "git+https://git.example/retail/lite@0badc0de"}, model=lite)
    _, copy = await start_version(env, "dana", text=copied)
    assert copy.status_code == 409 and code(copy) == "intent_downgrade", copy.text
    assert copy.json()["details"]["earlier"]["match"] == ["artifact_digest"]
    # Under its own model id it stays credit (intent_mismatch), as before.
    _, same_model = await start_version(env, "dana", model={"business_intent": WEAKER})
    assert same_model.status_code == 409 and code(same_model) == "intent_mismatch", same_model.text
    # Under an equally strict intent a new model id is no downgrade.
    twin, equal = await start_version(env, "dana", model={"id": "retail-scorecard-twin"})
    assert equal.status_code == 201, equal.text


async def test_attack_a_start_past_the_api_under_a_weaker_intent_fails_at_registration(env: ApiEnv) -> None:
    """The register activity holds the same line for a start that never went through the API (a race, a client
    of Temporal itself): the workflow records ``intent_downgrade`` and fails before any check runs."""
    first, state = await started_at_gate(env, "dana")
    text = spec_text(version={"id": unique_version()}, model={"id": "retail-scorecard-lite",
                                                              "business_intent": WEAKER})
    handle = await start_past_the_api(env, text, "dana", state["evidence"])
    row = await wait_read_model(env, handle.id, lambda r: r.status == "failed")
    assert "intent_downgrade" in row.state["failure"] and first in row.state["failure"]
    assert await audit_events(env, handle.id, "check.evaluated") == []
    failed = await audit_events(env, handle.id, "progression.failed")
    assert [e.payload["code"] for e in failed] == ["intent_downgrade"]


async def _exists(env: ApiEnv, pid: str) -> bool:
    async with env.sessionmaker() as session:
        return await session.get(ProgressionRow, pid) is not None
