"""Patch ``lean-update-results``: Updates answer with seq, status and stage, not the state; the HTTP answers stay.

The same journey through the API (a request for changes, evidence that answers it, the validator's approval, a risk
officer's approval, a withdrawal) runs with the patch (what a progression starts with today) and with it turned off
(every progression started before it, which still answers with the state). Either way each HTTP answer is the
state the Update left behind: a decision that leaves the workflow waiting answers exactly what a ``GET`` right after
returns. The histories differ where the patch acts: with it every Update result is a few hundred bytes and holds no
state; without it the decisions' results hold the whole state (about 16 KB each).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner

from activities.notify import LogNotifier
from activities.progression import ProgressionActivities
from activities.promotion import RecordingPromotionTarget
from engine.evidence import EvidenceStore
from launch.worker import build_worker
from testing.api import ApiEnv, api_env, at_gate, decide, get_state, start, wait_for
from testing.workflow import CREDIT, patch_off
from workflows.progression import PATCH_LEAN_RESULTS


async def _update_results(client: Client, pid: str) -> list[tuple[str, dict[str, Any], int]]:
    """(Update name, decoded result, payload bytes) of every Update the progression's history completed."""
    names: dict[str, str] = {}
    out: list[tuple[str, dict[str, Any], int]] = []
    async for event in client.get_workflow_handle(pid).fetch_history_events():
        if event.HasField("workflow_execution_update_accepted_event_attributes"):
            accepted = event.workflow_execution_update_accepted_event_attributes
            names[accepted.protocol_instance_id] = accepted.accepted_request.input.name
        elif event.HasField("workflow_execution_update_completed_event_attributes"):
            completed = event.workflow_execution_update_completed_event_attributes
            if completed.outcome.HasField("success"):
                data = completed.outcome.success.payloads[0].data
                out.append((names[completed.meta.update_id], json.loads(data), len(data)))
    return out


# What GET adds to the detail page's answer and no action answers (before the patch either): who the ids are, lineage.
DETAIL_ONLY = {"people", "lineage"}


async def _as_get(env: ApiEnv, pid: str, who: str, answer: dict[str, Any]) -> None:
    """The action's answer is what ``GET`` returns right after (the state, the caller's actions), field by field."""
    got = (await env.http.get(f"/api/v1/progressions/{pid}", headers=env.auth(who))).json()
    assert answer.keys() == got.keys()
    for key in answer.keys() - DETAIL_ONLY:
        assert answer[key] == got[key], key


async def _journey(env: ApiEnv) -> str:
    pid, resp = await start(env, "dana")
    assert resp.status_code == 201, resp.text
    await wait_for(env, pid, at_gate("validation"))

    # A request for changes leaves the workflow waiting for evidence: the answer is what GET shows after.
    asked = await decide(env, "vera", pid, "validation", "request_changes", "add the out-of-time sample")
    assert asked.status_code == 200, asked.text
    assert asked.json()["status"] == "changes_requested"
    await _as_get(env, pid, "vera", asked.json())

    metrics = (CREDIT / "evidence/metrics.json").read_bytes() + b"\n"
    sent = await env.http.post(f"/api/v1/progressions/{pid}/evidence", headers=env.auth("dario"),
                               files=[("evidence.metrics", ("metrics.json", metrics, "application/json"))])
    assert sent.status_code == 200, sent.text
    answer = sent.json()
    assert answer["current_stage"] == "validation" and answer["status"] == "awaiting_approval"
    assert answer["evidence"]["metrics"]["added_by"] == env.user_ids["dario"]
    assert next(s for s in answer["stages"] if s["name"] == "validation")["attempt"] == 2
    assert answer["seq"] <= (await get_state(env, pid))["seq"]

    assert (await decide(env, "vera", pid, "validation", "approve", "validated")).status_code == 200
    await wait_for(env, pid, at_gate("risk_review"))
    # One of two risk approvals: the gate stays open, the workflow waits; the answer is GET's.
    approved = await decide(env, "rita", pid, "risk_review", "approve", "residual risk accepted")
    assert approved.status_code == 200, approved.text
    review = next(s for s in approved.json()["stages"] if s["name"] == "risk_review")
    assert [d["actor_id"] for d in review["decisions"]] == [env.user_ids["rita"]]
    await _as_get(env, pid, "rita", approved.json())

    gone = await env.http.post(f"/api/v1/progressions/{pid}/withdraw", json={"reason": "superseded"},
                               headers=env.auth("dario"))
    assert gone.status_code == 200, gone.text
    assert gone.json()["status"] == "withdrawn"
    await _as_get(env, pid, "dario", gone.json())
    return pid


@pytest.mark.parametrize("lean", [True, False], ids=["lean-update-results", "before-the-patch"])
async def test_lean_update_results_leave_every_http_answer_unchanged(lean: bool, sqlite_url: str, tmp_path: Path,
                                                                     temporal_client: Client,
                                                                     task_queue: str) -> None:
    async with api_env(sqlite_url, tmp_path, temporal_client, task_queue, worker=False) as env:
        activities = ProgressionActivities(env.sessionmaker, EvidenceStore(env.settings.evidence_dir),
                                           RecordingPromotionTarget(), LogNotifier(), audit_chain=True)
        with contextlib.nullcontext() if lean else patch_off(PATCH_LEAN_RESULTS):
            async with build_worker(temporal_client, task_queue=task_queue, activities=activities,
                                    workflow_runner=UnsandboxedWorkflowRunner()):
                pid = await _journey(env)
        answers = await _update_results(temporal_client, pid)

    kinds = [name for name, _, _ in answers]
    assert kinds == ["decide", "submit_evidence", "decide", "decide", "withdraw"]
    if lean:
        assert all(a.get("state") is None and a["seq"] > 0 for _, a, _ in answers)
        assert all(size < 1024 for _, _, size in answers), answers
    else:  # the whole state: in the decisions' results, and as the evidence and withdrawal answers themselves
        assert all(a["state"]["progression_id"] == pid for name, a, _ in answers if name == "decide")
        assert all(a["progression_id"] == pid for name, a, _ in answers if name != "decide")
        assert all(size > 8 * 1024 for _, _, size in answers)
