"""Every write retried after a dropped response leaves exactly one effect, and the retry gets the first answer.

The client's first request reaches the real app (real database, worker and Temporal dev server)
and runs to the end; the transport then drops the response, as a network or a client timeout
does, and the client retries with the same ``Idempotency-Key``. Nothing inside the app is
replaced. A second family of tests gives up on the first request while the server is still
working on it, and a third replays the effect-applied-but-answer-lost case the crash harness
found (a 5xx after the workflow had applied the change, so no answer was stored).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import delete, func, select
from temporalio.client import Client

from engine.db import (
    ApiToken,
    AuditEvent,
    DecisionRow,
    Feature,
    IdempotencyRecord,
    ModelVersion,
    ProgressionEvidence,
    ProgressionRow,
    User,
)
from testing.api import (
    CREDIT,
    ApiEnv,
    api_env,
    at_gate,
    upload,
    wait_for,
)
from testing.polling import eventually


class DroppingTransport(httpx.AsyncBaseTransport):
    """Forwards each request to the app; when armed, lets the app answer and drops that answer."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.drop_next = False
        self.dropped: list[httpx.Response] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if self.drop_next:
            self.drop_next = False
            await response.aread()
            self.dropped.append(response)
            raise httpx.ReadTimeout("the response was lost on the way back", request=request)
        return response


