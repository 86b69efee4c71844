"""Builders for the findings and exceptions tests: start their workflows, drive their Updates, read rows."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import yaml
from sqlalchemy import select
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from engine.db import ExceptionRow, FindingRow, ProgressionRow
from engine.findings import (
    EXCEPTION_WORKFLOW,
    QUERY_FINDING,
    UPDATE_APPROVE_EXCEPTION,
    UPDATE_FINDING_READY,
    UPDATE_REMEDIATE,
    UPDATE_VERIFY,
    ApproveExceptionInput,
    ExceptionInput,
    ExceptionKind,
    ExceptionRecord,
    ExceptionStatus,
    FindingRecord,
    RemediationInput,
    VerifyInput,
    VerifyOutcome,
    exception_workflow_id,
    finding_workflow_id,
)
from engine.lifecycle import Actor, ConditionIn, DecisionKind, ProgressionState
from engine.loading import load_spec
from testing import polling
from testing.workflow import CREDIT, DEV, Env, answered, put_evidence, registry
from workflows.contract import UPDATE_DECIDE, DecideInput, DecideResult, ProgressionInput


async def credit_input_without(env: Env, missing: str | None, version: str, submitted_by: Actor = DEV
                               ) -> ProgressionInput:
    """The credit example as version ``version``, without one evidence item (e.g. the monitoring plan: staging's
    check fails); ``None``: with all of it."""
    data = yaml.safe_load((CREDIT / "progression.yaml").read_text())
    data["version"]["id"] = version
    if missing is not None:
        del data["evidence"][missing]
    text = yaml.safe_dump(data, sort_keys=False)
    spec = load_spec(text, filename="progression.yaml", registry=registry())
    evidence = {name: await put_evidence(env, name, (CREDIT / rel).read_bytes(), rel)
                for name, rel in spec.evidence.items()}
    loaded = registry().get(spec.model.business_intent)
    assert loaded is not None
    return ProgressionInput(spec=spec, spec_yaml=text, policy=loaded.policy, policy_hash=loaded.hash,
                            evidence=evidence, submitted_by=submitted_by)


async def approve_with_conditions(handle: WorkflowHandle[Any, Any], actor: Actor, stage: str,
                                  conditions: list[ConditionIn], comment: str = "approved with conditions",
                                  decision: DecisionKind = DecisionKind.approve) -> DecideResult:
    """An approval raising ``conditions`` (``decision`` other than approve: an attack the validator refuses)."""
    inp = DecideInput(stage=stage, decision=decision, comment=comment, actor=actor,
                      decision_id=str(uuid.uuid4()), conditions=conditions)
    result = await polling.within(handle.execute_update(UPDATE_DECIDE, inp, id=inp.decision_id,
                                                        result_type=DecideResult),
                                  f"approval with conditions at {stage}")
    # The state as the API answers it (testing.workflow.answered): left out since patch lean-update-results.
    return result.model_copy(update={"state": await answered(handle, result)})


def finding_handle(client: Client, finding_id: str) -> WorkflowHandle[Any, Any]:
    return client.get_workflow_handle(finding_workflow_id(finding_id))


async def finding(client: Client, finding_id: str) -> FindingRecord:
    return await polling.within(finding_handle(client, finding_id).query(QUERY_FINDING, result_type=FindingRecord),
                                f"query finding {finding_id}")


async def remediate(client: Client, finding_id: str, actor: Actor, note: str = "fixed") -> FindingRecord:
    inp = RemediationInput(actor=actor, note=note, evidence_refs=["sha256:" + "a" * 64], request_id=str(uuid.uuid4()))
    return await polling.within(finding_handle(client, finding_id).execute_update(
        UPDATE_REMEDIATE, inp, result_type=FindingRecord), f"remediation of {finding_id}")


async def verify(client: Client, finding_id: str, actor: Actor, outcome: str = "close",
                 comment: str = "verified") -> FindingRecord:
    inp = VerifyInput(actor=actor, outcome=VerifyOutcome(outcome), comment=comment, request_id=str(uuid.uuid4()))
    return await polling.within(finding_handle(client, finding_id).execute_update(
        UPDATE_VERIFY, inp, result_type=FindingRecord), f"verification of {finding_id}")


async def request_exception(client: Client, task_queue: str, state: ProgressionState, actor: Actor, *,
                            kind: ExceptionKind, expires_at: datetime, now: datetime, check_id: str | None = None,
                            finding_id: str | None = None, magnitude: float | None = None,
                            reason: str = "known cause; fixed in the next version") -> ExceptionRecord:
    """What the API does once its refusals pass: start the exception's workflow and wait until it is written."""
    loaded = registry().get(state.business_intent)
    assert loaded is not None and loaded.policy.exceptions is not None
    needs_checker = loaded.policy.exceptions_need_checker
    record = ExceptionRecord(
        exception_id="X-" + uuid.uuid4().hex[:12], kind=kind, model_id=state.model_id, team=state.team,
        business_intent=state.business_intent, version_id=state.version_id, progression_id=state.progression_id,
        check_id=check_id, finding_id=finding_id, reason=reason, magnitude=magnitude, expires_at=expires_at,
        status=ExceptionStatus.pending_approval if needs_checker else ExceptionStatus.active,
        needs_checker=needs_checker, requested_by=actor.user_id, requested_by_username=actor.username,
        requested_at=now)
    handle = await client.start_workflow(EXCEPTION_WORKFLOW, ExceptionInput(exception=record,
                                                                            rules=loaded.policy.exceptions),
                                         id=exception_workflow_id(record.exception_id), task_queue=task_queue)
    return await polling.within(handle.execute_update(UPDATE_FINDING_READY, result_type=ExceptionRecord),
                                f"exception {record.exception_id} written")


