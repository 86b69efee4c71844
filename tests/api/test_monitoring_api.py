"""Monitoring results, triggered revalidation and retirement through the HTTP API (real app, worker, Temporal).

The attacks: a hostile results document (huge, wrong types, NaN/Infinity, unknown model or metric, a duplicate or
future period) gets a clear 4xx and nothing is stored; the monitor identity reaches no other endpoint; no human
role posts results; a developer cannot retire without the gate, an admin cannot approve a retirement, a non-owner
cannot ask, and a model another production model depends on is not retired without a risk officer's override.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import select
from temporalio.client import Client

from api.services.monitoring import results_digest
from client.sdk import AsyncProgressionClient, ConflictError, Forbidden, InvalidInput
from engine.db import MonitoringResultRow, RetirementOverride
from engine.loading import PolicyRegistry
from engine.settings import PROJECT_ROOT
from testing.api import ApiEnv, api_env, audit_events, decide, start, wait_audit, wait_for
from testing.monitoring import credit_metrics
from testing.people import create_people
from tests.api import test_web_ui
from tests.api.test_web_ui import Browser, signed_in

MODEL = "retail-credit-scorecard"


@pytest.fixture
async def env(database_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> AsyncIterator[ApiEnv]:
    """SQLite and PostgreSQL (``postgres`` marker): the stored results, their unique period and the overrides."""
    async with api_env(database_url, tmp_path, temporal_client, task_queue) as e:
        async with e.sessionmaker() as session:
            tokens, ids = await create_people(session, {"mona": (["monitor"], None)})
            await session.commit()
        e.tokens.update(tokens)
        e.user_ids.update(ids)
        yield e


async def _in_production(env: ApiEnv, **kw: Any) -> str:
    pid, resp = await start(env, **kw)
    assert resp.status_code == 201, resp.text
    await wait_for(env, pid, lambda s: s["current_stage"] == "validation" and s["status"] == "awaiting_approval")
    assert (await decide(env, "vera", pid, "validation")).status_code == 200
    await wait_for(env, pid, lambda s: s["current_stage"] == "risk_review" and s["status"] == "awaiting_approval")
    assert (await decide(env, "rita", pid, "risk_review")).status_code == 200
    assert (await decide(env, "rob", pid, "risk_review")).status_code == 200
    await wait_for(env, pid, lambda s: s["status"] == "in_production")
    return pid


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


async def _post(env: ApiEnv, who: str, body: Any, model: str = MODEL, raw: bytes | None = None) -> Any:
    headers = {**env.auth(who), "Content-Type": "application/json"}
    content = raw if raw is not None else json.dumps(body).encode()
    return await env.http.post(f"/api/v1/models/{model}/monitoring", content=content, headers=headers)


async def test_drift_opens_revalidation_once_and_hostile_documents_store_nothing(env: ApiEnv) -> None:
    pid = await _in_production(env)
    today = datetime.now(UTC).date()
    hostile: list[tuple[Any, bytes | None, int, str | None]] = [
        ({"period": _today(), "metrics": {**credit_metrics(), "auc": "0.7"}}, None, 422, "invalid_metric"),
        ({"period": _today(), "metrics": {**credit_metrics(), "auc": True}}, None, 422, "invalid_metric"),
        (None, f'{{"period": "{_today()}", "metrics": {{"psi": {{"a": NaN}}, "auc": 0.7, "default_rate": 0.1, '
               f'"volume": 5, "fairness_ratio": 0.9}}}}'.encode(), 422, "invalid_metric"),
        (None, f'{{"period": "{_today()}", "metrics": {{"psi": {{"a": 0.1}}, "auc": Infinity, "default_rate": 0.1,'
               f' "volume": 5, "fairness_ratio": 0.9}}}}'.encode(), 422, "invalid_metric"),
        ({"period": _today(), "metrics": {**credit_metrics(), "gini": 0.5}}, None, 422, "unknown_metric"),
        ({"period": _today(), "metrics": {"auc": 0.7}}, None, 422, "missing_metric"),
        ({"period": (today + timedelta(days=3)).isoformat(), "metrics": credit_metrics()}, None, 422,
         "period_in_future"),
        ({"period": "2026-13-45", "metrics": credit_metrics()}, None, 422, None),
        ({"period": _today(), "metrics": credit_metrics(), "actor": "someone"}, None, 422, None),
        ({"period": _today(), "metrics": {**credit_metrics(), "psi": {f"f{i}": 0.1 for i in range(2500)}}}, None,
         422, "invalid_metric"),
        (None, b'{"period": "' + _today().encode() + b'", "metrics": {"psi": {"a": "' + b"x" * (6 * 1024 * 1024)
         + b'"}}}', 413, None),
    ]
    for body, raw, status, code in hostile:
        resp = await _post(env, "mona", body, raw=raw)
        assert resp.status_code == status, (body if raw is None else raw[:80], resp.text[:300])
        if code:
            assert resp.json()["code"] == code, resp.text
    unknown = await _post(env, "mona", {"period": _today(), "metrics": credit_metrics()}, model="no-such-model")
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    assert await env.count(MonitoringResultRow) == 0
    assert await audit_events(env, pid, "monitoring.stored") == []

    calm = await _post(env, "mona", {"period": (today - timedelta(days=40)).isoformat(), "metrics": credit_metrics()})
    assert calm.status_code == 201, calm.text
    assert calm.json()["breaches"] == [] and calm.json()["delivered"] is True
    # the same document again: the stored answer; other figures for that period: 409, nothing changes
    again = await _post(env, "mona", {"period": (today - timedelta(days=40)).isoformat(), "metrics": credit_metrics()})
    assert again.status_code == 201 and again.json()["result_id"] == calm.json()["result_id"]
    dup = await _post(env, "mona", {"period": (today - timedelta(days=40)).isoformat(),
                                    "metrics": credit_metrics(psi=0.4)})
    assert dup.status_code == 409 and dup.json()["code"] == "duplicate_period"
    assert await env.count(MonitoringResultRow) == 1
    refused = await audit_events(env, pid, "monitoring.refused")
    assert len(refused) == 1 and refused[0].payload["stored"] == calm.json()["result_id"]

    drift = await _post(env, "mona", {"period": (today - timedelta(days=10)).isoformat(),
                                      "metrics": credit_metrics(psi=0.42)})
    assert drift.status_code == 201, drift.text
    assert [b["rule_id"] for b in drift.json()["breaches"]] == ["psi-drift"]
    gate = await wait_for(env, pid, lambda s: s["current_stage"] == "revalidation"
                          and s["status"] == "in_production")
    assert gate["monitoring"]["triggered_by"]["rule_id"] == "psi-drift"
    inbox = (await env.http.get("/api/v1/inbox", headers=env.auth("vera"))).json()["items"]
    assert pid in [i["progression_id"] for i in inbox]
    repeat = await _post(env, "mona", {"period": _today(), "metrics": credit_metrics(psi=0.5)})
    assert repeat.status_code == 201 and "already open" in repeat.json()["actions"][0]
    assert len(await audit_events(env, pid, "revalidation.triggered")) == 1
    assert len(await wait_audit(env, pid, "monitoring.stored")) == 3

    history = (await env.http.get(f"/api/v1/models/{MODEL}/monitoring", headers=env.auth("ann"))).json()
    assert [r["period"] for r in history["results"]] == sorted(r["period"] for r in history["results"])
    assert {"rule_id": "psi-drift", "value": 0.25} in history["thresholds"]["psi"]


async def test_no_human_role_posts_results_and_the_monitor_reaches_nothing_else(env: ApiEnv) -> None:
    await _in_production(env)
    body = {"period": _today(), "metrics": credit_metrics()}
    for who in ("dana", "vera", "rita", "ann", "adam"):
        resp = await _post(env, who, body)
        assert resp.status_code == 403, (who, resp.text)
    # who can never post is refused before the model is looked up: another team's developer gets the same
    # answer for this model as for one that does not exist, so she does not learn that it exists
    other_team = await _post(env, "sam", body)
    unknown = await env.http.post("/api/v1/models/no-such-model/monitoring", json=body, headers=env.auth("sam"))
    assert other_team.status_code == unknown.status_code == 403
    assert other_team.json() == unknown.json() and other_team.json()["code"] == "not_a_monitoring_poster"
    assert await env.count(MonitoringResultRow) == 0
    # every other endpoint refuses the monitor identity (and the web UI treats it as signed out)
    for route in env.app.routes:
        if not isinstance(route, APIRoute) or not route.path.startswith("/api/"):
            continue
        path = route.path.replace("{model_id}", MODEL).replace("{progression_id}", "x@1").replace(
            "{intent}", "credit-underwriting")
        path = path.replace("{", "").replace("}", "")
        for method in sorted((route.methods or set()) - {"HEAD", "OPTIONS"}):
            if method == "POST" and route.path == "/api/v1/models/{model_id}/monitoring":
                continue
            resp = await env.http.request(method, path, headers=env.auth("mona"), json={})
            assert resp.status_code in (401, 403, 404, 405, 422), (method, path, resp.status_code, resp.text[:200])
            assert resp.status_code != 200
    page = await env.http.get("/ui/inbox", headers=env.auth("mona"), follow_redirects=False)
    assert page.status_code in (302, 303, 401, 403)


async def test_retirement_gate_attacks_dependencies_and_override(env: ApiEnv) -> None:
    pid = await _in_production(env)
    ask = {"reason": "replaced by the 2027 scorecard", "replacement": "4.0.0"}
    for who, status in (("sam", 404), ("vera", 403), ("adam", 403), ("ann", 403), ("mona", 403)):
        resp = await env.http.post(f"/api/v1/models/{MODEL}/retire", json=ask, headers=env.auth(who))
        assert resp.status_code == status, (who, resp.text)
    # another production model declares the scorecard a dependency
    dep_pid = await _in_production(env, model={"id": "limit-setting", "name": "Limit setting"},
                                   depends_on=[MODEL])
    refused = await env.http.post(f"/api/v1/models/{MODEL}/retire", json=ask, headers=env.auth("dana"))
    assert refused.status_code == 409 and refused.json()["code"] == "dependency_in_production", refused.text
    assert dep_pid in refused.json()["message"]
    for who in ("dana", "adam", "vera", "rory"):  # owner, admin, validator, risk officer of the owning team
        resp = await env.http.post(f"/api/v1/models/{MODEL}/retirement-override", json={"reason": "x"},
                                   headers=env.auth(who))
        assert resp.status_code == 403, (who, resp.text)
    assert await env.count(RetirementOverride) == 0
    override = await env.http.post(f"/api/v1/models/{MODEL}/retirement-override",
                                   json={"reason": "limit setting moves to the 2027 scorecard"},
                                   headers=env.auth("rita"))
    assert override.status_code == 201, override.text
    assert override.json()["dependents"] == [dep_pid]

    asked = await env.http.post(f"/api/v1/models/{MODEL}/retire", json=ask, headers=env.auth("dana"))
    assert asked.status_code == 202, asked.text
    assert asked.json()["retirement"]["override_id"] == override.json()["override_id"]
    # no way around the gate: the owner cannot approve, an admin cannot, a validator is not the approver
    for who, code in (("dana", "not_a_gate_role"), ("adam", "not_a_gate_role"), ("vera", "not_a_gate_role"),
                      ("rory", "own_team")):
        resp = await decide(env, who, pid, "retirement", "approve", "ok")
        assert resp.status_code == 403 and resp.json()["code"] == code, (who, resp.text)
    assert (await decide(env, "rob", pid, "retirement", "approve", "replacement validated")).status_code == 200
    final = await wait_for(env, pid, lambda s: s["status"] == "retired")
    assert final["retired_at"] is not None and final["revalidation_due_at"] is None
    retired = await wait_audit(env, pid, "model.retired")
    assert retired[0].payload["override_id"] == override.json()["override_id"]
    model = (await env.http.get(f"/api/v1/models/{MODEL}", headers=env.auth("ann"))).json()
    assert any(v["progression_id"] == pid and v["status"] == "retired" for v in model["versions"])
    late = await _post(env, "mona", {"period": _today(), "metrics": credit_metrics()})
    assert late.status_code == 409 and late.json()["code"] == "not_in_production"


people = test_web_ui.people  # the web UI tests' browsers, over this module's env (with the monitor identity)


async def test_model_page_plots_monitoring_and_the_owner_asks_to_retire(env: ApiEnv,
                                                                        people: dict[str, Browser]) -> None:
    pid = await _in_production(env)
    today = datetime.now(UTC).date()
    for days, psi in ((70, 0.05), (40, 0.12), (10, 0.31)):
        resp = await _post(env, "mona", {"period": (today - timedelta(days=days)).isoformat(),
                                         "metrics": credit_metrics(psi=psi)})
        assert resp.status_code == 201, resp.text
    dana = await signed_in(people, "dana")
    page = await dana.get(f"/ui/models/{MODEL}")
    assert page.status_code == 200 and f"/ui/models/{MODEL}/monitoring" in page.text
    fragment = await dana.get(f"/ui/models/{MODEL}/monitoring")
    assert fragment.status_code == 200
    assert fragment.text.count("<svg") == 5  # one chart per declared metric
    assert "psi-drift 0.25" in fragment.text and "fairness-breach 0.8" in fragment.text
    assert "psi-drift (high: revalidate)" in fragment.text and 'action="/ui/models/' in fragment.text
    # the chart says its series in words too
    assert f"psi by period: {(today - timedelta(days=70)).isoformat()} 0.05" in fragment.text
    vera = await signed_in(people, "vera")
    assert 'action="/ui/models/' not in (await vera.get(f"/ui/models/{MODEL}/monitoring")).text

    # the revalidation the drift opened must be decided before a retirement (one gate at a time)
    await wait_for(env, pid, lambda s: s["current_stage"] == "revalidation")
    refused = await dana.post(f"/ui/models/{MODEL}/retire", {"reason": "replaced"},
                              csrf_from=f"/ui/models/{MODEL}")
    assert refused.status_code == 409 and "revalidation is open" in refused.text
    assert (await decide(env, "vera", pid, "revalidation", "approve", "drift explained")).status_code == 200
    await wait_for(env, pid, lambda s: s["current_stage"] is None and s["revalidations"] == 1)
    asked = await dana.post(f"/ui/models/{MODEL}/retire", {"reason": "replaced by 4.0", "replacement": "4.0.0"},
                            csrf_from=f"/ui/models/{MODEL}")
    assert asked.status_code == 303 and asked.headers["location"] == f"/ui/progressions/{pid}", asked.text[:300]
    state = await wait_for(env, pid, lambda s: s["current_stage"] == "retirement")
    assert state["retirement"]["replacement"] == "4.0.0"
    inbox = (await env.http.get("/api/v1/inbox", headers=env.auth("rita"))).json()["items"]
    assert pid in [i["progression_id"] for i in inbox]

    # the monitor identity never signs in to the web UI
    mona = people["mona"]
    await mona.post("/ui/login", {"token": env.tokens["mona"], "next": "/ui/models"}, csrf_from="/ui/login")
    assert (await mona.get("/ui/models")).status_code in (302, 303, 401, 403)


async def test_the_revalidation_and_retirement_gates_show_the_monitoring_history_and_the_breach(
        env: ApiEnv, people: dict[str, Browser]) -> None:
    """A reviewer at a triggered revalidation reads why it opened (rule, figures, period) at the top of the
    summary and the series with their thresholds; at the retirement gate the series again, no trigger."""
    pid = await _in_production(env)
    today = datetime.now(UTC).date()
    drift_period = (today - timedelta(days=10)).isoformat()
    for period, psi in (((today - timedelta(days=40)).isoformat(), 0.07), (drift_period, 0.42)):
        resp = await _post(env, "mona", {"period": period, "metrics": credit_metrics(psi=psi)})
        assert resp.status_code == 201, resp.text
    await wait_for(env, pid, lambda s: s["current_stage"] == "revalidation" and s["status"] == "in_production")
    vera = await signed_in(people, "vera")
    page = await vera.get(f"/ui/progressions/{pid}")
    assert page.status_code == 200, page.text[:300]
    summary = page.text.split('id="review-summary"', 1)[1].split("</section>", 1)[0]
    trigger = summary.split('id="summary-trigger"', 1)[1].split("</div>\n  </div>", 1)[0]
    assert summary.index('id="summary-trigger"') < summary.index("What is approved")  # at the top
    assert 'data-rule="psi-drift"' in trigger and f"<strong>{drift_period}</strong>" in trigger
    assert "psi.max() &gt; 0.25" in trigger and "bureau_score 0.42" in trigger
    history = page.text.split('id="monitoring-history"', 1)[1].split("</section>", 1)[0]
    assert history.count("<svg") == 5 and 'id="chart-monitoring-psi"' in history
    assert "psi-drift 0.25" in history and "fairness-breach 0.8" in history
    assert f"psi by period: {(today - timedelta(days=40)).isoformat()} 0.07; {drift_period} 0.42" in history
    assert "point bar-fail" in history  # the drift period is marked as breaching

    assert (await decide(env, "vera", pid, "revalidation", "approve", "drift explained")).status_code == 200
    await wait_for(env, pid, lambda s: s["current_stage"] is None and s["revalidations"] == 1)
    asked = await env.http.post(f"/api/v1/models/{MODEL}/retire", json={"reason": "replaced"},
                                headers=env.auth("dana"))
    assert asked.status_code == 202, asked.text
    await wait_for(env, pid, lambda s: s["current_stage"] == "retirement")
    rita = await signed_in(people, "rita")
    gate = await rita.get(f"/ui/progressions/{pid}")
    assert gate.status_code == 200 and 'id="review-summary"' in gate.text
    assert 'id="summary-trigger"' not in gate.text  # a retirement is asked, not triggered
    assert 'id="chart-monitoring-psi"' in gate.text.split('id="monitoring-history"', 1)[1]


async def test_a_model_in_production_without_an_open_gate_shows_no_monitoring_review(
        env: ApiEnv, people: dict[str, Browser]) -> None:
    pid = await _in_production(env)
    resp = await _post(env, "mona", {"period": _today(), "metrics": credit_metrics()})
    assert resp.status_code == 201, resp.text
    page = await (await signed_in(people, "vera")).get(f"/ui/progressions/{pid}")
    assert page.status_code == 200 and 'id="monitoring-history"' not in page.text
    assert 'id="summary-trigger"' not in page.text


async def test_the_override_form_is_shown_to_and_accepted_from_an_independent_risk_officer_only(
        env: ApiEnv, people: dict[str, Browser]) -> None:
    """The model page's retirement override: no form for the owner, an admin or the owning team's risk officer,
    and their hand-made posts are refused with the reason; an independent risk officer records it."""
    await _in_production(env)
    page = f"/ui/models/{MODEL}"
    rita = await signed_in(people, "rita")
    assert 'id="retirement-override"' not in (await rita.get(f"{page}/monitoring")).text  # nothing depends on it
    dep_pid = await _in_production(env, model={"id": "limit-setting", "name": "Limit setting"}, depends_on=[MODEL])
    form = {"reason": "limit setting moves to the 2027 scorecard"}
    officer_only = "needs one of: model_risk_officer"
    for who, status, words in (("dana", 403, officer_only), ("adam", 403, officer_only),
                               ("rory", 403, "independent of team")):
        browser = await signed_in(people, who)
        fragment = await browser.get(f"{page}/monitoring")
        assert fragment.status_code == 200 and 'id="retirement-override"' not in fragment.text, who
        refused = await browser.post(f"{page}/retirement-override", form, csrf_from=page)
        assert refused.status_code == status and words in refused.text, (who, refused.status_code, refused.text[:300])
    assert await env.count(RetirementOverride) == 0

    shown = await rita.get(f"{page}/monitoring")
    assert 'id="retirement-override"' in shown.text and dep_pid in shown.text
    blank = await rita.post(f"{page}/retirement-override", {"reason": "  "}, csrf_from=page)
    assert blank.status_code == 422 and "Say why" in blank.text
    accepted = await rita.post(f"{page}/retirement-override", form, csrf_from=page)
    assert accepted.status_code == 303 and accepted.headers["location"] == page, accepted.text[:300]
    async with env.sessionmaker() as session:
        rows = (await session.scalars(select(RetirementOverride))).all()
    assert [(r.granted_by_username, r.dependents, r.reason) for r in rows] == [("rita", [dep_pid], form["reason"])]
    asked = await env.http.post(f"/api/v1/models/{MODEL}/retire", json={"reason": "replaced"},
                                headers=env.auth("dana"))
    assert asked.status_code == 202 and asked.json()["retirement"]["override_id"] == rows[0].id, asked.text


async def test_a_tier_3_credit_start_is_revalidated_on_the_tier_3_cadence_and_says_so(
        env: ApiEnv, people: dict[str, Browser]) -> None:
    """The materiality tier set at start (spec ``materiality_tier``): recorded in progression.started, shown to
    the risk officers whose approval agrees to it, and the production cadence is the tier's (730 days, not the
    tier-1 policy's 365)."""
    pid, resp = await start(env, materiality_tier=3)
    assert resp.status_code == 201, resp.text
    started = await wait_audit(env, pid, "progression.started")
    assert started[0].payload["spec"]["materiality_tier"] == 3
    await wait_for(env, pid, lambda s: s["current_stage"] == "validation" and s["status"] == "awaiting_approval")
    assert (await decide(env, "vera", pid, "validation")).status_code == 200
    await wait_for(env, pid, lambda s: s["current_stage"] == "risk_review" and s["status"] == "awaiting_approval")
    page = await (await signed_in(people, "rita")).get(f"/ui/progressions/{pid}")
    summary = page.text.split('id="review-summary"', 1)[1].split("</dl>", 1)[0]
    assert '<strong id="summary-materiality">3</strong>' in summary and "approving agrees to it" in summary
    assert (await decide(env, "rita", pid, "risk_review")).status_code == 200
    assert (await decide(env, "rob", pid, "risk_review")).status_code == 200
    state = await wait_for(env, pid, lambda s: s["status"] == "in_production" and s["revalidation_due_at"])
    assert state["monitoring"]["tier"] == 3
    deployed, due = (datetime.fromisoformat(state[k]) for k in ("deployed_at", "revalidation_due_at"))
    assert due - deployed == timedelta(days=730)

    # unset, the policy's risk tier 1 holds: a year
    other, resp = await start(env, model={"id": "retail-credit-tier1", "name": "Tier 1"})
    assert resp.status_code == 201, resp.text
    assert (await wait_audit(env, other, "progression.started"))[0].payload["spec"].get("materiality_tier") is None


