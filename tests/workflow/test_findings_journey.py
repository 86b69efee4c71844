"""The issue's "done when", on the time-skipping test server (months pass in seconds), real SQLite database.

A credit validation ends in approve_with_conditions with two findings; the developer remediates one and a
validator (not the remediator, not the owning team) closes it; the other is reminded, goes overdue and is
escalated (and, the model being in production, flags it for revalidation). A failing staging check is waived
by an exception (maker-checker: a second risk officer approves it), the model goes to production, and the
exception lapses on its expiry date: the model is flagged and the owners notified. Every step is an audit event
in a verified chain and a row of the findings register.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment

from engine.audit import verify_chain
from engine.db import AuditEvent
from engine.findings import ExceptionKind
from engine.lifecycle import Actor, ConditionIn
from engine.policy import Role
from testing.findings import (
    approve_exception,
    approve_with_conditions,
    credit_input_without,
    eventually,
    exception_rows,
    finding,
    finding_rows,
    reaping,
    remediate,
    request_exception,
    verify,
)
from testing.workflow import (
    DEV,
    DEV2,
    RISK1,
    RISK2,
    VALIDATOR,
    Env,
    app_env,
    at_gate,
    decide,
    events,
    start,
    state,
    wait_events,
    wait_state,
    worker,
)


@pytest.fixture
async def env(sqlite_url: str, tmp_path: Path) -> AsyncIterator[Env]:
    async with app_env(sqlite_url, tmp_path) as e:
        yield e


def _refusal(info: pytest.ExceptionInfo[WorkflowUpdateFailedError]) -> str | None:
    cause = info.value.cause
    return cause.type if isinstance(cause, ApplicationError) else None


async def test_conditions_remediation_overdue_and_a_lapsing_exception(
        time_skipping_env: WorkflowEnvironment, task_queue: str, env: Env) -> None:
    client = time_skipping_env.client
    inp = await credit_input_without(env, "monitoring_plan", "3.2.0-f1")
    pid, model = inp.spec.progression_id, inp.spec.model.id
    async with worker(client, task_queue, env), reaping(client, env, inp.spec.model.id):
        handle = await start(client, inp, task_queue)
        opened = await wait_state(handle, at_gate("validation"))
        t0 = opened.updated_at

        # 1. validation ends in "approved with conditions": two findings in one act
        result = await approve_with_conditions(handle, VALIDATOR, "validation", [
            ConditionIn(severity="medium", title="Out-of-time sample too short",
                        description="12 months of out-of-time data; policy expects 24"),
            ConditionIn(severity="medium", title="No challenger model")])
        decision = result.state.stage("validation").decisions[-1]  # type: ignore[union-attr]
        assert len(decision.conditions) == 2
        short_sample, no_challenger = decision.conditions
        rows = await eventually(lambda: finding_rows(env, model), lambda r: len(r) == 2)
        assert {r.id for r in rows} == {short_sample, no_challenger}
        assert all(r.condition and r.status == "open" and r.severity == "medium" for r in rows)
        # the policy's default for medium: 90 days from the decision
        assert all(r.due_at - t0 >= timedelta(days=90) and r.due_at - t0 < timedelta(days=91) for r in rows)
        received = (await wait_events(env, pid, "decision.received"))[-1]
        assert received.payload["decision"] == "approve_with_conditions"
        assert [c["finding_id"] for c in received.payload["conditions"]] == [short_sample, no_challenger]

        # medium findings raised as conditions do not block (credit: "medium only as a condition")
        await wait_state(handle, at_gate("risk_review"))
        await decide(handle, RISK1, "risk_review", "approve", "residual risk accepted")
        await decide(handle, RISK2, "risk_review", "approve", "agree")

        # 2. staging fails its monitoring-plan check: an exception waives it (maker-checker on tier 1)
        blocked = await wait_state(handle, lambda s: s.current_stage == "staging" and s.status == "blocked")
        exc = await request_exception(client, task_queue, blocked, RISK1, kind=ExceptionKind.check,
                                      check_id="monitoring-plan", now=blocked.updated_at,
                                      expires_at=blocked.updated_at + timedelta(days=60))
        assert exc.status == "pending_approval" and exc.needs_checker
        assert (await state(handle)).status == "blocked"  # not in force before the second person approves
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await approve_exception(client, exc.exception_id, RISK1)
        assert _refusal(info) == "own_exception"
        granted = await approve_exception(client, exc.exception_id, RISK2)
        assert granted.status == "active" and granted.approved_by == RISK2.user_id

        live = await wait_state(handle, lambda s: s.status == "in_production")
        assert live.stage("staging").status == "passed"  # type: ignore[union-attr]
        unblocked = await wait_events(env, pid, "stage.unblocked")
        assert unblocked[0].payload["waived"] == {"monitoring-plan": exc.exception_id}

        # 3. the developer remediates one condition; SoD: she cannot close it, nor can her teammate
        remediated = await remediate(client, short_sample, DEV, "24 months of out-of-time data added")
        assert remediated.status == "remediation_submitted"
        team_validator = Actor(user_id="u-val-own", username="olga.own", team="retail-risk",
                               roles=[Role.model_validator, Role.model_developer])
        for who, code in ((DEV, "own_remediation"), (DEV2, "not_a_reviewer"), (team_validator, "own_team")):
            with pytest.raises(WorkflowUpdateFailedError) as info:
                await verify(client, short_sample, who)
            assert _refusal(info) == code
        closed = await verify(client, short_sample, VALIDATOR, "close", "out-of-time sample now adequate")
        assert closed.status == "closed" and closed.verified_by == VALIDATOR.user_id
        await eventually(lambda: finding_rows(env, model),
                         lambda r: {x.id: x.status for x in r}[short_sample] == "closed")

        # 4. time passes: the other condition is reminded (14 days before), the exception lapses at 60 days
        await time_skipping_env.sleep(timedelta(days=61))
        lapsed = await eventually(lambda: exception_rows(env, model), lambda r: r[0].status == "lapsed")
        assert lapsed[0].id == exc.exception_id
        flagged = await wait_state(handle, lambda s: any(exc.exception_id in f for f in s.flags))
        assert flagged.status == "in_production"
        assert any("monitoring-plan" in m for m in flagged.missing)
        assert (await finding(client, no_challenger)).overdue is False

        await time_skipping_env.sleep(timedelta(days=20))  # day 81: inside the 14-day reminder window
        reminded = await eventually(lambda: finding(client, no_challenger), lambda f: f.reminded)
        assert not reminded.overdue

        # 5. day 91: overdue, escalated to the policy's escalation role, the model flagged for revalidation
        await time_skipping_env.sleep(timedelta(days=10))
        overdue = await eventually(lambda: finding(client, no_challenger), lambda f: f.overdue)
        assert overdue.escalated_to == Role.model_risk_officer and overdue.status == "open"
        await wait_state(handle, lambda s: any(no_challenger in f and "revalidation" in f for f in s.flags))
        row = {r.id: r for r in await eventually(lambda: finding_rows(env, model),
                                                  lambda r: any(x.overdue for x in r))}[no_challenger]
        assert row.overdue and row.status == "open"

    # every step is in the audit trail, and the chain verifies
    by_model = await _model_events(env, model)
    kinds = [e.event_type for e in by_model]
    for expected in ("finding.raised", "finding.remediation_submitted", "finding.closed", "finding.reminder",
                     "finding.overdue", "finding.escalated", "exception.requested", "exception.granted",
                     "exception.lapsed", "stage.unblocked", "model.flagged", "deployment.recorded"):
        assert expected in kinds, expected
    # the two conditions (a model in production without monitoring results also gets a monitoring finding)
    conditions = [e for e in by_model if e.event_type == "finding.raised" and e.payload.get("condition")]
    assert len(conditions) == 2 and kinds.count("exception.lapsed") == 1
    escalated = next(e for e in by_model if e.event_type == "finding.escalated")
    assert escalated.payload["escalate_to"] == "model_risk_officer"
    notes = [e.payload for e in by_model if e.event_type == "notification.sent"]
    assert any(n["kind"] == "finding" and "model_risk_officer" in n["roles"] and "overdue" in n["message"]
               for n in notes)
    assert any(n["kind"] == "exception" and "lapsed" in n["message"] and "model_developer" in n["roles"]
               for n in notes)
    closed_event = next(e for e in by_model if e.event_type == "finding.closed")
    assert closed_event.actor_id == VALIDATOR.user_id and closed_event.payload["remediated_by"] == DEV.user_id
    assert kinds.index("exception.granted") < kinds.index("deployment.recorded") < kinds.index("exception.lapsed")
    async with env.sessionmaker() as session:
        chain = await verify_chain(session)
        assert chain.ok, chain
    assert await events(env, pid, "model.flagged")


async def _model_events(env: Env, model_id: str) -> list[AuditEvent]:
    async with env.sessionmaker() as session:
        return list((await session.scalars(select(AuditEvent).where(AuditEvent.model_id == model_id)
                                           .order_by(AuditEvent.seq))).all())


async def test_an_exception_on_a_blocking_finding_accepts_its_risk_until_it_lapses(
        time_skipping_env: WorkflowEnvironment, task_queue: str, env: Env) -> None:
    client = time_skipping_env.client
    inp = await credit_input_without(env, None, "3.2.0-f2")
    pid, model = inp.spec.progression_id, inp.spec.model.id
    async with worker(client, task_queue, env), reaping(client, env, inp.spec.model.id):
        handle = await start(client, inp, task_queue)
        await wait_state(handle, at_gate("validation"))
        result = await approve_with_conditions(handle, VALIDATOR, "validation", [
            ConditionIn(severity="high", title="No challenger model")])
        high = result.state.stage("validation").decisions[-1].conditions[0]  # type: ignore[union-attr]
        await wait_state(handle, at_gate("risk_review"))
        await decide(handle, RISK1, "risk_review", "approve", "residual risk accepted")
        await decide(handle, RISK2, "risk_review", "approve", "agree")
        held = await wait_state(handle, lambda s: s.current_stage == "production" and s.status == "blocked")
        assert any(high in m for m in held.missing) and held.waiting_on == [Role.model_developer]

        # the risk of the finding is accepted for 30 days (maker-checker): production goes ahead
        exc = await request_exception(client, task_queue, held, RISK1, kind=ExceptionKind.finding, finding_id=high,
                                      now=held.updated_at, expires_at=held.updated_at + timedelta(days=30),
                                      reason="challenger due next quarter; champion monitored weekly")
        assert (await state(handle)).status == "blocked"
        await approve_exception(client, exc.exception_id, RISK2)
        accepted = await eventually(lambda: finding(client, high), lambda f: f.status == "risk_accepted")
        assert accepted.waived_by == exc.exception_id
        await wait_state(handle, lambda s: s.status == "in_production")

        # it lapses: the finding is open again and the model is flagged
        await time_skipping_env.sleep(timedelta(days=31))
        reopened = await eventually(lambda: finding(client, high), lambda f: f.status == "open")
        assert reopened.waived_by is None
        flagged = await wait_state(handle, lambda s: any(exc.exception_id in f for f in s.flags))
        assert any(f"finding {high} is open again" in f for f in flagged.flags)
    kinds = [e.event_type for e in await _model_events(env, model)]
    assert kinds.count("finding.risk_accepted") == 1 and "finding.reopened" in kinds
    assert kinds.index("finding.risk_accepted") < kinds.index("deployment.recorded") < kinds.index("exception.lapsed")
    assert await events(env, pid, "model.flagged")
