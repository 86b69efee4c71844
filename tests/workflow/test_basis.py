"""Approvals bind to the evidence they approved (issue 12), on the real dev server.

Each test is an attack by a developer who wants a weak model live: change evidence after the
validator approved it, at every point of the journey, and check that the approvals that no
longer match stop counting (the stage re-opens), or that the change is refused (frozen evidence,
a model being deployed or in production, spec identity), and that a decision made on what the
decider saw before the change is refused as ``stale_basis``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from temporalio.client import Client, WorkflowHandle, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from activities.contract import Deployment, DeploymentReceipt
from activities.notify import LogNotifier
from activities.progression import ProgressionActivities
from engine.lifecycle import SPEC_PARTS, Actor, DecisionKind, ProgressionState, compute_basis, counted_approvals
from engine.policy import Role
from testing.polling import within
from testing.workflow import (
    CREDIT,
    DEV,
    DEV2,
    EXAMPLES,
    RISK1,
    RISK2,
    VALIDATOR,
    Env,
    answered,
    at_gate,
    decision_rows,
    example_input,
    put_evidence,
    start,
    state,
    submit,
    unique_version,
    wait_events,
    wait_state,
    worker,
)
from workflows.contract import UPDATE_DECIDE, DecideInput, DecideResult

FRAUD = EXAMPLES / "card-fraud-detector"
FRAUD_DEV = Actor(user_id="u-fdev", username="fay.fraud", roles=[Role.model_developer], team="payments-fraud")


def refusal(exc: WorkflowUpdateFailedError) -> tuple[str, str]:
    cause = exc.cause
    assert isinstance(cause, ApplicationError), cause
    return cause.type or "", cause.message


async def decide(handle: WorkflowHandle[Any, Any], actor: Actor, stage: str, decision: str = "approve", *,
                 basis: str | None = None, comment: str = "looks sound") -> DecideResult:
    inp = DecideInput(stage=stage, decision=DecisionKind(decision), comment=comment, actor=actor,
                      decision_id=str(uuid.uuid4()), basis=basis)
    result = await within(handle.execute_update(UPDATE_DECIDE, inp, id=inp.decision_id, result_type=DecideResult),
                          f"{decision} at {stage}")
    return result.model_copy(update={"state": await answered(handle, result)})  # as the API answers it


async def fraud_metrics(env: Env, **operating_point: float) -> Any:
    metrics = json.loads((FRAUD / "evidence/metrics.json").read_text())
    metrics["operating_point"].update(operating_point)
    return await put_evidence(env, "metrics", json.dumps(metrics).encode(), "evidence/metrics.json")


def assert_bound(final: ProgressionState) -> None:
    """Every counted approval's basis is the basis of its stage recomputed from the state."""
    for stage in final.stages:
        for d in counted_approvals(stage):
            assert d.basis is not None and d.basis == compute_basis(final, stage.name), (stage.name, d)


# ---- evidence changes re-open what they touch --------------------------------------------------


