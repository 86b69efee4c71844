"""FastAPI dependencies: ONE for the database session, ONE for the authenticated caller, and the strict query
check that the application applies to every route (``create_app(dependencies=[STRICT_QUERY])``)."""

from __future__ import annotations

import difflib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from api.authz import Principal
from api.errors import ApiError, Unauthenticated, UnknownQueryParameters
from engine.identity import TOKEN_PREFIX, JWTVerifier, authenticate_credential, provision_jwt_user
from engine.loading import PolicyRegistry
from engine.settings import Settings


@dataclass
class AppState:
    """What the lifespan built (or the caller injected); stored on ``app.state.progression``."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    registry: PolicyRegistry
    temporal: Client
    engine: AsyncEngine | None = None
    jwt: JWTVerifier | None = None


def app_state(request: Request) -> AppState:
    return request.app.state.progression  # type: ignore[no-any-return]


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with app_state(request).sessionmaker() as session:
        yield session


# The one endpoint a monitoring service identity reaches.
MONITORING_PATH = re.compile(r"/api/v1/models/[^/]+/monitoring")

SessionDep = Annotated[AsyncSession, Depends(_session)]
StateDep = Annotated[AppState, Depends(app_state)]


def bearer_token(request: Request) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header, or None."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def _current_user(request: Request, session: SessionDep) -> Principal:
    token = bearer_token(request)
    if token is None:
        raise Unauthenticated()
    state = app_state(request)
    principal: Principal | None = None
    if token.startswith(TOKEN_PREFIX):
        found = await authenticate_credential(session, token)
        if found is not None:
            principal = Principal.of_token(*found)
    elif state.jwt is not None:
        claims = await state.jwt.verify(token)
        if claims is not None and (user := await provision_jwt_user(session, claims, state.settings)) is not None:
            session_id = claims.get("sid") or claims.get("jti") or f"{claims.get('sub')}@{claims.get('iat')}"
            principal = Principal.of(user, credential_id=f"sso:{session_id}",
                                     credential_issued_by=str(claims.get("iss")), credential_kind="sso")
    if principal is None:
        raise Unauthenticated("the bearer token is invalid, expired or revoked")
    if principal.service_only and not (request.method == "POST" and MONITORING_PATH.fullmatch(request.url.path)):
        # Belt and braces over the role table: a service identity reaches its one endpoint and nothing else.
        raise ApiError(403, "service_identity", f"{principal.username} is a service identity: it may only post "
                       "monitoring results (POST /api/v1/models/{id}/monitoring)")
    request.state.principal = principal
    return principal


CurrentUser = Annotated[Principal, Depends(_current_user)]


def _query_names(dependant: Dependant) -> set[str]:
    names: set[str] = set()
    for param in dependant.query_params:
        model = param.field_info.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):  # a query-parameter model: its fields
            names.update(f.alias or n for n, f in model.model_fields.items())
        else:
            names.add(param.alias)
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _known_query(route: APIRoute) -> list[str]:
    """The query parameters a route reads (its own and its dependencies'), by the name clients send."""
    known = getattr(route, "_progression_known_query", None)
    if known is None:
        known = sorted(_query_names(route.dependant))
        route._progression_known_query = known  # type: ignore[attr-defined]
    return known  # type: ignore[no-any-return]


async def reject_unknown_query(request: Request) -> None:
    """Refuse (422 ``unknown_query_parameter``) a query parameter the route does not read, naming it."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or not request.query_params or getattr(route, "accepts_any_query", False):
        return
    known = _known_query(route)
    unknown = sorted({name for name in request.query_params.keys() if name not in known})
    if unknown:
        suggestions = {}
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.6) or [
                k for k in known if k.endswith("_" + name) or k.startswith(name + "_")][:1]
            if close:
                suggestions[name] = close[0]
        raise UnknownQueryParameters(unknown, known, suggestions)


STRICT_QUERY = Depends(reject_unknown_query)
