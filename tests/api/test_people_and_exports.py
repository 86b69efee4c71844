"""People, not ids: audit events, exports and progressions name the person (username, display name) beside the
id; filters accept a username, and one that names nobody is refused (not answered with nothing); exports keep
UTF-8 text as text, the CSV with an optional byte order mark."""

from __future__ import annotations

import csv
import io
import json

from sqlalchemy import update

from engine.db import User
from testing.api import ApiEnv, decide, started_at_gate, wait_for
from tests.api import test_web_ui
from tests.api.test_web_ui import Browser, signed_in, stage_of

people = test_web_ui.people  # the web UI tests' browsers (env: tests/api/conftest.py)

COMMENT = "Validation complete: l'AUC tient — 同意"


async def _named_decision(env: ApiEnv) -> str:
    async with env.sessionmaker() as session:
        await session.execute(update(User).where(User.username == "vera").values(display_name="Vera Schäfer"))
        await session.commit()
    pid, _ = await started_at_gate(env, "dana")
    r = await decide(env, "vera", pid, "validation", comment=COMMENT)
    assert r.status_code == 200, r.text
    await wait_for(env, pid, lambda s: s["current_stage"] == "risk_review")
    return pid


async def test_audit_events_name_the_actor_and_filter_by_username(env: ApiEnv) -> None:
    pid = await _named_decision(env)
    by_id = await env.http.get(f"/api/v1/audit/events?progression={pid}&actor={env.user_ids['vera']}",
                               headers=env.auth("ann"))
    by_name = await env.http.get(f"/api/v1/audit/events?progression={pid}&actor=vera", headers=env.auth("ann"))
    assert by_id.status_code == by_name.status_code == 200
    items = by_name.json()["items"]
    assert items and [e["seq"] for e in items] == [e["seq"] for e in by_id.json()["items"]]
    assert all(e["actor_id"] == env.user_ids["vera"] and e["actor_username"] == "vera"
               and e["actor_display_name"] == "Vera Schäfer" for e in items)
    # Before: an unknown actor answered an empty page (200), indistinguishable from "did nothing".
    for url in ("/api/v1/audit/events?actor=no-such-person", "/api/v1/audit/export?actor=no-such-person"):
        r = await env.http.get(url, headers=env.auth("ann"))
        assert r.status_code == 422 and r.json()["code"] == "unknown_user", (url, r.text)
        assert "no-such-person" in r.json()["message"]


async def test_exports_keep_utf8_as_text_and_name_people(env: ApiEnv) -> None:
    pid = await _named_decision(env)
    jsonl = await env.http.get(f"/api/v1/audit/export?format=jsonl&progression={pid}", headers=env.auth("ann"))
    assert jsonl.status_code == 200
    text = jsonl.content.decode("utf-8")
    assert COMMENT in text and "\\u" not in text  # no \u540c, no \u0027
    decided = [json.loads(line) for line in text.splitlines() if '"decision.received"' in line]
    assert decided and decided[0]["actor_username"] == "vera" and decided[0]["actor_display_name"] == "Vera Schäfer"

    plain = await env.http.get(f"/api/v1/audit/export?format=csv&progression={pid}", headers=env.auth("ann"))
    assert not plain.content.startswith(b"\xef\xbb\xbf")
    bom = await env.http.get(f"/api/v1/audit/export?format=csv&bom=true&progression={pid}", headers=env.auth("ann"))
    assert bom.content.startswith(b"\xef\xbb\xbf") and bom.content[3:] == plain.content
    rows = list(csv.DictReader(io.StringIO(plain.content.decode("utf-8"))))
    row = next(r for r in rows if r["event_type"] == "decision.received")
    assert (row["actor_id"], row["actor_username"], row["actor_display_name"]) == (
        env.user_ids["vera"], "vera", "Vera Schäfer")
    assert COMMENT in row["payload"] and "\\u" not in row["payload"]
    refused = await env.http.get("/api/v1/audit/export?format=jsonl&bom=true", headers=env.auth("ann"))
    assert refused.status_code == 422 and refused.json()["code"] == "invalid_bom"


async def test_progressions_name_their_people(env: ApiEnv) -> None:
    pid = await _named_decision(env)
    detail = (await env.http.get(f"/api/v1/progressions/{pid}", headers=env.auth("ann"))).json()
    assert detail["people"][env.user_ids["vera"]] == {"id": env.user_ids["vera"], "username": "vera",
                                                      "display_name": "Vera Schäfer"}
    assert detail["people"][env.user_ids["dana"]]["username"] == "dana"
    assert stage_of(detail, "validation")["decisions"][0]["actor_id"] in detail["people"]
    listed = (await env.http.get(f"/api/v1/progressions?model={pid.split('@')[0]}", headers=env.auth("ann"))).json()
    mine = next(p for p in listed["items"] if p["id"] == pid)
    assert mine["submitted_by"] == env.user_ids["dana"] and mine["submitted_by_username"] == "dana"


async def test_the_audit_explorer_shows_names_and_text(env: ApiEnv, people: dict[str, Browser]) -> None:
    pid = await _named_decision(env)
    ann = await signed_in(people, "ann")
    page = await ann.get(f"/ui/audit?progression={pid}&actor=vera")
    assert page.status_code == 200
    assert "Vera Schäfer" in page.text and "同意" in page.text and "\\u540c" not in page.text
    assert "\\u0027" not in page.text
    unknown = await ann.get("/ui/audit?actor=no-such-person")
    assert unknown.status_code == 422 and "no-such-person" in unknown.text and "unknown_user" in unknown.text
    export = await ann.get(f"/ui/audit/export?format=csv&bom=true&progression={pid}")
    assert export.status_code == 200 and export.content.startswith(b"\xef\xbb\xbf")
    assert "Vera Schäfer" in export.content.decode("utf-8")
