"""Patch ``lean-payloads``: check runs carry what they read, not the state; nothing the reader sees changes.

The same credit journey (three check runs, an approval, a request for changes answered with new evidence that
re-opens the risk review, approvals, deployment) runs twice on the dev server, each on its own fresh database: once
with the patch (what a progression starts with today) and once with it turned off (what every progression did
before). The
read-model snapshot (every column, ``state`` field by field) and the audit trail (every event's type, stage, actor
and payload, in order) must be the same, up to what differs between any two runs: ids drawn at random, times,
and the version id the two workflows need to be told apart. The histories must differ where the patch acts: the
check runs' inputs hold no state and their results no texts of the stage definition.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from temporalio.api.history.v1 import History
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner

from activities.contract import full_results, lean_results
from engine.db import ProgressionRow
from engine.lifecycle import CheckResult
from engine.policy import CheckDef, StageDef
from engine.spec import spec_digest
from launch.worker import build_worker
from testing.workflow import (
    CREDIT,
    DEV2,
    RISK1,
    RISK2,
    VALIDATOR,
    Env,
    app_env,
    at_gate,
    decide,
    events,
    example_input,
    patch_off,
    put_evidence,
    start,
    submit,
    unique_version,
    wait_events,
    wait_state,
)
from workflows.progression import PATCH_LEAN

# Differ between any two runs of one journey: drawn at random or read from the clock.
# A basis hashes its parts, among them the spec's digest, which differs with the version id (compared as parts).
VOLATILE_KEYS = {"event_id", "deployment_id", "prev_hash", "hash", "seq", "basis", "basis_seen", "bases",
                 "request_id"}
ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}")


def _normal(value: Any, version: str, digest: str) -> Any:
    if isinstance(value, dict):
        return {k: "<volatile>" if k in VOLATILE_KEYS else _normal(v, version, digest) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v, version, digest) for v in value]
    if isinstance(value, str):
        if ISO_TIME.match(value):
            return "<time>"
        return value.replace(version, "<version>").replace(digest, "<spec digest>")
    return value


async def _journey(client: Client, env: Env, version: str) -> tuple[dict[str, Any], list[dict[str, Any]], History]:
    """The credit journey to production; (read-model row, audit events, history), normalised."""
    inp = await example_input(env, CREDIT, version={"id": version})
    pid, queue = inp.spec.progression_id, f"tq-{uuid.uuid4()}"
    async with build_worker(client, task_queue=queue, activities=env.activities,
                            workflow_runner=UnsandboxedWorkflowRunner()):
        handle = await start(client, inp, queue)
        await wait_state(handle, at_gate("validation"))
        await decide(handle, VALIDATOR, "validation", "approve", "validated", decision_id="d-val")
        await wait_state(handle, at_gate("risk_review"))
        await decide(handle, RISK1, "risk_review", "approve", "accepted", decision_id="d-risk1")
        await decide(handle, RISK2, "risk_review", "request_changes", "add the out-of-time note",
                     decision_id="d-risk2-changes")
        plan = (CREDIT / "docs/monitoring_plan.md").read_text() + "\nOut-of-time sample documented.\n"
        ref = await put_evidence(env, "monitoring_plan", plan.encode(), "docs/monitoring_plan.md")
        await submit(handle, DEV2, {"monitoring_plan": ref})
        await wait_state(handle, at_gate("risk_review"))
        await decide(handle, RISK1, "risk_review", "approve", "still fine", decision_id="d-risk1-again")
        await decide(handle, RISK2, "risk_review", "approve", "thanks", decision_id="d-risk2")
        await wait_state(handle, lambda s: s.status == "in_production")
        await wait_events(env, pid, "progression.in_production")
        history = History(events=[e async for e in handle.fetch_history_events()])
        await handle.terminate("test over")
    async with env.sessionmaker() as session:
        row = await session.get(ProgressionRow, pid)
        assert row is not None
        columns = {c.key: getattr(row, c.key) for c in ProgressionRow.__table__.columns}
    trail = [{"event_type": e.event_type, "stage": e.stage, "actor_id": e.actor_id, "model_id": e.model_id,
              "progression_id": e.progression_id, "payload": e.payload} for e in await events(env, pid)]
    rows = json.loads(json.dumps(columns, default=str))
    digest = spec_digest(inp.spec)
    return _normal(rows, version, digest), _normal(trail, version, digest), history


def _check_runs(history: History) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(input, result) of every evaluate_checks activity in a history, decoded."""
    scheduled: dict[int, dict[str, Any]] = {}
    runs = []
    for event in history.events:
        if event.HasField("activity_task_scheduled_event_attributes"):
            attrs = event.activity_task_scheduled_event_attributes
            if attrs.activity_type.name == "evaluate_checks":
                scheduled[event.event_id] = json.loads(attrs.input.payloads[0].data)
        elif event.HasField("activity_task_completed_event_attributes"):
            attrs2 = event.activity_task_completed_event_attributes
            if attrs2.scheduled_event_id in scheduled:
                runs.append((scheduled[attrs2.scheduled_event_id], json.loads(attrs2.result.payloads[0].data)))
    return runs