async def test_bad_metrics_at_the_open_risk_gate_reopen_validation(
        temporal_client: Client, task_queue: str, env: Env) -> None:
    """The reported attack (fraud policy, whose metrics are not frozen): metrics failing validation are
    uploaded while the risk-review gate is open. Validation re-runs and blocks; the validator's approval is
    superseded; nothing reaches production until a validator approves the new metrics."""
    inp = await example_input(env, FRAUD, submitted_by=FRAUD_DEV, version=unique_version())
    pid = inp.spec.progression_id
    async with worker(temporal_client, task_queue, env):
        handle = await start(temporal_client, inp, task_queue)
        gate = await wait_state(handle, at_gate("validation"))
        seen = gate.stage("validation").basis  # type: ignore[union-attr]
        assert seen is not None and seen.startswith("sha256:")
        approved = await decide(handle, VALIDATOR, "validation", basis=seen)
        assert approved.state.stage("validation").decisions[0].basis == seen  # type: ignore[union-attr]
        await wait_state(handle, at_gate("risk_review"))

        bad = await fraud_metrics(env, precision=0.41)
        after = await submit(handle, FRAUD_DEV, {"metrics": bad})
        validation, review = after.stage("validation"), after.stage("risk_review")
        assert validation is not None and review is not None
        assert after.current_stage == "validation" and after.status == "blocked"
        assert validation.attempt == 2 and review.status == "pending"
        assert [d.superseded for d in validation.decisions] == [True]
        assert validation.decisions[0].basis_matches is False
        assert validation.approvals[0].approved_by == []
        assert any(c.check_id == "precision" and not c.passed for c in validation.checks)
        # the risk officer cannot decide on a gate that is no longer open
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await decide(handle, RISK1, "risk_review")
        assert refusal(info.value)[0] == "gate_not_open"

        good = await fraud_metrics(env, precision=0.87)
        reopened = await submit(handle, FRAUD_DEV, {"metrics": good})
        assert reopened.current_stage == "validation" and reopened.status == "awaiting_approval"
        new_basis = reopened.stage("validation").basis  # type: ignore[union-attr]
        assert new_basis not in (None, seen)
        with pytest.raises(WorkflowUpdateFailedError) as info:  # the old approval's basis
            await decide(handle, VALIDATOR, "validation", basis=seen)
        code, message = refusal(info.value)
        assert code == "stale_basis" and "metrics" in message
        await decide(handle, VALIDATOR, "validation", basis=new_basis, comment="new metrics validated")
        await wait_state(handle, at_gate("risk_review"))
        await decide(handle, RISK1, "risk_review")
        final = await wait_state(handle, lambda s: s.status == "in_production")
        await wait_events(env, pid, "progression.in_production")
        await handle.terminate("test over")

    assert_bound(final)
    reopened_events = await wait_events(env, pid, "stage.reopened", 2)
    assert reopened_events[0].stage == "validation"
    assert list(reopened_events[0].payload["changed"]) == ["metrics"]
    assert len(reopened_events[0].payload["superseded_decisions"]) == 1
    [deployed] = env.target.deployments
    counted = [d.basis for s in final.stages for d in counted_approvals(s)]
    assert deployed.approval_bases == counted and len(counted) == 2
    assert deployed.artifact_digest == inp.spec.version.artifact_digest
    [event] = await wait_events(env, pid, "deployment.recorded")
    assert event.payload["artifact_digest"] == inp.spec.version.artifact_digest
    assert [a["basis"] for a in event.payload["approvals"]] == counted
    rows = await decision_rows(env, pid)
    assert [r.basis for r in rows if r.stage == "validation"] == [seen, new_basis]
    received = await wait_events(env, pid, "decision.received", 3)
    assert received[0].payload["basis"] == seen
    assert received[0].payload["basis_parts"]["evidence"]["metrics"] == inp.evidence["metrics"].sha256


async def test_evidence_a_stage_reads_supersedes_its_and_later_approvals_only(
        temporal_client: Client, task_queue: str, env: Env) -> None:
    """Credit, risk-review gate open with one of two approvals: a change to evidence that only staging
    reads keeps every approval; a new item validation reads re-opens validation and supersedes the
    validator's and the risk officer's approvals (the registration stage, which does not read it, stays)."""
    inp = await example_input(env, CREDIT, version=unique_version())
    async with worker(temporal_client, task_queue, env):
        handle = await start(temporal_client, inp, task_queue)
        await wait_state(handle, at_gate("validation"))
        await decide(handle, VALIDATOR, "validation")
        await wait_state(handle, at_gate("risk_review"))
        await decide(handle, RISK1, "risk_review")

        plan = (CREDIT / "docs/monitoring_plan.md").read_text() + "\nQuarterly PSI review.\n"
        ref = await put_evidence(env, "monitoring_plan", plan.encode(), "docs/monitoring_plan.md")
        kept = await submit(handle, DEV2, {"monitoring_plan": ref})
        assert kept.current_stage == "risk_review" and kept.status == "awaiting_approval"
        assert kept.stage("risk_review").approvals[0].approved_by == [RISK1.user_id]  # type: ignore[union-attr]
        assert kept.stage("validation").status == "passed"  # type: ignore[union-attr]

        justification = await put_evidence(env, "pii_justification", b"# PII\nnone used\n" * 20, "docs/pii.md")
        back = await submit(handle, DEV2, {"pii_justification": justification})
        assert back.current_stage == "validation" and back.status == "awaiting_approval"
        assert back.stage("registration").status == "passed"  # type: ignore[union-attr]
        assert all(d.superseded for d in back.stage("validation").decisions)  # type: ignore[union-attr]
        assert all(d.superseded for d in back.stage("risk_review").decisions)  # type: ignore[union-attr]
        assert back.stage("risk_review").status == "pending"  # type: ignore[union-attr]
        assert back.stage("validation").basis_changed == ["pii_justification"]  # type: ignore[union-attr]
        # the superseded approver decides again on what is current now
        await decide(handle, VALIDATOR, "validation", basis=back.stage("validation").basis)  # type: ignore[union-attr]
        await wait_state(handle, at_gate("risk_review"))
        await handle.terminate("test over")


