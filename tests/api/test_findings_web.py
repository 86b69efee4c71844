"""Findings in the web UI (server-rendered, through signed-in cookie sessions): a validator approves with
conditions on the gate page, the developer sees them as to-dos and remediates one, an independent validator
closes it; the register filters, ages and exports; refusals are shown in place with the server's reason."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

from engine.db import utcnow
from testing.api import ApiEnv, at_gate, start, wait_for
from testing.findings import eventually
from tests.api import test_web_ui
from tests.api.test_web_ui import Browser, signed_in

people = test_web_ui.people  # the web UI tests' browsers (env: tests/api/conftest.py)


async def test_conditional_approval_todos_remediation_and_register(env: ApiEnv, people: dict[str, Browser]) -> None:
    pid, resp = await start(env)
    assert resp.status_code == 201, resp.text
    model = pid.split("@")[0]
    await wait_for(env, pid, at_gate("validation"))

    vera = await signed_in(people, "vera")
    page = await vera.get(f"/ui/progressions/{pid}")
    assert page.status_code == 200 and 'id="conditions-form"' in page.text
    form = {"stage": "validation", "comment": "validated with conditions", "decision_nonce": "a" * 32,
            "condition_0_severity": "medium", "condition_0_title": "Out-of-time sample too short",
            "condition_1_severity": "low", "condition_1_title": "Document the reject inference"}
    done = await vera.post(f"/ui/progressions/{pid}/conditional-approval", form, csrf_from=f"/ui/progressions/{pid}")
    assert done.status_code == 303 and done.headers["location"].endswith("?done=approve"), done.text[:500]
    state = await wait_for(env, pid, lambda s: len(s["findings"]) == 2)
    decision = state["stages"][1]["decisions"][-1]
    assert decision["actor_username"] == "vera" and len(decision["conditions"]) == 2

    # the gate page of the next stage shows the findings
    gate = await vera.get(f"/ui/progressions/{pid}")
    assert "Out-of-time sample too short" in gate.text and 'id="findings"' in gate.text

    # the developer's to-dos: her team's open findings with their due dates
    dana = await signed_in(people, "dana")
    todos = await dana.get("/ui/findings?open=1")
    assert todos.status_code == 200 and "Your team&#39;s findings" in todos.text
    assert "Out-of-time sample too short" in todos.text and "Document the reject inference" in todos.text
    sam = await signed_in(people, "sam")
    assert "Out-of-time sample too short" not in (await sam.get("/ui/findings")).text

    items = await eventually(lambda: _items(env, model), lambda i: len(i) == 2)
    fid = next(f["finding_id"] for f in items if f["severity"] == "medium")
    finding_page = await dana.get(f"/ui/findings/{fid}")
    assert 'id="remediation-form"' in finding_page.text and 'id="verification-form"' not in finding_page.text
    sent = await dana.post(f"/ui/findings/{fid}/remediation", {"note": "24 months of out-of-time data added"},
                           csrf_from=f"/ui/findings/{fid}")
    assert sent.status_code == 303, sent.text[:500]
    # the developer cannot close her own remediation: no form, and a forged post is refused in place
    mine = await dana.get(f"/ui/findings/{fid}")
    assert "remediation_submitted" in mine.text.replace(" ", "_") and 'id="verification-form"' not in mine.text
    forged = await dana.post(f"/ui/findings/{fid}/verification", {"outcome": "close", "comment": "done"},
                             csrf_from=f"/ui/findings/{fid}")
    assert forged.status_code == 403 and "someone else verifies it" in forged.text

    closing = await vera.get(f"/ui/findings/{fid}")
    assert 'id="verification-form"' in closing.text
    closed = await vera.post(f"/ui/findings/{fid}/verification", {"outcome": "close", "comment": "verified"},
                             csrf_from=f"/ui/findings/{fid}")
    assert closed.status_code == 303
    assert "The finding is closed." in (await vera.get(closed.headers["location"])).text

    # the register: filters, ageing, CSV; the model page's findings
    register = await vera.get(f"/ui/findings?model={model}&status=closed")
    assert fid in register.text and "Document the reject inference" not in register.text
    export = await vera.get(f"/ui/findings/export?model={model}")
    rows = list(csv.DictReader(io.StringIO(export.text)))
    assert {r["status"] for r in rows} == {"closed", "open"} and all(r["age_days"] == "0" for r in rows)
    fragment = await vera.get(f"/ui/models/{model}/findings", headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and 'id="model-findings"' in fragment.text and "<html" not in fragment.text
    assert (await sam.get(f"/ui/findings/{fid}")).status_code == 404


async def _items(api: ApiEnv, model: str) -> list[dict[str, object]]:
    resp = await api.http.get(f"/api/v1/findings?model={model}", headers=api.auth("ann"))
    return list(resp.json()["items"])


async def test_the_inbox_lists_exceptions_waiting_for_a_second_approver(env: ApiEnv,
                                                                        people: dict[str, Browser]) -> None:
    pid, resp = await start(env)
    assert resp.status_code == 201
    model, version = pid.split("@")
    await wait_for(env, pid, at_gate("validation"))
    expires = (utcnow() + timedelta(days=30)).isoformat()
    made = await env.http.post("/api/v1/exceptions", headers=env.auth("rita"), json={
        "model_id": model, "version_id": version, "kind": "pma", "magnitude": 0.03, "reason": "bureau feed overlay",
        "expires_at": expires})
    assert made.status_code == 201, made.text
    x = made.json()["exception_id"]
    rob = await signed_in(people, "rob")
    assert 'hx-get="/ui/findings/escalated"' in (await rob.get("/ui/inbox")).text
    assert x in (await rob.get("/ui/findings/escalated", headers={"HX-Request": "true"})).text
    rita = await signed_in(people, "rita")  # the maker is not asked to check her own request
    assert x not in (await rita.get("/ui/findings/escalated", headers={"HX-Request": "true"})).text
    rory = await signed_in(people, "rory")  # nor is a risk officer of the owning team
    assert x not in (await rory.get("/ui/findings/escalated", headers={"HX-Request": "true"})).text