async def approve_exception(client: Client, exception_id: str, actor: Actor) -> ExceptionRecord:
    inp = ApproveExceptionInput(actor=actor, comment="second pair of eyes", request_id=str(uuid.uuid4()))
    return await polling.within(client.get_workflow_handle(exception_workflow_id(exception_id)).execute_update(
        UPDATE_APPROVE_EXCEPTION, inp, result_type=ExceptionRecord), f"approval of exception {exception_id}")


async def finding_rows(env: Env, model_id: str) -> list[FindingRow]:
    async with env.sessionmaker() as session:
        return list((await session.scalars(select(FindingRow).where(FindingRow.model_id == model_id)
                                           .order_by(FindingRow.raised_at, FindingRow.id))).all())


async def exception_rows(env: Env, model_id: str) -> list[ExceptionRow]:
    async with env.sessionmaker() as session:
        return list((await session.scalars(select(ExceptionRow).where(ExceptionRow.model_id == model_id))).all())


@asynccontextmanager
async def reaping(client: Client, env: Env, model_id: str) -> AsyncIterator[None]:
    """Terminate, on the way out, every workflow of the model a test started: its progressions, findings and
    exceptions. The time-skipping server is shared by the session and skips time only when nothing is pending,
    so a finding's months-long timer left behind would hold the next test's ``sleep`` until it times out."""
    try:
        yield
    finally:
        async with env.sessionmaker() as session:
            ids = list((await session.scalars(select(ProgressionRow.id).where(
                ProgressionRow.model_id == model_id))).all())
            ids += [finding_workflow_id(i) for i in (await session.scalars(select(FindingRow.id).where(
                FindingRow.model_id == model_id))).all()]
            ids += [exception_workflow_id(i) for i in (await session.scalars(select(ExceptionRow.id).where(
                ExceptionRow.model_id == model_id))).all()]
        for workflow_id in ids:
            try:
                await client.get_workflow_handle(workflow_id).terminate("test over")
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:  # already finished
                    raise


async def eventually(probe: Callable[[], Awaitable[Any]], predicate: Callable[[Any], bool],
                     what: str = "a findings answer") -> Any:
    """Await ``probe()`` until ``predicate`` holds of its answer and return that answer (which may be falsy):
    :func:`testing.polling.eventually`'s loop and timeout, not a second polling loop."""

    async def matched() -> tuple[Any] | None:
        answer = await probe()
        return (answer,) if predicate(answer) else None

    return (await polling.eventually(matched, what))[0]
