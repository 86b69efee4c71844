"""Findings and exceptions: raise, remediate, verify; request and approve exceptions; the register; metrics.

The finding and exception workflows are the single writers of their rows (``activities.findings``); the
API checks the same rules first (``engine.findings``) for a fast answer that says why, records every refusal
as an audit event (``finding.refused`` / ``exception.refused``), then starts the workflow or sends it the
Update, whose validator applies the rules again on the workflow's own state.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from api.authz import Action, Principal, listing_conditions, require, require_visible, visible_team_filter
from api.deps import AppState
from api.errors import ApiError
from engine import audit
from engine.db import CatalogModel, ExceptionRow, FindingRow, ProgressionRow
from engine.db import utcnow as _utcnow
from engine.findings import (
    EXCEPTION_WORKFLOW,
    FINDING_WORKFLOW,
    OPEN_STATUSES,
    UPDATE_APPROVE_EXCEPTION,
    UPDATE_FINDING_READY,
    UPDATE_REMEDIATE,
    UPDATE_VERIFY,
    ApproveExceptionInput,
    ExceptionInput,
    ExceptionKind,
    ExceptionRecord,
    ExceptionStatus,
    FindingInput,
    FindingRecord,
    RemediationInput,
    VerifyInput,
    VerifyOutcome,
    default_due,
    due_refusal,
    exception_approval_refusal,
    exception_workflow_id,
    finding_workflow_id,
    grant_refusal,
    raise_refusal,
    remediation_refusal,
    verification_refusal,
)
from engine.lifecycle import EventType, Refusal
from engine.policy import GovernancePolicy

EXPIRING_WINDOW = timedelta(days=30)


class FindingPage(BaseModel):
    items: list[FindingRecord]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class ExceptionPage(BaseModel):
    items: list[ExceptionRecord]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class FindingMetrics(BaseModel):
    open_by_severity: dict[str, int]
    overdue: int
    exceptions_expiring_30d: int
    exceptions_active: int
    exceptions_pending_approval: int


# ---- helpers ----------------------------------------------------------------------------------------------


def _error(refusal: Refusal) -> ApiError:
    return ApiError(refusal.http_status, refusal.code, refusal.message, {"refusal": refusal.code})


def _refusal_from_update(exc: WorkflowUpdateFailedError) -> Refusal:
    cause = exc.cause
    details = list(getattr(cause, "details", None) or [])
    if details and isinstance(details[0], dict):
        try:
            return Refusal.model_validate(details[0])
        except ValueError:
            pass
    return Refusal(code=getattr(cause, "type", None) or "refused", message=str(getattr(cause, "message", exc)),
                   http_status=409)


def _unavailable(exc: RPCError, what: str) -> ApiError:
    if exc.status == RPCStatusCode.NOT_FOUND:
        return ApiError(409, "finished", f"{what} accepts no more changes (its workflow has finished)")
    return ApiError(503, "temporal_unavailable", f"the workflow service did not answer: {exc.message}")


async def _record_refusal(session: AsyncSession, app: AppState, *, principal: Principal, event: EventType,
                          model_id: str, refusal: Refusal, action: str, subject: str | None,
                          request_id: str) -> None:
    """A refused request never reaches a workflow's history: the API records it, with the reason. The event id
    derives from the request id (user and Idempotency-Key), so a retried refusal is recorded once."""
    await audit.append_event(
        session, event_id=f"refusal-{request_id}", event_type=event.value, occurred_at=_utcnow(), actor_id=principal.id,
        model_id=model_id, payload={"code": refusal.code, "reason": refusal.message, "http_status": refusal.http_status,
                                    "action": action, "subject": subject, "username": principal.username,
                                    "roles": sorted(r.value for r in principal.roles), "team": principal.team},
        chain=app.settings.audit_chain)
    await session.commit()


async def _refuse(session: AsyncSession, app: AppState, principal: Principal, event: EventType, model_id: str,
                  refusal: Refusal, action: str, subject: str | None, request_id: str) -> ApiError:
    await _record_refusal(session, app, principal=principal, event=event, model_id=model_id, refusal=refusal,
                          action=action, subject=subject, request_id=request_id)
    return _error(refusal)


async def _model(session: AsyncSession, principal: Principal, model_id: str) -> CatalogModel:
    model = await session.get(CatalogModel, model_id)
    if model is None:
        raise ApiError(404, "not_found", f"model {model_id} not found")
    require_visible(principal, model.team, f"model {model_id}")
    return model


def _policy(app: AppState, intent: str) -> GovernancePolicy:
    loaded = app.registry.get(intent)
    if loaded is None:
        raise ApiError(409, "no_policy", f"no policy governs intent {intent!r}")
    return loaded.policy


def _new_id(prefix: str, request_id: str) -> str:
    return prefix + hashlib.sha256(request_id.encode()).hexdigest()[:12]


async def _version_exists(session: AsyncSession, model_id: str, version_id: str) -> ProgressionRow | None:
    return await session.get(ProgressionRow, f"{model_id}@{version_id}")


# ---- findings -----------------------------------------------------------------------------------------------


async def raise_finding(*, session: AsyncSession, app: AppState, principal: Principal, model_id: str,
                        version_id: str | None, stage: str | None, severity: str, title: str, description: str,
                        due_at: datetime | None, evidence_refs: list[str], request_id: str) -> FindingRecord:
    require(principal, Action.read_findings)
    model = await _model(session, principal, model_id)
    policy = _policy(app, model.business_intent)
    refusal = raise_refusal(principal.actor, team=model.team, severity=severity, rules=policy.findings) \
        if Action.raise_finding in principal.actions else Refusal(
            code="not_a_reviewer", http_status=403, message="findings are raised by a model_validator or "
                                                            "model_risk_officer")
    now = _utcnow()
    progression = await _version_exists(session, model_id, version_id) if version_id else None
    if refusal is None and version_id and progression is None:
        refusal = Refusal(code="unknown_version", http_status=422,
                          message=f"version_id: model {model_id} has no version {version_id!r}")
    if refusal is None and stage and policy.stage(stage) is None and stage != "revalidation":
        refusal = Refusal(code="unknown_stage", http_status=422,
                          message=f"stage: the {policy.intent} policy has no stage {stage!r}")
    if refusal is None and policy.findings is not None:
        refusal = due_refusal(policy.findings, severity, due_at, now)
    if refusal is not None:
        raise await _refuse(session, app, principal, EventType.finding_refused, model_id, refusal, "raise", None,
                            request_id)
    assert policy.findings is not None  # raise_refusal refuses a policy without a findings section
    record = FindingRecord(
        finding_id=_new_id("F-", request_id), model_id=model_id, team=model.team,
        business_intent=model.business_intent, version_id=version_id,
        progression_id=progression.id if progression else None, stage=stage, severity=severity, title=title,
        description=description, evidence_refs=evidence_refs,
        due_at=due_at or default_due(policy.findings, severity, now), raised_by=principal.id,
        raised_by_username=principal.username, raised_at=now)
    await session.close()  # the connection goes back to the pool while the workflow works
    return await _start_deadline_workflow(app, FINDING_WORKFLOW, FindingInput(finding=record, rules=policy.findings),
                                          finding_workflow_id(record.finding_id), FindingRecord,
                                          f"finding {record.finding_id}")


_Record = TypeVar("_Record", FindingRecord, ExceptionRecord)


async def _start_deadline_workflow(app: AppState, workflow: str, inp: FindingInput | ExceptionInput, workflow_id: str,
                                   result_type: type[_Record], what: str) -> _Record:
    """Start the finding's or exception's deadline workflow (or find it, on a retry) and wait until it has
    written its row: the answer is the record as stored."""
    try:
        handle = await app.temporal.start_workflow(
            workflow, inp, id=workflow_id, task_queue=app.settings.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING)
        return await handle.execute_update(UPDATE_FINDING_READY, result_type=result_type)
    except RPCError as exc:
        raise _unavailable(exc, what) from None


async def _stored(session: AsyncSession, principal: Principal, table: type[FindingRow] | type[ExceptionRow],
                  record_type: type[_Record], key: str, what: str) -> _Record:
    """A finding or exception as stored, if the principal may see its team's records."""
    row: FindingRow | ExceptionRow | None = await session.get(table, key)
    if row is None:
        raise ApiError(404, "not_found", f"{what} {key} not found")
    require_visible(principal, row.team, f"{what} {key}")
    return record_type.model_validate(row.record)


