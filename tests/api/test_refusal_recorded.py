"""A refused decision is recorded exactly once, whatever the API could or could not ask the workflow.

Found by the crash harness's stale decisions under faults:
- with no worker to answer the state query, the API fell back to the read-model snapshot (no
  pre-check) and sent the decision to a workflow that had already closed; Temporal's NOT_FOUND
  became ``409 progression_closed`` with no ``decision.refused`` in the audit trail;
- the refusal's event id was random, so a retry that ran again after its first answer was lost
  (an API process killed between recording the refusal and storing the answer) recorded it twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete
from temporalio.client import Client

from activities.notify import LogNotifier
from activities.progression import ProgressionActivities
from activities.promotion import RecordingPromotionTarget
from api.services import progressions
from engine.db import IdempotencyRecord
from engine.evidence import EvidenceStore
from launch.worker import build_worker
from testing.api import (
    ApiEnv,
    api_env,
    audit_events,
    decide,
    started_at_gate,
    wait_read_model,
)
from testing.temporal import tolerate_slow_activations


@pytest.fixture
async def env(database_url: str, tmp_path: Path, temporal_client: Client, task_queue: str) -> AsyncIterator[ApiEnv]:
    async with api_env(database_url, tmp_path, temporal_client, task_queue, worker=False) as e:
        yield e


async def test_stale_decision_on_a_closed_progression_without_workers_is_recorded(
        env: ApiEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The attack: decide on a withdrawn progression while no worker answers, hoping to leave no trace."""
    activities = ProgressionActivities(env.sessionmaker, EvidenceStore(env.settings.evidence_dir),
                                       RecordingPromotionTarget(), LogNotifier())
    async with tolerate_slow_activations(build_worker(env.temporal, task_queue=env.task_queue, activities=activities)):
        pid, _ = await started_at_gate(env)
        withdrawn = await env.http.post(f"/api/v1/progressions/{pid}/withdraw", json={"reason": "superseded"},
                                        headers=env.auth("dana"))
        assert withdrawn.status_code == 200, withdrawn.text
        await wait_read_model(env, pid, lambda row: row.status == "withdrawn")
    # No worker now: the state query fails, the API only has the snapshot. No worker can answer, so the
    # query's deadline only decides how long each request waits for nothing (10 s in the product).
    monkeypatch.setattr(progressions, "QUERY_TIMEOUT", timedelta(seconds=1))
    answer = await decide(env, "vera", pid, "validation", **{"Idempotency-Key": "stale-1"})
    assert answer.status_code == 409, answer.text
    assert answer.json()["code"] == "progression_closed"
    refused = await audit_events(env, pid, "decision.refused")
    assert [e.payload["code"] for e in refused] == ["progression_closed"]
    assert refused[0].actor_id == env.user_ids["vera"]

    # The answer is lost as if the API had died before storing it: the retry runs again, records nothing twice.
    async with env.sessionmaker() as session:
        await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.key == "stale-1"))
        await session.commit()
    again = await decide(env, "vera", pid, "validation", **{"Idempotency-Key": "stale-1"})
    assert (again.status_code, again.json()["code"]) == (409, "progression_closed")
    assert len(await audit_events(env, pid, "decision.refused")) == 1
    # Another request (another key) is another refusal.
    other = await decide(env, "vera", pid, "validation", **{"Idempotency-Key": "stale-2"})
    assert other.status_code == 409
    assert len(await audit_events(env, pid, "decision.refused")) == 2
