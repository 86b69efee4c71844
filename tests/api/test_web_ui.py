"""The web UI through HTTP (httpx against the real app, real worker, real Temporal dev server).

Sign-in and sign-out with a session cookie, CSRF refusals, every page rendering, the
decision form shown only to someone allowed to decide (and the reason for anyone else),
decisions and refusals through the form, evidence download, export and verification.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from api.web.session import COOKIE_NAME
from engine.db import ApiToken, AuditEvent, DecisionRow
from engine.lifecycle import EventType
from testing.api import (
    CREDIT,
    ApiEnv,
    at_gate,
    get_state,
    spec_text,
    start,
    started_at_gate,
    unique_version,
    wait_for,
)

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def stage_of(state: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in state["stages"] if s["name"] == name)


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match, "page has no CSRF field"
    return match.group(1)


class Browser:
    """One person's cookie jar against the app (httpx keeps cookies per client)."""
    def __init__(self, env: ApiEnv) -> None:
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=env.app), base_url="http://api.test",
                                      timeout=60, follow_redirects=False)
        self.env = env

    async def aclose(self) -> None:
        await self.http.aclose()

    async def get(self, url: str, **kw: object) -> httpx.Response:
        return await self.http.get(url, **kw)  # type: ignore[arg-type]

    async def csrf(self, url: str = "/ui/login") -> str:
        page = await self.http.get(url)
        assert page.status_code == 200, (url, page.status_code, page.text[:500])
        return csrf_of(page.text)

    async def post(self, url: str, data: dict[str, str], *, csrf_from: str, files: object = None,
                   **kw: object) -> httpx.Response:
        token = await self.csrf(csrf_from)
        return await self.http.post(url, data={**data, "csrf_token": token}, files=files, **kw)  # type: ignore[arg-type]

    async def sign_in(self, who: str) -> httpx.Response:
        resp = await self.post("/ui/login", {"token": self.env.tokens[who], "next": "/ui/models"},
                               csrf_from="/ui/login")
        assert resp.status_code == 303 and resp.headers["location"] == "/ui/models", resp.text[:500]
        return resp


@pytest.fixture
async def people(env: ApiEnv) -> AsyncIterator[dict[str, Browser]]:
    browsers: dict[str, Browser] = {}

    class Lazy(dict[str, Browser]):
        def __missing__(self, who: str) -> Browser:
            browsers[who] = Browser(env)
            self[who] = browsers[who]
            return browsers[who]

    yield Lazy()
    for b in browsers.values():
        await b.aclose()


async def signed_in(people: dict[str, Browser], who: str) -> Browser:
    b = people[who]
    await b.sign_in(who)
    return b


# ---- sign in, sign out, session cookie -----------------------------------------------------------