async def _finding(session: AsyncSession, principal: Principal, finding_id: str) -> FindingRecord:
    return await _stored(session, principal, FindingRow, FindingRecord, finding_id, "finding")


async def get_finding(*, session: AsyncSession, principal: Principal, finding_id: str) -> FindingRecord:
    require(principal, Action.read_findings)
    return await _finding(session, principal, finding_id)


async def submit_remediation(*, session: AsyncSession, app: AppState, principal: Principal, finding_id: str,
                             note: str, evidence_refs: list[str], request_id: str) -> FindingRecord:
    require(principal, Action.read_findings)
    finding = await _finding(session, principal, finding_id)
    refusal = remediation_refusal(finding, principal.actor)
    if refusal is not None:
        raise await _refuse(session, app, principal, EventType.finding_refused, finding.model_id, refusal,
                            "remediate", finding_id, request_id)
    inp = RemediationInput(actor=principal.actor, note=note, evidence_refs=evidence_refs, request_id=request_id)
    return await _finding_update(session, app, principal, finding, UPDATE_REMEDIATE, inp, "remediate", request_id)


async def verify_remediation(*, session: AsyncSession, app: AppState, principal: Principal, finding_id: str,
                             outcome: VerifyOutcome, comment: str, request_id: str) -> FindingRecord:
    require(principal, Action.read_findings)
    finding = await _finding(session, principal, finding_id)
    refusal = verification_refusal(finding, principal.actor)
    if refusal is not None:
        raise await _refuse(session, app, principal, EventType.finding_refused, finding.model_id, refusal,
                            f"verify:{outcome.value}", finding_id, request_id)
    inp = VerifyInput(actor=principal.actor, outcome=outcome, comment=comment, request_id=request_id)
    return await _finding_update(session, app, principal, finding, UPDATE_VERIFY, inp, f"verify:{outcome.value}",
                                 request_id)