async def test_a_developer_cannot_buy_a_slower_cadence_where_no_risk_officer_approves(
        sqlite_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> None:
    """The attack through the API: the same tier-3 start on a credit policy whose route no risk officer
    approves is refused (422, code tier_needs_risk_officer naming the field and line); nothing starts. A tier
    outside 1..3 is refused on its field too."""
    policies = tmp_path / "policies"
    shutil.copytree(PROJECT_ROOT / "policies", policies)
    credit = policies / "credit-underwriting.yaml"
    credit.write_text(credit.read_text().replace("      - role: model_risk_officer\n        count: 2\n",
                                                 "      - role: model_validator\n        count: 1\n"))
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue,
                       policies=PolicyRegistry.from_dir(policies)) as e:
        pid, resp = await start(e, materiality_tier=3)
        assert resp.status_code == 422, resp.text
        body = resp.json()
        assert body["code"] == "invalid_spec" and "no model risk officer approves" in body["message"]
        assert [(d["field"], d["type"]) for d in body["details"]] == [("materiality_tier", "tier_needs_risk_officer")]
        assert body["details"][0]["line"]
        for bad in (0, 4, "1"):
            refused = (await start(e, materiality_tier=bad))[1]
            assert refused.status_code == 422 and refused.json()["details"][0]["field"] == "materiality_tier", bad
        assert (await e.http.get(f"/api/v1/progressions/{pid}", headers=e.auth("dana"))).status_code == 404
        ok, resp = await start(e, materiality_tier=1)  # as material as the policy: the developer's to set
        assert resp.status_code == 201, resp.text


