"""/api/v1/models: the model catalog."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import BODY_ERRORS, COMMON_ERRORS, CONFLICT, NOT_FOUND
from api.schemas import MAX_OFFSET, IntentChange
from api.services import catalog as svc
from engine.wire import ModelDetail, ModelPage

router = APIRouter(prefix="/api/v1/models", tags=["models"], responses=COMMON_ERRORS)


@router.get("", response_model=ModelPage, summary="Models with their latest version and status")
async def list_models(session: SessionDep, user: CurrentUser, team: str | None = None, intent: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=500)] = 50,
                      offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> ModelPage:
    return await svc.list_models(session=session, principal=user, team=team, intent=intent, limit=limit,
                                 offset=offset)


@router.get("/{model_id}", response_model=ModelDetail, responses={**NOT_FOUND},
            summary="A model, its versions and where each stands (revalidation overdue flagged)")
async def get_model(model_id: str, session: SessionDep, user: CurrentUser) -> ModelDetail:
    return await svc.get_model(session=session, principal=user, model_id=model_id)


@router.post("/{model_id}/intent", response_model=ModelDetail, responses={**NOT_FOUND, **CONFLICT, **BODY_ERRORS},
             summary="Change a model's business intent (a model risk officer's decision, audited)")
async def change_intent(model_id: str, body: IntentChange, session: SessionDep, user: CurrentUser,
                        app: StateDep) -> ModelDetail:
    return await svc.change_intent(session=session, app=app, principal=user, model_id=model_id,
                                   intent=body.business_intent, reason=body.reason)