async def test_blocked_at_staging_monitoring_plan_with_bad_metrics(
        temporal_client: Client, task_queue: str, env: Env) -> None:
    """The second reported attack: blocked at staging on a missing monitoring plan, one upload of the plan
    *together with* metrics at AUC 0.51. Credit freezes metrics after validation: refused, nothing applied.
    With an item validation reads instead, the upload re-opens validation, not only staging."""
    inp = await example_input(env, CREDIT, version=unique_version())
    inp = inp.model_copy(update={"evidence": {n: r for n, r in inp.evidence.items() if n != "monitoring_plan"}})
    async with worker(temporal_client, task_queue, env):
        handle = await start(temporal_client, inp, task_queue)
        await wait_state(handle, at_gate("validation"))
        await decide(handle, VALIDATOR, "validation")
        await wait_state(handle, at_gate("risk_review"))
        await decide(handle, RISK1, "risk_review")
        await decide(handle, RISK2, "risk_review")
        blocked = await wait_state(handle, lambda s: s.current_stage == "staging" and s.status == "blocked")

        plan = await put_evidence(env, "monitoring_plan", (CREDIT / "docs/monitoring_plan.md").read_bytes(),
                                  "docs/monitoring_plan.md")
        metrics = json.loads((CREDIT / "evidence/metrics.json").read_text())
        metrics["auc"] = 0.51
        bad = await put_evidence(env, "metrics", json.dumps(metrics).encode(), "evidence/metrics.json")
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await submit(handle, DEV, {"monitoring_plan": plan, "metrics": bad})
        code, message = refusal(info.value)
        assert code == "evidence_frozen" and "'metrics'" in message and "start a new version" in message
        unchanged = await state(handle)
        assert unchanged.evidence == blocked.evidence and unchanged.current_stage == "staging"

        extra = await put_evidence(env, "proxy_analysis", b"# proxies\nnone\n" * 20, "docs/proxy.md")
        back = await submit(handle, DEV, {"monitoring_plan": plan, "proxy_analysis": extra})
        assert back.current_stage == "validation" and back.status == "awaiting_approval"
        assert [s.status for s in back.stages] == ["passed", "awaiting_approval", "pending", "pending", "pending"]
        await handle.terminate("test over")


class HeldTarget:
    """A promotion target that holds each deployment until the test lets it finish (a slow rollout)."""

    name = "held"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.deployments: list[Deployment] = []

    async def deploy(self, deployment: Deployment) -> DeploymentReceipt:
        self.started.set()
        await self.release.wait()
        self.deployments.append(deployment)
        return DeploymentReceipt(deployment_id=f"dep-{deployment.deployment_key}", target=self.name)


async def test_after_all_approvals_during_deployment_and_in_production(
        temporal_client: Client, task_queue: str, env: Env) -> None:
    """After every approval, while the target deploys, and once in production: an evidence change is
    refused (409, naming the next step), so what was approved is what was deployed."""
    target = HeldTarget()
    env.activities = ProgressionActivities(env.sessionmaker, env.store, target, LogNotifier(), audit_chain=True)
    inp = await example_input(env, FRAUD, submitted_by=FRAUD_DEV, version=unique_version())
    async with worker(temporal_client, task_queue, env):
        handle = await start(temporal_client, inp, task_queue)
        await wait_state(handle, at_gate("validation"))
        await decide(handle, VALIDATOR, "validation")
        await wait_state(handle, at_gate("risk_review"))
        await decide(handle, RISK1, "risk_review")
        await asyncio.wait_for(target.started.wait(), timeout=60)
        bad = await fraud_metrics(env, recall=0.2)
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await submit(handle, FRAUD_DEV, {"metrics": bad})
        assert refusal(info.value)[0] == "deployment_in_progress"
        target.release.set()
        final = await wait_state(handle, lambda s: s.status == "in_production")
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await submit(handle, FRAUD_DEV, {"metrics": bad})
        code, message = refusal(info.value)
        assert code == "evidence_locked" and "in production" in message and "start a new version" in message
        assert (await state(handle)).evidence["metrics"] == final.evidence["metrics"]
        await handle.terminate("test over")
    assert_bound(final)
    assert target.deployments[0].approval_bases == [d.basis for s in final.stages for d in counted_approvals(s)]


# ---- no race: a decision on a basis that is no longer current ----------------------------------