async def _finding_update(session: AsyncSession, app: AppState, principal: Principal, finding: FindingRecord,
                          update: str, inp: Any, action: str, request_id: str) -> FindingRecord:
    handle = app.temporal.get_workflow_handle(finding_workflow_id(finding.finding_id))
    try:
        return await handle.execute_update(update, inp, result_type=FindingRecord)
    except WorkflowUpdateFailedError as exc:
        raise await _refuse(session, app, principal, EventType.finding_refused, finding.model_id,
                            _refusal_from_update(exc), action, finding.finding_id, request_id) from None
    except RPCError as exc:
        raise _unavailable(exc, f"finding {finding.finding_id}") from None


async def list_findings(*, session: AsyncSession, principal: Principal, model: str | None = None,
                        team: str | None = None, severity: str | None = None, status: str | None = None,
                        overdue: bool | None = None, open_only: bool = False, limit: int = 50,
                        offset: int = 0) -> FindingPage:
    require(principal, Action.read_findings)
    conds = listing_conditions(principal, FindingRow.team, team=(FindingRow.team, team),
                               model=(FindingRow.model_id, model), severity=(FindingRow.severity, severity),
                               status=(FindingRow.status, status))
    if open_only:
        conds.append(FindingRow.status.in_([s.value for s in OPEN_STATUSES]))
    if overdue is not None:
        conds.append(FindingRow.overdue.is_(overdue))
    total = int((await session.execute(select(func.count()).select_from(FindingRow).where(*conds))).scalar_one())
    rows = (await session.scalars(select(FindingRow).where(*conds).order_by(
        FindingRow.due_at, FindingRow.id).limit(limit).offset(offset))).all()
    next_offset = offset + len(rows) if offset + len(rows) < total else None
    return FindingPage(items=[FindingRecord.model_validate(r.record) for r in rows], total=total, limit=limit,
                       offset=offset, next_offset=next_offset)


