"""/api/v1/features: the feature catalog, its versions, and proposed changes with their approvals."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import BODY_ERRORS, COMMON_ERRORS, CONFLICT, NOT_FOUND
from api.idempotency import fingerprint, idempotent
from api.schemas import MAX_OFFSET, FeatureIn, FeatureProposalIn, ProposalDecisionIn
from api.services import features as svc
from engine.wire import CatalogSnapshot, FeatureList, FeatureOut, FeatureProposalList, FeatureProposalOut

router = APIRouter(prefix="/api/v1/features", tags=["features"], responses=COMMON_ERRORS)
_ACT_ERRORS = {**NOT_FOUND, **CONFLICT, **BODY_ERRORS}
Query200 = Annotated[str | None, Query(max_length=svc.MAX_QUERY)]


@router.get("", response_model=FeatureList,
            summary="Registered features: search by name, description or tag; what each policy says of them")
async def list_features(session: SessionDep, user: CurrentUser, app: StateDep, tag: Query200 = None,
                        q: Query200 = None, intent: Query200 = None,
                        verdict: Literal["allowed", "forbidden", "requires", "unknown"] | None = None) -> FeatureList:
    return await svc.list_features(session=session, principal=user, registry=app.registry, tag=tag, q=q,
                                   intent=intent, verdict=verdict)


@router.get("/versions/current", response_model=CatalogSnapshot, responses=NOT_FOUND,
            summary="The current catalog version as a whole (what the notebook SDK keeps offline)")
async def current_version(session: SessionDep, user: CurrentUser) -> CatalogSnapshot:
    return await svc.get_catalog_version(session=session, principal=user, version=None)


@router.get("/versions/{version}", response_model=CatalogSnapshot, responses=NOT_FOUND,
            summary="One catalog version as a whole (what a progression that pinned it resolves against)")
async def catalog_version(version: Annotated[int, Path(ge=1, le=2**31 - 1)], session: SessionDep,
                          user: CurrentUser) -> CatalogSnapshot:
    return await svc.get_catalog_version(session=session, principal=user, version=version)


@router.get("/proposals", response_model=FeatureProposalList, summary="Proposed feature changes")
async def list_proposals(session: SessionDep, user: CurrentUser,
                         status: Literal["pending", "applied", "rejected", "superseded"] | None = None,
                         feature: Query200 = None, limit: Annotated[int, Query(ge=1, le=500)] = 100,
                         offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> FeatureProposalList:
    return await svc.list_proposals(session=session, principal=user, status=status, feature=feature, limit=limit,
                                    offset=offset)


@router.post("/proposals", status_code=201, response_model=FeatureProposalOut, responses=_ACT_ERRORS,
             summary="Propose a new feature or a change of a feature's description, tags or owner")
async def propose(body: FeatureProposalIn, request: Request, session: SessionDep, user: CurrentUser,
                  app: StateDep) -> JSONResponse:
    async def produce() -> tuple[int, object]:
        return 201, await svc.propose(session=session, principal=user, body=body, chain=app.settings.audit_chain,
                                      registry=app.registry)

    return await idempotent(request, user, fingerprint("propose_feature", body.model_dump(mode="json")), produce,
                            app.sessionmaker)


@router.get("/proposals/{proposal_id}", response_model=FeatureProposalOut, responses=NOT_FOUND,
            summary="One proposal")
async def get_proposal(proposal_id: str, session: SessionDep, user: CurrentUser) -> FeatureProposalOut:
    return await svc.get_proposal(session=session, principal=user, proposal_id=proposal_id)


@router.post("/proposals/{proposal_id}/approval", response_model=FeatureProposalOut, responses=_ACT_ERRORS,
             summary="Approve (the feature's data owner or an admin; never the proposer; two people to remove "
                     "protected_attribute, proxy or restricted:*)")
async def approve(proposal_id: str, body: ProposalDecisionIn, request: Request, session: SessionDep,
                  user: CurrentUser, app: StateDep) -> JSONResponse:
    async def produce() -> tuple[int, object]:
        return 200, await svc.approve(session=session, principal=user, proposal_id=proposal_id, comment=body.comment,
                                      chain=app.settings.audit_chain)

    return await idempotent(request, user, fingerprint("approve_feature", proposal_id, body.model_dump(mode="json")),
                            produce, app.sessionmaker)


@router.post("/proposals/{proposal_id}/rejection", response_model=FeatureProposalOut, responses=_ACT_ERRORS,
             summary="Reject (the feature's data owner or an admin; never the proposer)")
async def reject(proposal_id: str, body: ProposalDecisionIn, request: Request, session: SessionDep,
                 user: CurrentUser, app: StateDep) -> JSONResponse:
    async def produce() -> tuple[int, object]:
        return 200, await svc.reject(session=session, principal=user, proposal_id=proposal_id, comment=body.comment,
                                     chain=app.settings.audit_chain)

    return await idempotent(request, user, fingerprint("reject_feature", proposal_id, body.model_dump(mode="json")),
                            produce, app.sessionmaker)


@router.get("/{name}", response_model=FeatureOut, responses=NOT_FOUND,
            summary="One feature: what each policy says of it, the models that use it")
async def get_feature(name: str, session: SessionDep, user: CurrentUser, app: StateDep) -> FeatureOut:
    return await svc.get_feature(session=session, principal=user, registry=app.registry, name=name)


@router.put("/{name}", response_model=FeatureOut, responses={**BODY_ERRORS, **CONFLICT},
            summary="Create or update a feature (admin; audited; removing a sensitive tag (protected_attribute, proxy, "
                     "restricted:*, or any tag a policy check names, e.g. pii) needs a proposal)")
async def put_feature(name: str, body: FeatureIn, session: SessionDep, user: CurrentUser,
                      app: StateDep) -> FeatureOut:
    return await svc.put_feature(session=session, principal=user, name=name, body=body,
                                 chain=app.settings.audit_chain, registry=app.registry)