async def test_a_monitoring_identity_takes_two_admins_and_no_admin_holds_its_credential(env: ApiEnv) -> None:
    adam = env.auth("adam")
    for roles in (["monitor", "model_developer"], ["monitor", "admin"]):
        r = await env.http.post("/api/v1/users", json={"username": "mixed", "roles": roles, "team": "retail-risk"},
                                headers=adam)
        assert r.status_code == 422 and r.json()["code"] == "service_identity_alone", r.text
    r = await env.http.post(f"/api/v1/users/{env.user_ids['dana']}/role-grants", json={"role": "monitor"},
                            headers=adam)
    assert r.status_code == 409 and r.json()["code"] == "service_identity_alone", r.text
    # the existing monitor: an admin cannot mint a token that posts figures as it
    r = await env.http.post(f"/api/v1/users/{env.user_ids['mona']}/tokens", json={"name": "x"}, headers=adam)
    assert r.status_code == 403 and r.json()["code"] == "self_enrollment_required", r.text
    r = await env.http.post("/api/v1/users", json={"username": "scoring-monitor", "roles": ["monitor"]},
                            headers=adam)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["token"] is None and created["user"]["roles"] == []
    grant = created["user"]["grants"][0]
    assert grant["status"] == "pending" and grant["role"] == "monitor"
    r = await env.http.post(f"/api/v1/role-grants/{grant['id']}/approve", headers=adam)
    assert r.status_code == 403 and r.json()["code"] == "same_admin"
    async with env.sessionmaker() as session:
        tokens, _ = await create_people(session, {"ada": (["admin"], "platform")})
        await session.commit()
    r = await env.http.post(f"/api/v1/role-grants/{grant['id']}/approve",
                            headers={"Authorization": f"Bearer {tokens['ada']}"})
    assert r.status_code == 200, r.text
    r = await env.http.post(f"/api/v1/users/{created['user']['id']}/tokens", json={}, headers=adam)
    assert r.status_code == 403 and r.json()["code"] == "self_enrollment_required"


