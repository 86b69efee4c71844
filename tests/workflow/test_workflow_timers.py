"""Timers on the time-skipping test server: the 5-day SLA escalation and yearly revalidation.

``env.sleep`` skips server time, so days pass in milliseconds; activities (database writes)
run for real.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from engine.audit import verify_chain
from engine.policy import Role
from testing.workflow import (
    DEV,
    RISK1,
    VALIDATOR,
    Env,
    at_gate,
    decide,
    events,
    finished,
    running,
    state,
    wait_events,
    wait_state,
    walk_to_production,
    withdraw,
)


async def test_sla_expiry_escalates_once_and_gate_keeps_waiting(
        time_skipping_env: WorkflowEnvironment, task_queue: str, env: Env) -> None:
    client = time_skipping_env.client
    async with running(client, task_queue, env) as handle:
        pid = handle.id
        opened = await wait_state(handle, at_gate("validation"))
        approval = opened.stage("validation").approvals[0]  # type: ignore[union-attr]
        assert approval.sla == "5d" and not approval.escalated
        assert approval.due_at is not None and approval.due_at - opened.updated_at <= timedelta(days=5)

        await time_skipping_env.sleep(timedelta(days=4))
        assert not (await state(handle)).stage("validation").approvals[0].escalated  # type: ignore[union-attr]
        assert await events(env, pid, "gate.escalated") == []

        await time_skipping_env.sleep(timedelta(days=2))
        escalated = await wait_state(handle, lambda s: s.stage("validation").approvals[0].escalated)  # type: ignore[union-attr]
        assert escalated.status == "awaiting_approval" and escalated.current_stage == "validation"
        assert escalated.waiting_on == [Role.model_validator]
        assert "escalated to model risk officer" in escalated.next_action
        await wait_events(env, pid, "gate.escalated")

        # more time passes: the same gate attempt is not escalated twice
        await time_skipping_env.sleep(timedelta(days=10))
        await state(handle)
        recorded = await events(env, pid, "gate.escalated")
        assert len(recorded) == 1
        assert recorded[0].stage == "validation"
        assert recorded[0].payload["escalate_to"] == "model_risk_officer"
        assert recorded[0].payload["sla"] == "5d"
        notes = [e for e in await events(env, pid, "notification.sent") if e.payload["kind"] == "escalated"]
        assert len(notes) == 1 and notes[0].payload["roles"] == ["model_risk_officer"]

        # an approval after the escalation still passes the gate
        await decide(handle, VALIDATOR, "validation", "approve", "late but thorough")
        moved = await wait_state(handle, at_gate("risk_review"))
        assert moved.stage("validation").status == "passed"  # type: ignore[union-attr]
        await withdraw(handle, DEV, "test over")
        await finished(handle)

    async with env.sessionmaker() as session:
        chain = await verify_chain(session)
        assert chain.ok, chain
    types = [e.event_type for e in await events(env, pid)]
    assert types.index("gate.escalated") < types.index("decision.received")


async def test_yearly_revalidation_flags_overdue_and_opens_gate(
        time_skipping_env: WorkflowEnvironment, task_queue: str, env: Env) -> None:
    client = time_skipping_env.client
    async with running(client, task_queue, env) as handle:
        pid = handle.id
        live = await walk_to_production(handle)
        assert live.revalidation_due_at is not None and not live.revalidation_overdue
        assert live.deployed_at is not None
        assert live.revalidation_due_at - live.deployed_at == timedelta(days=365)

        await time_skipping_env.sleep(timedelta(days=300))
        assert not (await state(handle)).revalidation_overdue

        await time_skipping_env.sleep(timedelta(days=70))
        due = await wait_state(handle, lambda s: s.revalidation_overdue)
        assert due.status == "in_production" and due.current_stage == "revalidation"
        gate = due.stage("revalidation")
        assert gate is not None and gate.status == "awaiting_approval"
        # documented choice: the revalidation gate reuses the validation stage's approval rules
        assert [(a.role, a.count) for a in gate.approvals] == [(Role.model_validator, 1)]
        assert due.waiting_on == [Role.model_validator]
        assert "revalidation is overdue" in due.missing
        assert len(await wait_events(env, pid, "revalidation.due")) == 1

        # a risk officer cannot decide a validator gate; the validator can
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await decide(handle, RISK1, "revalidation", "approve")
        assert isinstance(info.value.cause, ApplicationError) and info.value.cause.type == "not_a_gate_role"
        renewed = await decide(handle, VALIDATOR, "revalidation", "approve", "annual review done")
        assert renewed.accepted
        cycle = await wait_state(handle, lambda s: s.revalidations == 1)
        assert not cycle.revalidation_overdue and cycle.status == "in_production"
        assert cycle.revalidation_due_at is not None and cycle.revalidation_due_at > live.revalidation_due_at
        assert len(await wait_events(env, pid, "revalidation.completed")) == 1

        # the next year a rejection retires the model
        await time_skipping_env.sleep(timedelta(days=366))
        await wait_state(handle, lambda s: s.revalidation_overdue)
        await decide(handle, VALIDATOR, "revalidation", "reject", "population drifted; retire")
        final = await finished(handle)
        assert final.status == "retired" and final.revalidations == 1
        retired = final.stage("revalidation")
        assert retired is not None and retired.status == "rejected"
        assert len(await events(env, pid, "progression.rejected")) == 1

    async with env.sessionmaker() as session:
        assert (await verify_chain(session)).ok
