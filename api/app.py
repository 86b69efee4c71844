"""The FastAPI application: ``create_app(settings, *, temporal_client, sessionmaker, registry)``.

Whatever is not injected is created in the lifespan: the database engine (migrated
to head), the policy registry (every policy validated and compiled at start), the
Temporal client. On start each loaded policy version is recorded in
``policy_versions`` (idempotent).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from api.deps import STRICT_QUERY, AppState
from api.errors import install_error_handlers
from api.metrics import BodyLimitMiddleware, Metrics, MetricsMiddleware
from api.routers import (
    audit,
    features,
    findings,
    guidance,
    inbox,
    models,
    monitoring,
    ops,
    policies,
    progressions,
    users,
)
from api.services.policies import record_policy_versions
from api.web import mount_web
from engine.database import upgrade
from engine.db import make_engine, make_sessionmaker
from engine.identity import JWTVerifier
from engine.loading import PolicyRegistry
from engine.settings import Settings, get_settings
from workflows.contract import connect

API_DESCRIPTION = """Progression: governance of the model development lifecycle.

Authenticate with `Authorization: Bearer <token>` (an API token `prg_...` or, when configured, an SSO JWT).
Errors are JSON `{code, message, details}` with a stable `code`. Every POST accepts an `Idempotency-Key`
header: a retry with the same key and request returns the first answer and changes nothing.
Another team's progressions and models answer 404 to developers (their existence does not leak).
Query parameters are strict: one that a route does not list is refused with 422 `unknown_query_parameter`
naming it (`details.unknown`, with a suggestion when it looks like a typo), never silently ignored; every
operation says so with `x-strict-query: true`.
"""


def temporal_address(settings: Settings) -> str:
    return settings.temporal_address or f"127.0.0.1:{settings.temporal_port}"


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The generated schema, with every operation marked strict about its query parameters."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                if not isinstance(operation, dict):
                    continue
                operation["x-strict-query"] = True
                responses = operation.setdefault("responses", {})
                responses.setdefault("422", {
                    "description": "A query parameter this operation does not read (`unknown_query_parameter`)",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
        app.openapi_schema = schema
    return app.openapi_schema


def _mount_web_ui(app: FastAPI) -> None:
    """The web UI (api/web, api/templates, api/static) rides on the same app and service functions."""

    mount_web(app)


def app_lifespan(
    settings: Settings,
    *,
    temporal_client: Client | None = None,
    sessionmaker: async_sessionmaker[AsyncSession] | None = None,
    registry: PolicyRegistry | None = None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan over these parts: whatever is not given is created at start (see the module)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = None
        sm = sessionmaker
        if sm is None:
            url = settings.resolved_database_url
            if url.startswith("sqlite"):
                settings.data_dir.mkdir(parents=True, exist_ok=True)
            if settings.env != "production":  # production runs the one-shot `migrate` job instead
                await upgrade(url)
            engine = make_engine(url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow,
                                 pool_timeout=settings.db_pool_timeout)
            sm = make_sessionmaker(engine)
        reg = registry or PolicyRegistry.from_dir(settings.policies_dir)
        client = temporal_client or await connect(temporal_address(settings), settings.temporal_namespace)
        jwt_verifier = JWTVerifier(settings) if settings.jwt_issuer else None
        app.state.progression = AppState(settings=settings, sessionmaker=sm, registry=reg, temporal=client,
                                         engine=engine, jwt=jwt_verifier)
        async with sm() as session:
            await record_policy_versions(session, reg, chain=settings.audit_chain)
        try:
            yield
        finally:
            if engine is not None:
                await engine.dispose()

    return lifespan


def create_app(
    settings: Settings | None = None,
    *,
    temporal_client: Client | None = None,
    sessionmaker: async_sessionmaker[AsyncSession] | None = None,
    registry: PolicyRegistry | None = None,
) -> FastAPI:
    """The app: routes, error handlers, middleware; its lifespan (``app_lifespan``) over the parts given.

    Of the settings only ``max_request_bytes`` is read here; the rest is read in the lifespan, so a process
    may keep one app and give its router another lifespan (the tests do: FastAPI analyses each route's
    dependencies on the route's first request, per app)."""
    settings = settings or get_settings()
    metrics = Metrics()
    lifespan = app_lifespan(settings, temporal_client=temporal_client, sessionmaker=sessionmaker, registry=registry)

    # STRICT_QUERY on every route: a query parameter the route does not read is refused with 422 naming it.
    app = FastAPI(title="Progression API", version="1.0.0", description=API_DESCRIPTION, lifespan=lifespan,
                  dependencies=[STRICT_QUERY])
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.state.metrics = metrics
    install_error_handlers(app)
    for module in (progressions, inbox, models, policies, features, audit, users, ops, findings, monitoring):
        app.include_router(module.router)
    app.include_router(users.public_router)
    app.include_router(policies.route_router)
    app.include_router(guidance.router)
    _mount_web_ui(app)
    # Outermost first: the size limit refuses before anything reads the body; metrics see every answer.
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes)
    return app