async def test_decision_racing_an_evidence_upload_is_refused_as_stale(
        temporal_client: Client, task_queue: str, env: Env) -> None:
    inp = await example_input(env, FRAUD, submitted_by=FRAUD_DEV, version=unique_version())
    async with worker(temporal_client, task_queue, env):
        handle = await start(temporal_client, inp, task_queue)
        gate = await wait_state(handle, at_gate("validation"))
        seen = gate.stage("validation").basis  # type: ignore[union-attr]
        latency = json.loads((FRAUD / "evidence/latency.json").read_text())
        latency["p99_ms"] = 49.0
        ref = await put_evidence(env, "latency", json.dumps(latency).encode(), "evidence/latency.json")
        # the upload and the validator's decision on what they read, concurrently
        results = await asyncio.gather(submit(handle, FRAUD_DEV, {"latency": ref}),
                                       decide(handle, VALIDATOR, "validation", basis=seen),
                                       return_exceptions=True)
        now = await wait_state(handle, at_gate("validation"))
        validation = now.stage("validation")
        assert validation is not None and validation.basis != seen
        assert not isinstance(results[0], BaseException), results[0]
        if isinstance(results[1], BaseException):  # the upload won: the decision was on old evidence
            assert isinstance(results[1], WorkflowUpdateFailedError)
            code, message = refusal(results[1])
            # refused as stale, or (while the re-opened stage's checks were running) as a closed gate
            assert code in ("stale_basis", "gate_not_open"), (code, message)
            assert code != "stale_basis" or "latency" in message
        else:  # the decision won: the upload superseded it
            assert [d.superseded for d in validation.decisions] == [True]
        assert counted_approvals(validation) == [] and validation.approvals[0].approved_by == []
        await handle.terminate("test over")


# ---- what cannot change at all -----------------------------------------------------------------


async def test_spec_identity_cannot_change_through_evidence(
        temporal_client: Client, task_queue: str, env: Env) -> None:
    inp = await example_input(env, CREDIT, version=unique_version())
    async with worker(temporal_client, task_queue, env):
        handle = await start(temporal_client, inp, task_queue)
        before = await wait_state(handle, at_gate("validation"))
        for name, field in SPEC_PARTS.items():
            ref = await put_evidence(env, name, f"{name}: forged\n".encode(), f"{name}.yaml")
            with pytest.raises(WorkflowUpdateFailedError) as info:
                await submit(handle, DEV, {name: ref})
            code, message = refusal(info.value)
            assert code == "spec_immutable" and message.startswith(f"{field}:"), (name, message)
        after = await state(handle)
        assert after.evidence == before.evidence and after.seq == before.seq
        await handle.terminate("test over")


async def test_frozen_evidence_is_refused_after_its_stage_passed(
        temporal_client: Client, task_queue: str, env: Env) -> None:
    """Credit freezes metrics, fairness and the model card after validation. Before validation passed the
    developer may still fix them; after, each is refused naming the item; the same bytes again are no change."""
    inp = await example_input(env, CREDIT, version=unique_version())
    async with worker(temporal_client, task_queue, env):
        handle = await start(temporal_client, inp, task_queue)
        await wait_state(handle, at_gate("validation"))
        metrics = json.loads((CREDIT / "evidence/metrics.json").read_text())
        metrics["note"] = "fixed before validation passed"
        fixed = await put_evidence(env, "metrics", json.dumps(metrics).encode(), "evidence/metrics.json")
        allowed = await submit(handle, DEV, {"metrics": fixed})
        assert allowed.current_stage == "validation" and allowed.stage("validation").attempt == 2  # type: ignore[union-attr]
        await wait_state(handle, at_gate("validation"))
        await decide(handle, VALIDATOR, "validation")
        await wait_state(handle, at_gate("risk_review"))
        for name, rel in (("metrics", "evidence/metrics.json"), ("fairness", "evidence/fairness.json"),
                          ("model_card", "docs/model_card.md")):
            ref = await put_evidence(env, name, (CREDIT / rel).read_bytes() + b"\n ", rel)
            with pytest.raises(WorkflowUpdateFailedError) as info:
                await submit(handle, DEV, {name: ref})
            code, message = refusal(info.value)
            assert code == "evidence_frozen" and f"{name!r}" in message and "validation" in message
        same = await submit(handle, DEV, {"metrics": fixed})  # identical bytes: nothing changes
        assert same.current_stage == "risk_review" and same.status == "awaiting_approval"
        await handle.terminate("test over")
