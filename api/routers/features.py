"""/api/v1/features: the feature catalog (admins write)."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import BODY_ERRORS, COMMON_ERRORS
from api.schemas import FeatureIn, FeatureList, FeatureOut
from api.services import features as svc

router = APIRouter(prefix="/api/v1/features", tags=["features"], responses=COMMON_ERRORS)


@router.get("", response_model=FeatureList, summary="Registered features with their tags")
async def list_features(session: SessionDep, user: CurrentUser, tag: str | None = None) -> FeatureList:
    return await svc.list_features(session=session, principal=user, tag=tag)


@router.put("/{name}", response_model=FeatureOut, responses={**BODY_ERRORS},
            summary="Create or update a feature (admin; audited)")
async def put_feature(name: str, body: FeatureIn, session: SessionDep, user: CurrentUser,
                      app: StateDep) -> FeatureOut:
    return await svc.put_feature(session=session, principal=user, name=name, body=body,
                                 chain=app.settings.audit_chain)