async def test_lean_payloads_leave_snapshot_and_audit_trail_unchanged(temporal_client: Client,
                                                                     tmp_path: Path) -> None:
    before_version, lean_version = unique_version()["id"], unique_version()["id"]
    async with app_env(f"sqlite+aiosqlite:///{tmp_path / 'before.db'}", tmp_path / "before") as env:
        with patch_off(PATCH_LEAN):
            row_before, trail_before, history_before = await _journey(temporal_client, env, before_version)
    async with app_env(f"sqlite+aiosqlite:///{tmp_path / 'lean.db'}", tmp_path / "lean") as env:
        row_lean, trail_lean, history_lean = await _journey(temporal_client, env, lean_version)

    # The snapshot: every column, and the state field by field (stages, checks with their texts and inputs, ...).
    assert row_lean.keys() == row_before.keys()
    for column in row_before:
        if column == "state":
            continue
        assert row_lean[column] == row_before[column], column
    state_before, state_lean = row_before["state"], row_lean["state"]
    assert state_lean.keys() == state_before.keys()
    for field in state_before:
        if field == "stages":
            for lean_stage, before_stage in zip(state_lean[field], state_before[field], strict=True):
                for key in before_stage:
                    assert lean_stage[key] == before_stage[key], (lean_stage["name"], key)
        assert state_lean[field] == state_before[field], field
    checks = [c for s in state_lean["stages"] for c in s["checks"]]
    assert len(checks) >= 6 and all(c["description"] and c["expr"] and c["inputs"] is not None for c in checks)
    # The audit trail: the same events, in the same order, with the same payloads.
    assert [e["event_type"] for e in trail_lean] == [e["event_type"] for e in trail_before]
    for lean, before in zip(trail_lean, trail_before, strict=True):
        for key in before["payload"]:
            assert lean["payload"][key] == before["payload"][key], (lean["event_type"], key)
        assert lean == before, lean["event_type"]
    assert sum(e["event_type"] == "check.evaluated" for e in trail_lean) >= 6

    # The histories differ where the patch acts: no state in, no stage texts out.
    runs_before, runs_lean = _check_runs(history_before), _check_runs(history_lean)
    assert len(runs_lean) == len(runs_before) == 3  # registration, validation, staging
    assert all(inp["state"] is not None and inp.get("subject") is None for inp, _ in runs_before)
    assert all(inp["state"] is None and set(inp["subject"]) == {"progression_id", "model_id", "evidence"}
               for inp, _ in runs_lean)
    lean_texts = [r for _, out in runs_lean for r in out["results"] if r["check_id"] != "features-registered"]
    assert lean_texts and all(r["description"] == "" and r["expr"] == "" for r in lean_texts)
    assert history_lean.ByteSize() < history_before.ByteSize()


def test_lean_results_round_trip_and_keep_what_the_stage_does_not_define() -> None:
    stage = StageDef(name="validation", description="v", checks=[
        CheckDef(id="auc", description="AUC at least 0.7", expr="evidence.metrics.auc >= 0.7")])
    full = [CheckResult(stage="validation", check_id="auc", description="AUC at least 0.7",
                        expr="evidence.metrics.auc >= 0.7", passed=True, reason="ok", inputs={"auc": 0.8}),
            CheckResult(stage="validation", check_id="features-registered", description="built in",
                        expr="features.all(f, f.registered)", passed=True, reason="ok"),
            # a result whose texts are not the stage's (e.g. evaluated before a policy edit) travels in full
            CheckResult(stage="validation", check_id="auc", description="older text", expr="x", passed=False,
                        reason="no")]
    lean = lean_results(stage, full)
    assert (lean[0].description, lean[0].expr, lean[0].inputs) == ("", "", {"auc": 0.8})
    assert lean[1] == full[1] and lean[2] == full[2]
    assert full_results(stage, lean) == full
