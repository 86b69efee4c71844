"""Issue 19's security part: strict query parameters API-wide, HTML 404 pages under /ui/, sign-out that ends the
session server-side (a replayed cookie is refused), and a decision posted on an expired session that is kept
through sign-in and submitted only when its author confirms it.
"""

from __future__ import annotations

from datetime import timedelta

import httpx
from sqlalchemy import select, update

from api.web.session import COOKIE_NAME
from engine.db import BrowserSession, DecisionRow, utcnow
from testing.api import ApiEnv, at_gate, started_at_gate, wait_for
from tests.api import test_web_ui
from tests.api.test_web_ui import Browser, csrf_of, signed_in, stage_of

people = test_web_ui.people  # the web UI tests' browsers (env: tests/api/conftest.py)

# ---- strict query parameters ----------------------------------------------------------------------


async def test_a_mistyped_audit_filter_is_refused_naming_it_not_ignored(env: ApiEnv) -> None:
    # Before: ?type= was ignored and every event came back, as if filtered.
    r = await env.http.get("/api/v1/audit/events?type=decision.received", headers=env.auth("ann"))
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["code"] == "unknown_query_parameter" and body["details"]["unknown"] == ["type"]
    assert body["details"]["suggestions"] == {"type": "event_type"} and "'type'" in body["message"]
    assert "event_type" in body["details"]["known"]
    ok = await env.http.get("/api/v1/audit/events?event_type=decision.received&limit=5", headers=env.auth("ann"))
    assert ok.status_code == 200, ok.text


async def test_unknown_query_parameters_are_refused_on_every_route(env: ApiEnv) -> None:
    for path in ("/api/v1/progressions?modle=x", "/api/v1/audit/export?format=csv&actr=ann",
                 "/api/v1/inbox?all=1", "/api/v1/models?team=x&sort=name", "/api/v1/findings?sevrity=high",
                 "/api/v1/policies?x=1", "/healthz?verbose=1"):
        r = await env.http.get(path, headers=env.auth("ann"))
        assert r.status_code == 422, (path, r.status_code, r.text[:200])
        assert r.json()["code"] == "unknown_query_parameter", path
    two = await env.http.get("/api/v1/progressions?b=1&a=2&model=x", headers=env.auth("ann"))
    assert two.json()["details"]["unknown"] == ["a", "b"]


async def test_the_openapi_contract_says_every_operation_is_strict(env: ApiEnv) -> None:
    schema = (await env.http.get("/openapi.json")).json()
    operations = [op for path in schema["paths"].values() for op in path.values() if isinstance(op, dict)]
    assert len(operations) > 20
    assert all(op.get("x-strict-query") is True and "422" in op["responses"] for op in operations)
    assert "unknown_query_parameter" in schema["info"]["description"]


async def test_the_web_ui_answers_unknown_query_parameters_with_a_page(env: ApiEnv, people: dict[str, Browser]
                                                                      ) -> None:
    b = await signed_in(people, "ann")
    r = await b.get("/ui/audit?type=decision.received")
    assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")
    assert "unknown_query_parameter" in r.text and "event_type" in r.text
    assert (await b.get("/ui/audit?event_type=decision.received")).status_code == 200


# ---- unknown /ui/ pages ----------------------------------------------------------------------------


async def test_every_unknown_ui_path_is_an_html_404_page(env: ApiEnv, people: dict[str, Browser]) -> None:
    anon = people["nobody"]
    b = await signed_in(people, "rita")
    for client in (anon, b):
        for path in ("/ui/nope", "/ui/progressions/x/nope/deeper", "/ui/inbox/extra", "/ui/nope?with=query"):
            r = await client.get(path)
            assert r.status_code == 404, (path, r.status_code)
            assert r.headers["content-type"].startswith("text/html") and "<h1>Page not found</h1>" in r.text, path
            assert r.headers["x-frame-options"] == "DENY"
    missing_static = await anon.get("/ui/static/no-such.css")
    assert missing_static.status_code == 404 and "<h1>Page not found</h1>" in missing_static.text
    wrong_method = await anon.http.put("/ui/login")
    assert wrong_method.status_code in (404, 405) and wrong_method.headers["content-type"].startswith("text/html")
    # The API's own unknown paths stay JSON.
    api = await env.http.get("/api/v1/nope", headers=env.auth("rita"))
    assert api.status_code == 404 and api.json()["code"] == "not_found"


# ---- sign-out ends the session on the server ------------------------------------------------------


async def test_a_cookie_replayed_after_sign_out_is_refused(env: ApiEnv, people: dict[str, Browser]) -> None:
    b = await signed_in(people, "rita")
    stolen = b.http.cookies[COOKIE_NAME]
    page = await b.get("/ui/inbox")
    assert page.status_code == 200
    out = await b.http.post("/ui/logout", data={"csrf_token": csrf_of(page.text)})
    assert out.status_code == 303
    # The same cookie, replayed from another client (its signature is still valid for hours).
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url="http://api.test") as thief:
        thief.cookies.set(COOKIE_NAME, stolen)
        replay = await thief.get("/ui/inbox")
        assert replay.status_code == 303 and replay.headers["location"].startswith("/ui/login")
        assert "Signed in as" not in (await thief.get("/ui/models", follow_redirects=True)).text
    async with env.sessionmaker() as session:
        rows = (await session.scalars(select(BrowserSession).where(
            BrowserSession.user_id == env.user_ids["rita"]))).all()
    assert rows and all(r.ended_at is not None for r in rows)
    assert {r.ended_reason for r in rows} == {"signed_out"}


