"""Life after production on the time-skipping server: monitoring breaches, early and periodic revalidation, the
calendar restarting, missing results, the materiality tier's cadence, and retirement stopping every timer."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from engine.audit import verify_chain
from engine.db import FindingRow
from engine.policy import Role
from testing.monitoring import MONITOR, ask_retirement, credit_metrics, deliver
from testing.polling import eventually
from testing.workflow import (
    CREDIT,
    DEV,
    RISK1,
    STRANGER,
    VALIDATOR,
    Env,
    app_env,
    decide,
    events,
    example_input,
    finished,
    running,
    state,
    unique_version,
    wait_events,
    wait_state,
    walk_to_production,
)
from tests.workflow.test_continue_as_new import short_history_client  # noqa: F401 - the fixture


def _refused(info: pytest.ExceptionInfo[WorkflowUpdateFailedError]) -> str:
    cause = info.value.cause
    assert isinstance(cause, ApplicationError)
    return str(cause.type)


async def _findings(env: Env, model_id: str) -> list[FindingRow]:
    async with env.sessionmaker() as session:
        return list((await session.scalars(select(FindingRow).where(FindingRow.model_id == model_id))).all())


async def test_breach_opens_revalidation_now_once_and_the_calendar_restarts(
        time_skipping_env: WorkflowEnvironment, task_queue: str, env: Env) -> None:
    client = time_skipping_env.client
    async with running(client, task_queue, env) as handle:
        pid = handle.id
        live = await walk_to_production(handle)
        assert live.revalidation_due_at is not None and live.deployed_at is not None
        calendar_due = live.revalidation_due_at
        day0 = live.deployed_at.date()

        await time_skipping_env.sleep(timedelta(days=31))
        calm = await deliver(client, handle.id, day0 + timedelta(days=30), credit_metrics())
        assert calm.breaches == [] and calm.current_stage is None

        # a developer, a risk officer: not the monitoring poster (the policy names the monitor identity only)
        for person in (DEV, RISK1):
            with pytest.raises(WorkflowUpdateFailedError) as info:
                await deliver(client, handle.id, day0 + timedelta(days=45), credit_metrics(psi=0.4), actor=person)
            assert _refused(info) == "not_a_monitoring_poster"

        await time_skipping_env.sleep(timedelta(days=30))
        drift = await deliver(client, handle.id, day0 + timedelta(days=60), credit_metrics(psi=0.41))
        assert [b.rule_id for b in drift.breaches] == ["psi-drift"]
        opened = await wait_state(handle, lambda s: s.current_stage == "revalidation")
        gate = opened.stage("revalidation")
        assert gate is not None and gate.status == "awaiting_approval"
        assert opened.status == "in_production" and not opened.revalidation_overdue
        assert opened.monitoring is not None and opened.monitoring.triggered_by is not None
        assert opened.monitoring.triggered_by.rule_id == "psi-drift"
        assert opened.monitoring.triggered_by.inputs["psi"]["bureau_score"] == 0.41
        assert any("monitoring breach psi-drift" in m for m in opened.missing)
        assert opened.waiting_on == [Role.model_validator]
        triggered = await wait_events(env, pid, "revalidation.triggered")
        assert triggered[0].payload["breach"]["rule_id"] == "psi-drift"
        assert await events(env, pid, "revalidation.due") == []

        # the same period again is refused; a new period's breach does not open a second gate
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await deliver(client, handle.id, day0 + timedelta(days=60), credit_metrics(psi=0.5))
        assert _refused(info) == "duplicate_period"
        again = await deliver(client, handle.id, day0 + timedelta(days=61), credit_metrics(psi=0.5))
        assert [b.rule_id for b in again.breaches] == ["psi-drift"]
        assert "already open" in again.actions[0]
        assert len(await events(env, pid, "revalidation.triggered")) == 1
        notes = [e for e in await events(env, pid, "notification.sent") if e.payload["kind"] == "monitoring"]
        assert notes and any(Role.model_validator.value in e.payload["roles"] for e in notes)

        decided = await decide(handle, VALIDATOR, "revalidation", "approve", "recalibrated; drift explained")
        assert decided.accepted
        after = await wait_state(handle, lambda s: s.revalidations == 1 and s.current_stage is None)
        assert after.revalidation_due_at is not None and after.revalidation_due_at > calendar_due
        # the calendar restarts from the decision: a full period (tier 1: 365 days) from now
        completed = await wait_events(env, pid, "revalidation.completed")
        assert completed[0].payload["triggered_by"] == "psi-drift"
        assert after.revalidation_due_at - completed[0].occurred_at == timedelta(days=365)

        # a breach after the decision opens a new revalidation (a new cycle)
        await deliver(client, handle.id, day0 + timedelta(days=62), credit_metrics(psi=0.3))
        await wait_state(handle, lambda s: s.current_stage == "revalidation")
        assert len(await wait_events(env, pid, "revalidation.triggered", 2)) == 2
        await handle.terminate("test over")  # no timer of this test may hold the shared time-skipping server
    async with env.sessionmaker() as session:
        assert (await verify_chain(session)).ok


async def test_finding_breach_once_per_rule_and_period_and_missing_results_raise_a_finding(
        time_skipping_env: WorkflowEnvironment, task_queue: str, env: Env) -> None:
    client = time_skipping_env.client
    inp = await example_input(env, CREDIT, version=unique_version())
    pid, model = inp.spec.progression_id, inp.spec.model.id
    async with running(client, task_queue, env, inp) as handle:
        live = await walk_to_production(handle)
        assert live.deployed_at is not None
        day0 = live.deployed_at.date()
        await time_skipping_env.sleep(timedelta(days=20))
        weak = await deliver(client, handle.id, day0 + timedelta(days=15), credit_metrics(auc=0.6, volume=0))
        assert sorted(b.rule_id for b in weak.breaches) == ["auc-decay", "no-volume"]
        assert weak.current_stage is None  # findings, no revalidation
        raised = [e.payload for e in await wait_events(env, pid, "monitoring.breach", 2)]
        assert all(p.get("finding_id") for p in raised)

        async def two_findings() -> list[FindingRow] | None:
            rows = await _findings(env, model)
            return rows if len(rows) == 2 else None

        rows = await eventually(two_findings, "two monitoring findings")
        assert {r.severity for r in rows} == {"high", "medium"}
        assert all(r.record["raised_by_username"] == MONITOR.username for r in rows)
        assert all(r.record["evidence_refs"] == [f"monitoring:{weak.result_id}"] for r in rows)
        # the same delivery again (a retry by result id) is answered, nothing is raised twice
        retry = await deliver(client, handle.id, day0 + timedelta(days=15), credit_metrics(auc=0.6, volume=0),
                              result_id=weak.result_id)
        assert retry.result_id == weak.result_id
        assert len(await events(env, pid, "monitoring.breach")) == 2

        # no results for two 30-day periods after the last one: a finding for the missing results
        await time_skipping_env.sleep(timedelta(days=45))
        assert await events(env, pid, "monitoring.overdue") == []
        await time_skipping_env.sleep(timedelta(days=30))
        overdue = await wait_events(env, pid, "monitoring.overdue")
        assert overdue[0].payload["finding_id"]

        async def three_findings() -> list[FindingRow] | None:
            rows = await _findings(env, model)
            return rows if len(rows) == 3 else None

        rows = await eventually(three_findings, "the overdue finding")
        assert any(r.record["title"] == "Monitoring results overdue" for r in rows)
        await handle.terminate("test over")
        for row in rows:
            await client.get_workflow_handle(f"finding-{row.id}").terminate("test over")


async def test_materiality_tier_is_an_input_that_scales_the_cadence(
        time_skipping_env: WorkflowEnvironment, task_queue: str, env: Env) -> None:
    client = time_skipping_env.client
    inp = await example_input(env, CREDIT, version=unique_version())
    inp = inp.model_copy(update={"materiality_tier": 3})
    async with running(client, task_queue, env, inp) as handle:
        live = await walk_to_production(handle)
        assert live.revalidation_due_at is not None and live.deployed_at is not None
        assert live.revalidation_due_at - live.deployed_at == timedelta(days=730)  # tier 3: every two years
        await time_skipping_env.sleep(timedelta(days=731))
        due = await wait_state(handle, lambda s: s.current_stage == "revalidation")
        gate = due.stage("revalidation")
        assert gate is not None and [(a.role, a.count, a.sla) for a in gate.approvals] == [
            (Role.model_validator, 1, "10d")]
        assert due.revalidation_overdue and due.monitoring is not None and due.monitoring.tier == 3
        await handle.terminate("test over")


async def test_overdue_results_while_a_gate_is_open_and_a_rejected_revalidation_undeploys(
        time_skipping_env: WorkflowEnvironment, task_queue: str, env: Env) -> None:
    client = time_skipping_env.client
    async with running(client, task_queue, env) as handle:
        pid = handle.id
        live = await walk_to_production(handle)
        assert live.deployed_at is not None
        # results keep coming (no overdue finding): only the calendar opens the gate
        for month in range(1, 13):
            await time_skipping_env.sleep(timedelta(days=30))
            await deliver(client, handle.id, live.deployed_at.date() + timedelta(days=30 * month), credit_metrics())
        await time_skipping_env.sleep(timedelta(days=10))
        due = await wait_state(handle, lambda s: s.current_stage == "revalidation")
        assert due.revalidation_overdue and (due.monitoring is None or due.monitoring.triggered_by is None)
        assert await events(env, pid, "monitoring.overdue") == []
        # the gate stays open for months and the results stop: missing results still raise their finding
        await time_skipping_env.sleep(timedelta(days=70))
        overdue = await wait_events(env, pid, "monitoring.overdue")
        assert overdue[0].payload["finding_id"]
        await decide(handle, VALIDATOR, "revalidation", "reject", "population drifted; retire")
        final = await finished(handle)
        assert final.status == "retired" and final.retired_at is not None
        undeploy = [d for d in env.target.deployments if d.progression_id == pid and d.action == "undeploy"]
        assert len(undeploy) == 1 and undeploy[0].stage == "revalidation"
        retired = await wait_events(env, pid, "model.retired")
        assert retired[0].payload["reason"] == "revalidation rejected"
        assert len(await events(env, pid, "monitoring.overdue")) == 1


async def test_retirement_is_a_gate_then_undeploy_and_every_timer_stops(
        time_skipping_env: WorkflowEnvironment, task_queue: str, env: Env) -> None:
    client = time_skipping_env.client
    async with running(client, task_queue, env) as handle:
        pid = handle.id
        await walk_to_production(handle)
        # not the owner; a dependency in production without an override
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await ask_retirement(handle, STRANGER)
        assert _refused(info) == "not_model_owner"
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await ask_retirement(handle, DEV, dependents=["limit-setting-model"])
        assert _refused(info) == "dependency_in_production"

        asked = await ask_retirement(handle, DEV, reason="replaced by 4.0", replacement="4.0.0")
        gate = asked.stage("retirement")
        assert gate is not None and gate.status == "awaiting_approval" and asked.status == "in_production"
        assert [(a.role, a.count) for a in gate.approvals] == [(Role.model_risk_officer, 1)]
        assert any("retirement asked by dana.dev: replaced by 4.0" in m for m in asked.missing)
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await ask_retirement(handle, DEV)
        assert _refused(info) == "retirement_pending"
        # the owner cannot approve their own retirement; a validator is not the policy's approver
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await decide(handle, DEV, "retirement", "approve")
        assert _refused(info) == "not_a_gate_role"
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await decide(handle, VALIDATOR, "retirement", "approve")
        assert _refused(info) == "not_a_gate_role"

        # declined: the model stays in production, the owner may ask again
        await decide(handle, RISK1, "retirement", "reject", "still scoring the legacy book")
        kept = await wait_state(handle, lambda s: s.current_stage is None)
        assert kept.status == "in_production" and kept.retirement is None
        assert len(await wait_events(env, pid, "retirement.declined")) == 1

        await ask_retirement(handle, DEV, reason="replaced by 4.0", replacement="4.0.0")
        await decide(handle, RISK1, "retirement", "approve", "replacement validated")
        final = await finished(handle)
        assert final.status == "retired" and final.retired_at is not None
        assert final.revalidation_due_at is None
        undeploy = [d for d in env.target.deployments if d.progression_id == pid and d.action == "undeploy"]
        assert len(undeploy) == 1
        retired = await wait_events(env, pid, "model.retired")
        assert retired[0].payload["replacement"] == "4.0.0"
        # the workflow has completed: no revalidation, SLA or monitoring timer is left to fire
        described = await handle.describe()
        assert described.status == WorkflowExecutionStatus.COMPLETED
        assert (await state(handle)).status == "retired"
        with pytest.raises(RPCError):  # the workflow has completed: nothing is delivered any more
            await deliver(client, handle.id, final.retired_at.date(), credit_metrics())


async def test_monitoring_state_survives_continue_as_new(
        short_history_client: Client, sqlite_url: str, tmp_path: Path) -> None:  # noqa: F811 - the fixture
    """Results delivered until the server suggests continue-as-new (a dev server of its own, short histories):
    the new run still refuses a period it already has, answers a retried result without applying it again,
    and a drift opens the revalidation gate."""
    client, task_queue = short_history_client, f"tq-{uuid.uuid4()}"
    async with app_env(sqlite_url, tmp_path) as env:
        async with running(client, task_queue, env) as handle:
            pid = handle.id
            live = await walk_to_production(handle)
            assert live.deployed_at is not None
            day0 = live.deployed_at.date()
            first = await deliver(client, handle.id, day0 - timedelta(days=400), credit_metrics(auc=0.6))
            first_run = (await handle.describe()).run_id
            for i in range(1, 80):
                if (await client.get_workflow_handle(pid).describe()).run_id != first_run:
                    break
                await deliver(client, pid, day0 - timedelta(days=400 - i), credit_metrics())
            current = client.get_workflow_handle(pid)
            assert (await current.describe()).run_id != first_run, "the workflow never continued as new"
            carried = await wait_state(current, lambda s: s.monitoring is not None and len(s.monitoring.periods) > 1)
            assert carried.monitoring is not None and day0 - timedelta(days=400) in carried.monitoring.periods
            with pytest.raises(WorkflowUpdateFailedError) as info:
                await deliver(client, pid, day0 - timedelta(days=400), credit_metrics())
            assert _refused(info) == "duplicate_period"
            # The new run applies a result of its own first (as it may by chance when a delivery races the
            # continue-as-new): the retry of the first run's result is still answered at once, not left waiting for
            # an outcome only the first run had (it hung forever before the patch monitoring-retry-waits-only-...).
            await deliver(client, pid, day0 - timedelta(days=5), credit_metrics())
            retry = await deliver(client, pid, day0 - timedelta(days=400), credit_metrics(auc=0.6),
                                  result_id=first.result_id)
            assert [b.rule_id for b in retry.breaches] == ["auc-decay"]
            drift = await deliver(client, pid, day0, credit_metrics(psi=0.5))
            assert [b.rule_id for b in drift.breaches] == ["psi-drift"]
            await wait_state(current, lambda s: s.current_stage == "revalidation")
            await current.terminate("test over")
        breaches = [e for e in await events(env, pid, "monitoring.breach") if e.payload["rule_id"] == "auc-decay"]
        assert len(breaches) == 1  # the retry in the new run raised nothing again
