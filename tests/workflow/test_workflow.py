"""ProgressionWorkflow on the real Temporal dev server with real databases and evidence files."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError

from activities.contract import Deployment, Notification
from activities.notify import LogNotifier, WebhookNotifier, build_notifier
from activities.promotion import RecordingPromotionTarget, WebhookPromotionTarget, build_promotion_target
from engine.audit import verify_chain
from engine.db import DecisionRow, ModelVersion, ProgressionEvidence, ProgressionRow
from engine.errors import InvalidPolicy
from engine.lifecycle import ProgressionState
from engine.policy import ApprovalRule, Role, policy_hash
from engine.settings import Settings
from launch.worker import run_worker
from testing.http import QuietHandler, http_server
from testing.workflow import (
    CREDIT,
    DEV,
    DEV2,
    MARKETING,
    MKT_DEV,
    RISK1,
    RISK2,
    STRANGER,
    VALIDATOR,
    Actor,
    Env,
    accepted_update_ids,
    app_env,
    at_gate,
    count,
    decide,
    decision_rows,
    events,
    example_input,
    finished,
    put_evidence,
    start,
    state,
    submit,
    unique_version,
    wait_events,
    wait_state,
    withdraw,
    worker,
)
from workflows.contract import WORKFLOW_NAME


def refusal_code(exc: WorkflowUpdateFailedError) -> str:
    cause = exc.cause
    assert isinstance(cause, ApplicationError), cause
    assert cause.non_retryable
    assert cause.details and cause.details[0]["code"] == cause.type
    return cause.type or ""


# ---- the full credit journey ----------------------------------------------------------------


async def _full_credit_flow(client: Client, task_queue: str, env: Env) -> None:
    inp = await example_input(env, CREDIT, version=unique_version())
    pid = inp.spec.progression_id
    async with worker(client, task_queue, env):
        handle = await start(client, inp, task_queue)

        gate = await wait_state(handle, at_gate("validation"))
        assert gate.waiting_on == [Role.model_validator]
        assert gate.missing == ["1 more model validator approval"]
        assert [s.status for s in gate.stages][:2] == ["passed", "awaiting_approval"]
        assert all(c.passed for c in gate.stage("validation").checks)  # type: ignore[union-attr]
        assert gate.stage("validation").approvals[0].due_at is not None  # type: ignore[union-attr]

        await decide(handle, VALIDATOR, "validation", "approve", "independent validation complete")
        review = await wait_state(handle, at_gate("risk_review"))
        assert review.missing == ["2 more model risk officer approvals"]

        first = await decide(handle, RISK1, "risk_review", "approve", "residual risk accepted")
        assert first.state.missing == ["1 more model risk officer approval"]
        assert first.state.waiting_on == [Role.model_risk_officer]
        await decide(handle, RISK2, "risk_review", "approve", "agree")

        final = await wait_state(handle, lambda s: s.status == "in_production")
        assert final.deployed_at is not None
        assert final.revalidation_due_at is not None and final.revalidation_due_at > final.deployed_at
        assert [s.status for s in final.stages] == ["passed"] * 5
        risk = final.stage("risk_review")
        assert risk is not None and sorted(risk.approvals[0].approved_by) == ["u-risk1", "u-risk2"]
        assert len(env.target.deployments) == 1 and env.target.deployments[0].model_id == inp.spec.model.id
        await wait_events(env, pid, "progression.in_production")
        await handle.terminate("test over")

    rows = await decision_rows(env, pid)
    assert [(r.actor_id, r.stage, r.decision) for r in rows] == [
        ("u-val", "validation", "approve"), ("u-risk1", "risk_review", "approve"),
        ("u-risk2", "risk_review", "approve")]
    started = await events(env, pid, "progression.started")
    assert len(started) == 1
    assert started[0].payload["policy_hash"] == inp.policy_hash
    assert started[0].payload["evidence"] == {n: r.sha256 for n, r in inp.evidence.items()}
    assert len(await events(env, pid, "decision.received")) == 3
    assert len(await events(env, pid, "deployment.recorded")) == 1
    assert len(await events(env, pid, "progression.in_production")) == 1
    checks = await events(env, pid, "check.evaluated")
    assert {e.payload["check_id"] for e in checks} >= {"features-registered", "discrimination",
                                                      "no-protected-attributes", "monitoring-plan"}
    assert all(e.payload["passed"] for e in checks)
    all_events = await events(env, pid)
    assert len({e.event_id for e in all_events}) == len(all_events)
    stage_order = [e.stage for e in all_events if e.event_type == "stage.passed"]
    assert stage_order == ["registration", "validation", "risk_review", "staging", "production"]
    async with env.sessionmaker() as session:
        assert (await verify_chain(session)).ok
        row = await session.get(ProgressionRow, pid)
        assert row is not None and row.status == "in_production" and row.revalidation_due_at is not None
        assert await count(env, ModelVersion) == 1
    assert await count(env, ProgressionEvidence) == len(inp.evidence)


async def test_full_credit_flow_sqlite(temporal_client: Client, task_queue: str, env: Env) -> None:
    await _full_credit_flow(temporal_client, task_queue, env)


@pytest.mark.postgres
async def test_full_credit_flow_postgres(temporal_client: Client, task_queue: str, postgres_url: str,
                                         tmp_path: Path) -> None:
    async with app_env(postgres_url, tmp_path) as pg_env:
        await _full_credit_flow(temporal_client, task_queue, pg_env)


async def test_second_start_of_same_version_is_refused(temporal_client: Client, task_queue: str,
                                                       env: Env) -> None:
    inp = await example_input(env, CREDIT, version=unique_version())
    async with worker(temporal_client, task_queue, env):
        handle = await start(temporal_client, inp, task_queue)
        with pytest.raises(WorkflowAlreadyStartedError) as info:
            await start(temporal_client, inp, task_queue)
        assert info.value.workflow_id == inp.spec.progression_id
        await wait_state(handle, at_gate("validation"))
        await handle.terminate("test over")


# ---- refusals of the decide validator, one test each ----------------------------------------


@pytest.fixture
async def validation_gate(temporal_client: Client, task_queue: str, env: Env):  # type: ignore[no-untyped-def]
    inp = await example_input(env, CREDIT, version=unique_version())
    async with worker(temporal_client, task_queue, env):
        handle = await start(temporal_client, inp, task_queue)
        await wait_state(handle, at_gate("validation"))
        yield handle
        with contextlib.suppress(RPCError):  # some tests finish the progression themselves
            await handle.terminate("test over")


async def _assert_refused(handle, actor: Actor, stage: str, decision: str, code: str,  # type: ignore[no-untyped-def]
                          comment: str = "ok") -> None:
    before = await state(handle)
    decision_id = f"refused-{uuid.uuid4()}"
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await decide(handle, actor, stage, decision, comment, decision_id=decision_id)
    assert refusal_code(info.value) == code
    after = await state(handle)
    assert after.seq == before.seq and after == before  # no trace in the state ...
    history = await handle.fetch_history()
    assert decision_id not in accepted_update_ids(history)  # ... nor in the history


async def test_refused_not_a_gate_role(validation_gate) -> None:  # type: ignore[no-untyped-def]
    auditor = Actor(user_id="u-aud", username="ada.auditor", roles=[Role.auditor], team="audit")
    await _assert_refused(validation_gate, auditor, "validation", "approve", "not_a_gate_role")
    # a risk officer is not the validation gate's role either
    await _assert_refused(validation_gate, RISK1, "validation", "approve", "not_a_gate_role")


async def test_refused_an_admin_holding_a_gate_role(validation_gate) -> None:  # type: ignore[no-untyped-def]
    """Attack: an admin whose user row was edited to add model_validator decides through a path that skips the
    API's check; the workflow's own validator refuses (the decision never enters history)."""
    admin_as_validator = Actor(user_id="u-adm", username="adam.admin", roles=[Role.admin, Role.model_validator],
                               team="platform")
    await _assert_refused(validation_gate, admin_as_validator, "validation", "approve", "admin_cannot_decide")


async def test_refused_own_submission(validation_gate) -> None:  # type: ignore[no-untyped-def]
    submitter_as_validator = Actor(user_id=DEV.user_id, username=DEV.username,
                                   roles=[Role.model_developer, Role.model_validator], team=None)
    await _assert_refused(validation_gate, submitter_as_validator, "validation", "approve", "own_submission")


async def test_refused_own_team(validation_gate) -> None:  # type: ignore[no-untyped-def]
    teammate_validator = Actor(user_id="u-tv", username="tom.teammate", roles=[Role.model_validator],
                               team="retail-risk")
    await _assert_refused(validation_gate, teammate_validator, "validation", "approve", "own_team")


async def test_refused_already_approved_counts_once(validation_gate, env: Env) -> None:  # type: ignore[no-untyped-def]
    handle = validation_gate
    await decide(handle, VALIDATOR, "validation", "approve")
    await wait_state(handle, at_gate("risk_review"))
    await decide(handle, RISK1, "risk_review", "approve")
    await _assert_refused(handle, RISK1, "risk_review", "approve", "already_decided")
    current = await state(handle)
    risk = current.stage("risk_review")
    assert risk is not None and risk.approvals[0].approved_by == ["u-risk1"]
    assert current.missing == ["1 more model risk officer approval"]
    assert current.status == "awaiting_approval"
    rows = await decision_rows(env, current.progression_id)
    assert [r.actor_id for r in rows if r.stage == "risk_review"] == ["u-risk1"]


async def test_refused_stage_not_open(validation_gate) -> None:  # type: ignore[no-untyped-def]
    await _assert_refused(validation_gate, RISK1, "risk_review", "approve", "gate_not_open")
    await _assert_refused(validation_gate, RISK1, "no_such_stage", "approve", "unknown_stage")


async def test_refused_comment_required(validation_gate) -> None:  # type: ignore[no-untyped-def]
    await _assert_refused(validation_gate, VALIDATOR, "validation", "request_changes", "comment_required",
                          comment="  ")
    await _assert_refused(validation_gate, VALIDATOR, "validation", "reject", "comment_required", comment="")


async def test_refused_progression_closed(validation_gate, env: Env) -> None:  # type: ignore[no-untyped-def]
    handle = validation_gate
    rejected = await decide(handle, VALIDATOR, "validation", "reject", "AUC is not credible on this sample")
    assert rejected.state.status == "rejected"
    assert rejected.state.stage("validation").status == "rejected"  # type: ignore[union-attr]
    final = await finished(handle)
    assert final.status == "rejected" and final.waiting_on == []
    # The workflow is closed: no decision can reach it any more, and nothing is written.
    with pytest.raises((WorkflowUpdateFailedError, RPCError)):
        await decide(handle, RISK1, "risk_review", "approve")
    assert len(await decision_rows(env, final.progression_id)) == 1
    assert len(await events(env, final.progression_id, "progression.rejected")) == 1


# ---- request changes, idempotency, withdraw -------------------------------------------------


async def test_request_changes_loop_reruns_checks_and_resets_approvals(
        temporal_client: Client, task_queue: str, env: Env) -> None:
    inp = await example_input(env, CREDIT, version=unique_version())
    pid = inp.spec.progression_id
    async with worker(temporal_client, task_queue, env):
        handle = await start(temporal_client, inp, task_queue)
        await wait_state(handle, at_gate("validation"))
        await decide(handle, VALIDATOR, "validation", "approve")
        await wait_state(handle, at_gate("risk_review"))
        await decide(handle, RISK1, "risk_review", "approve", "fine by me")
        asked = await decide(handle, RISK2, "risk_review", "request_changes", "add the 2025 out-of-time sample")
        assert asked.state.status == "changes_requested"
        assert asked.state.waiting_on == [Role.model_developer]
        assert asked.state.missing == ["changes requested by rob.risk: add the 2025 out-of-time sample"]
        # a decision while changes are requested is refused: the gate is not open
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await decide(handle, RISK2, "risk_review", "approve")
        assert refusal_code(info.value) == "gate_not_open"

        # The answer: an evidence item no earlier stage reads (metrics are frozen after validation).
        plan = (CREDIT / "docs/monitoring_plan.md").read_text() + "\nAdds the 2025 out-of-time sample.\n"
        ref = await put_evidence(env, "monitoring_plan", plan.encode(), "docs/monitoring_plan.md")
        after = await submit(handle, DEV2, {"monitoring_plan": ref})
        review = after.stage("risk_review")
        assert review is not None
        assert after.status == "awaiting_approval" and review.attempt == 2
        assert review.approvals[0].approved_by == []  # reset: RISK1 must approve again
        assert all(d.superseded for d in review.decisions)
        assert after.evidence["monitoring_plan"].sha256 == ref.sha256
        assert after.evidence["monitoring_plan"].added_by == "u-dev2"
        assert after.stage("validation").status == "passed"  # type: ignore[union-attr]  # does not read it

        await decide(handle, RISK1, "risk_review", "approve", "still fine")
        await decide(handle, RISK2, "risk_review", "approve", "thanks")
        await wait_state(handle, lambda s: s.status == "in_production")
        await wait_events(env, pid, "progression.in_production")
        await handle.terminate("test over")

    submitted = await events(env, pid, "evidence.submitted")
    assert len(submitted) == 1 and submitted[0].payload["approvals_reset"] is True
    assert submitted[0].payload["reruns_checks"] is True
    assert len(await events(env, pid, "changes.requested")) == 1
    gates = [e for e in await events(env, pid, "gate.opened") if e.stage == "risk_review"]
    assert [g.payload["attempt"] for g in gates] == [1, 2]
    rows = await decision_rows(env, pid)
    assert [(r.actor_id, r.decision) for r in rows if r.stage == "risk_review"] == [
        ("u-risk1", "approve"), ("u-risk2", "request_changes"), ("u-risk1", "approve"), ("u-risk2", "approve")]
    async with env.sessionmaker() as session:
        assert (await verify_chain(session)).ok
        links = (await session.execute(ProgressionEvidence.__table__.select().where(
            ProgressionEvidence.progression_id == pid, ProgressionEvidence.name == "monitoring_plan"))).all()
        assert len(links) == 2  # the original and the new plan, both kept


async def test_decide_retry_with_same_decision_id_writes_once(validation_gate, env: Env) -> None:  # type: ignore[no-untyped-def]
    handle = validation_gate
    decision_id = str(uuid.uuid4())
    first = await decide(handle, VALIDATOR, "validation", "approve", "ok", decision_id=decision_id)
    # the same update id (Temporal deduplicates) and a new update id (the workflow deduplicates)
    again = await decide(handle, VALIDATOR, "validation", "approve", "ok", decision_id=decision_id)
    other = await decide(handle, VALIDATOR, "validation", "approve", "ok", decision_id=decision_id,
                         update_id=str(uuid.uuid4()))
    assert first == again == other
    assert first.accepted and first.decision_id == decision_id
    await wait_state(handle, at_gate("risk_review"))
    pid = first.state.progression_id
    await wait_events(env, pid, "gate.opened", 2)
    assert [r.id for r in await decision_rows(env, pid)] == [decision_id]
    assert len(await events(env, pid, "decision.received")) == 1
    validation = (await state(handle)).stage("validation")
    assert validation is not None and validation.approvals[0].approved_by == ["u-val"]
    assert await count(env, DecisionRow) == 1


async def test_withdraw_by_team_and_refused_for_stranger(validation_gate, env: Env) -> None:  # type: ignore[no-untyped-def]
    handle = validation_gate
    before = await state(handle)
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await withdraw(handle, STRANGER)
    assert refusal_code(info.value) == "not_owner"
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await submit(handle, STRANGER, before.evidence)
    assert refusal_code(info.value) == "not_owner"
    assert (await state(handle)).seq == before.seq
    # An independent validator may attach a validation report (same rule as the API's fast check).
    with_report = await submit(handle, VALIDATOR, before.evidence)
    assert with_report.seq > before.seq and with_report.status != "withdrawn"

    done = await withdraw(handle, DEV2, "replaced by 3.3.0")
    assert done.status == "withdrawn" and done.stage("validation").status == "withdrawn"  # type: ignore[union-attr]
    final = await finished(handle)
    assert final.status == "withdrawn"
    withdrawn = await events(env, final.progression_id, "progression.withdrawn")
    assert len(withdrawn) == 1 and withdrawn[0].actor_id == "u-dev2"
    assert withdrawn[0].payload["reason"] == "replaced by 3.3.0"
    async with env.sessionmaker() as session:
        row = await session.get(ProgressionRow, final.progression_id)
        assert row is not None and row.status == "withdrawn" and row.waiting_on == []


# ---- features: a protected attribute blocks credit, passes marketing -----------------------


async def test_protected_attribute_blocks_credit_but_not_marketing(
        temporal_client: Client, task_queue: str, env: Env) -> None:
    credit_features = [*(await example_input(env, CREDIT)).spec.features, "age"]
    credit = await example_input(env, CREDIT, version=unique_version(), features=credit_features)
    marketing = await example_input(env, MARKETING, submitted_by=MKT_DEV, version=unique_version())
    assert "age" in marketing.spec.features
    async with worker(temporal_client, task_queue, env):
        credit_handle = await start(temporal_client, credit, task_queue)
        marketing_handle = await start(temporal_client, marketing, task_queue)

        blocked = await wait_state(credit_handle, lambda s: s.status == "blocked")
        assert blocked.current_stage == "validation"
        assert blocked.waiting_on == [Role.model_developer]
        failing = [c for c in blocked.stage("validation").checks if not c.passed]  # type: ignore[union-attr]
        assert [c.check_id for c in failing] == ["no-protected-attributes"]
        assert "age" in failing[0].reason
        assert blocked.missing == [f"check no-protected-attributes failed: {failing[0].reason}"]
        # nobody can approve a blocked stage
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await decide(credit_handle, VALIDATOR, "validation", "approve")
        assert refusal_code(info.value) == "gate_not_open"
        # new evidence the stage reads re-runs the checks, but the features come from the spec: still blocked
        ref = await put_evidence(env, "pii_justification", b"# why\n" * 300, "docs/pii.md")
        again = await submit(credit_handle, DEV, {"pii_justification": ref})
        assert again.status == "blocked" and again.stage("validation").attempt == 2  # type: ignore[union-attr]

        passing = await wait_state(marketing_handle, at_gate("validation"))
        checks = {c.check_id: c for c in passing.stage("validation").checks}  # type: ignore[union-attr]
        assert all(c.passed for c in checks.values()), [c.reason for c in checks.values() if not c.passed]
        await wait_events(env, credit.spec.progression_id, "stage.blocked", 2)
        await credit_handle.terminate("test over")
        await marketing_handle.terminate("test over")

    blocked_events = await events(env, credit.spec.progression_id, "stage.blocked")
    assert len(blocked_events) == 2
    assert blocked_events[0].payload["failing"][0]["check_id"] == "no-protected-attributes"



# ---- continue-as-new carries the whole state ------------------------------------------------


async def test_resume_state_continues_where_it_stood(temporal_client: Client, task_queue: str, env: Env) -> None:
    """What continue-as-new does: a new run from ``resume_state`` keeps approvals, evidence and the gate."""
    inp = await example_input(env, CREDIT, version=unique_version())
    pid = inp.spec.progression_id
    async with worker(temporal_client, task_queue, env):
        handle = await start(temporal_client, inp, task_queue)
        await wait_state(handle, at_gate("validation"))
        await decide(handle, VALIDATOR, "validation", "approve")
        await wait_state(handle, at_gate("risk_review"))
        half = (await decide(handle, RISK1, "risk_review", "approve")).state
        await wait_events(env, pid, "decision.received", 2)
        await handle.terminate("simulating continue-as-new")

        resumed = await temporal_client.start_workflow(
            WORKFLOW_NAME, inp.model_copy(update={"resume_state": half}), id=pid, task_queue=task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE, result_type=ProgressionState)
        again = await wait_state(resumed, at_gate("risk_review"))
        assert again.stage("risk_review").approvals[0].approved_by == ["u-risk1"]  # type: ignore[union-attr]
        assert again.started_at == half.started_at and again.seq >= half.seq
        await _assert_refused(resumed, RISK1, "risk_review", "approve", "already_decided")
        await decide(resumed, RISK2, "risk_review", "approve")
        await wait_state(resumed, lambda s: s.status == "in_production")
        await wait_events(env, pid, "progression.in_production")
        await resumed.terminate("test over")
    # not registered twice, and nothing already recorded was recorded again
    assert len(await events(env, pid, "progression.started")) == 1
    assert len(await events(env, pid, "stage.entered")) == 5
    assert [r.actor_id for r in await decision_rows(env, pid)] == ["u-val", "u-risk1", "u-risk2"]


# ---- promotion target and notifier over real HTTP ---------------------------------------------


class _Receiver:
    """What a real HTTP server on 127.0.0.1 received, and the status it answers with."""

    def __init__(self, url: str) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.url = url


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    received: list[_Receiver] = []

    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received[0].requests.append(({k: v for k, v in self.headers.items()}, body))
            self.send_response(received[0].status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"deployment_id": "remote-42"}')

    with http_server(Handler) as port:
        received.append(_Receiver(f"http://127.0.0.1:{port}/hook"))
        yield received[0]


async def test_webhook_promotion_target_signs_and_raises_on_failure(receiver: _Receiver) -> None:
    deployment = Deployment(deployment_key="m@1/production/1", progression_id="m@1", model_id="m", version_id="1",
                            artifact="s3://m/1", stage="production", business_intent="credit-underwriting",
                            policy_hash="sha256:abc")
    target = WebhookPromotionTarget(receiver.url, "s3cret")
    receipt = await target.deploy(deployment)
    assert receipt.deployment_id == "remote-42" and receipt.target == "webhook"
    headers, body = receiver.requests[0]
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["X-Progression-Signature"] == expected
    assert headers["X-Progression-Event-Id"] == "m@1/production/1"
    assert json.loads(body)["type"] == "deployment" and json.loads(body)["artifact"] == "s3://m/1"

    receiver.status = 503  # non-2xx raises, so the activity is retried by Temporal
    with pytest.raises(httpx.HTTPStatusError):
        await target.deploy(deployment)
    note = Notification(event_id="e-1", kind="escalated", progression_id="m@1", model_id="m",
                        roles=[Role.model_risk_officer], message="past SLA")
    with pytest.raises(httpx.HTTPStatusError):
        await WebhookNotifier(receiver.url, "s3cret").send(note)
    receiver.status = 200
    await WebhookNotifier(receiver.url, "s3cret").send(note)
    headers, body = receiver.requests[-1]
    assert headers["X-Progression-Signature"] == "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    sent = json.loads(body)
    assert (sent["type"], sent["kind"], sent["roles"]) == ("notification", "escalated", ["model_risk_officer"])


async def test_build_targets_from_settings(tmp_path: Path) -> None:

    plain = Settings(data_dir=tmp_path)
    assert isinstance(build_promotion_target(plain), RecordingPromotionTarget)
    assert isinstance(build_notifier(plain), LogNotifier)
    hooked = Settings(data_dir=tmp_path, promotion_target="webhook", webhook_url="http://h/x", webhook_secret="k")
    assert isinstance(build_promotion_target(hooked), WebhookPromotionTarget)
    assert isinstance(build_notifier(hooked), WebhookNotifier)
    with pytest.raises(ValueError, match="WEBHOOK_URL"):
        build_promotion_target(Settings(data_dir=tmp_path, promotion_target="webhook"))


async def test_worker_refuses_to_start_on_a_bad_policy(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    policies.mkdir()
    good = (CREDIT.parent.parent / "policies" / "credit-underwriting.yaml").read_text()
    (policies / "credit-underwriting.yaml").write_text(good.replace("evidence.metrics.auc >= 0.70",
                                                                    "evidence.metrics.auc >= "))
    # The address points nowhere: the policy check must refuse before any connection is tried.
    settings = Settings(data_dir=tmp_path, policies_dir=policies, temporal_address="127.0.0.1:1")
    with pytest.raises(InvalidPolicy) as info:
        await run_worker(settings)
    assert "credit-underwriting.yaml" in str(info.value) and "discrimination" in str(info.value)


async def test_refused_quorum_met_for_role(temporal_client: Client, task_queue: str, env: Env) -> None:
    """A gate of two roles: once the validator part is complete, a second validator is refused."""
    inp = await example_input(env, CREDIT, version=unique_version())
    stages = list(inp.policy.stages)
    validation = inp.policy.stage("validation")
    assert validation is not None
    joint = validation.model_copy(update={"approvals": [ApprovalRule(role=Role.model_validator, count=1),
                                                         ApprovalRule(role=Role.model_risk_officer, count=1)]})
    stages[stages.index(validation)] = joint
    policy = inp.policy.model_copy(update={"stages": stages})
    inp = inp.model_copy(update={"policy": policy, "policy_hash": policy_hash(policy)})
    second_validator = Actor(user_id="u-val2", username="victor.validator", roles=[Role.model_validator],
                             team="validation")
    async with worker(temporal_client, task_queue, env):
        handle = await start(temporal_client, inp, task_queue)
        opened = await wait_state(handle, at_gate("validation"))
        assert opened.waiting_on == [Role.model_validator, Role.model_risk_officer]
        half = await decide(handle, VALIDATOR, "validation", "approve")
        assert half.state.waiting_on == [Role.model_risk_officer]
        await _assert_refused(handle, second_validator, "validation", "approve", "quorum_met_for_role")
        # the other role completes the gate
        await decide(handle, RISK1, "validation", "approve")
        await wait_state(handle, at_gate("risk_review"))
        await handle.terminate("test over")
