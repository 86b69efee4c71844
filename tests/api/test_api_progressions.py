"""Progressions through HTTP against a real worker and the Temporal dev server.

The whole credit journey with four people's tokens (SQLite here, PostgreSQL in
test_api_postgres.py); every forbidden combination of role, team and stage answers
403/404/409 and changes nothing but the decision.refused record; idempotent retries;
duplicate starts and malformed specs store nothing; audit paging under concurrent writes.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import uuid
from typing import Any

from sqlalchemy import select

from engine import audit as audit_mod
from engine.db import AuditEvent, CatalogModel, DecisionRow, EvidenceBlob, ModelVersion, ProgressionRow, utcnow
from testing.api import (
    CREDIT,
    ApiEnv,
    at_gate,
    audit_events,
    decide,
    get_state,
    start,
    started_at_gate,
    upload,
    wait_audit,
    wait_for,
    wait_read_model,
)


async def snapshot(env: ApiEnv, pid: str) -> dict[str, Any]:
    """Everything a refused request must leave alone."""
    state = await get_state(env, pid)
    events = await audit_events(env, pid)
    return {"status": state["status"], "stage": state["current_stage"],
            "decisions": [(s["name"], len(s["decisions"]), [a["approved_by"] for a in s["approvals"]])
                          for s in state["stages"]],
            "events": [e.event_id for e in events if e.event_type != "decision.refused"],
            "refused": len([e for e in events if e.event_type == "decision.refused"]),
            "decision_rows": await env.count(DecisionRow, DecisionRow.progression_id == pid)}


async def credit_journey(env: ApiEnv) -> None:
    """Developer starts; validator approves; two risk officers approve; the auditor reads, exports, verifies."""
    pid, resp = await start(env, "dana")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["progression_id"] == pid and body["submitted_by"] == env.user_ids["dana"]
    assert [s["name"] for s in body["stages"]][:3] == ["registration", "validation", "risk_review"]

    state = await wait_for(env, pid, at_gate("validation"))
    assert state["waiting_on"] == ["model_validator"]
    await wait_read_model(env, pid, lambda r: r.current_stage == "validation" and r.gate_opened_at is not None)
    inbox = (await env.http.get("/api/v1/inbox", headers=env.auth("vera"))).json()
    item = next(i for i in inbox["items"] if i["progression_id"] == pid)
    assert item["stage"] == "validation" and item["roles"] == ["model_validator"]
    assert item["seconds_to_sla"] is not None and item["seconds_to_sla"] > 0 and item["escalated"] is False
    for who in ("dana", "rita", "ann"):  # the submitter, a role the gate is not waiting on, a reader
        items = (await env.http.get("/api/v1/inbox", headers=env.auth(who))).json()["items"]
        assert pid not in [i["progression_id"] for i in items], who

    r = await decide(env, "vera", pid, "validation", "approve", "independent validation complete")
    assert r.status_code == 200, r.text
    validation = next(s for s in r.json()["stages"] if s["name"] == "validation")
    assert validation["decisions"][0]["actor_id"] == env.user_ids["vera"]

    await wait_for(env, pid, at_gate("risk_review"))
    await wait_read_model(env, pid, lambda r: r.current_stage == "risk_review")
    items = (await env.http.get("/api/v1/inbox", headers=env.auth("rita"))).json()["items"]
    assert pid in [i["progression_id"] for i in items]
    assert (await decide(env, "rita", pid, "risk_review", "approve", "residual risk accepted")).status_code == 200
    items = (await env.http.get("/api/v1/inbox", headers=env.auth("rita"))).json()["items"]
    assert pid not in [i["progression_id"] for i in items]  # already approved: left out
    assert (await decide(env, "rob", pid, "risk_review", "approve", "agree")).status_code == 200
    final = await wait_for(env, pid, lambda s: s["status"] == "in_production")
    assert final["deployed_at"] is not None

    # The auditor reads the whole trail page by page, exports it twice, and verifies the chain.
    await wait_read_model(env, pid, lambda r: r.status == "in_production")
    # The "finished" notification is the journey's last event; page only once it is written.
    await wait_audit(env, pid, "notification.sent", where=lambda e: e.payload.get("kind") == "finished")
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"progression": pid, "limit": 5}
        if cursor:
            params["cursor"] = cursor
        page = (await env.http.get("/api/v1/audit/events", params=params, headers=env.auth("ann"))).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            break
    seqs = [e["seq"] for e in seen]
    assert seqs == sorted(set(seqs)) and len(seqs) == len(await audit_events(env, pid))
    types = [e["event_type"] for e in seen]
    assert types[0] == "progression.started" and "deployment.recorded" in types
    received = [e for e in seen if e["event_type"] == "decision.received"]
    assert {e["actor_id"] for e in received} == {env.user_ids[p] for p in ("vera", "rita", "rob")}

    csv_resp = await env.http.get("/api/v1/audit/export", params={"format": "csv", "progression": pid},
                                  headers=env.auth("ann"))
    assert csv_resp.status_code == 200 and csv_resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(csv_resp.text)))
    assert [int(r["seq"]) for r in rows] == seqs and json.loads(rows[0]["payload"]) == seen[0]["payload"]
    jsonl = await env.http.get("/api/v1/audit/export", params={"format": "jsonl", "progression": pid},
                               headers=env.auth("ann"))
    lines = [json.loads(line) for line in jsonl.text.splitlines()]
    assert [e["seq"] for e in lines] == seqs and lines[-1]["hash"] == seen[-1]["hash"]
    verify = (await env.http.get("/api/v1/audit/verify", headers=env.auth("ann"))).json()
    assert verify["ok"] is True and verify["events_checked"] >= len(seqs)

    model = (await env.http.get("/api/v1/models/retail-credit-scorecard", headers=env.auth("ann"))).json()
    version = next(v for v in model["versions"] if v["progression_id"] == pid)
    assert version["status"] == "in_production" and version["revalidation_overdue"] is False
    listed = (await env.http.get("/api/v1/progressions", params={"status": "in_production",
                                                                 "model": "retail-credit-scorecard"},
                                 headers=env.auth("rita"))).json()
    assert pid in [p["id"] for p in listed["items"]] and listed["total"] >= 1


async def test_credit_journey_sqlite(env: ApiEnv) -> None:
    await credit_journey(env)


async def test_forbidden_decisions_change_nothing(env: ApiEnv) -> None:
    pid, _ = await started_at_gate(env, "dana")

    async def refused(who: str, stage: str, status: int, code: str | None, decision: str = "approve") -> None:
        before = await snapshot(env, pid)
        r = await decide(env, who, pid, stage, decision)
        assert r.status_code == status, (who, stage, r.text)
        if code:
            assert r.json()["code"] == code, (who, stage, r.json())
            assert r.json()["message"]  # says why
        after = await snapshot(env, pid)
        recorded = 0 if status == 404 and code == "not_found" else 1  # another team's: invisible, not recorded
        assert after == {**before, "refused": before["refused"] + recorded}, who
        if recorded:
            last = (await audit_events(env, pid, "decision.refused"))[-1]
            assert last.actor_id == env.user_ids[who] and last.payload["code"] == code
            assert last.payload["reason"] == r.json()["message"]

    await refused("dana", "validation", 403, "not_a_gate_role")      # the submitter (a developer)
    await refused("dario", "validation", 403, "not_a_gate_role")     # same team developer
    await refused("rita", "validation", 403, "not_a_gate_role")      # risk officer on a validator gate
    await refused("ann", "validation", 403, "not_a_gate_role")       # auditor
    await refused("adam", "validation", 403, "not_a_gate_role")      # admin
    await refused("val2", "validation", 403, "own_team")             # validator of the owning team
    await refused("sam", "validation", 404, "not_found")             # another team's developer: invisible
    await refused("vera", "risk_review", 409, "gate_not_open")       # stage not open yet
    await refused("vera", "no_such_stage", 404, "unknown_stage")
    # Actor fields in the body are rejected, never used.
    r = await env.http.post(f"/api/v1/progressions/{pid}/decisions", headers=env.auth("vera"),
                            json={"stage": "validation", "decision": "approve", "comment": "x",
                                  "actor_id": env.user_ids["rita"]})
    assert r.status_code == 422 and r.json()["code"] == "validation_error"

    assert (await decide(env, "vera", pid, "validation")).status_code == 200
    await wait_for(env, pid, at_gate("risk_review"))
    await refused("vera", "validation", 409, "gate_not_open")        # already passed
    await refused("rory", "risk_review", 403, "own_team")            # risk officer of the owning team
    assert (await decide(env, "rita", pid, "risk_review")).status_code == 200
    await refused("rita", "risk_review", 409, "already_decided")     # one person counts once

    # Withdrawal: only the owning team (or admin); afterwards the gate is closed.
    r = await env.http.post(f"/api/v1/progressions/{pid}/withdraw", json={"reason": "x"}, headers=env.auth("rita"))
    assert r.status_code == 403
    r = await env.http.post(f"/api/v1/progressions/{pid}/withdraw", json={"reason": "x"}, headers=env.auth("sam"))
    assert r.status_code == 404
    r = await env.http.post(f"/api/v1/progressions/{pid}/withdraw", json={"reason": "superseded by 3.3"},
                            headers=env.auth("dario"))
    assert r.status_code == 200 and r.json()["status"] == "withdrawn"
    await refused("rob", "risk_review", 409, "progression_closed")


async def test_concurrent_double_approval_counts_once(env: ApiEnv) -> None:
    pid, _ = await start(env, "dana")
    await wait_for(env, pid, at_gate("validation"))
    assert (await decide(env, "vera", pid, "validation")).status_code == 200
    await wait_for(env, pid, at_gate("risk_review"))
    results = await asyncio.gather(*(decide(env, "rita", pid, "risk_review") for _ in range(3)))
    assert sorted(r.status_code for r in results) == [200, 409, 409]
    state = await get_state(env, pid)
    review = next(s for s in state["stages"] if s["name"] == "risk_review")
    assert review["approvals"][0]["approved_by"] == [env.user_ids["rita"]]
    assert len(await audit_events(env, pid, "decision.refused")) == 2


async def test_idempotent_retries_write_nothing_twice(env: ApiEnv) -> None:
    key = {"Idempotency-Key": f"start-{uuid.uuid4()}"}
    pid, files = upload(CREDIT)
    first = await env.http.post("/api/v1/progressions", files=files, headers={**env.auth("dana"), **key})
    assert first.status_code == 201
    again = await env.http.post("/api/v1/progressions", files=files, headers={**env.auth("dana"), **key})
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    _, other = upload(CREDIT)
    reused = await env.http.post("/api/v1/progressions", files=other, headers={**env.auth("dana"), **key})
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"

    await wait_for(env, pid, at_gate("validation"))
    dkey = f"decide-{uuid.uuid4()}"
    r1 = await decide(env, "vera", pid, "validation", "approve", "ok", **{"Idempotency-Key": dkey})
    r2 = await decide(env, "vera", pid, "validation", "approve", "ok", **{"Idempotency-Key": dkey})
    assert r1.status_code == r2.status_code == 200 and r1.json() == r2.json()
    await wait_for(env, pid, at_gate("risk_review"))
    assert await env.count(DecisionRow, DecisionRow.progression_id == pid) == 1
    assert len(await audit_events(env, pid, "decision.received")) == 1
    r3 = await decide(env, "vera", pid, "validation", "reject", "changed my mind", **{"Idempotency-Key": dkey})
    assert r3.status_code == 422 and r3.json()["code"] == "idempotency_key_reused"
    # The same key from another person is another request (keys are per user).
    r4 = await decide(env, "rita", pid, "risk_review", "approve", "ok", **{"Idempotency-Key": dkey})
    assert r4.status_code == 200


async def test_duplicate_start_is_409_and_stores_nothing(env: ApiEnv) -> None:
    pid, resp = await start(env, "dana", version="9.9.9-" + uuid.uuid4().hex[:8])
    assert resp.status_code == 201
    version = pid.split("@", 1)[1]
    await wait_for(env, pid, at_gate("validation"))  # settled: the workflow writes nothing more meanwhile
    await wait_read_model(env, pid, lambda r: r.current_stage == "validation")
    await wait_audit(env, pid, "notification.sent")  # sent after the read model is written
    before = (await env.count(EvidenceBlob), await env.count(AuditEvent), await env.count(ModelVersion))
    # Different evidence bytes: had anything been stored, the blob count would move.
    _, files = upload(CREDIT, version=version, extra=None)
    files = [f if f[0] != "evidence.model_card" else
             ("evidence.model_card", ("docs/model_card.md", b"# changed\n" * 300, "text/markdown")) for f in files]
    r = await env.http.post("/api/v1/progressions", files=files, headers=env.auth("dario"))
    assert r.status_code == 409 and r.json()["code"] == "progression_exists"
    assert r.json()["details"]["progression_id"] == pid and pid in r.json()["message"]
    assert (await env.count(EvidenceBlob), await env.count(AuditEvent), await env.count(ModelVersion)) == before


async def test_malformed_or_forbidden_starts_store_nothing(env: ApiEnv) -> None:
    counts = [EvidenceBlob, AuditEvent, CatalogModel, ProgressionRow]
    before = [await env.count(m) for m in counts]
    good_pid, files = upload(CREDIT)
    text = files[0][1][1].decode()
    typo = text.replace("business_intent: credit-underwriting", "business_intent: credit-underwritting")
    _, bad = upload(CREDIT, text=typo)
    r = await env.http.post("/api/v1/progressions", files=bad, headers=env.auth("dana"))
    body = r.json()
    assert r.status_code == 422 and body["code"] == "invalid_spec"
    line = typo.splitlines().index("  business_intent: credit-underwritting") + 1
    assert body["message"].startswith(f"progression.yaml:{line}: model.business_intent: ")
    assert "did you mean 'credit-underwriting'" in body["message"]
    assert body["details"][0]["line"] == line and body["details"][0]["field"] == "model.business_intent"

    _, broken = upload(CREDIT, text=text.replace("model:\n", "model: [\n", 1))
    r = await env.http.post("/api/v1/progressions", files=broken, headers=env.auth("dana"))
    assert r.status_code == 422 and r.json()["message"].startswith("progression.yaml:")

    _, unknown = upload(CREDIT, extra={"secret_sauce": ("x.json", b"{}")})
    r = await env.http.post("/api/v1/progressions", files=unknown, headers=env.auth("dana"))
    assert r.status_code == 422 and r.json()["code"] == "unknown_evidence"

    r = await env.http.post("/api/v1/progressions", files=files, headers=env.auth("sam"))  # another team
    assert r.status_code == 403 and r.json()["code"] == "not_your_team"
    r = await env.http.post("/api/v1/progressions", files=files, headers=env.auth("ann"))  # auditor
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    r = await env.http.post("/api/v1/progressions", data={"x": "y"}, headers=env.auth("dana"))
    assert r.status_code in (415, 422)
    assert [await env.count(m) for m in counts] == before
    r = await env.http.get(f"/api/v1/progressions/{good_pid}", headers=env.auth("ann"))
    assert r.status_code == 404


async def test_request_changes_evidence_loop_and_team_visibility(env: ApiEnv) -> None:
    pid, _ = await start(env, "dana")
    await wait_for(env, pid, at_gate("validation"))
    r = await decide(env, "vera", pid, "validation", "request_changes", "add the out-of-time sample")
    assert r.status_code == 200 and r.json()["status"] == "changes_requested"
    metrics = (CREDIT / "evidence/metrics.json").read_bytes()
    r = await env.http.post(f"/api/v1/progressions/{pid}/evidence", headers=env.auth("sam"),
                            files=[("evidence.metrics", ("metrics.json", metrics, "application/json"))])
    assert r.status_code == 404  # another team's progression is invisible to a developer
    r = await env.http.post(f"/api/v1/progressions/{pid}/evidence", headers=env.auth("dario"),
                            files=[("evidence.metrics", ("metrics.json", metrics + b"\n", "application/json"))])
    assert r.status_code == 200, r.text
    state = await wait_for(env, pid, at_gate("validation"))
    assert next(s for s in state["stages"] if s["name"] == "validation")["attempt"] >= 1

    # Developers see their team's progressions and audit events only; others answer 404 / empty.
    assert (await env.http.get(f"/api/v1/progressions/{pid}", headers=env.auth("sam"))).status_code == 404
    assert (await env.http.get("/api/v1/models/retail-credit-scorecard", headers=env.auth("sam"))).status_code == 404
    listed = (await env.http.get("/api/v1/progressions", headers=env.auth("sam"))).json()
    assert listed["items"] == [] and listed["total"] == 0
    mine = (await env.http.get("/api/v1/audit/events", params={"progression": pid},
                               headers=env.auth("dana"))).json()
    assert mine["items"] and all(e["model_id"] == "retail-credit-scorecard" for e in mine["items"])
    theirs = (await env.http.get("/api/v1/audit/events", params={"progression": pid},
                                 headers=env.auth("sam"))).json()
    assert theirs["items"] == []
    r = await env.http.get("/api/v1/audit/export", headers=env.auth("dana"))
    assert r.status_code == 403


async def test_audit_paging_stays_correct_under_concurrent_writes(env: ApiEnv) -> None:
    pid, _ = await start(env, "dana")
    await wait_for(env, pid, at_gate("validation"))
    stop = asyncio.Event()

    async def writer() -> int:
        n = 0
        while not stop.is_set() or n < 30:
            async with env.sessionmaker() as session:
                await audit_mod.append_event(session, event_id=f"noise-{uuid.uuid4()}", event_type="notification.sent",
                                             occurred_at=utcnow(), progression_id=pid,
                                             model_id="retail-credit-scorecard", payload={"n": n})
                await session.commit()
            n += 1
            await asyncio.sleep(0)
        return n

    task = asyncio.create_task(writer())
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        # Whether the writer had finished is taken before the request: the last page must be read after the
        # last write committed (taken after it, a write racing the request could be missed on a loaded machine).
        writer_finished = task.done()
        params: dict[str, Any] = {"progression": pid, "limit": 7}
        if cursor:
            params["cursor"] = cursor
        page = (await env.http.get("/api/v1/audit/events", params=params, headers=env.auth("ann"))).json()
        seen += [e["seq"] for e in page["items"]]
        cursor = page["next_cursor"]
        pages += 1
        if pages == 3:
            stop.set()
        if not page["has_more"] and writer_finished:
            break
        if not page["has_more"]:
            await asyncio.sleep(0.01)
    written = await task
    assert seen == sorted(seen) and len(seen) == len(set(seen))  # no repeats, no reordering
    async with env.sessionmaker() as session:
        stored = list((await session.execute(select(AuditEvent.seq).where(AuditEvent.progression_id == pid)
                                             .order_by(AuditEvent.seq))).scalars())
        noise = set((await session.execute(select(AuditEvent.seq).where(
            AuditEvent.progression_id == pid, AuditEvent.event_id.like("noise-%")))).scalars())
    # Nothing skipped up to the last page; the workflow may still append its own events after it.
    assert seen == [s for s in stored if s <= seen[-1]]
    assert len(noise) == written and noise <= set(seen)  # every concurrent write was paged through
    bad = await env.http.get("/api/v1/audit/events", params={"cursor": "garbage!"}, headers=env.auth("ann"))
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_cursor"
