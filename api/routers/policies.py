"""/api/v1/policies: policies per intent, their versions, and the dry run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from api.deps import CurrentUser, SessionDep, StateDep
from api.errors import BODY_ERRORS, COMMON_ERRORS, NOT_FOUND, ApiError
from api.multipart import read_multipart
from api.schemas import DryRunRequest
from api.services import policies as svc
from engine.checks import evidence_value
from engine.wire import DryRunResult, EvidenceContracts, PolicyDetail, PolicySummary

router = APIRouter(prefix="/api/v1/policies", tags=["policies"], responses=COMMON_ERRORS)


@router.get("", response_model=list[PolicySummary], summary="The active policy of every business intent")
async def list_policies(session: SessionDep, user: CurrentUser, app: StateDep) -> list[PolicySummary]:
    return await svc.list_policies(session=session, principal=user, registry=app.registry)


@router.get("/{intent}", response_model=PolicyDetail, responses={**NOT_FOUND},
            summary="Route, checks, approvals, hash and recorded versions of one policy")
async def get_policy(intent: str, session: SessionDep, user: CurrentUser, app: StateDep) -> PolicyDetail:
    return await svc.get_policy(session=session, principal=user, registry=app.registry, intent=intent)


@router.get("/{intent}/evidence", response_model=EvidenceContracts, responses={**NOT_FOUND},
            response_model_by_alias=True,
            summary="The evidence contracts of a policy: JSON Schema, required sections, example, stages that read it")
async def evidence_contracts(intent: str, user: CurrentUser, app: StateDep) -> EvidenceContracts:
    return await svc.evidence_contracts(principal=user, registry=app.registry, intent=intent)


_DRY_RUN_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": DryRunRequest.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["spec"], "properties": {
        "spec": {"type": "string", "format": "binary"}},
        "additionalProperties": {"type": "string", "format": "binary",
                                 "description": "evidence files as evidence.<name> parts"}}}}}}


# The dry run of a spec under the intent it names: the CLI's `route`, parsed like a start.
route_router = APIRouter(prefix="/api/v1", tags=["policies"], responses=COMMON_ERRORS)


@route_router.post("/dry-run", response_model=DryRunResult, responses={**BODY_ERRORS},
                   openapi_extra=_DRY_RUN_BODY,
                   summary="The route a spec would take under the intent it names (parsed exactly as a start)")
async def dry_run_of_spec(request: Request, session: SessionDep, user: CurrentUser, app: StateDep) -> DryRunResult:
    return await _dry_run(None, request, session, user, app)


@router.post("/{intent}/dry-run", response_model=DryRunResult, responses={**NOT_FOUND, **BODY_ERRORS},
             openapi_extra=_DRY_RUN_BODY,
             summary="The route a spec would take: checks passing/failing now, approvals needed, what to fix first")
async def dry_run(intent: str, request: Request, session: SessionDep, user: CurrentUser,
                  app: StateDep) -> DryRunResult:
    return await _dry_run(intent, request, session, user, app)


async def _dry_run(intent: str | None, request: Request, session: SessionDep, user: CurrentUser,
                   app: StateDep) -> DryRunResult:
    # Reads only, so an Idempotency-Key is accepted and needs no bookkeeping: a retry answers the same.
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        try:
            parsed = DryRunRequest.model_validate_json(await request.body())
        except ValueError as exc:
            errors: list[dict[str, Any]] = getattr(exc, "errors", lambda: [])()
            first = errors[0] if errors else {"loc": (), "msg": str(exc)}
            field = ".".join(str(p) for p in first.get("loc", ()))
            raise ApiError(422, "validation_error", f"{field}: {first.get('msg')}" if field else str(first["msg"]),
                           [{"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg"),
                             "type": e.get("type")} for e in errors]) from None
        spec: bytes | str = parsed.spec
        evidence = svc.parse_json_evidence(parsed.evidence)
    else:
        body = await read_multipart(request, allow_spec=True, require_spec=True)
        spec = body.spec or b""
        evidence = {u.name: evidence_value(u.data, u.filename, u.content_type) for u in body.uploads}
    return await svc.dry_run(session=session, principal=user, registry=app.registry, intent=intent,
                             spec_text=spec, evidence=evidence, max_yaml_bytes=app.settings.max_yaml_bytes)
