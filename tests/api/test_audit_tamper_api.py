"""Tampering with audit_events by a database user is detected through the API and the CLI.

A real app (uvicorn on loopback) over SQLite and PostgreSQL writes a chain of audit events through
ordinary API calls. Then a "database user" edits, deletes, inserts (with a correctly computed
hash) or reorders rows with plain SQL. ``GET /api/v1/audit/verify`` must answer ``ok: false``
naming the first bad event, and the real CLI (``progression audit verify``, a subprocess over
HTTP) must exit 1 and name the same event. Before tampering both say the chain is intact.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection
from temporalio.client import Client

from engine.audit import canonical_event, chain_hash
from testing.api import ApiEnv, api_env, serve_http

CLI = str(Path(sys.executable).with_name("progression"))



async def cli_verify(base_url: str, token: str, tmp_path: Path, *args: str) -> tuple[int, str]:
    """The installed `progression` CLI in a subprocess (this loop keeps serving the API meanwhile)."""
    env = {**os.environ, "PROGRESSION_URL": base_url, "PROGRESSION_TOKEN": token,
           "PROGRESSION_CONFIG": str(tmp_path / "none.toml"), "NO_COLOR": "1", "COLUMNS": "300"}
    proc = await asyncio.create_subprocess_exec(CLI, "audit", "verify", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def make_events(env: ApiEnv) -> None:
    """A chain written by ordinary API calls: feature writes, a user, a token (each one audit event)."""
    for i in range(6):
        r = await env.http.put(f"/api/v1/features/tamper_f{i}", json={"description": f"d{i}", "tags": ["t"]},
                               headers=env.auth("adam"))
        assert r.status_code == 200, r.text
    r = await env.http.post("/api/v1/users", json={"username": "tamper-user", "roles": ["auditor"]},
                            headers=env.auth("adam"))
    assert r.status_code == 201, r.text


async def rows(conn: AsyncConnection) -> list[dict[str, Any]]:
    result = await conn.execute(text("SELECT seq, event_id, prev_hash, hash FROM audit_events ORDER BY seq"))
    return [dict(r._mapping) for r in result]


# ---- the tampering, by kind: each returns (first bad seq, its event_id or None, problem kind) ----

Tamper = Callable[[AsyncConnection, list[dict[str, Any]]], Awaitable[tuple[int, str | None, str]]]


async def edit_actor(conn: AsyncConnection, evs: list[dict[str, Any]]) -> tuple[int, str | None, str]:
    target = evs[len(evs) // 2]
    await conn.execute(text("UPDATE audit_events SET actor_id = 'mallory' WHERE seq = :s"), {"s": target["seq"]})
    return target["seq"], target["event_id"], "edited"


async def edit_payload(conn: AsyncConnection, evs: list[dict[str, Any]]) -> tuple[int, str | None, str]:
    target = evs[len(evs) // 2 + 1]
    cast = "CAST(:p AS JSON)" if conn.dialect.name == "postgresql" else ":p"
    await conn.execute(text(f"UPDATE audit_events SET payload = {cast} WHERE seq = :s"),
                       {"p": json.dumps({"forged": True}), "s": target["seq"]})
    return target["seq"], target["event_id"], "edited"


async def edit_with_rehash(conn: AsyncConnection, evs: list[dict[str, Any]]) -> tuple[int, str | None, str]:
    """The forger recomputes the edited row's own hash: the NEXT row's link breaks."""
    target, after = evs[2], evs[3]
    row = (await conn.execute(text("SELECT * FROM audit_events WHERE seq = :s"), {"s": target["seq"]})).mappings().one()
    payload = row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"])
    payload["description"] = "forged"
    new_hash = chain_hash(row["prev_hash"], canonical_event(
        event_id=row["event_id"], event_type=row["event_type"], occurred_at=_dt(row["occurred_at"]),
        actor_id=row["actor_id"], progression_id=row["progression_id"], model_id=row["model_id"],
        stage=row["stage"], payload=payload))
    cast = "CAST(:p AS JSON)" if conn.dialect.name == "postgresql" else ":p"
    await conn.execute(text(f"UPDATE audit_events SET payload = {cast}, hash = :h WHERE seq = :s"),
                       {"p": json.dumps(payload), "h": new_hash, "s": target["seq"]})
    return after["seq"], after["event_id"], "broken_link"


async def delete_middle(conn: AsyncConnection, evs: list[dict[str, Any]]) -> tuple[int, str | None, str]:
    target = evs[len(evs) // 2]
    await conn.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": target["seq"]})
    return target["seq"], None, "missing"


async def delete_last(conn: AsyncConnection, evs: list[dict[str, Any]]) -> tuple[int, str | None, str]:
    target = evs[-1]
    await conn.execute(text("DELETE FROM audit_events WHERE seq = :s"), {"s": target["seq"]})
    return target["seq"], None, "missing"


def _dt(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


async def _forged_row(conn: AsyncConnection, seq: int, prev_hash: str) -> dict[str, Any]:
    """A plausible event whose own hash is computed correctly over its content."""
    occurred = datetime.now(UTC)
    payload = {"decision": "approve", "comment": "forged approval"}
    event_id = f"forged-{seq}"
    digest = chain_hash(prev_hash, canonical_event(event_id=event_id, event_type="decision.received",
                                                   occurred_at=occurred, actor_id="mallory", progression_id=None,
                                                   model_id=None, stage="risk_review", payload=payload))
    return {"seq": seq, "event_id": event_id, "event_type": "decision.received",
            "occurred_at": occurred.replace(tzinfo=None), "recorded_at": occurred.replace(tzinfo=None),
            "actor_id": "mallory", "stage": "risk_review", "payload": json.dumps(payload), "prev_hash": prev_hash,
            "hash": digest}


async def _insert(conn: AsyncConnection, row: dict[str, Any]) -> None:
    cast = "CAST(:payload AS JSON)" if conn.dialect.name == "postgresql" else ":payload"
    await conn.execute(text(
        "INSERT INTO audit_events (seq, event_id, event_type, occurred_at, recorded_at, actor_id, progression_id, "
        f"model_id, stage, payload, prev_hash, hash) VALUES (:seq, :event_id, :event_type, :occurred_at, "
        f":recorded_at, :actor_id, NULL, NULL, :stage, {cast}, :prev_hash, :hash)"), row)


async def insert_end(conn: AsyncConnection, evs: list[dict[str, Any]]) -> tuple[int, str | None, str]:
    last = evs[-1]
    row = await _forged_row(conn, last["seq"] + 1, last["hash"])
    await _insert(conn, row)
    return row["seq"], row["event_id"], "beyond_head"


async def insert_middle(conn: AsyncConnection, evs: list[dict[str, Any]]) -> tuple[int, str | None, str]:
    """Shift the tail up by one (highest first: seq is the key) and slip a forged event into the gap."""
    k = evs[len(evs) // 2]["seq"]
    for ev in reversed(evs):
        if ev["seq"] >= k:
            await conn.execute(text("UPDATE audit_events SET seq = seq + 1 WHERE seq = :s"), {"s": ev["seq"]})
    before = next(e for e in evs if e["seq"] == k - 1)
    await _insert(conn, await _forged_row(conn, k, before["hash"]))
    displaced = next(e for e in evs if e["seq"] == k)
    return k + 1, displaced["event_id"], "broken_link"


async def reorder(conn: AsyncConnection, evs: list[dict[str, Any]]) -> tuple[int, str | None, str]:
    a, b = evs[2], evs[4]
    await conn.execute(text("UPDATE audit_events SET seq = -1 WHERE seq = :s"), {"s": a["seq"]})
    await conn.execute(text("UPDATE audit_events SET seq = :t WHERE seq = :s"), {"s": b["seq"], "t": a["seq"]})
    await conn.execute(text("UPDATE audit_events SET seq = :t WHERE seq = -1"), {"t": b["seq"]})
    return a["seq"], b["event_id"], "broken_link"


TAMPERS: dict[str, Tamper] = {
    "edit_actor": edit_actor, "edit_payload": edit_payload, "edit_with_rehash": edit_with_rehash,
    "delete_middle": delete_middle, "delete_last": delete_last, "insert_end": insert_end,
    "insert_middle": insert_middle, "reorder": reorder,
}


@pytest.fixture
async def served(database_url: str, tmp_path: Path, temporal_client: Client,
                 task_queue: str) -> AsyncIterator[tuple[ApiEnv, str]]:
    async with api_env(database_url, tmp_path, temporal_client, task_queue, worker=False) as env:
        async with serve_http(env.app) as base_url:
            yield env, base_url


@pytest.mark.slow  # a CLI subprocess per case
@pytest.mark.parametrize("kind", list(TAMPERS))
async def test_tampering_is_detected_by_api_and_cli(served: tuple[ApiEnv, str], tmp_path: Path, kind: str) -> None:
    env, base_url = served
    await make_events(env)
    ok = (await env.http.get("/api/v1/audit/verify", headers=env.auth("ann"))).json()
    assert ok["ok"] is True and ok["events_checked"] >= 8, ok
    code, out = await cli_verify(base_url, env.tokens["ann"], tmp_path)
    assert code == 0 and "chain OK" in out, out

    async with env.engine.begin() as conn:  # the database user, straight to SQL
        seq, event_id, problem = await TAMPERS[kind](conn, await rows(conn))

    result = (await env.http.get("/api/v1/audit/verify", headers=env.auth("ann"))).json()
    assert result["ok"] is False, (kind, result)
    assert result["first_bad_seq"] == seq, (kind, result)
    assert result["first_bad_event_id"] == event_id, (kind, result)
    assert result["problem"].startswith(problem), (kind, result)

    code, out = await cli_verify(base_url, env.tokens["ann"], tmp_path)
    assert code == 1, (kind, code, out)
    assert f"chain BROKEN at event #{seq} ({event_id})" in out, (kind, out)
    assert problem in out
    code, out = await cli_verify(base_url, env.tokens["rita"], tmp_path, "--json")
    assert code == 1 and json.loads(out)["first_bad_seq"] == seq, out
    # Developers may not verify (the CLI says refused, exit 3), and the service is still up.
    code, _ = await cli_verify(base_url, env.tokens["dana"], tmp_path)
    assert code == 3
    assert (await env.http.get("/healthz")).status_code == 200