@pytest.fixture
async def env(database_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> AsyncIterator[ApiEnv]:
    async with api_env(database_url, tmp_path, temporal_client, task_queue) as e:
        yield e


async def send_dropped_then_retry(env: ApiEnv, method: str, url: str, who: str, key: str,
                                  **kw: Any) -> tuple[httpx.Response, httpx.Response]:
    """(the first answer, which the client never saw; the retry's answer)."""
    transport = DroppingTransport(httpx.ASGITransport(app=env.app))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test", timeout=60) as http:
        headers = {**env.auth(who), "Idempotency-Key": key}
        transport.drop_next = True
        with pytest.raises(httpx.ReadTimeout):
            await http.request(method, url, headers=headers, **kw)
        retry = await http.request(method, url, headers=headers, **kw)
    assert len(transport.dropped) == 1
    return transport.dropped[0], retry


def assert_first_answer(first: httpx.Response, retry: httpx.Response, *, replayed: bool = True) -> None:
    assert retry.status_code == first.status_code, (first.text, retry.text)
    assert retry.json() == first.json()
    if replayed:
        assert retry.headers.get("Idempotent-Replayed") == "true"


async def events(env: ApiEnv, event_type: str, **payload: str) -> list[AuditEvent]:
    async with env.sessionmaker() as session:
        rows = (await session.scalars(select(AuditEvent).where(AuditEvent.event_type == event_type))).all()
    return [r for r in rows if all((r.payload or {}).get(k) == v for k, v in payload.items())]


async def started(env: ApiEnv, repo: Path = CREDIT, who: str = "dana") -> str:
    pid, files = upload(repo)
    response = await env.http.post("/api/v1/progressions", files=files, headers=env.auth(who))
    assert response.status_code == 201, response.text
    return pid


# ---- dropped responses, one per write endpoint ------------------------------------------------------


async def test_start_dropped_response(env: ApiEnv) -> None:
    pid, files = upload(CREDIT)
    first, retry = await send_dropped_then_retry(env, "POST", "/api/v1/progressions", "dana", "start-1", files=files)
    assert first.status_code == 201, first.text
    assert_first_answer(first, retry)
    await wait_for(env, pid, at_gate("validation"))
    assert await env.count(ProgressionRow, ProgressionRow.id == pid) == 1
    assert await env.count(ModelVersion, ModelVersion.model_id == pid.split("@")[0],
                           ModelVersion.version_id == pid.split("@")[1]) == 1
    assert len([e for e in await events(env, "progression.started") if e.progression_id == pid]) == 1


async def test_decision_dropped_response(env: ApiEnv) -> None:
    pid = await started(env)
    await wait_for(env, pid, at_gate("validation"))
    body = {"stage": "validation", "decision": "approve", "comment": "independent validation done"}
    first, retry = await send_dropped_then_retry(env, "POST", f"/api/v1/progressions/{pid}/decisions", "vera",
                                                 "decide-1", json=body)
    assert first.status_code == 200, first.text
    assert_first_answer(first, retry)
    assert await env.count(DecisionRow, DecisionRow.progression_id == pid) == 1
    received = [e for e in await events(env, "decision.received") if e.progression_id == pid]
    assert len(received) == 1
    assert not [e for e in await events(env, "decision.refused") if e.progression_id == pid]
    await wait_for(env, pid, at_gate("risk_review"))


async def test_evidence_dropped_response(env: ApiEnv) -> None:
    pid = await started(env)
    await wait_for(env, pid, at_gate("validation"))
    card = (CREDIT / "docs" / "model_card.md").read_bytes() + b"\n\nAddendum: reviewed thresholds.\n"
    files = [("evidence.model_card", ("docs/model_card.md", card, "text/markdown"))]
    first, retry = await send_dropped_then_retry(env, "POST", f"/api/v1/progressions/{pid}/evidence", "dana",
                                                 "evidence-1", files=files)
    assert first.status_code == 200, first.text
    assert_first_answer(first, retry)
    submitted = [e for e in await events(env, "evidence.submitted") if e.progression_id == pid]
    assert len(submitted) == 1
    # The model card is read by registration: the journey went back there once, not twice.
    reruns = [e for e in await events(env, "stage.reopened") if e.progression_id == pid]
    assert len(reruns) == 1 and reruns[0].stage == "registration"
    state = await wait_for(env, pid, at_gate("validation"))
    assert next(s for s in state["stages"] if s["name"] == "validation")["attempt"] == 2
    assert await env.count(ProgressionEvidence, ProgressionEvidence.progression_id == pid,
                           ProgressionEvidence.name == "model_card") == 2  # the original and the new one


async def test_withdraw_dropped_response(env: ApiEnv) -> None:
    pid = await started(env)
    await wait_for(env, pid, at_gate("validation"))
    first, retry = await send_dropped_then_retry(env, "POST", f"/api/v1/progressions/{pid}/withdraw", "dana",
                                                 "withdraw-1", json={"reason": "superseded by 3.3"})
    assert first.status_code == 200, first.text
    assert first.json()["status"] == "withdrawn"
    assert_first_answer(first, retry)
    assert len([e for e in await events(env, "progression.withdrawn") if e.progression_id == pid]) == 1


async def test_create_user_dropped_response(env: ApiEnv) -> None:
    # An auditor: one admin gives the role and the token (deciding roles need two admins and an enrollment).
    body = {"username": "olivia", "roles": ["auditor"], "team": "audit"}
    first, retry = await send_dropped_then_retry(env, "POST", "/api/v1/users", "adam", "user-1", json=body)
    assert first.status_code == 201, first.text
    assert_first_answer(first, retry)  # the same token, issued once
    assert await env.count(User, User.username == "olivia") == 1
    user_id = first.json()["user"]["id"]
    assert await env.count(ApiToken, ApiToken.user_id == user_id) == 1
    assert len(await events(env, "user.created", username="olivia")) == 1
    token = first.json()["token"]["token"]
    me = await env.http.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["username"] == "olivia"


async def test_issue_token_dropped_response(env: ApiEnv) -> None:
    user_id = env.user_ids["ann"]  # an auditor (a decider's token is never issued by an admin)
    before = await env.count(ApiToken, ApiToken.user_id == user_id)
    first, retry = await send_dropped_then_retry(env, "POST", f"/api/v1/users/{user_id}/tokens", "adam", "token-1",
                                                 json={"name": "ci"})
    assert first.status_code == 201, first.text
    assert_first_answer(first, retry)
    assert await env.count(ApiToken, ApiToken.user_id == user_id) == before + 1
    assert len(await events(env, "token.issued", user_id=user_id)) == 1


async def test_dry_run_dropped_response(env: ApiEnv) -> None:
    _, files = upload(CREDIT)
    before = await env.count(AuditEvent)
    first, retry = await send_dropped_then_retry(env, "POST", "/api/v1/policies/credit-underwriting/dry-run",
                                                 "dana", "dry-1", files=files)
    assert first.status_code == 200, first.text
    assert_first_answer(first, retry, replayed=False)  # reads only: the same answer, computed again
    assert await env.count(AuditEvent) == before
    assert await env.count(ProgressionRow) == 0


async def test_put_feature_dropped_response(env: ApiEnv) -> None:
    body = {"description": "Months on book", "tags": ["relationship"]}
    first, retry = await send_dropped_then_retry(env, "PUT", "/api/v1/features/months_on_book", "adam", "put-1",
                                                 json=body)
    assert first.status_code == 200, first.text
    assert_first_answer(first, retry, replayed=False)  # PUT: the same state, nothing recorded twice
    assert await env.count(Feature, Feature.name == "months_on_book") == 1
    assert len(await events(env, "feature.updated", name="months_on_book")) == 1
    changed = await env.http.put("/api/v1/features/months_on_book", headers=env.auth("adam"),
                                 json={**body, "tags": ["relationship", "tenure"]})
    assert changed.status_code == 200
    assert len(await events(env, "feature.updated", name="months_on_book")) == 2  # a real change is recorded


# ---- the client gives up while the server is still working ----------------------------------------


async def test_decision_retried_while_first_in_flight(env: ApiEnv) -> None:
    """A client timeout mid-request: the retry waits for (or replays) the first answer; one decision."""
    pid = await started(env)
    await wait_for(env, pid, at_gate("validation"))
    headers = {**env.auth("vera"), "Idempotency-Key": "inflight-1"}
    body = {"stage": "validation", "decision": "approve", "comment": "reviewed"}
    url = f"/api/v1/progressions/{pid}/decisions"
    first = asyncio.create_task(env.http.post(url, json=body, headers=headers))  # keeps running server-side

    async def taken() -> bool:  # the client gives up once the server has taken the request
        return bool(await env.count(IdempotencyRecord, IdempotencyRecord.key == "inflight-1")) or first.done()

    await eventually(taken, "the first request's idempotency record")
    answers = []

    async def answered() -> httpx.Response | None:
        retry = await env.http.post(url, json=body, headers=headers)
        answers.append(retry.status_code)
        if retry.status_code != 409:
            return retry
        assert retry.json()["code"] == "idempotency_in_flight"
        return None

    retry = await eventually(answered, "the retry answered with the first request's answer")
    original = await first
    assert original.status_code == 200, original.text
    assert retry.status_code == 200 and retry.json() == original.json(), answers
    assert await env.count(DecisionRow, DecisionRow.progression_id == pid) == 1
    assert len([e for e in await events(env, "decision.received") if e.progression_id == pid]) == 1


# ---- effect applied, answer never stored (a 5xx after the workflow acted) -----------------------


async def _forget_answer(env: ApiEnv, who: str, key: str) -> None:
    """What a 5xx leaves behind: the reservation is dropped, the workflow has already acted."""
    async with env.sessionmaker() as session:
        await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.user_id == env.user_ids[who],
                                                               IdempotencyRecord.key == key))
        await session.commit()


