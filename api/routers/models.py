"""/api/v1/models: the model catalog."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import BODY_ERRORS, COMMON_ERRORS, CONFLICT, NOT_FOUND
from api.schemas import MAX_OFFSET, IntentChange, IntentChangeDecision
from api.services import catalog as svc
from engine.wire import IntentChangeOut, ModelDetail, ModelPage

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


@router.post("/{model_id}/intent", status_code=202, response_model=IntentChangeOut,
             responses={**NOT_FOUND, **CONFLICT, **BODY_ERRORS},
             summary="Propose a change of a model's business intent (a model risk officer; applied when a second "
                     "one approves it)")
async def propose_intent_change(model_id: str, body: IntentChange, session: SessionDep, user: CurrentUser,
                                app: StateDep) -> IntentChangeOut:
    return await svc.propose_intent_change(session=session, app=app, principal=user, model_id=model_id,
                                           intent=body.business_intent, reason=body.reason)


@router.get("/{model_id}/intent-changes", response_model=list[IntentChangeOut], responses={**NOT_FOUND},
            summary="Every proposed change of a model's intent: who proposed, who approved or rejected it")
async def list_intent_changes(model_id: str, session: SessionDep, user: CurrentUser) -> list[IntentChangeOut]:
    return await svc.list_intent_changes(session=session, principal=user, model_id=model_id)


@router.post("/{model_id}/intent-changes/{change_id}/approve", response_model=ModelDetail,
             responses={**NOT_FOUND, **CONFLICT, **BODY_ERRORS},
             summary="Approve that proposed change of intent (a second model risk officer, not its proposer)")
async def approve_intent_change(model_id: str, change_id: str, body: IntentChangeDecision, session: SessionDep,
                                user: CurrentUser, app: StateDep) -> ModelDetail:
    return await svc.approve_intent_change(session=session, app=app, principal=user, model_id=model_id,
                                           change_id=change_id, reason=body.reason)


@router.post("/{model_id}/intent-changes/{change_id}/reject", response_model=IntentChangeOut,
             responses={**NOT_FOUND, **CONFLICT, **BODY_ERRORS},
             summary="Reject that proposed change of intent (another model risk officer, or its proposer withdraws it)")
async def reject_intent_change(model_id: str, change_id: str, body: IntentChangeDecision, session: SessionDep,
                               user: CurrentUser, app: StateDep) -> IntentChangeOut:
    return await svc.reject_intent_change(session=session, app=app, principal=user, model_id=model_id,
                                          change_id=change_id, reason=body.reason)
