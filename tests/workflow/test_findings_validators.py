"""The workflows' Update validators refuse what the API refuses, even when the API is bypassed.

Each attack goes straight to Temporal (as a compromised or buggy API would); the refusal carries the stable
code and never enters the workflow's history (no accepted Update event), so nothing changes.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from engine.findings import ExceptionKind, finding_workflow_id
from engine.lifecycle import Actor, ConditionIn, DecisionKind
from engine.policy import FindingBlock, Role
from testing.findings import (
    approve_exception,
    approve_with_conditions,
    credit_input_without,
    eventually,
    exception_rows,
    finding,
    reaping,
    remediate,
    request_exception,
    verify,
)
from testing.workflow import (
    CREDIT,
    DEV,
    DEV2,
    RISK1,
    RISK2,
    STRANGER,
    VALIDATOR,
    Env,
    accepted_update_ids,
    app_env,
    at_gate,
    decide,
    example_input,
    put_evidence,
    start,
    state,
    unique_version,
    wait_state,
    worker,
)
from workflows.contract import ProgressionInput

ADMIN = Actor(user_id="u-admin", username="adam.admin", roles=[Role.admin], team="platform")
TEAM_VALIDATOR = Actor(user_id="u-tv", username="tess.teamval", roles=[Role.model_validator, Role.model_developer],
                       team="retail-risk")
TEAM_RISK = Actor(user_id="u-tr", username="rory.teamrisk", roles=[Role.model_risk_officer, Role.model_developer],
                  team="retail-risk")


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    async with app_env(sqlite_url, tmp_path) as e:
        yield e


async def _refused(call: Any) -> str | None:
    with pytest.raises(WorkflowUpdateFailedError) as info:
        await call
    cause = info.value.cause
    return cause.type if isinstance(cause, ApplicationError) else None


def _blocking_risk_review(inp: ProgressionInput) -> ProgressionInput:
    """The credit policy with one more blocking rule: an open high finding also blocks the risk review gate."""
    rules = inp.policy.findings
    assert rules is not None
    rules = rules.model_copy(update={"blocks": [*rules.blocks, FindingBlock(stage="risk_review", severities=["high"])]})
    return inp.model_copy(update={"policy": inp.policy.model_copy(update={"findings": rules})})


async def test_decide_validator_blocks_and_checks_conditions(temporal_client: Client, task_queue: str,
                                                             env: Env) -> None:
    inp = _blocking_risk_review(await example_input(env, CREDIT, version=unique_version()))
    async with worker(temporal_client, task_queue, env), reaping(temporal_client, env, inp.spec.model.id):
        handle = await start(temporal_client, inp, task_queue)
        await wait_state(handle, at_gate("validation"))
        assert await _refused(approve_with_conditions(handle, VALIDATOR, "validation", [
            ConditionIn(severity="critical", title="not on the scale")])) == "unknown_severity"
        assert await _refused(approve_with_conditions(handle, VALIDATOR, "validation", [
            ConditionIn(severity="low", title="x")], "no", DecisionKind.reject)) == "conditions_need_approval"
        result = await approve_with_conditions(handle, VALIDATOR, "validation", [
            ConditionIn(severity="high", title="No challenger model")])
        high = result.state.stage("validation").decisions[-1].conditions[0]  # type: ignore[union-attr]

        await wait_state(handle, at_gate("risk_review"))
        assert await _refused(decide(handle, RISK1, "risk_review", "approve")) == "blocking_findings"
        gate = await state(handle)
        assert any(high in m for m in gate.missing) and gate.stage("risk_review").approvals[0].approved_by == []  # type: ignore[union-attr]
        # the finding is remediated and closed: the same approval now passes
        await eventually(lambda: finding(temporal_client, high), lambda f: f.status == "open")
        await remediate(temporal_client, high, DEV2, "challenger built")
        await verify(temporal_client, high, VALIDATOR, "close", "verified")
        await eventually(lambda: state(handle), lambda s: not any(high in m for m in s.missing))
        assert (await decide(handle, RISK1, "risk_review", "approve", "now fine")).accepted
        history = await handle.fetch_history()
    assert len(accepted_update_ids(history)) == 2  # the conditional approval and the last one


async def test_finding_validators_apply_segregation_of_duties(temporal_client: Client, task_queue: str,
                                                               env: Env) -> None:
    inp = await example_input(env, CREDIT, version=unique_version())
    async with worker(temporal_client, task_queue, env), reaping(temporal_client, env, inp.spec.model.id):
        handle = await start(temporal_client, inp, task_queue)
        await wait_state(handle, at_gate("validation"))
        result = await approve_with_conditions(handle, VALIDATOR, "validation", [
            ConditionIn(severity="low", title="Document the reject inference")])
        fid = result.state.stage("validation").decisions[-1].conditions[0]  # type: ignore[union-attr]
        await eventually(lambda: finding(temporal_client, fid), lambda f: f.raised_by == VALIDATOR.user_id)

        for who in (STRANGER, VALIDATOR, ADMIN):
            assert await _refused(remediate(temporal_client, fid, who)) == "not_owning_team"
        assert await _refused(verify(temporal_client, fid, RISK1)) == "no_remediation"
        await remediate(temporal_client, fid, DEV, "documented")
        assert await _refused(remediate(temporal_client, fid, DEV2)) == "finding_not_open"
        for who, code in ((DEV, "own_remediation"), (DEV2, "not_a_reviewer"), (TEAM_VALIDATOR, "own_team"),
                          (TEAM_RISK, "own_team"), (ADMIN, "not_a_reviewer")):
            assert await _refused(verify(temporal_client, fid, who)) == code, who.username
        closed = await verify(temporal_client, fid, RISK1, "close", "documented well")
        assert closed.status == "closed"
        history = await temporal_client.get_workflow_handle(finding_workflow_id(fid)).fetch_history()
    assert len(accepted_update_ids(history)) == 2  # the remediation and the closure; no refused one


async def test_exception_validators_and_a_lapsed_exception_cannot_be_reused(
        time_skipping_env: WorkflowEnvironment, task_queue: str, env: Env) -> None:
    client = time_skipping_env.client
    inp = await credit_input_without(env, "monitoring_plan", f"3.2.0-x{uuid.uuid4().hex[:6]}")
    async with worker(client, task_queue, env), reaping(client, env, inp.spec.model.id):
        handle = await start(client, inp, task_queue)
        await wait_state(handle, at_gate("validation"))
        await decide(handle, VALIDATOR, "validation", "approve")
        await wait_state(handle, at_gate("risk_review"))
        await decide(handle, RISK1, "risk_review", "approve")
        await decide(handle, RISK2, "risk_review", "approve")
        blocked = await wait_state(handle, lambda s: s.current_stage == "staging" and s.status == "blocked")
        t0 = blocked.updated_at
        exc = await request_exception(client, task_queue, blocked, RISK1, kind=ExceptionKind.check,
                                      check_id="monitoring-plan", now=t0, expires_at=t0 + timedelta(days=10))
        for who, code in ((RISK1, "own_exception"), (ADMIN, "not_an_exception_role"), (TEAM_RISK, "own_team"),
                          (VALIDATOR, "not_an_exception_role"), (DEV, "not_an_exception_role")):
            assert await _refused(approve_exception(client, exc.exception_id, who)) == code, who.username

        # nobody approved it within its 10 days: it lapses without ever taking effect
        await time_skipping_env.sleep(timedelta(days=11))
        rows = await eventually(lambda: exception_rows(env, inp.spec.model.id), lambda r: r[0].status == "lapsed")
        assert rows[0].record["approved_by"] is None
        with pytest.raises((WorkflowUpdateFailedError, RPCError)):
            await approve_exception(client, exc.exception_id, RISK2)  # re-using a lapsed exception
        still = await state(handle)
        assert still.status == "blocked" and still.current_stage == "staging"
        assert not still.exceptions  # lapsed exceptions waive nothing


async def test_a_waiver_that_lapses_before_the_gate_is_decided_blocks_the_stage_again(
        time_skipping_env: WorkflowEnvironment, task_queue: str, env: Env) -> None:
    client = time_skipping_env.client
    inp = await example_input(env, CREDIT, version=unique_version())
    metrics = json.loads((CREDIT / "evidence/metrics.json").read_text())
    metrics["sample"]["validation"] = 8000  # below the 10,000 accounts of check sample-size
    inp.evidence["metrics"] = await put_evidence(env, "metrics", json.dumps(metrics).encode(), "evidence/metrics.json")
    async with worker(client, task_queue, env), reaping(client, env, inp.spec.model.id):
        handle = await start(client, inp, task_queue)
        blocked = await wait_state(handle, lambda s: s.current_stage == "validation" and s.status == "blocked")
        assert [c.check_id for c in blocked.stage("validation").checks if not c.passed] == ["sample-size"]  # type: ignore[union-attr]
        exc = await request_exception(client, task_queue, blocked, RISK1, kind=ExceptionKind.check,
                                      check_id="sample-size", now=blocked.updated_at,
                                      expires_at=blocked.updated_at + timedelta(days=3))
        await approve_exception(client, exc.exception_id, RISK2)
        await wait_state(handle, at_gate("validation"))  # waived: the gate opens despite the failing check
        await time_skipping_env.sleep(timedelta(days=4))  # nobody decided; the waiver lapses
        again = await wait_state(handle, lambda s: s.current_stage == "validation" and s.status == "blocked")
        assert any("sample-size" in m for m in again.missing)
        assert await _refused(decide(handle, VALIDATOR, "validation", "approve")) == "gate_not_open"