async def test_decision_retry_after_unstored_answer_gets_200(env: ApiEnv) -> None:
    pid = await started(env)
    await wait_for(env, pid, at_gate("validation"))
    url = f"/api/v1/progressions/{pid}/decisions"
    approve = {"stage": "validation", "decision": "approve", "comment": "ok"}
    headers = {**env.auth("vera"), "Idempotency-Key": "lost-1"}
    assert (await env.http.post(url, json=approve, headers=headers)).status_code == 200
    await wait_for(env, pid, at_gate("risk_review"))
    await _forget_answer(env, "vera", "lost-1")
    # The validation gate is closed now; the retry is still the same (applied) decision, not a refusal.
    again = await env.http.post(url, json=approve, headers=headers)
    assert again.status_code == 200, again.text
    # A rejection closes the progression; its retry after a lost answer is still a 200.
    reject = {"stage": "risk_review", "decision": "reject", "comment": "outside appetite"}
    headers = {**env.auth("rita"), "Idempotency-Key": "lost-2"}
    assert (await env.http.post(url, json=reject, headers=headers)).status_code == 200
    await wait_for(env, pid, lambda s: s["status"] == "rejected")
    await _forget_answer(env, "rita", "lost-2")
    again = await env.http.post(url, json=reject, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "rejected"
    assert await env.count(DecisionRow, DecisionRow.progression_id == pid) == 2
    assert len([e for e in await events(env, "decision.received") if e.progression_id == pid]) == 2
    assert not [e for e in await events(env, "decision.refused") if e.progression_id == pid]
    # Someone else's new decision on the closed progression is still refused.
    other = await env.http.post(url, json={**reject, "comment": "me too"},
                                headers={**env.auth("rob"), "Idempotency-Key": "lost-3"})
    assert other.status_code == 409


async def test_start_retry_after_unstored_answer_gets_201(env: ApiEnv) -> None:
    pid, files = upload(CREDIT)
    headers = {**env.auth("dana"), "Idempotency-Key": "start-lost-1"}
    assert (await env.http.post("/api/v1/progressions", files=files, headers=headers)).status_code == 201
    await wait_for(env, pid, at_gate("validation"))
    await _forget_answer(env, "dana", "start-lost-1")
    # The retry recognises the workflow it started (memo) and answers with its state, not 409.
    again = await env.http.post("/api/v1/progressions", files=files, headers=headers)
    assert again.status_code == 201, again.text
    assert again.json()["progression_id"] == pid and again.json()["status"] == "awaiting_approval"
    assert len([e for e in await events(env, "progression.started") if e.progression_id == pid]) == 1
    # The same spec under another key (or from another developer) is a second start: 409 naming the first.
    other = await env.http.post("/api/v1/progressions", files=files,
                                headers={**env.auth("dana"), "Idempotency-Key": "start-lost-2"})
    assert other.status_code == 409 and other.json()["details"]["progression_id"] == pid


async def test_withdraw_retry_after_unstored_answer_gets_200(env: ApiEnv) -> None:
    pid = await started(env)
    await wait_for(env, pid, at_gate("validation"))
    url = f"/api/v1/progressions/{pid}/withdraw"
    headers = {**env.auth("dana"), "Idempotency-Key": "wd-1"}
    assert (await env.http.post(url, json={"reason": "superseded"}, headers=headers)).status_code == 200
    await _forget_answer(env, "dana", "wd-1")
    again = await env.http.post(url, json={"reason": "superseded"}, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["status"] == "withdrawn"
    assert len([e for e in await events(env, "progression.withdrawn") if e.progression_id == pid]) == 1
    # A different withdrawal request (another key) is told the progression is closed.
    other = await env.http.post(url, json={"reason": "again"}, headers={**env.auth("dario"),
                                                                         "Idempotency-Key": "wd-2"})
    assert other.status_code == 409 and other.json()["code"] == "progression_closed"


async def test_idempotency_rows_one_per_key(env: ApiEnv) -> None:
    """Retries never add reservations: one row per (user, key)."""
    pid = await started(env)
    await wait_for(env, pid, at_gate("validation"))
    await send_dropped_then_retry(env, "POST", f"/api/v1/progressions/{pid}/withdraw", "dana", "once",
                                  json={"reason": "r"})
    async with env.sessionmaker() as session:
        n = await session.scalar(select(func.count()).select_from(IdempotencyRecord).where(
            IdempotencyRecord.key == "once"))
    assert n == 1