async def test_a_stored_result_whose_delivery_was_interrupted_is_delivered_by_the_retry(env: ApiEnv) -> None:
    """Stored first, then delivered: a result stored when the API died before delivering it is delivered (once)
    by the monitoring job's retry of the same document."""
    pid = await _in_production(env)
    period = datetime.now(UTC).date() - timedelta(days=5)
    metrics = credit_metrics(psi=0.3)
    async with env.sessionmaker() as session:  # what the first attempt left behind
        session.add(MonitoringResultRow(
            id="MR-interrupted", model_id=MODEL, version_id=pid.split("@")[1], progression_id=pid, team="retail-risk",
            period=period.isoformat(), metrics=metrics, digest=results_digest(metrics), posted_by=env.user_ids["mona"],
            posted_at=datetime.now(UTC), delivered=False))
        await session.commit()
    retry = await _post(env, "mona", {"period": period.isoformat(), "metrics": metrics})
    assert retry.status_code == 201, retry.text
    assert retry.json()["result_id"] == "MR-interrupted" and retry.json()["delivered"] is True
    assert [b["rule_id"] for b in retry.json()["breaches"]] == ["psi-drift"]
    again = await _post(env, "mona", {"period": period.isoformat(), "metrics": metrics})
    assert again.json()["result_id"] == "MR-interrupted"
    state = await wait_for(env, pid, lambda s: s["current_stage"] == "revalidation")
    assert state["monitoring"]["results"] == {"MR-interrupted": period.isoformat()}
    assert len(await audit_events(env, pid, "monitoring.received")) == 1


