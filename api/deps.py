"""FastAPI dependencies: ONE for the database session, ONE for the authenticated caller."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from api.authz import Principal
from api.errors import ApiError, Unauthenticated
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


async def _current_user(request: Request, session: SessionDep) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated()
    state = app_state(request)
    user = None
    credential: dict[str, str | None] = {}
    if token.startswith(TOKEN_PREFIX):
        found = await authenticate_credential(session, token)
        if found is not None:
            user, row = found
            credential = {"credential_id": f"token:{row.id}", "credential_issued_by": row.issued_by,
                          "credential_kind": "token"}
    elif state.jwt is not None:
        claims = await state.jwt.verify(token)
        if claims is not None:
            user = await provision_jwt_user(session, claims, state.settings)
            session_id = claims.get("sid") or claims.get("jti") or f"{claims.get('sub')}@{claims.get('iat')}"
            credential = {"credential_id": f"sso:{session_id}", "credential_issued_by": str(claims.get("iss")),
                          "credential_kind": "sso"}
    if user is None:
        raise Unauthenticated("the bearer token is invalid, expired or revoked")
    principal = Principal.of(user, **credential)
    if principal.service_only and not (request.method == "POST" and MONITORING_PATH.fullmatch(request.url.path)):
        # Belt and braces over the role table: a service identity reaches its one endpoint and nothing else.
        raise ApiError(403, "service_identity", f"{principal.username} is a service identity: it may only post "
                       "monitoring results (POST /api/v1/models/{id}/monitoring)")
    request.state.principal = principal
    return principal


CurrentUser = Annotated[Principal, Depends(_current_user)]