# ---- exceptions ---------------------------------------------------------------------------------------------


async def request_exception(*, session: AsyncSession, app: AppState, principal: Principal, model_id: str,
                            version_id: str, kind: ExceptionKind, reason: str, expires_at: datetime | None,
                            check_id: str | None, finding_id: str | None, magnitude: float | None,
                            request_id: str) -> ExceptionRecord:
    require(principal, Action.read_findings)
    model = await _model(session, principal, model_id)
    policy = _policy(app, model.business_intent)
    now = _utcnow()
    refusal: Refusal | None = None
    if Action.request_exception not in principal.actions:
        refusal = Refusal(code="not_an_exception_role", http_status=403,
                          message="exceptions are granted by the roles the policy names; your roles grant none")
    progression = await _version_exists(session, model_id, version_id)
    finding: FindingRecord | None = None
    if finding_id is not None:
        row = await session.get(FindingRow, finding_id)
        finding = FindingRecord.model_validate(row.record) if row is not None and row.model_id == model_id else None
    if refusal is None:
        refusal = grant_refusal(principal.actor, team=model.team, policy=policy, kind=kind, expires_at=expires_at,
                                now=now, check_id=check_id, finding=finding, magnitude=magnitude,
                                version_id=version_id)
    if refusal is None and progression is None:
        refusal = Refusal(code="unknown_version", http_status=422,
                          message=f"version_id: model {model_id} has no version {version_id!r}")
    if refusal is not None:
        raise await _refuse(session, app, principal, EventType.exception_refused, model_id, refusal, "request",
                            None, request_id)
    assert policy.exceptions is not None and expires_at is not None and progression is not None
    needs_checker = policy.exceptions_need_checker
    record = ExceptionRecord(
        exception_id=_new_id("X-", request_id), kind=kind, model_id=model_id, team=model.team,
        business_intent=model.business_intent, version_id=version_id, progression_id=progression.id,
        check_id=check_id if kind == ExceptionKind.check else None,
        finding_id=finding_id if kind == ExceptionKind.finding else None, reason=reason, magnitude=magnitude,
        expires_at=expires_at, status=ExceptionStatus.pending_approval if needs_checker else ExceptionStatus.active,
        needs_checker=needs_checker, requested_by=principal.id, requested_by_username=principal.username,
        requested_at=now, requested_credential_id=principal.credential_id,
        requested_credential_issued_by=principal.credential_issued_by)
    await session.close()
    return await _start_deadline_workflow(app, EXCEPTION_WORKFLOW,
                                          ExceptionInput(exception=record, rules=policy.exceptions),
                                          exception_workflow_id(record.exception_id), ExceptionRecord,
                                          f"exception {record.exception_id}")


async def _exception(session: AsyncSession, principal: Principal, exception_id: str) -> ExceptionRecord:
    return await _stored(session, principal, ExceptionRow, ExceptionRecord, exception_id, "exception")


async def get_exception(*, session: AsyncSession, principal: Principal, exception_id: str) -> ExceptionRecord:
    require(principal, Action.read_findings)
    return await _exception(session, principal, exception_id)


