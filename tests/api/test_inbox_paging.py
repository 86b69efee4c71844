"""Issue 21: the inbox and ``GET /progressions`` page in SQL by signed keyset cursors, with the same authorization.

One real progression is parked at its validation gate; its read-model row is then cloned into many open gates
(other teams, other submitters, gates the caller already approved, gates waiting on other roles): the inbox
reads only the read model, so the clones are open gates as far as it is concerned. Every page is checked against
the rules computed here in Python; cursors are tampered with, forged and replayed by others.
"""

from __future__ import annotations

import base64
import html
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from sqlalchemy import select
from temporalio.client import Client, Interceptor, OutboundInterceptor, QueryWorkflowInput

from api.cursors import encode_cursor
from api.services import inbox as inbox_service
from client.sdk import AsyncProgressionClient
from engine.db import AuditEvent, ProgressionRow
from testing.api import ApiEnv, api_env, decide, started_at_gate, wait_read_model
from tests.api.test_web_ui import Browser

TEAMS = ("retail-risk", "payments", "cards")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def park_one(env: ApiEnv) -> str:
    pid, _ = await started_at_gate(env, "dana")
    await wait_read_model(env, pid, lambda r: r.gate is not None and r.gate_opened_at is not None)
    return pid


async def clone_gates(env: ApiEnv, template: str, count: int, *, start: int = 0,
                      opened: datetime = T0) -> list[dict[str, Any]]:
    """``count`` open gates cloned from ``template``'s row, each with its own traits (returned, for the oracle)."""
    made = []
    async with env.sessionmaker() as session:
        row = await session.get(ProgressionRow, template)
        assert row is not None and row.gate is not None
        for i in range(start, start + count):
            traits = {"id": f"clone-{i:04d}", "team": TEAMS[i % 3], "opened": opened + timedelta(minutes=i // 2),
                      "own": i % 7 == 3, "approved": i % 11 == 5, "waiting": ["model_validator"]}
            if i % 13 == 8:
                traits["waiting"] = ["model_risk_officer"]
            gate = json.loads(json.dumps(row.gate))
            gate["stage"]["approvals"][0]["role"] = traits["waiting"][0]
            if traits["approved"]:  # vera already approved this gate (a quorum of two): one person counts once
                gate["stage"]["approvals"][0]["count"] = 2
                gate["stage"]["decisions"] = [{
                    "decision_id": f"d-{i}", "actor_id": env.user_ids["vera"], "actor_username": "vera",
                    "role": "model_validator", "decision": "approve", "comment": "ok", "decided_at": T0.isoformat()}]
            session.add(ProgressionRow(
                id=traits["id"], model_id=row.model_id, version_id=f"9.{i}.0", team=traits["team"],
                business_intent=row.business_intent, risk_tier=row.risk_tier, policy_hash=row.policy_hash,
                status="awaiting_approval", current_stage=row.current_stage, target=row.target,
                submitted_by=env.user_ids["vera"] if traits["own"] else row.submitted_by,
                waiting_on=traits["waiting"], gate_opened_at=traits["opened"], sla_due_at=row.sla_due_at,
                started_at=traits["opened"], updated_at=traits["opened"], seq=1, state={}, gate=gate))
            made.append(traits)
        await session.commit()
    return made


async def pages(env: ApiEnv, who: str, path: str, limit: int, **params: str) -> list[dict[str, Any]]:
    """Every item of a cursor-paged listing, page after page."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(1000):
        query = {**params, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        resp = await env.http.get(path, params=query, headers=env.auth(who))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["items"]) <= limit
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("never reached the last page")


def expected_for(gates: list[dict[str, Any]], *, team: str, role: str, may_be_own: bool = False) -> list[str]:
    """The oracle: the gates a decider of ``team`` with ``role`` sees, in inbox order."""
    seen = [g for g in gates if g["team"] != team and role in g["waiting"] and not g["approved"]
            and (may_be_own or not g["own"])]
    return [g["id"] for g in sorted(seen, key=lambda g: (g["opened"], g["id"]))]


async def test_the_inbox_pages_every_decidable_gate_once_in_order_and_never_widens(env: ApiEnv) -> None:
    await inbox_paging(env)


async def test_the_inbox_pages_on_postgresql(postgres_url: str, tmp_path: Path, temporal_client: Client,
                                             task_queue: str) -> None:
    async with api_env(postgres_url, tmp_path, temporal_client, task_queue) as env:
        await inbox_paging(env)


async def inbox_paging(env: ApiEnv) -> None:
    template = await park_one(env)
    gates = await clone_gates(env, template, 40)
    ids = {g["id"] for g in gates}

    vera = [i["progression_id"] for i in await pages(env, "vera", "/api/v1/inbox", 4)]
    assert [p for p in vera if p in ids] == expected_for(gates, team="validation", role="model_validator")
    assert template in vera and len(vera) == len(set(vera))
    # val2 validates but belongs to retail-risk (the model's team): none of that team's gates, page after page.
    val2 = await pages(env, "val2", "/api/v1/inbox", 3)
    assert {i["team"] for i in val2} <= {"payments", "cards"} and val2
    assert [i["progression_id"] for i in val2] == expected_for(gates, team="retail-risk", role="model_validator",
                                                               may_be_own=True)
    rory = await pages(env, "rory", "/api/v1/inbox", 2)  # risk officer of retail-risk
    assert [i["progression_id"] for i in rory] == expected_for(gates, team="retail-risk", role="model_risk_officer",
                                                               may_be_own=True)
    for who in ("sam", "dana", "ann", "adam"):  # developers (even of the gates' teams), the auditor, the admin
        assert await pages(env, who, "/api/v1/inbox", 5) == [], who

    # Stable under concurrent inserts: gates opened before the cursor's position are not repeated, later ones
    # are reached, and nothing is skipped or seen twice.
    first = (await env.http.get("/api/v1/inbox", params={"limit": "5"}, headers=env.auth("vera"))).json()
    late = await clone_gates(env, template, 6, start=100, opened=T0 - timedelta(days=1))   # before the cursor
    later = await clone_gates(env, template, 6, start=200, opened=T0 + timedelta(days=1))  # after everything
    rest: list[str] = []
    cursor = first["next_cursor"]
    while cursor:
        body = (await env.http.get("/api/v1/inbox", params={"limit": "5", "cursor": cursor},
                                   headers=env.auth("vera"))).json()
        rest += [i["progression_id"] for i in body["items"]]
        cursor = body["next_cursor"]
    walked = [i["progression_id"] for i in first["items"]] + rest
    assert len(walked) == len(set(walked))
    assert not {g["id"] for g in late} & set(rest)
    assert [p for p in walked if p.startswith("clone-02")] == expected_for(later, team="validation",
                                                                          role="model_validator")
    assert [p for p in walked if p in ids] == expected_for(gates, team="validation", role="model_validator")

    # The SDK and the CLI's client iterate every page.
    async with AsyncProgressionClient("http://api.test", env.tokens["vera"],
                                      transport=httpx.ASGITransport(app=env.app)) as sdk:
        assert [i.progression_id for i in await sdk.inbox(page_size=3)] == \
            [i["progression_id"] for i in await pages(env, "vera", "/api/v1/inbox", 50)]
        listed = [p.id async for p in sdk.progressions(page_size=7)]
    assert listed == [p["id"] for p in await pages(env, "vera", "/api/v1/progressions", 500)]


async def test_progressions_page_by_cursor_within_the_callers_team(env: ApiEnv) -> None:
    template = await park_one(env)
    gates = await clone_gates(env, template, 30)
    everything = await pages(env, "ann", "/api/v1/progressions", 4)  # the auditor reads all teams
    assert len(everything) == len({p["id"] for p in everything}) == 31
    keys = [(p["started_at"], p["id"]) for p in everything]
    assert keys == sorted(keys, key=lambda k: (-datetime.fromisoformat(k[0]).timestamp(), k[1]))
    sam = await pages(env, "sam", "/api/v1/progressions", 3)  # a developer of payments
    assert {p["id"] for p in sam} == {g["id"] for g in gates if g["team"] == "payments"}
    # Asking for another team's progressions by filter shows nothing either, on every page.
    assert await pages(env, "sam", "/api/v1/progressions", 3, team="retail-risk") == []
    filtered = await pages(env, "ann", "/api/v1/progressions", 2, team="cards")
    assert {p["id"] for p in filtered} == {g["id"] for g in gates if g["team"] == "cards"}


def _flip(cursor: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[-3] ^= 0x01  # inside the key: another timestamp or id
    return base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")


async def test_a_tampered_forged_or_borrowed_cursor_is_refused(env: ApiEnv) -> None:
    template = await park_one(env)
    await clone_gates(env, template, 12)

    async def get(who: str, path: str, **params: str) -> httpx.Response:
        return await env.http.get(path, params=params, headers=env.auth(who))

    inbox = (await get("vera", "/api/v1/inbox", limit="2")).json()["next_cursor"]
    listing = (await get("sam", "/api/v1/progressions", limit="1")).json()["next_cursor"]
    assert inbox and listing
    unsigned = base64.urlsafe_b64encode(json.dumps(["2000-01-01T00:00:00+00:00", ""]).encode()).decode()
    forged_key = encode_cursor(secret="not-the-installation-secret-at-all-0123456789", kind="inbox",
                               user_id=env.user_ids["vera"], filters={}, key=["2000-01-01T00:00:00+00:00", ""])
    attempts = [
        ("vera", "/api/v1/inbox", {"cursor": _flip(inbox)}),            # edited
        ("vera", "/api/v1/inbox", {"cursor": unsigned}),                # made up, no signature
        ("vera", "/api/v1/inbox", {"cursor": forged_key}),              # signed with a guessed secret
        ("vera", "/api/v1/inbox", {"cursor": "%%%not-base64"}),         # garbage
        ("val2", "/api/v1/inbox", {"cursor": inbox}),                   # someone else's
        ("vera", "/api/v1/progressions", {"cursor": inbox}),            # another listing's
        ("sam", "/api/v1/progressions", {"cursor": listing, "team": "retail-risk"}),  # other filters
        ("ann", "/api/v1/progressions", {"cursor": listing}),           # sam's, replayed by a global reader
        ("sam", "/api/v1/progressions", {"cursor": _flip(listing)}),
    ]
    for who, path, params in attempts:
        resp = await get(who, path, **params)
        assert resp.status_code == 422, (who, path, params, resp.status_code, resp.text)
        assert resp.json()["code"] == "invalid_cursor", resp.text
    assert (await get("vera", "/api/v1/inbox", cursor=inbox)).status_code == 200  # the genuine one still works


async def _rewrite_snapshot(env: ApiEnv, pid: str, change: Any) -> None:
    async with env.sessionmaker() as session:
        row = await session.get(ProgressionRow, pid)
        assert row is not None
        state = json.loads(json.dumps(row.state))
        change(state)
        row.state = state
        await session.commit()


def _stage(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in state["stages"] if s["name"] == name)


async def _refusals(env: ApiEnv, pid: str) -> list[dict[str, Any]]:
    async with env.sessionmaker() as session:
        rows = (await session.execute(select(AuditEvent).where(
            AuditEvent.progression_id == pid, AuditEvent.event_type == "decision.refused"))).scalars().all()
    return [r.payload for r in rows]


@pytest.mark.parametrize("layer", ["read_model", "workflow"])
async def test_decisions_are_prechecked_on_the_read_model_and_the_validator_still_holds(env: ApiEnv,
                                                                                        layer: str) -> None:
    pid = await park_one(env)
    if layer == "read_model":
        # A refusal that does not depend on the state (the submitter deciding) comes from the read model,
        # without asking the workflow.
        resp = await decide(env, "dana", pid, "validation")
        assert resp.status_code == 403, resp.text
        assert [r["source"] for r in await _refusals(env, pid)] == ["api"]
        # The read model says the validation gate is closed (while the parked workflow has it open): the API
        # refuses from the read model, without asking the workflow (the snapshot is faithful to the durable
        # history, tests/workflow/test_snapshot.py; a gate that just opened is retried after a GET).
        def close(state: dict[str, Any]) -> None:
            _stage(state, "validation")["status"] = "pending"
        await _rewrite_snapshot(env, pid, close)
        resp = await decide(env, "vera", pid, "validation")
        assert resp.status_code == 409 and resp.json()["code"] == "gate_not_open", resp.text
        assert [r["source"] for r in await _refusals(env, pid)] == ["api", "api"]
    else:
        # The read model lags: vera's approval moved the workflow to the risk review, then the snapshot from
        # before it is back (as if its record were late). The pre-check lets vera's second approval through;
        # the workflow's Update validator refuses it.
        async with env.sessionmaker() as session:
            row = await session.get(ProgressionRow, pid)
            assert row is not None
            before = json.loads(json.dumps(row.state))
        assert (await decide(env, "vera", pid, "validation")).status_code == 200
        await wait_read_model(env, pid, lambda r: r.current_stage == "risk_review" and r.gate is not None)

        def stale(state: dict[str, Any]) -> None:
            state.clear()
            state.update(before)
        await _rewrite_snapshot(env, pid, stale)
        resp = await decide(env, "vera", pid, "validation", comment="again")
        assert resp.status_code == 409, resp.text
        refusals = await _refusals(env, pid)
        assert [r["source"] for r in refusals] == ["workflow"], refusals


class CountQueries(Interceptor):
    """Counts the workflow queries a client sends (the API's, here)."""

    def __init__(self) -> None:
        self.queries = 0

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        outer = self

        class Counting(OutboundInterceptor):
            async def query_workflow(self, input: QueryWorkflowInput) -> Any:
                outer.queries += 1
                return await super().query_workflow(input)

        return Counting(next)


async def test_a_decision_refused_on_the_recorded_gate_sends_no_query(sqlite_url: str, tmp_path: Path,
                                                                     temporal_client: Client, task_queue: str
                                                                     ) -> None:
    """Issue 21: deciding on a parked progression never makes the worker replay it just to refuse. Every
    refusal that reads the gate (not open, a stale basis, a snapshot that has not caught up) comes from the
    read model: no workflow query (which would replay an evicted workflow), and the refusal says to read again."""
    counter = CountQueries()
    client = Client(**{**temporal_client.config(), "interceptors": [counter]})
    async with api_env(sqlite_url, tmp_path, client, task_queue) as env:
        pid = await park_one(env)
        queries = counter.queries
        resp = await decide(env, "rita", pid, "risk_review")  # the next gate, not open yet
        assert resp.status_code == 409 and resp.json()["code"] == "gate_not_open", resp.text
        resp = await env.http.post(f"/api/v1/progressions/{pid}/decisions", headers=env.auth("vera"), json={
            "stage": "validation", "decision": "approve", "comment": "ok", "basis": "sha256:" + "0" * 64})
        assert resp.status_code == 409 and resp.json()["code"] == "stale_basis", resp.text
        async with env.sessionmaker() as session:
            row = await session.get(ProgressionRow, pid)
            assert row is not None
            recorded = json.loads(json.dumps(row.state))

        def not_yet(state: dict[str, Any]) -> None:  # the snapshot from just before the gate opened
            _stage(state, "validation")["status"] = "running"
        await _rewrite_snapshot(env, pid, not_yet)
        resp = await decide(env, "vera", pid, "validation")
        assert resp.status_code == 409 and resp.json()["code"] == "gate_not_open", resp.text
        assert "read the progression again and retry" in resp.json()["message"], resp.text
        assert counter.queries == queries  # none of the three asked the workflow
        assert [r["source"] for r in await _refusals(env, pid)] == ["api"] * 3

        def written(state: dict[str, Any]) -> None:  # the gate's record lands; the caller reads and retries
            state.clear()
            state.update(recorded)
        await _rewrite_snapshot(env, pid, written)
        assert (await env.http.get(f"/api/v1/progressions/{pid}", headers=env.auth("vera"))).status_code == 200
        assert (await decide(env, "vera", pid, "validation")).status_code == 200


NEXT_RE = re.compile(r'href="(/ui/(?:inbox|progressions)\?[^"]*cursor=[^"]+)">Next page')
LINK_RE = re.compile(r'href="/ui/progressions/([^"/]+)"')


async def test_the_web_ui_pages_the_inbox_and_the_list_by_cursor(env: ApiEnv) -> None:
    template = await park_one(env)
    await clone_gates(env, template, 120)
    for who, start_url, expected in (("vera", "/ui/inbox", await pages(env, "vera", "/api/v1/inbox", 500)),
                                     ("ann", "/ui/progressions", await pages(env, "ann", "/api/v1/progressions",
                                                                             500))):
        browser = Browser(env)
        try:
            await browser.sign_in(who)
            seen: list[str] = []
            url: str | None = start_url
            while url:
                page = await browser.get(html.unescape(url))
                assert page.status_code == 200, page.text[:300]
                seen += [unquote(p) for p in dict.fromkeys(LINK_RE.findall(page.text))]
                found = NEXT_RE.search(page.text)
                url = found.group(1) if found else None
            ids = [i.get("progression_id") or i.get("id") for i in expected]
            assert [p for p in seen if p in set(ids)] == ids, who
            bad = await browser.get(start_url, params={"cursor": "forged"})
            assert bad.status_code == 422 and "cursor" in bad.text, bad.text[:300]
        finally:
            await browser.aclose()


async def test_the_inbox_counts_up_to_its_cap_and_says_there_are_more(env: ApiEnv,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    template = await park_one(env)
    gates = await clone_gates(env, template, 30)
    decidable = len(expected_for(gates, team="validation", role="model_validator")) + 1  # + the template
    monkeypatch.setattr(inbox_service, "TOTAL_CAP", 10)
    body = (await env.http.get("/api/v1/inbox", params={"limit": "3"}, headers=env.auth("vera"))).json()
    assert body["total"] == 10 and body["total_more"] is True
    monkeypatch.setattr(inbox_service, "TOTAL_CAP", 1000)
    body = (await env.http.get("/api/v1/inbox", params={"limit": "3"}, headers=env.auth("vera"))).json()
    # the count is taken before the per-gate rule (vera's own approvals), so it is at least what she can decide
    assert body["total_more"] is False and body["total"] >= decidable


async def test_a_page_that_ends_early_still_continues_where_it_stopped(env: ApiEnv,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """One query a page and no slack: pages with gates vera already approved come back short, and the cursor
    carries on after the last gate examined, so walking every page still finds each decidable gate once."""
    template = await park_one(env)
    gates = await clone_gates(env, template, 40)
    monkeypatch.setattr(inbox_service, "_MAX_BATCHES", 1)
    monkeypatch.setattr(inbox_service, "_BATCH_SLACK", 0)
    walked = [i["progression_id"] for i in await pages(env, "vera", "/api/v1/inbox", 3)]
    assert [p for p in walked if p != template] == expected_for(gates, team="validation", role="model_validator")
    async with AsyncProgressionClient("http://api.test", env.tokens["vera"],
                                      transport=httpx.ASGITransport(app=env.app)) as sdk:
        assert [i.progression_id for i in await sdk.inbox(page_size=3)] == walked