# ---- a decision posted on an expired session -------------------------------------------------------


async def _expire(env: ApiEnv, who: str) -> None:
    async with env.sessionmaker() as session:
        await session.execute(update(BrowserSession).where(BrowserSession.user_id == env.user_ids[who])
                              .values(expires_at=utcnow() - timedelta(seconds=1)))
        await session.commit()


async def test_a_decision_on_an_expired_session_is_kept_and_submitted_only_on_confirmation(
        env: ApiEnv, people: dict[str, Browser]) -> None:
    pid, _ = await started_at_gate(env, "dana")
    vera = await signed_in(people, "vera")
    url = f"/ui/progressions/{pid}"
    page = await vera.get(url)
    comment = "Independent validation complete — 同意, l'AUC tient"
    form = {"csrf_token": csrf_of(page.text), "stage": "validation", "decision": "approve", "comment": comment}
    await _expire(env, "vera")

    posted = await vera.http.post(f"{url}/decisions", data=form)
    assert posted.status_code == 303 and posted.headers["location"].startswith("/ui/login?next=")
    assert await env.count(DecisionRow, DecisionRow.progression_id == pid) == 0  # nothing submitted
    login = await vera.get(posted.headers["location"])
    assert login.status_code == 200 and 'id="pending-decision"' in login.text and pid in login.text

    # Signing in again leads to the page with the decision filled in, still not submitted.
    again = await vera.http.post("/ui/login", data={"token": env.tokens["vera"], "csrf_token": csrf_of(login.text),
                                                    "next": "/ui/models"})
    assert again.status_code == 303 and again.headers["location"] == f"{url}#decide"
    shown = await vera.get(url)
    assert 'id="pending-decision"' in shown.text and "Not submitted yet" in shown.text
    assert comment.replace("'", "&#39;") in shown.text and 'value="approve" required checked' in shown.text
    state = await wait_for(env, pid, at_gate("validation"))
    assert not stage_of(state, "validation")["decisions"]
    # Kept once: a reload shows the plain form again (the text is in the form the person has open).
    assert 'id="pending-decision"' not in (await vera.get(url)).text

    confirmed = await vera.http.post(f"{url}/decisions", data={**form, "csrf_token": csrf_of(shown.text)})
    assert confirmed.status_code == 303, confirmed.text[:300]
    state = await wait_for(env, pid, lambda s: bool(stage_of(s, "validation")["decisions"]))
    assert stage_of(state, "validation")["decisions"][0]["comment"] == comment


async def test_a_kept_decision_is_shown_to_its_author_only(env: ApiEnv, people: dict[str, Browser]) -> None:
    pid, _ = await started_at_gate(env, "dana")
    vera = await signed_in(people, "vera")
    url = f"/ui/progressions/{pid}"
    page = await vera.get(url)
    await _expire(env, "vera")
    posted = await vera.http.post(f"{url}/decisions", data={
        "csrf_token": csrf_of(page.text), "stage": "validation", "decision": "reject", "comment": "vera's words"})
    assert posted.status_code == 303
    # Someone else signs in on that browser: the kept decision is not theirs to see or submit.
    login = await vera.get("/ui/login")
    other = await vera.http.post("/ui/login", data={"token": env.tokens["rita"], "csrf_token": csrf_of(login.text),
                                                    "next": "/ui/inbox"})
    assert other.status_code == 303 and other.headers["location"] == "/ui/inbox"
    assert "vera&#39;s words" not in (await vera.get(url)).text and "vera's words" not in (await vera.get(url)).text


async def test_a_cross_site_post_without_the_cookies_csrf_token_keeps_nothing(env: ApiEnv,
                                                                             people: dict[str, Browser]) -> None:
    pid, _ = await started_at_gate(env, "dana")
    vera = await signed_in(people, "vera")
    await _expire(env, "vera")
    forged = await vera.http.post(f"/ui/progressions/{pid}/decisions", data={
        "csrf_token": "x" * 43, "stage": "validation", "decision": "approve", "comment": "planted"})
    assert forged.status_code == 303 and forged.headers["location"].startswith("/ui/login")
    async with env.sessionmaker() as session:
        kept = [r for r in (await session.scalars(select(BrowserSession))).all() if r.pending]
    assert kept == []
    login = await vera.get(forged.headers["location"])
    assert 'id="pending-decision"' not in login.text


async def test_a_cookie_signed_out_of_cannot_plant_a_decision_to_confirm(env: ApiEnv, people: dict[str, Browser]
                                                                         ) -> None:
    pid, _ = await started_at_gate(env, "dana")
    vera = await signed_in(people, "vera")
    page = await vera.get(f"/ui/progressions/{pid}")
    stolen, token = vera.http.cookies[COOKIE_NAME], csrf_of(page.text)
    assert (await vera.http.post("/ui/logout", data={"csrf_token": token})).status_code == 303
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url="http://api.test") as thief:
        thief.cookies.set(COOKIE_NAME, stolen)
        r = await thief.post(f"/ui/progressions/{pid}/decisions", data={
            "csrf_token": token, "stage": "validation", "decision": "approve", "comment": "planted"})
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")
    async with env.sessionmaker() as session:
        assert [r for r in (await session.scalars(select(BrowserSession))).all() if r.pending] == []
    assert await env.count(DecisionRow, DecisionRow.progression_id == pid) == 0
