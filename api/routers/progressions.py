"""/api/v1/progressions: start, list, read, decide, add evidence, withdraw."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import BODY_ERRORS, COMMON_ERRORS, CONFLICT, NOT_FOUND, ApiError
from api.idempotency import decision_id_for, fingerprint, idempotency_key, idempotent
from api.multipart import multipart_openapi, read_multipart
from api.schemas import MAX_OFFSET, DecisionRequest, ProgressionOut, WithdrawRequest
from api.services import progressions as svc
from engine.lifecycle import DecisionKind, ProgressionDetail
from engine.wire import ProgressionPage, ProgressionVerification

router = APIRouter(prefix="/api/v1/progressions", tags=["progressions"], responses=COMMON_ERRORS)
_ACT_ERRORS = {**NOT_FOUND, **CONFLICT, **BODY_ERRORS}  # acting on one progression with a body


@router.post("", status_code=201, response_model=ProgressionOut, responses={**CONFLICT, **BODY_ERRORS},
             openapi_extra=multipart_openapi("progression.yaml as 'spec' and one 'evidence.<name>' part per file",
                                             with_spec=True),
             summary="Start a progression from a progression.yaml and its evidence")
async def start_progression(request: Request, session: SessionDep, user: CurrentUser,
                            app: StateDep) -> JSONResponse:
    body = await read_multipart(request, allow_spec=True, require_spec=True)
    assert body.spec is not None

    key = idempotency_key(request)
    request_id = decision_id_for(user, f"start\x00{key}\x00{body.fingerprint()}", fallback="") if key else None

    async def produce() -> tuple[int, object]:
        state = await svc.start_progression(session=session, app=app, principal=user, spec_text=body.spec or b"",
                                            spec_filename=body.spec_filename, uploads=body.uploads,
                                            request_id=request_id)
        return 201, svc.with_actions(app, user, state)

    return await idempotent(request, user, fingerprint("start", body.fingerprint()), produce, app.sessionmaker)


@router.get("", response_model=ProgressionPage, summary="List progressions (read model), newest first, filtered; "
                                                  "pass next_cursor as ?cursor= to page")
async def list_progressions(
    session: SessionDep, user: CurrentUser, app: StateDep,
    model: str | None = None, intent: str | None = None, stage: str | None = None, status: str | None = None,
    team: str | None = None, cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ProgressionPage:
    return await svc.list_progressions(session=session, principal=user, secret=app.settings.secret_key,
                                       model=model, intent=intent, stage=stage, status=status, team=team,
                                       limit=limit, offset=offset, cursor=cursor)


@router.get("/{progression_id}", response_model=ProgressionDetail, responses={**NOT_FOUND},
            summary="The whole state: route, check results, approvals, who acts next, what is missing, lineage")
async def get_progression(progression_id: str, session: SessionDep, user: CurrentUser,
                          app: StateDep) -> ProgressionDetail:
    return await svc.get_progression_detail(session=session, app=app, principal=user,
                                            progression_id=progression_id)


@router.get("/{progression_id}/verify", response_model=ProgressionVerification, responses={**NOT_FOUND},
            summary="Check that every counted approval binds to the evidence now stored (and deployed)")
async def verify_progression(progression_id: str, session: SessionDep, user: CurrentUser,
                             app: StateDep) -> ProgressionVerification:
    return await svc.verify_progression(session=session, app=app, principal=user, progression_id=progression_id)


@router.post("/{progression_id}/decisions", response_model=ProgressionOut, responses=_ACT_ERRORS,
             summary="Approve, reject or request changes on the open gate of a stage")
async def decide(progression_id: str, body: DecisionRequest, request: Request, session: SessionDep,
                 user: CurrentUser, app: StateDep) -> JSONResponse:
    key = idempotency_key(request)
    decision_id = decision_id_for(user, key, fallback=f"d-{uuid.uuid4().hex}")

    async def produce() -> tuple[int, object]:
        with_conditions = body.decision == "approve_with_conditions"
        if with_conditions != bool(body.conditions):
            raise ApiError(422, "conditions_required" if with_conditions else "conditions_need_approval",
                           "conditions: approve_with_conditions names at least one condition, and only it carries "
                           "conditions", {"field": "conditions"})
        state = await svc.decide(session=session, app=app, principal=user, progression_id=progression_id,
                                 stage=body.stage, decision=DecisionKind.approve if with_conditions
                                 else DecisionKind(body.decision), comment=body.comment,
                                 decision_id=decision_id, basis=body.basis, conditions=body.conditions)
        return 200, svc.with_actions(app, user, state)

    return await idempotent(request, user, fingerprint("decide", progression_id, body.model_dump(mode="json")),
                            produce, app.sessionmaker, key=key)


@router.post("/{progression_id}/evidence", response_model=ProgressionOut, responses=_ACT_ERRORS,
             openapi_extra=multipart_openapi("one 'evidence.<name>' part per new or changed file", with_spec=False),
             summary="Add new or changed evidence; re-runs the current stage's checks")
async def add_evidence(progression_id: str, request: Request, session: SessionDep, user: CurrentUser,
                       app: StateDep) -> JSONResponse:
    # A 'spec' part is read only to be refused (409 spec_immutable, naming the fields it would change).
    body = await read_multipart(request, allow_spec=True, require_spec=False)
    key = idempotency_key(request)
    request_id = decision_id_for(user, key, fallback=f"e-{uuid.uuid4().hex}")

    async def produce() -> tuple[int, object]:
        state = await svc.add_evidence(session=session, app=app, principal=user, progression_id=progression_id,
                                       uploads=body.uploads, request_id=request_id, spec=body.spec)
        return 200, svc.with_actions(app, user, state)

    return await idempotent(request, user, fingerprint("evidence", progression_id, body.fingerprint()), produce,
                            app.sessionmaker, key=key)


@router.post("/{progression_id}/withdraw", response_model=ProgressionOut, responses=_ACT_ERRORS,
             summary="Withdraw the progression (the submitting team)")
async def withdraw(progression_id: str, body: WithdrawRequest, request: Request, session: SessionDep,
                   user: CurrentUser, app: StateDep) -> JSONResponse:
    key = idempotency_key(request)
    request_id = decision_id_for(user, key, fallback=f"w-{uuid.uuid4().hex}")

    async def produce() -> tuple[int, object]:
        state = await svc.withdraw(session=session, app=app, principal=user, progression_id=progression_id,
                                   reason=body.reason, request_id=request_id)
        return 200, svc.with_actions(app, user, state)

    return await idempotent(request, user, fingerprint("withdraw", progression_id, body.model_dump()), produce,
                            app.sessionmaker, key=key)