async def test_the_sdk_posts_reads_and_asks(env: ApiEnv) -> None:
    await _in_production(env)

    def sdk(who: str) -> AsyncProgressionClient:
        return AsyncProgressionClient("http://api.test", env.tokens[who], transport=httpx.ASGITransport(app=env.app))

    async with sdk("mona") as mona, sdk("ann") as ann, sdk("rita") as rita, sdk("dana") as dana:
        stored = await mona.post_monitoring(MODEL, _today(), credit_metrics(auc=0.6))
        assert [b.rule_id for b in stored.breaches] == ["auc-decay"] and stored.delivered
        history = await ann.monitoring(MODEL)
        assert [r.result_id for r in history.results] == [stored.result_id]
        with pytest.raises(InvalidInput) as invalid:
            await mona.post_monitoring(MODEL, _today(), {**credit_metrics(), "gini": 0.1})
        assert invalid.value.code == "unknown_metric"
        with pytest.raises(ConflictError) as conflict:
            await rita.retirement_override(MODEL, "no one depends on it")
        assert conflict.value.code == "no_dependents"
        with pytest.raises(Forbidden):
            await ann.post_monitoring(MODEL, _today(), credit_metrics())
        asked = await dana.retire(MODEL, "replaced", replacement="4.0.0")
        assert asked.retirement is not None and asked.retirement.replacement == "4.0.0"