async def test_sign_in_sets_a_protected_session_cookie_and_sign_out_ends_it(env: ApiEnv) -> None:
    b = Browser(env)
    try:
        first = await b.get("/ui/inbox")
        assert first.status_code == 303 and first.headers["location"].startswith("/ui/login?next=%2Fui%2Finbox")
        cookie = first.headers["set-cookie"]  # an anonymous session (it carries the sign-in form's CSRF token)
        assert cookie.startswith(COOKIE_NAME + "=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert "Secure" not in cookie  # plain http in this test; Secure is set over https
        login = await b.get("/ui/login?next=/ui/inbox")
        assert login.status_code == 200 and 'for="token"' in login.text and 'id="token"' in login.text
        assert "set-cookie" not in login.headers  # the same session, not a new one per page
        anon_csrf = csrf_of(login.text)

        wrong = await b.http.post("/ui/login", data={"token": "prg_not-a-token", "csrf_token": anon_csrf,
                                                     "next": "/ui/inbox"})
        assert wrong.status_code == 401 and "That token is not valid" in wrong.text

        ok = await b.http.post("/ui/login", data={"token": env.tokens["rita"], "csrf_token": anon_csrf,
                                                  "next": "/ui/inbox"})
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/inbox"
        assert COOKIE_NAME in ok.headers["set-cookie"] and env.tokens["rita"] not in ok.headers["set-cookie"]

        inbox = await b.get("/ui/inbox")
        assert inbox.status_code == 200 and "<h1>Inbox</h1>" in inbox.text and "rita" in inbox.text
        assert "Content-Security-Policy" in inbox.headers and inbox.headers["x-frame-options"] == "DENY"
        signed_csrf = csrf_of(inbox.text)
        assert signed_csrf != anon_csrf  # rotated at sign-in

        # An off-site "next" is never followed.
        assert (await b.get("/ui/login?next=https://evil.example/")).headers["location"] == "/ui/"

        out = await b.http.post("/ui/logout", data={"csrf_token": signed_csrf})
        assert out.status_code == 303 and out.headers["location"] == "/ui/login"
        after = await b.get("/ui/inbox")
        assert after.status_code == 303 and after.headers["location"].startswith("/ui/login")
    finally:
        await b.aclose()


async def test_a_revoked_token_ends_the_browser_session(env: ApiEnv, people: dict[str, Browser]) -> None:
    b = await signed_in(people, "ann")
    assert (await b.get("/ui/audit")).status_code == 200
    async with env.sessionmaker() as session:

        await session.execute(update(ApiToken).where(ApiToken.user_id == env.user_ids["ann"])
                              .values(revoked_at=__import__("engine.db", fromlist=["utcnow"]).utcnow()))
        await session.commit()
    again = await b.get("/ui/audit")
    assert again.status_code == 303 and again.headers["location"].startswith("/ui/login")


async def test_a_forged_or_tampered_cookie_is_anonymous(env: ApiEnv, people: dict[str, Browser]) -> None:
    b = await signed_in(people, "rita")
    value = b.http.cookies[COOKIE_NAME]
    b.http.cookies.clear()
    b.http.cookies.set(COOKIE_NAME, value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB"))
    resp = await b.get("/ui/inbox")
    assert resp.status_code == 303 and resp.headers["location"].startswith("/ui/login")


# ---- CSRF ---------------------------------------------------------------------------------------


async def test_posts_without_the_session_csrf_token_are_refused(env: ApiEnv, people: dict[str, Browser]) -> None:
    # Login CSRF: the sign-in form needs the anonymous session's token too.
    anon = people["nobody"]
    await anon.get("/ui/login")
    r = await anon.http.post("/ui/login", data={"token": env.tokens["rita"]})
    assert r.status_code == 403 and "Security check failed" in r.text and "csrf_failed" in r.text
    assert (await anon.get("/ui/inbox")).status_code == 303  # still signed out

    b = await signed_in(people, "vera")
    pid, _ = await started_at_gate(env, "dana")
    form = {"stage": "validation", "decision": "approve", "comment": "fine"}
    for bad in ({}, {"csrf_token": "x" * 43}, {"csrf_token": csrf_of((await people["other"].get("/ui/login")).text)}):
        r = await b.http.post(f"/ui/progressions/{pid}/decisions", data={**form, **bad})
        assert r.status_code == 403 and "Security check failed" in r.text, r.text[:300]
    r = await b.http.post("/ui/logout", data={"csrf_token": "wrong"})
    assert r.status_code == 403
    assert await env.count(DecisionRow, DecisionRow.progression_id == pid) == 0
    state = await wait_for(env, pid, at_gate("validation"))
    assert not stage_of(state, "validation")["decisions"]
    # The header form (htmx) is accepted as well as the field.
    page = await b.get(f"/ui/progressions/{pid}")
    ok = await b.http.post(f"/ui/progressions/{pid}/decisions", data=form,
                           headers={"X-CSRF-Token": csrf_of(page.text), "HX-Request": "true"})
    assert ok.status_code == 200 and "Your approval was recorded" in ok.text and "<html" not in ok.text


# ---- the progression page and the decision form ------------------------------------------------


async def test_submitter_sees_no_decision_form_and_is_told_why(env: ApiEnv, people: dict[str, Browser]) -> None:
    pid, _ = await started_at_gate(env, "dana")

    dana = await signed_in(people, "dana")
    page = await dana.get(f"/ui/progressions/{pid}")
    assert page.status_code == 200
    assert "data-decision-form" not in page.text and 'name="decision"' not in page.text
    assert "You cannot decide on this gate" in page.text
    assert "You submitted this progression; segregation of duties forbids deciding on it" in page.text
    # The route, the checks with their reasons, who acts next, the evidence links.
    assert 'aria-current="step"' in page.text and "model validator" in page.text
    assert f"/ui/progressions/{pid}/evidence/metrics" in page.text

    rory = await signed_in(people, "rory")  # a risk officer of the owning team, on a validator's gate
    text = (await rory.get(f"/ui/progressions/{pid}")).text
    assert "data-decision-form" not in text
    assert "decided by model_validator" in text and "Your team &#39;retail-risk&#39; owns model" in text

    vera = await signed_in(people, "vera")
    text = (await vera.get(f"/ui/progressions/{pid}")).text
    assert "data-decision-form" in text and "You cannot decide" not in text

    # A forged POST by the submitter is refused in place, with the server's reason, and audited.
    forged = await dana.post(f"/ui/progressions/{pid}/decisions",
                             {"stage": "validation", "decision": "approve", "comment": "mine"},
                             csrf_from=f"/ui/progressions/{pid}")
    assert forged.status_code == 403 and "Not recorded:" in forged.text and "cannot decide on gates" in forged.text
    assert "<h1>" in forged.text  # a whole page, never a blank one
    assert await env.count(AuditEvent, AuditEvent.progression_id == pid,
                           AuditEvent.event_type == EventType.decision_refused.value) == 1


async def test_decisions_through_the_form(env: ApiEnv, people: dict[str, Browser]) -> None:
    pid, _ = await started_at_gate(env, "dana")
    vera = await signed_in(people, "vera")
    url = f"/ui/progressions/{pid}"

    # Request changes without a comment: refused in place, nothing recorded.
    r = await vera.post(f"{url}/decisions", {"stage": "validation", "decision": "request_changes", "comment": " "},
                        csrf_from=url)
    assert r.status_code == 422 and "A comment is required" in r.text and "data-decision-form" in r.text
    assert await env.count(DecisionRow, DecisionRow.progression_id == pid) == 0

    r = await vera.post(f"{url}/decisions", {"stage": "validation", "decision": "approve",
                                             "comment": "independent review done"}, csrf_from=url)
    assert r.status_code == 303 and r.headers["location"] == f"{url}?done=approve"
    await wait_for(env, pid, at_gate("risk_review"))
    page = await vera.get(r.headers["location"])
    assert "Your approval was recorded" in page.text and "independent review done" in page.text
    assert "vera" in page.text

    # Approving again (the same person, the next gate is not hers): the server's refusal, in place.
    again = await vera.post(f"{url}/decisions", {"stage": "validation", "decision": "approve", "comment": "x"},
                            csrf_from=url)
    assert again.status_code == 409 and "Not recorded:" in again.text and "not awaiting approval" in again.text

    rita = await signed_in(people, "rita")
    r = await rita.post(f"{url}/decisions", {"stage": "risk_review", "decision": "reject", "comment": ""},
                        csrf_from=url)
    assert r.status_code == 422 and "A comment is required" in r.text
    r = await rita.post(f"{url}/decisions", {"stage": "risk_review", "decision": "request_changes",
                                             "comment": "explain the utilisation cap"}, csrf_from=url)
    assert r.status_code == 303
    state = await wait_for(env, pid, lambda s: s["status"] == "changes_requested")
    assert stage_of(state, "risk_review")["decisions"][-1]["comment"] == "explain the utilisation cap"

    # The developer answers with new evidence from the page.
    dana = await signed_in(people, "dana")
    page = await dana.get(url)
    assert "explain the utilisation cap" in page.text
    # Metrics are frozen once validation passed (credit policy): the page offers no metrics upload and says
    # why; the answer is the monitoring plan, whose slot it offers.
    assert 'name="evidence.metrics"' not in page.text and 'name="evidence.monitoring_plan"' in page.text
    assert "frozen after stage" in page.text and "start a new version" in page.text
    plan = (CREDIT / "docs/monitoring_plan.md").read_bytes() + b"\nUtilisation is capped at 1.5.\n"
    r = await dana.post(f"{url}/evidence", {}, csrf_from=url,
                        files={"evidence.monitoring_plan": ("monitoring_plan.md", plan, "text/markdown")})
    assert r.status_code == 303 and r.headers["location"] == f"{url}?done=evidence", r.text[:400]
    await wait_for(env, pid, at_gate("risk_review"))


async def test_the_form_decides_on_the_basis_the_page_showed(env: ApiEnv, people: dict[str, Browser]) -> None:
    """The decision form carries the basis of what the page showed: evidence that changed after the page was
    rendered makes the decision stale (refused in place, saying what changed), never approved unseen."""
    pid, state = await started_at_gate(env, "dana")
    shown = stage_of(state, "validation")["basis"]
    vera = await signed_in(people, "vera")
    url = f"/ui/progressions/{pid}"
    page = await vera.get(url)
    assert f'name="basis" value="{shown}"' in page.text
    proxy = ("proxy.md", b"# Proxies\nnone\n" * 30, "text/markdown")
    r = await env.http.post(f"/api/v1/progressions/{pid}/evidence", headers=env.auth("dana"),
                            files=[("evidence.proxy_analysis", proxy)])
    assert r.status_code == 200, r.text
    await wait_for(env, pid, at_gate("validation"))
    r = await vera.post(f"{url}/decisions", {"stage": "validation", "decision": "approve", "comment": "ok",
                                             "basis": shown}, csrf_from=url)
    assert r.status_code == 409 and "Not recorded:" in r.text and "proxy_analysis" in r.text
    assert await env.count(DecisionRow, DecisionRow.progression_id == pid) == 0
    fresh = await vera.get(url)
    current = stage_of(await get_state(env, pid), "validation")["basis"]
    assert current != shown and f'name="basis" value="{current}"' in fresh.text
    r = await vera.post(f"{url}/decisions", {"stage": "validation", "decision": "approve", "comment": "ok",
                                             "basis": current}, csrf_from=url)
    assert r.status_code == 303
    page = await vera.get(url)
    assert "the current evidence still matches" in page.text


async def test_evidence_download_is_authorized(env: ApiEnv, people: dict[str, Browser]) -> None:
    pid, resp = await start(env, "dana")
    assert resp.status_code == 201, resp.text
    rita = await signed_in(people, "rita")
    r = await rita.get(f"/ui/progressions/{pid}/evidence/metrics")
    assert r.status_code == 200 and r.content == (CREDIT / "evidence/metrics.json").read_bytes()
    assert r.headers["content-disposition"] == 'attachment; filename="metrics.json"'
    assert (await rita.get(f"/ui/progressions/{pid}/evidence/nope")).status_code == 404
    sam = await signed_in(people, "sam")  # another team's developer: the progression does not exist for him
    r = await sam.get(f"/ui/progressions/{pid}/evidence/metrics")
    assert r.status_code == 404 and "not found" in r.text
    assert (CREDIT / "evidence/metrics.json").read_text() not in r.text
    assert (await sam.get(f"/ui/progressions/{pid}")).status_code == 404


async def test_start_a_progression_from_the_browser(env: ApiEnv, people: dict[str, Browser]) -> None:
    dana = await signed_in(people, "dana")
    version = unique_version()
    text = spec_text(CREDIT, version={"id": version})
    files = [("evidence_files", (p.name, p.read_bytes(), "application/octet-stream"))
             for p in (CREDIT / "evidence/metrics.json", CREDIT / "evidence/fairness.json",
                       CREDIT / "docs/model_card.md", CREDIT / "docs/monitoring_plan.md")]
    files.append(("spec_file", ("progression.yaml", text.encode(), "application/yaml")))
    r = await dana.post("/ui/start", {}, csrf_from="/ui/start", files=files)
    pid = f"retail-credit-scorecard@{version}"
    assert r.status_code == 303 and r.headers["location"] == f"/ui/progressions/{pid}?done=started", r.text[:600]
    state = await wait_for(env, pid, at_gate("validation"))
    assert set(state["evidence"]) == {"metrics", "fairness", "model_card", "monitoring_plan"}

    # A bad spec: the message names the line and the field; nothing starts.
    bad = text.replace("business_intent: credit-underwriting", "business_intent: credit-underwritting")
    r = await dana.post("/ui/start", {"spec_text": bad}, csrf_from="/ui/start")
    assert r.status_code == 422 and "credit-underwritting" in r.text and "progression.yaml:" in r.text
    # A file that matches no declared evidence is named.
    r = await dana.post("/ui/start", {"spec_text": text}, csrf_from="/ui/start",
                        files=[("evidence_files", ("stray.csv", b"a,b\n", "text/csv"))])
    assert r.status_code == 422 and "stray.csv" in r.text


# ---- catalog, policies, audit ------------------------------------------------------------------


async def test_pages_render_for_each_role(env: ApiEnv, people: dict[str, Browser]) -> None:
    pid, _ = await started_at_gate(env, "dana")

    vera = await signed_in(people, "vera")
    inbox = await vera.get("/ui/inbox")
    assert inbox.status_code == 200 and f"/ui/progressions/{pid}" in inbox.text and "validation" in inbox.text

    dana = await signed_in(people, "dana")
    assert "Inbox" not in (await dana.get("/ui/progressions")).text.split("<main")[0]  # no inbox for developers
    listing = await dana.get("/ui/progressions")
    assert listing.status_code == 200 and pid in listing.text and "Start a progression" in listing.text
    models = await dana.get("/ui/models")
    assert models.status_code == 200 and "/ui/models/retail-credit-scorecard" in models.text
    model = await dana.get("/ui/models/retail-credit-scorecard")
    assert model.status_code == 200 and pid.split("@")[1] in model.text and "awaiting approval" in model.text

    policies = await dana.get("/ui/policies")
    assert policies.status_code == 200
    for intent in ("credit-underwriting", "fraud-detection", "marketing-propensity"):
        assert f"/ui/policies/{intent}" in policies.text
    credit = await dana.get("/ui/policies/credit-underwriting")
    assert credit.status_code == 200 and "risk review" in credit.text and "model risk officer" in credit.text
    assert (await dana.get("/ui/policies/nope")).status_code == 404

    dry = await dana.post("/ui/policies/dry-run", {"spec": spec_text(CREDIT)}, csrf_from="/ui/policies/dry-run")
    assert dry.status_code == 200 and "Route for" in dry.text and "retail-credit-scorecard@3.2.0" in dry.text
    assert "risk review" in dry.text and "then 2 × model risk officer" in dry.text
    bad = await dana.post("/ui/policies/dry-run", {"spec": "model: [unclosed"}, csrf_from="/ui/policies/dry-run",
                          headers={"HX-Request": "true"})
    assert bad.status_code == 422 and "cannot be used as it is" in bad.text and "<html" not in bad.text

    # Developers read their team's audit trail but may not export or verify it.
    audit = await dana.get(f"/ui/audit?progression={pid}")
    assert audit.status_code == 200 and "progression.started" in audit.text
    assert "export-csv" not in audit.text and "verify-button" not in audit.text
    assert (await dana.get("/ui/audit/export?format=csv")).status_code == 403


async def test_auditor_filters_exports_and_verifies(env: ApiEnv, people: dict[str, Browser]) -> None:
    pid, _ = await started_at_gate(env, "dana")
    ann = await signed_in(people, "ann")
    page = await ann.get(f"/ui/audit?progression={pid}")
    assert page.status_code == 200 and "export-csv" in page.text and "verify-button" in page.text

    r = await ann.get(f"/ui/audit/export?format=csv&progression={pid}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows and {row["progression_id"] for row in rows} == {pid}
    assert rows[0]["event_type"] == EventType.progression_started.value
    r = await ann.get(f"/ui/audit/export?format=jsonl&progression={pid}")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [x["seq"] for x in lines] == [int(row["seq"]) for row in rows]

    # Paging: a page of a filter by event type, then the next page by cursor, never repeating.
    first = await ann.get("/ui/audit?event_type=check.evaluated")
    seqs = re.findall(r'<td class="mono">(\d+)</td>', first.text)
    assert seqs and all("check.evaluated" in first.text for _ in seqs)
    filtered = await ann.get("/ui/audit?actor=dana")
    assert "progression.started" in filtered.text

    verify = await ann.post("/ui/audit/verify", {}, csrf_from="/ui/audit", headers={"HX-Request": "true"})
    assert verify.status_code == 200 and "The chain verifies." in verify.text and "<html" not in verify.text

    # Tamper with one event: the same button names the first bad event.
    async with env.sessionmaker() as session:

        ev = (await session.scalars(select(AuditEvent).where(AuditEvent.progression_id == pid)
                                    .order_by(AuditEvent.seq))).first()
        assert ev is not None
        ev.payload = {**ev.payload, "edited": True}
        await session.commit()
        bad_seq = ev.seq
    verify = await ann.post("/ui/audit/verify", {}, csrf_from="/ui/audit")
    assert verify.status_code == 200 and "The chain is broken." in verify.text
    assert f"seq {bad_seq}" in verify.text and "edited" in verify.text


async def test_htmx_requests_without_a_session_are_sent_to_sign_in(env: ApiEnv) -> None:
    b = Browser(env)
    try:
        r = await b.http.get("/ui/inbox", headers={"HX-Request": "true"})
        assert r.status_code == 401 and r.headers["hx-redirect"].startswith("/ui/login?next=")
        root = await b.http.get("/")
        assert root.status_code == 307 and root.headers["location"] == "/ui/"
        css = await b.http.get("/ui/static/app.css")
        assert css.status_code == 200 and "timeline" in css.text
        js = await b.http.get("/ui/static/htmx.min.js")
        assert js.status_code == 200 and "htmx" in js.text
    finally:
        await b.aclose()
