"""/api/v1/models/{id}/monitoring and /retire: life after production."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import BODY_ERRORS, COMMON_ERRORS, CONFLICT, NOT_FOUND
from api.idempotency import decision_id_for, fingerprint, idempotency_key, idempotent
from api.schemas import MonitoringResultsIn, RetirementOverrideIn, RetirementRequestIn
from api.services import monitoring as svc
from engine.lifecycle import ProgressionState
from engine.monitoring import MonitoringHistory, MonitoringResultOut, RetirementOverrideOut

router = APIRouter(prefix="/api/v1/models", tags=["monitoring"], responses=COMMON_ERRORS)


@router.post("/{model_id}/monitoring", status_code=201, response_model=MonitoringResultOut,
             responses={**NOT_FOUND, **CONFLICT, **BODY_ERRORS},
             summary="A period's monitoring results of the model in production (the monitor service identity)")
async def post_results(model_id: str, body: MonitoringResultsIn, request: Request, session: SessionDep,
                       user: CurrentUser, app: StateDep) -> JSONResponse:
    async def produce() -> tuple[int, object]:
        return 201, await svc.post_results(session=session, app=app, principal=user, model_id=model_id,
                                           period=body.period, metrics=body.metrics)

    return await idempotent(request, user, fingerprint("monitoring", model_id, body.model_dump(mode="json")),
                            produce, app.sessionmaker)


@router.get("/{model_id}/monitoring", response_model=MonitoringHistory, responses={**NOT_FOUND},
            summary="The model's monitoring history with the thresholds of its policy's rules")
async def get_history(model_id: str, session: SessionDep, user: CurrentUser, app: StateDep,
                      limit: Annotated[int, Query(ge=1, le=500)] = 120) -> MonitoringHistory:
    return await svc.history(session=session, app=app, principal=user, model_id=model_id, limit=limit)


@router.post("/{model_id}/retire", status_code=202, response_model=ProgressionState, responses={**NOT_FOUND, **CONFLICT,
                                                                                **BODY_ERRORS},
             summary="Ask to retire the model in production (the owning team; the policy's approvers decide)")
async def retire(model_id: str, body: RetirementRequestIn, request: Request, session: SessionDep,
                 user: CurrentUser, app: StateDep) -> JSONResponse:
    key = idempotency_key(request)
    request_id = decision_id_for(user, key, fallback=f"r-{uuid.uuid4().hex}")

    async def produce() -> tuple[int, object]:
        return 202, await svc.request_retirement(session=session, app=app, principal=user, model_id=model_id,
                                                 reason=body.reason, replacement=body.replacement,
                                                 request_id=request_id)

    return await idempotent(request, user, fingerprint("retire", model_id, body.model_dump()), produce,
                            app.sessionmaker, key=key)


@router.post("/{model_id}/retirement-override", status_code=201, response_model=RetirementOverrideOut,
             responses={**NOT_FOUND, **CONFLICT, **BODY_ERRORS},
             summary="Record that the model may retire although production models depend on it (risk officer)")
async def override(model_id: str, body: RetirementOverrideIn, request: Request, session: SessionDep,
                   user: CurrentUser, app: StateDep) -> JSONResponse:
    async def produce() -> tuple[int, object]:
        return 201, await svc.override_retirement(session=session, app=app, principal=user, model_id=model_id,
                                                  reason=body.reason)

    return await idempotent(request, user, fingerprint("override", model_id, body.model_dump()), produce,
                            app.sessionmaker)