async def approve_exception(*, session: AsyncSession, app: AppState, principal: Principal, exception_id: str,
                            comment: str, request_id: str) -> ExceptionRecord:
    require(principal, Action.read_findings)
    exception = await _exception(session, principal, exception_id)
    policy = _policy(app, exception.business_intent)
    refusal = exception_approval_refusal(exception, principal.actor, policy.exceptions) \
        if Action.approve_exception in principal.actions else Refusal(
            code="not_an_exception_role", http_status=403, message="your roles approve no exceptions")
    if refusal is not None:
        raise await _refuse(session, app, principal, EventType.exception_refused, exception.model_id, refusal,
                            "approve", exception_id, request_id)
    handle = app.temporal.get_workflow_handle(exception_workflow_id(exception_id))
    inp = ApproveExceptionInput(actor=principal.actor, comment=comment, request_id=request_id)
    try:
        return await handle.execute_update(UPDATE_APPROVE_EXCEPTION, inp, result_type=ExceptionRecord)
    except WorkflowUpdateFailedError as exc:
        raise await _refuse(session, app, principal, EventType.exception_refused, exception.model_id,
                            _refusal_from_update(exc), "approve", exception_id, request_id) from None
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:  # its workflow ended: it lapsed
            refusal = Refusal(code="exception_lapsed", http_status=409,
                              message=f"exception {exception_id} lapsed; a renewal is a new exception")
            raise await _refuse(session, app, principal, EventType.exception_refused, exception.model_id, refusal,
                                "approve", exception_id, request_id) from None
        raise _unavailable(exc, f"exception {exception_id}") from None


async def list_exceptions(*, session: AsyncSession, principal: Principal, model: str | None = None,
                          team: str | None = None, status: str | None = None, kind: str | None = None,
                          expiring_within_days: int | None = None, limit: int = 50, offset: int = 0
                          ) -> ExceptionPage:
    require(principal, Action.read_findings)
    conds = listing_conditions(principal, ExceptionRow.team, team=(ExceptionRow.team, team),
                               model=(ExceptionRow.model_id, model), status=(ExceptionRow.status, status),
                               kind=(ExceptionRow.kind, kind))
    if expiring_within_days is not None:
        conds += [ExceptionRow.status == ExceptionStatus.active.value,
                  ExceptionRow.expires_at <= _utcnow() + timedelta(days=expiring_within_days)]
    total = int((await session.execute(select(func.count()).select_from(ExceptionRow).where(*conds))).scalar_one())
    rows = (await session.scalars(select(ExceptionRow).where(*conds).order_by(
        ExceptionRow.expires_at, ExceptionRow.id).limit(limit).offset(offset))).all()
    next_offset = offset + len(rows) if offset + len(rows) < total else None
    return ExceptionPage(items=[ExceptionRecord.model_validate(r.record) for r in rows], total=total, limit=limit,
                         offset=offset, next_offset=next_offset)


# ---- metrics ------------------------------------------------------------------------------------------------


async def finding_metrics(*, session: AsyncSession, principal: Principal | None = None) -> FindingMetrics:
    """Open findings by severity, overdue ones, exceptions expiring within 30 days (scoped to the caller)."""
    if principal is not None:
        require(principal, Action.read_findings)
    scoped = visible_team_filter(principal) if principal is not None else None
    f_scope = [FindingRow.team == scoped] if scoped is not None else []
    x_scope = [ExceptionRow.team == scoped] if scoped is not None else []
    open_values = [s.value for s in OPEN_STATUSES]
    by_severity = {str(severity): int(n) for severity, n in (await session.execute(
        select(FindingRow.severity, func.count()).where(FindingRow.status.in_(open_values), *f_scope)
        .group_by(FindingRow.severity))).all()}
    overdue = int(await session.scalar(select(func.count()).select_from(FindingRow).where(
        FindingRow.status.in_(open_values), FindingRow.overdue.is_(True), *f_scope)) or 0)

    async def exceptions(*conds: Any) -> int:
        return int(await session.scalar(select(func.count()).select_from(ExceptionRow).where(*conds, *x_scope)) or 0)

    active = ExceptionRow.status == ExceptionStatus.active.value
    return FindingMetrics(
        open_by_severity=by_severity, overdue=overdue,
        exceptions_expiring_30d=await exceptions(active, ExceptionRow.expires_at <= _utcnow() + EXPIRING_WINDOW),
        exceptions_active=await exceptions(active),
        exceptions_pending_approval=await exceptions(ExceptionRow.status == ExceptionStatus.pending_approval.value))

