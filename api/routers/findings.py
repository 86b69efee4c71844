"""/api/v1/findings and /api/v1/exceptions: the findings register, remediation and verification, waivers."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import AwareDatetime, Field

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import BODY_ERRORS, COMMON_ERRORS, CONFLICT, NOT_FOUND
from api.exports import csv_cell
from api.idempotency import decision_id_for, fingerprint, idempotency_key, idempotent
from api.schemas import MAX_OFFSET, Body
from api.services import findings as svc
from engine.db import utcnow
from engine.findings import ExceptionKind, ExceptionRecord, FindingRecord, VerifyOutcome

router = APIRouter(prefix="/api/v1", tags=["findings"], responses=COMMON_ERRORS)
_ACT_ERRORS = {**NOT_FOUND, **CONFLICT, **BODY_ERRORS}
Limit = Annotated[int, Query(ge=1, le=500)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]


class RaiseFindingRequest(Body):
    model_id: str = Field(min_length=1, max_length=64)
    version_id: str | None = Field(default=None, max_length=64)
    stage: str | None = Field(default=None, max_length=64)
    severity: str = Field(min_length=1, max_length=32)
    title: str = Field(min_length=1, max_length=300)
    description: str = Field(default="", max_length=10_000)
    due_at: AwareDatetime | None = None  # default: the policy's period for the severity (with a time zone)
    evidence_refs: list[str] = Field(default_factory=list, max_length=50)


class RemediationRequest(Body):
    note: str = Field(min_length=1, max_length=10_000)
    evidence_refs: list[str] = Field(default_factory=list, max_length=50)


class VerificationRequest(Body):
    outcome: VerifyOutcome
    comment: str = Field(min_length=1, max_length=10_000)


class ExceptionRequest(Body):
    model_id: str = Field(min_length=1, max_length=64)
    version_id: str = Field(min_length=1, max_length=64)
    kind: ExceptionKind
    check_id: str | None = Field(default=None, max_length=64)
    finding_id: str | None = Field(default=None, max_length=64)
    reason: str = Field(min_length=1, max_length=10_000)
    magnitude: float | None = Field(default=None, allow_inf_nan=False)  # a post-model adjustment's size
    expires_at: AwareDatetime | None = None  # mandatory (422 expiry_required when missing); with a time zone


class ExceptionApprovalRequest(Body):
    comment: str = Field(default="", max_length=10_000)


def _request_id(request: Request, user: CurrentUser, prefix: str) -> str:
    return decision_id_for(user, idempotency_key(request), fallback=f"{prefix}-{uuid.uuid4().hex}")


@router.post("/findings", status_code=201, response_model=FindingRecord, responses=_ACT_ERRORS,
             summary="Raise a finding on a model (a validator or risk officer independent of its team)")
async def raise_finding(body: RaiseFindingRequest, request: Request, session: SessionDep, user: CurrentUser,
                        app: StateDep) -> JSONResponse:
    request_id = _request_id(request, user, "f")

    async def produce() -> tuple[int, object]:
        return 201, await svc.raise_finding(
            session=session, app=app, principal=user, model_id=body.model_id, version_id=body.version_id,
            stage=body.stage, severity=body.severity, title=body.title, description=body.description,
            due_at=body.due_at, evidence_refs=body.evidence_refs, request_id=request_id)

    return await idempotent(request, user, fingerprint("raise_finding", body.model_dump(mode="json")), produce,
                            app.sessionmaker)


@router.get("/findings", response_model=svc.FindingPage, summary="The findings register, filtered and paged")
async def list_findings(session: SessionDep, user: CurrentUser, model: str | None = None, team: str | None = None,
                        severity: str | None = None, status: str | None = None, overdue: bool | None = None,
                        open: bool = False, limit: Limit = 50, offset: Offset = 0) -> svc.FindingPage:
    return await svc.list_findings(session=session, principal=user, model=model, team=team, severity=severity,
                                   status=status, overdue=overdue, open_only=open, limit=limit, offset=offset)


CSV_COLUMNS = ["finding_id", "model_id", "version_id", "team", "stage", "severity", "status", "title", "condition",
               "raised_by_username", "raised_at", "due_at", "overdue", "age_days", "escalated_to", "waived_by"]


@router.get("/findings/export", summary="The findings register as CSV (same filters), with each finding's age",
            response_class=Response, responses={200: {"content": {"text/csv": {}}}})
async def export_findings(session: SessionDep, user: CurrentUser, model: str | None = None, team: str | None = None,
                          severity: str | None = None, status: str | None = None, overdue: bool | None = None,
                          open: bool = False) -> Response:
    page = await svc.list_findings(session=session, principal=user, model=model, team=team, severity=severity,
                                   status=status, overdue=overdue, open_only=open, limit=10_000, offset=0)
    return Response(findings_csv(page.items), media_type="text/csv",
                    headers={"Content-Disposition": 'attachment; filename="findings.csv"'})


def findings_csv(items: list[FindingRecord], now: datetime | None = None) -> str:
    now = now or utcnow()
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for f in items:
        row = f.model_dump(mode="json")
        row["age_days"] = (now - f.raised_at).days
        writer.writerow([csv_cell(row.get(c)) for c in CSV_COLUMNS])
    return out.getvalue()


@router.get("/findings/metrics", response_model=svc.FindingMetrics,
            summary="Open findings by severity, overdue findings, exceptions expiring within 30 days")
async def finding_metrics(session: SessionDep, user: CurrentUser) -> svc.FindingMetrics:
    return await svc.finding_metrics(session=session, principal=user)


@router.get("/findings/{finding_id}", response_model=FindingRecord, responses=NOT_FOUND, summary="One finding")
async def get_finding(finding_id: str, session: SessionDep, user: CurrentUser) -> FindingRecord:
    return await svc.get_finding(session=session, principal=user, finding_id=finding_id)


@router.post("/findings/{finding_id}/remediation", response_model=FindingRecord, responses=_ACT_ERRORS,
             summary="Submit a remediation with new evidence (a model_developer of the owning team)")
async def submit_remediation(finding_id: str, body: RemediationRequest, request: Request, session: SessionDep,
                             user: CurrentUser, app: StateDep) -> JSONResponse:
    request_id = _request_id(request, user, "r")

    async def produce() -> tuple[int, object]:
        return 200, await svc.submit_remediation(session=session, app=app, principal=user, finding_id=finding_id,
                                                 note=body.note, evidence_refs=body.evidence_refs,
                                                 request_id=request_id)

    return await idempotent(request, user, fingerprint("remediate", finding_id, body.model_dump()), produce,
                            app.sessionmaker)


@router.post("/findings/{finding_id}/verification", response_model=FindingRecord, responses=_ACT_ERRORS,
             summary="Close the finding or send the remediation back (an independent reviewer, not the remediator)")
async def verify_remediation(finding_id: str, body: VerificationRequest, request: Request, session: SessionDep,
                             user: CurrentUser, app: StateDep) -> JSONResponse:
    request_id = _request_id(request, user, "v")

    async def produce() -> tuple[int, object]:
        return 200, await svc.verify_remediation(session=session, app=app, principal=user, finding_id=finding_id,
                                                 outcome=body.outcome, comment=body.comment, request_id=request_id)

    return await idempotent(request, user, fingerprint("verify", finding_id, body.model_dump(mode="json")), produce,
                            app.sessionmaker)


@router.post("/exceptions", status_code=201, response_model=ExceptionRecord, responses=_ACT_ERRORS,
             summary="Request an exception (waiver of a check or finding, or a PMA); in force at once, or once a "
                     "second person approves it where the policy requires maker-checker")
async def request_exception(body: ExceptionRequest, request: Request, session: SessionDep, user: CurrentUser,
                            app: StateDep) -> JSONResponse:
    request_id = _request_id(request, user, "x")

    async def produce() -> tuple[int, object]:
        return 201, await svc.request_exception(
            session=session, app=app, principal=user, model_id=body.model_id, version_id=body.version_id,
            kind=body.kind, reason=body.reason, expires_at=body.expires_at, check_id=body.check_id,
            finding_id=body.finding_id, magnitude=body.magnitude, request_id=request_id)

    return await idempotent(request, user, fingerprint("exception", body.model_dump(mode="json")), produce,
                            app.sessionmaker)


@router.get("/exceptions", response_model=svc.ExceptionPage, summary="Exceptions, filtered and paged")
async def list_exceptions(session: SessionDep, user: CurrentUser, model: str | None = None, team: str | None = None,
                          status: str | None = None, kind: str | None = None,
                          expiring_within_days: Annotated[int | None, Query(ge=0, le=3650)] = None,
                          limit: Limit = 50, offset: Offset = 0) -> svc.ExceptionPage:
    return await svc.list_exceptions(session=session, principal=user, model=model, team=team, status=status,
                                     kind=kind, expiring_within_days=expiring_within_days, limit=limit,
                                     offset=offset)


@router.get("/exceptions/{exception_id}", response_model=ExceptionRecord, responses=NOT_FOUND,
            summary="One exception")
async def get_exception(exception_id: str, session: SessionDep, user: CurrentUser) -> ExceptionRecord:
    return await svc.get_exception(session=session, principal=user, exception_id=exception_id)


@router.post("/exceptions/{exception_id}/approval", response_model=ExceptionRecord, responses=_ACT_ERRORS,
             summary="Approve a pending exception (maker-checker: a second person holding a grant role)")
async def approve_exception(exception_id: str, body: ExceptionApprovalRequest, request: Request,
                            session: SessionDep, user: CurrentUser, app: StateDep) -> JSONResponse:
    request_id = _request_id(request, user, "a")

    async def produce() -> tuple[int, object]:
        return 200, await svc.approve_exception(session=session, app=app, principal=user,
                                                exception_id=exception_id, comment=body.comment,
                                                request_id=request_id)

    return await idempotent(request, user, fingerprint("approve_exception", exception_id, body.model_dump()),
                            produce, app.sessionmaker)
